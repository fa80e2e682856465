/** Small seeded generators for reproducible gates and demo data (not for cryptography). */
import { allocate } from './errors';

/** mulberry32: a fast 32-bit generator; returns floats in [0, 1). */
export function uniformGenerator(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Standard normal draws (Box–Muller) from a seeded uniform generator. */
export function normalGenerator(seed: number): () => number {
  const uniform = uniformGenerator(seed);
  return () => {
    const a = uniform() || Number.MIN_VALUE;
    return Math.sqrt(-2 * Math.log(a)) * Math.cos(2 * Math.PI * uniform());
  };
}

/** A gate weight [experts, dim] with N(0, 1/dim) entries, the scale nn.Linear's init gives. */
export function randomGate(experts: number, dim: number, seed: number): Float32Array {
  const normal = normalGenerator(seed);
  const scale = 1 / Math.sqrt(dim);
  const gate = allocate(Float32Array, experts * dim, `a gate of [${experts}, ${dim}]`);
  for (let i = 0; i < gate.length; i++) gate[i] = normal() * scale;
  return gate;
}
