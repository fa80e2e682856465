// The binding's promises: zero-copy inputs that honour byteOffset, async twins that keep their inputs
// alive and equal the sync result, pooled outputs, disposal while a call is in flight, and a package
// that loads from both require and import.
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { DynamicRouter, RouterError, Tensor, backends, f32ToBf16 } from '../src/index';
import { randomGate } from '../src/random';
import { randomRows } from './helpers/rows';

const D = 24;
const E = 12;
const K = 3;

function makeRouter(extra: Record<string, unknown> = {}): DynamicRouter {
  return new DynamicRouter({ inputDim: D, numExperts: E, topK: K, weight: randomGate(E, D, 1), losses: true, dispatch: true, ...extra });
}

function snapshot(r: ReturnType<DynamicRouter['route']>) {
  return {
    experts: Array.from(r.experts),
    weights: Array.from(r.weights),
    expertsPerToken: Array.from(r.expertsPerToken),
    expertCounts: Array.from(r.expertCounts),
    slots: Array.from(r.dispatch!.slots),
    offsets: Array.from(r.dispatch!.offsets),
    auxLoss: r.auxLoss,
    zLoss: r.zLoss,
    entropy: r.entropy,
  };
}

describe('inputs', () => {
  it('reads a subarray view at its byteOffset, without copying', () => {
    const router = makeRouter();
    const rows = randomRows(7, D, 2);
    const backing = new Float32Array(rows.length + 5 * D + 3);
    backing.set(rows, 5 * D + 3);
    const view = backing.subarray(5 * D + 3, 5 * D + 3 + rows.length);
    expect(snapshot(router.route(view))).toEqual(snapshot(router.route(rows)));
  });

  it('routes bf16 tensors as the f32 values they hold', () => {
    const router = makeRouter();
    const rows = randomRows(9, D, 3);
    const bits = Uint16Array.from(rows, (v) => f32ToBf16(v));
    const widened = Tensor.from(bits, [9, D], { dtype: 'bf16' }).toFloat32();
    expect(snapshot(router.route(Tensor.from(bits, [9, D], { dtype: 'bf16' })))).toEqual(snapshot(router.route(widened)));
  });

  it('rounds numbers to f16 and bf16 from their own value, not from their f32 rounding', () => {
    // Reference: for v in [1, 2) · 2^e with m mantissa bits, the two candidates are floor and floor + 1
    // of v · 2^(m − e) over that scale (exact in doubles); the nearer wins, a tie goes to the even one.
    const nearest = (v: number, bits: number): number => {
      const e = Math.floor(Math.log2(Math.abs(v)));
      const scale = 2 ** (bits - e);
      const low = Math.floor(Math.abs(v) * scale);
      const rest = Math.abs(v) * scale - low;
      const pick = rest > 0.5 || (rest === 0.5 && low % 2 === 1) ? low + 1 : low;
      return (Math.sign(v) * pick) / scale;
    };
    let seed = 7;
    const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    const values: number[] = [];
    for (let i = 0; i < 2000; i++) {
      const ulps = [2 ** -8, 2 ** -11][i % 2]!; // half a bf16, half an f16 ulp at 1
      // near a tie of one of the two formats, off it by less than an f32 ulp, or anywhere
      const off = i % 3 === 0 ? random() : ulps * (1 + Math.floor(random() * 255) * 2) + (random() - 0.5) * 2 ** -26;
      values.push((random() < 0.5 ? -1 : 1) * (1 + (off % 1)) * 2 ** (Math.floor(random() * 20) - 10));
    }
    const bf16 = Tensor.from(values, [values.length], { dtype: 'bf16' }).toFloat32();
    const f16 = Tensor.from(values, [values.length], { dtype: 'f16' }).toFloat32();
    values.forEach((v, i) => {
      expect({ v, bf16: bf16[i] }).toEqual({ v, bf16: nearest(v, 7) });
      expect({ v, f16: f16[i] }).toEqual({ v, f16: nearest(v, 10) });
    });
    // The cases rounding to f32 first gets wrong, and the edges.
    const cases: [number, 'f16' | 'bf16', number][] = [
      [1 + 2 ** -8 + 2 ** -30, 'bf16', 0x3f81],
      [1 + 2 ** -8, 'bf16', 0x3f80],
      [-(1 + 2 ** -11 + 2 ** -40), 'f16', 0xbc01],
      [2 ** -25 + 2 ** -60, 'f16', 0x0001], // just over half the least subnormal
      [2 ** -25, 'f16', 0x0000],
      [65519.99, 'f16', 0x7bff],
      [65520, 'f16', 0x7c00],
      [1e39, 'bf16', 0x7f80],
      [-1e-50, 'bf16', 0x8000],
      [Number.NaN, 'bf16', 0x7fc0],
    ];
    for (const [v, dtype, bits] of cases) expect({ v, dtype, bits: Tensor.from([v], [1], { dtype }).data[0] }).toEqual({ v, dtype, bits });
    // A Float32Array's values are exact already: the same bits as before.
    const rows = randomRows(4, D, 9);
    expect(Tensor.from(Array.from(rows), [4, D], { dtype: 'bf16' }).data).toEqual(Uint16Array.from(rows, (v) => f32ToBf16(v)));
  });

  it('routes zero tokens to an empty result', () => {
    const r = makeRouter().route(new Float32Array(0));
    expect(r.tokens).toBe(0);
    expect(r.experts.length).toBe(0);
    expect(Array.from(r.expertCounts)).toEqual(new Array(E).fill(0));
    expect(r.flopReduction).toBe(0);
  });
});

describe('async twins', () => {
  it('routeAsync and routeLogitsAsync equal their sync twins, many in flight at once', async () => {
    const router = makeRouter();
    const batches = Array.from({ length: 16 }, (_, i) => randomRows(50 + i, D, 100 + i));
    const expected = batches.map((b) => snapshot(router.route(b)));
    const got = await Promise.all(batches.map((b) => router.routeAsync(b)));
    expect(got.map(snapshot)).toEqual(expected);

    const logits = randomRows(40, E, 7);
    const sync = snapshot(router.routeLogits(logits));
    expect(snapshot(await router.routeLogitsAsync(logits))).toEqual(sync);
  });

  it('keeps its input alive while the worker runs, even when the caller drops it', async () => {
    const router = makeRouter();
    const expected = snapshot(router.route(randomRows(3000, D, 11)));
    const pending = router.routeAsync(randomRows(3000, D, 11)); // no other reference to the input
    (globalThis as { gc?: () => void }).gc?.();
    expect(snapshot(await pending)).toEqual(expected);
  });

  it('finishes a call in flight when the router is disposed, then refuses new ones', async () => {
    const router = makeRouter();
    const rows = randomRows(2000, D, 12);
    const expected = snapshot(makeRouter().route(rows));
    const pending = router.routeAsync(rows);
    router.dispose();
    expect(snapshot(await pending)).toEqual(expected);
    expect(() => router.route(rows)).toThrowError(RouterError);
    await expect(router.routeAsync(rows)).rejects.toMatchObject({ code: 'E_DISPOSED' });
  });

  it('names the backend that ran each call, sync and async', async () => {
    for (const backend of backends()) {
      const router = makeRouter({ backend });
      const rows = randomRows(5, D, 14);
      const answers = [router.route(rows), router.routeLogits(randomRows(5, E, 15)), router.route(new Float32Array(0))];
      answers.push(await router.routeAsync(rows), await router.routeLogitsAsync(randomRows(2, E, 16)));
      expect(answers.map((r) => r.backend)).toEqual(answers.map(() => backend));
      router.dispose();
    }
  });

  it('rejects with a RouterError carrying the code', async () => {
    const router = makeRouter();
    const rows = randomRows(4, D, 13);
    rows[2 * D + 5] = Number.NaN;
    await expect(router.routeAsync(rows)).rejects.toMatchObject({ name: 'RouterError', code: 'E_NONFINITE' });
  });
});

describe('pooled outputs', () => {
  it('allocates no new buffers in steady state when results are released', () => {
    const router = makeRouter();
    const rows = randomRows(64, D, 14);
    router.route(rows).release();
    const pool = (router as unknown as { pool: { allocated: number; reused: number } }).pool;
    const before = pool.allocated;
    for (let i = 0; i < 50; i++) router.route(rows).release();
    expect(pool.allocated).toBe(before);
    expect(pool.reused).toBeGreaterThanOrEqual(50);
  });

  it('keeps every output of a call in one buffer, each region where outputLayout says, none overlapping', () => {
    const router = makeRouter();
    const r = router.route(randomRows(5, D, 17));
    const views = [r.experts, r.weights, r.expertsPerToken, r.expertCounts, r.dispatch!.offsets];
    const spans = views.map((v) => [v.byteOffset, v.byteOffset + v.byteLength] as const).sort((a, b) => a[0] - b[0]);
    for (const v of views) expect(v.buffer).toBe(r.experts.buffer);
    for (let i = 1; i < spans.length; i++) expect(spans[i]![0]).toBeGreaterThanOrEqual(spans[i - 1]![1]);
    expect(r.experts.byteOffset % 64).toBe(0);
    r.release();
  });

  it('refuses an outputs buffer that is missing, too small or not an ArrayBuffer, without crashing', () => {
    const engine = (makeRouter() as unknown as { engine: { outputLayout(t: number): number[]; route(...a: unknown[]): void } }).engine;
    const rows = randomRows(4, D, 18);
    const bytes = engine.outputLayout(4)[0]!;
    expect(() => engine.route(rows, 0, 4, false, new ArrayBuffer(bytes - 4))).toThrow(/at least/);
    expect(() => engine.route(rows, 0, 4, false, new Float64Array(bytes / 8))).toThrow(/ArrayBuffer/);
    expect(() => engine.route(rows, 0, 4, false)).toThrow(/5 arguments/);
    expect(() => engine.route(rows, 0, 4, false, new ArrayBuffer(bytes))).not.toThrow();
    // Arguments that are not numbers: an error, where reading them once aborted the process.
    expect(() => engine.route(rows, () => 0, 4, false, new ArrayBuffer(bytes))).toThrow(/dtype must be a number/);
    expect(() => engine.route(rows, 7, 4, false, new ArrayBuffer(bytes))).toThrow(/dtype must be 0 \(f32\)/);
    expect(() => engine.route(rows, 0, '4', false, new ArrayBuffer(bytes))).toThrow(/tokens must be a number/);
  });

  it('drops an output buffer that was transferred away instead of handing it out again', async () => {
    const router = makeRouter();
    const x = randomRows(2, D, 19);
    const expected = Array.from(router.route(x).experts);
    const moved = router.route(x);
    const { port1, port2 } = new MessageChannel();
    port1.postMessage(moved.weights, [moved.weights.buffer as ArrayBuffer]); // detaches every array of `moved`
    port1.close();
    port2.close();
    expect(moved.experts.length).toBe(0);
    moved.release();
    for (let i = 0; i < 3; i++) expect(Array.from(router.route(x).experts)).toEqual(expected);
    expect(Array.from((await router.routeAsync(x)).experts)).toEqual(expected);
    // A clone of a result carries its arrays, not the router's pool of buffers.
    const clone = Object.keys(structuredClone(router.route(x)));
    expect(clone).toContain('experts');
    expect(clone).not.toContain('pool');
    expect(clone).not.toContain('buffers');
    router.dispose();
  });

  it('never hands out a buffer that a live result still holds', () => {
    const router = makeRouter();
    const a = router.route(randomRows(8, D, 15));
    const kept = snapshot(a);
    const b = router.route(randomRows(8, D, 16));
    expect(b.experts).not.toBe(a.experts);
    expect(snapshot(a)).toEqual(kept);
  });
});

describe('packaging', () => {
  it('loads from require and import once built', () => {
    const root = path.resolve(__dirname, '..');
    execFileSync('npx', ['tsup', '--silent'], { cwd: root, stdio: 'ignore' });
    const cjs = execFileSync(process.execPath, ['-e', "const m = require('dynamic-moe-router'); console.log(typeof m.DynamicRouter, typeof m.RouterError)"], { cwd: root, encoding: 'utf8' });
    expect(cjs.trim()).toBe('function function');
    const esm = execFileSync(process.execPath, ['--input-type=module', '-e', "import { DynamicRouter, Tensor } from 'dynamic-moe-router'; console.log(typeof DynamicRouter, typeof Tensor)"], { cwd: root, encoding: 'utf8' });
    expect(esm.trim()).toBe('function function');
  }, 60_000);
});
