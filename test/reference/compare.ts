// Comparator: the native engine's Routing against the reference, by the agreement rules of
// SPEC §10 / docs/semantics.md §13.
//
// Per token: k_t and the experts must equal the reference's, except where the reference flagged the
// token as near a decision boundary (k_t range, near-tied keys, near-tied groups): then the native
// k_t must lie in the range and each slot may differ only between near-tied keys. The weights are
// always recomputed by the reference for the experts the native engine actually returned.
// Cross-token outputs: when nothing anywhere was near a tie, counts/drops must equal the reference's
// (they follow from the per-token equality); otherwise they are checked for consistency with the
// native engine's own experts. Dispatch is always checked against the native experts.

import { ReferenceRouter, buildDispatch, histogram, type Alternative, type RefRouting, type TokenRef } from './reference';

export interface NativeRouting {
  tokens: number;
  topK: number;
  experts: Int32Array;
  weights: Float32Array;
  expertsPerToken: Int32Array;
  expertCounts: Int32Array;
  dispatch?: { offsets: Int32Array; slots: Int32Array };
  auxLoss?: number;
  zLoss?: number;
  entropy?: number;
  flopReduction: number;
  droppedAssignments: number;
  invalidTokens: Int32Array;
}

/** Copy everything out of a native Routing (the pool may reuse its buffers after release()). */
export function snapshot(r: any): NativeRouting {
  const cp = <T extends ArrayLike<number>>(a: T): T => (a ? ((a as any).slice() as T) : a);
  return {
    tokens: r.tokens,
    topK: r.topK,
    experts: cp(r.experts),
    weights: cp(r.weights),
    expertsPerToken: cp(r.expertsPerToken),
    expertCounts: cp(r.expertCounts),
    dispatch: r.dispatch ? { offsets: cp(r.dispatch.offsets), slots: cp(r.dispatch.slots) } : undefined,
    auxLoss: r.auxLoss,
    zLoss: r.zLoss,
    entropy: r.entropy,
    flopReduction: r.flopReduction,
    droppedAssignments: r.droppedAssignments,
    invalidTokens: r.invalidTokens ? cp(r.invalidTokens) : new Int32Array(0),
  };
}

const fmt = (v: number) => (Number.isInteger(v) ? String(v) : v.toPrecision(9));
const fmtArr = (a: ArrayLike<number>, max = 24) =>
  '[' + Array.from(a).slice(0, max).map(fmt).join(', ') + (a.length > max ? ', …' : '') + ']';

function tokenContext(tok: TokenRef, nat: NativeRouting, ref: RefRouting, t: number): string {
  const K = ref.topK;
  const E = tok.u.length;
  const a0 = tok.alts ? tok.alts[0] : null;
  const lines = [
    `  native experts ${fmtArr(nat.experts.subarray(t * K, (t + 1) * K))} k=${nat.expertsPerToken[t]}`,
    `  native weights ${fmtArr(nat.weights.subarray(t * K, (t + 1) * K))}`,
    `  ref    experts ${fmtArr(ref.experts.subarray(t * K, (t + 1) * K))} k=${tok.k} range=[${tok.kLo},${tok.kHi}] ambiguous=${tok.ambiguous} alts=${tok.alts ? tok.alts.length : 'loose'}`,
    `  ref    weights ${fmtArr(ref.weights.subarray(t * K, (t + 1) * K))}`,
    `  ref candidates ${a0 ? fmtArr(a0.cand, Math.min(E, K + 2)) : '-'}`,
  ];
  if (E <= 32) {
    lines.push(`  u    ${fmtArr(tok.u, 32)}`, `  s    ${fmtArr(tok.s, 32)}`);
    if (a0) lines.push(`  keys ${fmtArr(a0.keys, 32)}`);
  }
  lines.push(`  tieTol=${tok.tieTol.toExponential(3)} wRel=${tok.wRel.toExponential(3)} valid=${tok.valid}`);
  return lines.join('\n');
}

function close(a: number, b: number, rel: number, abs: number): boolean {
  if (Number.isNaN(a) || Number.isNaN(b)) return false;
  if (a === b) return true;
  return Math.abs(a - b) <= Math.max(rel * Math.max(Math.abs(a), Math.abs(b)), abs);
}

const same = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
};

/**
 * Returns null when `nat` agrees with `ref`, else a description of the first mismatch.
 * `router` is the ReferenceRouter that produced `ref` (its options and current topP/threshold).
 */
export function compareRouting(
  nat: NativeRouting,
  ref: RefRouting,
  router: ReferenceRouter,
  ctx: string,
): string | null {
  const o = router.opt;
  const { E, K, kmin } = o;
  const T = ref.tokens;
  const det = ref.detail;
  const specRel = det.specRel;
  const wAbs = (det.dtype === 'f32' ? 1e-6 : 1e-4) * Math.max(1, Math.abs(o.scale));
  const ec = o.strategy === 'expert-choice';
  const capOn = !ec && o.capacityFactor > 0;
  const fail = (msg: string) => `${ctx}: ${msg}`;

  if (nat.tokens !== T) return fail(`tokens ${nat.tokens}, expected ${T}`);
  if (nat.topK !== K) return fail(`topK ${nat.topK}, expected ${K}`);
  if (nat.experts.length !== T * K) return fail(`experts.length ${nat.experts.length}, expected ${T * K}`);
  if (nat.weights.length !== T * K) return fail(`weights.length ${nat.weights.length}, expected ${T * K}`);
  if (nat.expertsPerToken.length !== T) return fail(`expertsPerToken.length ${nat.expertsPerToken.length}, expected ${T}`);
  if (nat.expertCounts.length !== E) return fail(`expertCounts.length ${nat.expertCounts.length}, expected ${E}`);
  if (!same(nat.invalidTokens, ref.invalidTokens))
    return fail(`invalidTokens ${fmtArr(nat.invalidTokens)}, expected ${fmtArr(ref.invalidTokens)}`);

  const exact = det.exact;
  let sumK = 0;
  for (let t = 0; t < T; t++) {
    const tok = det.perToken[t];
    const k = nat.expertsPerToken[t];
    const row = nat.experts.subarray(t * K, (t + 1) * K);
    const wrow = nat.weights.subarray(t * K, (t + 1) * K);
    const where = (j?: number) => `token ${t}${j === undefined ? '' : ` slot ${j}`}`;
    const ctxT = () => '\n' + tokenContext(tok, nat, ref, t);
    sumK += k;
    if (!(k >= 0 && k <= K)) return fail(`${where()}: expertsPerToken ${k} outside [0, ${K}]` + ctxT());
    // structure
    const seen = new Set<number>();
    for (let j = 0; j < K; j++) {
      const e = row[j];
      if (j >= k) {
        if (e !== -1 || wrow[j] !== 0)
          return fail(`${where(j)}: unused slot (k_t=${k}) holds expert ${e} weight ${wrow[j]}, expected -1 / 0` + ctxT());
        continue;
      }
      if (e === -1) {
        if (!capOn) return fail(`${where(j)}: expert -1 inside k_t=${k} without capacity` + ctxT());
        if (wrow[j] !== 0) return fail(`${where(j)}: dropped slot has weight ${wrow[j]}` + ctxT());
        continue;
      }
      if (!(e >= 0 && e < E)) return fail(`${where(j)}: expert ${e} out of range` + ctxT());
      if (seen.has(e)) return fail(`${where(j)}: expert ${e} repeated` + ctxT());
      seen.add(e);
    }
    // k_t and experts
    if (exact) {
      if (k !== ref.expertsPerToken[t])
        return fail(`${where()}: expertsPerToken ${k}, expected ${ref.expertsPerToken[t]}` + ctxT());
      for (let j = 0; j < K; j++)
        if (row[j] !== ref.experts[t * K + j])
          return fail(`${where(j)}: expert ${row[j]}, expected ${ref.experts[t * K + j]}` + ctxT());
    } else if (ec) {
      const keys = tok.alts![0].keys;
      let prev = -1;
      for (let j = 0; j < k; j++) {
        const e = row[j];
        if (e < 0) return fail(`${where(j)}: expert-choice slot inside k_t is empty` + ctxT());
        if (prev >= 0 && !(keys[prev] >= keys[e] - tok.tieTol))
          return fail(`${where(j)}: expert-choice slots not in key order (${prev} then ${e})` + ctxT());
        prev = e;
      }
      if (!tok.ambiguous && !det.ecChoiceAmbiguous) {
        if (k !== tok.k) return fail(`${where()}: expertsPerToken ${k}, expected ${tok.k}` + ctxT());
        for (let j = 0; j < K; j++)
          if (row[j] !== ref.experts[t * K + j])
            return fail(`${where(j)}: expert ${row[j]}, expected ${ref.experts[t * K + j]}` + ctxT());
      }
    } else if (tok.alts === null) {
      if (o.strategy !== 'top-k' && !(k >= kmin && k <= K))
        return fail(`${where()}: expertsPerToken ${k} outside [${kmin}, ${K}]` + ctxT());
      if (o.strategy === 'top-k' && k !== K) return fail(`${where()}: expertsPerToken ${k}, expected ${K}` + ctxT());
    } else {
      let why = '';
      let ok = false;
      for (let ai = 0; ai < tok.alts.length && !ok; ai++) {
        const a: Alternative = tok.alts[ai];
        // k_t
        let kOk = k >= a.kLo && k <= a.kHi;
        if (!tok.ambiguous) kOk = k === a.k;
        else if (!kOk && o.strategy === 'top-p') kOk = topPConsistent(router, tok, a, row, k);
        if (!kOk) {
          why ||= `expertsPerToken ${k}, expected ${tok.ambiguous ? `in [${a.kLo}, ${a.kHi}]` : a.k}`;
          continue;
        }
        // experts, slot by slot
        let slotOk = true;
        for (let j = 0; j < k && slotOk; j++) {
          const e = row[j];
          if (e < 0) continue; // dropped by capacity (checked below for consistency)
          const c = a.cand[j];
          if (e === c) continue;
          if (!tok.ambiguous || !nearTieKeys(a.keys[e], a.keys[c], tok.tieTol)) {
            why ||= `slot ${j}: expert ${e} (key ${fmt(a.keys[e])}), expected ${c} (key ${fmt(a.keys[c])}), not a near-tie (tol ${tok.tieTol.toExponential(3)})`;
            slotOk = false;
          }
        }
        ok = slotOk;
      }
      if (!ok) return fail(`${where()}: ${why}` + ctxT());
    }
    // weights, recomputed for the native selection
    const w = router.weightsFor(tok, row, k);
    for (let j = 0; j < K; j++) {
      if (!close(wrow[j], w[j], tok.wRel, wAbs))
        return fail(`${where(j)}: weight ${fmt(wrow[j])}, expected ${fmt(w[j])} (rel tol ${tok.wRel.toExponential(3)})` + ctxT());
    }
  }

  // counts and drops, consistent with the native experts
  const counts = histogram(nat.experts, E);
  if (!same(nat.expertCounts, counts))
    return fail(`expertCounts ${fmtArr(nat.expertCounts)} is not the histogram of the returned experts ${fmtArr(counts)}`);
  let survivors = 0;
  for (let e = 0; e < E; e++) survivors += counts[e];
  const expectDropped = ec ? E * det.capacity - sumK : sumK - survivors;
  if (nat.droppedAssignments !== expectDropped)
    return fail(`droppedAssignments ${nat.droppedAssignments}, expected ${expectDropped} from the returned experts`);
  if (!capOn && !ec && expectDropped !== 0) return fail(`dropped assignments without capacity`);
  if (det.capacity >= 0)
    for (let e = 0; e < E; e++)
      if (counts[e] > det.capacity) return fail(`expert ${e} has ${counts[e]} assignments, capacity ${det.capacity}`);
  // Capacity decisions, checked against the native survivors where the reference knows which expert a
  // dropped slot held (tokens with no near-tie): an expert drops only when full, and drops the latest
  // tokens (position) or the lowest scores (score).
  if (capOn && !exact) {
    const droppedBy: number[][] = Array.from({ length: E }, () => []);
    const survivors: number[][] = Array.from({ length: E }, () => []);
    for (let t = 0; t < T; t++) {
      const tok = det.perToken[t];
      for (let j = 0; j < nat.expertsPerToken[t]; j++) {
        const e = nat.experts[t * K + j];
        if (e >= 0) survivors[e].push(t);
        else if (!tok.ambiguous && tok.alts && tok.alts.length === 1) droppedBy[det.preExperts[t * K + j]].push(t);
      }
    }
    for (let e = 0; e < E; e++) {
      if (droppedBy[e].length === 0) continue;
      if (survivors[e].length < det.capacity)
        return fail(`expert ${e} dropped token ${droppedBy[e][0]} with ${survivors[e].length} < capacity ${det.capacity} assignments`);
      for (const td of droppedBy[e]) {
        for (const ts of survivors[e]) {
          if (o.dropPolicy === 'position' && ts > td)
            return fail(`expert ${e} (position policy) dropped token ${td} but kept the later token ${ts}`);
          if (o.dropPolicy === 'score') {
            const sd = det.perToken[td].s[e];
            const ss = det.perToken[ts].s[e];
            const tol = specRel * Math.max(sd, ss) + det.perToken[td].sErr + det.perToken[ts].sErr;
            if (sd > ss + tol)
              return fail(`expert ${e} (score policy) dropped token ${td} (s=${fmt(sd)}) but kept token ${ts} (s=${fmt(ss)})`);
          }
        }
      }
    }
  }
  if (exact) {
    if (!same(nat.expertCounts, ref.expertCounts))
      return fail(`expertCounts ${fmtArr(nat.expertCounts)}, expected ${fmtArr(ref.expertCounts)}`);
    if (nat.droppedAssignments !== ref.droppedAssignments)
      return fail(`droppedAssignments ${nat.droppedAssignments}, expected ${ref.droppedAssignments}`);
  }

  // dispatch
  if (o.dispatch) {
    if (!nat.dispatch) return fail('dispatch missing');
    const d = buildDispatch(nat.experts, T, K, E, o.blockSize);
    if (!same(nat.dispatch.offsets, d.offsets))
      return fail(`dispatch.offsets ${fmtArr(nat.dispatch.offsets)}, expected ${fmtArr(d.offsets)}`);
    if (!same(nat.dispatch.slots, d.slots)) {
      let i = 0;
      while (i < d.slots.length && nat.dispatch.slots[i] === d.slots[i]) i++;
      return fail(
        `dispatch.slots differ at ${i}: ${nat.dispatch.slots[i]} vs ${d.slots[i]} (length ${nat.dispatch.slots.length} vs ${d.slots.length})`,
      );
    }
  }

  // flopReduction
  const fr = T === 0 ? 0 : 1 - sumK / (T * K);
  if (!(Math.abs(nat.flopReduction - fr) <= 1e-9))
    return fail(`flopReduction ${nat.flopReduction}, expected ${fr}`);

  // losses
  if (o.losses) {
    for (const name of ['auxLoss', 'zLoss', 'entropy'] as const)
      if (typeof nat[name] !== 'number') return fail(`${name} missing`);
    const le = det.lossErr;
    const absFloor = det.dtype === 'f32' ? 1e-6 : 1e-4;
    if (!close(nat.zLoss!, ref.zLoss!, specRel, absFloor + le.zAbs))
      return fail(`zLoss ${fmt(nat.zLoss!)}, expected ${fmt(ref.zLoss!)}`);
    if (!close(nat.entropy!, ref.entropy!, specRel, absFloor + le.entAbs))
      return fail(`entropy ${fmt(nat.entropy!)}, expected ${fmt(ref.entropy!)}`);
    // auxLoss needs the pre-capacity counts over valid tokens
    let lc: Int32Array | null = null;
    if (exact) lc = det.lossCounts;
    else if (ec) {
      lc = new Int32Array(E);
      for (let t = 0; t < T; t++)
        if (det.perToken[t].valid)
          for (let j = 0; j < nat.expertsPerToken[t]; j++) lc[nat.experts[t * K + j]]++;
    } else {
      lc = new Int32Array(E);
      for (let t = 0; t < T && lc; t++) {
        const tok = det.perToken[t];
        if (!tok.valid) continue;
        for (let j = 0; j < nat.expertsPerToken[t]; j++) {
          let e = nat.experts[t * K + j];
          if (e < 0) {
            if (tok.ambiguous) {
              lc = null;
              break;
            }
            e = det.preExperts[t * K + j];
          }
          lc[e]++;
        }
      }
    }
    if (lc) {
      const V = det.perToken.filter((x) => x.valid).length;
      let aux = 0;
      if (V > 0) {
        const P = new Float64Array(E);
        for (const tk of det.perToken) if (tk.valid) for (let e = 0; e < E; e++) P[e] += tk.p[e] / V;
        let cs = 0;
        for (let e = 0; e < E; e++) cs += lc[e];
        if (cs > 0) for (let e = 0; e < E; e++) aux += (lc[e] / cs) * P[e];
        aux *= E;
      }
      if (!close(nat.auxLoss!, aux, specRel + le.auxRel, absFloor))
        return fail(`auxLoss ${fmt(nat.auxLoss!)}, expected ${fmt(aux)}`);
    }
  }
  return null;
}

function nearTieKeys(a: number, b: number, tol: number): boolean {
  if (a === b) return true; // includes −∞ vs −∞ (exact ties resolve by index; accepted as a tie)
  return Number.isFinite(a) && Number.isFinite(b) && Math.abs(a - b) <= tol;
}

/**
 * top-p k_t consistent with the native order: k is the smallest with cumulative s ≥ topP (± margin),
 * clamped to [kmin, K]. Dropped slots (−1) take the reference candidate at that position.
 */
function topPConsistent(
  router: ReferenceRouter,
  tok: TokenRef,
  a: { cand: Int32Array },
  row: ArrayLike<number>,
  k: number,
): boolean {
  const { K, kmin } = router.opt;
  if (k < kmin || k > K) return false;
  const P = router.topP;
  const d = tok.pMargin;
  const cum = (n: number) => {
    let c = 0;
    for (let j = 0; j < n; j++) c += tok.s[row[j] >= 0 ? row[j] : a.cand[j]];
    return c;
  };
  const firstOk = k === kmin || cum(k - 1) < P + d;
  const secondOk = k === K || cum(k) >= P - d;
  return firstOk && secondOk;
}
