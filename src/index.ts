export { DynamicRouter } from './router';
export type { RouterStats, CalibrateOptions, CalibrateResult, FallbackInfo, RouterEvents } from './router';
export { Routing } from './routing';
export type { Dispatch } from './routing';
export { Tensor, f32ToBf16, f32ToF16, bf16ToF32, f16ToF32 } from './tensor';
export type { DType, Device, NumberArray, TensorData, TensorOptions } from './tensor';
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
export { RoutingCache, CachedRouting } from './cache';
export type { CacheMode, CacheStats, RoutingCacheOptions } from './cache';
export { MonitoredRouter } from './monitor';
export type { AlertEvent, AlertName, AlertThresholds, HealthReport, HealthStatus, MonitorOptions, RouteEntry } from './monitor';
export { FailoverRouter } from './failover';
export type { BreakerEvent, BreakerOptions, BreakerState } from './failover';
export type { Routable, RouteInput, RoutingResult } from './routable';
export { modelCard } from './card';
export type { ModelCardOptions } from './card';
export { checkConfig, createRouter, loadConfig, loadWeightFile, validateConfig, DEFAULT_CONFIG } from './config';
export type { RateLimitConfig, RouterConfig } from './config';
export { buildServer, moeRouterPlugin, startServer } from './server';
export type { RouterPluginOptions, RunningServer, ServeOptions } from './server';
export { ModelFleet, FleetError, CircuitBreaker } from './fleet/index';
export type { BalancerName, BreakerOptions as FleetBreakerOptions, BreakerState as FleetBreakerState, Endpoint, EndpointHealth, FleetErrorCode, FleetOptions, FleetResult, InvokeContext, RetryOptions, Tier } from './fleet/index';
