/** DynamicRouter options (API.md) and their translation to the engine's numeric options. */
import type { NativeOptions } from './addon-types';
import { OptionProblems, optionNames, RouterError, shown, unknownOptions } from './errors';
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
  /** seed defaults to 0 (docs/semantics.md §8). */
  noise?: { std: number; seed?: number };
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

/** Every option's name. */
export const ROUTER_OPTIONS = optionNames<RouterOptions>({
  inputDim: true,
  numExperts: true,
  topK: true,
  weight: true,
  bias: true,
  minExperts: true,
  strategy: true,
  topP: true,
  threshold: true,
  scoring: true,
  order: true,
  normalize: true,
  scale: true,
  groups: true,
  selectionBias: true,
  biasUpdateRate: true,
  capacityFactor: true,
  minCapacity: true,
  dropPolicy: true,
  noise: true,
  dispatch: true,
  losses: true,
  validation: true,
  device: true,
  threads: true,
  backend: true,
  exactF32: true,
});
const GROUP_OPTIONS = optionNames<NonNullable<RouterOptions['groups']>>({ count: true, select: true });
const NOISE_OPTIONS = optionNames<NonNullable<RouterOptions['noise']>>({ std: true, seed: true });
const DISPATCH_OPTIONS = optionNames<{ blockSize: number }>({ blockSize: true });

/**
 * Checks the option types and maps names to engine codes; the engine checks the ranges. Throws
 * E_CONFIG naming every problem it found, a line each.
 */
export function toNativeOptions(o: RouterOptions): NativeOptions {
  if (o === null || typeof o !== 'object') {
    throw new RouterError('E_CONFIG', 'DynamicRouter needs an options object with inputDim, numExperts, topK and weight');
  }
  const check = new OptionProblems();
  for (const line of unknownOptions(o, ROUTER_OPTIONS)) check.note(line);
  for (const name of ['inputDim', 'numExperts', 'topK'] as const) {
    if (o[name] === undefined) check.note(`${name} is required`);
  }
  let dispatch = o.dispatch ?? false;
  if (typeof dispatch !== 'boolean' && (dispatch === null || typeof dispatch !== 'object')) {
    check.note(`dispatch must be a boolean or { blockSize } (got ${shown(dispatch)})`);
    dispatch = false;
  }
  if (typeof dispatch === 'object') {
    for (const line of unknownOptions(dispatch, DISPATCH_OPTIONS)) check.note(`dispatch.${line}`);
    if (dispatch.blockSize === undefined) check.note('dispatch.blockSize is required when dispatch is an object');
  }
  let groups = o.groups;
  if (groups !== undefined && (groups === null || typeof groups !== 'object')) {
    check.note('groups must be { count, select }');
    groups = undefined;
  }
  if (groups) for (const line of unknownOptions(groups, GROUP_OPTIONS)) check.note(`groups.${line}`);
  const groupCount = groups ? check.integer('groups.count', groups.count, 0) : 0;
  // The engine reads count 0 as "no groups"; a groups object asks for them, so 0 is a mistake here.
  if (groups && groupCount < 1) check.note(`groups.count must be an integer >= 1 (got ${shown(groups.count)})`);
  let noise = o.noise;
  if (noise !== undefined && (noise === null || typeof noise !== 'object')) {
    check.note('noise must be { std, seed }');
    noise = undefined;
  }
  if (noise) for (const line of unknownOptions(noise, NOISE_OPTIONS)) check.note(`noise.${line}`);
  const seed = noise ? check.integer('noise.seed', noise.seed, 0) : 0;
  // (Philox takes 64 bits; a double holds every integer below 2^53 exactly, and larger ones not.)
  if (seed < 0 || seed >= 2 ** 53) check.note(`noise.seed must be an integer in [0, 2^53) (got ${seed})`);
  check.boolean('exactF32', o.exactF32);
  check.boolean('normalize', o.normalize);
  check.boolean('losses', o.losses);
  const options: NativeOptions = {
    inputDim: check.integer('inputDim', o.inputDim, 0),
    numExperts: check.integer('numExperts', o.numExperts, 0),
    topK: check.integer('topK', o.topK, 0),
    minExperts: check.integer('minExperts', o.minExperts, 1),
    strategy: check.pick('strategy', o.strategy, STRATEGIES, 'top-k'),
    topP: check.real('topP', o.topP, 0.9),
    threshold: check.real('threshold', o.threshold, 0.1),
    scoring: check.pick('scoring', o.scoring, SCORINGS, 'softmax'),
    order: check.pick('order', o.order, ORDERS, 'softmax-then-select'),
    normalize: o.normalize === undefined ? -1 : o.normalize ? 1 : 0,
    scale: check.real('scale', o.scale, 1),
    groupCount,
    groupSelect: groups ? check.integer('groups.select', groups.select, 0) : 0,
    biasUpdateRate: check.real('biasUpdateRate', o.biasUpdateRate, 0),
    capacityFactor: check.real('capacityFactor', o.capacityFactor, 0),
    minCapacity: check.integer('minCapacity', o.minCapacity, 4),
    dropPolicy: check.pick('dropPolicy', o.dropPolicy, DROP_POLICIES, 'position'),
    noiseStd: noise ? check.real('noise.std', noise.std, 0) : 0,
    noiseSeed: seed,
    dispatch: dispatch ? 1 : 0,
    blockSize: typeof dispatch === 'object' ? check.integer('dispatch.blockSize', dispatch.blockSize, 1) : 1,
    losses: o.losses ? 1 : 0,
    validation: check.pick('validation', o.validation, VALIDATIONS, 'reject'),
    backend: check.pick('backend', o.backend, BACKENDS, 'auto'),
    device: check.pick('device', o.device, DEVICES, 'auto'),
    threads: check.integer('threads', o.threads, 0),
    exactF32: o.exactF32 ? 1 : 0,
  };
  check.raise();
  return options;
}
