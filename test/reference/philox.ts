// Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), written from
// the published description with exact 32-bit arithmetic, and the Box–Muller normal of
// docs/semantics.md §8. Independent of the native implementation.

const M0 = 0xd2511f53;
const M1 = 0xcd9e8d57;
const W0 = 0x9e3779b9;
const W1 = 0xbb67ae85;

/** Full 64-bit product of two unsigned 32-bit words, as [hi, lo] unsigned 32-bit words. */
export function mulhilo32(a: number, b: number): [number, number] {
  a >>>= 0;
  b >>>= 0;
  const aLo = a & 0xffff;
  const aHi = a >>> 16;
  const bLo = b & 0xffff;
  const bHi = b >>> 16;
  // Each partial product < 2^32, exact in a double.
  const ll = aLo * bLo;
  const lh = aLo * bHi;
  const hl = aHi * bLo;
  const hh = aHi * bHi;
  // Middle column: bits 16..  (sum < 3·2^32, exact)
  const mid = (ll >>> 16) + (lh & 0xffff) + (hl & 0xffff);
  const lo = (((mid & 0xffff) << 16) | (ll & 0xffff)) >>> 0;
  const hi = (hh + (lh >>> 16) + (hl >>> 16) + Math.floor(mid / 65536)) >>> 0;
  return [hi, lo];
}

/** Philox-4x32 with `rounds` rounds (10 for Philox-4x32-10). Counter and key are unsigned 32-bit words. */
export function philox4x32(
  counter: readonly [number, number, number, number],
  key: readonly [number, number],
  rounds = 10,
): [number, number, number, number] {
  let c0 = counter[0] >>> 0;
  let c1 = counter[1] >>> 0;
  let c2 = counter[2] >>> 0;
  let c3 = counter[3] >>> 0;
  let k0 = key[0] >>> 0;
  let k1 = key[1] >>> 0;
  for (let r = 0; r < rounds; r++) {
    if (r > 0) {
      k0 = (k0 + W0) >>> 0;
      k1 = (k1 + W1) >>> 0;
    }
    const [hi0, lo0] = mulhilo32(M0, c0);
    const [hi1, lo1] = mulhilo32(M1, c2);
    const n0 = (hi1 ^ c1 ^ k0) >>> 0;
    const n1 = lo1;
    const n2 = (hi0 ^ c3 ^ k1) >>> 0;
    const n3 = lo0;
    c0 = n0;
    c1 = n1;
    c2 = n2;
    c3 = n3;
  }
  return [c0, c1, c2, c3];
}

const TWO32 = 4294967296;

/** Split a non-negative integer (≤ 2^53) into [low 32 bits, high bits]. */
export function splitU64(v: number): [number, number] {
  const lo = v % TWO32;
  const hi = Math.floor(v / TWO32);
  return [lo >>> 0, hi >>> 0];
}

/**
 * The noise draw n(step, t, e) of docs/semantics.md §8, already rounded to f32.
 * key = (seed mod 2^32, floor(seed / 2^32)), counter = (e, t, step mod 2^32, floor(step / 2^32)).
 */
export function noiseNormal(seed: number, step: number, t: number, e: number): number {
  const [s0, s1] = splitU64(seed);
  const [p0, p1] = splitU64(step);
  const [r0, r1] = philox4x32([e, t, p0, p1], [s0, s1]);
  const a = (r0 + 0.5) / TWO32;
  const b = (r1 + 0.5) / TWO32;
  const n = Math.sqrt(-2 * Math.log(a)) * Math.cos(2 * Math.PI * b);
  return Math.fround(n);
}
