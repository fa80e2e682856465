// RoutingCache: a hit equals routing again, a changed input or a changed router never gets a stale
// answer, cached answers do not alias pooled buffers, the byte bound holds, token mode reuses rows.
import { afterEach, describe, expect, it } from 'vitest';
import { FailoverRouter, RoutingCache, RouterError, Tensor, type DynamicRouter, type Routable } from '../src/index';
import { randomGate } from '../src/random';
import { D, E, data, makeRouter, plain, routed } from './helpers/service';

const open: DynamicRouter[] = [];
function router(...args: Parameters<typeof makeRouter>): DynamicRouter {
  const r = makeRouter(...args);
  open.push(r);
  return r;
}
afterEach(() => {
  for (const r of open.splice(0)) r.dispose();
});

describe('RoutingCache, request mode', () => {
  it('answers a repeated input from the cache with the same result as routing it', () => {
    const r = router({ strategy: 'top-p', topP: 0.7 });
    const cache = new RoutingCache(r);
    const x = data(8, D, 1);
    const first = routed(cache, x);
    const second = routed(cache, x);
    expect(second).toEqual(first);
    expect(second).toEqual(routed(r, x));
    expect(cache.cacheStats()).toMatchObject({ hits: 1, misses: 1, entries: 1 });
  });

  it('never answers a changed input from the cache, whichever byte changed', () => {
    const r = router();
    const cache = new RoutingCache(r);
    const x = data(16, D, 2);
    routed(cache, x);
    for (const index of [0, 7 * D + 5, x.length - 1]) {
      const y = x.slice();
      // The smallest change there is: the next float up.
      const bits = new Int32Array(y.buffer);
      bits[index]! += 1;
      expect(routed(cache, y)).toEqual(routed(r, y));
    }
    // A large change that flips the answer of the last token.
    const z = x.slice();
    z.fill(0, 15 * D);
    z[15 * D] = 50;
    expect(routed(cache, z)).toEqual(routed(r, z));
    expect(routed(cache, z).experts).not.toEqual(routed(cache, x).experts);
    expect(cache.cacheStats().hits).toBe(2);
  });

  it('tells hidden states from logits, dtypes and shapes apart', () => {
    const r = router({ inputDim: E, weight: randomGate(E, E, 1) }); // hidden and logits rows of the same width
    const cache = new RoutingCache(r);
    const x = data(4, E, 3);
    const asHidden = plain(cache.route(x));
    const asLogits = plain(cache.routeLogits(x));
    expect(asLogits).toEqual(routed({ route: (v) => r.routeLogits(v) }, x));
    expect(asHidden).toEqual(routed(r, x));
    const bits = Uint16Array.from({ length: 4 * E }, (_, i) => 0x3c00 + (i % 64)); // f16 around 1.0
    const f16 = Tensor.from(bits, [4, E], { dtype: 'f16' });
    const bf16 = Tensor.from(bits, [4, E], { dtype: 'bf16' });
    expect(routed(cache, f16)).toEqual(routed(r, f16));
    expect(routed(cache, bf16)).toEqual(routed(r, bf16));
    expect(cache.cacheStats()).toMatchObject({ hits: 0, misses: 4 });
    // The same bytes as a shape the router rejects are never answered from the cache.
    expect(() => cache.route(Tensor.from(bits, [2, 2 * E], { dtype: 'f16' }))).toThrow(RouterError);
  });

  it('is invalidated by calibrate', () => {
    const r = router({ strategy: 'top-p', topP: 0.95 });
    const cache = new RoutingCache(r);
    const x = data(64, D, 4);
    const before = routed(cache, x);
    r.calibrate(x, { meanExperts: 1.5 });
    const after = routed(cache, x);
    expect(after).toEqual(routed(r, x));
    expect(after.expertsPerToken).not.toEqual(before.expertsPerToken);
    expect(cache.cacheStats()).toMatchObject({ hits: 0, misses: 2, invalidations: 1 });
  });

  it('is invalidated by updateBias, and never stores while the bias updates itself', () => {
    const r = router({ biasUpdateRate: 0.5 });
    const twin = router({ biasUpdateRate: 0.5 });
    const cache = new RoutingCache(r);
    const x = data(16, D, 5);
    for (let i = 0; i < 3; i++) expect(routed(cache, x)).toEqual(routed(twin, x));
    const counts = Int32Array.from({ length: E }, (_, e) => (e < 4 ? 100 : 0));
    r.updateBias(counts);
    twin.updateBias(counts);
    expect(routed(cache, x)).toEqual(routed(twin, x));
    expect(cache.cacheStats()).toMatchObject({ hits: 0, misses: 4, entries: 0 });
  });

  it('follows the noise step: every answer is routed afresh', () => {
    const r = router({ noise: { std: 1, seed: 3 } });
    const cache = new RoutingCache(r);
    const x = data(8, D, 6);
    const first = routed(cache, x);
    r.step = 0;
    expect(routed(cache, x)).toEqual(first);
    expect(cache.cacheStats().hits).toBe(0);
  });

  it('keeps its own copies: releasing, reusing and writing results do not reach the cache', () => {
    const r = router();
    const cache = new RoutingCache(r);
    const x = data(8, D, 7);
    const y = data(8, D, 8);
    const expected = routed(r, x);
    const miss = cache.route(x); // pooled buffers
    miss.release();
    routed(r, y); // reuses those buffers
    const hit = cache.route(x);
    expect(plain(hit)).toEqual(expected);
    hit.experts.fill(-7);
    hit.weights.fill(9);
    expect(routed(cache, x)).toEqual(expected);
    // A released hit's buffer is handed out again by the next hit, refilled from the entry.
    hit.release();
    const again = cache.route(x);
    expect(again.experts.buffer).toBe(hit.experts.buffer);
    expect(plain(again)).toEqual(expected);
    again.release();
    again.release(); // twice is harmless: the buffer is pooled once
    const [a, b] = [cache.route(x), cache.route(x)];
    expect(a.experts.buffer).not.toBe(b.experts.buffer);
    expect(plain(a)).toEqual(expected);
    expect(plain(b)).toEqual(expected);
  });

  it('stays within maxBytes and counts evictions', () => {
    const r = router();
    const cache = new RoutingCache(r, { maxBytes: 4096 });
    for (let i = 0; i < 40; i++) routed(cache, data(4, D, 100 + i));
    const s = cache.cacheStats();
    expect(s.bytes).toBeLessThanOrEqual(4096);
    expect(s.evictions).toBeGreaterThan(0);
    expect(s.entries + s.evictions).toBe(40);
    // The newest is still there, the oldest is gone.
    routed(cache, data(4, D, 139));
    routed(cache, data(4, D, 100));
    expect(cache.cacheStats()).toMatchObject({ hits: 1, misses: 41 });
  });

  it('answers right from entries refilled after evictions, every array and scalar included', () => {
    // Losses, dispatch, capacity drops and sanitized rows: every part a stored answer packs. Batches
    // of 3, 4 and 5 tokens make entries of several sizes; the small bound evicts all the time, so most
    // answers are written into the buffers of evicted ones.
    const r = router({ losses: true, dispatch: true, capacityFactor: 1, validation: 'sanitize' });
    const cache = new RoutingCache(r, { maxBytes: 6000 });
    const full = (x: Float32Array) => {
      const result = r.route(x);
      const snapshot = {
        ...plain(result),
        dispatch: { offsets: Array.from(result.dispatch!.offsets), slots: Array.from(result.dispatch!.slots) },
        losses: [result.auxLoss, result.zLoss, result.entropy],
      };
      result.release();
      return snapshot;
    };
    const inputs = Array.from({ length: 60 }, (_, i) => {
      const x = data(3 + (i % 3), D, 300 + i);
      if (i % 4 === 0) x[D + 5] = Number.NaN;
      return x;
    });
    for (const x of inputs) cache.route(x).release();
    expect(cache.cacheStats().evictions).toBeGreaterThan(40);
    let hits = 0;
    for (const x of inputs.slice(-10).reverse()) {
      const before = cache.cacheStats().hits;
      const answer = cache.route(x);
      hits += cache.cacheStats().hits - before;
      expect({
        ...plain(answer),
        dispatch: { offsets: Array.from(answer.dispatch!.offsets), slots: Array.from(answer.dispatch!.slots) },
        losses: [answer.auxLoss, answer.zLoss, answer.entropy],
      }).toEqual(full(x));
      answer.release();
    }
    expect(hits).toBeGreaterThan(0);
  });

  it('leaves bad input to the router, which says what is wrong', () => {
    const r = router();
    const cache = new RoutingCache(r);
    expect(() => cache.route(new Float32Array(D + 1))).toThrow(/multiple of inputDim/);
    expect(() => cache.route([1, 2] as unknown as Float32Array)).toThrow(RouterError);
    expect(cache.cacheStats()).toMatchObject({ hits: 0, misses: 0 });
  });

  it('has async twins that give the same answers and share the entries', async () => {
    const r = router();
    const cache = new RoutingCache(r);
    const x = data(8, D, 9);
    const viaAsync = await cache.routeAsync(x);
    expect(plain(viaAsync)).toEqual(routed(r, x));
    viaAsync.release();
    expect(plain(await cache.routeAsync(x))).toEqual(routed(r, x));
    expect(routed(cache, x)).toEqual(routed(r, x));
    const logits = data(3, E, 10);
    expect(plain(await cache.routeLogitsAsync(logits))).toEqual(plain(await cache.routeLogitsAsync(logits)));
    expect(cache.cacheStats()).toMatchObject({ hits: 3, misses: 2 });
  });

  it('does not store an async answer when the router changed while it was computed', async () => {
    const r = router();
    let bump = 0;
    // The router as seen through a configVersion that moves while the route is in flight.
    const moving = new Proxy(r, {
      get(target, prop) {
        if (prop === 'configVersion') return target.configVersion + bump;
        const value = Reflect.get(target, prop, target);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    }) as Routable;
    const cache = new RoutingCache(moving);
    const x = data(8, D, 11);
    const pending = cache.routeAsync(x);
    bump = 1;
    (await pending).release();
    expect(cache.cacheStats()).toMatchObject({ entries: 0, misses: 1 });
    expect(routed(cache, x)).toEqual(routed(r, x));
    expect(cache.cacheStats()).toMatchObject({ hits: 0, misses: 2, entries: 1 });
  });

  it('answers nothing, not even a hit, once its router is disposed', async () => {
    for (const mode of ['request', 'token'] as const) {
      const r = router();
      const cache = new RoutingCache(r, { mode });
      const x = data(4, D, 18);
      routed(cache, x);
      r.dispose();
      expect(cache.disposed).toBe(true);
      expect(() => cache.route(x)).toThrow(expect.objectContaining({ code: 'E_DISPOSED' }));
      await expect(cache.routeAsync(x)).rejects.toMatchObject({ code: 'E_DISPOSED' });
      expect(cache.cacheStats().hits).toBe(0);
    }
    // Down a stack: a breaker whose primary is gone is disposed too (its calls fail there).
    const primary = router();
    const stacked = new RoutingCache(new FailoverRouter(primary, router()));
    const x = data(2, D, 19);
    routed(stacked, x);
    expect(stacked.disposed).toBe(false);
    primary.dispose();
    expect(stacked.disposed).toBe(true);
    expect(() => stacked.route(x)).toThrow(expect.objectContaining({ code: 'E_DISPOSED' }));
  });

  it('rejects options it cannot honour', () => {
    const r = router();
    expect(() => new RoutingCache(r, { maxBytes: 0 })).toThrow(/maxBytes/);
    expect(() => new RoutingCache(r, { mode: 'rows' as never })).toThrow(/mode/);
  });
});

describe('RoutingCache, token mode', () => {
  it('reuses rows across batches and answers exactly as routing the batch', () => {
    const r = router({ strategy: 'top-p', topP: 0.6, minExperts: 1 });
    const cache = new RoutingCache(r, { mode: 'token' });
    const rows = data(6, D, 12);
    const row = (t: number) => rows.subarray(t * D, (t + 1) * D);
    const batch = (...ts: number[]) => {
      const out = new Float32Array(ts.length * D);
      ts.forEach((t, i) => out.set(row(t), i * D));
      return out;
    };
    expect(routed(cache, batch(0, 1, 2))).toEqual(routed(r, batch(0, 1, 2)));
    expect(routed(cache, batch(2, 3, 0, 4))).toEqual(routed(r, batch(2, 3, 0, 4)));
    expect(cache.cacheStats()).toMatchObject({ hits: 2, misses: 5 });
    expect(routed(cache, batch(4, 3, 2, 1, 0))).toEqual(routed(r, batch(4, 3, 2, 1, 0)));
    expect(cache.cacheStats()).toMatchObject({ hits: 7, misses: 5 });
    // an answer held across later calls (its packing scratch is reused) keeps its own arrays
    const held = cache.route(batch(1, 0));
    const expected = routed(r, batch(1, 0));
    for (const ts of [[0, 1], [5], [3, 2, 1]]) routed(cache, batch(...ts));
    expect(plain(held)).toEqual(expected);
    held.release();
  });

  it('works for logits, f16 rows and sanitized non-finite rows', async () => {
    const r = router({ validation: 'sanitize' });
    const cache = new RoutingCache(r, { mode: 'token' });
    const logits = data(4, E, 13);
    logits[2 * E + 5] = Number.NaN;
    const direct = r.routeLogits(logits);
    const expected = plain(direct);
    direct.release();
    expect(expected.invalidTokens).toEqual([2]);
    expect(plain(cache.routeLogits(logits))).toEqual(expected);
    expect(plain(await cache.routeLogitsAsync(logits))).toEqual(expected);
    const half = Tensor.from(data(3, D, 14), [3, D], { dtype: 'f16' });
    expect(routed(cache, half)).toEqual(routed(r, half));
    expect(plain(await cache.routeAsync(half))).toEqual(routed(r, half));
    expect(cache.cacheStats()).toMatchObject({ hits: 7, misses: 7 });
  });

  it('is invalidated by calibrate', () => {
    const r = router({ strategy: 'threshold', threshold: 0.01 });
    const cache = new RoutingCache(r, { mode: 'token' });
    const x = data(64, D, 15);
    const before = routed(cache, x);
    r.calibrate(x, { meanExperts: 2 });
    const after = routed(cache, x);
    expect(after).toEqual(routed(r, x));
    expect(after.expertsPerToken).not.toEqual(before.expertsPerToken);
  });

  it('answers from one configuration when calibrate runs while an async batch of cached and new rows waits', async () => {
    const r = router({ strategy: 'threshold', threshold: 0.01 });
    const cache = new RoutingCache(r, { mode: 'token' });
    const x = data(64, D, 16);
    const cachedHalf = x.subarray(0, 32 * D);
    const before = routed(cache, x);
    cache.clear();
    routed(cache, cachedHalf);
    const pending = cache.routeAsync(x); // 32 rows from the cache, 32 sent to the router
    r.calibrate(x, { meanExperts: 2 }); // before the router reaches them
    const answer = plain(await pending);
    const after = routed(r, x);
    expect(after.expertsPerToken.slice(0, 32)).not.toEqual(before.expertsPerToken.slice(0, 32));
    expect(answer).toEqual(after);
  });

  it("names a non-finite row by its place in the caller's batch, cached rows before it included", async () => {
    const r = router();
    const cache = new RoutingCache(r, { mode: 'token' });
    const x = data(4, D, 17);
    routed(cache, x.subarray(0, 2 * D));
    x[3 * D + 1] = Number.POSITIVE_INFINITY; // rows 0 and 1 cached, rows 2 and 3 sent: row 3 is bad
    expect(() => cache.route(x)).toThrow(/^hidden row 3 gives a non-finite gate logit/);
    await expect(cache.routeAsync(x)).rejects.toThrow(/^hidden row 3 gives a non-finite gate logit/);
  });

  it('refuses routers whose tokens depend on their batch', () => {
    const cases = [
      { strategy: 'expert-choice' as const },
      { strategy: 'norm' as const },
      { capacityFactor: 1.25 },
      { losses: true },
      { dispatch: true },
    ];
    for (const patch of cases) {
      const r = router(patch);
      expect(() => new RoutingCache(r, { mode: 'token' })).toThrow(/mode 'token' cannot be used/);
      expect(() => new RoutingCache(r, { mode: 'request' })).not.toThrow();
    }
  });

  it('gives an empty batch an empty answer', () => {
    const r = router();
    const cache = new RoutingCache(r, { mode: 'token' });
    expect(routed(cache, new Float32Array(0))).toEqual(routed(r, new Float32Array(0)));
  });
});

describe('RoutingCache, the backend an answer names', () => {
  it("names the router's backend when it routed rows, 'cache' when the cache answered every row", async () => {
    for (const mode of ['request', 'token'] as const) {
      const r = router();
      const cache = new RoutingCache(r, { mode });
      const x = data(4, D, 40);
      const backendOf = (result: { backend: string; release(): void }) => {
        result.release();
        return result.backend;
      };
      expect(backendOf(cache.route(x))).toBe(r.backend);
      expect(backendOf(cache.route(x))).toBe('cache');
      expect(backendOf(await cache.routeAsync(x))).toBe('cache');
      const y = data(2, D, 41);
      expect(backendOf(await cache.routeAsync(y))).toBe(r.backend);
      if (mode === 'token') {
        // one row cached, one new: the router routed the new one
        const mixed = new Float32Array(2 * D);
        mixed.set(x.subarray(0, D));
        mixed.set(data(1, D, 42), D);
        expect(backendOf(cache.route(mixed))).toBe(r.backend);
      }
    }
  });
});
