/** The raw surface of the native addon (native/src/addon), typed in one place. */

export interface NativeOptions {
  inputDim: number;
  numExperts: number;
  topK: number;
  minExperts: number;
  strategy: number;
  topP: number;
  threshold: number;
  scoring: number;
  order: number;
  normalize: number;
  scale: number;
  groupCount: number;
  groupSelect: number;
  biasUpdateRate: number;
  capacityFactor: number;
  minCapacity: number;
  dropPolicy: number;
  noiseStd: number;
  noiseSeed: number;
  dispatch: number;
  blockSize: number;
  losses: number;
  validation: number;
  backend: number;
  device: number;
  threads: number;
  exactF32: number;
}

/** Scalars a route writes as doubles at the start of its outputs buffer, by index. */
export const enum Scalar {
  DispatchLength = 0,
  InvalidCount = 1,
  Dropped = 2,
  AuxLoss = 3,
  ZLoss = 4,
  Entropy = 5,
  FlopReduction = 6,
  /** The engine's backend code (BACKENDS index) that ran the call. */
  Backend = 7,
}

/**
 * outputLayout(tokens): where a route puts each output in its one ArrayBuffer. Byte offsets by index
 * (-1: no such region, the dispatch ones when dispatch is off), then the buffer's size is at Bytes.
 */
export const enum Layout {
  Bytes = 0,
  Scalars = 1,
  Experts = 2,
  Weights = 3,
  ExpertsPerToken = 4,
  ExpertCounts = 5,
  InvalidTokens = 6,
  DispatchOffsets = 7,
  DispatchSlots = 8,
  SlotCapacity = 9,
}

/** Device memory holding a Tensor's copy on the GPU (moe_device_buffer). */
export interface NativeDeviceBuffer {
  readonly size: number;
  /** Copies the array's bytes to the start of the buffer. */
  upload(data: Float32Array | Uint16Array): void;
  /** Gives the device memory back now instead of at garbage collection. */
  free(): void;
}

/** The CUDA failure a call fell back to the CPU from. */
export interface NativeFallback {
  code: string;
  message: string;
}

export type RouteArgs = [
  input: Float32Array | Uint16Array | NativeDeviceBuffer,
  dtype: number,
  tokens: number,
  isLogits: boolean,
  /** At least outputLayout(tokens)[Layout.Bytes] bytes; receives every output. */
  outputs: ArrayBuffer,
];

export interface NativeRouter {
  route(...args: RouteArgs): void;
  routeAsync(...args: RouteArgs): Promise<void>;
  calibrate(
    sample: Float32Array | Uint16Array,
    dtype: number,
    tokens: number,
    isLogits: boolean,
    meanExperts: number,
  ): [parameter: number, meanExperts: number];
  updateBias(counts: Int32Array): void;
  selectionBias(out: Float32Array): void;
  getStep(): number;
  setStep(step: number): void;
  /** [tokens, calls, assignments, dropped, meanExpertsPerToken, flopReduction, loadBalanceScore] */
  stats(utilization: Float64Array, assignments: Float64Array, kHistogram: Float64Array): number[];
  resetStats(): void;
  /** The backend that ran the most recent call. */
  backend(): string;
  /** moe_router_host_bytes: the host memory the router holds; 0 once disposed. */
  hostBytes(): number;
  /** Set when the most recent call (or the creation) fell back from CUDA to the CPU. */
  lastFallback(): NativeFallback | null;
  /** [topP, threshold] in force. */
  parameters(): [number, number];
  /** Byte offsets of each output in a route's ArrayBuffer, indexed by Layout. */
  outputLayout(tokens: number): number[];
  dispose(): void;
}

export interface NativeAddon {
  Router: new (
    options: NativeOptions,
    weight: Float32Array,
    bias: Float32Array | null,
    selectionBias: Float32Array | null,
  ) => NativeRouter;
  /** Throws E_BACKEND without a usable CUDA device. */
  DeviceBuffer: new (bytes: number) => NativeDeviceBuffer;
  version(): string;
  backendAvailable(code: number): boolean;
  /** `prefix` (default '', under 200 characters) then 32 hex digits of moe_hash128 over the view's bytes (cache keys). */
  hash128(view: ArrayBufferView, prefix?: string): string;
  /** The same for each of `rows` equal rows of the view (rows must divide its length). */
  hash128(view: ArrayBufferView, prefix: string, rows: number): string[];
  /** Built into this binary, whether or not this machine can run it. */
  backendCompiled(code: number): boolean;
}
