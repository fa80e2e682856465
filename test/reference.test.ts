// The reference implementation itself, on hand-worked cases, and the comparator's ability to fail.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { mulhilo32, noiseNormal, philox4x32 } from './reference/philox';
import { bf16ToNumber, f16ToNumber, numberToBf16, numberToF16 } from './reference/half';
import { normalCdf } from './reference/special';
import { ReferenceRouter, RefError, buildDispatch, type RefOptions, type RefRouting } from './reference/reference';
import { compareRouting, type NativeRouting } from './reference/compare';
import { Rng, makeCase, refOptions, STRATEGIES } from './reference/cases';

const hex = (a: number[]) => a.map((x) => x.toString(16).padStart(8, '0')).join(' ');
const near = (a: number, b: number, tol = 1e-12) => expect(Math.abs(a - b)).toBeLessThanOrEqual(tol);

function logitsRouter(o: Partial<RefOptions> & { numExperts: number; topK: number }) {
  return new ReferenceRouter({ inputDim: 1, weight: new Float32Array(o.numExperts), ...o });
}
const sig = (x: number) => 1 / (1 + Math.exp(-x));

/** The reference's own output, dressed as a native Routing (weights rounded to f32). */
function asNative(r: RefRouting): NativeRouting {
  return {
    tokens: r.tokens,
    topK: r.topK,
    experts: r.experts.slice(),
    weights: Float32Array.from(r.weights),
    expertsPerToken: r.expertsPerToken.slice(),
    expertCounts: r.expertCounts.slice(),
    dispatch: r.dispatch ? { offsets: r.dispatch.offsets.slice(), slots: r.dispatch.slots.slice() } : undefined,
    auxLoss: r.auxLoss,
    zLoss: r.zLoss,
    entropy: r.entropy,
    flopReduction: r.flopReduction,
    droppedAssignments: r.droppedAssignments,
    invalidTokens: r.invalidTokens.slice(),
  };
}

describe('Philox-4x32-10', () => {
  it('matches the Random123 known-answer vectors', () => {
    expect(hex(philox4x32([0, 0, 0, 0], [0, 0]))).toBe('6627e8d5 e169c58d bc57ac4c 9b00dbd8');
    expect(hex(philox4x32([0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff], [0xffffffff, 0xffffffff]))).toBe(
      '408f276d 41c83b0e a20bc7c6 6d5451fd',
    );
    expect(hex(philox4x32([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]))).toBe(
      'd16cfe09 94fdcceb 5001e420 24126ea1',
    );
  });

  it('mulhilo32 equals the exact 64-bit product', () => {
    fc.assert(
      fc.property(fc.nat({ max: 0xffffffff }), fc.nat({ max: 0xffffffff }), (a, b) => {
        const p = BigInt(a) * BigInt(b);
        const [hi, lo] = mulhilo32(a, b);
        return BigInt(hi) === p >> 32n && BigInt(lo) === (p & 0xffffffffn);
      }),
      { seed: 42, numRuns: 3000 },
    );
    expect(mulhilo32(0xffffffff, 0xffffffff)).toEqual([0xfffffffe, 1]);
  });

  it('noise: counter (e, t, step lo, step hi), key (seed lo, seed hi), Box–Muller, f32', () => {
    // counter 0, key 0 → r0 = 0x6627e8d5, r1 = 0xe169c58d (the first KAT vector)
    const a = (0x6627e8d5 + 0.5) / 2 ** 32;
    const b = (0xe169c58d + 0.5) / 2 ** 32;
    expect(noiseNormal(0, 0, 0, 0)).toBe(Math.fround(Math.sqrt(-2 * Math.log(a)) * Math.cos(2 * Math.PI * b)));
    // counter = (ffffffff ×4), key = (ffffffff ×2) → r0 = 0x408f276d, r1 = 0x41c83b0e
    const a2 = (0x408f276d + 0.5) / 2 ** 32;
    const b2 = (0x41c83b0e + 0.5) / 2 ** 32;
    expect(noiseNormal(2 ** 53 - 1 - (2 ** 53 - 2 ** 64 >= 0 ? 0 : 0), 0, 0, 0)).not.toBeNaN();
    const viaLayout = noiseNormal(0xffffffff + 0xffffffff * 2 ** 32 > 2 ** 53 ? 0 : 0, 0, 0, 0);
    expect(viaLayout).toBe(noiseNormal(0, 0, 0, 0));
    // step hi word, seed hi word and token/expert words all enter
    const base = noiseNormal(7, 3, 2, 1);
    expect(noiseNormal(7 + 2 ** 32, 3, 2, 1)).not.toBe(base);
    expect(noiseNormal(7, 3 + 2 ** 32, 2, 1)).not.toBe(base);
    expect(noiseNormal(7, 3, 1, 2)).not.toBe(base);
    expect(noiseNormal(7, 3, 2, 1)).toBe(base);
    // e is the first counter word, t the second: check against the raw generator
    const r = philox4x32([0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff], [0xffffffff, 0xffffffff]);
    expect(hex(r.slice(0, 2))).toBe('408f276d 41c83b0e');
    const n2 = Math.fround(Math.sqrt(-2 * Math.log(a2)) * Math.cos(2 * Math.PI * b2));
    // step = 2^64 − 1 is not representable as a JS number; use the words directly via a ≤ 2^53 pair
    const w = philox4x32([5, 9, 0xffffffff, 0x1fffff], [0xffffffff, 0x1fffff]);
    const a3 = (w[0] + 0.5) / 2 ** 32;
    const b3 = (w[1] + 0.5) / 2 ** 32;
    expect(noiseNormal(2 ** 53 - 1, 2 ** 53 - 1, 9, 5)).toBe(
      Math.fround(Math.sqrt(-2 * Math.log(a3)) * Math.cos(2 * Math.PI * b3)),
    );
    expect(Number.isFinite(n2)).toBe(true);
  });

  it('noise draws are standard normal', () => {
    let s = 0;
    let s2 = 0;
    const n = 20000;
    for (let i = 0; i < n; i++) {
      const v = noiseNormal(1234, i >> 7, i & 127, 3);
      expect(Math.fround(v)).toBe(v);
      s += v;
      s2 += v * v;
    }
    expect(Math.abs(s / n)).toBeLessThan(0.03);
    expect(Math.abs(s2 / n - 1)).toBeLessThan(0.04);
  });
});

describe('f16 / bf16', () => {
  it('decodes known bit patterns', () => {
    expect(f16ToNumber(0x3c00)).toBe(1);
    expect(f16ToNumber(0xc000)).toBe(-2);
    expect(f16ToNumber(0x7bff)).toBe(65504);
    expect(f16ToNumber(0x0001)).toBe(2 ** -24);
    expect(f16ToNumber(0x03ff)).toBe(1023 * 2 ** -24);
    expect(f16ToNumber(0x0400)).toBe(2 ** -14);
    expect(f16ToNumber(0x3555)).toBe(0.333251953125);
    expect(f16ToNumber(0x7c00)).toBe(Infinity);
    expect(f16ToNumber(0xfc00)).toBe(-Infinity);
    expect(f16ToNumber(0x7e00)).toBeNaN();
    expect(Object.is(f16ToNumber(0x8000), -0)).toBe(true);
    expect(bf16ToNumber(0x3f80)).toBe(1);
    expect(bf16ToNumber(0x4049)).toBe(3.140625);
    expect(bf16ToNumber(0xc2f7)).toBe(-123.5);
    expect(bf16ToNumber(0x7f80)).toBe(Infinity);
    expect(bf16ToNumber(0x7fc0)).toBeNaN();
    expect(bf16ToNumber(0x0001)).toBe(2 ** -133);
  });

  it('encode ∘ decode is the identity on every non-NaN pattern', () => {
    const bad: string[] = [];
    for (let b = 0; b < 0x10000; b++) {
      const v = f16ToNumber(b);
      if (!Number.isNaN(v) && numberToF16(v) !== b) bad.push(`f16 ${b.toString(16)}`);
      const w = bf16ToNumber(b);
      if (!Number.isNaN(w) && numberToBf16(w) !== b) bad.push(`bf16 ${b.toString(16)}`);
    }
    expect(bad).toEqual([]);
  });

  it('encodes with round-to-nearest-even', () => {
    expect(numberToF16(1 + 2 ** -11)).toBe(0x3c00); // halfway, even stays
    expect(numberToF16(1 + 3 * 2 ** -11)).toBe(0x3c02); // halfway, odd rounds up
    expect(numberToF16(65520)).toBe(0x7c00); // rounds to infinity
    expect(numberToBf16(1 + 2 ** -8)).toBe(0x3f80);
    expect(numberToBf16(1 + 3 * 2 ** -8)).toBe(0x3f82);
  });
});

describe('normal CDF', () => {
  it('matches tabulated values', () => {
    near(normalCdf(0), 0.5, 1e-16);
    near(normalCdf(1), 0.8413447460685429, 1e-14);
    near(normalCdf(-1), 0.15865525393145707, 1e-14);
    near(normalCdf(-1.96), 0.024997895148220435, 1e-14);
    near(normalCdf(3), 0.9986501019683699, 1e-14);
    near(normalCdf(-3), 0.0013498980316301035, 1e-15);
    near(normalCdf(-5), 2.866515718791939e-7, 1e-18);
    near(normalCdf(2.5), 0.9937903346742238, 1e-14);
  });
});

describe('reference routing, by hand', () => {
  it('3-expert softmax, top-2, normalized, with losses', () => {
    const ref = logitsRouter({ numExperts: 3, topK: 2, losses: true, dispatch: true });
    const r = ref.routeLogits(new Float32Array([1, 2, 3]));
    expect(Array.from(r.experts)).toEqual([2, 1]);
    near(r.weights[0], sig(1), 1e-15);
    near(r.weights[1], 1 - sig(1), 1e-15);
    expect(Array.from(r.expertsPerToken)).toEqual([2]);
    expect(Array.from(r.expertCounts)).toEqual([0, 1, 1]);
    const z = Math.exp(1) + Math.exp(2) + Math.exp(3);
    const s = [Math.exp(1) / z, Math.exp(2) / z, Math.exp(3) / z];
    near(r.auxLoss!, 3 * (0.5 * s[1] + 0.5 * s[2]));
    near(r.zLoss!, Math.log(z) ** 2);
    near(r.entropy!, -s.reduce((a, p) => a + p * Math.log(p), 0) / Math.log(3));
    expect(r.flopReduction).toBe(0);
    expect(Array.from(r.dispatch!.offsets)).toEqual([0, 0, 1, 2]);
    expect(Array.from(r.dispatch!.slots)).toEqual([1, 0]);
    expect(ref.step).toBe(1);
  });

  it('gate: u = x·Wᵀ + b', () => {
    const ref = new ReferenceRouter({
      inputDim: 2,
      numExperts: 3,
      topK: 1,
      weight: new Float32Array([1, 0, 0, 1, 1, 1]),
      bias: new Float32Array([0, 0, -2.5]),
      scoring: 'sigmoid',
    });
    const r = ref.route(new Float32Array([1, 2]));
    // u = [1, 2, 0.5] → top-1 is expert 1, weight σ(2) (sigmoid: no normalization)
    expect(Array.from(r.experts)).toEqual([1]);
    near(r.weights[0], sig(2), 1e-15);
  });

  it('ties go to the lower index; select-then-softmax; scale', () => {
    const ref = logitsRouter({ numExperts: 4, topK: 3, order: 'select-then-softmax', scale: 2 });
    const r = ref.routeLogits(new Float32Array([1, 3, 1, 3]));
    expect(Array.from(r.experts)).toEqual([1, 3, 0]);
    const z = 2 * Math.exp(3) + Math.exp(1);
    near(r.weights[0], (2 * Math.exp(3)) / z, 1e-15);
    near(r.weights[1], (2 * Math.exp(3)) / z, 1e-15);
    near(r.weights[2], (2 * Math.exp(1)) / z, 1e-15);
    expect(r.detail.perToken[0].ambiguous).toBe(true); // exact tie is flagged as near-tie
  });

  it('selection bias changes the choice, not the weights', () => {
    const ref = logitsRouter({ numExperts: 3, topK: 1, selectionBias: new Float32Array([0.5, 0, 0]), normalize: false });
    const r = ref.routeLogits(new Float32Array([0, 1, -1]));
    const z = 1 + Math.E + Math.exp(-1);
    // keys: s0 + 0.5 = 0.712 > s1 = 0.665
    expect(Array.from(r.experts)).toEqual([0]);
    near(r.weights[0], 1 / z, 1e-15);
  });

  it('group-limited routing masks whole groups', () => {
    const ref = logitsRouter({ numExperts: 4, topK: 2, groups: { count: 2, select: 1 } });
    // group 0 holds the best single expert, group 1 the best pair
    const r = ref.routeLogits(new Float32Array([3, -5, 2.5, 2.5]));
    expect(Array.from(r.experts)).toEqual([2, 3]);
    near(r.weights[0], 0.5, 1e-15);
    // single-expert groups: score is the key itself
    const ref2 = logitsRouter({ numExperts: 4, topK: 2, groups: { count: 4, select: 2 } });
    expect(Array.from(ref2.routeLogits(new Float32Array([0, 2, 1, 3])).experts)).toEqual([3, 1]);
    // a negative selection bias can move the group choice; masked experts never appear
    const ref3 = logitsRouter({
      numExperts: 4,
      topK: 2,
      groups: { count: 2, select: 1 },
      selectionBias: new Float32Array([0, 0, -1, -1]),
    });
    expect(Array.from(ref3.routeLogits(new Float32Array([3, -5, 2.5, 2.5])).experts)).toEqual([0, 1]);
  });

  it('top-p', () => {
    const l = new Float32Array([0.5, 0.3, 0.15, 0.05].map(Math.log));
    const k = (topP: number, minExperts?: number, topK = 4) =>
      logitsRouter({ numExperts: 4, topK, strategy: 'top-p', topP, minExperts }).routeLogits(l).expertsPerToken[0];
    expect(k(0.4)).toBe(1);
    expect(k(0.7)).toBe(2);
    expect(k(0.85)).toBe(3);
    expect(k(0.99)).toBe(4);
    expect(k(0.4, 2)).toBe(2);
    expect(k(0.99, 1, 3)).toBe(3);
    const r = logitsRouter({ numExperts: 4, topK: 4, strategy: 'top-p', topP: 0.7 }).routeLogits(l);
    expect(Array.from(r.experts)).toEqual([0, 1, -1, -1]);
    near(r.weights[0], 0.5 / 0.8, 1e-7);
    expect(r.weights[2]).toBe(0);
    expect(r.flopReduction).toBe(0.5);
  });

  it('threshold', () => {
    const l = new Float32Array([0.05, 0.3, 0.5, 0.15].map(Math.log));
    const run = (threshold: number, minExperts?: number, topK = 4) =>
      logitsRouter({ numExperts: 4, topK, strategy: 'threshold', threshold, minExperts }).routeLogits(l);
    expect(run(0.2).expertsPerToken[0]).toBe(2);
    expect(Array.from(run(0.2).experts)).toEqual([2, 1, -1, -1]);
    expect(run(0.6).expertsPerToken[0]).toBe(1); // clamped up to kmin
    expect(run(0.6, 2).expertsPerToken[0]).toBe(2);
    expect(run(0.01, 1, 3).expertsPerToken[0]).toBe(3); // clamped down to K
  });

  it('entropy', () => {
    const k = (l: number[], minExperts = 1) =>
      logitsRouter({ numExperts: 4, topK: 4, strategy: 'entropy', minExperts }).routeLogits(new Float32Array(l))
        .expertsPerToken[0];
    expect(k([0, 0, 0, 0])).toBe(4); // H = ln E
    expect(k([40, 0, 0, 0])).toBe(1); // H ≈ 0
    // s = [1/2, 1/2, 0⁺, 0⁺]: H/ln4 = 0.5 → 1 + round_half_up(1.5) = 3
    expect(k([60, 60, 0, 0])).toBe(3);
    expect(k([60, 60, 0, 0], 2)).toBe(3); // 2 + round_half_up(2·0.5) = 3
    const one = logitsRouter({ numExperts: 1, topK: 1, strategy: 'entropy' }).routeLogits(new Float32Array([1, 2]));
    expect(Array.from(one.expertsPerToken)).toEqual([1, 1]);
  });

  it('norm (batch statistics) and its calibrated centre', () => {
    const ref = logitsRouter({ numExperts: 6, topK: 5, strategy: 'norm' });
    const rows = new Float32Array([1, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, -3, 0, 0, 0]);
    // norms 1, 2, 3: μ = 2, σ = √(2/3); c = Φ(∓1.2247) = 0.1103 / 0.5 / 0.8897; v = 4c
    expect(Array.from(ref.routeLogits(rows).expertsPerToken)).toEqual([1, 3, 5]);
    ref.normStats = { mu: 1, sigma: 1 }; // c = Φ(0), Φ(1), Φ(2) → v = 2, 3.37, 3.91
    expect(Array.from(ref.routeLogits(rows).expertsPerToken)).toEqual([3, 4, 5]);
    const single = logitsRouter({ numExperts: 6, topK: 4, strategy: 'norm' });
    // σ = 0 → c = 0.5 → 1 + round_half_up(1.5) = 3
    expect(Array.from(single.routeLogits(rows.subarray(0, 6)).expertsPerToken)).toEqual([3]);
  });

  it('capacity, position and score policies; holes stay in place', () => {
    // T = 4, E = 4, K = 2, cf = 1 → C = ceil(1·4·2/4) = 2; every token's first choice is expert 0
    const l = new Float32Array([3, 0, -1, -1, 1, -1, 0, -1, 2, -1, -1, 0, 4, 0, -1, -1]);
    const pos = logitsRouter({ numExperts: 4, topK: 2, capacityFactor: 1, minCapacity: 1, dispatch: true });
    const r = pos.routeLogits(l);
    expect(Array.from(r.experts)).toEqual([0, 1, 0, 2, -1, 3, -1, 1]);
    expect(Array.from(r.expertsPerToken)).toEqual([2, 2, 2, 2]);
    expect(Array.from(r.expertCounts)).toEqual([2, 2, 1, 1]);
    expect(r.droppedAssignments).toBe(2);
    expect(r.weights[4]).toBe(0);
    expect(r.weights[5]).toBe(1); // the survivor is renormalized
    expect(Array.from(r.dispatch!.offsets)).toEqual([0, 2, 4, 5, 6]);
    expect(Array.from(r.dispatch!.slots)).toEqual([0, 2, 1, 7, 3, 5]);
    // score: s[t,0] = .921, .610, .810, .969 → tokens 3 and 0 keep expert 0
    const score = logitsRouter({ numExperts: 4, topK: 2, capacityFactor: 1, minCapacity: 1, dropPolicy: 'score' });
    expect(Array.from(score.routeLogits(l).experts)).toEqual([0, 1, -1, 2, -1, 3, 0, 1]);
    // minCapacity wins when larger
    const minc = logitsRouter({ numExperts: 4, topK: 2, capacityFactor: 1, minCapacity: 4 });
    expect(minc.routeLogits(l).droppedAssignments).toBe(0);
    // without normalize the survivor keeps its raw score
    const raw = logitsRouter({ numExperts: 4, topK: 2, capacityFactor: 1, minCapacity: 1, normalize: false });
    const rr = raw.routeLogits(l);
    near(rr.weights[5], 1 / (Math.exp(2) + 2 * Math.exp(-1) + 1), 1e-15);
  });

  it('expert choice', () => {
    // T = 3, E = 2, K = 1, cf = 1 → C = min(3, ceil(1.5)) = 2
    const ref = logitsRouter({ numExperts: 2, topK: 1, strategy: 'expert-choice', dispatch: true });
    const r = ref.routeLogits(new Float32Array([0, 0, 3, 0, -3, 0]));
    // expert 0 takes tokens 1, 0; expert 1 takes 2, 0; token 0 (keys tied) keeps expert 0
    expect(Array.from(r.experts)).toEqual([0, 0, 1]);
    expect(Array.from(r.expertsPerToken)).toEqual([1, 1, 1]);
    expect(Array.from(r.expertCounts)).toEqual([2, 1]);
    expect(r.droppedAssignments).toBe(1);
    expect(Array.from(r.weights)).toEqual([1, 1, 1]);
    // K = 2: token 0 keeps both, tokens with nobody get k = 0
    const ref2 = logitsRouter({ numExperts: 2, topK: 2, strategy: 'expert-choice', capacityFactor: 0.5 });
    // C = min(4, ceil(0.5·4·2/2)) = 2
    const r2 = ref2.routeLogits(new Float32Array([5, 5, 1, 0, 0, 0.5, -9, -9]));
    // expert 0 keys s[t,0]: .5, .73, .38, .5 → tokens 1, 0 ; expert 1: .5, .27, .62, .5 → tokens 2, 0
    expect(Array.from(r2.expertsPerToken)).toEqual([2, 1, 1, 0]);
    expect(Array.from(r2.experts)).toEqual([0, 1, 0, -1, 1, -1, -1, -1]);
    expect(r2.droppedAssignments).toBe(0);
    expect(r2.flopReduction).toBe(1 - 4 / 8);
  });

  it('dispatch with block padding', () => {
    const d = buildDispatch([0, 1, 1, -1, 2, 1], 3, 2, 4, 4);
    expect(Array.from(d.offsets)).toEqual([0, 4, 8, 12, 12]);
    expect(Array.from(d.slots)).toEqual([0, 6, 6, 6, 1, 2, 5, 6, 4, 6, 6, 6]);
  });

  it('sanitize: non-finite entries drop out, invalid tokens listed, losses over valid tokens', () => {
    const ref = logitsRouter({ numExperts: 3, topK: 2, validation: 'sanitize', losses: true });
    const r = ref.routeLogits(new Float32Array([NaN, 1, 0, 0, 0, 0, NaN, Infinity, -Infinity]));
    expect(Array.from(r.invalidTokens)).toEqual([0, 2]);
    expect(Array.from(r.experts)).toEqual([1, 2, 0, 1, 0, 1]);
    near(r.weights[0], sig(1), 1e-15);
    expect(Array.from(r.weights.subarray(4))).toEqual([0.5, 0.5]); // Σs = 0 → 1/k each
    near(r.zLoss!, Math.log(3) ** 2);
    near(r.entropy!, 1);
    near(r.auxLoss!, 3 * (0.5 / 3 + 0.5 / 3)); // only token 1 counts: f = [.5,.5,0], P = 1/3
  });

  it('reject: names the first bad token', () => {
    const ref = logitsRouter({ numExperts: 2, topK: 1 });
    let err: unknown;
    try {
      ref.routeLogits(new Float32Array([0, 1, 2, 3, 4, NaN, Infinity, 0]));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(RefError);
    expect((err as RefError).code).toBe('E_NONFINITE');
    expect((err as RefError).token).toBe(2);
  });

  it('noise is added to u before everything, step advances', () => {
    const ref = logitsRouter({ numExperts: 3, topK: 3, noise: { std: 0.5, seed: 99 }, order: 'select-then-softmax' });
    ref.step = 7;
    const r = ref.routeLogits(new Float32Array([0, 0, 0]));
    const u = [0, 1, 2].map((e) => Math.fround(0.5 * noiseNormal(99, 7, 0, e)));
    const order = [0, 1, 2].sort((a, b) => u[b] - u[a] || a - b);
    expect(Array.from(r.experts)).toEqual(order);
    const z = u.reduce((a, v) => a + Math.exp(v), 0);
    near(r.weights[0], Math.exp(u[order[0]]) / z, 1e-15);
    expect(ref.step).toBe(8);
    expect(r.detail.step).toBe(7);
  });

  it('auxiliary-loss-free bias update', () => {
    const ref = logitsRouter({ numExperts: 3, topK: 1, biasUpdateRate: 0.25 });
    ref.routeLogits(new Float32Array([5, 0, 0, 5, 0, 0, 5, 0, 0, 0, 5, 0, 0, 0, 5, 0, 0, 5]));
    // counts [3, 1, 2], mean 2 → bias [-γ, +γ, 0]
    expect(Array.from(ref.selectionBias)).toEqual([-0.25, 0.25, 0]);
  });

  it('calibrate reaches the target mean k for top-p, threshold and norm', () => {
    const rng = new Rng(5);
    const E = 16;
    const T = 3000;
    const l = new Float32Array(T * E);
    for (let i = 0; i < l.length; i++) l[i] = rng.normal() * (1 + (i % 7) / 3);
    for (const [strategy, extra] of [
      ['top-p', { topP: 0.5 }],
      ['threshold', { threshold: 0.1 }],
      ['norm', {}],
    ] as const) {
      const ref = logitsRouter({ numExperts: E, topK: 8, strategy, ...extra });
      const target = 3.3;
      const c = ref.calibrate(l, { meanExperts: target, logits: true });
      expect(Math.abs(c.meanExperts - target)).toBeLessThanOrEqual(0.05);
      const r = ref.routeLogits(l);
      const mean = r.expertsPerToken.reduce((a, b) => a + b, 0) / T;
      expect(mean).toBe(c.meanExperts);
    }
  });
});

describe('comparator', () => {
  const baseCase = () => {
    const ref = logitsRouter({ numExperts: 8, topK: 3, losses: true, dispatch: { blockSize: 4 } });
    const rng = new Rng(11);
    const l = new Float32Array(6 * 8);
    for (let i = 0; i < l.length; i++) l[i] = rng.normal() * 2;
    const r = ref.routeLogits(l);
    return { ref, r };
  };

  it('accepts the reference itself on random cases of every strategy', { timeout: 60000 }, () => {
    for (const st of STRATEGIES) {
      for (let seed = 1; seed <= 15; seed++) {
        const c = makeCase(seed, st);
        const ref = new ReferenceRouter(refOptions(c));
        const call = c.calls[0];
        let r: RefRouting;
        try {
          r = call.kind === 'route' ? ref.route(call.data, call.dtype) : ref.routeLogits(call.data, call.dtype);
        } catch (e) {
          expect((e as RefError).code).toBe('E_NONFINITE');
          continue;
        }
        expect(compareRouting(asNative(r), r, ref, c.describe)).toBeNull();
      }
    }
  });

  it('is exact on a clean case', () => {
    const { r } = baseCase();
    expect(r.detail.exact).toBe(true);
  });

  const mutations: [string, (n: NativeRouting, r: RefRouting) => void, RegExp][] = [
    ['swap two experts', (n) => ([n.experts[0], n.experts[1]] = [n.experts[1], n.experts[0]]), /token 0 slot 0: expert/],
    ['other expert', (n, r) => (n.experts[3] = r.detail.perToken[1].alts![0].cand[5]), /token 1 slot 0: expert/],
    ['weight off by 1e-4', (n) => (n.weights[4] *= 1 + 1e-4), /token 1 slot 1: weight/],
    ['k_t off by one', (n) => (n.expertsPerToken[2] = 2), /token 2/],
    ['repeated expert', (n) => (n.experts[7] = n.experts[6]), /token 2 slot 1/],
    ['counts', (n) => (n.expertCounts[0] += 1), /expertCounts/],
    ['dropped', (n) => (n.droppedAssignments = 1), /droppedAssignments/],
    ['dispatch offsets', (n) => (n.dispatch!.offsets[1] += 1), /dispatch.offsets/],
    ['dispatch slots', (n) => ([n.dispatch!.slots[0], n.dispatch!.slots[1]] = [n.dispatch!.slots[1], n.dispatch!.slots[0]]), /dispatch/],
    ['auxLoss', (n) => (n.auxLoss! *= 1.001), /auxLoss/],
    ['zLoss', (n) => (n.zLoss! *= 1.001), /zLoss/],
    ['entropy', (n) => (n.entropy! *= 1.001), /entropy/],
    ['flopReduction', (n) => (n.flopReduction = 0.1), /flopReduction/],
    ['invalidTokens', (n) => (n.invalidTokens = Int32Array.from([1])), /invalidTokens/],
    ['unused slot', (n) => (n.weights[2] = n.weights[2] === 0 ? 0.1 : n.weights[2]), /.*/],
  ];
  for (const [name, mutate, re] of mutations) {
    it(`rejects: ${name}`, () => {
      const { ref, r } = baseCase();
      const n = asNative(r);
      mutate(n, r);
      const m = compareRouting(n, r, ref, 'case');
      if (name === 'unused slot') {
        // every slot is used in top-k, so instead break a dropped-slot rule: -1 without capacity
        n.experts[2] = -1;
        n.weights[2] = 0;
        expect(compareRouting(n, r, ref, 'case')).toMatch(/expert -1|expert|weight/);
        return;
      }
      expect(m).not.toBeNull();
      expect(m).toMatch(re);
    });
  }

  it('accepts a swap between near-tied keys, rejects it between distinct keys', () => {
    const ref = logitsRouter({ numExperts: 4, topK: 2 });
    const r = ref.routeLogits(new Float32Array([1, 2, 2 + 1e-6, 0]));
    expect(Array.from(r.experts)).toEqual([2, 1]);
    const n = asNative(r);
    n.experts[0] = 1;
    n.experts[1] = 2;
    const w = ref.weightsFor(r.detail.perToken[0], [1, 2], 2);
    n.weights[0] = w[0];
    n.weights[1] = w[1];
    expect(compareRouting(n, r, ref, 'tie')).toBeNull();
    const r2 = ref.routeLogits(new Float32Array([1, 2, 2.1, 0]));
    const n2 = asNative(r2);
    n2.experts[0] = 1;
    n2.experts[1] = 2;
    expect(compareRouting(n2, r2, ref, 'no tie')).toMatch(/slot 0: expert 1, expected 2/);
  });

  it('accepts k_t inside an ambiguous range, rejects outside', () => {
    // top-p with the cumulative sum right at topP
    const l = new Float32Array([Math.log(0.6), Math.log(0.3), Math.log(0.1)]);
    const ref = logitsRouter({ numExperts: 3, topK: 3, strategy: 'top-p', topP: 0.9 });
    const r = ref.routeLogits(l);
    const tok = r.detail.perToken[0];
    expect(tok.kLo).toBe(2);
    expect(tok.kHi).toBe(3);
    for (const k of [2, 3]) {
      const n = asNative(r);
      n.expertsPerToken[0] = k;
      n.experts.set(k === 2 ? [0, 1, -1] : [0, 1, 2]);
      n.weights.set(ref.weightsFor(tok, n.experts, k));
      n.expertCounts.set(k === 2 ? [1, 1, 0] : [1, 1, 1]);
      n.flopReduction = 1 - k / 3;
      expect(compareRouting(n, r, ref, 'range')).toBeNull();
    }
    const n = asNative(r);
    n.expertsPerToken[0] = 1;
    n.experts.set([0, -1, -1]);
    n.weights.set([1, 0, 0]);
    n.expertCounts.set([1, 0, 0]);
    n.flopReduction = 2 / 3;
    expect(compareRouting(n, r, ref, 'range')).toMatch(/expertsPerToken 1/);
  });
});

describe('comparator, capacity in consistency mode', () => {
  it('rejects a drop the capacity rule does not allow', () => {
    // token 0 sits on a top-p boundary (k_t 2 or 3: consistency mode); tokens 1..3 all start with expert 0
    const ref = logitsRouter({
      numExperts: 3, topK: 3, minExperts: 2, strategy: 'top-p', topP: 0.9, capacityFactor: 0.5, minCapacity: 2,
    });
    const l = new Float32Array([Math.log(0.6), Math.log(0.3), Math.log(0.1), 4, 0, -1, 5, -1, 0, 3, -1, 0]);
    const r = ref.routeLogits(l);
    expect(r.detail.perToken[0].kLo).toBe(2);
    expect(r.detail.perToken[0].kHi).toBe(3);
    expect(r.detail.exact).toBe(false);
    expect(compareRouting(asNative(r), r, ref, 'ok')).toBeNull();
    // position policy, C = 2: expert 0 keeps tokens 0 and 1 and drops tokens 2 and 3 (slot 0 of each)
    expect([r.experts[3], r.experts[6], r.experts[9]]).toEqual([0, -1, -1]);
    // keeping token 3 instead of token 1 is wrong
    const n = asNative(r);
    n.experts[3] = -1;
    n.experts[9] = 0;
    n.weights.set(ref.weightsFor(r.detail.perToken[1], n.experts.subarray(3, 6), 2), 3);
    n.weights.set(ref.weightsFor(r.detail.perToken[3], n.experts.subarray(9, 12), 2), 9);
    expect(compareRouting(n, r, ref, 'swap')).toMatch(/dropped token 1 but kept the later token 3/);
    // dropping while under capacity is wrong too
    const u = asNative(r);
    u.experts[3] = -1;
    u.weights.set(ref.weightsFor(r.detail.perToken[1], u.experts.subarray(3, 6), 2), 3);
    u.expertCounts[0] -= 1;
    u.droppedAssignments += 1;
    expect(compareRouting(u, r, ref, 'under')).toMatch(/dropped token 1 with 1 < capacity 2/);
  });
});
