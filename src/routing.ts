/** The result of one route: views over buffers from the router's pool. */
import type { BufferPool } from './pool';

const EMPTY = new Int32Array(0);

export interface Dispatch {
  /** [numExperts + 1] start of each expert's segment in `slots`. */
  offsets: Int32Array;
  /** Flat slot indices t*topK + j grouped by expert, ascending token; padding = tokens*topK. */
  slots: Int32Array;
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

  private pool: BufferPool | undefined;
  private readonly owned: (Int32Array | Float32Array)[];

  /** @internal Built by DynamicRouter. */
  constructor(fields: {
    tokens: number;
    topK: number;
    experts: Int32Array;
    weights: Float32Array;
    expertsPerToken: Int32Array;
    expertCounts: Int32Array;
    invalidBuffer: Int32Array;
    invalidCount: number;
    dispatchOffsets: Int32Array | null;
    dispatchSlots: Int32Array | null;
    dispatchLength: number;
    losses: { auxLoss: number; zLoss: number; entropy: number } | null;
    flopReduction: number;
    droppedAssignments: number;
    pool: BufferPool;
  }) {
    this.tokens = fields.tokens;
    this.topK = fields.topK;
    this.experts = fields.experts;
    this.weights = fields.weights;
    this.expertsPerToken = fields.expertsPerToken;
    this.expertCounts = fields.expertCounts;
    this.invalidTokens = fields.invalidCount > 0 ? fields.invalidBuffer.subarray(0, fields.invalidCount) : EMPTY;
    if (fields.dispatchOffsets && fields.dispatchSlots) {
      this.dispatch = {
        offsets: fields.dispatchOffsets,
        slots: fields.dispatchSlots.subarray(0, fields.dispatchLength),
      };
    }
    if (fields.losses) {
      this.auxLoss = fields.losses.auxLoss;
      this.zLoss = fields.losses.zLoss;
      this.entropy = fields.losses.entropy;
    }
    this.flopReduction = fields.flopReduction;
    this.droppedAssignments = fields.droppedAssignments;
    this.pool = fields.pool;
    this.owned = [fields.experts, fields.weights, fields.expertsPerToken, fields.expertCounts, fields.invalidBuffer];
    if (fields.dispatchOffsets) this.owned.push(fields.dispatchOffsets);
    if (fields.dispatchSlots) this.owned.push(fields.dispatchSlots);
  }

  /** Hands the buffers back to the pool; the arrays of this result must not be used afterwards. */
  release(): void {
    const pool = this.pool;
    if (!pool) return;
    this.pool = undefined;
    for (const array of this.owned) pool.release(array);
  }
}
