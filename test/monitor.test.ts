// MonitoredRouter: the metrics (names, labels, values that agree with the routes made), health,
// alerts with hysteresis, and the GPU→CPU breaker with an injected failing primary.
import { afterEach, describe, expect, it } from 'vitest';
import { Counter, Registry, register as globalRegistry } from 'prom-client';
import {
  FailoverRouter,
  MonitoredRouter,
  RouterError,
  RoutingCache,
  type AlertEvent,
  type BreakerEvent,
  type DynamicRouter,
  type RoutingResult,
} from '../src/index';
import { D, E, K, FlakyRouter, data, makeRouter, plain, routed } from './helpers/service';

const LISTED = [
  'moe_router_requests_total',
  'moe_router_request_duration_seconds',
  'moe_router_errors_total',
  'moe_router_tokens_total',
  'moe_router_expert_assignments_total',
  'moe_router_experts_per_token',
  'moe_router_load_balance_score',
  'moe_router_flop_reduction_ratio',
  'moe_router_cache_hits_total',
  'moe_router_cache_misses_total',
  'moe_router_backend_info',
];

const open: { dispose(): void }[] = [];
function own<T extends { dispose(): void }>(thing: T): T {
  open.push(thing);
  return thing;
}
afterEach(() => {
  for (const thing of open.splice(0)) thing.dispose();
});

/** Prometheus text as { 'name{labels}': value }, and the metric names by # TYPE. */
function parse(text: string) {
  const samples = new Map<string, number>();
  const types = new Map<string, string>();
  for (const line of text.split('\n')) {
    const type = /^# TYPE (\S+) (\S+)/.exec(line);
    if (type) types.set(type[1]!, type[2]!);
    if (line.length === 0 || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    samples.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return { samples, types };
}

function release(r: RoutingResult) {
  r.release();
}

/** A clock for the monitor: each call is timed by two reads, and takes `latency` ms. */
function steppedClock() {
  const state = { latency: 1, now: 0, reads: 0 };
  const clock = () => (state.reads++ % 2 === 0 ? state.now : (state.now += state.latency));
  return { state, clock };
}

describe('MonitoredRouter metrics', () => {
  it('registers exactly the listed metrics, in its own registry and not the global one', async () => {
    const m = own(new MonitoredRouter(makeRouter()));
    const { types } = parse(await m.metricsText());
    expect([...types.keys()].sort()).toEqual([...LISTED].sort());
    expect(types.get('moe_router_request_duration_seconds')).toBe('histogram');
    expect(types.get('moe_router_experts_per_token')).toBe('histogram');
    expect(types.get('moe_router_tokens_total')).toBe('counter');
    expect(types.get('moe_router_load_balance_score')).toBe('gauge');
    expect(await globalRegistry.metrics()).not.toContain('moe_router_');
  });

  it('reports values that agree with the routes made', async () => {
    const router = makeRouter({ strategy: 'top-p', topP: 0.5, minExperts: 1 });
    const m = own(new MonitoredRouter(router));
    for (const x of [data(5, D, 1), data(7, D, 2), data(3, D, 3)]) release(m.route(x));
    release(await m.routeAsync(data(5, D, 1)));
    release(m.routeLogits(data(2, E, 4)));
    expect(() => m.route(new Float32Array(D + 1))).toThrow(RouterError);

    const stats = router.stats();
    const { samples } = parse(await m.metricsText());
    const backend = router.backend;
    expect(samples.get(`moe_router_requests_total{entry="route",backend="${backend}"}`)).toBe(4);
    expect(samples.get(`moe_router_requests_total{entry="routeAsync",backend="${backend}"}`)).toBe(1);
    expect(samples.get(`moe_router_requests_total{entry="routeLogits",backend="${backend}"}`)).toBe(1);
    expect(samples.get('moe_router_errors_total{code="E_SHAPE"}')).toBe(1);
    expect(samples.get('moe_router_request_duration_seconds_count')).toBe(6);
    expect(samples.get('moe_router_tokens_total')).toBe(5 + 7 + 3 + 5 + 2);
    expect(samples.get('moe_router_tokens_total')).toBe(stats.tokens);
    for (let e = 0; e < E; e++) {
      expect(samples.get(`moe_router_expert_assignments_total{expert="${e}"}`)).toBe(stats.expertAssignments[e]);
    }
    expect(samples.get('moe_router_experts_per_token_count')).toBe(stats.tokens);
    expect(samples.get('moe_router_experts_per_token_bucket{le="+Inf"}')).toBe(stats.tokens);
    let cumulative = 0;
    for (let j = 0; j <= K; j++) {
      cumulative += stats.expertsPerTokenHistogram[j]!;
      expect(samples.get(`moe_router_experts_per_token_bucket{le="${j}"}`)).toBe(cumulative);
    }
    const sumK = Array.from(stats.expertsPerTokenHistogram).reduce((s, n, j) => s + n * j, 0);
    expect(samples.get('moe_router_experts_per_token_sum')).toBe(sumK);
    expect(sumK / stats.tokens).toBeCloseTo(stats.meanExpertsPerToken, 12);
    expect(samples.get('moe_router_load_balance_score')).toBeCloseTo(stats.loadBalanceScore, 12);
    expect(samples.get('moe_router_flop_reduction_ratio')).toBeCloseTo(stats.flopReduction, 12);
    expect(samples.get(`moe_router_backend_info{backend="${backend}"}`)).toBe(1);
    expect(samples.get('moe_router_cache_hits_total')).toBe(0);
  });

  it('puts each call in the duration bucket of its latency (le inclusive), and checks the bounds', async () => {
    const { state, clock } = steppedClock();
    const m = own(new MonitoredRouter(makeRouter(), { clock, durationBuckets: [0.001, 0.01, 0.1] }));
    const latenciesMs = [0.5, 1, 2, 10, 10.5, 250, 3];
    for (const ms of latenciesMs) {
      state.latency = ms;
      release(m.route(data(1, D, 9)));
    }
    const { samples } = parse(await m.metricsText());
    const bucket = (le: string) => samples.get(`moe_router_request_duration_seconds_bucket{le="${le}"}`);
    const below = (bound: number) => latenciesMs.filter((ms) => ms / 1000 <= bound).length;
    expect(bucket('0.001')).toBe(below(0.001)); // 0.5 and 1 ms
    expect(bucket('0.01')).toBe(below(0.01));
    expect(bucket('0.1')).toBe(below(0.1));
    expect(bucket('+Inf')).toBe(latenciesMs.length);
    expect(samples.get('moe_router_request_duration_seconds_count')).toBe(latenciesMs.length);
    expect(samples.get('moe_router_request_duration_seconds_sum')).toBeCloseTo(latenciesMs.reduce((s, ms) => s + ms / 1000, 0), 12);
    for (const durationBuckets of [[], [0.01, 0.001], [0, 1], [1, Number.NaN]]) {
      expect(() => new MonitoredRouter(own(makeRouter()), { durationBuckets })).toThrow(/durationBuckets must be increasing positive/);
    }
  });

  it('counts cache hits and misses, and registers into a registry it is given', async () => {
    const registry = new Registry();
    const m = own(new MonitoredRouter(makeRouter(), { registry, cache: { maxBytes: 1 << 20 } }));
    const x = data(4, D, 5);
    for (let i = 0; i < 3; i++) release(m.route(x));
    release(m.route(data(4, D, 6)));
    const { samples } = parse(await registry.metrics());
    expect(samples.get('moe_router_cache_hits_total')).toBe(2);
    expect(samples.get('moe_router_cache_misses_total')).toBe(2);
    expect(samples.get('moe_router_tokens_total')).toBe(8); // hits are not routed
    expect(m.health().cache).toMatchObject({ hits: 2, misses: 2 });
    expect(() => new MonitoredRouter(own(makeRouter()), { registry })).toThrow(/already holds moe_router_requests_total, .*give each router its own Registry/);
    // A registry holding one of the names only: the same E_CONFIG, and nothing of this monitor left in it.
    const partial = new Registry();
    new Counter({ name: 'moe_router_errors_total', help: 'someone else’s', registers: [partial] });
    expect(() => new MonitoredRouter(own(makeRouter()), { registry: partial })).toThrow(/already holds moe_router_errors_total, /);
    expect(partial.getMetricsAsArray().map((m) => m.name)).toEqual(['moe_router_errors_total']);
    m.dispose();
    expect(await registry.metrics()).not.toContain('moe_router_');
    own(new MonitoredRouter(makeRouter(), { registry })); // free again
  });

  it('reports a cache and a breaker it is given already stacked (monitor → cache → breaker)', async () => {
    const clock = { now: 0 };
    const primary = new FlakyRouter(makeRouter());
    const cache = new RoutingCache(new FailoverRouter(primary, makeRouter(), { failures: 1, clock: () => clock.now }));
    const m = own(new MonitoredRouter(cache));
    expect(m.cache).toBe(cache);
    const x = data(4, D, 5);
    for (let i = 0; i < 3; i++) release(m.route(x));
    let { samples } = parse(await m.metricsText());
    expect(samples.get('moe_router_cache_hits_total')).toBe(2);
    expect(samples.get('moe_router_cache_misses_total')).toBe(1);
    expect(samples.get('moe_router_breaker_state{state="closed"}')).toBe(1);
    primary.broken = true;
    release(m.route(data(4, D, 6)));
    expect(m.health()).toMatchObject({ status: 'degraded', breaker: 'open', cache: { hits: 2, misses: 2 } });
    ({ samples } = parse(await m.metricsText()));
    expect(samples.get('moe_router_breaker_state{state="open"}')).toBe(1);
    expect(samples.has('moe_router_backend_info{backend="cuda"}')).toBe(false);
  });

  it('keeps scraping after the router is disposed', async () => {
    const registry = new Registry();
    const router = makeRouter();
    const m = new MonitoredRouter(router, { registry });
    release(m.route(data(2, D, 7)));
    router.dispose();
    const { samples } = parse(await registry.metrics());
    expect(samples.get('moe_router_requests_total{entry="route",backend="' + m.backend + '"}')).toBe(1);
    expect(m.health().status).toBe('unhealthy');
    expect(() => m.route(data(1, D, 8))).toThrow(/disposed/);
    m.dispose();
  });
});

describe('MonitoredRouter health and alerts', () => {
  it('reports status, backend, p95 latency, error rate and the last error', () => {
    const { state, clock } = steppedClock();
    const flaky = new FlakyRouter(makeRouter());
    flaky.failWith = 'E_BACKEND';
    const m = own(new MonitoredRouter(flaky, { clock, window: 100, alerts: { minRequests: 10 } }));
    for (let i = 0; i < 20; i++) {
      state.latency = i + 1; // 1 … 20 ms
      release(m.route(data(1, D, i)));
    }
    let h = m.health();
    expect(h).toMatchObject({ status: 'ok', backend: 'cuda', p95LatencyMs: 19, errorRate: 0, windowCalls: 20, lastError: null, alerts: [] });
    // Bad input is the caller's: counted, but the router stays healthy.
    expect(() => m.route(new Float32Array(3))).toThrow(RouterError);
    h = m.health();
    expect(h.errorRate).toBe(0);
    expect(h.lastError?.code).toBe('E_SHAPE');
    flaky.broken = true;
    for (let i = 0; i < 30; i++) expect(() => m.route(data(1, D, i))).toThrow(/injected E_BACKEND/);
    h = m.health();
    expect(h.errorRate).toBeCloseTo(30 / 51, 12);
    expect(h.lastError).toMatchObject({ code: 'E_BACKEND', message: 'injected E_BACKEND failure' });
    expect(h.status).toBe('unhealthy');
    expect(h.alerts).toEqual(['error-rate']);
  });

  it('fires and resolves the latency alert with hysteresis', () => {
    const { state, clock } = steppedClock();
    const m = own(new MonitoredRouter(makeRouter(), { clock, window: 20, evaluateEvery: 1, alerts: { p95LatencyMs: 10, hysteresis: 0.2, minRequests: 5 } }));
    const events: AlertEvent[] = [];
    m.on('alert', (event: AlertEvent) => events.push(event));
    const x = data(1, D, 9);
    const calls = (n: number, latency: number) => {
      state.latency = latency;
      for (let i = 0; i < n; i++) release(m.route(x));
    };
    calls(4, 50); // too few calls to judge
    expect(events).toEqual([]);
    calls(1, 50);
    expect(events).toEqual([{ alert: 'p95-latency', state: 'firing', value: 50, threshold: 10 }]);
    expect(m.health().status).toBe('degraded');
    calls(20, 9); // below the threshold but not below 10 * (1 - 0.2) = 8: still firing
    expect(events).toHaveLength(1);
    expect(m.health().alerts).toEqual(['p95-latency']);
    calls(20, 7);
    expect(events[1]).toEqual({ alert: 'p95-latency', state: 'resolved', value: 7, threshold: 10 });
    calls(20, 9); // between the two lines again: stays resolved
    expect(events).toHaveLength(2);
    expect(m.health().status).toBe('ok');
  });

  it('fires and resolves the load-imbalance alert from the native stats', () => {
    const m = own(new MonitoredRouter(makeRouter(), { evaluateEvery: 1, alerts: { loadBalanceScore: 0.5, hysteresis: 0.5 } }));
    const events: AlertEvent[] = [];
    m.on('alert', (event: AlertEvent) => events.push(event));
    // Every token prefers experts 0..K-1: the load balance score drops to K/E.
    const skewed = new Float32Array(8 * E);
    for (let t = 0; t < 8; t++) for (let e = 0; e < K; e++) skewed[t * E + e] = 10;
    release(m.routeLogits(skewed));
    expect(events).toEqual([{ alert: 'load-imbalance', state: 'firing', value: K / E, threshold: 0.5 }]);
    // Even traffic: each expert once per E/K tokens.
    m.resetStats();
    const even = new Float32Array(E / K * E);
    for (let t = 0; t < E / K; t++) for (let j = 0; j < K; j++) even[t * E + t * K + j] = 10;
    release(m.routeLogits(even));
    expect(events[1]).toMatchObject({ alert: 'load-imbalance', state: 'resolved', value: 1 });
  });

  it('rejects bad monitor options', () => {
    const router = own(makeRouter());
    expect(() => new MonitoredRouter(router, { window: 0 })).toThrow(/window/);
    expect(() => new MonitoredRouter(router, { alerts: { hysteresis: 1 } })).toThrow(/hysteresis/);
    expect(() => new MonitoredRouter(router, { alerts: { p95LatencyMs: -1 } })).toThrow(/p95LatencyMs/);
  });

  it('warms up without counting the warm-up', async () => {
    const router = makeRouter();
    const m = own(new MonitoredRouter(router));
    await m.warmUp();
    expect(router.stats().calls).toBe(0);
    expect(m.health().windowCalls).toBe(0);
    // A noisy router's first real route draws as a fresh router's would (the warm-up's step is put back).
    const noisy = makeRouter({ noise: { std: 1, seed: 3 } });
    const monitored = own(new MonitoredRouter(noisy));
    await monitored.warmUp();
    expect(noisy.step).toBe(0);
    const x = data(4, D, 7);
    const fresh = own(makeRouter({ noise: { std: 1, seed: 3 } }));
    expect(routed(monitored, x)).toEqual(routed(fresh, x));
  });
});

describe('FailoverRouter (GPU→CPU breaker)', () => {
  function setup(options: { failures?: number; openMs?: number; halfOpenProbes?: number } = {}) {
    const clock = { now: 0 };
    const primary = new FlakyRouter(makeRouter());
    const fallback: DynamicRouter = makeRouter();
    const breaker = new FailoverRouter(primary, fallback, { failures: 2, openMs: 1000, ...options, clock: () => clock.now });
    const events: BreakerEvent[] = [];
    breaker.on('state', (event: BreakerEvent) => events.push(event));
    open.push(breaker);
    return { clock, primary, fallback, breaker, events, x: data(3, D, 10) };
  }

  it('opens after repeated E_CUDA failures, answering on the CPU all along', () => {
    const { primary, breaker, events, x, fallback } = setup();
    const expected = routed(fallback, x);
    expect(routed(breaker, x)).toEqual(expected);
    primary.broken = true;
    expect(routed(breaker, x)).toEqual(expected);
    expect(breaker.state).toBe('closed');
    expect(routed(breaker, x)).toEqual(expected);
    expect(breaker.state).toBe('open');
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ from: 'closed', to: 'open' });
    expect(events[0]!.error?.code).toBe('E_CUDA');
    // Open: the primary is not tried at all.
    const tried = primary.calls;
    for (let i = 0; i < 5; i++) expect(routed(breaker, x)).toEqual(expected);
    expect(primary.calls).toBe(tried);
    expect(breaker.backend).toBe(fallback.backend);
  });

  it('probes the primary when half-open: a failure reopens, a success closes', () => {
    const { clock, primary, breaker, events, x } = setup();
    primary.broken = true;
    routed(breaker, x);
    routed(breaker, x);
    expect(breaker.state).toBe('open');
    clock.now = 999;
    routed(breaker, x);
    expect(breaker.state).toBe('open');
    clock.now = 1000;
    const tried = primary.calls;
    routed(breaker, x); // the probe fails: open again, for another openMs
    expect(primary.calls).toBe(tried + 1);
    expect(events.map((e) => e.to)).toEqual(['open', 'half-open', 'open']);
    clock.now = 1500;
    routed(breaker, x);
    expect(breaker.state).toBe('open');
    primary.broken = false;
    clock.now = 2000;
    routed(breaker, x);
    expect(breaker.state).toBe('closed');
    expect(events.map((e) => e.to)).toEqual(['open', 'half-open', 'open', 'half-open', 'closed']);
    expect(breaker.backend).toBe('cuda');
  });

  it('needs halfOpenProbes successes in a row, and works the same for the async routes', async () => {
    const { clock, primary, breaker, x, fallback } = setup({ failures: 1, halfOpenProbes: 2 });
    const expected = routed(fallback, x);
    primary.broken = true;
    expect(plain(await breaker.routeAsync(x))).toEqual(expected);
    expect(breaker.state).toBe('open');
    primary.broken = false;
    clock.now = 1000;
    expect(plain(await breaker.routeAsync(x))).toEqual(expected);
    expect(breaker.state).toBe('half-open');
    expect(plain(await breaker.routeLogitsAsync(data(2, E, 1)))).toEqual(routed({ route: (v) => fallback.routeLogits(v) }, data(2, E, 1)));
    expect(breaker.state).toBe('closed');
  });

  it('lets only the probes of the current half-open period decide it, not calls admitted before', async () => {
    /** A primary whose async calls wait, while `hold` is set, until the test lets them go. */
    class Held extends FlakyRouter {
      hold = false;
      readonly waiting: (() => void)[] = [];
      override async routeAsync(x: Parameters<FlakyRouter['routeAsync']>[0]) {
        if (this.hold) await new Promise<void>((resolve) => this.waiting.push(resolve));
        return super.routeAsync(x);
      }
    }
    const clock = { now: 0 };
    const primary = new Held(makeRouter());
    const breaker = own(new FailoverRouter(primary, makeRouter(), { failures: 2, openMs: 1000, clock: () => clock.now }));
    const x = data(3, D, 11);
    primary.hold = true;
    const stale = breaker.routeAsync(x); // admitted while closed
    primary.hold = false;
    primary.broken = true;
    release(breaker.route(x));
    release(breaker.route(x));
    expect(breaker.state).toBe('open');
    clock.now = 1000;
    primary.broken = false;
    primary.hold = true;
    const probe = breaker.routeAsync(x); // the half-open period's one probe
    expect(breaker.state).toBe('half-open');
    primary.waiting.shift()!();
    release(await stale); // succeeds, but was admitted while closed: it decides nothing
    expect(breaker.state).toBe('half-open');
    primary.waiting.shift()!();
    release(await probe);
    expect(breaker.state).toBe('closed');
  });

  it('passes other errors through without counting them, sync and async', async () => {
    const { primary, breaker, x } = setup({ failures: 1 });
    expect(() => breaker.route(new Float32Array(D + 1))).toThrow(/multiple of inputDim/);
    primary.broken = true;
    primary.failWith = 'E_NONFINITE';
    expect(() => breaker.route(x)).toThrow(/E_NONFINITE/);
    await expect(breaker.routeAsync(x)).rejects.toThrow(/E_NONFINITE/);
    expect(breaker.state).toBe('closed');
  });

  it('adds both routers stats, and calibrates both', () => {
    const { primary, breaker, x, fallback } = setup({ failures: 1 });
    routed(breaker, x);
    primary.broken = true;
    routed(breaker, x);
    routed(breaker, x);
    const s = breaker.stats();
    expect(s.tokens).toBe(9);
    expect(s.calls).toBe(3);
    const p = primary.stats();
    const f = fallback.stats();
    expect(Array.from(s.expertAssignments)).toEqual(Array.from(p.expertAssignments, (v, e) => v + f.expertAssignments[e]!));
    expect(s.expertUtilization.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 12);
    expect(() => new FailoverRouter(primary, own(makeRouter({ topK: 2 })))).toThrow(/shape/);
  });

  it('counts each call under the backend that answered it, not the one serving', async () => {
    const { primary, breaker, x, fallback } = setup();
    const m = new MonitoredRouter(breaker);
    open.pop(); // the monitor owns the breaker now
    own(m);
    release(m.route(x)); // on the GPU
    primary.fallsBack = true; // the GPU call failed and the router answered on the CPU itself
    release(m.route(x));
    primary.fallsBack = false;
    primary.broken = true; // the GPU call failed; the breaker (still closed) asked the fallback
    release(await m.routeAsync(x));
    expect(breaker.state).toBe('closed');
    expect(m.health()).toMatchObject({ breaker: 'closed', backend: 'cuda' });
    const { samples } = parse(await m.metricsText());
    const cpu = fallback.backend;
    expect(cpu).not.toBe('cuda');
    expect(samples.get('moe_router_requests_total{entry="route",backend="cuda"}')).toBe(1);
    expect(samples.get(`moe_router_requests_total{entry="route",backend="${cpu}"}`)).toBe(1);
    expect(samples.get(`moe_router_requests_total{entry="routeAsync",backend="${cpu}"}`)).toBe(1);
    expect(samples.has('moe_router_requests_total{entry="routeAsync",backend="cuda"}')).toBe(false);
  });

  it('shows in the monitor: events, the breaker metric, backend_info and health', async () => {
    const { clock, primary, breaker, x, fallback } = setup();
    const m = new MonitoredRouter(breaker);
    open.pop(); // the monitor owns the breaker now
    own(m);
    const seen: BreakerEvent[] = [];
    m.on('breaker', (event: BreakerEvent) => seen.push(event));
    let { samples } = parse(await m.metricsText());
    expect(samples.get('moe_router_breaker_state{state="closed"}')).toBe(1);
    expect(samples.get('moe_router_backend_info{backend="cuda"}')).toBe(1);
    primary.broken = true;
    release(m.route(x));
    release(m.route(x));
    expect(seen.map((e) => e.to)).toEqual(['open']);
    expect(m.health()).toMatchObject({ status: 'degraded', breaker: 'open', backend: fallback.backend });
    ({ samples } = parse(await m.metricsText()));
    expect(samples.get('moe_router_breaker_state{state="open"}')).toBe(1);
    expect(samples.get('moe_router_breaker_state{state="closed"}')).toBe(0);
    expect(samples.get(`moe_router_backend_info{backend="${fallback.backend}"}`)).toBe(1);
    expect(samples.has('moe_router_backend_info{backend="cuda"}')).toBe(false);
    expect(samples.get('moe_router_errors_total{code="E_CUDA"}')).toBeUndefined(); // failed over, not failed
    primary.broken = false;
    clock.now = 1000;
    release(m.route(x));
    expect(m.health()).toMatchObject({ status: 'ok', breaker: 'closed', backend: 'cuda' });
  });
});
