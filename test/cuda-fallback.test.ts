/**
 * The CUDA-enabled binary on a machine without a usable GPU: everything routes on the CPU, and asking
 * for CUDA explicitly is a clear E_BACKEND. CI builds the addon with CUDA (one architecture) and sets
 * MOE_ROUTER_EXPECT_CUDA=1 so that these tests fail if the binary under test lacks the CUDA backend.
 */
import { describe, expect, it } from 'vitest';
import { DynamicRouter, RouterError, Tensor } from '../src/index';
import { loadNative } from '../src/native';

const CUDA = 5; // moe_backend code
const addon = loadNative();
const compiled = addon.backendCompiled(CUDA);
const usable = addon.backendAvailable(CUDA);

function weights(E: number, D: number): Float32Array {
  return Float32Array.from({ length: E * D }, (_, i) => Math.sin(i * 0.37) * 0.2);
}

function errorOf(fn: () => unknown): RouterError {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(RouterError);
    return error as RouterError;
  }
  throw new Error('expected a RouterError, but nothing was thrown');
}

describe.skipIf(usable)('CUDA backend without a usable GPU', () => {
  const E = 16;
  const D = 32;
  const K = 4;
  const base = { inputDim: D, numExperts: E, topK: K, weight: weights(E, D) };

  it('has CUDA compiled in when CI says so', () => {
    if (process.env.MOE_ROUTER_EXPECT_CUDA === '1') expect(compiled).toBe(true);
  });

  it("routes on a CPU backend under device 'auto', with no fallback to report", () => {
    const router = new DynamicRouter({ ...base, losses: true, dispatch: { blockSize: 4 } });
    expect(['scalar', 'avx2', 'avx512', 'neon']).toContain(router.backend);
    expect(router.lastFallback).toBeNull();
    const T = 9;
    const hidden = Float32Array.from({ length: T * D }, (_, i) => Math.cos(i * 0.11));
    let fallbacks = 0;
    router.on('fallback', () => (fallbacks += 1));
    const routing = router.route(hidden);
    expect(fallbacks).toBe(0);
    const experts = routing.experts;
    const w = routing.weights;
    for (let t = 0; t < T; t += 1) {
      const chosen = new Set<number>();
      let sum = 0;
      for (let j = 0; j < K; j += 1) {
        const e = experts[t * K + j]!;
        expect(e).toBeGreaterThanOrEqual(0);
        expect(e).toBeLessThan(E);
        chosen.add(e);
        sum += w[t * K + j]!;
      }
      expect(chosen.size).toBe(K);
      expect(sum).toBeCloseTo(1, 5);
    }
    expect(routing.expertCounts.reduce((a, b) => a + b, 0)).toBe(T * K);
    expect(router.backend).not.toBe('cuda');
  });

  it("throws E_BACKEND for device 'cuda'", () => {
    const error = errorOf(() => new DynamicRouter({ ...base, device: 'cuda' }));
    expect(error.code).toBe('E_BACKEND');
    expect(error.message).toMatch(/cuda/i);
  });

  it("throws E_BACKEND for backend 'cuda'", () => {
    expect(errorOf(() => new DynamicRouter({ ...base, backend: 'cuda' })).code).toBe('E_BACKEND');
  });

  it("throws E_BACKEND for Tensor.to('cuda'), naming the reason", () => {
    const tensor = Tensor.from(new Float32Array(D), [1, D]);
    const error = errorOf(() => tensor.to('cuda'));
    expect(error.code).toBe('E_BACKEND');
    expect(error.message).toMatch(compiled ? /no usable CUDA device/ : /no CUDA backend/);
    expect(tensor.to('cpu')).toBe(tensor);
  });

  it('refuses native device buffers with E_BACKEND', () => {
    let code: unknown;
    try {
      new addon.DeviceBuffer(64);
    } catch (error) {
      code = (error as { code?: unknown }).code;
    }
    expect(code).toBe('E_BACKEND');
  });
});
