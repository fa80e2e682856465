export { ModelFleet, FleetError } from './fleet';
export type { FleetErrorCode } from './fleet';
export { CircuitBreaker } from './breaker';
export type {
  BalancerName,
  BreakerOptions,
  BreakerState,
  Endpoint,
  EndpointHealth,
  FleetOptions,
  FleetResult,
  InvokeContext,
  RetryOptions,
  Tier,
} from './types';
