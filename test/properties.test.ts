// Random cases, native engine vs the independent reference (test/reference/), on every CPU backend
// this machine has. Each case is built from an integer seed (test/reference/cases.ts), so a failure
// message carries everything needed to rebuild it: `makeCase(seed, strategy)`.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { makeCase, Rng, STRATEGIES, type Case } from './reference/cases';
import { backendList, referenceRun, runCase } from './reference/harness';
import { RefError, type RefRouting, type Strategy } from './reference/reference';
import { DynamicRouter, Tensor, type BackendName } from '../src/index';
import { normalGenerator } from '../src/random';

const CASES_PER_STRATEGY = 320;

interface Tally {
  cases: number;
  calls: number;
  exact: number;
  consistency: number;
  hidden: number;
  logits: number;
  half: number;
  rejected: number;
  sanitizedInvalid: number;
  drops: number;
  groups: number;
  noise: number;
  multiCall: number;
  bigE: number;
  bigT: number;
  dynamicK: number;
  calibrated: number;
}

function tallyCase(t: Tally, c: Case, results: (RefRouting | RefError)[]) {
  t.cases++;
  if (c.calls.length > 1) t.multiCall++;
  if (c.options.groups) t.groups++;
  if (c.options.noise) t.noise++;
  if (c.options.numExperts >= 256) t.bigE++;
  if (c.calls[0].T >= 1000) t.bigT++;
  for (let i = 0; i < results.length; i++) {
    const r = results[i];
    const call = c.calls[i];
    t.calls++;
    if (call.kind === 'route') t.hidden++;
    else t.logits++;
    if (call.dtype !== 'f32') t.half++;
    if (r instanceof RefError) {
      t.rejected++;
      continue;
    }
    if (r.detail.exact) t.exact++;
    else t.consistency++;
    if (r.invalidTokens.length > 0) t.sanitizedInvalid++;
    if (r.droppedAssignments > 0) t.drops++;
    const ks = new Set(r.expertsPerToken);
    if (ks.size > 1) t.dynamicK++;
  }
}

const backendNames = backendList();

// One synchronous routeLogits call on a batch of logits, for the options given (inputDim 1, a zero
// gate weight).
function logitsCase(options: Record<string, unknown>, logits: Float32Array, describe: string): Case {
  const E = options.numExperts as number;
  return {
    seed: 0,
    strategy: (options.strategy as Strategy | undefined) ?? 'top-k',
    options: { inputDim: 1, weight: new Float32Array(E), ...options } as Case['options'],
    weightDtype: 'f32',
    calls: [{ kind: 'routeLogits', async: false, dtype: 'f32', T: logits.length / E, data: logits, injected: [] }],
    describe,
    calibrate: undefined,
  };
}

// Every backend against the independent reference on a case.
async function expectReferenceOnEveryBackend(c: Case) {
  const refs = referenceRun(c)[0];
  for (const backend of backendNames) {
    const mismatch = await runCase(c, backend, refs);
    if (mismatch) throw new Error(mismatch);
  }
}

describe('native engine agrees with the reference', () => {
  it('has at least the scalar backend', () => {
    expect(backendNames).toContain('scalar');
  });

  STRATEGIES.forEach((strategy, si) => {
    it(`${strategy}: ${CASES_PER_STRATEGY} random cases × [${backendNames.join(', ')}]`, { timeout: 120_000 }, async () => {
      const tally: Tally = {
        cases: 0, calls: 0, exact: 0, consistency: 0, hidden: 0, logits: 0, half: 0, rejected: 0,
        sanitizedInvalid: 0, drops: 0, groups: 0, noise: 0, multiCall: 0, bigE: 0, bigT: 0, dynamicK: 0, calibrated: 0,
      };
      await fc.assert(
        fc.asyncProperty(fc.noBias(fc.integer({ min: 1, max: 2 ** 31 - 1 })), async (seed) => {
          const c = makeCase(seed, strategy);
          // (cases that calibrate first build their reference inside runCase)
          const refs = c.calibrate ? undefined : referenceRun(c)[0];
          tallyCase(tally, c, (refs ?? referenceRun(c)[0]).results);
          if (c.calibrate) tally.calibrated++;
          for (const backend of backendNames) {
            const mismatch = await runCase(c, backend, refs);
            if (mismatch) throw new Error(`${mismatch}\n  rebuild with makeCase(${seed}, '${strategy}')`);
          }
        }),
        { seed: 0x5eed + si, numRuns: CASES_PER_STRATEGY, endOnFailure: true },
      );
      if (process.env.TALLY) console.log(strategy, JSON.stringify(tally));
      // The generator must keep exercising what it is meant to (counts are deterministic per seed).
      expect(tally.cases).toBe(CASES_PER_STRATEGY);
      expect(tally.hidden).toBeGreaterThanOrEqual(100);
      expect(tally.logits).toBeGreaterThanOrEqual(80);
      expect(tally.half).toBeGreaterThanOrEqual(80);
      expect(tally.exact).toBeGreaterThanOrEqual(60);
      expect(tally.rejected).toBeGreaterThanOrEqual(3);
      expect(tally.sanitizedInvalid).toBeGreaterThanOrEqual(3);
      expect(tally.noise).toBeGreaterThanOrEqual(20);
      expect(tally.multiCall).toBeGreaterThanOrEqual(20);
      expect(tally.bigE).toBeGreaterThanOrEqual(10);
      expect(tally.bigT).toBeGreaterThanOrEqual(5);
      if (strategy !== 'expert-choice') expect(tally.groups).toBeGreaterThanOrEqual(30);
      expect(tally.drops).toBeGreaterThanOrEqual(strategy === 'expert-choice' ? 30 : 15);
      if (strategy !== 'top-k') expect(tally.dynamicK).toBeGreaterThanOrEqual(50);
      if (['top-p', 'threshold', 'norm'].includes(strategy)) expect(tally.calibrated).toBeGreaterThanOrEqual(30);
    });
  });
});

// The default routing (top-k, softmax, normalized weights), the same with `normalize: false`, and
// sigmoid scores without a selection bias or groups select on the logits by packed keys on the SIMD
// backends (docs/semantics.md §13): their truncation must stay within SPEC §10 at any scale of the
// logits, where the random cases above stay at a scale of about 1. Checked against scores computed
// here in double: a slot may differ from the oracle's only where the two scores are within 1e-5 of the
// largest score; with the same experts, the weights agree within 1e-5, and unnormalized weights are
// their experts' scores within 1e-5. Scales of
// 1e20 and 1e38 make max - u (1e38: u spanning more than the largest float) and its square overflow
// to +inf in f32, keys the selection must order and not take for a non-finite logit.
describe('default routing on logits of any scale agrees with the oracle', () => {
  const simd = backendNames.filter((b) => b !== 'scalar');
  it.skipIf(simd.length === 0)(`E from 2 to 1024, logits from 1e-3 to 1e38, ties, near-ties and constant rows, softmax normalized or not, sigmoid, select-then-softmax × [${simd.join(', ')}]`, () => {
    const normal = normalGenerator(20261122);
    const uniform = () => (normal() + 8) / 16 - Math.floor((normal() + 8) / 16);
    let compared = 0;
    const experts = [2, 4, 8, 12, 16, 17, 33, 60, 64, 65, 100, 200, 256, 300, 1000, 1024];
    const scales = [1e-3, 1, 40, 1e3, 1e20, 1e38];
    const largest = 3.4e38; // below the largest f32, so that every logit stays finite
    const variants = [
      ['softmax', true, 'softmax-then-select'],
      ['softmax', false, 'softmax-then-select'],
      ['sigmoid', false, 'softmax-then-select'],
      ['softmax', true, 'select-then-softmax'],
      ['sigmoid', false, 'select-then-softmax'],
    ] as const;
    for (const E of experts) {
      for (const scale of scales) {
        const K = Math.min(E, 1 + Math.floor(uniform() * 8));
        const T = 16 * 2 + 15; // whole groups of 16 tokens and a remainder, gathered into a group of its own
        const logits = new Float32Array(T * E);
        for (let t = 0; t < T; t++) {
          const row = logits.subarray(t * E, (t + 1) * E);
          for (let e = 0; e < E; e++) row[e] = Math.min(largest, Math.max(-largest, normal() * scale));
          const mode = t % 4;
          if (mode === 1) for (let e = 0; e < E; e++) row[e] = Math.round(row[e]! / scale) * scale; // exact ties
          if (t === 1) row.fill(scale); // one value throughout: every expert survives any bound
          if (mode >= 2) {
            const top = Math.max(...row);
            // near-ties a few ulps apart, below what a truncated raw-logit key can tell apart
            for (let e = 0; e < E; e++) if (uniform() < 0.5) row[e] = top - Math.abs(top) * Math.floor(uniform() * 4) * 2 ** -21;
          }
          // one large logit and the rest near 0, 4.5e-5 apart: sigmoid keys on max - u (~100, an ulp
          // of 7.6e-6, the low 3 to 5 bits the position) would truncate them into ties whose scores
          // differ by 1.1e-5
          if (t === 3) for (let e = 0; e < E; e++) row[e] = e === 0 ? 100 : e * 4.5e-5;
          // select-then-softmax keys on u: the rest near -scale, 1.2e-5 scale apart (no near-ties), w =
          // max - u ~2 scale, whose packed keys lose 2^(b-22) of it, more than that gap from E = 33 on
          if (t === 5) for (let e = 0; e < E; e++) row[e] = e === 0 ? scale : (-1 + e * 1.2e-5) * scale;
        }
        type Order = 'softmax-then-select' | 'select-then-softmax';
        const route = (backend: string, scoring: 'softmax' | 'sigmoid', normalize: boolean, order: Order) => {
          const router = new DynamicRouter({ inputDim: 1, numExperts: E, topK: K, weight: new Float32Array(E), scoring, normalize, order, backend: backend as BackendName });
          const r = router.routeLogits(logits);
          return { experts: Array.from(r.experts), weights: Array.from(r.weights), counts: Array.from(r.expertCounts) };
        };
        for (const [scoring, normalize, order] of variants) {
          const oracle = route('scalar', scoring, normalize, order);
          const onLogits = order === 'select-then-softmax'; // its keys are u, its weights normalized
          for (const backend of simd) {
            const got = route(backend, scoring, normalize, order);
            for (let t = 0; t < T; t++) {
              const row = logits.subarray(t * E, (t + 1) * E);
              const max = Math.max(...row);
              let Z = 0;
              for (const u of row) Z += Math.exp(u - max);
              const score = scoring === 'softmax' ? (e: number) => Math.exp(row[e]! - max) / Z : (e: number) => 1 / (1 + Math.exp(-row[e]!));
              const maxScore = scoring === 'softmax' ? 1 / Z : 1 / (1 + Math.exp(-max));
              const maxKey = onLogits ? Math.max(...row.map(Math.abs)) : Math.fround(maxScore);
              const sameExperts = got.experts.slice(t * K, (t + 1) * K).every((e, j) => e === oracle.experts[t * K + j]);
              for (let j = 0; j < K; j++) {
                const a = got.experts[t * K + j]!, b = oracle.experts[t * K + j]!;
                const where = `${backend} E=${E} K=${K} scale=${scale} ${scoring} normalize=${normalize} ${order} token ${t} slot ${j}`;
                // (keys are f32 scores, SPEC §10: sigmoid scores below ~1e-39 are all 0, ties)
                const key = (e: number) => (onLogits ? row[e]! : Math.fround(score(e)));
                if (a !== b) expect(Math.abs(key(a) - key(b)), `${where}: expert ${a} vs ${b}`).toBeLessThanOrEqual(1e-5 * maxKey);
                const w = got.weights[t * K + j]!;
                if (sameExperts) {
                  const want = oracle.weights[t * K + j]!;
                  expect(Math.abs(w - want), `${where}: weight ${w} vs ${want}`).toBeLessThanOrEqual(1e-5 * Math.abs(want) + 1e-7);
                }
                // unnormalized, a weight is its expert's score, computed here in double
                if (!normalize && !onLogits) expect(Math.abs(w - score(a)), `${where}: weight ${w} vs score ${score(a)}`).toBeLessThanOrEqual(1e-5 * score(a) + 1e-7);
              }
            }
            const counts = new Array<number>(E).fill(0);
            for (const e of got.experts) counts[e]! += 1;
            expect(got.counts).toEqual(counts);
            compared += 1;
          }
        }
      }
    }
    expect(compared).toBe(variants.length * experts.length * scales.length * simd.length);
  });
});

// Sigmoid scores with a selection bias or groups (DeepSeek-V3's routing) select on keys s + bias; up
// to E = 256 and 16 groups the SIMD backends take them across tokens, packed with the expert in their
// low bits on a scaled power of max - key (docs/semantics.md §13), whose truncation must stay within
// SPEC §10 whatever the scale of the keys. Checked against keys computed here: a slot may differ from
// the oracle's only where the two keys are within 1e-5 of the largest |key|, and with the same experts
// the weights agree within 1e-5. Biases of scale 1e-3 to 1e3 around logits of scale 1e-3 to 40; rows of
// exact ties (lower expert first) and near-ties a few ulps apart; and biases that put the winners'
// keys far apart, +B and seven of them 1.05e-5 B apart at -0.699 B (the rest at -1.01 B, so that
// the tolerance is 1.0201e-5 B): there w' = (max - key) / (2 max|key|) = 0.841, whose fourth power is
// 1/2, where a key's truncation is the largest relative to it (keys on w'^4 instead of (16 w')^8 tie
// some of them at E = 160, on w' itself at E = 100).
describe('sigmoid and softmax routing with a selection bias or groups agrees with the oracle at any scale', () => {
  const simd = backendNames.filter((b) => b !== 'scalar');
  it.skipIf(simd.length === 0)(`sigmoid and softmax, E from 2 to 513, biases from 1e-3 to 1e3, ties and near-ties, with and without groups × [${backendNames.join(', ')}]`, { timeout: 120_000 }, async () => {
    const normal = normalGenerator(20261124);
    const uniform = () => (normal() + 8) / 16 - Math.floor((normal() + 8) / 16);
    const sigmoid = (u: number) => 1 / (1 + Math.exp(-u));
    let compared = 0;
    const shapes = [
      { E: 2, groups: undefined }, { E: 8, groups: { count: 4, select: 2 } }, { E: 24, groups: { count: 3, select: 2 } },
      { E: 33, groups: undefined }, { E: 64, groups: { count: 8, select: 3 } }, { E: 100, groups: undefined },
      { E: 128, groups: { count: 16, select: 5 } }, { E: 160, groups: undefined }, { E: 256, groups: { count: 8, select: 4 } },
      { E: 256, groups: undefined }, { E: 300, groups: { count: 10, select: 4 } }, { E: 384, groups: undefined },
      { E: 512, groups: { count: 8, select: 4 } }, { E: 513, groups: undefined },
    ];
    // [logits, bias, far]: far, the biases at both ends and every logit -100 (every score 0)
    const scales = [[1e-3, 1, false], [1, 1e-3, false], [1, 1, false], [40, 1e3, false], [1e-3, 1e3, false], [1, 1e-3, true], [1, 1, true], [1, 1e3, true]] as const;
    for (const scoring of ['sigmoid', 'softmax'] as const)
    for (const { E, groups } of shapes) {
      for (const [scale, biasScale, far] of scales) {
        const K = Math.min(E, far ? 8 : 1 + Math.floor(uniform() * 8), groups ? (groups.select * E) / groups.count : E);
        const T = 16 * 2 + 15; // whole groups of 16 tokens and a remainder, gathered into a group of its own
        // a few repeated values (exact ties of keys wherever the logits tie too)
        const selectionBias = Float32Array.from({ length: E }, () => (Math.floor(uniform() * 5) - 2) * 0.25 * biasScale);
        if (far) {
          selectionBias.fill(-1.01 * biasScale);
          selectionBias[0] = biasScale;
          for (let e = Math.max(1, E - 7); e < E; e++) selectionBias[e] = (-0.699 + (e - E) * 1.05e-5) * biasScale;
        }
        const logits = new Float32Array(T * E);
        for (let t = 0; t < T; t++) {
          const row = logits.subarray(t * E, (t + 1) * E);
          for (let e = 0; e < E; e++) row[e] = normal() * scale;
          if (t % 4 === 1) row.fill(0); // every key 0.5 + bias: ties wherever the biases repeat
          if (t % 4 === 2 && scoring === 'sigmoid') {
            // near-ties a few ulps apart: logits that put their keys next to the first expert's
            const top = Math.fround(sigmoid(row[0]!) + selectionBias[0]!);
            for (let e = 1; e < E; e++) {
              const s = top - selectionBias[e]! - Math.abs(top) * Math.floor(uniform() * 4) * 2 ** -21;
              if (uniform() < 0.5 && s > 1e-6 && s < 1 - 1e-6) row[e] = Math.log(s / (1 - s));
            }
          }
          if (t % 4 === 2 && scoring === 'softmax') {
            // near-ties a few ulps apart: logits a few ulps from the first expert's (the biases repeat)
            for (let e = 1; e < E; e++) if (uniform() < 0.5) row[e] = row[0]! + Math.abs(row[0]!) * Math.floor(uniform() * 4) * 2 ** -22;
          }
          if (far) row.fill(-100);
        }
        const normalize = scoring === 'sigmoid' || E % 2 === 0;
        const route = (backend: string) => {
          const router = new DynamicRouter({ inputDim: 1, numExperts: E, topK: K, weight: new Float32Array(E), scoring, selectionBias, groups, normalize, scale: 2.5, backend: backend as BackendName });
          const r = router.routeLogits(logits);
          const out = { experts: Array.from(r.experts), weights: Array.from(r.weights), counts: Array.from(r.expertCounts) };
          r.release();
          router.dispose();
          return out;
        };
        // Against the independent reference (its near-ties of keys and of group scores), every backend.
        await expectReferenceOnEveryBackend(
          logitsCase(
            { numExperts: E, topK: K, scoring, selectionBias, groups, normalize, scale: 2.5 },
            logits,
            `${scoring} E=${E} K=${K} scale=${scale} bias scale=${biasScale} far=${far} groups=${JSON.stringify(groups)}`,
          ),
        );
        // Sigmoid keys are the token path's bit for bit: each slot against the scalar oracle's too.
        if (scoring === 'softmax') continue;
        const oracle = route('scalar');
        for (const backend of simd) {
          const got = route(backend);
          for (let t = 0; t < T; t++) {
            const row = logits.subarray(t * E, (t + 1) * E);
            const key = (e: number) => Math.fround(Math.fround(sigmoid(row[e]!)) + selectionBias[e]!);
            let maxKey = 0;
            for (let e = 0; e < E; e++) maxKey = Math.max(maxKey, Math.abs(key(e)));
            const sameExperts = got.experts.slice(t * K, (t + 1) * K).every((e, j) => e === oracle.experts[t * K + j]);
            for (let j = 0; j < K; j++) {
              const a = got.experts[t * K + j]!, b = oracle.experts[t * K + j]!;
              const where = `${backend} ${scoring} E=${E} K=${K} scale=${scale} bias scale=${biasScale} far=${far} groups=${JSON.stringify(groups)} token ${t} slot ${j}`;
              if (a !== b) expect(Math.abs(key(a) - key(b)), `${where}: expert ${a} vs ${b}`).toBeLessThanOrEqual(1e-5 * maxKey);
              if (sameExperts) {
                const w = got.weights[t * K + j]!, want = oracle.weights[t * K + j]!;
                expect(Math.abs(w - want), `${where}: weight ${w} vs ${want}`).toBeLessThanOrEqual(1e-5 * Math.abs(want) + 1e-7);
              }
            }
          }
          const counts = new Array<number>(E).fill(0);
          for (const e of got.experts) counts[e]! += 1;
          expect(got.counts).toEqual(counts);
          compared += 1;
        }
      }
    }
    expect(compared).toBe(shapes.length * scales.length * simd.length);
  });
});

// SPEC §3: ties go to the lower expert. §10 lets backends differ at near-ties, but an exact tie is
// no near-tie to the user who reads "lower expert first": -0 and +0 are one value, and a row whose
// largest logit is a zero of either sign (a max over both may give either) must rank its zeros by
// expert, as the oracle does (the across-tokens keys of E <= 128 once put +0 before every -0).
describe('exact ties go to the lower expert on every backend, signed zeros included', () => {
  it(`E = 2 to 1100, logits of a few values, -0 and +0 among them × [${backendNames.join(', ')}]`, () => {
    const normal = normalGenerator(20261123);
    const values = [-0, 0, -0, 0, -1, -2, -3.5];
    for (const E of [2, 8, 16, 33, 64, 100, 128, 256, 300, 1024, 1100]) {
      for (const K of [1, 2, 8]) {
        if (K > E) continue;
        const T = 16 * 2 + 5; // whole groups and a gathered one
        const logits = new Float32Array(T * E);
        for (let i = 0; i < logits.length; i++) logits[i] = values[Math.floor(Math.abs(normal()) * 1e6) % values.length]!;
        // and rows whose only zeros are one of each sign, the -0 at the lower expert or the higher
        for (let t = 0; t < T; t += 3) {
          const row = logits.subarray(t * E, (t + 1) * E);
          row.fill(-1);
          const a = Math.floor(Math.abs(normal()) * 1e6) % E, b = (a + 1 + (t % (E - 1 || 1))) % E;
          row[Math.min(a, b)] = t % 2 ? -0 : 0;
          row[Math.max(a, b)] = t % 2 ? 0 : -0;
        }
        const want: number[] = [];
        for (let t = 0; t < T; t++) {
          const row = Array.from(logits.subarray(t * E, (t + 1) * E));
          // Array.prototype.sort is stable: equal values keep the lower expert first (-0 - 0 === 0).
          want.push(...row.map((_, e) => e).sort((a, b) => row[b]! - row[a]!).slice(0, K));
        }
        for (const backend of backendNames) {
          const router = new DynamicRouter({ inputDim: 1, numExperts: E, topK: K, weight: new Float32Array(E), backend: backend as BackendName });
          const r = router.routeLogits(logits);
          expect(Array.from(r.experts), `${backend} E=${E} K=${K}`).toEqual(want);
          r.release();
          router.dispose();
        }
      }
    }
  });
});

// A token's answer must not depend on the batch it came in (the token-mode cache stores rows of one
// batch and serves them in another): the gate kernels tile tokens (whole tiles, then smaller ones for
// the rest), the default routing selects across groups of 8 or 16 tokens (whole groups, then gathered
// ones), and a token must get the same operations in any tile or group, and beside a sanitized
// non-finite row. Checked bit for bit on every backend, for a small-E (dot) and four larger-E (panel)
// gates (E = 300 and 1000: across tokens, by a knockout on AVX-512 and by the columns on AVX2, keys
// of w^4 and (16w)^8), f32 and bf16, hidden states and logits, top-k (its sanitized pass with losses
// on, and with unnormalized weights, whose Z is summed across tokens too), top-p and DeepSeek-V3's
// sigmoid routing with a selection bias and groups: sub-batches against the same rows of a whole
// batch.
describe('a token is routed the same alone as in any batch', () => {
  it(`dot and panel gates, f32 and bf16, hidden and logits, top-k normalized or not, sigmoid, select-then-softmax, top-p, entropy and DeepSeek-V3's routing × [${backendNames.join(', ')}]`, () => {
    const shapes = [
      { E: 8, D: 37, K: 2 },
      { E: 64, D: 130, K: 8 },
      { E: 40, D: 67, K: 3 },
      { E: 300, D: 19, K: 6 },
      { E: 1000, D: 11, K: 8 },
    ];
    const T = 37;
    const ranges = [[0, 1], [5, 1], [36, 1], [0, 2], [3, 3], [1, 4], [2, 5], [6, 7], [0, 8], [4, 9], [1, 11], [0, 16], [3, 17], [20, 17], [1, 36]] as const;
    const bad = 6; // a row with a NaN, in the sanitized pass
    let compared = 0;
    for (const { E, D, K } of shapes) {
      const normal = normalGenerator(E * 1000 + D);
      const weight = Float32Array.from({ length: E * D }, () => normal());
      for (const backend of backendNames) {
        const variants = [
          [false, 'top-k', false, true, 'softmax', 'softmax-then-select'],
          [true, 'top-k', true, true, 'softmax', 'softmax-then-select'],
          [true, 'top-k', false, false, 'softmax', 'softmax-then-select'],
          [true, 'top-p', false, true, 'softmax', 'softmax-then-select'],
          [true, 'entropy', false, true, 'softmax', 'softmax-then-select'],
          [true, 'top-k', false, false, 'sigmoid', 'softmax-then-select'],
          [true, 'top-k', false, true, 'softmax', 'select-then-softmax'],
          [true, 'top-k', false, true, 'sigmoid', 'softmax-then-select', true],
        ] as const;
        for (const [sanitize, strategy, losses, normalize, scoring, order, deepSeek] of variants) {
          // DeepSeek-V3's routing: a selection bias and groups (E = 8: 2 of 4 groups, otherwise 4 of 8
          // or 10), across tokens up to E = 512
          const groups = E === 8 ? { count: 4, select: 2 } : { count: E % 8 === 0 ? 8 : 10, select: 4 };
          const router = new DynamicRouter({
            inputDim: D,
            numExperts: E,
            topK: K,
            weight,
            backend: backend as BackendName,
            validation: sanitize ? 'sanitize' : 'reject',
            strategy,
            topP: 0.7,
            losses,
            normalize,
            scoring,
            order,
            ...(deepSeek ? { selectionBias: Float32Array.from({ length: E }, (_, e) => ((e * 37) % 11) * 0.01), groups } : {}),
          });
          for (const input of ['f32', 'bf16', 'logits'] as const) {
            const width = input === 'logits' ? E : D;
            const x = Float32Array.from({ length: T * width }, () => normal());
            if (sanitize) x[bad * width + 3] = Number.NaN;
            const rows = (first: number, n: number) => {
              const part = x.subarray(first * width, (first + n) * width);
              const r =
                input === 'logits' ? router.routeLogits(part) : router.route(input === 'f32' ? part : Tensor.from(part, [n, D], { dtype: input }));
              const out = { experts: Array.from(r.experts), weights: Array.from(r.weights) };
              r.release();
              return out;
            };
            const whole = rows(0, T);
            for (const [first, n] of ranges) {
              const part = rows(first, n);
              const where = `${backend} ${strategy} ${scoring} ${order} ${input} E=${E} sanitize=${sanitize} normalize=${normalize} tokens [${first}, ${first + n})`;
              expect(part.experts, where).toEqual(whole.experts.slice(first * K, (first + n) * K));
              expect(part.weights, where).toEqual(whole.weights.slice(first * K, (first + n) * K));
              compared += 1;
            }
          }
          router.dispose();
        }
      }
    }
    expect(compared).toBe(shapes.length * backendNames.length * 8 * 3 * ranges.length);
  });
});

// A chunk of f32 logits reaches the token stage as one block of hundreds of rows; in sanitize mode
// every row with a non-finite logit leaves the across-tokens path for the token-by-token one. A batch
// where most rows hold a NaN (more of them than a block of hidden states has rows) must route every
// finite row and report every other one, as the oracle does.
describe('sanitized logits with many non-finite rows in one chunk', () => {
  it(`E = 8, 64, 300, softmax and sigmoid, NaN of either sign and ±inf × [${backendNames.join(', ')}]`, () => {
    const normal = normalGenerator(7);
    // (sigmoid keys across tokens are signed: +inf and a negative NaN give the least key, not the largest)
    const negativeNaN = new Float32Array(new Uint32Array([0xffc00000]).buffer)[0]!;
    const poison = [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, negativeNaN];
    for (const [E, K, scoring] of [[8, 2, 'softmax'], [64, 8, 'softmax'], [300, 4, 'softmax'], [8, 2, 'sigmoid'], [64, 8, 'sigmoid'], [100, 1, 'sigmoid'], [300, 4, 'sigmoid']] as const) {
      const T = 4000;
      const logits = Float32Array.from({ length: T * E }, () => normal());
      // (one kind of poison a run of 16 tokens, so that a group of a vector of tokens meets only one)
      for (let t = 0; t < T; t++) if (t % 5 !== 0) logits[t * E + (t % E)] = poison[Math.floor(t / 16) % 4]!;
      const route = (backend: string) => {
        const router = new DynamicRouter({ inputDim: 1, numExperts: E, topK: K, weight: new Float32Array(E), scoring, backend: backend as BackendName, validation: 'sanitize' });
        const r = router.routeLogits(logits);
        const out = { experts: Array.from(r.experts), weights: Array.from(r.weights), invalid: Array.from(r.invalidTokens) };
        r.release();
        router.dispose();
        return out;
      };
      const oracle = route('scalar');
      expect(oracle.invalid.length).toBe(T - T / 5);
      for (const backend of backendNames) {
        const got = route(backend);
        expect(got.invalid, `${backend} E=${E} ${scoring}`).toEqual(oracle.invalid);
        expect(got.experts, `${backend} E=${E} ${scoring}`).toEqual(oracle.experts);
        const worst = Math.max(...got.weights.map((w, i) => Math.abs(w - oracle.weights[i]!) - 1e-5 * Math.abs(oracle.weights[i]!)));
        expect(worst, `${backend} E=${E} ${scoring}: weights beyond 1e-5 relative`).toBeLessThanOrEqual(1e-7);
      }
    }
  });
});

// Group-limited routing (SPEC §3) on the SIMD backends scores its groups by their two largest keys
// from lane-wise maxima, where the oracle loops over the keys and keeps the best groups by
// core/row_select.h's keep_top_groups (which test/reference checks independently); up to E = 256 and
// 16 groups, a vector of tokens at a time, ranked pair by pair in double: the same groups every time,
// ties to the lower group included. Rows of three values repeated make groups of equal scores; the
// experts must equal the oracle's exactly.
describe('group-limited routing keeps the oracle\'s groups', () => {
  it(`2 to 512 groups, tied group scores, sigmoid with a selection bias × [${backendNames.join(', ')}]`, () => {
    const normal = normalGenerator(59);
    const shapes = [
      { E: 256, count: 8, select: 4, K: 8 },
      { E: 64, count: 64, select: 7, K: 4 },
      { E: 130, count: 65, select: 9, K: 8 },
      { E: 256, count: 128, select: 40, K: 8 },
      { E: 1024, count: 512, select: 3, K: 6 },
      { E: 24, count: 3, select: 2, K: 5 },
      { E: 128, count: 16, select: 5, K: 8 },
      { E: 32, count: 2, select: 1, K: 3 },
    ];
    for (const { E, count, select, K } of shapes) {
      const T = 40;
      const logits = Float32Array.from({ length: T * E }, (_, i) => (Math.floor(i / E) % 4 === 0 ? ((i % E) % 3) * 0.5 : normal() * 2));
      const selectionBias = Float32Array.from({ length: E }, (_, e) => ((e * 37) % 11) * 0.003);
      const route = (backend: string) => {
        const router = new DynamicRouter({
          inputDim: 1, numExperts: E, topK: K, weight: new Float32Array(E), backend: backend as BackendName,
          scoring: 'sigmoid', selectionBias, groups: { count, select }, normalize: true,
        });
        const r = router.routeLogits(logits);
        const out = { experts: Array.from(r.experts), weights: Array.from(r.weights) };
        r.release();
        router.dispose();
        return out;
      };
      const oracle = route('scalar');
      for (const backend of backendNames) {
        const got = route(backend);
        const where = `${backend} E=${E} groups ${count}/${select}`;
        expect(got.experts, where).toEqual(oracle.experts);
        const worst = Math.max(...got.weights.map((w, i) => Math.abs(w - oracle.weights[i]!) - 1e-5 * Math.abs(oracle.weights[i]!)));
        expect(worst, `${where}: weights beyond 1e-5 relative`).toBeLessThanOrEqual(1e-7);
      }
    }
  });
});

// Capacity after a fused token stage (docs/semantics.md §7, bench/NOTES.md item 86): the SIMD backends
// route dropPolicy 'position' as if without capacity, then drop the overflowing experts' latest
// assignments and renormalize only the tokens that lost a slot; 'score' splits only the overflowing
// experts' assignments. Batches of whole groups of 16 tokens and a remainder, so that the routings that
// select across tokens do; experts of uneven popularity, so that some overflow by far at factors 0.5
// and 1, and copies of earlier tokens, whose equal scores 'score' breaks by the lower token. Against the
// reference; and a capacity that drops nothing returns the dropless routing bit for bit.
describe('capacity drops agree with the reference on batches routed across tokens', () => {
  it(`E = 8, 64, 100, 256; factors 0.5, 1 and E / K; by position and by score; softmax normalized or not, sigmoid, select-then-softmax, top-p, DeepSeek-V3's routing, negative scale × [${backendNames.join(', ')}]`, { timeout: 120_000 }, async () => {
    const rng = new Rng(20261124);
    const shapes = [{ E: 8, K: 2 }, { E: 64, K: 8 }, { E: 100, K: 6 }, { E: 256, K: 8 }];
    const T = 16 * 40 + 9;
    let cases = 0;
    let dropped = 0;
    for (const { E, K } of shapes) {
      const selectionBias = Float32Array.from({ length: E }, () => 0.05 * rng.normal());
      const variants: Record<string, unknown>[] = [
        {}, { normalize: false }, { scoring: 'sigmoid', normalize: true, scale: 2.5 }, { order: 'select-then-softmax' },
        { strategy: 'top-p', topP: 0.7 }, { scale: -1.5, dispatch: true },
        { scoring: 'sigmoid', selectionBias, groups: E % 4 === 0 ? { count: 4, select: 2 } : undefined, normalize: true, scale: 2.5 },
      ];
      const popularity = Array.from({ length: E }, () => 1.5 * rng.normal());
      const logits = new Float32Array(T * E);
      for (let t = 0; t < T; t++) for (let e = 0; e < E; e++) logits[t * E + e] = rng.normal() + popularity[e]!;
      const D = 24;
      const hidden = Float32Array.from({ length: T * D }, () => rng.normal());
      // every fifth token a copy of an earlier one: equal scores, which 'score' breaks by the lower token
      const copies: [number, number][] = [];
      for (let t = 5; t < T; t += 5) {
        const from = rng.int(0, t - 1);
        copies.push([t, from]);
        logits.copyWithin(t * E, from * E, (from + 1) * E);
        hidden.copyWithin(t * D, from * D, (from + 1) * D);
      }
      for (const variant of variants) {
        // E / K: a capacity of T, which nothing overflows
        for (const [capacityFactor, dropPolicy] of [[0.5, 'position'], [1, 'position'], [1, 'score'], [E / K, 'position']] as const) {
          // E = 64 behind a gate (hidden states), the others as logits
          const gate = E === 64;
          const weight = Float32Array.from({ length: E * (gate ? D : 1) }, () => (gate ? rng.normal() / Math.sqrt(D) : 0));
          const options = { inputDim: gate ? D : 1, numExperts: E, topK: K, weight, capacityFactor, dropPolicy, ...variant };
          const c: Case = {
            seed: 0,
            strategy: (variant.strategy as Strategy | undefined) ?? 'top-k',
            options: options as Case['options'],
            weightDtype: 'f32',
            calls: [{ kind: gate ? 'route' : 'routeLogits', async: false, dtype: 'f32', T, data: gate ? hidden : logits, injected: [] }],
            describe: `capacity E=${E} K=${K} T=${T} ${gate ? 'hidden' : 'logits'}`,
            calibrate: undefined,
          };
          const refs = referenceRun(c)[0];
          dropped += (refs.results[0] as RefRouting).droppedAssignments;
          for (const backend of backendNames) {
            const mismatch = await runCase(c, backend, refs);
            if (mismatch) throw new Error(mismatch);
            const route = (o: object) => {
              const router = new DynamicRouter({ ...o, backend: backend as BackendName } as any);
              const r = gate ? router.route(hidden) : router.routeLogits(logits);
              const out = { experts: Array.from(r.experts), weights: Array.from(r.weights), dropped: r.droppedAssignments };
              r.release();
              router.dispose();
              return out;
            };
            const where = `${c.describe} ${JSON.stringify(variant)} ${dropPolicy} ${backend}`;
            const got = route(options);
            // A copy selects its original's experts in the same slots: where one of the two lost a slot's
            // expert to capacity, it is the later token, by either policy.
            for (const [t, from] of copies)
              for (let j = 0; j < K; j++)
                if (got.experts[from * K + j] === -1) expect(got.experts[t * K + j], `${where}: token ${from} slot ${j} dropped, its copy ${t} kept`).toBe(-1);
            if (capacityFactor !== E / K) continue;
            const { capacityFactor: _, dropPolicy: __, ...dropless } = options;
            expect(got, where).toEqual({ ...route(dropless), dropped: 0 });
          }
          cases += 1;
        }
      }
    }
    expect(cases).toBe(shapes.length * 7 * 4);
    expect(dropped).toBeGreaterThan(shapes.length * 7 * 3 * T * 0.05);
  });
});

// Expert choice (docs/semantics.md §5): each expert's C best tokens by a radix selection on its keys'
// bits (bench/NOTES.md item 91), a sort of (key, token) pairs for up to 64 tokens. Copies of earlier
// tokens and constant rows make exact ties at the capacity's edge, which go to the lower token;
// against the reference, every backend, batches on both sides of 64 tokens and of the parallel size.
describe('expert choice agrees with the reference at any batch size, ties included', () => {
  it(`E = 8, 64, 100; T = 1 to 3000; capacity factors 0.5, 1, 2 × [${backendNames.join(', ')}]`, { timeout: 120_000 }, async () => {
    const rng = new Rng(20261126);
    let cases = 0;
    for (const { E, K } of [{ E: 8, K: 2 }, { E: 64, K: 8 }, { E: 100, K: 6 }]) {
      for (const T of [1, 5, 63, 64, 65, 700, 3000]) {
        const logits = Float32Array.from({ length: T * E }, () => rng.normal());
        for (let t = 0; t < T; t++) {
          // every fourth token a copy of the first: more ties than an expert's capacity
          if (t % 4 === 1) logits.copyWithin(t * E, 0, E);
          else if (t % 3 === 2) {
            const from = rng.int(0, t - 1);
            logits.copyWithin(t * E, from * E, (from + 1) * E);
          }
          if (t % 7 === 3 && t % 4 !== 1) logits.fill(0.5, t * E, (t + 1) * E);
        }
        for (const capacityFactor of [0.5, 1, 2]) {
          const c = logitsCase({ numExperts: E, topK: K, strategy: 'expert-choice', capacityFactor }, logits, `expert choice E=${E} K=${K} T=${T} factor ${capacityFactor}`);
          await expectReferenceOnEveryBackend(c);
          for (const backend of backendNames) {
            // The reference accepts either side of an exact tie; SPEC §5 takes the lower token. The
            // copies of token 0 tie on every key, so an expert that took a later copy took every
            // earlier one: each earlier copy has that expert, or K experts already.
            const router = new DynamicRouter({ ...c.options, backend: backend as BackendName } as any);
            const r = router.routeLogits(logits);
            const copies = Array.from({ length: T }, (_, t) => t).filter((t) => t === 0 || t % 4 === 1);
            for (let i = 1; i < copies.length; i++) {
              const later = copies[i]!, earlier = copies[i - 1]!;
              const kept = new Set(r.experts.slice(earlier * K, (earlier + 1) * K));
              for (const e of r.experts.slice(later * K, (later + 1) * K))
                if (e >= 0 && !kept.has(e)) expect(r.expertsPerToken[earlier], `${c.describe} ${backend}: expert ${e} took token ${later}, not ${earlier}`).toBe(K);
            }
            r.release();
            router.dispose();
          }
          cases += 1;
        }
      }
    }
    expect(cases).toBe(3 * 7 * 3);
  });
});

// From 2048 tokens, each expert's capacity-th key (expert choice, from 32 experts) or score (capacity
// by score) is first bracketed from a sample of evenly spaced tokens (bench/NOTES.md items 100, 101);
// only the keys inside its band are selected among. A period in the batch fools the sample: here
// every 16th token is far above (experts 0 and 1) or below (expert 2) the rest, so those experts'
// bands miss and they take from their whole columns or lists. Plain random batches check the bands
// themselves, on both sides of the sampled size.
describe('expert choice and capacity by score from sampled bands, and where a sample misleads', () => {
  it(`T = 2047 to 20000, E = 32, 64, 300; spikes every 16th token × [${backendNames.join(', ')}]`, { timeout: 120_000 }, async () => {
    const rng = new Rng(20261125);
    let cases = 0;
    const shapes = [
      { T: 2047, E: 64, K: 8, spikes: false }, { T: 2048, E: 64, K: 8, spikes: false }, { T: 20000, E: 64, K: 8, spikes: false },
      { T: 4096, E: 32, K: 4, spikes: true }, { T: 6000, E: 64, K: 8, spikes: true }, { T: 2500, E: 300, K: 6, spikes: true },
      // K / E near 0.6: more than 255 of a chunk's 1024 tokens above an expert's band (the pass
      // counts them in bytes, 255 tokens at a time), and a band that still holds its capacity-th key.
      { T: 2048, E: 32, K: 19, spikes: false },
    ];
    for (const { T, E, K, spikes } of shapes) {
      const logits = Float32Array.from({ length: T * E }, () => rng.normal());
      if (spikes)
        for (let t = 0; t < T; t += 16) {
          logits[t * E] = 12;
          logits[t * E + 1] = 9;
          logits[t * E + 2] = -12;
        }
      for (const capacityFactor of [0.5, 1, 2]) {
        const shape = `E=${E} K=${K} T=${T} factor ${capacityFactor}${spikes ? ' spikes' : ''}`;
        await expectReferenceOnEveryBackend(
          logitsCase({ numExperts: E, topK: K, strategy: 'expert-choice', capacityFactor }, logits, `expert choice ${shape}`),
        );
        await expectReferenceOnEveryBackend(
          logitsCase({ numExperts: E, topK: K, capacityFactor, dropPolicy: 'score' }, logits, `capacity by score ${shape}`),
        );
        cases += 1;
      }
    }
    expect(cases).toBe(shapes.length * 3);
  });
});

// Expert choice's keys of a sanitized logit are -inf and its s 0 (docs/semantics.md §5, SPEC's
// sanitize); the core takes a kept slot's s from its key when the keys are the scores (no selection
// bias), so a capacity of every token, which keeps such slots, checks that mapping: unnormalized
// weights are the s themselves.
describe('expert choice keeps sanitized tokens\' slots last, with weight s = 0', () => {
  it(`E = 8, 64; rows with some or every logit non-finite; softmax and sigmoid × [${backendNames.join(', ')}]`, async () => {
    const rng = new Rng(20261127);
    let cases = 0;
    for (const { E, K, T } of [{ E: 8, K: 2, T: 40 }, { E: 64, K: 8, T: 3000 }]) {
      const logits = Float32Array.from({ length: T * E }, () => rng.normal());
      const bad = [NaN, Infinity, -Infinity];
      for (let t = 0; t < T; t += 3) {
        const finite = t % 2 === 0 ? 0 : 1; // every logit non-finite, or all but one
        for (let e = finite; e < E; e++) logits[t * E + e] = bad[(t + e) % 3]!;
      }
      for (const scoring of ['softmax', 'sigmoid'] as const) {
        for (const normalize of [false, true]) {
          await expectReferenceOnEveryBackend(
            logitsCase(
              { numExperts: E, topK: K, strategy: 'expert-choice', capacityFactor: E / K, validation: 'sanitize', scoring, normalize },
              logits,
              `expert choice sanitized E=${E} ${scoring} normalize ${normalize}`,
            ),
          );
          cases += 1;
        }
      }
    }
    expect(cases).toBe(2 * 2 * 2);
  });
});

// The entropy strategy decides k_t across tokens from an f32 H = ln S - sum p v and leaves a token
// whose (K - kmin) H / ln E lies within that sum's error of a rounding boundary to the token-by-token
// path (bench/NOTES.md item 92). Rows scaled to put it at a boundary, just off one (inside and
// outside the reference's band) and far from one, in whole groups of lanes and gathered ones, fused
// and not (capacity by score).
describe('entropy\'s k_t agrees with the reference next to its rounding boundaries', () => {
  it(`E = 2, 8, 64, 300, 1024; k_t at n + 1/2 + δ, |δ| from 0 to 0.3; fused and not × [${backendNames.join(', ')}]`, async () => {
    const rng = new Rng(20261124);
    const offsets = [0, 1e-6, -1e-6, 1e-5, -1e-5, 1e-4, -1e-4, 1e-3, -1e-3, 0.3, -0.3];
    let cases = 0;
    for (const { E, K, kmin } of [{ E: 2, K: 2, kmin: 1 }, { E: 8, K: 8, kmin: 1 }, { E: 64, K: 8, kmin: 2 }, { E: 300, K: 6, kmin: 1 }, { E: 1024, K: 8, kmin: 1 }]) {
      const T = 16 * 4 + 7;
      const logits = new Float32Array(T * E);
      const entropyOf = (row: Float64Array) => {
        let max = -Infinity;
        for (const u of row) max = Math.max(max, u);
        let sum = 0;
        for (const u of row) sum += Math.exp(u - max);
        let h = 0;
        for (const u of row) {
          const p = Math.exp(u - max) / sum;
          if (p > 0) h -= p * Math.log(p);
        }
        return h;
      };
      for (let t = 0; t < T; t++) {
        const base = Float64Array.from({ length: E }, () => rng.normal());
        const n = rng.int(0, K - kmin - 1);
        const target = ((n + 0.5 + offsets[t % offsets.length]!) * Math.log(E)) / (K - kmin);
        // H of the row scaled by b falls from ln E (b = 0) towards 0: bisect b for the target.
        let lo = 0;
        let hi = 1;
        const scaled = (b: number) => Float64Array.from(base, (u) => Math.fround(u * b));
        while (entropyOf(scaled(hi)) > target) hi *= 2;
        for (let i = 0; i < 200; i++) {
          const mid = (lo + hi) / 2;
          if (entropyOf(scaled(mid)) > target) lo = mid;
          else hi = mid;
        }
        logits.set(scaled(hi), t * E);
      }
      for (const capacity of [{}, { capacityFactor: 1.5, dropPolicy: 'score' }]) {
        await expectReferenceOnEveryBackend(
          logitsCase({ numExperts: E, topK: K, minExperts: kmin, strategy: 'entropy', ...capacity }, logits, `entropy E=${E} K=${K} kmin=${kmin} ${JSON.stringify(capacity)}`),
        );
        cases += 1;
      }
    }
    expect(cases).toBe(5 * 2);
  });
});

// dispatch: true lays the slots out expert-major (docs/semantics.md §8). Above 16384 slots the
// scatter runs on the pool, in pairs of chunks that fill each expert's share from its two ends
// (bench/NOTES.md item 88). The layout is rebuilt here from the routing's own experts by a stable
// bucket pass, for thread counts that make one, two and four pairs, with slots left empty by capacity
// and by dynamic k, and with block padding.
describe('the dispatch layout is the same on any number of threads', () => {
  it(`E = 8, 64, 300 above and below the parallel size; capacity by position and by score, top-p, expert choice, blocks × [${backendNames.join(', ')}]`, { timeout: 60_000 }, () => {
    const rng = new Rng(20261125);
    const layout = (experts: Int32Array, E: number, blockSize: number) => {
      const buckets: number[][] = Array.from({ length: E }, () => []);
      experts.forEach((e, i) => e >= 0 && buckets[e]!.push(i));
      const offsets = [0];
      const slots: number[] = [];
      for (const b of buckets) {
        const padded = Math.ceil(b.length / blockSize) * blockSize;
        slots.push(...b, ...new Array<number>(padded - b.length).fill(experts.length));
        offsets.push(offsets[offsets.length - 1]! + padded);
      }
      return { offsets, slots };
    };
    let parallel = 0;
    for (const { E, K, T } of [{ E: 8, K: 2, T: 9001 }, { E: 64, K: 8, T: 2500 }, { E: 64, K: 8, T: 700 }, { E: 300, K: 4, T: 4500 }]) {
      const popularity = Array.from({ length: E }, () => rng.normal());
      const logits = Float32Array.from({ length: T * E }, (_, i) => rng.normal() + popularity[i % E]!);
      const variants: Record<string, unknown>[] = [
        { dispatch: true }, { dispatch: { blockSize: 16 }, capacityFactor: 1 }, { dispatch: { blockSize: 3 }, strategy: 'top-p', topP: 0.6 },
        { dispatch: true, strategy: 'expert-choice' }, { dispatch: true, capacityFactor: 1, dropPolicy: 'score' },
      ];
      for (const variant of variants)
        for (const backend of backendNames) {
          let first: Int32Array | undefined;
          let firstWeights: Float32Array | undefined;
          for (const threads of [1, 2, 3, 4, 5, 8]) {
            const router = new DynamicRouter({ inputDim: 1, numExperts: E, topK: K, weight: new Float32Array(E), backend: backend as BackendName, threads, ...variant } as any);
            const r = router.routeLogits(logits);
            const where = `E=${E} K=${K} T=${T} ${JSON.stringify(variant)} ${backend} threads ${threads}`;
            first ??= r.experts.slice();
            firstWeights ??= r.weights.slice();
            expect(r.experts, where).toEqual(first);
            expect(r.weights, where).toEqual(firstWeights);
            const blockSize = (variant.dispatch as { blockSize?: number }).blockSize ?? 1;
            const want = layout(r.experts, E, blockSize);
            expect(Array.from(r.dispatch!.offsets), where).toEqual(want.offsets);
            expect(Array.from(r.dispatch!.slots), where).toEqual(want.slots);
            if (T * K >= 16384 && threads >= 4) parallel += 1;
            r.release();
            router.dispose();
          }
        }
    }
    expect(parallel).toBeGreaterThan(0);
  });
});

// bf16 and f16 logits are widened into blocks of f32 (hundreds of rows for small E) and routed by the
// same kernels as f32 logits, which go in whole chunks: a half-precision batch must route exactly as
// the f32 logits it widens to, bit for bit, across every block boundary.
describe('half-precision logits route as the f32 logits they widen to', () => {
  it(`E = 8, 64, 256, 300, bf16 and f16 × [${backendNames.join(', ')}]`, () => {
    const normal = normalGenerator(11);
    for (const [E, K] of [[8, 2], [64, 8], [256, 8], [300, 4]] as const) {
      const T = 2003;
      const values = Float32Array.from({ length: T * E }, () => 2 * normal());
      for (const backend of backendNames) {
        const router = new DynamicRouter({ inputDim: 1, numExperts: E, topK: K, weight: new Float32Array(E), backend: backend as BackendName });
        const routed = (x: Float32Array | Tensor) => {
          const r = router.routeLogits(x);
          const out = { experts: Array.from(r.experts), weights: Array.from(r.weights), counts: Array.from(r.expertCounts) };
          r.release();
          return out;
        };
        for (const dtype of ['bf16', 'f16'] as const) {
          const half = Tensor.from(values, [T, E], { dtype });
          const where = `${backend} ${dtype} E=${E}`;
          expect(routed(half), where).toEqual(routed(half.toFloat32()));
          half.release();
        }
        router.dispose();
      }
    }
  });
});
