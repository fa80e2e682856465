/** The result of one route: views over one buffer from the router's pool. */
import { Layout, Scalar } from './addon-types';
import { BACKENDS } from './options';
import type { BufferPool } from './pool';

const EMPTY = new Int32Array(0);

export interface Dispatch {
  /** [numExperts + 1] start of each expert's segment in `slots`. */
  offsets: Int32Array;
  /** Flat slot indices t*topK + j grouped by expert, ascending token; padding = tokens*topK. */
  slots: Int32Array;
}

/**
 * @internal One route's outputs: the ArrayBuffer the engine writes every output into (the scalars as
 * doubles first), laid out by outputLayout(tokens), and the views over it, made once per buffer.
 */
export class RouteBuffers {
  readonly tokens: number;
  readonly buffer: ArrayBuffer;
  readonly scalars: Float64Array;
  readonly experts: Int32Array;
  readonly weights: Float32Array;
  readonly expertsPerToken: Int32Array;
  readonly expertCounts: Int32Array;
  readonly invalidTokens: Int32Array;
  readonly dispatchOffsets: Int32Array | null;
  readonly dispatchSlots: Int32Array | null;

  constructor(layout: readonly number[], tokens: number, topK: number, numExperts: number) {
    const buffer = new ArrayBuffer(layout[Layout.Bytes]!);
    const ints = (at: Layout, length: number) => new Int32Array(buffer, layout[at]!, length);
    this.tokens = tokens;
    this.buffer = buffer;
    this.scalars = new Float64Array(buffer, layout[Layout.Scalars]!, Scalar.Backend + 1);
    this.experts = ints(Layout.Experts, tokens * topK);
    this.weights = new Float32Array(buffer, layout[Layout.Weights]!, tokens * topK);
    this.expertsPerToken = ints(Layout.ExpertsPerToken, tokens);
    this.expertCounts = ints(Layout.ExpertCounts, numExperts);
    this.invalidTokens = ints(Layout.InvalidTokens, tokens);
    const hasDispatch = layout[Layout.DispatchOffsets]! >= 0;
    this.dispatchOffsets = hasDispatch ? ints(Layout.DispatchOffsets, numExperts + 1) : null;
    this.dispatchSlots = hasDispatch ? ints(Layout.DispatchSlots, layout[Layout.SlotCapacity]!) : null;
  }

  /**
   * Whether it may go back to a pool: not when its buffer was detached (an array of a result moved to
   * another thread by postMessage's transfer list takes the whole buffer), which every later route of
   * its size would otherwise be handed and refuse.
   */
  get reusable(): boolean {
    return this.buffer.byteLength > 0;
  }
}

export class Routing {
  readonly tokens: number;
  readonly topK: number;
  /** [tokens*topK] expert of each slot, -1 when unused or dropped. */
  readonly experts: Int32Array;
  /** [tokens*topK] weight of each slot, 0 when unused or dropped. */
  readonly weights: Float32Array;
  /** [tokens] experts the strategy chose for each token (before capacity). */
  readonly expertsPerToken: Int32Array;
  /** [numExperts] surviving assignments per expert. */
  readonly expertCounts: Int32Array;
  readonly dispatch?: Dispatch;
  readonly auxLoss?: number;
  readonly zLoss?: number;
  readonly entropy?: number;
  /** 1 - sum(k_t) / (tokens*topK): saving against static top-K. */
  readonly flopReduction: number;
  /** Assignments removed by capacity (or the expert-choice cap). */
  readonly droppedAssignments: number;
  /** Tokens with a non-finite logit that validation 'sanitize' routed anyway (ascending). */
  readonly invalidTokens: Int32Array;
  /** The backend that ran this call: after a CUDA call fell back, the CPU one. */
  readonly backend: string;

  // (#private: structuredClone and postMessage copy a result's own fields, and must not take the pool.)
  #pool: BufferPool<RouteBuffers> | undefined;
  readonly #buffers: RouteBuffers;

  /** @internal Built by DynamicRouter from the buffers a route just filled. */
  constructor(buffers: RouteBuffers, topK: number, withLosses: boolean, pool: BufferPool<RouteBuffers>) {
    const s = buffers.scalars;
    this.tokens = buffers.tokens;
    this.topK = topK;
    this.experts = buffers.experts;
    this.weights = buffers.weights;
    this.expertsPerToken = buffers.expertsPerToken;
    this.expertCounts = buffers.expertCounts;
    const invalidCount = s[Scalar.InvalidCount]!;
    this.invalidTokens = invalidCount > 0 ? buffers.invalidTokens.subarray(0, invalidCount) : EMPTY;
    if (buffers.dispatchOffsets && buffers.dispatchSlots) {
      this.dispatch = {
        offsets: buffers.dispatchOffsets,
        slots: buffers.dispatchSlots.subarray(0, s[Scalar.DispatchLength]!),
      };
    }
    if (withLosses) {
      this.auxLoss = s[Scalar.AuxLoss]!;
      this.zLoss = s[Scalar.ZLoss]!;
      this.entropy = s[Scalar.Entropy]!;
    }
    this.flopReduction = s[Scalar.FlopReduction]!;
    this.droppedAssignments = s[Scalar.Dropped]!;
    this.backend = BACKENDS[s[Scalar.Backend]!]!;
    this.#buffers = buffers;
    this.#pool = pool;
  }

  /** Hands the buffers back to the pool; the arrays of this result must not be used afterwards. */
  release(): void {
    const pool = this.#pool;
    if (!pool) return;
    this.#pool = undefined;
    pool.release(this.tokens, this.#buffers);
  }
}
