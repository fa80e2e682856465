/**
 * The router surface that the cache, the monitor and the GPU→CPU breaker wrap and themselves offer,
 * so that they stack: MonitoredRouter → RoutingCache → FailoverRouter → DynamicRouter.
 */
import { EventEmitter } from 'node:events';
import type { CalibrateOptions, CalibrateResult, DynamicRouter, RouterStats } from './router';
import type { Dispatch } from './routing';
import type { Tensor } from './tensor';

export type RouteInput = Float32Array | Tensor;

/** What a route answers: a pooled `Routing`, or a cached copy (a request-mode hit's buffer is pooled by its cache too). */
export interface RoutingResult {
  readonly tokens: number;
  readonly topK: number;
  readonly experts: Int32Array;
  readonly weights: Float32Array;
  readonly expertsPerToken: Int32Array;
  readonly expertCounts: Int32Array;
  readonly dispatch?: Dispatch;
  readonly auxLoss?: number;
  readonly zLoss?: number;
  readonly entropy?: number;
  readonly flopReduction: number;
  readonly droppedAssignments: number;
  readonly invalidTokens: Int32Array;
  /**
   * The backend that computed it: a DynamicRouter's call names the one that ran it (after a CUDA call
   * fell back, the CPU one); a RoutingCache answer names the router's for the rows it routed, or
   * 'cache' when the cache answered every row.
   */
  readonly backend: string;
  release(): void;
}

export interface Routable {
  readonly inputDim: number;
  readonly numExperts: number;
  readonly topK: number;
  readonly options: DynamicRouter['options'];
  /** The backend serving now. */
  readonly backend: string;
  /** Changes whenever the same input could route differently (see DynamicRouter.configVersion). */
  readonly configVersion: number;
  /** True once dispose() ran on it or on a router it wraps: calls then throw E_DISPOSED. */
  readonly disposed: boolean;
  /** The top-p and threshold parameters in force. */
  readonly parameters: { topP: number; threshold: number };
  route(hidden: RouteInput): RoutingResult;
  routeLogits(logits: RouteInput): RoutingResult;
  routeAsync(hidden: RouteInput): Promise<RoutingResult>;
  routeLogitsAsync(logits: RouteInput): Promise<RoutingResult>;
  calibrate(sample: RouteInput, options: CalibrateOptions): CalibrateResult;
  updateBias(counts: Int32Array): void;
  stats(): RouterStats;
  resetStats(): void;
  dispose(): void;
}

/**
 * Base of the wrappers (cache, monitor, breaker): a router's shape (dimensions, options) never changes,
 * so it is read from the router whose shape the wrapper has, and so is whether it was disposed.
 */
export abstract class RouterWrapper extends EventEmitter {
  protected readonly shaped: Routable;

  protected constructor(shaped: Routable) {
    super();
    this.shaped = shaped;
  }

  get inputDim(): number {
    return this.shaped.inputDim;
  }

  get numExperts(): number {
    return this.shaped.numExperts;
  }

  get topK(): number {
    return this.shaped.topK;
  }

  get options(): Routable['options'] {
    return this.shaped.options;
  }

  /** The wrapped router's (a wrapper holds nothing a call could still use once it is gone). */
  get disposed(): boolean {
    return this.shaped.disposed;
  }
}
