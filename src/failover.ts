/**
 * FailoverRouter: a circuit breaker from a primary router (the GPU) to a fallback (the CPU).
 *
 * closed     every call goes to the primary; an E_CUDA failure is retried on the fallback, so the
 *            caller still gets an answer, and `failures` of them in a row open the breaker.
 * open       every call goes to the fallback; after `openMs` the breaker turns half-open.
 * half-open  one call at a time probes the primary (the others use the fallback); `halfOpenProbes`
 *            successes in a row close the breaker, an E_CUDA failure opens it again.
 * Only E_CUDA counts: other errors (bad input and the like) are the caller's and pass through.
 */
import { optionNames, rejectUnknownOptions, RouterError } from './errors';
import { RouterWrapper, type Routable, type RouteInput, type RoutingResult } from './routable';
import type { CalibrateOptions, CalibrateResult, RouterStats } from './router';

export type BreakerState = 'closed' | 'open' | 'half-open';

export interface BreakerOptions {
  /** E_CUDA failures in a row that open the breaker (default 3). */
  failures?: number;
  /** How long the breaker stays open before probing the primary again, in ms (default 30000). */
  openMs?: number;
  /** Successful probes in a row that close the breaker (default 1). */
  halfOpenProbes?: number;
  /** Milliseconds clock (default Date.now); tests pass their own. */
  clock?: () => number;
}

export const BREAKER_OPTIONS = optionNames<BreakerOptions>({ failures: true, openMs: true, halfOpenProbes: true, clock: true });

/** Emitted as 'state' on every transition. */
export interface BreakerEvent {
  from: BreakerState;
  to: BreakerState;
  /** The E_CUDA error that opened the breaker, when it opened. */
  error?: RouterError;
}

function positiveInteger(name: string, value: number | undefined, fallback: number): number {
  const v = value ?? fallback;
  if (!Number.isSafeInteger(v) || v < 1) throw new RouterError('E_CONFIG', `breaker ${name} must be a positive integer (got ${JSON.stringify(value)})`);
  return v;
}

function isCudaFailure(error: unknown): error is RouterError {
  return error instanceof RouterError && error.code === 'E_CUDA';
}

/** Totals of two routers' stats, with the derived ratios computed again from the totals. */
export function mergeStats(a: RouterStats, b: RouterStats): RouterStats {
  const tokens = a.tokens + b.tokens;
  const expertAssignments = a.expertAssignments.map((v, e) => v + b.expertAssignments[e]!);
  const total = expertAssignments.reduce((sum, v) => sum + v, 0);
  const expertUtilization = expertAssignments.map((v) => (total > 0 ? v / total : 0));
  const squares = expertUtilization.reduce((sum, u) => sum + u * u, 0);
  const byTokens = (x: number, y: number) => (tokens > 0 ? (x * a.tokens + y * b.tokens) / tokens : 0);
  return {
    tokens,
    calls: a.calls + b.calls,
    meanExpertsPerToken: byTokens(a.meanExpertsPerToken, b.meanExpertsPerToken),
    flopReduction: byTokens(a.flopReduction, b.flopReduction),
    expertUtilization,
    expertAssignments,
    expertsPerTokenHistogram: a.expertsPerTokenHistogram.map((v, k) => v + b.expertsPerTokenHistogram[k]!),
    loadBalanceScore: total > 0 ? 1 / (expertAssignments.length * squares) : 1,
    droppedAssignments: a.droppedAssignments + b.droppedAssignments,
  };
}

/** The breaker's numbers from its options, or E_CONFIG (a config file's breaker is checked with this too). */
export function breakerSettings(options: BreakerOptions): { failuresToOpen: number; probesToClose: number; openMs: number } {
  rejectUnknownOptions('breaker option', options, BREAKER_OPTIONS);
  const openMs = options.openMs ?? 30_000;
  if (typeof openMs !== 'number' || !(openMs >= 0)) throw new RouterError('E_CONFIG', `breaker openMs must be a non-negative number (got ${JSON.stringify(options.openMs)})`);
  return {
    failuresToOpen: positiveInteger('failures', options.failures, 3),
    probesToClose: positiveInteger('halfOpenProbes', options.halfOpenProbes, 1),
    openMs,
  };
}

export class FailoverRouter extends RouterWrapper implements Routable {
  readonly primary: Routable;
  readonly fallback: Routable;
  private readonly failuresToOpen: number;
  private readonly openMs: number;
  private readonly probesToClose: number;
  private readonly clock: () => number;
  private current: BreakerState = 'closed';
  private consecutiveFailures = 0;
  private probeSuccesses = 0;
  private probing = false;
  /** Half-open periods so far (see usePrimary). */
  private period = 0;
  private openedAt = 0;

  constructor(primary: Routable, fallback: Routable, options: BreakerOptions = {}) {
    super(primary);
    if (primary.inputDim !== fallback.inputDim || primary.numExperts !== fallback.numExperts || primary.topK !== fallback.topK) {
      throw new RouterError(
        'E_CONFIG',
        `the fallback router must have the primary's shape: inputDim ${primary.inputDim}, numExperts ${primary.numExperts}, topK ${primary.topK} ` +
          `(got ${fallback.inputDim}, ${fallback.numExperts}, ${fallback.topK})`,
      );
    }
    this.primary = primary;
    this.fallback = fallback;
    ({ failuresToOpen: this.failuresToOpen, probesToClose: this.probesToClose, openMs: this.openMs } = breakerSettings(options));
    this.clock = options.clock ?? Date.now;
  }

  get state(): BreakerState {
    return this.current;
  }

  /** The backend serving new calls now: the fallback's while the breaker is open. */
  get backend(): string {
    return this.current === 'open' ? this.fallback.backend : this.primary.backend;
  }

  /** Changes when either router's does. */
  get configVersion(): number {
    return this.primary.configVersion + this.fallback.configVersion;
  }

  /** True once either router is disposed (a call may need the other). */
  override get disposed(): boolean {
    return this.primary.disposed || this.fallback.disposed;
  }

  get parameters(): { topP: number; threshold: number } {
    return this.primary.parameters;
  }

  route(hidden: RouteInput): RoutingResult {
    return this.run((r) => r.route(hidden));
  }

  routeLogits(logits: RouteInput): RoutingResult {
    return this.run((r) => r.routeLogits(logits));
  }

  routeAsync(hidden: RouteInput): Promise<RoutingResult> {
    return this.runAsync((r) => r.routeAsync(hidden));
  }

  routeLogitsAsync(logits: RouteInput): Promise<RoutingResult> {
    return this.runAsync((r) => r.routeLogitsAsync(logits));
  }

  /** Calibrates both routers (the primary first: if it fails, neither changed). */
  calibrate(sample: RouteInput, options: CalibrateOptions): CalibrateResult {
    const result = this.primary.calibrate(sample, options);
    this.fallback.calibrate(sample, options);
    return result;
  }

  updateBias(counts: Int32Array): void {
    this.primary.updateBias(counts);
    this.fallback.updateBias(counts);
  }

  /** Both routers' totals together. */
  stats(): RouterStats {
    return mergeStats(this.primary.stats(), this.fallback.stats());
  }

  resetStats(): void {
    this.primary.resetStats();
    this.fallback.resetStats();
  }

  dispose(): void {
    this.primary.dispose();
    this.fallback.dispose();
  }

  private transition(to: BreakerState, error?: RouterError): void {
    const from = this.current;
    this.current = to;
    this.consecutiveFailures = 0;
    this.probeSuccesses = 0;
    if (to === 'open') this.openedAt = this.clock();
    const event: BreakerEvent = error ? { from, to, error } : { from, to };
    this.emit('state', event);
  }

  /**
   * Whether this call goes to the primary, and as what: undefined (the fallback takes it), 0 (a call
   * while closed) or the number of the half-open period whose one probe it is. An outcome moves the
   * breaker only when its call was admitted in the state the breaker is still in: a call admitted
   * while closed that ends after the breaker opened, or a probe of an earlier period, decides nothing.
   */
  private usePrimary(): number | undefined {
    if (this.current === 'open' && this.clock() - this.openedAt >= this.openMs) {
      this.period += 1;
      this.transition('half-open');
    }
    if (this.current === 'closed') return 0;
    if (this.current === 'half-open' && !this.probing) {
      this.probing = true;
      return this.period;
    }
    return undefined;
  }

  private isCurrentProbe(admission: number): boolean {
    return admission !== 0 && admission === this.period && this.current === 'half-open';
  }

  private succeeded(admission: number): void {
    if (admission === 0 && this.current === 'closed') {
      this.consecutiveFailures = 0;
    } else if (this.isCurrentProbe(admission)) {
      this.probing = false;
      this.probeSuccesses += 1;
      if (this.probeSuccesses >= this.probesToClose) this.transition('closed');
    }
  }

  private failed(error: RouterError, admission: number): void {
    if (admission === 0 && this.current === 'closed') {
      this.consecutiveFailures += 1;
      if (this.consecutiveFailures >= this.failuresToOpen) this.transition('open', error);
    } else if (this.isCurrentProbe(admission)) {
      this.probing = false;
      this.transition('open', error);
    }
  }

  private run(call: (router: Routable) => RoutingResult): RoutingResult {
    const admission = this.usePrimary();
    if (admission === undefined) return call(this.fallback);
    let result: RoutingResult;
    try {
      result = call(this.primary);
    } catch (error) {
      return this.recover(error, admission, () => call(this.fallback));
    }
    this.succeeded(admission);
    return result;
  }

  private async runAsync(call: (router: Routable) => Promise<RoutingResult>): Promise<RoutingResult> {
    const admission = this.usePrimary();
    if (admission === undefined) return call(this.fallback);
    let result: RoutingResult;
    try {
      result = await call(this.primary);
    } catch (error) {
      return this.recover(error, admission, () => call(this.fallback));
    }
    this.succeeded(admission);
    return result;
  }

  /**
   * After the primary threw: an E_CUDA failure counts against it and the fallback answers; anything
   * else settles nothing about the GPU (a probe's slot is freed) and is rethrown.
   */
  private recover<R>(error: unknown, admission: number, fallback: () => R): R {
    if (!isCudaFailure(error)) {
      if (this.isCurrentProbe(admission)) this.probing = false;
      throw error;
    }
    this.failed(error, admission);
    return fallback();
  }
}
