// ModelFleet against scripted endpoints: balancers, breakers (on an injected clock), retries and their
// budget, tier failover, deadlines, zero-downtime replace, health.
import { describe, expect, it } from 'vitest';
import { FleetError, ModelFleet, type Endpoint } from '../src/fleet/index';

type Req = { n: number };

/** An endpoint that answers with its id, optionally failing or waiting. */
function endpoint(id: string, behaviour: { fail?: boolean | (() => boolean); delayMs?: number; weight?: number } = {}): Endpoint<Req, string> & { calls: number } {
  const e = {
    id,
    weight: behaviour.weight,
    calls: 0,
    invoke: async (_req: Req, { signal }: { signal: AbortSignal }) => {
      e.calls += 1;
      if (behaviour.delayMs) {
        await new Promise<void>((resolve, reject) => {
          const timer = setTimeout(resolve, behaviour.delayMs);
          signal.addEventListener('abort', () => {
            clearTimeout(timer);
            reject(new Error('aborted'));
          });
        });
      }
      const fail = typeof behaviour.fail === 'function' ? behaviour.fail() : behaviour.fail;
      if (fail) throw new Error(`${id} failed`);
      return id;
    },
  };
  return e;
}

class Clock {
  t = 1_000_000;
  now = () => this.t;
}

describe('balancers', () => {
  it('round-robin cycles through the tier', async () => {
    const fleet = new ModelFleet({ tiers: [{ name: 'fast', endpoints: [endpoint('a'), endpoint('b'), endpoint('c')] }] });
    const seen: string[] = [];
    for (let i = 0; i < 6; i++) seen.push((await fleet.invoke({ n: i })).endpoint);
    expect(seen).toEqual(['a', 'b', 'c', 'a', 'b', 'c']);
  });

  it('weighted gives each endpoint its share, smoothly', async () => {
    const fleet = new ModelFleet({ balancer: 'weighted', tiers: [{ name: 't', endpoints: [endpoint('a', { weight: 3 }), endpoint('b', { weight: 1 })] }] });
    const seen: string[] = [];
    for (let i = 0; i < 8; i++) seen.push((await fleet.invoke({ n: i })).endpoint);
    expect(seen.filter((x) => x === 'a').length).toBe(6);
    expect(seen.slice(0, 4).filter((x) => x === 'b').length).toBe(1);
  });

  it('least-request sends new work to the idle endpoint', async () => {
    const slow = endpoint('slow', { delayMs: 50 });
    const fleet = new ModelFleet({ balancer: 'least-request', tiers: [{ name: 't', endpoints: [slow, endpoint('idle')] }] });
    const pending = fleet.invoke({ n: 0 }); // goes to 'slow' (first turn) and stays in flight
    const next = [(await fleet.invoke({ n: 1 })).endpoint, (await fleet.invoke({ n: 2 })).endpoint];
    expect(next).toEqual(['idle', 'idle']);
    expect((await pending).endpoint).toBe('slow');
  });

  it('latency prefers the faster endpoint once both are measured', async () => {
    const fleet = new ModelFleet({ balancer: 'latency', tiers: [{ name: 't', endpoints: [endpoint('slow', { delayMs: 30 }), endpoint('quick', { delayMs: 1 })] }] });
    await fleet.invoke({ n: 0 });
    await fleet.invoke({ n: 1 });
    const seen = [];
    for (let i = 0; i < 4; i++) seen.push((await fleet.invoke({ n: i })).endpoint);
    expect(seen).toEqual(['quick', 'quick', 'quick', 'quick']);
  });

  it('health prefers the endpoint with fewer recent failures', async () => {
    let flaky = true;
    const fleet = new ModelFleet({
      balancer: 'health',
      retry: { attempts: 2 },
      breaker: { minRequests: 100 },
      tiers: [{ name: 't', endpoints: [endpoint('flaky', { fail: () => flaky }), endpoint('steady')] }],
    });
    for (let i = 0; i < 4; i++) await fleet.invoke({ n: i });
    flaky = false;
    const seen = [];
    for (let i = 0; i < 3; i++) seen.push((await fleet.invoke({ n: i })).endpoint);
    expect(seen).toEqual(['steady', 'steady', 'steady']);
  });
});

describe('failures', () => {
  it('retries on another endpoint of the tier and reports the attempts', async () => {
    const fleet = new ModelFleet({ tiers: [{ name: 't', endpoints: [endpoint('bad', { fail: true }), endpoint('good')] }] });
    const r = await fleet.invoke({ n: 0 });
    expect(r).toMatchObject({ value: 'good', endpoint: 'good', tier: 't', attempts: 2 });
  });

  it('fails over to the next tier when its own tier has nothing left', async () => {
    const fleet = new ModelFleet({
      tiers: [
        { name: 'cheap', endpoints: [endpoint('c1', { fail: true })] },
        { name: 'premium', endpoints: [endpoint('p1')] },
      ],
    });
    expect(await fleet.invoke({ n: 0 })).toMatchObject({ endpoint: 'p1', tier: 'premium', attempts: 2 });
  });

  it('starts in the tier classify picks', async () => {
    const fleet = new ModelFleet({
      classify: (req: Req) => (req.n > 10 ? 1 : 0),
      tiers: [{ name: 'small', endpoints: [endpoint('s')] }, { name: 'large', endpoints: [endpoint('l')] }],
    });
    expect((await fleet.invoke({ n: 3 })).tier).toBe('small');
    expect((await fleet.invoke({ n: 30 })).tier).toBe('large');
    const broken = new ModelFleet({ classify: () => 5, tiers: [{ name: 'x', endpoints: [endpoint('x')] }] });
    await expect(broken.invoke({ n: 0 })).rejects.toMatchObject({ code: 'E_CONFIG' });
  });

  it('gives up with E_UNAVAILABLE after the allowed attempts', async () => {
    const endpoints = [endpoint('a', { fail: true }), endpoint('b', { fail: true }), endpoint('c', { fail: true }), endpoint('d', { fail: true })];
    const fleet = new ModelFleet({ retry: { attempts: 3 }, tiers: [{ name: 't', endpoints }] });
    const error = await fleet.invoke({ n: 0 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(FleetError);
    expect(error).toMatchObject({ code: 'E_UNAVAILABLE', attempts: 3 });
    expect(endpoints.reduce((sum, e) => sum + e.calls, 0)).toBe(3);
  });

  it('keeps retries within the budget when everything fails', async () => {
    const endpoints = [endpoint('a', { fail: true }), endpoint('b', { fail: true })];
    const fleet = new ModelFleet({ retry: { attempts: 2, budgetPercent: 10 }, breaker: { minRequests: 1000 }, tiers: [{ name: 't', endpoints }] });
    for (let i = 0; i < 50; i++) await fleet.invoke({ n: i }).catch(() => undefined);
    const calls = endpoints.reduce((sum, e) => sum + e.calls, 0);
    // 50 first attempts, and retries of at most max(3, 10% of the requests in the window) = 5.
    expect(calls).toBe(55);
  });

  it('enforces the deadline even on an endpoint that ignores its signal', async () => {
    const stubborn: Endpoint<Req, string> = { id: 'stubborn', invoke: () => new Promise((resolve) => setTimeout(() => resolve('late'), 200)) };
    const fleet = new ModelFleet({ deadlineMs: 20, tiers: [{ name: 't', endpoints: [stubborn] }] });
    await expect(fleet.invoke({ n: 0 })).rejects.toMatchObject({ name: 'FleetError', code: 'E_DEADLINE' });
  });
});

describe('circuit breaker', () => {
  it('opens on the failure share, skips the endpoint, then half-opens and closes after good probes', async () => {
    const clock = new Clock();
    let failing = true;
    const flaky = endpoint('flaky', { fail: () => failing });
    const fleet = new ModelFleet({
      now: clock.now,
      retry: { attempts: 2, budgetPercent: 100 },
      breaker: { failureRate: 0.5, minRequests: 4, windowMs: 10_000, openMs: 5_000, halfOpenProbes: 2 },
      tiers: [{ name: 't', endpoints: [flaky, endpoint('ok')] }],
    });
    for (let i = 0; i < 8; i++) await fleet.invoke({ n: i });
    expect(fleet.health().find((h) => h.id === 'flaky')).toMatchObject({ breaker: 'open', state: 'down' });
    const callsWhileOpen = flaky.calls;
    for (let i = 0; i < 4; i++) expect((await fleet.invoke({ n: i })).endpoint).toBe('ok');
    expect(flaky.calls).toBe(callsWhileOpen);

    clock.t += 5_000;
    failing = false;
    expect(fleet.health().find((h) => h.id === 'flaky')).toMatchObject({ breaker: 'half-open', state: 'probing' });
    for (let i = 0; i < 4; i++) await fleet.invoke({ n: i });
    expect(fleet.health().find((h) => h.id === 'flaky')).toMatchObject({ breaker: 'closed', state: 'up' });
  });

  it('a failed probe opens it again', async () => {
    const clock = new Clock();
    const bad = endpoint('bad', { fail: true });
    const fleet = new ModelFleet({
      now: clock.now,
      breaker: { failureRate: 0.5, minRequests: 2, openMs: 1_000, halfOpenProbes: 1 },
      tiers: [{ name: 't', endpoints: [bad, endpoint('ok')] }],
    });
    for (let i = 0; i < 4; i++) await fleet.invoke({ n: i });
    expect(fleet.health()[0]!.breaker).toBe('open');
    clock.t += 1_000;
    for (let i = 0; i < 2; i++) await fleet.invoke({ n: i });
    expect(fleet.health()[0]!.breaker).toBe('open');
  });
});

describe('operations', () => {
  it('replace sends new requests to the new endpoint while the old one drains', async () => {
    const old = endpoint('v1', { delayMs: 40 });
    const fleet = new ModelFleet({ tiers: [{ name: 't', endpoints: [old] }] });
    const inFlight = fleet.invoke({ n: 0 });
    await new Promise((r) => setTimeout(r, 5));
    const drained = fleet.replace('v1', endpoint('v2'));
    expect((await fleet.invoke({ n: 1 })).endpoint).toBe('v2');
    expect(fleet.health().map((h) => [h.id, h.state])).toEqual([['v2', 'up'], ['v1', 'draining']]);
    expect((await inFlight).endpoint).toBe('v1');
    await drained;
    expect(fleet.health().map((h) => h.id)).toEqual(['v2']);
    await expect(fleet.replace('nope', endpoint('x'))).rejects.toMatchObject({ code: 'E_CONFIG' });
  });

  it('health reports every endpoint with its numbers', async () => {
    const fleet = new ModelFleet({ tiers: [{ name: 'fast', endpoints: [{ ...endpoint('a'), costPer1kTokens: 0.1 }] }, { name: 'big', endpoints: [endpoint('b')] }] });
    await fleet.invoke({ n: 0 });
    const [a, b] = fleet.health();
    expect(a).toMatchObject({ id: 'a', tier: 'fast', state: 'up', breaker: 'closed', inflight: 0, errorRate: 0, requests: 1, costPer1kTokens: 0.1 });
    expect(a!.latencyMs).toBeGreaterThanOrEqual(0);
    expect(b).toMatchObject({ id: 'b', tier: 'big', requests: 0, latencyMs: null, costPer1kTokens: null });
  });

  it('rejects bad configurations with E_CONFIG', () => {
    const bad = [
      { tiers: [] },
      { tiers: [{ name: 't', endpoints: [] }] },
      { tiers: [{ name: 't', endpoints: [endpoint('a'), endpoint('a')] }] },
      { tiers: [{ name: 't', endpoints: [endpoint('a')] }], balancer: 'random' },
      { tiers: [{ name: 't', endpoints: [endpoint('a', { weight: -1 })] }] },
      { tiers: [{ name: 't', endpoints: [endpoint('a')] }], breaker: { failureRate: 2 } },
      { tiers: [{ name: 't', endpoints: [endpoint('a')] }], retry: { attempts: 0 } },
    ];
    for (const options of bad) expect(() => new ModelFleet(options as never)).toThrowError(FleetError);
  });
});
