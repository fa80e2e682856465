/** DynamicRouter: the public router over the native engine. */
import { EventEmitter } from 'node:events';
import type { NativeDeviceBuffer, NativeRouter } from './addon-types';
import { modelCard, type ModelCardOptions } from './card';
import { kindOf, native, optionNames, rejectUnknownOptions, RouterError, type ErrorCode } from './errors';
import { loadNative } from './native';
import { toNativeOptions, type RouterOptions } from './options';
import { BufferPool } from './pool';
import { RouteBuffers, Routing } from './routing';
import { DTYPE_CODE, Tensor } from './tensor';

export interface RouterStats {
  tokens: number;
  calls: number;
  meanExpertsPerToken: number;
  flopReduction: number;
  expertUtilization: Float64Array;
  /** Surviving assignments per expert. */
  expertAssignments: Float64Array;
  /** Tokens that got k = 0 … topK experts from the strategy, by k. */
  expertsPerTokenHistogram: Float64Array;
  loadBalanceScore: number;
  droppedAssignments: number;
}

export interface CalibrateOptions {
  /** The mean experts per token to reach, in [minExperts, topK]. */
  meanExperts: number;
  /** The sample holds gate logits [T, numExperts] instead of hidden states. */
  logits?: boolean;
}

const CALIBRATE_OPTIONS = optionNames<CalibrateOptions>({ meanExperts: true, logits: true });

export interface CalibrateResult {
  /** The parameter set: topP, threshold, or the norm strategy's centre. */
  parameter: number;
  /** The mean experts per token it gives on the sample. */
  meanExperts: number;
}

/** A call that ran on the CPU because its CUDA work failed (device and backend 'auto'). */
export interface FallbackInfo {
  /** The CPU backend that ran the call. */
  backend: string;
  /** The CUDA failure (code E_CUDA). */
  error: RouterError;
}

export interface RouterEvents {
  fallback: [info: FallbackInfo];
}

type Input = Float32Array | Tensor;

interface PreparedInput {
  data: Float32Array | Uint16Array;
  /** The GPU copy of a 'cuda' tensor. */
  device: NativeDeviceBuffer | null;
  dtype: number;
  tokens: number;
}

/** Reads a route input as rows of `width` values. */
function prepareInput(input: Input, width: number, name: string, widthName: string): PreparedInput {
  if (input instanceof Tensor) {
    const shape = input.shape;
    const ok = (shape.length === 2 && shape[1] === width) || (shape.length === 1 && shape[0] === width);
    if (!ok) {
      throw new RouterError('E_SHAPE', `${name} must have shape [tokens, ${width}] (${widthName}) (got [${shape.join(', ')}])`);
    }
    if (input.device === 'cuda' && !input.deviceBuffer) {
      throw new RouterError('E_DISPOSED', `${name} is a 'cuda' Tensor whose device copy was released`);
    }
    return {
      data: input.data,
      device: input.deviceBuffer,
      dtype: DTYPE_CODE[input.dtype],
      tokens: shape.length === 2 ? shape[0]! : 1,
    };
  }
  if (!(input instanceof Float32Array)) {
    throw new RouterError('E_DTYPE', `${name} must be a Float32Array or a Tensor (got ${kindOf(input)}); f16/bf16 data goes through Tensor.from(data, shape, { dtype })`);
  }
  if (input.length % width !== 0) {
    throw new RouterError('E_SHAPE', `${name} length must be a multiple of ${widthName} = ${width} (got ${input.length})`);
  }
  return { data: input, device: null, dtype: DTYPE_CODE.f32, tokens: input.length / width };
}

function float32Vector(value: Float32Array | undefined, length: number, name: string): Float32Array | null {
  if (value === undefined || value === null) return null;
  if (!(value instanceof Float32Array)) throw new RouterError('E_DTYPE', `${name} must be a Float32Array`);
  if (value.length !== length) throw new RouterError('E_SHAPE', `${name} must have ${length} elements (numExperts) (got ${value.length})`);
  return value;
}

/**
 * Emits 'fallback' (FallbackInfo) after a call that ran on the CPU because its CUDA work failed; only
 * routers with device and backend 'auto' fall back, the others throw E_CUDA.
 */
export class DynamicRouter extends EventEmitter<RouterEvents> {
  readonly inputDim: number;
  readonly numExperts: number;
  readonly topK: number;
  /** The options this router was built with (weights omitted). */
  readonly options: Readonly<Omit<RouterOptions, 'weight' | 'bias' | 'selectionBias'>>;

  private engine: NativeRouter | undefined;
  // (A result's buffer detached by a transfer to another thread is dropped: RouteBuffers.reusable.)
  private readonly pool = new BufferPool<RouteBuffers>(8, (buffers) => buffers.reusable);
  /** Makes a pool miss's buffers for T tokens (bound once: no closure per call). */
  private readonly makeBuffers = (tokens: number): RouteBuffers =>
    new RouteBuffers(this.live().outputLayout(tokens), tokens, this.topK, this.numExperts);
  private readonly wantsLosses: boolean;
  private readonly changesEveryCall: boolean;
  private readonly onCuda: boolean;
  private version = 0;

  constructor(options: RouterOptions) {
    super();
    const nativeOptions = toNativeOptions(options);
    const { inputDim, numExperts, topK } = nativeOptions;
    let weight: Float32Array;
    if (options.weight instanceof Tensor) {
      const shape = options.weight.shape;
      if (shape.length !== 2 || shape[0] !== numExperts || shape[1] !== inputDim) {
        throw new RouterError('E_SHAPE', `option weight must have shape [numExperts, inputDim] = [${numExperts}, ${inputDim}] (the nn.Linear layout) (got [${shape.join(', ')}])`);
      }
      weight = options.weight.toFloat32();
    } else if (options.weight instanceof Float32Array) {
      weight = options.weight;
    } else {
      throw new RouterError('E_DTYPE', 'option weight must be a Float32Array or a Tensor [numExperts, inputDim]');
    }
    if (inputDim > 0 && numExperts > 0 && weight.length !== inputDim * numExperts) {
      throw new RouterError('E_SHAPE', `option weight must have numExperts * inputDim = ${numExperts} * ${inputDim} = ${numExperts * inputDim} elements (got ${weight.length})`);
    }
    const bias = float32Vector(options.bias, numExperts, 'option bias');
    const selectionBias = float32Vector(options.selectionBias, numExperts, 'option selectionBias');
    const { Router } = loadNative();
    this.engine = native(() => new Router(nativeOptions, weight, bias, selectionBias));
    this.inputDim = inputDim;
    this.numExperts = numExperts;
    this.topK = topK;
    const { weight: _w, bias: _b, selectionBias: _s, ...rest } = options;
    this.options = Object.freeze({ ...rest });
    this.wantsLosses = nativeOptions.losses === 1;
    this.changesEveryCall = nativeOptions.biasUpdateRate > 0 || nativeOptions.noiseStd > 0;
    this.onCuda = this.engine.backend() === 'cuda';
  }

  /**
   * The backend that ran the most recent call (before any: the one chosen at creation):
   * 'cuda' | 'avx512' | 'avx2' | 'neon' | 'scalar'. After a CUDA fallback, the CPU one.
   */
  get backend(): string {
    return native(() => this.live().backend());
  }

  /** Set when the most recent call (or, before any call, the creation) fell back from CUDA to the CPU. */
  get lastFallback(): FallbackInfo | null {
    const engine = this.live();
    const fallback = engine.lastFallback();
    if (!fallback) return null;
    return { backend: engine.backend(), error: new RouterError(fallback.code as ErrorCode, fallback.message) };
  }

  /** The noise step the next route uses (it increments after every route). */
  get step(): number {
    return native(() => this.live().getStep());
  }

  set step(value: number) {
    if (!Number.isSafeInteger(value) || value < 0) throw new RouterError('E_CONFIG', `step must be a non-negative integer (got ${value})`);
    native(() => this.live().setStep(value));
    this.version += 1;
  }

  /**
   * Changes whenever the same input could route differently: calibrate, updateBias, a new step, and
   * every route when the selection bias updates itself or noise is on. Caches key on it.
   */
  get configVersion(): number {
    return this.version;
  }

  /** The selection bias in force (a copy). */
  get selectionBias(): Float32Array {
    const out = new Float32Array(this.numExperts);
    native(() => this.live().selectionBias(out));
    return out;
  }

  /** The top-p and threshold parameters in force (calibrate changes them). */
  get parameters(): { topP: number; threshold: number } {
    const [topP, threshold] = native(() => this.live().parameters());
    return { topP, threshold };
  }

  /** Routes hidden states [T, inputDim] (Float32Array, or a Tensor of f32/f16/bf16). */
  route(hidden: Input): Routing {
    return this.run(hidden, false);
  }

  /** Routes gate logits [T, numExperts], skipping the gate. */
  routeLogits(logits: Input): Routing {
    return this.run(logits, true);
  }

  /**
   * route() off the event loop. The engine reads the input's memory while the promise is pending, as
   * Node's own asynchronous calls read a buffer: do not write it, nor transfer its ArrayBuffer
   * (postMessage, structuredClone), until the promise settles; a transfer whose new owner is then
   * collected frees memory the route is reading.
   */
  routeAsync(hidden: Input): Promise<Routing> {
    return this.runAsync(hidden, false);
  }

  /** routeLogits() off the event loop; the input's contract is routeAsync's. */
  routeLogitsAsync(logits: Input): Promise<Routing> {
    return this.runAsync(logits, true);
  }

  /** Sets topP, threshold or the norm statistics so that the mean experts per token on the sample hits the target. */
  calibrate(sample: Input, options: CalibrateOptions): CalibrateResult {
    const engine = this.live();
    if (!options || typeof options.meanExperts !== 'number') {
      throw new RouterError('E_CONFIG', 'calibrate needs { meanExperts: number }');
    }
    rejectUnknownOptions('calibrate option', options, CALIBRATE_OPTIONS);
    const isLogits = options.logits === true;
    const input = this.input(sample, isLogits, 'sample');
    const [parameter, meanExperts] = native(() =>
      engine.calibrate(input.data, input.dtype, input.tokens, isLogits, options.meanExperts),
    );
    this.version += 1;
    this.reportFallback();
    return { parameter, meanExperts };
  }

  /** Aux-loss-free balancing by hand: selectionBias += biasUpdateRate * sign(mean(counts) - counts). */
  updateBias(counts: Int32Array): void {
    const engine = this.live();
    if (!(counts instanceof Int32Array)) throw new RouterError('E_DTYPE', 'counts must be an Int32Array');
    if (counts.length !== this.numExperts) {
      throw new RouterError('E_SHAPE', `counts must have ${this.numExperts} elements (numExperts) (got ${counts.length})`);
    }
    native(() => engine.updateBias(counts));
    this.version += 1;
  }

  /** Totals over every route since creation (or resetStats). */
  stats(): RouterStats {
    const expertUtilization = new Float64Array(this.numExperts);
    const expertAssignments = new Float64Array(this.numExperts);
    const expertsPerTokenHistogram = new Float64Array(this.topK + 1);
    const [tokens, calls, , dropped, mean, flopReduction, balance] = native(() =>
      this.live().stats(expertUtilization, expertAssignments, expertsPerTokenHistogram),
    );
    return {
      tokens: tokens!,
      calls: calls!,
      meanExpertsPerToken: mean!,
      flopReduction: flopReduction!,
      expertUtilization,
      expertAssignments,
      expertsPerTokenHistogram,
      loadBalanceScore: balance!,
      droppedAssignments: dropped!,
    };
  }

  /** A model card: Markdown with YAML front matter describing the options, backend and stats. */
  modelCard(options: ModelCardOptions = {}): string {
    return modelCard(this, options);
  }

  resetStats(): void {
    native(() => this.live().resetStats());
  }

  /** Frees the engine; later calls throw E_DISPOSED. A routeAsync in flight still completes. */
  dispose(): void {
    this.engine?.dispose();
    this.engine = undefined;
    this.pool.clear();
  }

  get disposed(): boolean {
    return this.engine === undefined;
  }

  /**
   * Host memory the native router holds, in bytes: its packed gate weight, statistics and the scratch
   * its calls grew (to the largest batch so far; it never shrinks); 0 once disposed. The JavaScript
   * engine is told the same figure, so that an unreferenced router is collected as promptly as its
   * size asks; dispose() frees it at once.
   */
  get memoryBytes(): number {
    return this.engine ? this.engine.hostBytes() : 0;
  }

  private live(): NativeRouter {
    if (!this.engine) throw new RouterError('E_DISPOSED', 'this DynamicRouter was disposed');
    return this.engine;
  }

  private input(value: Input, isLogits: boolean, name: string): PreparedInput {
    return isLogits
      ? prepareInput(value, this.numExperts, name, 'numExperts')
      : prepareInput(value, this.inputDim, name, 'inputDim');
  }

  /** Emits 'fallback' when the call that just finished fell back to the CPU (only CUDA routers can). */
  private reportFallback(): void {
    if (!this.onCuda || !this.engine) return; // disposed while an async call was in flight: nothing to report
    const info = this.lastFallback;
    if (info) this.emit('fallback', info);
  }

  /** A route's checked input (E_DISPOSED before any input error, as every call). */
  private routeInput(value: Input, isLogits: boolean): PreparedInput {
    this.live();
    return this.input(value, isLogits, isLogits ? 'logits' : 'hidden');
  }

  /** What a route passes to the engine: the device copy on a CUDA router, else the host rows. */
  private source(input: PreparedInput): Float32Array | Uint16Array | NativeDeviceBuffer {
    return input.device && this.onCuda ? input.device : input.data;
  }

  /** After a failed engine call: the buffers go back, the error leaves as a RouterError. */
  private failed(buffers: RouteBuffers, error: unknown): never {
    this.pool.release(buffers.tokens, buffers);
    throw native(() => {
      throw error;
    });
  }

  private result(buffers: RouteBuffers): Routing {
    if (this.changesEveryCall) this.version += 1;
    this.reportFallback();
    return new Routing(buffers, this.topK, this.wantsLosses, this.pool);
  }

  // run and runAsync differ only in the engine call and its await. The arguments are passed one by
  // one: an argument tuple spread into the call measured slower on a 0.8 µs small route.
  private run(value: Input, isLogits: boolean): Routing {
    const input = this.routeInput(value, isLogits);
    const buffers = this.pool.acquire(input.tokens, this.makeBuffers);
    try {
      this.engine!.route(this.source(input), input.dtype, input.tokens, isLogits, buffers.buffer);
    } catch (error) {
      this.failed(buffers, error);
    }
    return this.result(buffers);
  }

  private async runAsync(value: Input, isLogits: boolean): Promise<Routing> {
    const input = this.routeInput(value, isLogits);
    // A worker thread reads the rows while JavaScript runs on: a buffer that can shrink under it
    // (a resizable ArrayBuffer) would have it read freed memory.
    if ((input.data.buffer as { resizable?: boolean }).resizable === true) {
      throw new RouterError('E_DTYPE', `${isLogits ? 'logits' : 'hidden'} of an async call must not lie in a resizable ArrayBuffer (route() takes one; or copy the rows)`);
    }
    const buffers = this.pool.acquire(input.tokens, this.makeBuffers);
    try {
      await this.engine!.routeAsync(this.source(input), input.dtype, input.tokens, isLogits, buffers.buffer);
    } catch (error) {
      this.failed(buffers, error);
    }
    return this.result(buffers);
  }
}
