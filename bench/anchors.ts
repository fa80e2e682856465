/**
 * `npm run bench:anchors`: in one run, on the same workloads, our router against PyTorch CPU
 * (bench/anchor_torch.py under Debian's python3-torch) and onnxruntime-node, with the two machine
 * ceilings measured by PyTorch, the floor of every workload and the ratios against issue 3's targets.
 * PyTorch runs first, in its own process; onnxruntime and our cases of each workload are then timed in
 * five alternating rounds (`measureTogether`). Prints a table and writes it as JSON under bench/results/.
 *
 * Flags: those of `moe-router bench` (a shape or --workload, --dtype, --logits, --backend, --threads
 * (default 2 here), --time, --cap, --json: print the JSON document instead of the table), plus
 * --python PATH (default /usr/bin/python3, Debian's interpreter, which sees python3-torch).
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  benchRecord,
  formatMs,
  formatRow,
  gateWeight,
  makeInputs,
  measureTogether,
  parseBenchArgs,
  rotationCount,
  routerTask,
  type BenchRecord,
  type Column,
  type Measurement,
  type Timing,
  type Workload,
} from '../src/bench';
import { RouterError } from '../src/errors';
import type { DType } from '../src/tensor';
import { floorOf, TARGETS, workloadCost, type Ceilings, type Target } from './floor';
import { createSession, feeds, gateGraph, logitsGraph, ortVersion } from './ort-anchor';

// Built to dist/bench-anchors.js: the repository root is one level up.
const ROOT = path.resolve(__dirname, '..');
const TORCH_SCRIPT = path.join(ROOT, 'bench', 'anchor_torch.py');
const RESULTS = path.join(ROOT, 'bench', 'results');
const DEFAULT_PYTHON = '/usr/bin/python3';
const DEFAULT_THREADS = 2;

interface TorchRun {
  info: { torch: string; blas: string; threads: number };
  gemm: Measurement & { n: number; gflops: number };
  read: Measurement & { bytes: number; gbps: number };
  workloads: Map<string, Measurement>;
}

function runTorch(python: string, workloads: Workload[], threads: number, timing: Timing): TorchRun {
  const request = {
    threads,
    timing,
    workloads: workloads.map((w) => ({ ...w, buffers: rotationCount(w, 'f32') })),
  };
  const child = spawnSync(python, [TORCH_SCRIPT], {
    input: JSON.stringify(request),
    encoding: 'utf8',
    stdio: ['pipe', 'pipe', 'inherit'],
    maxBuffer: 1 << 26,
  });
  if (child.error || child.status !== 0) {
    throw new Error(`${python} ${TORCH_SCRIPT} failed (${child.error?.message ?? `exit ${child.status}`}); ` +
      'the PyTorch anchor needs Debian\'s python3-torch: apt-get install -y python3-torch libopenblas0-openmp');
  }
  const run: Partial<TorchRun> = { workloads: new Map() };
  for (const line of child.stdout.split('\n').filter(Boolean)) {
    const { type, name, ...message } = JSON.parse(line);
    if (type === 'info') run.info = message;
    else if (name === 'gemm') run.gemm = message;
    else if (name === 'read') run.read = message;
    else run.workloads!.set(name, message);
  }
  return run as TorchRun;
}

/** onnxruntime's session for a workload, and the call that runs it on the next input of the rotation. */
async function ortTask(workload: Workload, inputs: Float32Array[], threads: number): Promise<{ run: () => Promise<unknown>; release: () => Promise<void> }> {
  const graph = workload.kind === 'gate' ? gateGraph(workload, gateWeight(workload)) : logitsGraph(workload);
  const session = await createSession(graph, threads);
  const rotation = feeds(graph, inputs);
  let next = 0;
  return {
    run: () => {
      const run = session.run(rotation[next]!);
      next = (next + 1) % rotation.length;
      return run;
    },
    release: () => session.release(),
  };
}

interface Row {
  workload: string;
  dtype: DType;
  backend: string;
  ours: BenchRecord;
  /** The anchors run in f32; a bf16 row is compared with them. */
  torch: Measurement;
  ort: Measurement;
  best_anchor: 'torch' | 'ort';
  best_anchor_ms: number;
  flops: number;
  bytes: number;
  floor_ms: number;
  bound: 'compute' | 'memory';
  ours_over_anchor: number;
  ours_over_floor: number;
  target: Target | null;
}

function compare(ours: BenchRecord, workload: Workload, torch: Measurement, ort: Measurement, ceilings: Ceilings): Row {
  const best = torch.median_ms <= ort.median_ms ? 'torch' : 'ort';
  const bestMs = Math.min(torch.median_ms, ort.median_ms);
  const cost = workloadCost(workload, ours.dtype);
  const floor = floorOf(cost, ceilings);
  return {
    workload: workload.name,
    dtype: ours.dtype,
    backend: ours.backend,
    ours,
    torch,
    ort,
    best_anchor: best,
    best_anchor_ms: bestMs,
    ...cost,
    floor_ms: floor.ms,
    bound: floor.bound,
    ours_over_anchor: ours.median_ms / bestMs,
    ours_over_floor: ours.median_ms / floor.ms,
    target: TARGETS[`${workload.name}:${ours.dtype}`] ?? null,
  };
}

const ratio = (value: number, target: number | undefined): string =>
  `${value.toFixed(value >= 10 ? 1 : 2)}${target === undefined ? '' : ` ${value <= target ? '✓' : '✗'} ≤${target}`}`;

const COLUMNS: readonly Column[] = [
  { title: 'workload', width: 22, left: true },
  { title: 'dtype', width: 5, left: true },
  { title: 'backend', width: 7, left: true },
  { title: 'ours ms', width: 9 },
  { title: 'torch ms', width: 9 },
  { title: 'ort ms', width: 9 },
  { title: 'floor ms', width: 9 },
  { title: 'bound', width: 7, left: true },
  { title: 'ours/best anchor', width: 18, left: true },
  { title: 'ours/floor', width: 14, left: true },
];

function takePython(args: string[]): { python: string; rest: string[] } {
  const i = args.indexOf('--python');
  if (i < 0) return { python: DEFAULT_PYTHON, rest: args };
  return { python: args[i + 1] ?? DEFAULT_PYTHON, rest: [...args.slice(0, i), ...args.slice(i + 2)] };
}

async function main(argv: string[]): Promise<void> {
  const { python, rest } = takePython(argv);
  const command = parseBenchArgs(rest);
  if (command.strategy !== undefined && command.strategy !== 'top-k') {
    throw new RouterError('E_CONFIG', 'the anchors implement top-k routing only; leave --strategy out');
  }
  const threads = command.threads ?? DEFAULT_THREADS;
  const { timing } = command;
  const log = (line: string) => process.stderr.write(`${line}\n`);
  const workloads = [...new Set(command.cases.map((c) => c.workload))];
  const started = new Date();
  const loadBefore = os.loadavg();

  log(`PyTorch: ceilings, then ${workloads.length} workloads (${python})`);
  const torch = runTorch(python, workloads, threads, timing);
  const ceilings: Ceilings = { gflops: torch.gemm.gflops, gbps: torch.read.gbps };

  // onnxruntime and our cases of a workload are timed in alternating rounds (measureTogether), so that
  // the ratios between them do not depend on which of the machine's phases each happened to fall in.
  const rows: Row[] = [];
  for (const workload of workloads) {
    const dtypes = command.cases.filter((c) => c.workload === workload).map((c) => c.dtype);
    const cases = dtypes.flatMap((dtype) => command.backends.map((backend) => ({ workload, dtype, backend, threads })));
    log(`  onnxruntime and ours, alternating: ${workload.name} (${cases.map((c) => `${c.dtype}${c.backend ? ` ${c.backend}` : ''}`).join(', ')})`);
    const inputs = new Map(dtypes.map((dtype) => [dtype, makeInputs(workload, dtype)]));
    const f32 = inputs.get('f32') ?? makeInputs(workload, 'f32');
    const ort = await ortTask(workload, f32.map((t) => t.data as Float32Array), threads);
    const ours: ReturnType<typeof routerTask>[] = [];
    try {
      for (const c of cases) ours.push(routerTask(c, inputs.get(c.dtype)!));
      const [ortTime, ...ourTimes] = await measureTogether([ort.run, ...ours.map((task) => task.run)], timing);
      cases.forEach((c, i) => {
        const record = benchRecord(c, ours[i]!.router.backend, ourTimes[i]!);
        rows.push(compare(record, workload, torch.workloads.get(workload.name)!, ortTime!, ceilings));
      });
    } finally {
      for (const task of ours) task.router.dispose();
      await ort.release();
    }
  }

  const document = {
    date: started.toISOString(),
    args: argv,
    machine: {
      cpu: os.cpus()[0]?.model ?? 'unknown',
      cores: os.availableParallelism(),
      memory_gib: Math.round(os.totalmem() / 2 ** 30),
      load_average_before: loadBefore,
      load_average_after: os.loadavg(),
    },
    software: { node: process.version, torch: torch.info.torch, blas: torch.info.blas, onnxruntime_node: ortVersion() },
    threads,
    timing,
    ceilings: {
      gemm_gflops: ceilings.gflops,
      gemm: torch.gemm,
      read_gbps: ceilings.gbps,
      read: torch.read,
    },
    rows,
  };
  mkdirSync(RESULTS, { recursive: true });
  const file = path.join(RESULTS, `anchors-${started.toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, `${JSON.stringify(document, null, 2)}\n`);

  if (command.json) {
    process.stdout.write(`${JSON.stringify(document)}\n`);
    return;
  }
  const out = (line: string) => process.stdout.write(`${line}\n`);
  out('');
  out(`${document.machine.cpu}, ${document.machine.cores} cores; load average ${loadBefore.map((l) => l.toFixed(2)).join(' ')} before, ` +
    `${document.machine.load_average_after.map((l) => l.toFixed(2)).join(' ')} after`);
  out(`Node ${process.version}, PyTorch ${torch.info.torch} (${torch.info.blas}), onnxruntime-node ${ortVersion()}; ${threads} threads each`);
  out(`Ceilings: FP32 GEMM ${ceilings.gflops.toFixed(1)} GFLOP/s (torch.mm ${torch.gemm.n}³), ` +
    `memory read ${ceilings.gbps.toFixed(1)} GB/s (torch.sum of ${torch.read.bytes / 2 ** 30} GiB)`);
  if (!/openblas|mkl|blis/i.test(torch.info.blas)) {
    out(`WARNING: PyTorch runs on ${torch.info.blas}, not an optimized BLAS: the GEMM ceiling and the torch anchor are too slow. ` +
      'apt-get install -y libopenblas0-openmp');
  }
  out('Median times (ours and onnxruntime in alternating rounds); anchors in f32 (a bf16 row is compared with them); ' +
    'floor = max(FLOPs / GEMM, bytes / read bandwidth)');
  out('');
  out(formatRow(COLUMNS, COLUMNS.map((c) => c.title)));
  for (const r of rows) {
    out(formatRow(COLUMNS, [
      r.workload, r.dtype, r.backend, formatMs(r.ours.median_ms), formatMs(r.torch.median_ms), formatMs(r.ort.median_ms),
      formatMs(r.floor_ms), r.bound, ratio(r.ours_over_anchor, r.target?.anchor), ratio(r.ours_over_floor, r.target?.floor),
    ]));
  }
  out('');
  out(`Written to ${path.relative(process.cwd(), file)}`);
}

main(process.argv.slice(2)).catch((error: unknown) => {
  if (!(error instanceof RouterError)) throw error;
  process.stderr.write(`bench:anchors: ${error.code}: ${error.message}\n`);
  process.exitCode = 1;
});
