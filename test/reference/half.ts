// IEEE binary16 and bfloat16 <-> number, written independently of the library.

/** Decode an IEEE-754 binary16 bit pattern. */
export function f16ToNumber(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >>> 10) & 0x1f;
  const man = bits & 0x3ff;
  if (exp === 0x1f) return man === 0 ? sign * Infinity : NaN;
  if (exp === 0) return sign * man * 2 ** -24; // subnormal (and ±0)
  return sign * (1 + man / 1024) * 2 ** (exp - 15);
}

const f32buf = new Float32Array(1);
const u32buf = new Uint32Array(f32buf.buffer);

/** Decode a bfloat16 bit pattern (the top half of a binary32). */
export function bf16ToNumber(bits: number): number {
  u32buf[0] = (bits & 0xffff) << 16;
  return f32buf[0];
}

/** Encode a number as binary16, round to nearest even; overflow gives ±Inf. */
export function numberToF16(v: number): number {
  if (Number.isNaN(v)) return 0x7e00;
  const sign = v < 0 || Object.is(v, -0) ? 0x8000 : 0;
  let a = Math.abs(v);
  if (a === Infinity) return sign | 0x7c00;
  if (a < 2 ** -25) return sign; // rounds to zero (exactly half of min subnormal rounds to even = 0)
  if (a < 2 ** -14) {
    // subnormal: value = m · 2^-24
    let m = a / 2 ** -24;
    const f = Math.floor(m);
    const rem = m - f;
    m = rem > 0.5 || (rem === 0.5 && f % 2 === 1) ? f + 1 : f;
    return sign | m; // m may become 1024 = smallest normal, which is the right encoding
  }
  let exp = Math.floor(Math.log2(a));
  if (2 ** exp > a) exp--;
  if (2 ** (exp + 1) <= a) exp++;
  let mant = a / 2 ** exp - 1; // in [0, 1)
  let m = mant * 1024;
  const f = Math.floor(m);
  const rem = m - f;
  m = rem > 0.5 || (rem === 0.5 && f % 2 === 1) ? f + 1 : f;
  if (m === 1024) {
    m = 0;
    exp++;
  }
  if (exp > 15) return sign | 0x7c00;
  return sign | ((exp + 15) << 10) | m;
}

/** Encode a number as bfloat16, round to nearest even from its f32 value. */
export function numberToBf16(v: number): number {
  if (Number.isNaN(v)) return 0x7fc0;
  f32buf[0] = v;
  const x = u32buf[0];
  const lower = x & 0xffff;
  let upper = x >>> 16;
  if (lower > 0x8000 || (lower === 0x8000 && (upper & 1) === 1)) upper = (upper + 1) & 0xffff;
  return upper;
}

export type DType = 'f32' | 'f16' | 'bf16';

/** Widen raw data of the given dtype to float64 numbers. */
export function widen(data: ArrayLike<number>, dtype: DType): Float64Array {
  const out = new Float64Array(data.length);
  if (dtype === 'f32') {
    for (let i = 0; i < data.length; i++) out[i] = Math.fround(data[i]);
  } else if (dtype === 'f16') {
    for (let i = 0; i < data.length; i++) out[i] = f16ToNumber(data[i]);
  } else {
    for (let i = 0; i < data.length; i++) out[i] = bf16ToNumber(data[i]);
  }
  return out;
}
