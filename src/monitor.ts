/**
 * MonitoredRouter: Prometheus metrics, health and alerts around a router it owns.
 *
 * Per call it only times the call and adds it to plain counts (its duration bucket and its entry point):
 * the prom-client metrics read those counts when Prometheus scrapes, as they read the tokens, expert
 * assignments, experts per token, load balance and FLOP reduction that the router aggregates natively
 * (`stats()`). Tokens answered by the cache are not routed, so they count in the cache metrics and not
 * in those router totals.
 */
import { performance } from 'node:perf_hooks';
import { Counter, Gauge, Registry, type Metric } from 'prom-client';
import { RoutingCache, type CacheStats, type RoutingCacheOptions } from './cache';
import { optionNames, rejectUnknownOptions, RouterError, type ErrorCode } from './errors';
import { FailoverRouter, type BreakerEvent, type BreakerState } from './failover';
import { RouterWrapper, type Routable, type RouteInput, type RoutingResult } from './routable';
import { DynamicRouter, type CalibrateOptions, type CalibrateResult, type RouterStats } from './router';

export type RouteEntry = 'route' | 'routeLogits' | 'routeAsync' | 'routeLogitsAsync';
export type AlertName = 'p95-latency' | 'error-rate' | 'load-imbalance';
export type HealthStatus = 'ok' | 'degraded' | 'unhealthy';

export interface AlertThresholds {
  /** Fires when the p95 call latency over the window goes above this (ms). Off unless set. */
  p95LatencyMs?: number;
  /** Fires when the share of failed calls over the window goes above this (default 0.5). */
  errorRate?: number;
  /** Fires when router.stats().loadBalanceScore goes below this (1 = even, 1/E = one expert). Off unless set. */
  loadBalanceScore?: number;
  /**
   * How far back a firing alert must come before it resolves, relative (default 0.1): latency and error
   * rate resolve below threshold·(1 − h); load balance resolves above threshold + h·(1 − threshold).
   */
  hysteresis?: number;
  /** Calls the window must hold before latency and error rate are judged (default 20). */
  minRequests?: number;
}

export const ALERT_OPTIONS = optionNames<AlertThresholds>({
  p95LatencyMs: true,
  errorRate: true,
  loadBalanceScore: true,
  hysteresis: true,
  minRequests: true,
});

/** Emitted as 'alert' when an alert starts firing or resolves. */
export interface AlertEvent {
  alert: AlertName;
  state: 'firing' | 'resolved';
  value: number;
  threshold: number;
}

export interface MonitorOptions {
  /** Where the metrics are registered (default: a new Registry of this monitor; never the global one). */
  registry?: Registry;
  /** Put a RoutingCache in front of the router. */
  cache?: RoutingCacheOptions;
  alerts?: AlertThresholds;
  /** Calls the latency and error-rate window holds (default 1024). */
  window?: number;
  /** Alerts are checked every this many calls, and on every health() (default 100). */
  evaluateEvery?: number;
  /** Millisecond clock for latencies (default performance.now); tests pass their own. */
  clock?: () => number;
  /** Bucket bounds of moe_router_request_duration_seconds. */
  durationBuckets?: number[];
}

const MONITOR_OPTIONS = optionNames<MonitorOptions>({
  registry: true,
  cache: true,
  alerts: true,
  window: true,
  evaluateEvery: true,
  clock: true,
  durationBuckets: true,
});

export interface HealthReport {
  status: HealthStatus;
  backend: string;
  /** Over the last `window` calls (0 before any). */
  p95LatencyMs: number;
  /** Share of the last `window` calls that failed on the router's side (bad input does not count). */
  errorRate: number;
  /** Calls in the window. */
  windowCalls: number;
  lastError: { code: string; message: string; at: string } | null;
  loadBalanceScore: number;
  alerts: AlertName[];
  breaker?: BreakerState;
  cache?: CacheStats;
}

/** The metric names (moe_router_breaker_state only with a FailoverRouter). */
export const METRIC = {
  requests: 'moe_router_requests_total',
  duration: 'moe_router_request_duration_seconds',
  errors: 'moe_router_errors_total',
  tokens: 'moe_router_tokens_total',
  assignments: 'moe_router_expert_assignments_total',
  expertsPerToken: 'moe_router_experts_per_token',
  loadBalance: 'moe_router_load_balance_score',
  flopReduction: 'moe_router_flop_reduction_ratio',
  cacheHits: 'moe_router_cache_hits_total',
  cacheMisses: 'moe_router_cache_misses_total',
  backendInfo: 'moe_router_backend_info',
  breakerState: 'moe_router_breaker_state',
} as const;

const DEFAULT_DURATION_BUCKETS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];
/** Errors that say the input was bad: they are counted, but they do not make the router unhealthy. */
const CALLER_ERRORS: readonly string[] = ['E_SHAPE', 'E_DTYPE', 'E_NONFINITE', 'E_CONFIG'] satisfies ErrorCode[];
const BREAKER_STATES: readonly BreakerState[] = ['closed', 'open', 'half-open'];

function errorCode(error: unknown): string {
  return error instanceof RouterError ? error.code : 'E_INTERNAL';
}

function checkPositive(name: string, value: number | undefined, integer: boolean): void {
  if (value === undefined) return;
  const ok = typeof value === 'number' && value > 0 && (integer ? Number.isSafeInteger(value) : Number.isFinite(value));
  if (!ok) throw new RouterError('E_CONFIG', `monitor ${name} must be a positive ${integer ? 'integer' : 'number'} (got ${JSON.stringify(value)})`);
}

/** The duration histogram's bucket bounds: finite positive seconds, strictly increasing. */
function durationBounds(buckets: readonly number[] | undefined): readonly number[] {
  if (buckets === undefined) return DEFAULT_DURATION_BUCKETS;
  const ok = Array.isArray(buckets) && buckets.length > 0 &&
    buckets.every((b, i) => typeof b === 'number' && Number.isFinite(b) && b > 0 && (i === 0 || b > buckets[i - 1]!));
  if (!ok) throw new RouterError('E_CONFIG', `monitor durationBuckets must be increasing positive numbers of seconds (got ${JSON.stringify(buckets)})`);
  return [...buckets];
}

/**
 * A histogram whose buckets are already counted elsewhere (natively, or by the monitor per call): it
 * reports them as they are, without re-observing every value. counts[i] holds the observations of
 * bucket i, whose upper bound is bounds[i] (i itself without bounds); counts past the bounds (those
 * above the last one) go to +Inf only.
 */
function countedHistogram(name: string, help: string, registry: Registry, bounds: readonly number[] | null,
  read: () => { counts: ArrayLike<number>; sum: number } | null): void {
  const collector = {
    name,
    help,
    type: 'histogram',
    aggregator: 'sum',
    async get() {
      const snapshot = read();
      const values: { metricName: string; labels: Record<string, string>; value: number }[] = [];
      if (snapshot) {
        const finite = bounds ? bounds.length : snapshot.counts.length;
        let cumulative = 0;
        for (let i = 0; i < snapshot.counts.length; i++) {
          cumulative += snapshot.counts[i]!;
          if (i < finite) values.push({ metricName: `${name}_bucket`, labels: { le: String(bounds ? bounds[i] : i) }, value: cumulative });
        }
        values.push({ metricName: `${name}_bucket`, labels: { le: '+Inf' }, value: cumulative });
        values.push({ metricName: `${name}_sum`, labels: {}, value: snapshot.sum });
        values.push({ metricName: `${name}_count`, labels: {}, value: cumulative });
      }
      return { name, help, type: 'histogram', aggregator: 'sum', values };
    },
  };
  registry.registerMetric(collector as unknown as Metric);
}

/** The first router of class `kind` down the stack from `router` (through caches and monitors). */
function inStack<T>(router: Routable, kind: abstract new (...args: never[]) => T): T | undefined {
  for (let r: Routable | undefined = router; r; r = r instanceof RoutingCache || r instanceof MonitoredRouter ? r.router : undefined) {
    if (r instanceof kind) return r;
  }
  return undefined;
}

export class MonitoredRouter extends RouterWrapper implements Routable {
  /** The router this monitor owns (disposed with it). */
  readonly router: Routable;
  readonly registry: Registry;
  /** The cache it reports: the one options.cache made, or one in the stack it was given. */
  readonly cache?: RoutingCache;
  private readonly target: Routable;
  private readonly breaker?: FailoverRouter;
  private readonly clock: () => number;
  private readonly thresholds: Required<Pick<AlertThresholds, 'hysteresis' | 'minRequests'>> & AlertThresholds;
  private readonly evaluateEvery: number;
  /** Calls by entry point and backend, keyed by `${entry} ${backend}` (exported at scrape time). */
  private readonly requestCounts = new Map<string, { entry: RouteEntry; backend: string; calls: number }>();
  /** Call durations: bucket upper bounds in seconds, calls per bucket (one more: above them), sum. */
  private readonly durationBounds: readonly number[];
  private readonly durationCounts: Float64Array;
  private durationSum = 0;
  private readonly errors: Counter<'code'>;
  private readonly latencies: Float64Array;
  private readonly faults: Uint8Array;
  private filled = 0;
  private next = 0;
  private sinceEvaluation = 0;
  private backendName: string;
  private lastError: HealthReport['lastError'] = null;
  private readonly firing = new Set<AlertName>();
  private snapshot: RouterStats | null = null;
  private lastStats: RouterStats | null = null;
  private unregistered = false;

  constructor(router: Routable, options: MonitorOptions = {}) {
    super(router);
    rejectUnknownOptions('monitor option', options, MONITOR_OPTIONS);
    rejectUnknownOptions('monitor alerts option', options.alerts, ALERT_OPTIONS);
    const window = options.window ?? 1024;
    checkPositive('window', window, true);
    checkPositive('evaluateEvery', options.evaluateEvery, true);
    const alerts = options.alerts ?? {};
    checkPositive('alerts.p95LatencyMs', alerts.p95LatencyMs, false);
    checkPositive('alerts.errorRate', alerts.errorRate, false);
    checkPositive('alerts.loadBalanceScore', alerts.loadBalanceScore, false);
    checkPositive('alerts.minRequests', alerts.minRequests, true);
    const hysteresis = alerts.hysteresis ?? 0.1;
    if (typeof hysteresis !== 'number' || !(hysteresis >= 0 && hysteresis < 1)) {
      throw new RouterError('E_CONFIG', `monitor alerts.hysteresis must be in [0, 1) (got ${JSON.stringify(alerts.hysteresis)})`);
    }
    this.router = router;
    // The cache and breaker it reports: the cache options.cache asks for, else those already in the
    // stack it is given (a MonitoredRouter over a RoutingCache over a FailoverRouter, say).
    this.cache = options.cache ? new RoutingCache(router, options.cache) : inStack(router, RoutingCache);
    this.target = options.cache ? this.cache! : router;
    this.clock = options.clock ?? (() => performance.now());
    this.thresholds = { errorRate: 0.5, ...alerts, hysteresis, minRequests: alerts.minRequests ?? 20 };
    this.evaluateEvery = options.evaluateEvery ?? 100;
    this.durationBounds = durationBounds(options.durationBuckets);
    this.durationCounts = new Float64Array(this.durationBounds.length + 1);
    this.latencies = new Float64Array(window);
    this.faults = new Uint8Array(window);
    this.backendName = router.backend;
    const registry = options.registry ?? new Registry();
    const taken = Object.values(METRIC).filter((name) => registry.getSingleMetric(name));
    if (taken.length > 0) {
      // (Registry.merge cannot combine two of them either: it refuses metrics of the same name.)
      throw new RouterError(
        'E_CONFIG',
        `this registry already holds ${taken.join(', ')}, the moe_router_* metrics of another MonitoredRouter or of its own: ` +
          'give each router its own Registry, served at an endpoint of its own',
      );
    }
    this.registry = registry;
    const registers = [registry];
    const stats = () => this.scrapeStats();
    const cacheStats = () => this.cache?.cacheStats();

    const requestCounts = this.requestCounts;
    new Counter({
      name: METRIC.requests,
      help: "Route calls, by entry point and the backend that answered ('cache' when the cache answered every row).",
      labelNames: ['entry', 'backend'],
      registers,
      collect() {
        this.reset();
        for (const { entry, backend, calls } of requestCounts.values()) this.inc({ entry, backend }, calls);
      },
    });
    countedHistogram(METRIC.duration, 'Route call latency in seconds.', registry, this.durationBounds, () => ({
      counts: this.durationCounts,
      sum: this.durationSum,
    }));
    this.errors = new Counter({ name: METRIC.errors, help: 'Failed route calls, by error code.', labelNames: ['code'], registers });
    // Read from the router's native totals (and the cache) when Prometheus scrapes.
    new Counter({
      name: METRIC.tokens,
      help: 'Tokens routed by the engine.',
      registers,
      collect() {
        const s = stats();
        if (s) {
          this.reset();
          this.inc(s.tokens);
        }
      },
    });
    new Counter({
      name: METRIC.assignments,
      help: 'Surviving token-to-expert assignments, by expert.',
      labelNames: ['expert'],
      registers,
      collect() {
        const s = stats();
        if (!s) return;
        this.reset();
        s.expertAssignments.forEach((count, e) => this.inc({ expert: String(e) }, count));
      },
    });
    countedHistogram(METRIC.expertsPerToken, 'Experts the strategy chose per token.', registry, null, () => {
      const s = stats();
      if (!s) return null;
      const counts = s.expertsPerTokenHistogram;
      return { counts, sum: counts.reduce((sum, n, k) => sum + n * k, 0) };
    });
    new Gauge({
      name: METRIC.loadBalance,
      help: '1 / (E * sum of squared expert utilization): 1 when even, 1/E when one expert takes all.',
      registers,
      collect() {
        const s = stats();
        if (s) this.set(s.loadBalanceScore);
      },
    });
    new Gauge({
      name: METRIC.flopReduction,
      help: '1 - experts used / (tokens * topK): expert compute saved against static top-K.',
      registers,
      collect() {
        const s = stats();
        if (s) this.set(s.flopReduction);
      },
    });
    new Counter({
      name: METRIC.cacheHits,
      help: 'Requests (or token rows, in token mode) answered from the routing cache.',
      registers,
      collect() {
        this.reset();
        this.inc(cacheStats()?.hits ?? 0);
      },
    });
    new Counter({
      name: METRIC.cacheMisses,
      help: 'Requests (or token rows, in token mode) the routing cache had to route.',
      registers,
      collect() {
        this.reset();
        this.inc(cacheStats()?.misses ?? 0);
      },
    });
    const backendInfo = new Gauge({ name: METRIC.backendInfo, help: 'The backend serving routes (value 1).', labelNames: ['backend'], registers });
    backendInfo.set({ backend: this.backendName }, 1);

    const breaker = inStack(router, FailoverRouter);
    if (breaker) {
      this.breaker = breaker;
      const breakerState = new Gauge({ name: METRIC.breakerState, help: 'GPU→CPU breaker state (1 for the current one).', labelNames: ['state'], registers });
      const show = (current: BreakerState) => BREAKER_STATES.forEach((s) => breakerState.set({ state: s }, s === current ? 1 : 0));
      show(breaker.state);
      breaker.on('state', (event: BreakerEvent) => {
        show(event.to);
        this.backendName = router.backend;
        backendInfo.reset();
        backendInfo.set({ backend: this.backendName }, 1);
        this.emit('breaker', event);
      });
    }
  }

  get backend(): string {
    return this.backendName;
  }

  get configVersion(): number {
    return this.router.configVersion;
  }

  get parameters(): { topP: number; threshold: number } {
    return this.router.parameters;
  }

  route(hidden: RouteInput): RoutingResult {
    return this.timed('route', () => this.target.route(hidden));
  }

  routeLogits(logits: RouteInput): RoutingResult {
    return this.timed('routeLogits', () => this.target.routeLogits(logits));
  }

  routeAsync(hidden: RouteInput): Promise<RoutingResult> {
    return this.timedAsync('routeAsync', () => this.target.routeAsync(hidden));
  }

  routeLogitsAsync(logits: RouteInput): Promise<RoutingResult> {
    return this.timedAsync('routeLogitsAsync', () => this.target.routeLogitsAsync(logits));
  }

  calibrate(sample: RouteInput, options: CalibrateOptions): CalibrateResult {
    return this.router.calibrate(sample, options);
  }

  updateBias(counts: Int32Array): void {
    this.router.updateBias(counts);
  }

  stats(): RouterStats {
    return this.router.stats();
  }

  resetStats(): void {
    this.router.resetStats();
  }

  /** Prometheus text of the registry. */
  metricsText(): Promise<string> {
    return this.registry.metrics();
  }

  /**
   * Routes one token outside the metrics so the engine (and a GPU) is initialised before traffic; a
   * router that has not routed yet gets its stats reset after it. A router that adapts on every route
   * (biasUpdateRate, noise) would keep the warm-up in its state, so it warms up on an empty batch,
   * and its noise step (which every route advances, an empty one too) is put back.
   */
  async warmUp(): Promise<void> {
    const o = this.router.options;
    const adapts = (o.biasUpdateRate ?? 0) > 0 || (o.noise?.std ?? 0) > 0;
    const fresh = this.router.stats().calls === 0;
    const stepped = inStack(this.router, DynamicRouter);
    const step = stepped?.step ?? 0;
    (await this.router.routeAsync(new Float32Array(adapts ? 0 : this.router.inputDim))).release();
    if (stepped) stepped.step = step;
    if (fresh) this.router.resetStats();
  }

  /** Status, backend, latency, error rate, last error; checks the alerts first. */
  health(): HealthReport {
    const p95 = this.p95();
    const errorRate = this.errorRate();
    const stats = this.readStats();
    this.evaluate(p95, errorRate, stats);
    let status: HealthStatus = 'ok';
    if (this.firing.size > 0 || (this.breaker && this.breaker.state !== 'closed')) status = 'degraded';
    if (this.firing.has('error-rate') || stats === null) status = 'unhealthy';
    const report: HealthReport = {
      status,
      backend: this.backendName,
      p95LatencyMs: p95,
      errorRate,
      windowCalls: this.filled,
      lastError: this.lastError,
      loadBalanceScore: (stats ?? this.lastStats)?.loadBalanceScore ?? 1,
      alerts: [...this.firing],
    };
    if (this.breaker) report.breaker = this.breaker.state;
    if (this.cache) report.cache = this.cache.cacheStats();
    return report;
  }

  /** Unregisters the metrics and disposes the router (and cache). A second call does nothing. */
  dispose(): void {
    if (this.unregistered) return;
    this.unregistered = true;
    for (const name of Object.values(METRIC)) this.registry.removeSingleMetric(name);
    this.target.dispose();
  }

  /** The router's stats now; null once it is disposed. */
  private readStats(): RouterStats | null {
    try {
      this.lastStats = this.router.stats();
      return this.lastStats;
    } catch {
      return null;
    }
  }

  /** The stats for a scrape, read once for all of its collect callbacks (they all run in one turn). */
  private scrapeStats(): RouterStats | null {
    if (this.snapshot) return this.snapshot;
    this.snapshot = this.readStats();
    if (this.snapshot) {
      queueMicrotask(() => {
        this.snapshot = null;
      });
    }
    return this.snapshot;
  }

  private timed(entry: RouteEntry, call: () => RoutingResult): RoutingResult {
    const started = this.clock();
    let result: RoutingResult;
    try {
      result = call();
    } catch (error) {
      this.record(entry, started, this.backendName, error);
      throw error;
    }
    this.record(entry, started, result.backend, undefined);
    return result;
  }

  private async timedAsync(entry: RouteEntry, call: () => Promise<RoutingResult>): Promise<RoutingResult> {
    const started = this.clock();
    let result: RoutingResult;
    try {
      result = await call();
    } catch (error) {
      this.record(entry, started, this.backendName, error);
      throw error;
    }
    this.record(entry, started, result.backend, undefined);
    return result;
  }

  /** Counts a call under the backend that answered it (a failed call: the one serving). */
  private record(entry: RouteEntry, started: number, backend: string, error: unknown): void {
    const ms = this.clock() - started;
    const seconds = ms / 1000;
    const bounds = this.durationBounds;
    let bucket = 0;
    while (bucket < bounds.length && seconds > bounds[bucket]!) ++bucket;
    ++this.durationCounts[bucket]!;
    this.durationSum += seconds;
    const key = `${entry} ${backend}`;
    const calls = this.requestCounts.get(key);
    if (calls) ++calls.calls;
    else this.requestCounts.set(key, { entry, backend, calls: 1 });
    let fault = 0;
    if (error !== undefined) {
      const code = errorCode(error);
      this.errors.inc({ code });
      this.lastError = { code, message: error instanceof Error ? error.message : String(error), at: new Date().toISOString() };
      if (!CALLER_ERRORS.includes(code)) fault = 1;
    }
    this.latencies[this.next] = ms;
    this.faults[this.next] = fault;
    this.next = (this.next + 1) % this.latencies.length;
    this.filled = Math.min(this.filled + 1, this.latencies.length);
    if (++this.sinceEvaluation >= this.evaluateEvery) {
      // Only what a configured alert needs: sorting the window and reading the router's stats cost
      // more than the rest of the call's accounting together.
      const t = this.thresholds;
      this.evaluate(t.p95LatencyMs !== undefined ? this.p95() : 0, this.errorRate(), t.loadBalanceScore !== undefined ? this.readStats() : null);
    }
  }

  /** The p95 latency (ms) over the window. */
  private p95(): number {
    const n = this.filled;
    if (n === 0) return 0;
    return this.latencies.slice(0, n).sort()[Math.ceil(0.95 * n) - 1]!;
  }

  /** The share of failed calls over the window. */
  private errorRate(): number {
    const n = this.filled;
    let faults = 0;
    for (let i = 0; i < n; i++) faults += this.faults[i]!;
    return n === 0 ? 0 : faults / n;
  }

  private evaluate(p95: number, errorRate: number, stats: RouterStats | null): void {
    this.sinceEvaluation = 0;
    const t = this.thresholds;
    const h = t.hysteresis;
    const enough = this.filled >= t.minRequests;
    if (t.p95LatencyMs !== undefined && enough) this.judge('p95-latency', p95, t.p95LatencyMs, p95 > t.p95LatencyMs, p95 < t.p95LatencyMs * (1 - h));
    if (t.errorRate !== undefined && enough) this.judge('error-rate', errorRate, t.errorRate, errorRate > t.errorRate, errorRate < t.errorRate * (1 - h));
    if (t.loadBalanceScore !== undefined && stats && stats.tokens > 0) {
      const score = stats.loadBalanceScore;
      const min = t.loadBalanceScore;
      this.judge('load-imbalance', score, min, score < min, score > min + h * (1 - min));
    }
  }

  private judge(alert: AlertName, value: number, threshold: number, fires: boolean, clears: boolean): void {
    if (!this.firing.has(alert) && fires) {
      this.firing.add(alert);
      this.emit('alert', { alert, state: 'firing', value, threshold } satisfies AlertEvent);
    } else if (this.firing.has(alert) && clears) {
      this.firing.delete(alert);
      this.emit('alert', { alert, state: 'resolved', value, threshold } satisfies AlertEvent);
    }
  }
}
