// ModelFleet against scripted endpoints: balancers, breakers (on an injected clock), retries and their
// budget, tier failover, deadlines, zero-downtime replace, health.
import { describe, expect, it } from 'vitest';
import { TimeWindow } from '../src/fleet/breaker';
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

/** An endpoint whose calls each wait until the test settles them (calls[i].resolve / .reject). */
function controlled(id: string) {
  const calls: { resolve(value: string): void; reject(error: Error): void }[] = [];
  const e: Endpoint<Req, string> & { calls: typeof calls } = {
    id,
    calls,
    invoke: () => new Promise<string>((resolve, reject) => calls.push({ resolve, reject })),
  };
  return e;
}

const tick = () => new Promise((resolve) => setTimeout(resolve, 0));
const never: Endpoint<Req, string> = { id: 'never', invoke: () => new Promise<string>(() => undefined) };

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

  it('latency does not prefer an endpoint that has only failed', async () => {
    const bad = endpoint('bad', { fail: true });
    const fleet = new ModelFleet({ balancer: 'latency', breaker: { minRequests: 1000 }, tiers: [{ name: 't', endpoints: [endpoint('good'), bad] }] });
    for (let i = 0; i < 10; i++) expect((await fleet.invoke({ n: i })).endpoint).toBe('good');
    expect(bad.calls).toBe(1); // tried once while unmeasured, then last
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
    await expect(broken.invoke({ n: 0 })).rejects.toMatchObject({ code: 'E_CLASSIFY' });
    const nan = new ModelFleet({ classify: () => NaN, tiers: [{ name: 'x', endpoints: [endpoint('x')] }] });
    await expect(nan.invoke({ n: 0 })).rejects.toThrow('classify returned NaN');
  });

  it('turns a classify that throws into E_CLASSIFY, with its error as the cause', async () => {
    const boom = new Error('boom');
    for (const classify of [() => { throw boom; }, () => Promise.reject(boom)]) {
      const fleet = new ModelFleet({ classify, tiers: [{ name: 'x', endpoints: [endpoint('x')] }] });
      const error = await fleet.invoke({ n: 0 }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(FleetError);
      expect(error).toMatchObject({ code: 'E_CLASSIFY', attempts: 0, cause: boom, message: 'classify threw: boom' });
    }
  });

  it('holds a classify that never answers to the deadline', async () => {
    const x = endpoint('x');
    const fleet = new ModelFleet({ deadlineMs: 20, classify: () => new Promise<number>(() => undefined), tiers: [{ name: 'x', endpoints: [x] }] });
    await expect(fleet.invoke({ n: 0 })).rejects.toMatchObject({ code: 'E_DEADLINE', attempts: 0 });
    expect(x.calls).toBe(0);
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
    const none = [endpoint('a', { fail: true }), endpoint('b', { fail: true })];
    const noRetries = new ModelFleet({ retry: { attempts: 2, budgetPercent: 0 }, breaker: { minRequests: 1000 }, tiers: [{ name: 't', endpoints: none }] });
    for (let i = 0; i < 10; i++) await noRetries.invoke({ n: i }).catch(() => undefined);
    expect(none.reduce((sum, e) => sum + e.calls, 0)).toBe(10);
  });

  it('enforces the deadline even on an endpoint that ignores its signal', async () => {
    const stubborn: Endpoint<Req, string> = { id: 'stubborn', invoke: () => new Promise((resolve) => setTimeout(() => resolve('late'), 200)) };
    const fleet = new ModelFleet({ deadlineMs: 20, tiers: [{ name: 't', endpoints: [stubborn] }] });
    await expect(fleet.invoke({ n: 0 })).rejects.toMatchObject({ name: 'FleetError', code: 'E_DEADLINE' });
  });

  it('counts a call given up at the deadline as failed and no longer in flight', async () => {
    const fleet = new ModelFleet({ deadlineMs: 10, breaker: { failureRate: 0.5, minRequests: 3 }, tiers: [{ name: 't', endpoints: [never, endpoint('ok')] }] });
    const outcomes: string[] = [];
    for (let i = 0; i < 8; i++) outcomes.push(await fleet.invoke({ n: i }).then((r) => r.endpoint, (e: FleetError) => e.code));
    // Round robin sends requests 0, 2 and 4 to 'never' until its three failures open its breaker.
    expect(outcomes).toEqual(['E_DEADLINE', 'ok', 'E_DEADLINE', 'ok', 'E_DEADLINE', 'ok', 'ok', 'ok']);
    expect(fleet.health()[0]).toMatchObject({ id: 'never', breaker: 'open', inflight: 0, errorRate: 1, requests: 3 });
    await fleet.replace('never', endpoint('fresh')); // nothing of the old one is still in flight
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
    expect(fleet.health()[0]!.errorRate).toBe(1); // the failures that opened it, still in the window
  });

  it('a probe given up at the deadline opens it again, and the next half-open period probes afresh', async () => {
    const clock = new Clock();
    let hang = false;
    const flaky: Endpoint<Req, string> = { id: 'flaky', invoke: () => (hang ? new Promise<string>(() => undefined) : Promise.reject(new Error('no'))) };
    const fleet = new ModelFleet({
      now: clock.now,
      deadlineMs: 10,
      breaker: { failureRate: 0.5, minRequests: 2, openMs: 1_000, halfOpenProbes: 1 },
      tiers: [{ name: 't', endpoints: [flaky] }, { name: 'backup', endpoints: [endpoint('b')] }],
    });
    for (let i = 0; i < 2; i++) await fleet.invoke({ n: i });
    expect(fleet.health()[0]!.breaker).toBe('open');
    clock.t += 1_000;
    hang = true;
    await expect(fleet.invoke({ n: 2 })).rejects.toMatchObject({ code: 'E_DEADLINE' });
    expect(fleet.health()[0]).toMatchObject({ breaker: 'open', inflight: 0 });
    clock.t += 1_000;
    hang = false;
    flaky.invoke = () => Promise.resolve('flaky');
    expect((await fleet.invoke({ n: 3 })).endpoint).toBe('flaky');
    expect(fleet.health()[0]!.breaker).toBe('closed');
  });

  it('a call admitted before the breaker opened neither takes nor frees a probe when it ends', async () => {
    const clock = new Clock();
    const slow = controlled('slow');
    const fleet = new ModelFleet({
      now: clock.now,
      retry: { attempts: 1 },
      breaker: { failureRate: 0.5, minRequests: 2, openMs: 1_000, halfOpenProbes: 1 },
      tiers: [{ name: 't', endpoints: [slow] }],
    });
    const stale = fleet.invoke({ n: 0 }); // admitted while closed
    const failing = [fleet.invoke({ n: 1 }), fleet.invoke({ n: 2 })];
    await tick();
    slow.calls[1]!.reject(new Error('no'));
    slow.calls[2]!.reject(new Error('no'));
    await Promise.allSettled(failing);
    expect(fleet.health()[0]!.breaker).toBe('open');
    clock.t += 1_000;
    const probe = fleet.invoke({ n: 3 }); // the one probe of the half-open period
    await tick();
    slow.calls[0]!.resolve('stale');
    expect((await stale).value).toBe('stale');
    expect(fleet.health()[0]!.breaker).toBe('half-open'); // a stale success does not close it
    await expect(fleet.invoke({ n: 4 })).rejects.toMatchObject({ code: 'E_UNAVAILABLE', attempts: 0 }); // probe still out
    expect(slow.calls).toHaveLength(4);
    slow.calls[3]!.resolve('probe');
    expect((await probe).value).toBe('probe');
    expect(fleet.health()[0]!.breaker).toBe('closed');
  });
});

describe('TimeWindow', () => {
  it('counts the events of the window ending now, and holds no more than about the window', () => {
    const window = new TimeWindow(100);
    for (let t = 0; t < 10_000; t++) window.add(t);
    expect(window.count(9_999)).toBe(101); // 9899 .. 9999
    expect(window.count(10_050)).toBe(50); // 9950 .. 9999
    expect(window.count(20_000)).toBe(0);
    // (Its array, private: a fleet that never fails must not keep every request it ever had.)
    expect((window as unknown as { times: number[] }).times.length).toBeLessThan(300);
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
    // A bad endpoint: a rejection too (not a throw), and the fleet keeps the one it has.
    const refused = fleet.replace('v2', { id: 'v3' } as never);
    await expect(refused).rejects.toMatchObject({ code: 'E_CONFIG', message: 'option endpoint.invoke must be a function (got undefined)' });
    expect(fleet.health().map((h) => h.id)).toEqual(['v2']);
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
      { tiers: [{ name: 't', endpoints: [endpoint('a')] }], deadlineMs: Infinity }, // a timer would fire at once
      { tiers: [{ name: 't', endpoints: [endpoint('a')] }], deadlineMs: 2 ** 31 },
      { tiers: [{ name: 't', endpoints: [endpoint('a')] }], classify: 3 },
      { tiers: [{ name: 't', endpoints: [endpoint('a')] }], breaker: 5 },
      { tiers: [{ endpoints: [endpoint('a')] }] },
    ];
    for (const options of bad) expect(() => new ModelFleet(options as never)).toThrowError(FleetError);
  });

  it('names every problem at once: unknown names and wrong types first, then values out of range', () => {
    const tiers = [{ name: 't', endpoints: [endpoint('a', { weight: '2' as never })] }];
    expect(() => new ModelFleet({ tiers, breaker: { failureRate: '0.5' as never, openMs: -1 }, deadlineMs: '100' as never, retyr: {} } as never)).toThrow(
      [
        "option retyr is unknown",
        'option breaker.failureRate must be a number (got "0.5")',
        'option deadlineMs must be a number (got "100")',
        'option tiers[0].endpoints[0].weight must be a number (got "2")',
      ].join('\n'),
    );
    expect(() => new ModelFleet({ tiers: [{ name: 't', endpoints: [endpoint('a', { weight: 0 })] }], breaker: { failureRate: 2, openMs: -1 }, retry: { attempts: 0 } })).toThrow(
      [
        'option breaker.failureRate must be in (0, 1] (got 2)',
        'option breaker.openMs must be a finite number > 0 (got -1)',
        'option retry.attempts must be an integer >= 1 (got 0)',
        'option tiers[0].endpoints[0].weight must be a finite number > 0 (got 0)',
      ].join('\n'),
    );
  });
});
