/**
 * The router config file of `moe-router serve`, `card` and `validate`: router options plus where the
 * gate weight comes from (a seed for a reproducible random gate, or a weight file: raw little-endian
 * f32, `.npy`, or a tensor of a `.safetensors` file), and the service settings.
 *
 * ```json
 * { "inputDim": 2048, "numExperts": 64, "topK": 8, "strategy": "top-p", "topP": 0.6,
 *   "weightFile": "model.safetensors", "weightTensor": "model.layers.0.mlp.gate.weight",
 *   "rateLimit": { "max": 100, "timeWindow": "1 minute" }, "cache": { "maxBytes": 67108864 } }
 * ```
 */
import { closeSync, fstatSync, openSync, readFileSync, readSync } from 'node:fs';
import { endianness } from 'node:os';
import path from 'node:path';
import { CACHE_OPTIONS, type RoutingCacheOptions } from './cache';
import { modelCard } from './card';
import { didYouMean, isObject, optionNames, RouterError, unknownOptions } from './errors';
import { BREAKER_OPTIONS, breakerSettings, FailoverRouter, type BreakerOptions } from './failover';
import { ALERT_OPTIONS, MonitoredRouter, type AlertThresholds } from './monitor';
import { ROUTER_OPTIONS, type RouterOptions } from './options';
import { randomGate } from './random';
import { DynamicRouter } from './router';
import { Tensor, type DType } from './tensor';

const VECTOR_KEYS = ['bias', 'selectionBias'] as const;
/** Router options a config file may set as they are (the weight comes from `seed` or `weightFile`). */
const ROUTER_KEYS = ROUTER_OPTIONS.filter((k) => k !== 'weight' && !(VECTOR_KEYS as readonly string[]).includes(k));
const SERVICE_KEYS = ['seed', 'weightFile', 'weightTensor', 'rateLimit', 'cache', 'alerts', 'breaker', 'bodyLimit', 'name', 'description'] as const;
const KNOWN_KEYS: readonly string[] = [...ROUTER_KEYS, ...VECTOR_KEYS, ...SERVICE_KEYS];
/** The keys of the service's option objects, as their constructors take them (a breaker's clock is a function: not from JSON). */
const NESTED_KEYS = { cache: CACHE_OPTIONS, alerts: ALERT_OPTIONS, breaker: BREAKER_OPTIONS.filter((k) => k !== 'clock') };
const RATE_LIMIT_KEYS = optionNames<RateLimitConfig>({ max: true, timeWindow: true });

export interface RateLimitConfig {
  /** Requests per client per window. */
  max: number;
  /** Window length in ms. */
  timeWindow: number;
}

/** A checked config: everything needed to build the router and the service. */
export interface RouterConfig {
  router: RouterOptions;
  /** Where the weight came from: `seed 42`, a file, or `file#tensor`. */
  weightSource: string;
  rateLimit?: RateLimitConfig;
  cache?: RoutingCacheOptions;
  alerts?: AlertThresholds;
  breaker?: Omit<BreakerOptions, 'clock'>;
  bodyLimit?: number;
  name?: string;
  description?: string;
}

/** What `serve` and `card` use without --config: an OLMoE-shaped gate from seed 0. */
export const DEFAULT_CONFIG = { inputDim: 2048, numExperts: 64, topK: 8, seed: 0 } as const;

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** '1 minute', '30s', '500 ms', or a number of ms; NaN when it is none of those. */
function durationMs(value: unknown): number {
  if (typeof value === 'number') return value;
  if (typeof value !== 'string') return Number.NaN;
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|milliseconds?|s|secs?|seconds?|m|mins?|minutes?|h|hours?)?\s*$/i.exec(value);
  if (!match) return Number.NaN;
  const unit = (match[2] ?? 'ms').toLowerCase();
  const key = unit.startsWith('ms') || unit.startsWith('milli') ? 'ms' : unit[0]!;
  return Number(match[1]) * DURATION_UNITS[key]!;
}

function positiveInteger(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value > 0;
}

/** Reads only part of a file, so a multi-gigabyte checkpoint is never loaded whole. */
function readRange(fd: number, position: number, length: number): Buffer {
  const out = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const n = readSync(fd, out, done, length - done, position + done);
    if (n === 0) throw new RouterError('E_CONFIG', `unexpected end of file at byte ${position + done}`);
    done += n;
  }
  return out;
}

interface RawTensor {
  dtype: DType | 'f64';
  shape: number[];
  /** Byte offset and length of the data in the file. */
  offset: number;
  length: number;
}

const ITEM_SIZE: Record<RawTensor['dtype'], number> = { f32: 4, f16: 2, bf16: 2, f64: 8 };

/** The header of a .npy file (format versions 1 to 3). */
function npyTensor(fd: number, size: number, file: string): RawTensor {
  const preamble = readRange(fd, 0, Math.min(size, 12));
  if (preamble.length < 10 || preamble.toString('latin1', 0, 6) !== '\x93NUMPY') {
    throw new RouterError('E_CONFIG', `${file} is not a .npy file (no \\x93NUMPY magic)`);
  }
  const major = preamble[6]!;
  if (major < 1 || major > 3) throw new RouterError('E_CONFIG', `${file}: .npy format version ${major} is not supported (1 to 3 are)`);
  const headerStart = major === 1 ? 10 : 12;
  const headerLength = major === 1 ? preamble.readUInt16LE(8) : preamble.readUInt32LE(8);
  if (headerStart + headerLength > size) throw new RouterError('E_CONFIG', `${file}: the .npy header runs past the end of the file`);
  const header = readRange(fd, headerStart, headerLength).toString(major === 3 ? 'utf8' : 'latin1');
  const descr = /'descr'\s*:\s*'([^']*)'/.exec(header)?.[1];
  const fortran = /'fortran_order'\s*:\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape'\s*:\s*\(([^)]*)\)/.exec(header)?.[1];
  if (descr === undefined || fortran === undefined || shapeText === undefined) {
    throw new RouterError('E_CONFIG', `${file}: cannot read the .npy header ${JSON.stringify(header.trim())}`);
  }
  if (fortran === 'True') throw new RouterError('E_CONFIG', `${file} is stored in Fortran (column-major) order; save it C-contiguous (np.ascontiguousarray)`);
  const dtypes: Record<string, RawTensor['dtype']> = { '<f4': 'f32', '<f2': 'f16', '<f8': 'f64' };
  const dtype = dtypes[descr];
  if (!dtype) throw new RouterError('E_CONFIG', `${file} has dtype '${descr}'; little-endian float32, float16 or float64 ('<f4', '<f2', '<f8') is needed`);
  const shape = shapeText
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0)
    .map(Number);
  const offset = headerStart + headerLength;
  return { dtype, shape, offset, length: size - offset };
}

/** One tensor of a .safetensors file: 8-byte header length, JSON header, then the data. */
function safetensorsTensor(fd: number, size: number, file: string, name: string | undefined, expected: [number, number]): RawTensor {
  if (size < 8) throw new RouterError('E_CONFIG', `${file} is too short to be a .safetensors file`);
  const headerLength = Number(readRange(fd, 0, 8).readBigUInt64LE(0));
  if (headerLength <= 0 || 8 + headerLength > size) {
    throw new RouterError('E_CONFIG', `${file}: header length ${headerLength} does not fit in the file (${size} bytes); not a .safetensors file?`);
  }
  let header: unknown;
  try {
    header = JSON.parse(readRange(fd, 8, headerLength).toString('utf8'));
  } catch (error) {
    throw new RouterError('E_CONFIG', `${file}: the .safetensors header is not valid JSON (${(error as Error).message})`);
  }
  if (!isObject(header)) throw new RouterError('E_CONFIG', `${file}: the .safetensors header is not a JSON object`);
  const names = Object.keys(header).filter((k) => k !== '__metadata__');
  const fits = (k: string) => {
    const entry = header[k];
    return isObject(entry) && Array.isArray(entry.shape) && entry.shape.length === 2 && entry.shape[0] === expected[0] && entry.shape[1] === expected[1];
  };
  const suggest = () => {
    const shaped = names.filter(fits);
    const list = (shaped.length > 0 ? shaped : names).slice(0, 8).map((k) => `'${k}'`).join(', ');
    return shaped.length > 0 ? `tensors of shape [${expected.join(', ')}]: ${list}${shaped.length > 8 ? ', …' : ''}` : `tensors: ${list}${names.length > 8 ? ', …' : ''}`;
  };
  let chosen = name;
  if (chosen === undefined) {
    if (names.length !== 1) throw new RouterError('E_CONFIG', `${file} holds ${names.length} tensors; set weightTensor to one of its ${suggest()}`);
    chosen = names[0]!;
  }
  const entry = header[chosen];
  if (chosen === '__metadata__' || !isObject(entry)) throw new RouterError('E_CONFIG', `${file} has no tensor '${chosen}'; its ${suggest()}`);
  const dtypes: Record<string, RawTensor['dtype']> = { F32: 'f32', F16: 'f16', BF16: 'bf16', F64: 'f64' };
  const dtype = dtypes[String(entry.dtype)];
  if (!dtype) throw new RouterError('E_CONFIG', `${file}#${chosen} has dtype ${String(entry.dtype)}; F32, F16, BF16 or F64 is needed`);
  const offsets = entry.data_offsets;
  const shape = entry.shape;
  if (!Array.isArray(offsets) || offsets.length !== 2 || !Array.isArray(shape)) {
    throw new RouterError('E_CONFIG', `${file}#${chosen}: the header entry needs shape and data_offsets`);
  }
  const [begin, end] = offsets as number[];
  const offset = 8 + headerLength + begin!;
  if (!(Number.isSafeInteger(begin) && Number.isSafeInteger(end) && begin! >= 0 && begin! <= end! && 8 + headerLength + end! <= size)) {
    throw new RouterError('E_CONFIG', `${file}#${chosen}: data_offsets [${offsets.join(', ')}] lie outside the file`);
  }
  return { dtype, shape: shape.map(Number), offset, length: end! - begin! };
}

/**
 * Loads a gate weight [numExperts, inputDim] from raw f32, .npy or .safetensors (by tensor name);
 * f16/bf16 come back as a Tensor (the router widens them once), f64 is narrowed to f32.
 */
export function loadWeightFile(file: string, numExperts: number, inputDim: number, tensorName?: string): Float32Array | Tensor {
  if (endianness() !== 'LE') throw new RouterError('E_CONFIG', 'weight files are read as little-endian, and this machine is big-endian');
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch (error) {
    throw new RouterError('E_CONFIG', `cannot open weightFile ${file}: ${(error as Error).message}`);
  }
  try {
    const size = fstatSync(fd).size;
    const ext = path.extname(file).toLowerCase();
    const expected: [number, number] = [numExperts, inputDim];
    const where = tensorName === undefined ? file : `${file}#${tensorName}`;
    if (tensorName !== undefined && ext !== '.safetensors') {
      throw new RouterError('E_CONFIG', `weightTensor names a tensor of a .safetensors file, but ${file} is not one`);
    }
    let raw: RawTensor;
    if (ext === '.npy') raw = npyTensor(fd, size, file);
    else if (ext === '.safetensors') raw = safetensorsTensor(fd, size, file, tensorName, expected);
    else raw = { dtype: 'f32', shape: [size / 4], offset: 0, length: size };
    const count = numExperts * inputDim;
    const itemSize = ITEM_SIZE[raw.dtype];
    if (raw.shape.length === 1 && raw.shape[0] === count) raw.shape = expected;
    const [rows, cols] = raw.shape;
    if (raw.shape.length !== 2 || rows !== numExperts || cols !== inputDim) {
      const hint = rows === inputDim && cols === numExperts ? ' — it looks transposed: the gate weight is [numExperts, inputDim], the nn.Linear layout' : '';
      const got = ext === '.npy' || ext === '.safetensors' ? `[${raw.shape.join(', ')}]` : `${size} bytes (${size / 4} f32 values)`;
      throw new RouterError('E_CONFIG', `${where} must hold [numExperts, inputDim] = [${numExperts}, ${inputDim}] (got ${got})${hint}`);
    }
    if (raw.length !== count * itemSize) {
      throw new RouterError('E_CONFIG', `${where} has ${raw.length} bytes of data; [${numExperts}, ${inputDim}] of ${raw.dtype} needs ${count * itemSize}`);
    }
    const bytes = readRange(fd, raw.offset, raw.length);
    // A fresh, aligned buffer of its own (the Buffer may share a pool with an odd offset).
    const aligned = new Uint8Array(raw.length);
    aligned.set(bytes);
    if (raw.dtype === 'f32') return new Float32Array(aligned.buffer);
    if (raw.dtype === 'f64') return Float32Array.from(new Float64Array(aligned.buffer));
    return Tensor.from(new Uint16Array(aligned.buffer), expected, { dtype: raw.dtype });
  } finally {
    closeSync(fd);
  }
}

/**
 * Checks a parsed config and loads its weight. Every problem found is listed; relative weight
 * paths are resolved from `baseDir` (the config file's folder).
 */
export function checkConfig(raw: unknown, baseDir: string): { config?: RouterConfig; problems: string[] } {
  const problems: string[] = [];
  if (!isObject(raw)) return { problems: ['the config must be a JSON object'] };
  for (const key of Object.keys(raw)) {
    if (!KNOWN_KEYS.includes(key)) problems.push(`unknown key '${key}'${didYouMean(key, KNOWN_KEYS)}`);
  }
  for (const key of ['inputDim', 'numExperts', 'topK'] as const) {
    if (!positiveInteger(raw[key])) problems.push(`${key} must be a positive integer (got ${JSON.stringify(raw[key])})`);
  }
  const { seed, weightFile, weightTensor } = raw;
  if (seed === undefined && weightFile === undefined) {
    problems.push('set either seed (an integer, for a reproducible random gate) or weightFile (raw f32, .npy or .safetensors)');
  }
  if (seed !== undefined && weightFile !== undefined) problems.push('set seed or weightFile, not both');
  if (seed !== undefined && !(typeof seed === 'number' && Number.isInteger(seed) && seed >= 0 && seed < 2 ** 32)) {
    problems.push(`seed must be an integer in [0, 2^32) (got ${JSON.stringify(seed)})`);
  }
  if (weightFile !== undefined && (typeof weightFile !== 'string' || weightFile.length === 0)) problems.push('weightFile must be a file path');
  if (weightTensor !== undefined && typeof weightTensor !== 'string') problems.push('weightTensor must be a tensor name');
  if (weightTensor !== undefined && weightFile === undefined) problems.push('weightTensor names a tensor of weightFile, which is not set');
  // The engine's bound, checked before a random gate of numExperts × inputDim values is drawn.
  if (positiveInteger(raw.numExperts) && raw.numExperts > 65536) problems.push(`numExperts must be at most 65536 (got ${raw.numExperts})`);
  const vectors: Partial<Record<(typeof VECTOR_KEYS)[number], Float32Array>> = {};
  for (const key of VECTOR_KEYS) {
    const value = raw[key];
    if (value === undefined) continue;
    if (!Array.isArray(value) || !value.every((v) => typeof v === 'number')) problems.push(`${key} must be an array of numbers`);
    else if (value.length !== raw.numExperts) problems.push(`${key} must have numExperts = ${String(raw.numExperts)} values (got ${value.length})`);
    else vectors[key] = Float32Array.from(value as number[]);
  }
  let rateLimit: RateLimitConfig | undefined;
  if (raw.rateLimit !== undefined) {
    const r = raw.rateLimit;
    const timeWindow = isObject(r) ? durationMs(r.timeWindow ?? 60_000) : Number.NaN;
    const unknown = isObject(r) ? unknownOptions(r, RATE_LIMIT_KEYS) : [];
    if (!isObject(r) || !positiveInteger(r.max)) problems.push(`rateLimit must be { max: positive integer, timeWindow?: ms or '1 minute' } (got ${JSON.stringify(r)})`);
    else if (unknown.length > 0) problems.push(...unknown.map((line) => `rateLimit.${line}`));
    else if (!(timeWindow > 0)) problems.push(`rateLimit.timeWindow must be a positive number of ms or a duration like '1 minute' (got ${JSON.stringify(r.timeWindow)})`);
    else rateLimit = { max: r.max, timeWindow };
  }
  for (const [key, known] of Object.entries(NESTED_KEYS)) {
    const value = raw[key];
    if (value !== undefined && !isObject(value)) problems.push(`${key} must be an object`);
    else if (value) problems.push(...unknownOptions(value, known).map((line) => `${key}.${line}`));
  }
  // The breaker is built only on CUDA: its values are checked here so that a CPU machine's validate
  // refuses what a GPU machine's serve would.
  if (isObject(raw.breaker) && unknownOptions(raw.breaker, NESTED_KEYS.breaker).length === 0) {
    try {
      breakerSettings(raw.breaker);
    } catch (error) {
      problems.push((error as Error).message);
    }
  }
  if (raw.bodyLimit !== undefined && !positiveInteger(raw.bodyLimit)) problems.push(`bodyLimit must be a positive integer of bytes (got ${JSON.stringify(raw.bodyLimit)})`);
  for (const key of ['name', 'description'] as const) {
    if (raw[key] !== undefined && typeof raw[key] !== 'string') problems.push(`${key} must be a string`);
  }
  if (problems.length > 0) return { problems };

  const numExperts = raw.numExperts as number;
  const inputDim = raw.inputDim as number;
  let weight: Float32Array | Tensor;
  let weightSource: string;
  if (typeof seed === 'number') {
    weight = randomGate(numExperts, inputDim, seed);
    weightSource = `seed ${seed}`;
  } else {
    const file = path.resolve(baseDir, weightFile as string);
    try {
      weight = loadWeightFile(file, numExperts, inputDim, weightTensor as string | undefined);
    } catch (error) {
      return { problems: [(error as Error).message] };
    }
    weightSource = weightTensor === undefined ? file : `${file}#${String(weightTensor)}`;
  }
  const router: Record<string, unknown> = { weight, ...vectors };
  for (const key of ROUTER_KEYS) if (raw[key] !== undefined) router[key] = raw[key];
  const config: RouterConfig = { router: router as unknown as RouterOptions, weightSource };
  if (rateLimit) config.rateLimit = rateLimit;
  if (raw.cache) config.cache = raw.cache as RoutingCacheOptions;
  if (raw.alerts) config.alerts = raw.alerts as AlertThresholds;
  if (raw.breaker) config.breaker = raw.breaker as RouterConfig['breaker'];
  if (raw.bodyLimit !== undefined) config.bodyLimit = raw.bodyLimit as number;
  if (raw.name !== undefined) config.name = raw.name as string;
  if (raw.description !== undefined) config.description = raw.description as string;
  return { config, problems };
}

function readJson(file: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw new RouterError('E_CONFIG', `cannot read config ${file}: ${(error as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new RouterError('E_CONFIG', `config ${file} is not valid JSON: ${(error as Error).message}`);
  }
}

/** Reads and checks a config file (DEFAULT_CONFIG without one); throws E_CONFIG listing every problem. */
export function loadConfig(file?: string): RouterConfig {
  const raw = file === undefined ? DEFAULT_CONFIG : readJson(file);
  const { config, problems } = checkConfig(raw, file === undefined ? process.cwd() : path.dirname(path.resolve(file)));
  if (!config) throw new RouterError('E_CONFIG', `${file ?? 'the default config'} is not usable:\n  - ${problems.join('\n  - ')}`);
  return config;
}

/**
 * Builds the served router: a DynamicRouter, behind a GPU→CPU breaker when it runs on CUDA, inside a
 * MonitoredRouter with the config's cache and alerts.
 */
export function createRouter(config: RouterConfig): MonitoredRouter {
  const primary = new DynamicRouter(config.router);
  let router: DynamicRouter | FailoverRouter = primary;
  try {
    if (primary.backend === 'cuda') {
      const fallback = new DynamicRouter({ ...config.router, device: 'cpu', backend: 'auto' });
      router = new FailoverRouter(primary, fallback, config.breaker);
    }
    return new MonitoredRouter(router, { cache: config.cache, alerts: config.alerts });
  } catch (error) {
    router.dispose();
    throw error;
  }
}

/** `moe-router validate`: every problem of a config file, or none. Builds the router once to be sure. */
export function validateConfig(file: string): string[] {
  let raw: unknown;
  try {
    raw = readJson(file);
  } catch (error) {
    return [(error as Error).message];
  }
  const { config, problems } = checkConfig(raw, path.dirname(path.resolve(file)));
  if (!config) return problems;
  try {
    createRouter(config).dispose();
  } catch (error) {
    // Option errors name every problem, a line each: one entry a problem.
    return error instanceof RouterError ? error.message.split('\n').map((line) => `${error.code}: ${line}`) : [String(error)];
  }
  return [];
}

/** `moe-router validate --config FILE`: prints what is wrong (or that nothing is) and returns the exit code. */
export function validateCommand(file: string | undefined): number {
  if (file === undefined) {
    process.stderr.write('moe-router validate: --config FILE is required\n');
    return 1;
  }
  const problems = validateConfig(file);
  if (problems.length === 0) {
    process.stdout.write(`${file}: ok\n`);
    return 0;
  }
  process.stderr.write(`${file}: ${problems.length} problem(s)\n${problems.map((p) => `  - ${p}\n`).join('')}`);
  return 1;
}

/** `moe-router card`: the card of the router a config file describes (the default config without one). */
export function cardCommand(configFile?: string): string {
  const config = loadConfig(configFile);
  const router = new DynamicRouter(config.router);
  try {
    return modelCard(router, { name: config.name, description: config.description });
  } finally {
    router.dispose();
  }
}
