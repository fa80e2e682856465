// moe_hash128, the cache's content hash: every byte, the length and only the view's bytes count.
import { describe, expect, it } from 'vitest';
import { loadNative } from '../src/native';
import { uniformGenerator } from '../src/random';

const { hash128 } = loadNative();

// moe_hash128 written again in BigInt arithmetic from its definition (native/src/core/hash.cc): 16
// lanes of rotl(lane + word * P2, 31) * P1 over the little-endian 64-bit words of 128-byte stripes,
// the words after the last stripe round-robin into lanes 0.., a zero-padded tail word ^ P4 into lane
// 15, then the length and every lane folded into two mixed words. Whichever clone of the stripe loop
// the CPU picks (x86-64-v4, v3, baseline) must give exactly this.
const M64 = (1n << 64n) - 1n;
const P1 = 0x9e3779b185ebca87n, P2 = 0xc2b2ae3d27d4eb4fn, P3 = 0x165667b19e3779f9n, P4 = 0x85ebca77c2b2ae63n;
const rotl = (x: bigint, r: number) => ((x << BigInt(r)) | (x >> BigInt(64 - r))) & M64;
const round = (lane: bigint, word: bigint) => (rotl((lane + word * P2) & M64, 31) * P1) & M64;
const mix = (x: bigint) => {
  x ^= x >> 33n;
  x = (x * 0xff51afd7ed558ccdn) & M64;
  x ^= x >> 33n;
  x = (x * 0xc4ceb9fe1a85ec53n) & M64;
  return x ^ (x >> 33n);
};
function referenceHash(bytes: Uint8Array): string {
  const word = (at: number, n = 8) => {
    let w = 0n;
    for (let i = n - 1; i >= 0; i--) w = (w << 8n) | BigInt(bytes[at + i]!);
    return w;
  };
  const lane = Array.from({ length: 16 }, (_, l) => (P1 * BigInt(l + 1) + P2) & M64);
  let i = 0;
  for (; i + 128 <= bytes.length; i += 128) for (let l = 0; l < 16; l++) lane[l] = round(lane[l]!, word(i + 8 * l));
  for (let l = 0; i + 8 <= bytes.length; i += 8, l++) lane[l] = round(lane[l]!, word(i));
  if (i < bytes.length) lane[15] = round(lane[15]!, word(i, bytes.length - i) ^ P4);
  const length = BigInt(bytes.length);
  let a = (length * P3) & M64, b = (length * P4) & M64;
  for (let l = 0; l < 16; l++) {
    a = rotl(a, 23) ^ mix((lane[l]! + BigInt(l)) & M64);
    b = (b * P1 + rotl(lane[l]!, 1 + 4 * l)) & M64;
  }
  const out0 = mix(a);
  const out1 = mix((b + out0) & M64);
  return out0.toString(16).padStart(16, '0') + out1.toString(16).padStart(16, '0');
}

describe('hash128', () => {
  it('is the function its definition gives, at every length around the stripe and word sizes', () => {
    const uniform = uniformGenerator(11);
    for (const bytes of [0, 1, 7, 8, 9, 120, 127, 128, 129, 135, 136, 255, 256, 257, 1000, 4096 + 77]) {
      const data = Uint8Array.from({ length: bytes }, () => Math.floor(uniform() * 256));
      expect(hash128(data), `${bytes} bytes`).toBe(referenceHash(data));
    }
  });

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

  it('puts a key prefix in front, reads every element size and refuses what it cannot hash', () => {
    const data = Float64Array.from({ length: 33 }, (_, i) => Math.cos(i));
    expect(hash128(data, 'h:f32:8:0:1:')).toBe(`h:f32:8:0:1:${hash128(data)}`);
    expect(hash128(data, '')).toBe(hash128(data));
    const bytes = new Uint8Array(data.buffer);
    for (const view of [data, new Int16Array(data.buffer), new BigInt64Array(data.buffer), new Float32Array(data.buffer)]) {
      expect(hash128(view)).toBe(referenceHash(bytes));
    }
    expect(() => hash128({} as Uint8Array)).toThrow(expect.objectContaining({ code: 'E_DTYPE' }));
    expect(() => hash128(data, 'x'.repeat(200))).toThrow(/prefix/);
    expect(hash128(data, 'x'.repeat(199))).toHaveLength(199 + 32);
  });

  it('makes one key per row when asked for rows, each the key of that row alone', () => {
    const data = Uint16Array.from({ length: 5 * 24 }, (_, i) => (i * 7919) & 0xffff);
    const rows = hash128(data, 't:', 5);
    expect(rows).toEqual([0, 1, 2, 3, 4].map((r) => hash128(data.subarray(r * 24, (r + 1) * 24), 't:')));
    expect(new Set(rows).size).toBe(5);
    expect(hash128(new Float32Array(0), 't:', 0)).toEqual([]);
    for (const bad of [7, 0, -1, 2.5, Number.NaN]) {
      expect(() => hash128(data, 't:', bad), String(bad)).toThrow(expect.objectContaining({ code: 'E_SHAPE' }));
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
