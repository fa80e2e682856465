// Hand-worked cases with exact expected numbers, on every CPU backend this machine has.
import { describe, expect, it } from 'vitest';
import { DynamicRouter, RouterError, Tensor } from '../src/index';
import { backendList } from './reference/harness';
import { Rng } from './reference/cases';
import { ReferenceRouter, groupMasks } from './reference/reference';
import { noiseNormal } from './reference/philox';
import { numberToBf16, numberToF16 } from './reference/half';
import { compareRouting, snapshot } from './reference/compare';

const sig = (x: number) => 1 / (1 + Math.exp(-x));
const f32 = (a: number[]) => new Float32Array(a);
const arr = (a: ArrayLike<number>) => Array.from(a);
/** f32 results against hand values: within a few f32 ulps. */
function closeTo(got: ArrayLike<number>, want: number[], rel = 4e-7) {
  expect(got.length).toBe(want.length);
  for (let i = 0; i < want.length; i++) {
    const tol = Math.max(rel * Math.abs(want[i]), 1e-7);
    if (!(Math.abs(got[i] - want[i]) <= tol)) {
      throw new Error(`element ${i}: got ${got[i]}, want ${want[i]} (all: ${arr(got)} vs ${want})`);
    }
  }
}
function throwsCode(f: () => unknown, code: string, message?: RegExp) {
  let err: unknown;
  try {
    f();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(RouterError);
  expect((err as RouterError).code).toBe(code);
  if (message) expect((err as Error).message).toMatch(message);
}

describe.each(backendList())('golden cases, backend %s', (name) => {
  const backend = name as 'scalar'; // any listed CPU backend
  /** A router fed logits directly (the gate weight is irrelevant). */
  const L = (o: Record<string, unknown> & { numExperts: number; topK: number }) =>
    new DynamicRouter({ inputDim: 1, weight: new Float32Array(o.numExperts), backend, ...o } as any);

  it('uses the backend it was asked for', () => {
    expect(L({ numExperts: 2, topK: 1 }).backend).toBe(backend);
  });

  it('3-expert softmax top-2', () => {
    const r = L({ numExperts: 3, topK: 2, losses: true }).routeLogits(f32([1, 2, 3]));
    expect(arr(r.experts)).toEqual([2, 1]);
    closeTo(r.weights, [sig(1), 1 - sig(1)]);
    expect(arr(r.expertsPerToken)).toEqual([2]);
    expect(arr(r.expertCounts)).toEqual([0, 1, 1]);
    const z = Math.exp(1) + Math.exp(2) + Math.exp(3);
    const s = [Math.exp(1) / z, Math.exp(2) / z, Math.exp(3) / z];
    closeTo([r.auxLoss!, r.zLoss!, r.entropy!], [
      1.5 * (s[1] + s[2]),
      Math.log(z) ** 2,
      -s.reduce((a, p) => a + p * Math.log(p), 0) / Math.log(3),
    ], 2e-6);
    expect(r.flopReduction).toBe(0);
    expect(r.droppedAssignments).toBe(0);
    expect(arr(r.invalidTokens)).toEqual([]);
  });

  it('ties go to the lower expert index', () => {
    const r = L({ numExperts: 4, topK: 3 }).routeLogits(f32([1, 3, 1, 3]));
    expect(arr(r.experts)).toEqual([1, 3, 0]);
    const d = 2 * Math.exp(3) + Math.exp(1);
    closeTo(r.weights, [Math.exp(3) / d, Math.exp(3) / d, Math.exp(1) / d]);
    // an exact tie through the gate: u = [1, 2, 3, 2] computed exactly
    const g = new DynamicRouter({
      inputDim: 4, numExperts: 4, topK: 2, backend, order: 'select-then-softmax',
      weight: f32([1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]),
    });
    expect(arr(g.route(f32([1, 2, 3, 2])).experts)).toEqual([2, 1]);
    expect(arr(g.route(f32([1, 2, 1, 2])).experts)).toEqual([1, 3]);
  });

  it('all-equal rows', () => {
    const r = L({ numExperts: 5, topK: 3 }).routeLogits(f32([0.7, 0.7, 0.7, 0.7, 0.7, -2, -2, -2, -2, -2]));
    expect(arr(r.experts)).toEqual([0, 1, 2, 0, 1, 2]);
    closeTo(r.weights, [1 / 3, 1 / 3, 1 / 3, 1 / 3, 1 / 3, 1 / 3]);
    expect(arr(r.expertCounts)).toEqual([2, 2, 2, 0, 0]);
    const s = L({ numExperts: 5, topK: 2, scoring: 'sigmoid' }).routeLogits(f32([0.7, 0.7, 0.7, 0.7, 0.7]));
    expect(arr(s.experts)).toEqual([0, 1]);
    closeTo(s.weights, [sig(0.7), sig(0.7)]);
  });

  it('select-then-softmax and scale', () => {
    const r = L({ numExperts: 4, topK: 2, order: 'select-then-softmax' }).routeLogits(f32([1, 3, 2, 0]));
    expect(arr(r.experts)).toEqual([1, 2]);
    closeTo(r.weights, [sig(1), 1 - sig(1)]);
    const s = L({ numExperts: 4, topK: 2, order: 'select-then-softmax', scale: 2.5, normalize: false }).routeLogits(
      f32([1, 3, 2, 0]),
    );
    closeTo(s.weights, [2.5 * sig(1), 2.5 * (1 - sig(1))]);
  });

  it('sigmoid scoring without normalize, and with it', () => {
    const r = L({ numExperts: 3, topK: 2, scoring: 'sigmoid' }).routeLogits(f32([0, 2, -1]));
    expect(arr(r.experts)).toEqual([1, 0]);
    closeTo(r.weights, [sig(2), 0.5]);
    const n = L({ numExperts: 3, topK: 2, scoring: 'sigmoid', normalize: true, scale: 2 }).routeLogits(f32([0, 2, -1]));
    closeTo(n.weights, [(2 * sig(2)) / (sig(2) + 0.5), (2 * 0.5) / (sig(2) + 0.5)]);
    // loss distribution for sigmoid: s normalized per token
    const l = L({ numExperts: 2, topK: 1, scoring: 'sigmoid', losses: true }).routeLogits(f32([0, 2]));
    const p = [0.5 / (0.5 + sig(2)), sig(2) / (0.5 + sig(2))];
    closeTo([l.auxLoss!, l.entropy!], [2 * p[1], -(p[0] * Math.log(p[0]) + p[1] * Math.log(p[1])) / Math.log(2)], 2e-6);
  });

  it('non-finite rows: reject names the first bad token', () => {
    const r = L({ numExperts: 2, topK: 1 });
    throwsCode(() => r.routeLogits(f32([0, 1, 2, 3, 4, NaN, Infinity, 0])), 'E_NONFINITE', /\b2\b/);
    throwsCode(() => r.routeLogits(f32([0, 1, -Infinity, 3])), 'E_NONFINITE', /\b1\b/);
    const g = new DynamicRouter({ inputDim: 2, numExperts: 2, topK: 1, weight: f32([1, 0, 0, 1]), backend });
    throwsCode(() => g.route(f32([0, 1, 2, 3, 4, Infinity])), 'E_NONFINITE', /\b2\b/);
    // a finite input whose logit overflows f32 is non-finite too
    const big = new DynamicRouter({ inputDim: 2, numExperts: 1, topK: 1, weight: f32([3e38, 3e38]), backend });
    throwsCode(() => big.route(f32([1, 1])), 'E_NONFINITE', /\b0\b/);
    // and the router still works afterwards
    expect(arr(r.routeLogits(f32([0, 1])).experts)).toEqual([1]);
  });

  it('non-finite rows: sanitize drops bad entries and lists bad tokens', () => {
    const r = L({ numExperts: 3, topK: 2, validation: 'sanitize', losses: true }).routeLogits(
      f32([NaN, 1, 0, 0, 0, 0, NaN, Infinity, -Infinity]),
    );
    expect(arr(r.invalidTokens)).toEqual([0, 2]);
    expect(arr(r.experts)).toEqual([1, 2, 0, 1, 0, 1]);
    closeTo(r.weights, [sig(1), 1 - sig(1), 0.5, 0.5, 0.5, 0.5]);
    // losses over the valid token only
    closeTo([r.auxLoss!, r.zLoss!, r.entropy!], [1, Math.log(3) ** 2, 1], 2e-6);
    // sigmoid: a non-finite entry has s = 0 (even +Inf)
    const s = L({ numExperts: 2, topK: 1, scoring: 'sigmoid', validation: 'sanitize' }).routeLogits(f32([Infinity, 0]));
    expect(arr(s.experts)).toEqual([1]);
    closeTo(s.weights, [0.5]);
    // hidden rows: a NaN input poisons the whole row
    const g = new DynamicRouter({
      inputDim: 2, numExperts: 3, topK: 2, weight: f32([1, 0, 0, 1, 1, 1]), backend, validation: 'sanitize',
    });
    const h = g.route(f32([0, 1, NaN, 0, 1, 0]));
    expect(arr(h.invalidTokens)).toEqual([1]);
    expect(arr(h.experts)).toEqual([1, 2, 0, 1, 0, 2]); // u = [0, 1, 1] (tie → lower index), NaN row, [1, 0, 1]
    closeTo(h.weights.subarray(2, 4), [0.5, 0.5]);
    // only valid tokens, all invalid: losses are 0
    const none = L({ numExperts: 2, topK: 1, validation: 'sanitize', losses: true }).routeLogits(f32([NaN, 0]));
    expect([none.auxLoss, none.zLoss, none.entropy]).toEqual([0, 0, 0]);
  });

  it('sanitize: auxLoss counts only valid tokens; the bias update counts every routed token', () => {
    const q = L({ numExperts: 3, topK: 2, validation: 'sanitize', losses: true }).routeLogits(
      f32([NaN, 5, 0, 0, 1, 2, 9, NaN, 0]),
    );
    expect(arr(q.invalidTokens)).toEqual([0, 2]);
    expect(arr(q.experts)).toEqual([1, 2, 2, 1, 0, 2]);
    const z = 1 + Math.exp(1) + Math.exp(2);
    closeTo([q.auxLoss!], [3 * (0.5 * Math.exp(1) / z + 0.5 * Math.exp(2) / z)], 2e-6);
    // counts before capacity [1, 1] (the invalid token 0 went to expert 0 by index): no update
    const r = L({ numExperts: 2, topK: 1, biasUpdateRate: 1, validation: 'sanitize' });
    expect(arr(r.routeLogits(f32([NaN, NaN, 0, 1])).experts)).toEqual([0, 1]);
    expect(arr(r.routeLogits(f32([0, 0.5])).experts)).toEqual([1]);
  });

  it('sanitize with select-then-softmax: the softmax runs over the finite selected logits', () => {
    const r = L({ numExperts: 3, topK: 2, validation: 'sanitize', order: 'select-then-softmax' }).routeLogits(
      f32([NaN, 1, 0, 1, NaN, NaN]),
    );
    expect(arr(r.invalidTokens)).toEqual([0, 1]);
    expect(arr(r.experts)).toEqual([1, 2, 0, 1]);
    closeTo(r.weights, [sig(1), 1 - sig(1), 1, 0]);
  });

  it('capacity: position and score policies, holes in place, survivors renormalized', () => {
    // T = 4, E = 4, K = 2, cf = 1 → C = ceil(4·2/4) = 2; every token's first choice is expert 0
    const l = f32([3, 0, -1, -1, 1, -1, 0, -1, 2, -1, -1, 0, 4, 0, -1, -1]);
    const opts = { numExperts: 4, topK: 2, capacityFactor: 1, minCapacity: 1, dispatch: true };
    const r = L(opts).routeLogits(l);
    expect(arr(r.experts)).toEqual([0, 1, 0, 2, -1, 3, -1, 1]);
    expect(arr(r.expertsPerToken)).toEqual([2, 2, 2, 2]);
    expect(arr(r.expertCounts)).toEqual([2, 2, 1, 1]);
    expect(r.droppedAssignments).toBe(2);
    expect(r.weights[4]).toBe(0);
    expect(r.weights[5]).toBe(1);
    expect(r.weights[6]).toBe(0);
    expect(r.weights[7]).toBe(1);
    expect(arr(r.dispatch!.offsets)).toEqual([0, 2, 4, 5, 6]);
    expect(arr(r.dispatch!.slots)).toEqual([0, 2, 1, 7, 3, 5]);
    expect(r.flopReduction).toBe(0);
    const s = L({ ...opts, dropPolicy: 'score' }).routeLogits(l);
    // s[t,0] = .921, .610, .810, .969 → tokens 3 and 0 keep expert 0
    expect(arr(s.experts)).toEqual([0, 1, -1, 2, -1, 3, 0, 1]);
    expect(s.droppedAssignments).toBe(2);
    // score ties go to the lower token index
    const tie = L({ ...opts, dropPolicy: 'score' }).routeLogits(f32([1, 0, -1, -1, 1, 0, -1, -1, 1, 0, -1, -1, 1, 0, -1, -1]));
    expect(arr(tie.experts)).toEqual([0, 1, 0, 1, -1, -1, -1, -1]);
    expect(arr(tie.weights.subarray(4))).toEqual([0, 0, 0, 0]);
    // default minCapacity is 4: nothing dropped here
    expect(L({ numExperts: 4, topK: 2, capacityFactor: 1 }).routeLogits(l).droppedAssignments).toBe(0);
    // no renormalization without normalize
    const raw = L({ ...opts, normalize: false }).routeLogits(l);
    closeTo([raw.weights[5]], [1 / (Math.exp(2) + 2 * Math.exp(-1) + 1)]);
  });

  it('top-p boundaries', () => {
    const eq = f32([0, 0, 0, 0]); // s = 0.25 each, exactly
    const k = (topP: number, topK = 4, minExperts = 1) =>
      L({ numExperts: 4, topK, strategy: 'top-p', topP, minExperts }).routeLogits(eq).expertsPerToken[0];
    expect(k(0.25)).toBe(1);
    expect(k(0.75)).toBe(3); // cumulative sum reaches topP exactly
    expect(k(0.7500001)).toBe(4);
    expect(k(1)).toBe(4);
    expect(k(1, 3)).toBe(3); // clamped to K
    expect(k(0.25, 4, 2)).toBe(2); // clamped to kmin
    const r = L({ numExperts: 4, topK: 4, strategy: 'top-p', topP: 0.5 }).routeLogits(f32([0, 0, 0, 0, 5, 0, 0, 0]));
    expect(arr(r.expertsPerToken)).toEqual([2, 1]);
    expect(arr(r.experts)).toEqual([0, 1, -1, -1, 0, -1, -1, -1]);
    closeTo(r.weights, [0.5, 0.5, 0, 0, 1, 0, 0, 0]);
    expect(r.flopReduction).toBe(1 - 3 / 8);
  });

  it('threshold, entropy and norm by hand', () => {
    const l = f32([0.05, 0.3, 0.5, 0.15].map(Math.log));
    const th = L({ numExperts: 4, topK: 4, strategy: 'threshold', threshold: 0.2 }).routeLogits(l);
    expect(arr(th.experts)).toEqual([2, 1, -1, -1]);
    expect(L({ numExperts: 4, topK: 4, strategy: 'threshold', threshold: 0.6, minExperts: 2 }).routeLogits(l).expertsPerToken[0]).toBe(2);
    const en = L({ numExperts: 4, topK: 4, strategy: 'entropy' }).routeLogits(f32([0, 0, 0, 0, 40, 0, 0, 0, 60, 60, 0, 0]));
    expect(arr(en.expertsPerToken)).toEqual([4, 1, 3]);
    const nm = L({ numExperts: 6, topK: 5, strategy: 'norm' }).routeLogits(
      f32([1, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, -3, 0, 0, 0]),
    );
    expect(arr(nm.expertsPerToken)).toEqual([1, 3, 5]);
    // through the gate, the norm is the hidden row's
    const g = new DynamicRouter({
      inputDim: 2, numExperts: 6, topK: 5, strategy: 'norm', backend, weight: new Float32Array(12),
    });
    expect(arr(g.route(f32([1, 0, 0, 2, 0, -3])).expertsPerToken)).toEqual([1, 3, 5]);
    // one token: σ = 0 → c = 0.5 → 1 + round_half_up(4·0.5) = 3
    expect(arr(g.route(f32([3, 4])).expertsPerToken)).toEqual([3]);
  });

  it('group-limited routing with a negative selection bias: masked experts never win', () => {
    // keys = s − 1 < 0 everywhere: a mask that zeroed keys would pick masked experts
    const r = L({
      numExperts: 8, topK: 2, groups: { count: 4, select: 1 }, selectionBias: new Float32Array(8).fill(-1),
    }).routeLogits(f32([0, 0, 2, 1.9, 0, 0, 1, 1]));
    expect(arr(r.experts)).toEqual([2, 3]);
    closeTo(r.weights, [sig(0.1), 1 - sig(0.1)]);
    const u = L({ numExperts: 8, topK: 2, groups: { count: 4, select: 1 }, order: 'select-then-softmax' }).routeLogits(
      f32([-5, -5, -1, -1.1, -5, -5, -3, -3]),
    );
    expect(arr(u.experts)).toEqual([2, 3]);
    closeTo(u.weights, [sig(0.1), 1 - sig(0.1)]);
    // group 0 has the best single expert, group 1 the best pair
    expect(arr(L({ numExperts: 4, topK: 2, groups: { count: 2, select: 1 } }).routeLogits(f32([3, -5, 2.5, 2.5])).experts)).toEqual([2, 3]);
    // many tokens: every chosen expert lies in a kept group
    const rng = new Rng(3);
    const E = 16;
    const T = 300;
    const sb = new Float32Array(E).map(() => -0.5 - rng.next());
    const logits = new Float32Array(T * E).map(() => rng.normal() * 2);
    const opts = { numExperts: E, topK: 4, groups: { count: 4, select: 2 }, selectionBias: sb };
    const out = L(opts).routeLogits(logits);
    const ref = new ReferenceRouter({ inputDim: 1, weight: new Float32Array(E), ...opts });
    const rr = ref.routeLogits(logits);
    for (let t = 0; t < T; t++) {
      const masks = groupMasks(rr.detail.perToken[t].alts![0].keys.map((k, e) => (Number.isFinite(k) ? k : sb[e])), 4, 2, 0)!;
      for (let j = 0; j < 4; j++) expect(masks[0][out.experts[t * 4 + j]]).toBe(1);
    }
  });

  it('expert choice caps', () => {
    // T = 3, E = 2, K = 1, cf = 1 → C = min(3, ceil(1.5)) = 2
    const r = L({ numExperts: 2, topK: 1, strategy: 'expert-choice', dispatch: true, losses: true }).routeLogits(
      f32([0, 0, 3, 0, -3, 0]),
    );
    // expert 0 takes tokens 1, 0; expert 1 takes 2, 0; token 0 (tied keys) keeps expert 0
    expect(arr(r.experts)).toEqual([0, 0, 1]);
    expect(arr(r.expertsPerToken)).toEqual([1, 1, 1]);
    expect(arr(r.expertCounts)).toEqual([2, 1]);
    expect(r.droppedAssignments).toBe(1);
    expect(arr(r.weights)).toEqual([1, 1, 1]);
    expect(arr(r.dispatch!.offsets)).toEqual([0, 2, 3]);
    expect(arr(r.dispatch!.slots)).toEqual([0, 1, 2]);
    // K = 2, cf = 0.5: C = min(4, ceil(0.5·4·2/2)) = 2; token 3 is chosen by nobody (k = 0)
    const r2 = L({ numExperts: 2, topK: 2, strategy: 'expert-choice', capacityFactor: 0.5 }).routeLogits(
      f32([5, 5, 1, 0, 0, 0.5, -9, -9]),
    );
    expect(arr(r2.expertsPerToken)).toEqual([2, 1, 1, 0]);
    expect(arr(r2.experts)).toEqual([0, 1, 0, -1, 1, -1, -1, -1]);
    closeTo(r2.weights, [0.5, 0.5, 1, 0, 1, 0, 0, 0]);
    expect(r2.droppedAssignments).toBe(0);
    expect(r2.flopReduction).toBe(0.5);
    // all-equal rows: each expert takes the lowest token indices; each token keeps the lowest expert index
    const r4 = L({ numExperts: 2, topK: 1, strategy: 'expert-choice' }).routeLogits(new Float32Array(8));
    expect(arr(r4.experts)).toEqual([0, 0, -1, -1]);
    expect(arr(r4.expertsPerToken)).toEqual([1, 1, 0, 0]);
    expect(arr(r4.expertCounts)).toEqual([2, 0]);
    expect(r4.droppedAssignments).toBe(2);
    // C never exceeds T
    const r3 = L({ numExperts: 2, topK: 2, strategy: 'expert-choice', capacityFactor: 8 }).routeLogits(f32([1, 0, 0, 1]));
    expect(arr(r3.expertCounts)).toEqual([2, 2]);
    expect(arr(r3.experts)).toEqual([0, 1, 1, 0]);
  });

  it('dispatch with and without block padding', () => {
    const l = f32([5, 4, 0, 0, 0, 5, 0, 4, 0, 0, 5, 4]);
    const plain = L({ numExperts: 4, topK: 2, dispatch: true }).routeLogits(l);
    expect(arr(plain.experts)).toEqual([0, 1, 1, 3, 2, 3]);
    expect(arr(plain.dispatch!.offsets)).toEqual([0, 1, 3, 4, 6]);
    expect(arr(plain.dispatch!.slots)).toEqual([0, 1, 2, 4, 3, 5]);
    const padded = L({ numExperts: 4, topK: 2, dispatch: { blockSize: 4 } }).routeLogits(l);
    expect(arr(padded.dispatch!.offsets)).toEqual([0, 4, 8, 12, 16]);
    expect(arr(padded.dispatch!.slots)).toEqual([0, 6, 6, 6, 1, 2, 6, 6, 4, 6, 6, 6, 3, 5, 6, 6]);
    const none = L({ numExperts: 4, topK: 2 }).routeLogits(l);
    expect(none.dispatch).toBeUndefined();
  });

  it('uniform routing: auxLoss 1, zLoss (ln E)², entropy 1', () => {
    const r = L({ numExperts: 4, topK: 1, losses: true }).routeLogits(new Float32Array(8 * 4));
    closeTo([r.auxLoss!, r.zLoss!, r.entropy!], [1, Math.log(4) ** 2, 1], 2e-6);
  });

  it('T = 0 returns an empty routing', () => {
    const r = L({ numExperts: 3, topK: 2, losses: true, dispatch: { blockSize: 4 } }).routeLogits(new Float32Array(0));
    expect(r.tokens).toBe(0);
    expect(r.experts.length).toBe(0);
    expect(arr(r.expertCounts)).toEqual([0, 0, 0]);
    expect(arr(r.dispatch!.offsets)).toEqual([0, 0, 0, 0]);
    expect([r.auxLoss, r.zLoss, r.entropy, r.flopReduction, r.droppedAssignments]).toEqual([0, 0, 0, 0, 0]);
  });

  it('f16 / bf16 inputs and weights are widened exactly', () => {
    const bits16 = Uint16Array.from([1, 2, 3].map(numberToF16));
    const bitsBf = Uint16Array.from([1, 2, 3].map(numberToBf16));
    for (const [data, dtype] of [[bits16, 'f16'], [bitsBf, 'bf16']] as const) {
      const r = L({ numExperts: 3, topK: 2 }).routeLogits(Tensor.from(data, [1, 3], { dtype }));
      expect(arr(r.experts)).toEqual([2, 1]);
      closeTo(r.weights, [sig(1), 1 - sig(1)]);
    }
    // weight as an f16 tensor; x = [0.5, -2] in bf16
    const W = Uint16Array.from([1, 0, 0, 1, 0.25, 0.25].map(numberToF16));
    const g = new DynamicRouter({
      inputDim: 2, numExperts: 3, topK: 3, backend, order: 'select-then-softmax',
      weight: Tensor.from(W, [3, 2], { dtype: 'f16' }),
    });
    const r = g.route(Tensor.from(Uint16Array.from([0.5, -2].map(numberToBf16)), [1, 2], { dtype: 'bf16' }));
    // u = [0.5, -2, -0.375]
    expect(arr(r.experts)).toEqual([0, 2, 1]);
    const z = Math.exp(0.5) + Math.exp(-2) + Math.exp(-0.375);
    closeTo(r.weights, [Math.exp(0.5) / z, Math.exp(-0.375) / z, Math.exp(-2) / z]);
  });

  it('noise: reproducible for the same seed and step, step settable', () => {
    const opts = { numExperts: 6, topK: 3, noise: { std: 1, seed: 42 }, losses: true };
    const x = f32([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 1, 0, 1, 0, 1, 0]);
    const a = L(opts);
    const b = L(opts);
    expect(a.step).toBe(0);
    const a0 = snapshot(a.routeLogits(x));
    expect(a.step).toBe(1);
    const b0 = snapshot(b.routeLogits(x));
    expect(b0).toEqual(a0);
    const a1 = snapshot(a.routeLogits(x));
    expect(a.step).toBe(2);
    expect(arr(a1.weights)).not.toEqual(arr(a0.weights));
    a.step = 0;
    expect(snapshot(a.routeLogits(x))).toEqual(a0);
    // the draws are the documented Philox numbers: compare with the reference at a large step
    for (const step of [0, 5, 2 ** 32 + 7]) {
      a.step = step;
      const got = snapshot(a.routeLogits(x));
      expect(a.step).toBe(step + 1);
      const ref = new ReferenceRouter({ inputDim: 1, weight: new Float32Array(6), ...opts });
      ref.step = step;
      const want = ref.routeLogits(x);
      expect(compareRouting(got, want, ref, `noise step ${step}`)).toBeNull();
      // and by hand for token 0: u + fround(n) decides the top expert
      const u = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6].map((v, e) => v + Math.fround(noiseNormal(42, step, 0, e)));
      const top = u.indexOf(Math.max(...u));
      expect(got.experts[0]).toBe(top);
    }
    // std 0 is no noise
    const quiet = L({ numExperts: 6, topK: 3, noise: { std: 0, seed: 42 } });
    const plain = L({ numExperts: 6, topK: 3 });
    expect(snapshot(quiet.routeLogits(x))).toEqual(snapshot(plain.routeLogits(x)));
  });

  it('auxiliary-loss-free bias update, automatic and by hand', () => {
    const r = L({ numExperts: 2, topK: 1, biasUpdateRate: 1 });
    const x = f32([1, 0, 1, 0, 1, 0]);
    expect(arr(r.routeLogits(x).experts)).toEqual([0, 0, 0]); // counts [3, 0] → bias [-1, +1]
    const second = r.routeLogits(x);
    expect(arr(second.experts)).toEqual([1, 1, 1]); // keys: .73 − 1 < .27 + 1
    closeTo(second.weights, [1, 1, 1]);
    expect(arr(r.routeLogits(x).experts)).toEqual([0, 0, 0]); // counts [0, 3] → bias back to [0, 0]
    const h = L({ numExperts: 2, topK: 1, biasUpdateRate: 0.5 });
    h.updateBias(Int32Array.from([0, 4])); // bias [+0.5, −0.5]
    expect(arr(h.routeLogits(f32([0, 0.9])).experts)).toEqual([0]);
  });

  it('stats accumulate over calls; calibrate leaves them and the step alone', () => {
    const r = L({ numExperts: 2, topK: 2, strategy: 'top-p', topP: 0.6 });
    expect(r.stats().loadBalanceScore).toBe(1);
    r.routeLogits(f32([3, 0, 3, 0, 3, 0, 0, 0])); // k = 1, 1, 1, 2 → expert 0 ×4, expert 1 ×1
    const s = r.stats();
    expect(s.tokens).toBe(4);
    expect(s.calls).toBe(1);
    expect(s.meanExpertsPerToken).toBeCloseTo(5 / 4, 12);
    expect(s.flopReduction).toBeCloseTo(1 - 5 / 8, 12);
    closeTo(s.expertUtilization, [0.8, 0.2], 1e-12);
    expect(s.loadBalanceScore).toBeCloseTo(1 / (2 * (0.64 + 0.04)), 12);
    expect(s.droppedAssignments).toBe(0);
    r.calibrate(f32([3, 0, 0, 0, 1, 0, 2, 0]), { meanExperts: 1.5, logits: true } as any);
    expect(r.stats()).toEqual(s);
    expect(r.step).toBe(1);
    r.routeLogits(f32([0, 3]));
    expect(r.stats().calls).toBe(2);
    expect(r.stats().tokens).toBe(5);
  });

  it('calibrate hits its target for top-p, threshold and norm', () => {
    const rng = new Rng(17);
    const D = 24;
    const E = 16;
    const T = 2500;
    const W = new Float32Array(E * D).map(() => rng.normal() * 0.5);
    const x = new Float32Array(T * D);
    for (let t = 0; t < T; t++) {
      const sc = Math.exp(rng.normal() * 0.4);
      for (let d = 0; d < D; d++) x[t * D + d] = rng.normal() * sc;
    }
    for (const [strategy, extra, target] of [
      ['top-p', { topP: 0.5 }, 3.3],
      ['threshold', { threshold: 0.5 }, 2.6],
      ['norm', {}, 4.2],
      ['top-p', { topP: 0.9, minExperts: 2 }, 5.55],
    ] as const) {
      const opts = { inputDim: D, numExperts: E, topK: 8, weight: W, strategy, ...extra };
      const r = new DynamicRouter({ ...opts, backend } as any);
      const c = r.calibrate(x, { meanExperts: target });
      expect(Math.abs(c.meanExperts - target)).toBeLessThanOrEqual(0.05);
      // routing the sample reproduces what calibrate reported
      const out = r.route(x);
      const mean = out.expertsPerToken.reduce((a, b) => a + b, 0) / T;
      expect(Math.abs(mean - c.meanExperts)).toBeLessThanOrEqual(1e-9);
      // and the reference, given the same parameter, agrees
      const ref = new ReferenceRouter(opts);
      if (strategy === 'top-p') ref.topP = c.parameter;
      else if (strategy === 'threshold') ref.threshold = c.parameter;
      else {
        const norms = Array.from({ length: T }, (_, t) => Math.hypot(...x.subarray(t * D, (t + 1) * D)));
        const mu = norms.reduce((a, b) => a + b, 0) / T;
        const sigma = Math.sqrt(norms.reduce((a, b) => a + (b - mu) ** 2, 0) / T);
        ref.normStats = { mu: c.parameter, sigma };
      }
      const rr = ref.route(x);
      const refMean = rr.expertsPerToken.reduce((a, b) => a + b, 0) / T;
      expect(Math.abs(refMean - c.meanExperts)).toBeLessThanOrEqual(0.01);
      // the reference's own bisection reaches the target too
      const ref2 = new ReferenceRouter(opts);
      expect(Math.abs(ref2.calibrate(x, { meanExperts: target }).meanExperts - target)).toBeLessThanOrEqual(0.05);
    }
  });

  it('calibrate reports the mean its parameter gives, also when the target is out of reach', () => {
    // Sanitized rows score 0 everywhere and take topK at every topP below 1, so with a quarter of the
    // rows not finite a mean of 1 cannot be reached: the least topP a router takes gives 2.25.
    const rng = new Rng(29);
    const D = 8;
    const T = 200;
    const W = new Float32Array(16 * D).map(() => rng.normal());
    const x = new Float32Array(T * D).map(() => rng.normal());
    for (let t = 0; t < T / 4; t++) x[t * D] = NaN;
    const r = new DynamicRouter({ inputDim: D, numExperts: 16, topK: 6, weight: W, strategy: 'top-p', validation: 'sanitize', backend } as any);
    const c = r.calibrate(x, { meanExperts: 1 });
    expect(c.parameter).toBeGreaterThan(0);
    const mean = r.route(x).expertsPerToken.reduce((a, b) => a + b, 0) / T;
    expect(c.meanExperts).toBe(mean);
    expect(mean).toBe((T / 4 * 6 + (3 * T / 4) * 1) / T);
  });

  it('calibrate on logits', () => {
    const rng = new Rng(23);
    const E = 12;
    const T = 2000;
    const l = new Float32Array(T * E).map(() => rng.normal() * 1.5);
    const r = L({ numExperts: E, topK: 6, strategy: 'threshold', threshold: 0.3 });
    const c = r.calibrate(l, { meanExperts: 2.5, logits: true } as any);
    expect(Math.abs(c.meanExperts - 2.5)).toBeLessThanOrEqual(0.05);
    const out = r.routeLogits(l);
    expect(Math.abs(out.expertsPerToken.reduce((a, b) => a + b, 0) / T - c.meanExperts)).toBeLessThanOrEqual(1e-9);
  });

  it('E = 1 and K = E', () => {
    const one = L({ numExperts: 1, topK: 1, losses: true }).routeLogits(f32([5, -5]));
    expect(arr(one.experts)).toEqual([0, 0]);
    expect(arr(one.weights)).toEqual([1, 1]);
    expect(one.entropy).toBe(0);
    const all = L({ numExperts: 3, topK: 3 }).routeLogits(f32([2, 1, 3]));
    expect(arr(all.experts)).toEqual([2, 0, 1]);
  });
});
