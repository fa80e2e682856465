/**
 * RoutingCache: answers a repeated input from memory instead of routing it again.
 *
 * The key is a 128-bit hash (moe_hash128, native) over every byte of the input (never a sample), with
 * the entry (hidden or logits), the dtype, the shape and the router's configVersion, so a changed input
 * or a changed router can never be answered from the cache. Entries hold copies, never the router's pooled buffers, and every
 * hit hands out a copy of its own, so nothing a caller does to a result (release, writes) reaches the cache. A request-mode hit's
 * copy comes from the cache's buffer pool and goes back on release(), as a router's result does.
 */
import { LRUCache } from 'lru-cache';
import { optionNames, rejectUnknownOptions, RouterError } from './errors';
import { loadNative } from './native';
import { RouterWrapper, type Routable, type RouteInput, type RoutingResult } from './routable';
import type { CalibrateOptions, CalibrateResult, RouterStats } from './router';
import type { Dispatch } from './routing';
import { BufferPool } from './pool';
import { Tensor, type DType, type TensorData } from './tensor';

/** 'request': one entry per whole input. 'token': one entry per token row, so batches that share rows hit. */
export type CacheMode = 'request' | 'token';

export interface RoutingCacheOptions {
  /** Upper bound on the memory the entries take, in bytes (default 64 MiB). */
  maxBytes?: number;
  mode?: CacheMode;
}

export const CACHE_OPTIONS = optionNames<RoutingCacheOptions>({ maxBytes: true, mode: true });

export interface CacheStats {
  mode: CacheMode;
  /** Requests (request mode) or token rows (token mode) answered from the cache. */
  hits: number;
  /** Requests or token rows that had to be routed. */
  misses: number;
  /** Entries dropped to stay within maxBytes. */
  evictions: number;
  /** Times the whole cache was emptied because the router's configuration changed. */
  invalidations: number;
  entries: number;
  bytes: number;
  maxBytes: number;
}

/**
 * Bookkeeping bytes counted per entry on top of its arrays and key (objects, array headers, the LRU's
 * own maps), so that maxBytes bounds what the entries really take: measured with
 * `node --expose-gc bench/cache-memory.cjs MODE D E K` (bench/NOTES.md, Cache), a request-mode entry
 * (a StoredRouting: an object, two views, an ArrayBuffer, a lengths array) ~640 bytes, a token-mode
 * one (an Int32Array) ~300, rounded up here.
 */
const REQUEST_ENTRY_OVERHEAD_BYTES = 700;
const TOKEN_ENTRY_OVERHEAD_BYTES = 320;
const DEFAULT_MAX_BYTES = 64 * 1024 * 1024;

/** The `backend` of an answer whose every row came from the cache. */
const CACHE_BACKEND = 'cache';

/** The names of the arrays partsOf() returns. */
type PackedArray = 'experts' | 'weights' | 'expertsPerToken' | 'expertCounts' | 'invalidTokens';

/** A result's arrays in the order a packed copy keeps them (all of 4-byte elements). */
function partsOf(source: RoutingResult): (Int32Array | Float32Array)[] {
  const parts = [source.experts, source.weights, source.expertsPerToken, source.expertCounts, source.invalidTokens];
  if (source.dispatch) parts.push(source.dispatch.offsets, source.dispatch.slots);
  return parts;
}

/**
 * @internal What request mode keeps for one answer: its arrays packed one after another into one buffer (no
 * views of each array until a hit copies it out) and its scalars. A few objects per entry rather than
 * one per array keeps the garbage collector's work small when the cache holds 10⁵ entries, and an
 * evicted entry is refilled by the next answer of its size instead of being left to the collector.
 */
export class StoredRouting {
  readonly ints: Int32Array;
  /** The same bytes, for copying the weights bit for bit. */
  readonly floats: Float32Array;
  /** The length of each array of partsOf(). */
  readonly lengths: number[] = [];
  tokens = 0;
  topK = 0;
  auxLoss?: number;
  zLoss?: number;
  entropy?: number;
  flopReduction = 0;
  droppedAssignments = 0;
  backend = '';

  constructor(bytes: number) {
    this.ints = new Int32Array(bytes / 4);
    this.floats = new Float32Array(this.ints.buffer);
  }

  /** A fresh one holding a copy of `source`. */
  static of(source: RoutingResult): StoredRouting {
    const parts = partsOf(source);
    return new StoredRouting(StoredRouting.bytesOf(parts)).fill(source, parts);
  }

  static bytesOf(parts: readonly (Int32Array | Float32Array)[]): number {
    let bytes = 0;
    for (const part of parts) bytes += part.byteLength;
    return bytes;
  }

  /** Copies `source` in; `parts` are partsOf(source) and fill this buffer exactly. */
  fill(source: RoutingResult, parts: readonly (Int32Array | Float32Array)[]): this {
    let at = 0;
    this.lengths.length = parts.length;
    parts.forEach((part, i) => {
      if (part instanceof Float32Array) this.floats.set(part, at);
      else this.ints.set(part, at);
      at += part.length;
      this.lengths[i] = part.length;
    });
    return this.describe(source);
  }

  /** Sets the scalars of `source` (fill(), or a caller that wrote the arrays and lengths itself). */
  describe(source: Omit<RoutingResult, 'release' | 'dispatch' | PackedArray>): this {
    this.tokens = source.tokens;
    this.topK = source.topK;
    this.auxLoss = source.auxLoss;
    this.zLoss = source.zLoss;
    this.entropy = source.entropy;
    this.flopReduction = source.flopReduction;
    this.droppedAssignments = source.droppedAssignments;
    this.backend = source.backend;
    return this;
  }

  get byteLength(): number {
    return this.ints.byteLength;
  }
}

/** A routing answer with arrays of its own: what a hit returns. */
export class CachedRouting implements RoutingResult {
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
  readonly backend: string;

  /** The one buffer all its arrays are views of. */
  private readonly buffer: ArrayBuffer;
  /** Where release() gives the buffer back; absent when it has none. */
  private pool?: BufferPool<ArrayBuffer>;

  /**
   * Copies every array of `source` into one buffer of its own (one allocation, not one per array);
   * the copy does not depend on `source` afterwards. The buffer comes from `pool` when one is given
   * (release() then gives it back: a fresh ArrayBuffer of a few KiB costs V8 about as much as a small
   * route).
   */
  constructor(source: RoutingResult | StoredRouting, pool?: BufferPool<ArrayBuffer>) {
    // One way to copy: a result that is not packed yet is packed first (the cache itself hands out
    // packed answers only: request mode's entries, token mode's assembled rows).
    const stored = source instanceof StoredRouting ? source : StoredRouting.of(source);
    const bytes = stored.byteLength;
    this.buffer = pool ? pool.acquire(bytes, (n) => new ArrayBuffer(n)) : new ArrayBuffer(bytes);
    this.pool = pool;
    new Int32Array(this.buffer).set(stored.ints);
    const { lengths } = stored;
    let at = 0;
    let index = 0;
    const next = <T extends Int32Array | Float32Array>(kind: new (buffer: ArrayBuffer, offset: number, length: number) => T): T => {
      const length = lengths[index]!;
      const view = new kind(this.buffer, at, length);
      at += 4 * length;
      index += 1;
      return view;
    };
    this.experts = next(Int32Array);
    this.weights = next(Float32Array);
    this.expertsPerToken = next(Int32Array);
    this.expertCounts = next(Int32Array);
    this.invalidTokens = next(Int32Array);
    if (lengths.length > 5) this.dispatch = { offsets: next(Int32Array), slots: next(Int32Array) };
    this.tokens = stored.tokens;
    this.topK = stored.topK;
    if (stored.auxLoss !== undefined) {
      this.auxLoss = stored.auxLoss;
      this.zLoss = stored.zLoss;
      this.entropy = stored.entropy;
    }
    this.flopReduction = stored.flopReduction;
    this.droppedAssignments = stored.droppedAssignments;
    this.backend = stored.backend;
  }

  /** A pooled copy's buffer goes back to its cache (its arrays must not be used afterwards); otherwise nothing. */
  release(): void {
    const pool = this.pool;
    if (!pool) return;
    this.pool = undefined;
    pool.release(this.buffer.byteLength, this.buffer);
  }

  /** The bytes its arrays take. */
  get byteLength(): number {
    return this.buffer.byteLength;
  }
}

/** One token's answer in token mode: its K experts, then the bits of its K weights, in one array. */
class TokenRow {
  readonly values: Int32Array;
  constructor(
    K: number,
    readonly k: number,
    readonly invalid: boolean,
  ) {
    this.values = new Int32Array(2 * K);
  }
}

type Entry = StoredRouting | TokenRow;

interface Rows {
  data: TensorData;
  dtype: DType;
  tokens: number;
  width: number;
}

/** The input as rows of `width`, or null when the router would reject it (the router then says why). */
function rowsOf(input: RouteInput, width: number): Rows | null {
  if (input instanceof Tensor) {
    const s = input.shape;
    if (input.device !== 'cpu') return null;
    if (s.length === 2 && s[1] === width) return { data: input.data, dtype: input.dtype, tokens: s[0]!, width };
    if (s.length === 1 && s[0] === width) return { data: input.data, dtype: input.dtype, tokens: 1, width };
    return null;
  }
  if (input instanceof Float32Array && width > 0 && input.length % width === 0) {
    return { data: input, dtype: 'f32', tokens: input.length / width, width };
  }
  return null;
}

/** A token-mode plan: the rows found in the cache and the ones still to route. */
interface Plan {
  rows: Rows;
  version: number;
  keys: string[];
  found: (TokenRow | undefined)[];
  missing: number[];
}

export class RoutingCache extends RouterWrapper implements Routable {
  readonly router: Routable;
  readonly mode: CacheMode;
  readonly maxBytes: number;
  private readonly lru: LRUCache<string, Entry>;
  /** The buffers of the copies request-mode hits hand out. */
  private readonly copies = new BufferPool<ArrayBuffer>();
  /** Evicted request-mode entries, refilled by the next answer of their size. */
  private readonly spare = new BufferPool<StoredRouting>();
  private version: number;
  private hits = 0;
  private misses = 0;
  private evictions = 0;
  private invalidations = 0;

  constructor(router: Routable, options: RoutingCacheOptions = {}) {
    super(router);
    rejectUnknownOptions('cache option', options, CACHE_OPTIONS);
    const mode = options.mode ?? 'request';
    if (mode !== 'request' && mode !== 'token') {
      throw new RouterError('E_CONFIG', `cache mode must be 'request' or 'token' (got ${JSON.stringify(mode)})`);
    }
    const maxBytes = options.maxBytes ?? DEFAULT_MAX_BYTES;
    if (!Number.isSafeInteger(maxBytes) || maxBytes <= 0) {
      throw new RouterError('E_CONFIG', `cache maxBytes must be a positive integer (got ${JSON.stringify(options.maxBytes)})`);
    }
    if (mode === 'token') RoutingCache.checkTokenMode(router);
    this.router = router;
    this.mode = mode;
    this.maxBytes = maxBytes;
    this.version = router.configVersion;
    this.lru = new LRUCache<string, Entry>({
      maxSize: maxBytes,
      sizeCalculation: (entry, key) =>
        2 * key.length +
        (entry instanceof StoredRouting ? REQUEST_ENTRY_OVERHEAD_BYTES + entry.byteLength : TOKEN_ENTRY_OVERHEAD_BYTES + entry.values.byteLength),
      dispose: (entry, _key, reason) => {
        if (reason === 'evict') this.evictions += 1;
        if (entry instanceof StoredRouting) this.spare.release(entry.byteLength, entry);
      },
    });
  }

  /** Token mode needs every token routed on its own row alone; these options make a token depend on its batch. */
  private static checkTokenMode(router: Routable): void {
    const o = router.options;
    const reasons: string[] = [];
    if (o.strategy === 'expert-choice') reasons.push("strategy 'expert-choice' picks tokens per batch");
    if (o.strategy === 'norm') reasons.push("strategy 'norm' uses the batch's norm statistics until calibrated");
    if (o.capacityFactor !== undefined && o.capacityFactor > 0) reasons.push('capacityFactor makes tokens compete for capacity');
    if (o.losses) reasons.push('losses are batch averages');
    if (o.dispatch) reasons.push('dispatch is built per batch');
    if (reasons.length > 0) {
      throw new RouterError('E_CONFIG', `cache mode 'token' cannot be used with this router: ${reasons.join('; ')}; use mode 'request'`);
    }
  }

  stats(): RouterStats {
    return this.router.stats();
  }

  /** Hits, misses, evictions and size of the cache itself. */
  cacheStats(): CacheStats {
    return {
      mode: this.mode,
      hits: this.hits,
      misses: this.misses,
      evictions: this.evictions,
      invalidations: this.invalidations,
      entries: this.lru.size,
      bytes: this.lru.calculatedSize,
      maxBytes: this.maxBytes,
    };
  }

  clear(): void {
    this.lru.clear();
  }

  route(hidden: RouteInput): RoutingResult {
    return this.mode === 'token' ? this.routeRows(hidden, false) : this.routeRequest(hidden, false);
  }

  routeLogits(logits: RouteInput): RoutingResult {
    return this.mode === 'token' ? this.routeRows(logits, true) : this.routeRequest(logits, true);
  }

  routeAsync(hidden: RouteInput): Promise<RoutingResult> {
    return this.mode === 'token' ? this.routeRowsAsync(hidden, false) : this.routeRequestAsync(hidden, false);
  }

  routeLogitsAsync(logits: RouteInput): Promise<RoutingResult> {
    return this.mode === 'token' ? this.routeRowsAsync(logits, true) : this.routeRequestAsync(logits, true);
  }

  get backend(): string {
    return this.router.backend;
  }

  get configVersion(): number {
    return this.router.configVersion;
  }

  get parameters(): { topP: number; threshold: number } {
    return this.router.parameters;
  }

  calibrate(sample: RouteInput, options: CalibrateOptions): CalibrateResult {
    return this.router.calibrate(sample, options);
  }

  updateBias(counts: Int32Array): void {
    this.router.updateBias(counts);
  }

  resetStats(): void {
    this.router.resetStats();
  }

  /** Disposes the router underneath and drops every entry. */
  dispose(): void {
    this.lru.clear();
    this.router.dispose();
  }

  /** The router's configVersion now; a change empties the cache, since no entry can match again. */
  private currentVersion(): number {
    const version = this.router.configVersion;
    if (version !== this.version) {
      if (this.lru.size > 0) this.invalidations += 1;
      this.lru.clear();
      this.version = version;
    }
    return version;
  }

  private prefix(rows: Rows, isLogits: boolean, version: number): string {
    return `${isLogits ? 'l' : 'h'}:${rows.dtype}:${rows.width}:${version}:`;
  }

  private direct(input: RouteInput, isLogits: boolean): RoutingResult {
    return isLogits ? this.router.routeLogits(input) : this.router.route(input);
  }

  private directAsync(input: RouteInput, isLogits: boolean): Promise<RoutingResult> {
    return isLogits ? this.router.routeLogitsAsync(input) : this.router.routeAsync(input);
  }

  /** Stores an answer only when the router did not change while it was computed. */
  private store(key: string, version: number, entry: Entry): void {
    if (this.router.configVersion === version) this.lru.set(key, entry);
  }

  /** store() for a whole answer, packed into a spare entry of its size when there is one. */
  private storeRequest(key: string, version: number, result: RoutingResult): void {
    if (this.router.configVersion !== version) return;
    const parts = partsOf(result);
    const bytes = StoredRouting.bytesOf(parts);
    const entry = this.spare.acquire(bytes, (n) => new StoredRouting(n)).fill(result, parts);
    entry.backend = CACHE_BACKEND; // what a hit names: the cache answered it
    this.lru.set(key, entry);
  }

  // Request mode ------------------------------------------------------------------------------------

  private requestKey(input: RouteInput, isLogits: boolean): { key: string; version: number; hit?: CachedRouting } | null {
    const rows = rowsOf(input, isLogits ? this.numExperts : this.inputDim);
    // A disposed router answers nothing, from the cache neither: the call goes to it and fails there.
    if (!rows || this.router.disposed) return null;
    const version = this.currentVersion();
    const key = loadNative().hash128(rows.data, `${this.prefix(rows, isLogits, version)}${rows.tokens}:`);
    const found = this.lru.get(key);
    if (found instanceof StoredRouting) {
      this.hits += 1;
      return { key, version, hit: new CachedRouting(found, this.copies) };
    }
    this.misses += 1;
    return { key, version };
  }

  private routeRequest(input: RouteInput, isLogits: boolean): RoutingResult {
    const lookup = this.requestKey(input, isLogits);
    if (lookup?.hit) return lookup.hit;
    const result = this.direct(input, isLogits);
    if (lookup) this.storeRequest(lookup.key, lookup.version, result);
    return result;
  }

  private async routeRequestAsync(input: RouteInput, isLogits: boolean): Promise<RoutingResult> {
    const lookup = this.requestKey(input, isLogits);
    if (lookup?.hit) return lookup.hit;
    const result = await this.directAsync(input, isLogits);
    if (lookup) this.storeRequest(lookup.key, lookup.version, result);
    return result;
  }

  // Token mode --------------------------------------------------------------------------------------

  private plan(input: RouteInput, isLogits: boolean): Plan | null {
    const rows = rowsOf(input, isLogits ? this.numExperts : this.inputDim);
    if (!rows || this.router.disposed) return null;
    const version = this.currentVersion();
    const prefix = this.prefix(rows, isLogits, version);
    const { data, tokens } = rows;
    const keys = loadNative().hash128(data, prefix, tokens);
    const found: (TokenRow | undefined)[] = new Array(tokens);
    const missing: number[] = [];
    for (let t = 0; t < tokens; t++) {
      const entry = this.lru.get(keys[t]!);
      if (entry instanceof TokenRow) {
        found[t] = entry;
      } else {
        missing.push(t);
      }
    }
    this.hits += tokens - missing.length;
    this.misses += missing.length;
    return { rows, version, keys, found, missing };
  }

  /** The input made of the missing rows only (the input itself when every row is missing). */
  private missingInput(input: RouteInput, plan: Plan): RouteInput {
    const { data, width, tokens, dtype } = plan.rows;
    if (plan.missing.length === tokens) return input;
    const out = data instanceof Float32Array ? new Float32Array(plan.missing.length * width) : new Uint16Array(plan.missing.length * width);
    plan.missing.forEach((t, i) => out.set(data.subarray(t * width, (t + 1) * width), i * width));
    return out instanceof Float32Array ? out : Tensor.from(out, [plan.missing.length, width], { dtype });
  }

  /**
   * Stores the freshly routed rows, then puts every row together into a packed answer (a spare entry
   * of its size, written in place: no array per row or per answer) and hands out a pooled copy.
   */
  private assemble(plan: Plan, routed: RoutingResult | null): CachedRouting {
    const K = this.topK;
    const E = this.numExperts;
    const T = plan.rows.tokens;
    const { found } = plan;
    if (routed) {
      const experts = routed.experts;
      const weightBits = new Int32Array(routed.weights.buffer, routed.weights.byteOffset, routed.weights.length);
      const routedInvalid = routed.invalidTokens.length > 0 ? new Set(routed.invalidTokens) : null;
      plan.missing.forEach((t, i) => {
        const row = new TokenRow(K, routed.expertsPerToken[i]!, routedInvalid?.has(i) ?? false);
        const values = row.values;
        for (let j = 0; j < K; j++) {
          values[j] = experts[i * K + j]!;
          values[K + j] = weightBits[i * K + j]!;
        }
        found[t] = row;
        this.store(plan.keys[t]!, plan.version, row);
      });
    }
    let invalidCount = 0;
    for (let t = 0; t < T; t++) if (found[t]!.invalid) invalidCount += 1;
    // The layout of partsOf(): experts, weights, expertsPerToken, expertCounts, invalidTokens.
    const weightsAt = T * K;
    const perTokenAt = 2 * T * K;
    const countsAt = perTokenAt + T;
    const invalidAt = countsAt + E;
    const bytes = 4 * (invalidAt + invalidCount);
    const stored = this.spare.acquire(bytes, (n) => new StoredRouting(n));
    const ints = stored.ints;
    ints.fill(0, countsAt, invalidAt);
    let chosen = 0;
    let invalid = 0;
    for (let t = 0; t < T; t++) {
      const row = found[t]!;
      const values = row.values;
      for (let j = 0; j < K; j++) {
        const e = values[j]!;
        ints[t * K + j] = e;
        ints[weightsAt + t * K + j] = values[K + j]!;
        if (e >= 0) ints[countsAt + e] += 1;
      }
      ints[perTokenAt + t] = row.k;
      chosen += row.k;
      if (row.invalid) ints[invalidAt + invalid++] = t;
    }
    stored.lengths.length = 0;
    stored.lengths.push(T * K, T * K, T, E, invalidCount);
    stored.describe({
      tokens: T,
      topK: K,
      flopReduction: T === 0 ? 0 : 1 - chosen / (T * K),
      droppedAssignments: 0,
      backend: routed?.backend ?? CACHE_BACKEND,
    });
    const answer = new CachedRouting(stored, this.copies);
    this.spare.release(bytes, stored);
    return answer;
  }

  private routeRows(input: RouteInput, isLogits: boolean): RoutingResult {
    const plan = this.plan(input, isLogits);
    if (!plan) return this.direct(input, isLogits);
    let routed: RoutingResult | null = null;
    if (plan.missing.length > 0) {
      try {
        routed = this.direct(this.missingInput(input, plan), isLogits);
      } catch (error) {
        // A row's error names its row in the rows sent; the whole input names it in the caller's.
        if (isPartial(plan) && isRowError(error)) return this.direct(input, isLogits);
        throw error;
      }
    }
    try {
      return this.assemble(plan, routed);
    } finally {
      routed?.release();
    }
  }

  private async routeRowsAsync(input: RouteInput, isLogits: boolean): Promise<RoutingResult> {
    const plan = this.plan(input, isLogits);
    if (!plan) return this.directAsync(input, isLogits);
    let routed: RoutingResult | null = null;
    if (plan.missing.length > 0) {
      try {
        routed = await this.directAsync(this.missingInput(input, plan), isLogits);
      } catch (error) {
        if (isPartial(plan) && isRowError(error)) return this.directAsync(input, isLogits);
        throw error;
      }
      // The router changed (calibrate, updateBias) while this call waited: its rows may follow the new
      // configuration and the cached ones the old. One answer from the router itself is consistent.
      if (isPartial(plan) && this.router.configVersion !== plan.version) {
        routed.release();
        return this.directAsync(input, isLogits);
      }
    }
    try {
      return this.assemble(plan, routed);
    } finally {
      routed?.release();
    }
  }
}

/** Whether some of the plan's rows came from the cache (the rest were routed on their own). */
function isPartial(plan: Plan): boolean {
  return plan.missing.length < plan.rows.tokens;
}

function isRowError(error: unknown): boolean {
  return error instanceof RouterError && error.code === 'E_NONFINITE';
}
