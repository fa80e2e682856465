/** Typed tensors: f32 data, or f16/bf16 as raw 16-bit patterns, with a shape. */
import type { NativeDeviceBuffer } from './addon-types';
import { kindOf, native, optionNames, rejectUnknownOptions, RouterError } from './errors';
import { loadNative } from './native';

export type DType = 'f32' | 'f16' | 'bf16';
export type Device = 'cpu' | 'cuda';
export type TensorData = Float32Array | Uint16Array;

/** Native dtype codes (moe_dtype). */
export const DTYPE_CODE: Record<DType, number> = { f32: 0, f16: 1, bf16: 2 };

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** What Tensor.from reads values from: an Array or a typed array of numbers (not bigints). */
export type NumberArray =
  | readonly number[]
  | Float32Array
  | Float64Array
  | Int8Array
  | Uint8Array
  | Uint8ClampedArray
  | Int16Array
  | Uint16Array
  | Int32Array
  | Uint32Array;

function isNumberArray(data: unknown): data is NumberArray {
  if (Array.isArray(data)) return true;
  return ArrayBuffer.isView(data) && !(data instanceof DataView) && !(data instanceof BigInt64Array) && !(data instanceof BigUint64Array);
}

/**
 * The bits of `value` as an f32, rounded to odd: toward zero, with the last bit set when that lost
 * anything. Exact for every f32; for a wider value, rounding these bits to the nearest f16 or bf16
 * (13 or 16 bits fewer) gives the value's own nearest, where rounding to the nearest f32 first could
 * land on a tie that was not one.
 */
function f32BitsRoundedToOdd(value: number): number {
  f32[0] = value;
  const rounded = f32[0]!;
  if (rounded === value || Number.isNaN(value)) return u32[0]!;
  if (Math.abs(rounded) > Math.abs(value)) u32[0]! -= 1; // rounded away from zero (or to infinity): one step back
  return u32[0]! | 1;
}

/** Rounds a number to the nearest bf16 (ties to even), returning its bits. */
export function f32ToBf16(value: number): number {
  const bits = f32BitsRoundedToOdd(value);
  if ((bits & 0x7fffffff) > 0x7f800000) return ((bits >>> 16) | 0x40) & 0xffff; // quiet NaN
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

/** Rounds a number to the nearest f16 (ties to even), returning its bits. */
export function f32ToF16(value: number): number {
  const bits = f32BitsRoundedToOdd(value);
  const sign = (bits >>> 16) & 0x8000;
  const exponent = (bits >>> 23) & 0xff;
  let mantissa = bits & 0x7fffff;
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa ? 0x200 : 0);
  let e = exponent - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mantissa |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = mantissa & ((1 << shift) - 1);
    let h = mantissa >>> shift;
    if (rest > half || (rest === half && h & 1)) h += 1;
    return sign | h;
  }
  const rest = mantissa & 0x1fff;
  let h = (e << 10) | (mantissa >>> 13);
  if (rest > 0x1000 || (rest === 0x1000 && h & 1)) h += 1;
  return sign | h;
}

export function bf16ToF32(bits: number): number {
  u32[0] = (bits & 0xffff) << 16;
  return f32[0]!;
}

export function f16ToF32(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const mantissa = bits & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 0x1f) return mantissa ? NaN : sign * Infinity;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

/** Tensor.from's options. */
export interface TensorOptions {
  /** Default: bf16 for a Uint16Array, f32 otherwise. */
  dtype?: DType;
}

const TENSOR_OPTIONS = optionNames<TensorOptions>({ dtype: true });

/** moe_backend code of the CUDA backend. */
const CUDA_BACKEND = 5;

export class Tensor {
  /** The values on the host (a 'cuda' tensor keeps them too). */
  readonly data: TensorData;
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly device: Device;
  #buffer: NativeDeviceBuffer | null;

  private constructor(
    data: TensorData,
    shape: readonly number[],
    dtype: DType,
    device: Device = 'cpu',
    deviceBuffer: NativeDeviceBuffer | null = null,
  ) {
    this.data = data;
    this.shape = Object.freeze([...shape]);
    this.dtype = dtype;
    this.device = device;
    this.#buffer = deviceBuffer;
  }

  /** The GPU copy of a 'cuda' tensor (null once released). @internal */
  get deviceBuffer(): NativeDeviceBuffer | null {
    return this.#buffer;
  }

  /**
   * Wraps data (no copy when the array type already matches). f16/bf16 data is a Uint16Array of raw
   * bits; a Float32Array or number[] given with dtype f16/bf16 is rounded to it (nearest, ties to even).
   */
  static from(
    data: NumberArray,
    shape: readonly number[],
    options: TensorOptions = {},
  ): Tensor {
    rejectUnknownOptions('Tensor.from option', options, TENSOR_OPTIONS);
    if (!isNumberArray(data)) {
      throw new RouterError('E_DTYPE', `Tensor data must be a Float32Array, a Uint16Array of f16/bf16 bits or an array of numbers (got ${kindOf(data)})`);
    }
    const dtype = options.dtype ?? (data instanceof Uint16Array ? 'bf16' : 'f32');
    if (!Object.hasOwn(DTYPE_CODE, dtype)) {
      throw new RouterError('E_DTYPE', `Tensor dtype must be 'f32', 'f16' or 'bf16' (got '${String(dtype)}')`);
    }
    if (!Array.isArray(shape) || shape.some((d) => !Number.isInteger(d) || d < 0)) {
      throw new RouterError('E_SHAPE', `Tensor shape must be an array of non-negative integers (got ${JSON.stringify(shape)})`);
    }
    const size = shape.reduce((a, b) => a * b, 1);
    if (data.length !== size) {
      throw new RouterError('E_SHAPE', `Tensor data has ${data.length} elements but shape [${shape.join(', ')}] needs ${size}`);
    }
    let typed: TensorData;
    if (dtype === 'f32') {
      if (data instanceof Uint16Array) {
        throw new RouterError('E_DTYPE', 'Tensor dtype f32 needs a Float32Array or number[] (got Uint16Array)');
      }
      typed = data instanceof Float32Array ? data : Float32Array.from(data);
    } else if (data instanceof Uint16Array) {
      typed = data;
    } else {
      const round = dtype === 'f16' ? f32ToF16 : f32ToBf16;
      typed = Uint16Array.from(data, (v) => round(v));
    }
    return new Tensor(typed, shape, dtype);
  }

  /** The values widened to f32 (a copy for f16/bf16, the data itself for f32). */
  toFloat32(): Float32Array {
    if (this.dtype === 'f32') return this.data as Float32Array;
    const widen = this.dtype === 'f16' ? f16ToF32 : bf16ToF32;
    return Float32Array.from(this.data as Uint16Array, (bits) => widen(bits));
  }

  /**
   * The tensor on `device`. 'cuda' copies the data to the GPU once, so that routing it again and again
   * skips the copy; without a usable CUDA device it throws E_BACKEND. 'cpu' gives the host data.
   */
  to(device: Device): Tensor {
    if (device === this.device) return this;
    if (device === 'cpu') return new Tensor(this.data, this.shape, this.dtype);
    if (device !== 'cuda') {
      throw new RouterError('E_BACKEND', `Tensor.to: device must be 'cpu' or 'cuda' (got '${String(device)}')`);
    }
    const addon = loadNative();
    if (!addon.backendAvailable(CUDA_BACKEND)) {
      const why = addon.backendCompiled(CUDA_BACKEND)
        ? 'no usable CUDA device was found (no GPU or driver)'
        : 'this build of dynamic-moe-router has no CUDA backend';
      throw new RouterError('E_BACKEND', `Tensor.to('cuda'): ${why}; keep tensors on 'cpu'`);
    }
    const buffer = native(() => new addon.DeviceBuffer(this.data.byteLength));
    native(() => buffer.upload(this.data));
    return new Tensor(this.data, this.shape, this.dtype, 'cuda', buffer);
  }

  /** Gives a 'cuda' tensor's device memory back now instead of at garbage collection. */
  release(): void {
    this.#buffer?.free();
    this.#buffer = null;
  }
}
