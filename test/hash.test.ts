// moe_hash128, the cache's content hash: every byte, the length and only the view's bytes count.
import { describe, expect, it } from 'vitest';
import { loadNative } from '../src/native';
import { uniformGenerator } from '../src/random';

const { hash128 } = loadNative();

describe('hash128', () => {
  it('is deterministic and 128 bits of hex', () => {
    const data = Float32Array.from({ length: 1000 }, (_, i) => Math.sin(i));
    expect(hash128(data)).toMatch(/^[0-9a-f]{32}$/);
    expect(hash128(data)).toBe(hash128(Float32Array.from(data)));
  });

  it('changes when any single bit of the input flips, at every length around the block size', () => {
    const uniform = uniformGenerator(3);
    for (const bytes of [0, 1, 7, 8, 9, 31, 32, 33, 63, 64, 65, 100, 257]) {
      const data = Uint8Array.from({ length: bytes }, () => Math.floor(uniform() * 256));
      const seen = new Set([hash128(data)]);
      for (let bit = 0; bit < bytes * 8; bit++) {
        data[bit >> 3]! ^= 1 << (bit & 7);
        seen.add(hash128(data));
        data[bit >> 3]! ^= 1 << (bit & 7);
      }
      expect(seen.size).toBe(bytes * 8 + 1);
    }
  });

  it('tells lengths apart even when the extra bytes are zero', () => {
    const digests = new Set(Array.from({ length: 70 }, (_, n) => hash128(new Uint8Array(n))));
    expect(digests.size).toBe(70);
  });

  it('hashes only the bytes of a view, at its byteOffset', () => {
    const data = Uint8Array.from({ length: 96 }, (_, i) => (i * 37) & 255);
    const backing = new Uint8Array(200).fill(9);
    backing.set(data, 51);
    expect(hash128(backing.subarray(51, 51 + 96))).toBe(hash128(data));
  });

  it('flips about half of the output bits for a one-bit change', () => {
    const data = new Uint8Array(4096);
    const base = BigInt(`0x${hash128(data)}`);
    let flipped = 0;
    const trials = 256;
    for (let t = 0; t < trials; t++) {
      const bit = (t * 127) % (4096 * 8);
      data[bit >> 3]! ^= 1 << (bit & 7);
      flipped += (BigInt(`0x${hash128(data)}`) ^ base).toString(2).replace(/0/g, '').length;
      data[bit >> 3]! ^= 1 << (bit & 7);
    }
    const mean = flipped / trials;
    expect(mean).toBeGreaterThan(60);
    expect(mean).toBeLessThan(68);
  });
});
