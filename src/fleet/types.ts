/** Public shapes of the fleet: endpoints, tiers, options, results. */

export interface InvokeContext {
  /** Aborted when the request's deadline passes or the fleet gives up on this attempt. */
  signal: AbortSignal;
}

export interface Endpoint<Req = unknown, Res = unknown> {
  id: string;
  invoke: (req: Req, context: InvokeContext) => Promise<Res>;
  /** Share of traffic under the 'weighted' balancer (default 1). */
  weight?: number;
  /** Cost per 1000 tokens, reported by health() (tiers are ordered cheapest first). */
  costPer1kTokens?: number;
}

export interface Tier<Req = unknown, Res = unknown> {
  name: string;
  endpoints: Endpoint<Req, Res>[];
}

export type BalancerName = 'round-robin' | 'weighted' | 'least-request' | 'latency' | 'health';

export interface BreakerOptions {
  /** Failure share over the window that opens the breaker (default 0.1). */
  failureRate?: number;
  /** Length of the rolling window in ms (default 60000). */
  windowMs?: number;
  /** Requests in the window before the failure share counts (default 10). */
  minRequests?: number;
  /** How long an open breaker rejects before probing (default 30000). */
  openMs?: number;
  /** Concurrent probes allowed while half-open; that many successes close it (default 3). */
  halfOpenProbes?: number;
}

export interface RetryOptions {
  /** Most attempts per request, the first included (default 3). */
  attempts?: number;
  /**
   * Retries may add at most this percentage of the requests of the last window (the breaker's
   * windowMs), and at least 3 retries a window so that a quiet fleet can still retry; 0 turns
   * retries off (default 20).
   */
  budgetPercent?: number;
}

export interface FleetOptions<Req = unknown, Res = unknown> {
  /** Ordered cheapest first; a request that fails in its tier fails over to the next ones. */
  tiers: Tier<Req, Res>[];
  /** Picks the first tier to try (default 0), e.g. a DynamicRouter over embeddings; E_CLASSIFY if it throws. */
  classify?: (req: Req) => number | Promise<number>;
  balancer?: BalancerName;
  breaker?: BreakerOptions;
  retry?: RetryOptions;
  /**
   * Whole-request deadline in ms, classify, attempts and retries included (default none; at most
   * 2^31 - 1, a timer's limit). A call still running at the deadline is told so by its signal and counts
   * as failed for its endpoint's breaker and error rate.
   */
  deadlineMs?: number;
  /** Clock in ms (tests inject one; default Date.now). */
  now?: () => number;
}

export interface FleetResult<Res = unknown> {
  value: Res;
  endpoint: string;
  tier: string;
  attempts: number;
  latencyMs: number;
}

export type BreakerState = 'closed' | 'open' | 'half-open';

export interface EndpointHealth {
  id: string;
  tier: string;
  state: 'up' | 'down' | 'probing' | 'draining';
  breaker: BreakerState;
  inflight: number;
  /** Exponentially weighted mean latency of successful calls, ms (null before the first). */
  latencyMs: number | null;
  /** Failure share of the calls that ended in the breaker's window (calls given up at the deadline count as failed). */
  errorRate: number;
  requests: number;
  costPer1kTokens: number | null;
}
