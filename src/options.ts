/** DynamicRouter options (API.md) and their translation to the engine's numeric options. */
import type { NativeOptions } from './addon-types';
import { RouterError } from './errors';
import type { Tensor } from './tensor';

export const STRATEGIES = ['top-k', 'top-p', 'threshold', 'entropy', 'norm', 'expert-choice'] as const;
export const SCORINGS = ['softmax', 'sigmoid'] as const;
export const ORDERS = ['softmax-then-select', 'select-then-softmax'] as const;
export const DROP_POLICIES = ['position', 'score'] as const;
export const VALIDATIONS = ['reject', 'sanitize'] as const;
export const BACKENDS = ['auto', 'scalar', 'avx2', 'avx512', 'neon', 'cuda'] as const;
export const DEVICES = ['auto', 'cpu', 'cuda'] as const;

export type Strategy = (typeof STRATEGIES)[number];
export type Scoring = (typeof SCORINGS)[number];
export type Order = (typeof ORDERS)[number];
export type DropPolicy = (typeof DROP_POLICIES)[number];
export type Validation = (typeof VALIDATIONS)[number];
export type BackendName = (typeof BACKENDS)[number];
export type DeviceName = (typeof DEVICES)[number];

export interface RouterOptions {
  inputDim: number;
  numExperts: number;
  topK: number;
  /** Gate weight [numExperts, inputDim], nn.Linear layout. */
  weight: Float32Array | Tensor;
  bias?: Float32Array;
  minExperts?: number;
  strategy?: Strategy;
  topP?: number;
  threshold?: number;
  scoring?: Scoring;
  order?: Order;
  normalize?: boolean;
  scale?: number;
  groups?: { count: number; select: number };
  selectionBias?: Float32Array;
  biasUpdateRate?: number;
  capacityFactor?: number;
  minCapacity?: number;
  dropPolicy?: DropPolicy;
  noise?: { std: number; seed: number };
  dispatch?: boolean | { blockSize: number };
  losses?: boolean;
  validation?: Validation;
  device?: DeviceName;
  threads?: number;
  backend?: BackendName;
  /**
   * CUDA, f32 hidden states: run the gate product in f32 FMA instead of on TF32 tensor cores (the
   * default, whose results agree with the CPU as closely as f16/bf16 input does). CPU backends are
   * always exact.
   */
  exactF32?: boolean;
}

function pick<T extends string>(name: string, value: T | undefined, allowed: readonly T[], fallback: T): number {
  const chosen = value ?? fallback;
  const index = allowed.indexOf(chosen);
  if (index < 0) {
    throw new RouterError('E_CONFIG', `option ${name} must be one of ${allowed.map((a) => `'${a}'`).join(', ')} (got ${JSON.stringify(value)})`);
  }
  return index;
}

function integer(name: string, value: number | undefined, fallback: number): number {
  const v = value ?? fallback;
  if (typeof v !== 'number' || !Number.isInteger(v)) {
    throw new RouterError('E_CONFIG', `option ${name} must be an integer (got ${JSON.stringify(value)})`);
  }
  return v;
}

function real(name: string, value: number | undefined, fallback: number): number {
  const v = value ?? fallback;
  if (typeof v !== 'number' || Number.isNaN(v)) {
    throw new RouterError('E_CONFIG', `option ${name} must be a number (got ${JSON.stringify(value)})`);
  }
  return v;
}

/** Checks the option types and maps names to engine codes; the engine checks the ranges. */
export function toNativeOptions(o: RouterOptions): NativeOptions {
  if (o === null || typeof o !== 'object') {
    throw new RouterError('E_CONFIG', 'DynamicRouter needs an options object with inputDim, numExperts, topK and weight');
  }
  for (const name of ['inputDim', 'numExperts', 'topK'] as const) {
    if (o[name] === undefined) throw new RouterError('E_CONFIG', `option ${name} is required`);
  }
  const dispatch = o.dispatch ?? false;
  if (typeof dispatch === 'object' && dispatch !== null && dispatch.blockSize === undefined) {
    throw new RouterError('E_CONFIG', 'option dispatch.blockSize is required when dispatch is an object');
  }
  const groups = o.groups;
  if (groups !== undefined && (groups === null || typeof groups !== 'object')) {
    throw new RouterError('E_CONFIG', 'option groups must be { count, select }');
  }
  // The engine reads count 0 as "no groups"; a groups object asks for them, so 0 is a mistake here.
  if (groups && !(Number.isInteger(groups.count) && groups.count >= 1)) {
    throw new RouterError('E_CONFIG', `option groups.count must be an integer >= 1 (got ${JSON.stringify(groups.count)})`);
  }
  const noise = o.noise;
  if (noise !== undefined && (noise === null || typeof noise !== 'object')) {
    throw new RouterError('E_CONFIG', 'option noise must be { std, seed }');
  }
  const seed = noise ? integer('noise.seed', noise.seed, 0) : 0;
  if (seed < 0) throw new RouterError('E_CONFIG', `option noise.seed must be a non-negative integer (got ${seed})`);
  if (o.exactF32 !== undefined && typeof o.exactF32 !== 'boolean') {
    throw new RouterError('E_CONFIG', `option exactF32 must be a boolean (got ${JSON.stringify(o.exactF32)})`);
  }
  if (o.normalize !== undefined && typeof o.normalize !== 'boolean') {
    throw new RouterError('E_CONFIG', `option normalize must be a boolean (got ${JSON.stringify(o.normalize)})`);
  }
  return {
    inputDim: integer('inputDim', o.inputDim, 0),
    numExperts: integer('numExperts', o.numExperts, 0),
    topK: integer('topK', o.topK, 0),
    minExperts: integer('minExperts', o.minExperts, 1),
    strategy: pick('strategy', o.strategy, STRATEGIES, 'top-k'),
    topP: real('topP', o.topP, 0.9),
    threshold: real('threshold', o.threshold, 0.1),
    scoring: pick('scoring', o.scoring, SCORINGS, 'softmax'),
    order: pick('order', o.order, ORDERS, 'softmax-then-select'),
    normalize: o.normalize === undefined ? -1 : o.normalize ? 1 : 0,
    scale: real('scale', o.scale, 1),
    groupCount: groups ? integer('groups.count', groups.count, 0) : 0,
    groupSelect: groups ? integer('groups.select', groups.select, 0) : 0,
    biasUpdateRate: real('biasUpdateRate', o.biasUpdateRate, 0),
    capacityFactor: real('capacityFactor', o.capacityFactor, 0),
    minCapacity: integer('minCapacity', o.minCapacity, 4),
    dropPolicy: pick('dropPolicy', o.dropPolicy, DROP_POLICIES, 'position'),
    noiseStd: noise ? real('noise.std', noise.std, 0) : 0,
    noiseSeed: seed,
    dispatch: dispatch ? 1 : 0,
    blockSize: typeof dispatch === 'object' ? integer('dispatch.blockSize', dispatch.blockSize, 1) : 1,
    losses: o.losses ? 1 : 0,
    validation: pick('validation', o.validation, VALIDATIONS, 'reject'),
    backend: pick('backend', o.backend, BACKENDS, 'auto'),
    device: pick('device', o.device, DEVICES, 'auto'),
    threads: integer('threads', o.threads, 0),
    exactF32: o.exactF32 ? 1 : 0,
  };
}
