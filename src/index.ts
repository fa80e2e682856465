export { DynamicRouter } from './router';
export type { RouterStats, CalibrateOptions, CalibrateResult, FallbackInfo, RouterEvents } from './router';
export { Routing } from './routing';
export type { Dispatch } from './routing';
export { Tensor, f32ToBf16, f32ToF16, bf16ToF32, f16ToF32 } from './tensor';
export type { DType, Device, TensorData } from './tensor';
export { BufferPool } from './pool';
export { RouterError, ERROR_CODES } from './errors';
export type { ErrorCode } from './errors';
export type {
  RouterOptions,
  Strategy,
  Scoring,
  Order,
  DropPolicy,
  Validation,
  BackendName,
  DeviceName,
} from './options';
export { backends, engineVersion } from './engine';
