/**
 * The onnxruntime-node anchor: the routing of a workload as a standard ONNX graph, the way a Node
 * user would express it today, run on the CPU execution provider.
 */
import * as ort from 'onnxruntime-node';
import type { Workload } from '../src/bench';
import { encodeModel, type Graph, type GraphNode, type Initializer } from './onnx-graph';

const int64 = (name: string, ...values: number[]): Initializer => ({
  name,
  dims: [values.length],
  data: BigInt64Array.from(values, BigInt),
});

/** probs [T, E] → TopK → weights = values / Σ values: the nodes shared by both graphs. */
function selectNodes(k: number): { nodes: GraphNode[]; initializers: Initializer[] } {
  return {
    nodes: [
      { op: 'TopK', inputs: ['probs', 'k'], outputs: ['values', 'indices'], attributes: { axis: -1 } },
      { op: 'ReduceSum', inputs: ['values', 'last_axis'], outputs: ['total'], attributes: { keepdims: 1 } },
      { op: 'Div', inputs: ['values', 'total'], outputs: ['weights'] },
    ],
    initializers: [int64('k', k), int64('last_axis', -1)],
  };
}

/**
 * Gate workload: weights, indices and the Switch aux loss E · Σ_e f_e · P_e from hidden [T, D] and
 * the gate W [E, D] (stored transposed for MatMul). f_e counts the probabilities at or above each
 * token's k-th largest, which equals the top-k counts when no two probabilities of a token tie.
 */
export function gateGraph(workload: Workload, weight: Float32Array): Graph {
  const { tokens: T, experts: E, topK: k } = workload;
  const D = workload.hidden!;
  const transposed = new Float32Array(D * E);
  for (let e = 0; e < E; e++) for (let d = 0; d < D; d++) transposed[d * E + e] = weight[e * D + d]!;
  const select = selectNodes(k);
  return {
    name: workload.name,
    nodes: [
      { op: 'MatMul', inputs: ['hidden', 'gate_t'], outputs: ['logits'] },
      { op: 'Softmax', inputs: ['logits'], outputs: ['probs'], attributes: { axis: -1 } },
      ...select.nodes,
      { op: 'Slice', inputs: ['values', 'kth', 'kth_end', 'second_axis'], outputs: ['kth_value'] },
      { op: 'GreaterOrEqual', inputs: ['probs', 'kth_value'], outputs: ['chosen'] },
      { op: 'Cast', inputs: ['chosen'], outputs: ['chosen_f'], attributes: { to: 1 } },
      { op: 'ReduceSum', inputs: ['chosen_f', 'first_axis'], outputs: ['counts'], attributes: { keepdims: 0 } },
      { op: 'ReduceMean', inputs: ['probs'], outputs: ['mean_probs'], attributes: { axes: [0], keepdims: 0 } },
      { op: 'Mul', inputs: ['counts', 'mean_probs'], outputs: ['products'] },
      { op: 'ReduceSum', inputs: ['products'], outputs: ['dot'], attributes: { keepdims: 0 } },
      { op: 'Mul', inputs: ['dot', 'aux_scale'], outputs: ['aux_loss'] },
    ],
    initializers: [
      { name: 'gate_t', dims: [D, E], data: transposed },
      ...select.initializers,
      int64('kth', k - 1),
      int64('kth_end', k),
      int64('second_axis', 1),
      int64('first_axis', 0),
      { name: 'aux_scale', dims: [], data: Float32Array.of(E / (T * k)) },
    ],
    inputs: [{ name: 'hidden', type: 'float', shape: [T, D] }],
    outputs: [
      { name: 'weights', type: 'float', shape: [T, k] },
      { name: 'indices', type: 'int64', shape: [T, k] },
      { name: 'aux_loss', type: 'float', shape: [] },
    ],
  };
}

/** Logits workload: softmax → top-k → renormalize from logits [T, E]. */
export function logitsGraph(workload: Workload): Graph {
  const { tokens: T, experts: E, topK: k } = workload;
  const select = selectNodes(k);
  return {
    name: workload.name,
    nodes: [{ op: 'Softmax', inputs: ['logits'], outputs: ['probs'], attributes: { axis: -1 } }, ...select.nodes],
    initializers: select.initializers,
    inputs: [{ name: 'logits', type: 'float', shape: [T, E] }],
    outputs: [
      { name: 'weights', type: 'float', shape: [T, k] },
      { name: 'indices', type: 'int64', shape: [T, k] },
    ],
  };
}

/** A CPU session on `threads` intra-op threads, all graph optimizations on. */
export function createSession(graph: Graph, threads: number): Promise<ort.InferenceSession> {
  return ort.InferenceSession.create(encodeModel(graph), {
    executionProviders: ['cpu'],
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
  });
}

/** Wraps f32 buffers (no copy) as the graph's input tensors. */
export function feeds(graph: Graph, buffers: readonly Float32Array[]): Record<string, ort.Tensor>[] {
  const input = graph.inputs[0]!;
  return buffers.map((data) => ({ [input.name]: new ort.Tensor('float32', data, input.shape as number[]) }));
}

export const ortVersion = (): string => ort.env.versions.node ?? 'unknown';
