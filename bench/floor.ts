/**
 * The machine floor of a workload and the targets of issue 3.
 * floor = max(FLOPs / GEMM ceiling, bytes moved / read bandwidth), both ceilings measured in the same
 * run. FLOPs are the gate GEMM's 2·T·D·E (0 for logits workloads; softmax, selection and losses are
 * not counted). Bytes are the input read at its dtype, the f32 gate W, and the outputs the router
 * writes: experts and weights (T·k · 4 B each), experts per token (T · 4 B), expert counts (E · 4 B).
 */
import { DTYPE_BYTES, inputWidth, type Workload } from '../src/bench';
import type { DType } from '../src/tensor';

export interface Ceilings {
  /** FP32 square GEMM, GFLOP/s. */
  gflops: number;
  /** Memory read bandwidth, GB/s (10^9 bytes). */
  gbps: number;
}

export interface Cost {
  flops: number;
  bytes: number;
}

export function workloadCost(workload: Workload, dtype: DType): Cost {
  const { tokens: T, experts: E, topK: k, hidden: D } = workload;
  const input = T * inputWidth(workload) * DTYPE_BYTES[dtype];
  const gate = D === null ? 0 : E * D * 4;
  const outputs = T * k * 8 + T * 4 + E * 4;
  return { flops: D === null ? 0 : 2 * T * D * E, bytes: input + gate + outputs };
}

export interface Floor {
  ms: number;
  bound: 'compute' | 'memory';
}

export function floorOf(cost: Cost, ceilings: Ceilings): Floor {
  const computeMs = cost.flops / (ceilings.gflops * 1e9) * 1e3;
  const memoryMs = cost.bytes / (ceilings.gbps * 1e9) * 1e3;
  return computeMs > memoryMs ? { ms: computeMs, bound: 'compute' } : { ms: memoryMs, bound: 'memory' };
}

export interface Target {
  /** ours / best anchor (for bf16 rows: the best f32 anchor). */
  anchor: number;
  /** ours / floor. */
  floor: number;
}

/** Issue 3's targets by `workload:dtype`; rows without one are reported without a mark. */
export const TARGETS: Readonly<Record<string, Target>> = {
  'decode-olmoe:f32': { anchor: 0.25, floor: 1.25 },
  'mixtral-prefill:f32': { anchor: 0.5, floor: 1.25 },
  'olmoe-prefill:f32': { anchor: 0.75, floor: 1.25 },
  'qwen3-prefill:f32': { anchor: 1.0, floor: 1.25 },
  'dsv3-prefill:f32': { anchor: 1.0, floor: 1.25 },
  'logits-64x8:f32': { anchor: 0.1, floor: 1.25 },
  'logits-256x8:f32': { anchor: 0.1, floor: 1.25 },
  'logits-8x2:f32': { anchor: 0.1, floor: 1.25 },
  'mixtral-prefill:bf16': { anchor: 0.35, floor: 1.25 },
};
