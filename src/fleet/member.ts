/** One endpoint inside the fleet, with its breaker and the numbers the balancers read. */
import { CircuitBreaker, type Admission } from './breaker';
import type { BreakerOptions, Endpoint } from './types';

const LATENCY_SMOOTHING = 0.3;

export class Member<Req = unknown, Res = unknown> {
  readonly endpoint: Endpoint<Req, Res>;
  readonly tier: number;
  readonly breaker: CircuitBreaker;
  inflight = 0;
  requests = 0;
  /** EWMA of successful call latency, ms. */
  latencyMs: number | null = null;
  /** Smooth weighted round-robin state. */
  currentWeight = 0;
  draining = false;
  private drained: (() => void)[] = [];

  constructor(endpoint: Endpoint<Req, Res>, tier: number, breaker: BreakerOptions, now: () => number) {
    this.endpoint = endpoint;
    this.tier = tier;
    this.breaker = new CircuitBreaker(breaker, now);
  }

  get weight(): number {
    return this.endpoint.weight ?? 1;
  }

  started(): void {
    this.inflight += 1;
    this.requests += 1;
  }

  /** A call ends: it failed (or the fleet gave up on it at the deadline) or it succeeded. */
  finished(failed: boolean, latencyMs: number, admission: Admission): void {
    this.inflight -= 1;
    this.breaker.record(failed, admission);
    if (!failed) {
      this.latencyMs = this.latencyMs === null ? latencyMs : this.latencyMs + LATENCY_SMOOTHING * (latencyMs - this.latencyMs);
    }
    if (this.inflight === 0) for (const resolve of this.drained.splice(0)) resolve();
  }

  /** Stops taking new requests; resolves once the in-flight ones have finished. */
  drain(): Promise<void> {
    this.draining = true;
    if (this.inflight === 0) return Promise.resolve();
    return new Promise((resolve) => this.drained.push(resolve));
  }
}
