/** A rolling-window circuit breaker: closed → open on a failure share, half-open probes → closed. */
import type { BreakerOptions, BreakerState } from './types';

const DEFAULTS: Required<BreakerOptions> = {
  failureRate: 0.1,
  windowMs: 60_000,
  minRequests: 10,
  openMs: 30_000,
  halfOpenProbes: 3,
};

/** Times of events over a rolling window of `windowMs`, oldest first; it holds no more than the window. */
export class TimeWindow {
  private times: number[] = [];
  private head = 0;

  constructor(private readonly windowMs: number) {}

  add(at: number): void {
    this.prune(at);
    this.times.push(at);
  }

  /** Events in the window that ends at `now`. */
  count(now: number): number {
    this.prune(now);
    return this.times.length - this.head;
  }

  clear(): void {
    this.times = [];
    this.head = 0;
  }

  private prune(now: number): void {
    const horizon = now - this.windowMs;
    while (this.head < this.times.length && this.times[this.head]! < horizon) this.head++;
    // Drop the expired head once it is most of the array (each event is copied at most once more).
    if (this.head > 64 && 2 * this.head > this.times.length) {
      this.times = this.times.slice(this.head);
      this.head = 0;
    }
  }
}

/**
 * What the breaker admitted a call as: 0 for a call while closed, else the number of the half-open
 * period whose probe it is. A call's outcome moves the breaker's state only when it is a probe of the
 * current period, so that a call admitted earlier (while closed, or in a previous half-open period)
 * and finishing late neither takes a probe's place nor closes the breaker on its own.
 */
export type Admission = number;

export class CircuitBreaker {
  private readonly options: Required<BreakerOptions>;
  private readonly now: () => number;
  private readonly calls: TimeWindow;
  private readonly failures: TimeWindow;
  private stateValue: BreakerState = 'closed';
  private openedAt = 0;
  private period = 0;
  private probesInFlight = 0;
  private probeSuccesses = 0;

  constructor(options: BreakerOptions = {}, now: () => number = Date.now) {
    this.options = { ...DEFAULTS, ...options };
    this.now = now;
    this.calls = new TimeWindow(this.options.windowMs);
    this.failures = new TimeWindow(this.options.windowMs);
  }

  get state(): BreakerState {
    if (this.stateValue === 'open' && this.now() - this.openedAt >= this.options.openMs) {
      this.stateValue = 'half-open';
      this.period += 1;
      this.probesInFlight = 0;
      this.probeSuccesses = 0;
    }
    return this.stateValue;
  }

  /** Admits a call now (see Admission), or undefined: open, or half-open with every probe out. */
  tryAcquire(): Admission | undefined {
    const state = this.state;
    if (state === 'closed') return 0;
    if (state === 'open' || this.probesInFlight >= this.options.halfOpenProbes) return undefined;
    this.probesInFlight += 1;
    return this.period;
  }

  /** The outcome of an admitted call (a call the fleet gave up on at its deadline counts as failed). */
  record(failed: boolean, admission: Admission): void {
    const now = this.now();
    this.calls.add(now);
    if (failed) this.failures.add(now);
    if (this.isCurrentProbe(admission)) {
      this.probesInFlight -= 1;
      if (failed) {
        this.open(now);
      } else if (++this.probeSuccesses >= this.options.halfOpenProbes) {
        // Closed afresh: the failures that opened it must not open it again at the next call.
        this.stateValue = 'closed';
        this.calls.clear();
        this.failures.clear();
      }
    } else if (this.state === 'closed' && this.calls.count(now) >= this.options.minRequests && this.errorRate() >= this.options.failureRate) {
      this.open(now);
    }
  }

  /** Failure share of the calls that ended in the window (kept while open, so it shows why). */
  errorRate(): number {
    const now = this.now();
    const calls = this.calls.count(now);
    return calls === 0 ? 0 : this.failures.count(now) / calls;
  }

  private isCurrentProbe(admission: Admission): boolean {
    return admission !== 0 && admission === this.period && this.state === 'half-open';
  }

  private open(now: number): void {
    this.stateValue = 'open';
    this.openedAt = now;
  }
}
