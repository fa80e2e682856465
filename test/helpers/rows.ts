// Inputs for tests: rows of standard normal values from a seed.
import { normalGenerator } from '../../src/random';

/** tokens × width standard normal values (hidden states or logits), the same for the same seed. */
export function randomRows(tokens: number, width: number, seed: number): Float32Array {
  const normal = normalGenerator(seed);
  return Float32Array.from({ length: tokens * width }, () => normal());
}
