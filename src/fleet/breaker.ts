/** A rolling-window circuit breaker: closed → open on a failure share, half-open probes → closed. */
import type { BreakerOptions, BreakerState } from './types';

const DEFAULTS: Required<BreakerOptions> = {
  failureRate: 0.1,
  windowMs: 60_000,
  minRequests: 10,
  openMs: 30_000,
  halfOpenProbes: 3,
};

export class CircuitBreaker {
  private readonly options: Required<BreakerOptions>;
  private readonly now: () => number;
  private outcomes: { at: number; failed: boolean }[] = [];
  private stateValue: BreakerState = 'closed';
  private openedAt = 0;
  private probesInFlight = 0;
  private probeSuccesses = 0;

  constructor(options: BreakerOptions = {}, now: () => number = Date.now) {
    this.options = { ...DEFAULTS, ...options };
    this.now = now;
  }

  get state(): BreakerState {
    if (this.stateValue === 'open' && this.now() - this.openedAt >= this.options.openMs) {
      this.stateValue = 'half-open';
      this.probesInFlight = 0;
      this.probeSuccesses = 0;
    }
    return this.stateValue;
  }

  /** Whether a call may go through now; a half-open breaker admits a limited number of probes. */
  tryAcquire(): boolean {
    const state = this.state;
    if (state === 'closed') return true;
    if (state === 'open' || this.probesInFlight >= this.options.halfOpenProbes) return false;
    this.probesInFlight += 1;
    return true;
  }

  record(failed: boolean): void {
    const now = this.now();
    if (this.stateValue === 'half-open') {
      this.probesInFlight = Math.max(0, this.probesInFlight - 1);
      if (failed) {
        this.open(now);
      } else if (++this.probeSuccesses >= this.options.halfOpenProbes) {
        this.stateValue = 'closed';
        this.outcomes = [];
      }
      return;
    }
    this.outcomes.push({ at: now, failed });
    this.prune(now);
    if (this.stateValue === 'closed' && this.outcomes.length >= this.options.minRequests && this.errorRate() >= this.options.failureRate) {
      this.open(now);
    }
  }

  /** Failure share over the window. */
  errorRate(): number {
    this.prune(this.now());
    if (this.outcomes.length === 0) return 0;
    return this.outcomes.filter((o) => o.failed).length / this.outcomes.length;
  }

  private open(now: number): void {
    this.stateValue = 'open';
    this.openedAt = now;
    this.outcomes = [];
  }

  private prune(now: number): void {
    const horizon = now - this.options.windowMs;
    let drop = 0;
    while (drop < this.outcomes.length && this.outcomes[drop]!.at < horizon) drop++;
    if (drop > 0) this.outcomes.splice(0, drop);
  }
}
