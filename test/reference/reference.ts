// Independent TypeScript reference of docs/semantics.md, in float64 (the noise draw is rounded to f32,
// as the doc says). Written from the contract only; it is meant to be read side by side with the doc.
//
// Where docs/semantics.md is silent, this reference reads it as follows (the native engine agrees):
//   - entropy: k_t is clamped to [kmin, K] (with sigmoid scoring H(s)/ln E can exceed 1);
//   - expert-choice: the counts behind auxLoss and the bias update are the kept assignments;
//   - select-then-softmax in sanitize mode: a selected non-finite logit gets weight 0 and the softmax
//     runs over the finite selected ones (none finite: 1/n each);
//   - the bias update counts every routed token (invalid ones too); auxLoss only the valid ones.
//
// Besides the Routing fields it reports, per token, how certain each discrete decision is (the `k_t`
// range under a small perturbation of the decision quantity, near-ties in key order, near-ties between
// groups), so that compare.ts can apply the agreement rules of SPEC §10 / semantics §13.

import { noiseNormal } from './philox';
import { widen, type DType } from './half';
import { normalCdf } from './special';

export type Strategy = 'top-k' | 'top-p' | 'threshold' | 'entropy' | 'norm' | 'expert-choice';

export interface RawArray {
  data: ArrayLike<number>;
  dtype: DType;
}

/** The DynamicRouter options, with arrays given as plain numbers (f32 values) or as raw f16/bf16 bits. */
export interface RefOptions {
  inputDim: number;
  numExperts: number;
  topK: number;
  weight: ArrayLike<number> | RawArray;
  bias?: ArrayLike<number>;
  minExperts?: number;
  strategy?: Strategy;
  topP?: number;
  threshold?: number;
  scoring?: 'softmax' | 'sigmoid';
  order?: 'softmax-then-select' | 'select-then-softmax';
  normalize?: boolean;
  scale?: number;
  groups?: { count: number; select: number };
  selectionBias?: ArrayLike<number>;
  biasUpdateRate?: number;
  capacityFactor?: number;
  minCapacity?: number;
  dropPolicy?: 'position' | 'score';
  noise?: { std: number; seed: number };
  dispatch?: boolean | { blockSize: number };
  losses?: boolean;
  validation?: 'reject' | 'sanitize';
}

export class RefError extends Error {
  constructor(
    public code: string,
    message: string,
    public token = -1,
  ) {
    super(message);
  }
}

/** One way the group mask may have come out (more than one only at near-tied group scores). */
export interface Alternative {
  keys: Float64Array; // selection keys with the mask applied (−∞ outside the kept groups)
  cand: Int32Array; // the first min(E, K+2) experts in key order
  k: number; // k_t from the unperturbed decision quantity
  kLo: number; // k_t range under perturbation of the decision quantity
  kHi: number;
}

export interface TokenRef {
  valid: boolean;
  u: Float64Array;
  s: Float64Array;
  p: Float64Array;
  /** Alternatives; [0] is the reference's own. null: too many tied group masks to enumerate (check loosely). */
  alts: Alternative[] | null;
  /** k_t the reference chose. */
  k: number;
  /** Union of the k_t ranges over the alternatives. */
  kLo: number;
  kHi: number;
  /** Some decision of this token may legitimately come out differently on an f32 backend. */
  ambiguous: boolean;
  /** Two keys closer than this are a near-tie (spec tolerance plus the f32 error model). */
  tieTol: number;
  /** Relative tolerance of this token's weights. */
  wRel: number;
  /** Absolute error bound of s[t,·] as an f32 backend computes it. */
  sErr: number;
  /** Error bound of u[t,·] (f32 accumulation model). */
  uErr: number;
  /** Margin of the top-p cumulative-sum decision. */
  pMargin: number;
}

export interface RefRouting {
  tokens: number;
  topK: number;
  experts: Int32Array;
  weights: Float64Array;
  expertsPerToken: Int32Array;
  expertCounts: Int32Array;
  dispatch?: { offsets: Int32Array; slots: Int32Array };
  auxLoss?: number;
  zLoss?: number;
  entropy?: number;
  flopReduction: number;
  droppedAssignments: number;
  invalidTokens: Int32Array;
  // ---- what the comparator needs ----
  detail: {
    perToken: TokenRef[];
    /** Experts before capacity (token-choice; for expert-choice the kept ones): [T·K]. */
    preExperts: Int32Array;
    /** Counts before capacity over all tokens (what the bias update uses). */
    preCounts: Int32Array;
    /** Counts before capacity over valid tokens (what auxLoss uses). */
    lossCounts: Int32Array;
    /** Capacity C (token-choice with capacityFactor > 0, or expert-choice), else -1. */
    capacity: number;
    /** No decision anywhere is near a tie: cross-token outputs must match the reference exactly. */
    exact: boolean;
    /** The expert-choice selection of some expert is near a tie (its pre-cap counts are uncertain). */
    ecChoiceAmbiguous: boolean;
    /** Capacity (score policy) was decided at a near-tie. */
    capacityAmbiguous: boolean;
    step: number;
    dtype: DType;
    /** Error model of the losses: relative (aux) and absolute (z, entropy) bounds beyond the spec's. */
    lossErr: { auxRel: number; zAbs: number; entAbs: number };
    specRel: number;
  };
}

const EPS32 = 2 ** -24;

export interface ResolvedOptions {
  D: number;
  E: number;
  K: number;
  kmin: number;
  strategy: Strategy;
  topP: number;
  threshold: number;
  scoring: 'softmax' | 'sigmoid';
  order: 'softmax-then-select' | 'select-then-softmax';
  normalize: boolean;
  scale: number;
  groups: { count: number; select: number } | null;
  biasUpdateRate: number;
  capacityFactor: number; // 0 = off (token-choice); expert-choice: its capacity factor (default 1)
  minCapacity: number;
  dropPolicy: 'position' | 'score';
  noise: { std: number; seed: number } | null;
  dispatch: boolean;
  blockSize: number; // 0 = no padding
  losses: boolean;
  validation: 'reject' | 'sanitize';
}

export function resolveOptions(o: RefOptions): ResolvedOptions {
  const scoring = o.scoring ?? 'softmax';
  const strategy = o.strategy ?? 'top-k';
  const dispatch = o.dispatch === undefined ? false : o.dispatch !== false;
  const blockSize = typeof o.dispatch === 'object' && o.dispatch ? o.dispatch.blockSize : 0;
  return {
    D: o.inputDim,
    E: o.numExperts,
    K: o.topK,
    kmin: o.minExperts ?? 1,
    strategy,
    topP: o.topP ?? NaN,
    threshold: o.threshold ?? NaN,
    scoring,
    order: o.order ?? 'softmax-then-select',
    normalize: o.normalize ?? scoring === 'softmax',
    scale: o.scale ?? 1,
    groups: o.groups ?? null,
    biasUpdateRate: o.biasUpdateRate ?? 0,
    capacityFactor: strategy === 'expert-choice' ? (o.capacityFactor ?? 1) : (o.capacityFactor ?? 0),
    minCapacity: o.minCapacity ?? 4,
    dropPolicy: o.dropPolicy ?? 'position',
    noise: o.noise && o.noise.std > 0 ? o.noise : null,
    dispatch,
    blockSize,
    losses: o.losses ?? false,
    validation: o.validation ?? 'reject',
  };
}

function toNumbers(a: ArrayLike<number> | RawArray): Float64Array {
  if ((a as RawArray).dtype !== undefined && (a as RawArray).data !== undefined) {
    const r = a as RawArray;
    return widen(r.data, r.dtype);
  }
  return widen(a as ArrayLike<number>, 'f32');
}

/**
 * The first `m` entries of key order (all of them by default). Small prefixes by repeated arg-max,
 * the rest by a full sort; both give "descending key, ties to the lower index".
 */
export function keyOrderPrefix(keys: ArrayLike<number>, m: number): Int32Array {
  const n = keys.length;
  if (m >= n || m > 12 || n <= 24) return keyOrder(keys).subarray(0, Math.min(m, n));
  const out = new Int32Array(m);
  const taken = new Uint8Array(n);
  for (let j = 0; j < m; j++) {
    let best = -1;
    for (let i = 0; i < n; i++) {
      if (taken[i]) continue;
      if (best < 0 || keys[i] > keys[best]) best = i; // strict: the lower index wins ties
    }
    taken[best] = 1;
    out[j] = best;
  }
  return out;
}

/** "Key order": descending key, ties to the lower index. */
export function keyOrder(keys: ArrayLike<number>): Int32Array {
  const idx = new Int32Array(keys.length);
  for (let i = 0; i < idx.length; i++) idx[i] = i;
  return idx.sort((a, b) => {
    const ka = keys[a];
    const kb = keys[b];
    if (ka > kb) return -1;
    if (ka < kb) return 1;
    return a - b;
  });
}

const roundHalfUp = (v: number) => Math.floor(v + 0.5);
const clamp = (v: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, v));
const nearTie = (a: number, b: number, tol: number) =>
  Number.isFinite(a) && Number.isFinite(b) && Math.abs(a - b) <= tol;

export class ReferenceRouter {
  readonly opt: ResolvedOptions;
  readonly W: Float64Array | null;
  readonly b: Float64Array | null;
  selectionBias: Float64Array;
  step = 0;
  topP: number;
  threshold: number;
  /** μ, σ for the norm strategy once calibrated. */
  normStats: { mu: number; sigma: number } | null = null;

  constructor(options: RefOptions) {
    this.opt = resolveOptions(options);
    this.W = toNumbers(options.weight);
    this.b = options.bias ? toNumbers(options.bias) : null;
    this.selectionBias = options.selectionBias
      ? toNumbers(options.selectionBias)
      : new Float64Array(this.opt.E);
    this.topP = this.opt.topP;
    this.threshold = this.opt.threshold;
  }

  /** route(hidden [T·D]); `data` are f32 values or raw f16/bf16 bits. */
  route(data: ArrayLike<number>, dtype: DType = 'f32'): RefRouting {
    const x = widen(data, dtype);
    const T = x.length / this.opt.D;
    const { u, uErr } = this.gate(x, T);
    const norms = rowNorms(x, T, this.opt.D);
    return this.run(u, uErr, norms, T, dtype, this.opt.D, true);
  }

  /** routeLogits(logits [T·E]). */
  routeLogits(data: ArrayLike<number>, dtype: DType = 'f32'): RefRouting {
    const u = widen(data, dtype);
    const T = u.length / this.opt.E;
    const uErr = new Float64Array(T); // logits are exact f32 values: u carries no gate error
    const norms = rowNorms(u, T, this.opt.E);
    return this.run(u, uErr, norms, T, dtype, this.opt.E, true);
  }

  /** u = x·Wᵀ + b in double, with a model of the error an f32 accumulation may make. */
  gate(x: Float64Array, T: number): { u: Float64Array; uErr: Float64Array } {
    const { D, E } = this.opt;
    const W = this.W!;
    const u = new Float64Array(T * E);
    const uErr = new Float64Array(T);
    for (let t = 0; t < T; t++) {
      let errMax = 0;
      for (let e = 0; e < E; e++) {
        let acc = 0;
        let sq = 0; // Σ over the partial sums² and the products² (sequential f32 rounding model)
        for (let d = 0; d < D; d++) {
          const prod = x[t * D + d] * W[e * D + d];
          acc += prod;
          sq += acc * acc + prod * prod;
        }
        const bias = this.b ? this.b[e] : 0;
        const v = acc + bias;
        u[t * E + e] = v;
        const err = EPS32 * (3 * Math.sqrt(sq) + 2 * Math.abs(v) + Math.abs(bias));
        if (Number.isFinite(err)) errMax = Math.max(errMax, err);
      }
      uErr[t] = errMax;
    }
    return { u, uErr };
  }

  /**
   * The whole routing of one call, from u. `rowLen` is the length of the input rows (for the norm
   * strategy). Applies noise, advances step and updates the selection bias, like the router does.
   */
  run(
    u0: Float64Array,
    uErr: Float64Array,
    norms: Float64Array,
    T: number,
    dtype: DType,
    rowLen: number,
    stateful: boolean,
  ): RefRouting {
    const o = this.opt;
    const { E } = o;
    const u = new Float64Array(u0);
    const step = this.step;
    if (o.noise && stateful) {
      for (let t = 0; t < T; t++) {
        let extra = 0;
        for (let e = 0; e < E; e++) {
          const add = Math.fround(o.noise.std * noiseNormal(o.noise.seed, step, t, e));
          u[t * E + e] += add;
          extra = Math.max(extra, EPS32 * (Math.abs(u[t * E + e]) + Math.abs(add)));
        }
        uErr[t] += Number.isFinite(extra) ? extra : 0;
      }
    }
    const res = this.select(u, uErr, norms, T, dtype, rowLen);
    if (stateful) {
      res.detail.step = step;
      this.step = step + 1;
      if (o.biasUpdateRate > 0) this.updateBias(res.detail.preCounts);
    }
    return res;
  }

  updateBias(counts: ArrayLike<number>): void {
    const { E } = this.opt;
    let sum = 0;
    for (let e = 0; e < E; e++) sum += counts[e];
    const mean = sum / E;
    for (let e = 0; e < E; e++) {
      const sg = Math.sign(mean - counts[e]);
      this.selectionBias[e] = Math.fround(this.selectionBias[e] + this.opt.biasUpdateRate * sg);
    }
  }

  /** Everything after u: validation, scores, keys, groups, k_t, capacity, weights, outputs. */
  select(
    u: Float64Array,
    uErr: Float64Array,
    norms: Float64Array,
    T: number,
    dtype: DType,
    rowLen: number,
  ): RefRouting {
    const o = this.opt;
    const { E, K, kmin } = o;
    const specRel = dtype === 'f32' ? 1e-5 : 1e-2;
    const decEps = dtype === 'f32' ? 1e-4 : 1e-3;
    const sanitize = o.validation === 'sanitize';

    // ---- validation (§9 / §12) ----
    const valid = new Uint8Array(T);
    const invalid: number[] = [];
    for (let t = 0; t < T; t++) {
      let ok = 1;
      for (let e = 0; e < E; e++) if (!Number.isFinite(u[t * E + e])) ok = 0;
      valid[t] = ok;
      if (!ok) {
        if (!sanitize) throw new RefError('E_NONFINITE', `non-finite logits at token ${t}`, t);
        invalid.push(t);
      }
    }

    // ---- norm statistics (§4) ----
    let normMu = 0;
    let normSigma = 0;
    let normRelErr = EPS32 * (2 * Math.sqrt(rowLen) + 4);
    if (o.strategy === 'norm') {
      if (this.normStats) {
        normMu = this.normStats.mu;
        normSigma = this.normStats.sigma;
      } else {
        const st = meanStd(norms);
        normMu = st.mu;
        normSigma = st.sigma;
      }
    }

    const perToken: TokenRef[] = new Array(T);
    const preExperts = new Int32Array(T * K).fill(-1);
    const kt = new Int32Array(T);

    for (let t = 0; t < T; t++) {
      const ur = u.subarray(t * E, (t + 1) * E);
      // scores
      const s = new Float64Array(E);
      const finite = (e: number) => Number.isFinite(ur[e]);
      let m = -Infinity;
      let mn = Infinity;
      for (let e = 0; e < E; e++) if (finite(e)) {
        m = Math.max(m, ur[e]);
        mn = Math.min(mn, ur[e]);
      }
      if (o.scoring === 'softmax') {
        let sum = 0;
        for (let e = 0; e < E; e++) if (finite(e)) sum += Math.exp(ur[e] - m);
        for (let e = 0; e < E; e++) s[e] = finite(e) ? Math.exp(ur[e] - m) / sum : 0;
      } else {
        for (let e = 0; e < E; e++) s[e] = finite(e) ? 1 / (1 + Math.exp(-ur[e])) : 0;
      }
      // loss distribution
      let p: Float64Array;
      if (o.scoring === 'softmax') p = s;
      else {
        p = new Float64Array(E);
        let sum = 0;
        for (let e = 0; e < E; e++) sum += s[e];
        if (sum > 0) for (let e = 0; e < E; e++) p[e] = s[e] / sum;
      }
      // keys
      const keys = new Float64Array(E);
      for (let e = 0; e < E; e++) {
        keys[e] = finite(e)
          ? (o.order === 'softmax-then-select' ? s[e] : ur[e]) + this.selectionBias[e]
          : -Infinity;
      }
      // error model
      const spread = Number.isFinite(m) ? m - mn : 0;
      let maxS = 0;
      let maxKey = 0;
      for (let e = 0; e < E; e++) {
        maxS = Math.max(maxS, s[e]);
        if (Number.isFinite(keys[e])) maxKey = Math.max(maxKey, Math.abs(keys[e]));
      }
      const ue = uErr[t];
      const sRel =
        o.scoring === 'softmax' ? 2 * ue + EPS32 * (8 + 2 * Math.sqrt(E) + spread) : ue + 4 * EPS32;
      const sErr = maxS * sRel + EPS32;
      const keyErr =
        (o.order === 'softmax-then-select' ? sErr : ue + 2 * EPS32 * maxKey) + 2 * EPS32 * maxKey;
      const tieTol = specRel * maxKey + 2 * keyErr;
      const wRel = specRel + 2 * sRel + (o.order === 'select-then-softmax' ? 2 * ue : 0) + 4 * EPS32;

      // groups → alternatives
      let masks: (Uint8Array | null)[] | null = [null];
      if (o.groups) masks = groupMasks(keys, o.groups.count, o.groups.select, 2 * tieTol);

      const tok: TokenRef = {
        valid: !!valid[t],
        u: ur,
        s,
        p,
        alts: null,
        k: K,
        kLo: K,
        kHi: K,
        ambiguous: false,
        tieTol,
        wRel,
        sErr,
        uErr: ue,
        pMargin: decEps + sRel,
      };
      perToken[t] = tok;
      if (o.strategy === 'expert-choice') {
        tok.alts = [{ keys, cand: keyOrderPrefix(keys, K + 2), k: 0, kLo: 0, kHi: K }];
        continue;
      }
      if (masks === null) {
        // Too many exactly/near-tied group masks to enumerate: decide with the exact rule, check loosely.
        const mk = groupMasks(keys, o.groups!.count, o.groups!.select, 0)![0];
        const alt = this.alternative(keys, mk, s, norms[t], normMu, normSigma, normRelErr, decEps, sRel);
        tok.alts = null;
        tok.k = alt.k;
        tok.kLo = kmin;
        tok.kHi = K;
        tok.ambiguous = true;
        for (let j = 0; j < alt.k; j++) preExperts[t * K + j] = alt.cand[j];
        kt[t] = alt.k;
        continue;
      }
      const alts = masks.map((mk) =>
        this.alternative(keys, mk, s, norms[t], normMu, normSigma, normRelErr, decEps, sRel),
      );
      tok.alts = alts;
      const a0 = alts[0];
      tok.k = a0.k;
      tok.kLo = Math.min(...alts.map((a) => a.kLo));
      tok.kHi = Math.max(...alts.map((a) => a.kHi));
      let amb = alts.length > 1 || a0.kLo !== a0.kHi;
      for (let j = 0; j + 1 < E && j < tok.kHi; j++) {
        if (nearTie(a0.keys[a0.cand[j]], a0.keys[a0.cand[j + 1]], tieTol)) amb = true;
      }
      tok.ambiguous = amb;
      for (let j = 0; j < a0.k; j++) preExperts[t * K + j] = a0.cand[j];
      kt[t] = a0.k;
    }

    // ---- expert choice (§5) ----
    let capacity = -1;
    let ecChoiceAmbiguous = false;
    let capacityAmbiguous = false;
    let dropped = 0;
    const experts = new Int32Array(T * K).fill(-1);
    const preCounts = new Int32Array(E);
    const lossCounts = new Int32Array(E);
    if (o.strategy === 'expert-choice') {
      const C = Math.min(T, Math.ceil((o.capacityFactor * T * K) / E));
      capacity = C;
      const chosenBy: number[][] = Array.from({ length: T }, () => []);
      const col = new Float64Array(T);
      for (let e = 0; e < E; e++) {
        for (let t = 0; t < T; t++) col[t] = perToken[t].alts![0].keys[e];
        const order = keyOrder(col); // descending key, ties to the lower token index
        for (let i = 0; i < C; i++) chosenBy[order[i]].push(e);
        if (C > 0 && C < T) {
          const a = order[C - 1];
          const b = order[C];
          const tol = Math.max(perToken[a].tieTol, perToken[b].tieTol);
          if (nearTie(perToken[a].alts![0].keys[e], perToken[b].alts![0].keys[e], tol)) ecChoiceAmbiguous = true;
        }
      }
      for (let t = 0; t < T; t++) {
        const keys = perToken[t].alts![0].keys;
        const list = chosenBy[t].sort((a, b) => {
          if (keys[a] > keys[b]) return -1;
          if (keys[a] < keys[b]) return 1;
          return a - b;
        });
        for (let j = 0; j < Math.min(K, list.length); j++) preExperts[t * K + j] = list[j];
        for (let j = 0; j + 1 < list.length && j < K; j++) {
          if (nearTie(keys[list[j]], keys[list[j + 1]], perToken[t].tieTol)) perToken[t].ambiguous = true;
        }
        const keep = list.slice(0, K);
        dropped += list.length - keep.length;
        kt[t] = keep.length;
        perToken[t].k = perToken[t].kLo = perToken[t].kHi = keep.length;
        perToken[t].alts![0].k = keep.length;
        for (let j = 0; j < keep.length; j++) {
          experts[t * K + j] = keep[j];
          // Choice (the doc's "before capacity" has no §7 capacity to precede here): the counts that
          // feed auxLoss and the bias update are the assignments each expert keeps after the cap.
          preCounts[keep[j]]++;
          if (perToken[t].valid) lossCounts[keep[j]]++;
        }
      }
    } else {
      for (let t = 0; t < T; t++) {
        for (let j = 0; j < kt[t]; j++) {
          const e = preExperts[t * K + j];
          experts[t * K + j] = e;
          preCounts[e]++;
          if (perToken[t].valid) lossCounts[e]++;
        }
      }
      // ---- capacity (§7) ----
      if (o.capacityFactor > 0) {
        const C = Math.max(o.minCapacity, Math.ceil((o.capacityFactor * T * K) / E));
        capacity = C;
        for (let e = 0; e < E; e++) {
          const assign: { t: number; j: number }[] = [];
          for (let t = 0; t < T; t++)
            for (let j = 0; j < kt[t]; j++) if (preExperts[t * K + j] === e) assign.push({ t, j });
          if (assign.length <= C) continue;
          if (o.dropPolicy === 'score') {
            assign.sort((a, b) => {
              const sa = perToken[a.t].s[e];
              const sb = perToken[b.t].s[e];
              if (sa > sb) return -1;
              if (sa < sb) return 1;
              return a.t - b.t;
            });
            const a = assign[C - 1];
            const b = assign[C];
            const tol = specRel * Math.max(perToken[a.t].s[e], perToken[b.t].s[e]) + perToken[a.t].sErr + perToken[b.t].sErr;
            if (C > 0 && nearTie(perToken[a.t].s[e], perToken[b.t].s[e], tol)) capacityAmbiguous = true;
          }
          for (let i = C; i < assign.length; i++) {
            experts[assign[i].t * K + assign[i].j] = -1;
            dropped++;
          }
        }
      }
    }

    // ---- weights (§6, §7) ----
    const weights = new Float64Array(T * K);
    for (let t = 0; t < T; t++) {
      const w = this.weightsFor(perToken[t], experts.subarray(t * K, (t + 1) * K), kt[t]);
      weights.set(w, t * K);
    }

    // ---- counts, dispatch (§9) ----
    const expertCounts = histogram(experts, E);
    let dispatch: RefRouting['dispatch'];
    if (o.dispatch) dispatch = buildDispatch(experts, T, K, E, o.blockSize);

    // ---- losses (§9) ----
    let auxLoss: number | undefined;
    let zLoss: number | undefined;
    let entropy: number | undefined;
    let lossErr = { auxRel: 0, zAbs: 0, entAbs: 0 };
    if (o.losses) {
      const l = computeLosses(perToken, lossCounts, E);
      auxLoss = l.aux;
      zLoss = l.z;
      entropy = l.entropy;
      lossErr = { auxRel: l.rel, zAbs: l.zAbs, entAbs: l.entAbs };
    }

    let sumK = 0;
    for (let t = 0; t < T; t++) sumK += kt[t];
    const flopReduction = T === 0 ? 0 : 1 - sumK / (T * K);
    const anyAmb = perToken.some((tk) => tk.ambiguous);
    return {
      tokens: T,
      topK: K,
      experts,
      weights,
      expertsPerToken: kt,
      expertCounts,
      dispatch,
      auxLoss,
      zLoss,
      entropy,
      flopReduction,
      droppedAssignments: dropped,
      invalidTokens: Int32Array.from(invalid),
      detail: {
        perToken,
        preExperts,
        preCounts,
        lossCounts,
        capacity,
        exact: !anyAmb && !ecChoiceAmbiguous && !capacityAmbiguous,
        ecChoiceAmbiguous,
        capacityAmbiguous,
        step: this.step,
        dtype,
        lossErr,
        specRel,
      },
    };
  }

  /** Candidates and k_t of one token for one group mask. */
  alternative(
    keys0: Float64Array,
    mask: Uint8Array | null,
    s: Float64Array,
    norm: number,
    mu: number,
    sigma: number,
    normRelErr: number,
    decEps: number,
    sRel: number,
  ): Alternative {
    const o = this.opt;
    const { E, K, kmin } = o;
    const keys = new Float64Array(keys0);
    if (mask) for (let e = 0; e < E; e++) if (!mask[e]) keys[e] = -Infinity;
    const cand = keyOrderPrefix(keys, K + 2);
    let k = K;
    let kLo = K;
    let kHi = K;
    switch (o.strategy) {
      case 'top-k':
        break;
      case 'top-p': {
        // The smallest k with Σ_{j<k} s[cand_j] ≥ target; only k ≤ K matters after the clamp, so the
        // sum stops at K (returning K+1 for "not reached", which the clamp turns into K like E would).
        const kFor = (target: number) => {
          let cum = 0;
          for (let j = 0; j < Math.min(E, K); j++) {
            cum += s[cand[j]];
            if (cum >= target) return j + 1;
          }
          return Math.min(E, K + 1);
        };
        const P = this.topP;
        const d = decEps + sRel;
        k = clamp(kFor(P), kmin, K);
        kLo = clamp(kFor(P - d), kmin, K);
        kHi = clamp(kFor(P + d), kmin, K);
        break;
      }
      case 'threshold': {
        let maxS = 0;
        for (let e = 0; e < E; e++) maxS = Math.max(maxS, s[e]);
        const count = (thr: number) => {
          let n = 0;
          for (let e = 0; e < E; e++) if ((!mask || mask[e]) && s[e] >= thr) n++;
          return n;
        };
        const d = (decEps + sRel) * maxS;
        k = clamp(count(this.threshold), kmin, K);
        kLo = clamp(count(this.threshold + d), kmin, K);
        kHi = clamp(count(this.threshold - d), kmin, K);
        break;
      }
      case 'entropy': {
        if (E === 1) {
          k = kLo = kHi = kmin;
          break;
        }
        let H = 0;
        for (let e = 0; e < E; e++) if (s[e] > 0) H -= s[e] * Math.log(s[e]);
        const v = ((K - kmin) * H) / Math.log(E);
        const d = (decEps + sRel * (1 + 1 / Math.log(E))) * Math.max(1, K - kmin);
        // Choice: with sigmoid scoring s is not a distribution and H/ln E can exceed 1; k_t is
        // clamped to [kmin, K] like every token-choice strategy.
        k = clamp(kmin + roundHalfUp(v), kmin, K);
        kLo = clamp(kmin + roundHalfUp(v - d), kmin, K);
        kHi = clamp(kmin + roundHalfUp(v + d), kmin, K);
        break;
      }
      case 'norm': {
        let c: number;
        let cLo: number;
        let cHi: number;
        if (!Number.isFinite(norm)) c = cLo = cHi = 0;
        else if (!(sigma > 0)) {
          c = cLo = cHi = 0.5;
        } else {
          const z = (norm - mu) / sigma;
          c = normalCdf(z);
          const dz = (normRelErr * (Math.abs(norm) + 2 * Math.abs(mu))) / sigma + normRelErr * Math.abs(z) * 4;
          cLo = normalCdf(z - dz);
          cHi = normalCdf(z + dz);
        }
        const d = decEps * Math.max(1, K - kmin);
        k = kmin + roundHalfUp((K - kmin) * c);
        kLo = kmin + roundHalfUp((K - kmin) * cLo - d);
        kHi = kmin + roundHalfUp((K - kmin) * cHi + d);
        kLo = clamp(kLo, kmin, K);
        kHi = clamp(kHi, kmin, K);
        break;
      }
      case 'expert-choice':
        break;
    }
    return { keys, cand, k, kLo, kHi };
  }

  /**
   * The weights of one token for a given slot list (−1 = empty or dropped), per §6/§7.
   * Exported for the comparator, which applies it to the native engine's own selection.
   * Choice where the doc is silent: with select-then-softmax, non-finite u (sanitize) of a selected
   * expert takes weight 0 and the softmax runs over the finite ones (none finite: 1/n each).
   */
  weightsFor(tok: TokenRef, slots: ArrayLike<number>, k: number): Float64Array {
    const o = this.opt;
    const w = new Float64Array(o.K);
    const surv: number[] = [];
    for (let j = 0; j < k; j++) if (slots[j] >= 0) surv.push(j);
    if (surv.length === 0) return w;
    if (o.order === 'select-then-softmax') {
      const fin = surv.filter((j) => Number.isFinite(tok.u[slots[j]]));
      if (fin.length === 0) {
        for (const j of surv) w[j] = 1 / surv.length;
      } else {
        let m = -Infinity;
        for (const j of fin) m = Math.max(m, tok.u[slots[j]]);
        let sum = 0;
        for (const j of fin) sum += Math.exp(tok.u[slots[j]] - m);
        for (const j of fin) w[j] = Math.exp(tok.u[slots[j]] - m) / sum;
      }
    } else {
      for (const j of surv) w[j] = tok.s[slots[j]];
      if (o.normalize) {
        let sum = 0;
        for (const j of surv) sum += w[j];
        if (sum > 0) for (const j of surv) w[j] /= sum;
        else for (const j of surv) w[j] = 1 / surv.length;
      }
    }
    for (const j of surv) w[j] *= o.scale;
    return w;
  }

  /**
   * calibrate(sample, {meanExperts}) by bisection (§11). Returns {parameter, meanExperts} and sets the
   * parameter on this reference router. No noise, no step, no bias update.
   */
  calibrate(
    data: ArrayLike<number>,
    opts: { meanExperts: number; logits?: boolean },
    dtype: DType = 'f32',
  ): { parameter: number; meanExperts: number } {
    const o = this.opt;
    const x = widen(data, dtype);
    const T = x.length / (opts.logits ? o.E : o.D);
    let u: Float64Array;
    let uErr: Float64Array;
    if (opts.logits) {
      u = x;
      uErr = new Float64Array(T);
    } else ({ u, uErr } = this.gate(x, T));
    const rowLen = opts.logits ? o.E : o.D;
    const norms = rowNorms(x, T, rowLen);
    const target = opts.meanExperts;
    const meanK = () => {
      const r = this.select(u, new Float64Array(uErr), norms, T, dtype, rowLen);
      let s = 0;
      for (let t = 0; t < T; t++) s += r.expertsPerToken[t];
      return T === 0 ? 0 : s / T;
    };
    let lo: number;
    let hi: number;
    let set: (v: number) => void;
    let increasing: boolean;
    if (o.strategy === 'top-p') {
      lo = 0;
      hi = 1;
      set = (v) => (this.topP = v);
      increasing = true;
    } else if (o.strategy === 'threshold') {
      lo = -1e-9;
      hi = 1 + 1e-9;
      if (o.scoring === 'sigmoid') {
        lo = -1e-9;
        hi = 1 + 1e-9;
      }
      set = (v) => (this.threshold = v);
      increasing = false;
    } else if (o.strategy === 'norm') {
      const st = meanStd(norms);
      const sigma = st.sigma;
      let nmin = Infinity;
      let nmax = -Infinity;
      for (const n of norms) if (Number.isFinite(n)) {
        nmin = Math.min(nmin, n);
        nmax = Math.max(nmax, n);
      }
      lo = nmin - 10 * sigma - 1;
      hi = nmax + 10 * sigma + 1;
      set = (v) => (this.normStats = { mu: v, sigma });
      increasing = false;
    } else {
      throw new RefError('E_CONFIG', `calibrate does not apply to strategy ${o.strategy}`);
    }
    let best = { parameter: NaN, meanExperts: NaN, miss: Infinity };
    for (let it = 0; it < 100; it++) {
      const mid = (lo + hi) / 2;
      set(mid);
      const mk = meanK();
      const miss = Math.abs(mk - target);
      if (miss < best.miss) best = { parameter: mid, meanExperts: mk, miss };
      if (miss <= 0.05) break;
      if ((mk < target) === increasing) lo = mid;
      else hi = mid;
    }
    set(best.parameter);
    return { parameter: best.parameter, meanExperts: best.meanExperts };
  }
}

// ---------------------------------------------------------------------------------------------

export function rowNorms(x: Float64Array, T: number, len: number): Float64Array {
  const n = new Float64Array(T);
  for (let t = 0; t < T; t++) {
    let s = 0;
    for (let i = 0; i < len; i++) s += x[t * len + i] * x[t * len + i];
    n[t] = Math.sqrt(s);
  }
  return n;
}

/** Mean and population standard deviation of the finite values. */
export function meanStd(v: ArrayLike<number>): { mu: number; sigma: number } {
  let n = 0;
  let sum = 0;
  for (let i = 0; i < v.length; i++) if (Number.isFinite(v[i])) {
    n++;
    sum += v[i];
  }
  if (n === 0) return { mu: 0, sigma: 0 };
  const mu = sum / n;
  let ss = 0;
  for (let i = 0; i < v.length; i++) if (Number.isFinite(v[i])) ss += (v[i] - mu) ** 2;
  return { mu, sigma: Math.sqrt(ss / n) };
}

/**
 * The group masks allowed for one token: [the exact rule's mask, …alternatives within `tol`], or
 * null when there are too many to enumerate. A group's score is the sum of its two largest keys.
 */
export function groupMasks(keys: Float64Array, G: number, g: number, tol: number): Uint8Array[] | null {
  const E = keys.length;
  const size = E / G;
  const score = new Float64Array(G);
  for (let q = 0; q < G; q++) {
    let a = -Infinity;
    let b = -Infinity;
    for (let i = q * size; i < (q + 1) * size; i++) {
      const v = keys[i];
      if (v > a) {
        b = a;
        a = v;
      } else if (v > b) b = v;
    }
    score[q] = size === 1 ? a : a + b;
  }
  const order = keyOrder(score);
  const makeMask = (groups: number[]) => {
    const m = new Uint8Array(E);
    for (const q of groups) for (let i = q * size; i < (q + 1) * size; i++) m[i] = 1;
    return m;
  };
  const exact = Array.from(order.subarray(0, g));
  const masks = [makeMask(exact)];
  const sg = score[order[g - 1]];
  if (!Number.isFinite(sg) || tol <= 0) return masks;
  const certain: number[] = [];
  const unsure: number[] = [];
  for (let q = 0; q < G; q++) {
    if (score[q] > sg + tol) certain.push(q);
    else if (score[q] >= sg - tol) unsure.push(q);
  }
  const need = g - certain.length;
  if (need <= 0 || unsure.length <= need) return masks;
  // enumerate combinations of `need` out of `unsure` (give up beyond 64)
  let count = 1;
  for (let i = 0; i < need && count <= 64; i++) count = (count * (unsure.length - i)) / (i + 1);
  if (count > 64) return null;
  const combos: number[][] = [];
  const rec = (start: number, acc: number[]) => {
    if (combos.length > 64) return;
    if (acc.length === need) {
      combos.push([...acc]);
      return;
    }
    for (let i = start; i < unsure.length; i++) rec(i + 1, [...acc, unsure[i]]);
  };
  rec(0, []);
  if (combos.length > 64) return null;
  const key0 = [...exact].sort((a, b) => a - b).join(',');
  for (const c of combos) {
    const groups = [...certain, ...c];
    if ([...groups].sort((a, b) => a - b).join(',') === key0) continue;
    masks.push(makeMask(groups));
  }
  return masks;
}

export function histogram(experts: ArrayLike<number>, E: number): Int32Array {
  const c = new Int32Array(E);
  for (let i = 0; i < experts.length; i++) if (experts[i] >= 0) c[experts[i]]++;
  return c;
}

/** Expert-major dispatch: per expert, ascending flat slot t·K+j, padded to a multiple of B with T·K. */
export function buildDispatch(
  experts: ArrayLike<number>,
  T: number,
  K: number,
  E: number,
  B: number,
): { offsets: Int32Array; slots: Int32Array } {
  const per: number[][] = Array.from({ length: E }, () => []);
  for (let i = 0; i < T * K; i++) if (experts[i] >= 0) per[experts[i]].push(i);
  const offsets = new Int32Array(E + 1);
  const slots: number[] = [];
  for (let e = 0; e < E; e++) {
    const seg = per[e];
    const len = B > 0 ? Math.ceil(seg.length / B) * B : seg.length;
    for (let i = 0; i < len; i++) slots.push(i < seg.length ? seg[i] : T * K);
    offsets[e + 1] = offsets[e] + len;
  }
  return { offsets, slots: Int32Array.from(slots) };
}

/** Losses over the valid tokens (§9), with a relative error bound for an f32 backend. */
export function computeLosses(
  perToken: TokenRef[],
  counts: ArrayLike<number>,
  E: number,
): { aux: number; z: number; entropy: number; rel: number; zAbs: number; entAbs: number } {
  const validT = perToken.filter((t) => t.valid);
  const V = validT.length;
  if (V === 0) return { aux: 0, z: 0, entropy: 0, rel: 0, zAbs: 0, entAbs: 0 };
  const P = new Float64Array(E);
  let z = 0;
  let H = 0;
  let uErrMax = 0;
  let zAbs = 0;
  for (const tk of validT) {
    for (let e = 0; e < E; e++) P[e] += tk.p[e];
    let m = -Infinity;
    for (let e = 0; e < E; e++) m = Math.max(m, tk.u[e]);
    let sum = 0;
    for (let e = 0; e < E; e++) sum += Math.exp(tk.u[e] - m);
    const lse = m + Math.log(sum);
    z += lse * lse;
    zAbs += 2 * Math.abs(lse) * (tk.uErr + EPS32 * (4 * Math.abs(lse) + Math.sqrt(E) + 4));
    for (let e = 0; e < E; e++) if (tk.p[e] > 0) H -= tk.p[e] * Math.log(tk.p[e]);
    uErrMax = Math.max(uErrMax, tk.uErr);
  }
  for (let e = 0; e < E; e++) P[e] /= V;
  let csum = 0;
  for (let e = 0; e < E; e++) csum += counts[e];
  let aux = 0;
  if (csum > 0) for (let e = 0; e < E; e++) aux += (counts[e] / csum) * P[e];
  aux *= E;
  const lnE = Math.log(E);
  const entropy = E === 1 ? 0 : H / V / lnE;
  const entAbs = E === 1 ? 0 : (2 * uErrMax + EPS32 * (8 + 2 * Math.sqrt(E))) * (1 + lnE) / lnE;
  return { aux, z: z / V, entropy, rel: 2 * uErrMax + EPS32 * (8 + 2 * Math.sqrt(E)), zAbs: zAbs / V, entAbs };
}
