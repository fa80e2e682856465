/**
 * `moe-router bench`: times routing on the canonical workloads (or one shape) with tinybench.
 * The one measuring loop of the project: the CLI and the anchor comparison (bench/anchors.ts) call
 * `measure` (or `measureTogether`, its alternating form), so every number in a table was taken the
 * same way.
 */
import { Bench, hrtimeNow } from 'tinybench';
import { integerFlag, oneOf, parseFlags } from './args';
import { backends } from './engine';
import { allocate, RouterError } from './errors';
import { BACKENDS, STRATEGIES, type BackendName, type RouterOptions, type Strategy } from './options';
import { normalGenerator, randomGate, uniformGenerator } from './random';
import { DynamicRouter } from './router';
import { f32ToBf16, f32ToF16, Tensor, type DType } from './tensor';

export interface Workload {
  name: string;
  /** 'gate': hidden [T, D] @ W^T → softmax → top-k → renormalize → aux loss; 'logits': the same from given logits [T, E]. */
  kind: 'gate' | 'logits';
  tokens: number;
  /** D; null for logits workloads, which have no hidden states. */
  hidden: number | null;
  experts: number;
  topK: number;
}

const gate = (name: string, tokens: number, hidden: number, experts: number, topK: number): Workload => ({
  name, kind: 'gate', tokens, hidden, experts, topK,
});
const logits = (name: string, tokens: number, experts: number, topK: number): Workload => ({
  name, kind: 'logits', tokens, hidden: null, experts, topK,
});

/** The workloads of ../shared/workloads.json (test/bench.test.ts keeps this copy in step with it). */
export const CANONICAL_WORKLOADS: readonly Workload[] = [
  gate('decode-olmoe', 8, 2048, 64, 8),
  gate('mixtral-prefill', 4096, 4096, 8, 2),
  gate('olmoe-prefill', 4096, 2048, 64, 8),
  gate('qwen3-prefill', 2048, 4096, 128, 8),
  gate('dsv3-prefill', 1024, 7168, 256, 8),
  logits('logits-64x8', 65536, 64, 8),
  logits('logits-256x8', 16384, 256, 8),
  logits('logits-8x2', 65536, 8, 2),
];

/** The default run: gate workloads in f32 and bf16, logits workloads in f32. */
export function canonicalCases(): { workload: Workload; dtype: DType }[] {
  return CANONICAL_WORKLOADS.flatMap((workload) =>
    workload.kind === 'gate'
      ? [{ workload, dtype: 'f32' as const }, { workload, dtype: 'bf16' as const }]
      : [{ workload, dtype: 'f32' as const }],
  );
}

/**
 * How long one workload is measured. Samples are taken until `timeMs` has been spent and at least
 * `minSamples` are in; `minSamples` shrinks so that `capMs` is not passed (never below 3 samples).
 * A first call (the probe) sizes the run; when it takes less than `warmupMs`, tinybench also warms up
 * for `warmupMs`, otherwise the probe was the warm-up.
 */
export interface Timing {
  timeMs: number;
  capMs: number;
  minSamples: number;
  warmupMs: number;
}

export const DEFAULT_TIMING: Timing = { timeMs: 1000, capMs: 8000, minSamples: 10, warmupMs: 250 };
const FEWEST_SAMPLES = 3;

export interface Measurement {
  median_ms: number;
  p99_ms: number;
  mean_ms: number;
  /** The fastest sample: the least disturbed by other work on a busy machine. */
  min_ms: number;
  samples: number;
}

/** Times fn (sync, or async when it returns a promise) under the timing policy above. */
export async function measure(fn: () => unknown, timing: Timing = DEFAULT_TIMING): Promise<Measurement> {
  return summarize(await sample(fn, timing));
}

/**
 * Times several functions in `rounds` alternating rounds, each round giving every function a
 * 1/rounds share of the timing policy (warm-up in the first round only), and pools each one's
 * samples. For times compared with each other (bench/anchors.ts: ours against onnxruntime): the
 * development machine runs 30–50% slower in phases lasting seconds, and back-to-back runs of a
 * second each could land in different phases (decode-olmoe read 0.22× and 0.49× the anchor in two
 * runs a minute apart).
 */
export async function measureTogether(fns: readonly (() => unknown)[], timing: Timing = DEFAULT_TIMING, rounds = 5): Promise<Measurement[]> {
  const pooled: number[][] = fns.map(() => []);
  for (let round = 0; round < rounds; round++) {
    const share: Timing = {
      timeMs: timing.timeMs / rounds,
      capMs: timing.capMs / rounds,
      minSamples: Math.ceil(timing.minSamples / rounds),
      warmupMs: round === 0 ? timing.warmupMs : 0,
    };
    for (const [i, fn] of fns.entries()) pooled[i]!.push(...(await sample(fn, share)));
  }
  return pooled.map(summarize);
}

/** The latencies (ms) of fn under `timing`. */
async function sample(fn: () => unknown, timing: Timing): Promise<number[]> {
  const start = hrtimeNow();
  const probe = fn();
  const isAsync = probe instanceof Promise;
  if (isAsync) await probe;
  const probeMs = hrtimeNow() - start;
  const bench = new Bench({
    now: hrtimeNow,
    time: Math.min(timing.timeMs, timing.capMs),
    iterations: Math.max(FEWEST_SAMPLES, Math.min(timing.minSamples, Math.floor(timing.capMs / probeMs))),
    warmup: probeMs < timing.warmupMs,
    warmupTime: timing.warmupMs,
    warmupIterations: 1,
    throws: true,
  });
  bench.add('measure', fn);
  if (isAsync) await bench.run();
  else bench.runSync();
  return [...bench.tasks[0]!.result!.latency.samples];
}

/** Median (the mean of the middle two for an even count), p99 (nearest rank), mean and minimum. */
function summarize(samples: readonly number[]): Measurement {
  const sorted = [...samples].sort((a, b) => a - b);
  const n = sorted.length;
  const median = n % 2 === 1 ? sorted[(n - 1) / 2]! : (sorted[n / 2 - 1]! + sorted[n / 2]!) / 2;
  return {
    median_ms: median,
    p99_ms: sorted[Math.max(0, Math.ceil(0.99 * n) - 1)]!,
    mean_ms: sorted.reduce((sum, value) => sum + value, 0) / n,
    min_ms: sorted[0]!,
    samples: n,
  };
}

/**
 * Inputs rotate over at least this many bytes (twice the 32 MiB L3 of the development machine), so a
 * call never finds its input in cache from the call before; tiny shapes stop at MAX_ROTATION buffers.
 */
export const ROTATION_BYTES = 64 * 2 ** 20;
const MAX_ROTATION = 4096;
export const DTYPE_BYTES: Record<DType, number> = { f32: 4, f16: 2, bf16: 2 };

/** The row width of a workload's input: D for hidden states, E for logits. */
export function inputWidth(workload: Workload): number {
  return workload.hidden ?? workload.experts;
}

/** How many input buffers a workload rotates over. */
export function rotationCount(workload: Workload, dtype: DType): number {
  const bytes = workload.tokens * inputWidth(workload) * DTYPE_BYTES[dtype];
  return Math.min(MAX_ROTATION, Math.max(2, Math.ceil(ROTATION_BYTES / bytes)));
}

const POOL_VALUES = 1 << 21;
const pools = new Map<DType, Float32Array | Uint16Array>();

/** Standard normal values, drawn once per dtype and shared by every workload. */
function valuePool(dtype: DType): Float32Array | Uint16Array {
  let pool = pools.get(dtype);
  if (!pool) {
    const normal = normalGenerator(2024);
    const values = Float32Array.from({ length: POOL_VALUES }, () => normal());
    pool = dtype === 'f32' ? values : Uint16Array.from(values, dtype === 'bf16' ? f32ToBf16 : f32ToF16);
    pools.set(dtype, pool);
  }
  return pool;
}

/**
 * A workload's rotation set: standard normal hidden states (or logits) of the given dtype. Each buffer
 * is a different sequence of windows of a shared pool of normals, so building it costs a copy.
 */
export function makeInputs(workload: Workload, dtype: DType, seed = 1): Tensor[] {
  const pool = valuePool(dtype);
  const uniform = uniformGenerator(seed);
  const width = inputWidth(workload);
  const length = workload.tokens * width;
  return Array.from({ length: rotationCount(workload, dtype) }, () => {
    const data = allocate<Float32Array | Uint16Array>(dtype === 'f32' ? Float32Array : Uint16Array, length, `${workload.name}'s input`);
    for (let i = 0; i < length; ) {
      const start = Math.floor(uniform() * pool.length);
      const count = Math.min(length - i, pool.length - start);
      data.set(pool.subarray(start, start + count), i);
      i += count;
    }
    return Tensor.from(data, [workload.tokens, width], { dtype });
  });
}

export interface RouterCase {
  workload: Workload;
  dtype: DType;
  strategy?: Strategy;
  backend?: BackendName;
  threads?: number;
  /** Further router options, over the ones above (bench/options.bench.ts). */
  options?: Partial<RouterOptions>;
}

export interface BenchRecord extends Measurement {
  workload: string;
  kind: Workload['kind'];
  tokens: number;
  hidden: number | null;
  experts: number;
  topK: number;
  dtype: DType;
  strategy: Strategy;
  backend: string;
  /** As asked; 0 = one per core (the router's default). */
  threads: number;
  tokens_per_s: number;
}

/** The gate W [E, D] of a gate workload (N(0, 1/D), seeded: every engine measured gets the same). */
export function gateWeight(workload: Workload): Float32Array {
  return randomGate(workload.experts, workload.hidden!, 7);
}

/**
 * The router a case measures. Gate workloads compute the losses as well (the canonical description
 * ends in the aux loss); logits workloads get a placeholder gate, which routeLogits never reads.
 */
export function createRouter(c: RouterCase): DynamicRouter {
  const { workload } = c;
  return new DynamicRouter({
    inputDim: workload.hidden ?? 1,
    numExperts: workload.experts,
    topK: workload.topK,
    weight: workload.hidden === null ? new Float32Array(workload.experts) : gateWeight(workload),
    strategy: c.strategy,
    losses: workload.kind === 'gate',
    backend: c.backend,
    threads: c.threads,
    ...c.options,
  });
}

const significant = (value: number): number => Number(value.toPrecision(6));

/** A case's router, and the call that routes the next input of its rotation set and releases the result. */
export function routerTask(c: RouterCase, inputs: readonly Tensor[]): { router: DynamicRouter; run: () => void } {
  const router = createRouter(c);
  const route = c.workload.kind === 'gate' ? (x: Tensor) => router.route(x) : (x: Tensor) => router.routeLogits(x);
  let next = 0;
  return {
    router,
    run: () => {
      route(inputs[next]!).release();
      next = (next + 1) % inputs.length;
    },
  };
}

/** The record of one case measured on `backend`. */
export function benchRecord(c: RouterCase, backend: string, m: Measurement): BenchRecord {
  const { workload } = c;
  return {
    workload: workload.name,
    kind: workload.kind,
    tokens: workload.tokens,
    hidden: workload.hidden,
    experts: workload.experts,
    topK: workload.topK,
    dtype: c.dtype,
    strategy: c.strategy ?? 'top-k',
    backend,
    threads: c.threads ?? 0,
    median_ms: significant(m.median_ms),
    p99_ms: significant(m.p99_ms),
    mean_ms: significant(m.mean_ms),
    min_ms: significant(m.min_ms),
    samples: m.samples,
    tokens_per_s: Math.round(workload.tokens / (m.median_ms / 1000)),
  };
}

/** Times `route` (or `routeLogits`) of one case over its rotation set, releasing every result. */
export async function benchRouter(c: RouterCase, inputs: readonly Tensor[], timing: Timing = DEFAULT_TIMING): Promise<BenchRecord> {
  const { router, run } = routerTask(c, inputs);
  try {
    return benchRecord(c, router.backend, await measure(run, timing));
  } finally {
    router.dispose();
  }
}

/** A fixed-width text table, printed a row at a time. */
export interface Column {
  title: string;
  width: number;
  left?: boolean;
}

export function formatRow(columns: readonly Column[], cells: readonly string[]): string {
  return columns
    .map((column, i) => (column.left ? cells[i]!.padEnd(column.width) : cells[i]!.padStart(column.width)))
    .join('  ')
    .trimEnd();
}

export function formatMs(ms: number): string {
  return ms.toFixed(ms >= 100 ? 1 : ms >= 10 ? 2 : ms >= 1 ? 3 : 4);
}

export const BENCH_USAGE = `moe-router bench [options]   time routing with tinybench (no shape: every canonical workload)
  --tokens T --hidden D --experts E --top-k K   one shape instead (missing ones: 1024, 2048, 64, 8)
  --logits                 route given logits [T, E] (no gate); alone: the canonical logits workloads
  --dtype f32|bf16|f16     input dtype (default: gate workloads f32 and bf16, logits f32)
  --workload NAME[,NAME]   only these canonical workloads
  --strategy S             routing strategy (default top-k)
  --backend B|all|B,B      force a backend, or measure each one listed / available (default auto)
  --threads N              router threads (default 0: one per core)
  --time MS --cap MS       measuring time per workload and its cap (default 1000, 8000)
  --json                   one JSON object a line
`;

export interface BenchCommand {
  cases: { workload: Workload; dtype: DType }[];
  strategy?: Strategy;
  /** Backends to measure each case on; [undefined] = the router's choice. */
  backends: (BackendName | undefined)[];
  threads?: number;
  timing: Timing;
  json: boolean;
}

/** Reads the bench flags (API.md); throws E_CONFIG with what was wrong. */
export function parseBenchArgs(args: string[]): BenchCommand {
  const values = parseFlags(
    args,
    {
      tokens: { type: 'string' },
      hidden: { type: 'string' },
      experts: { type: 'string' },
      'top-k': { type: 'string' },
      dtype: { type: 'string' },
      logits: { type: 'boolean' },
      workload: { type: 'string' },
      strategy: { type: 'string' },
      backend: { type: 'string' },
      threads: { type: 'string' },
      time: { type: 'string' },
      cap: { type: 'string' },
      json: { type: 'boolean' },
    },
    BENCH_USAGE,
  );
  const dtype = oneOf('dtype', values.dtype, ['f32', 'bf16', 'f16'] as const);
  const isLogits = values.logits === true;
  const shape = {
    tokens: integerFlag('tokens', values.tokens, 1),
    hidden: integerFlag('hidden', values.hidden, 1),
    experts: integerFlag('experts', values.experts, 1),
    topK: integerFlag('top-k', values['top-k'], 1),
  };
  let cases: BenchCommand['cases'];
  if (Object.values(shape).some((v) => v !== undefined)) {
    if (values.workload !== undefined) throw new RouterError('E_CONFIG', '--workload and a shape (--tokens …) exclude each other');
    const T = shape.tokens ?? 1024;
    const E = shape.experts ?? 64;
    const k = shape.topK ?? 8;
    if (isLogits && shape.hidden !== undefined) throw new RouterError('E_CONFIG', '--hidden does not apply with --logits (routing given logits has no gate)');
    const workload = isLogits ? logits(`logits-T${T}-E${E}-k${k}`, T, E, k) : gate(`gate-T${T}-D${shape.hidden ?? 2048}-E${E}-k${k}`, T, shape.hidden ?? 2048, E, k);
    cases = [{ workload, dtype: dtype ?? 'f32' }];
  } else {
    const names = values.workload?.split(',');
    const unknown = names?.filter((name) => !CANONICAL_WORKLOADS.some((w) => w.name === name));
    if (unknown?.length) {
      throw new RouterError('E_CONFIG', `unknown workload ${unknown.join(', ')}; the canonical ones: ${CANONICAL_WORKLOADS.map((w) => w.name).join(', ')}`);
    }
    const chosen = canonicalCases().filter(
      (c) => (!names || names.includes(c.workload.name)) && (!isLogits || c.workload.kind === 'logits'),
    );
    if (chosen.length === 0) throw new RouterError('E_CONFIG', `--workload ${values.workload} has no logits workload; --logits selects only those`);
    cases = dtype === undefined ? chosen : [...new Set(chosen.map((c) => c.workload))].map((workload) => ({ workload, dtype }));
  }
  let backendList: (BackendName | undefined)[] = [undefined];
  if (values.backend === 'all') backendList = backends() as BackendName[];
  else if (values.backend !== undefined) backendList = values.backend.split(',').map((b) => oneOf('backend', b, BACKENDS));
  const timing = {
    ...DEFAULT_TIMING,
    timeMs: integerFlag('time', values.time, 1) ?? DEFAULT_TIMING.timeMs,
    capMs: integerFlag('cap', values.cap, 1) ?? DEFAULT_TIMING.capMs,
  };
  return {
    cases,
    strategy: oneOf('strategy', values.strategy, STRATEGIES),
    backends: backendList,
    threads: integerFlag('threads', values.threads, 0),
    timing,
    json: values.json === true,
  };
}

const BENCH_COLUMNS: readonly Column[] = [
  { title: 'workload', width: 22, left: true },
  { title: 'dtype', width: 5, left: true },
  { title: 'tokens', width: 6 },
  { title: 'hidden', width: 6 },
  { title: 'experts', width: 7 },
  { title: 'k', width: 2 },
  { title: 'backend', width: 7, left: true },
  { title: 'median ms', width: 9 },
  { title: 'p99 ms', width: 9 },
  { title: 'mean ms', width: 9 },
  { title: 'samples', width: 7 },
  { title: 'tokens/s', width: 12 },
];

/** `moe-router bench …`: prints a table, or JSON lines with --json, a row as each case finishes. */
export async function runBenchCommand(args: string[], out: (line: string) => void = (line) => process.stdout.write(`${line}\n`)): Promise<number> {
  const command = parseBenchArgs(args);
  const { timing } = command;
  if (!command.json) {
    out(`moe-router bench: strategy ${command.strategy ?? 'top-k'}, threads ${command.threads ?? 'one per core'}; tinybench, ` +
      `≥ ${timing.timeMs} ms and ≥ ${timing.minSamples} samples per row (capped at ${timing.capMs} ms, never < ${FEWEST_SAMPLES} samples), ` +
      `inputs rotated over ≥ ${ROTATION_BYTES / 2 ** 20} MiB`);
    out('');
    out(formatRow(BENCH_COLUMNS, BENCH_COLUMNS.map((c) => c.title)));
  }
  for (const { workload, dtype } of command.cases) {
    const inputs = makeInputs(workload, dtype);
    for (const backend of command.backends) {
      const r = await benchRouter({ workload, dtype, strategy: command.strategy, backend, threads: command.threads }, inputs, timing);
      out(command.json ? JSON.stringify(r) : formatRow(BENCH_COLUMNS, [
        r.workload, r.dtype, String(r.tokens), r.hidden === null ? '-' : String(r.hidden), String(r.experts), String(r.topK),
        r.backend, formatMs(r.median_ms), formatMs(r.p99_ms), formatMs(r.mean_ms), String(r.samples), r.tokens_per_s.toLocaleString('en-US'),
      ]));
    }
  }
  return 0;
}
