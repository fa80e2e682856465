// Seeded random routing cases for the property tests. Everything a case needs is derived from its
// integer seed, so a failure names the seed and `makeCase(seed, strategy)` rebuilds it exactly.

import { numberToBf16, numberToF16, type DType } from './half';
import type { RefOptions, Strategy } from './reference';

export const STRATEGIES: Strategy[] = ['top-k', 'top-p', 'threshold', 'entropy', 'norm', 'expert-choice'];

/** mulberry32: small, fast, good enough for test data. */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = (seed ^ 0x9e3779b9) >>> 0;
    for (let i = 0; i < 4; i++) this.next();
  }
  next(): number {
    let t = (this.s = (this.s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  pick<T>(a: readonly T[]): T {
    return a[Math.floor(this.next() * a.length)];
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  private spare = NaN;
  normal(): number {
    if (!Number.isNaN(this.spare)) {
      const v = this.spare;
      this.spare = NaN;
      return v;
    }
    const a = 1 - this.next();
    const b = this.next();
    const rad = Math.sqrt(-2 * Math.log(a));
    this.spare = rad * Math.sin(2 * Math.PI * b);
    return rad * Math.cos(2 * Math.PI * b);
  }
}

export interface CaseCall {
  kind: 'route' | 'routeLogits';
  async: boolean;
  dtype: DType;
  T: number;
  /** f32 values (Float32Array) or raw f16/bf16 bits (Uint16Array). */
  data: Float32Array | Uint16Array;
  /** Set router.step to this before the call (and the reference's step). */
  setStep?: number;
  /** Tokens with a non-finite value injected. */
  injected: number[];
}

export interface Case {
  seed: number;
  /** Calibrate the native router on this sample first (top-p, threshold, norm). */
  calibrate?: { meanExperts: number; data: Float32Array | Uint16Array; T: number; dtype: DType };
  strategy: Strategy;
  /** Options as given to both sides; weight is f32 values or raw bits with weightDtype. */
  options: Omit<RefOptions, 'weight'> & { weight: Float32Array | Uint16Array };
  weightDtype: DType;
  calls: CaseCall[];
  describe: string;
}

function encode(values: ArrayLike<number>, dtype: DType): Float32Array | Uint16Array {
  if (dtype === 'f32') return Float32Array.from(values);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++)
    out[i] = dtype === 'f16' ? numberToF16(values[i]) : numberToBf16(values[i]);
  return out;
}

const NONFINITE = [NaN, Infinity, -Infinity];

export function makeCase(seed: number, strategy: Strategy): Case {
  const r = new Rng(seed * 7919 + STRATEGIES.indexOf(strategy));
  const ec = strategy === 'expert-choice';
  // ---- sizes ----
  const sizeClass = r.next();
  const E =
    sizeClass < 0.55
      ? r.pick([1, 2, 3, 4, 5, 6, 7, 8])
      : sizeClass < 0.87
        ? r.pick([9, 12, 13, 16, 24, 31, 32, 60, 64, 97])
        : r.pick([128, 160, 211, 256, 257, 384, 509, 512]);
  const kc = r.next();
  const K = kc < 0.7 ? r.int(1, Math.min(E, 8)) : kc < 0.92 ? r.int(1, Math.min(E, 32)) : Math.min(E, 128);
  const D = r.pick([1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 33, 48, 64, 100, 127, 128, 255, 256, 512, 768, 1024, 2048, 4096]);
  const tc = r.next();
  const T =
    tc < 0.03
      ? 0
      : tc < 0.6
        ? r.pick([1, 2, 3, 4, 5, 7, 8, 13, 17, 31, 32])
        : tc < 0.92
          ? r.pick([33, 50, 64, 100, 128, 200, 257, 384])
          : r.pick([512, 700, 1000, 1500, 2000]);
  const dtype: DType = r.pick(['f32', 'f32', 'f16', 'bf16'] as const);
  const weightDtype: DType = r.pick(['f32', 'f32', 'f32', 'f32', 'f32', 'f32', 'f32', 'f32', 'f16', 'bf16'] as const);
  const budget = r.pick([2e5, 1e6, 2e6]);
  const logits = r.chance(0.35) || T * D * E > budget;
  const sigmaU = r.pick([0.05, 0.5, 1, 1, 2, 3, 6]);

  // ---- options ----
  const opts: Case['options'] = { inputDim: D, numExperts: E, topK: K, weight: new Float32Array(0), strategy };
  if (r.chance(0.15)) delete opts.strategy; // default
  if (strategy !== 'top-k' && opts.strategy === undefined) opts.strategy = strategy;
  const dynamic = strategy === 'top-p' || strategy === 'threshold' || strategy === 'entropy' || strategy === 'norm';
  if ((dynamic && r.chance(0.5)) || r.chance(0.1)) opts.minExperts = r.int(1, K);
  const scoring = r.chance(0.3) ? 'sigmoid' : r.chance(0.5) ? 'softmax' : undefined;
  if (scoring) opts.scoring = scoring;
  const oc = r.next();
  if (oc < 0.1) opts.order = 'softmax-then-select';
  else if (oc < 0.27) opts.order = 'select-then-softmax';
  const nc = r.next();
  if (nc < 0.2) opts.normalize = true;
  else if (nc < 0.4) opts.normalize = false;
  if (r.chance(0.3)) opts.scale = r.pick([0.5, 2, 2.5, 1.75]);
  if (strategy === 'top-p') opts.topP = r.chance(0.1) ? 1 : 0.05 + 0.95 * r.next();
  if (strategy === 'threshold')
    opts.threshold = scoring === 'sigmoid' ? 0.05 + 0.9 * r.next() : (0.02 + 2 * r.next()) / E;
  if (!ec && E > 1 && r.chance(0.22)) {
    const divs = [];
    for (let G = 1; G <= E; G++) if (E % G === 0) divs.push(G);
    const G = r.pick(divs);
    const gMin = Math.ceil((K * G) / E);
    if (gMin <= G) opts.groups = { count: G, select: r.int(gMin, G) };
  }
  const keyScale = opts.order === 'select-then-softmax' ? sigmaU : scoring === 'sigmoid' ? 0.3 : 1 / E;
  if (r.chance(0.25)) {
    const sb = new Float32Array(E);
    const bs = keyScale * r.pick([0.1, 0.5, 2]);
    for (let e = 0; e < E; e++) sb[e] = r.normal() * bs;
    if (r.chance(0.3)) for (let e = 0; e < E; e++) if (r.chance(0.2)) sb[e] = -5 * (keyScale + 1);
    opts.selectionBias = sb;
  }
  let ncalls = 1;
  if (r.chance(0.1)) {
    opts.biasUpdateRate = r.pick([1e-3, 0.01, 0.05]) * Math.max(keyScale, 1e-3);
    ncalls = r.int(2, 3);
  }
  if (!ec && r.chance(0.25)) {
    opts.capacityFactor = r.pick([0.25, 0.5, 0.75, 1, 1.25, 1.5, 2]);
    if (r.chance(0.5)) opts.minCapacity = r.pick([1, 2, 3, 8]);
    const dp = r.next();
    if (dp < 0.33) opts.dropPolicy = 'position';
    else if (dp < 0.66) opts.dropPolicy = 'score';
  }
  if (ec && r.chance(0.5)) opts.capacityFactor = r.pick([0.5, 1, 1.25, 2, 3]);
  let setStep: number | undefined;
  if (r.chance(0.15)) {
    opts.noise = { std: r.pick([0.01, 0.5, 1]), seed: r.chance(0.5) ? r.int(0, 1000) : r.int(0, 2 ** 20) * 2 ** 20 + r.int(0, 2 ** 20) };
    if (r.chance(0.5)) ncalls = Math.max(ncalls, 2);
    if (r.chance(0.3)) setStep = r.chance(0.5) ? r.int(0, 100) : 2 ** 32 + r.int(0, 1000);
  }
  const dc = r.next();
  if (dc < 0.3) opts.dispatch = true;
  else if (dc < 0.5) opts.dispatch = { blockSize: r.pick([1, 2, 4, 16, 64]) };
  if (r.chance(0.4)) opts.losses = true;
  if (r.chance(0.25)) opts.validation = 'sanitize';
  else if (r.chance(0.1)) opts.validation = 'reject';
  const inject = T > 0 && r.chance(opts.validation === 'sanitize' ? 0.6 : 0.12);

  // ---- gate ----
  const wv = new Float64Array(E * D);
  const ws = sigmaU / Math.sqrt(D);
  // (routeLogits never uses the gate: a cheap uniform fill keeps big cases fast)
  if (logits) for (let i = 0; i < wv.length; i++) wv[i] = (r.next() - 0.5) * ws;
  else for (let i = 0; i < wv.length; i++) wv[i] = r.normal() * ws;
  if (E > 2 && r.chance(0.1)) wv.copyWithin(D, 0, D); // two identical experts: exact ties
  opts.weight = encode(wv, weightDtype);
  if (r.chance(0.3)) {
    const b = new Float32Array(E);
    for (let e = 0; e < E; e++) b[e] = r.normal() * sigmaU * 0.3;
    opts.bias = b;
  }

  // ---- calls ----
  const calls: CaseCall[] = [];
  for (let c = 0; c < ncalls; c++) {
    const kind = logits ? 'routeLogits' : 'route';
    const Tc = c === 0 ? T : r.chance(0.5) ? T : r.int(1, Math.max(1, T));
    const len = Tc * (logits ? E : D);
    const v = new Float64Array(len);
    const rowLen = logits ? E : D;
    for (let t = 0; t < Tc; t++) {
      const rowScale = strategy === 'norm' && r.chance(0.5) ? Math.exp(r.normal() * 0.5) : 1;
      const special = r.next();
      for (let i = 0; i < rowLen; i++) v[t * rowLen + i] = r.normal() * (logits ? sigmaU : 1) * rowScale;
      if (logits && special < 0.04) {
        const val = r.normal() * sigmaU;
        for (let i = 0; i < rowLen; i++) v[t * rowLen + i] = val; // all-equal row
      } else if (logits && special < 0.1 && rowLen > 1) {
        for (let i = 0; i < rowLen; i++) if (r.chance(0.3)) v[t * rowLen + i] = v[t * rowLen + r.int(0, rowLen - 1)]; // exact duplicates
      }
    }
    const injected: number[] = [];
    if (inject && c === ncalls - 1 && Tc > 0) {
      const n = r.int(1, Math.min(3, Tc));
      for (let i = 0; i < n; i++) {
        const t = r.int(0, Tc - 1);
        if (!injected.includes(t)) injected.push(t);
        const bad = r.pick(NONFINITE);
        if (logits && r.chance(0.3)) for (let e = 0; e < rowLen; e++) v[t * rowLen + e] = r.pick(NONFINITE);
        else v[t * rowLen + r.int(0, rowLen - 1)] = bad;
      }
      injected.sort((a, b) => a - b);
    }
    calls.push({
      kind,
      async: r.chance(0.2),
      dtype,
      T: Tc,
      data: encode(v, dtype),
      setStep: c === 0 ? setStep : undefined,
      injected,
    });
  }
  let calibrate: Case['calibrate'];
  if ((strategy === 'top-p' || strategy === 'threshold' || strategy === 'norm') && r.chance(0.2)) {
    const kmin = opts.minExperts ?? 1;
    const Ts = r.pick([16, 64, 200]);
    const rowLen = logits ? E : D;
    const v = new Float64Array(Ts * rowLen);
    for (let t = 0; t < Ts; t++) {
      const rowScale = Math.exp(r.normal() * 0.5);
      for (let i = 0; i < rowLen; i++) v[t * rowLen + i] = r.normal() * (logits ? sigmaU : 1) * rowScale;
    }
    calibrate = { meanExperts: kmin + r.next() * (K - kmin), data: encode(v, dtype), T: Ts, dtype };
  }
  const describe = `seed=${seed} strategy=${strategy} T=${T} D=${D} E=${E} K=${K} dtype=${dtype} ${logits ? 'logits' : 'hidden'}`;
  return { seed, strategy, options: opts, weightDtype, calls, describe, calibrate };
}

/** Options for the reference (weight/arrays as numbers or raw bits). */
export function refOptions(c: Case): RefOptions {
  return { ...c.options, weight: { data: c.options.weight, dtype: c.weightDtype } };
}

/** A readable, reproducible summary of a case's options (for failure messages). */
export function describeOptions(c: Case): string {
  const o: Record<string, unknown> = { ...c.options };
  delete o.weight;
  if (o.bias) o.bias = `[${(o.bias as Float32Array).length}]`;
  if (o.selectionBias) o.selectionBias = `[${(o.selectionBias as Float32Array).length}]`;
  return JSON.stringify(o) + ` weightDtype=${c.weightDtype}`;
}
