// The benchmark harness: the `bench` CLI's JSON lines (API.md), its flags, the canonical workload list,
// the floor arithmetic, and the onnxruntime anchor's graphs — encoded by bench/onnx-graph.ts and run
// by onnxruntime-node — against a hand computation and against our router. No timing is asserted.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { floorOf, workloadCost } from '../bench/floor';
import { createSession, gateGraph, logitsGraph } from '../bench/ort-anchor';
import { CANONICAL_WORKLOADS, canonicalCases, measureTogether, parseBenchArgs, type Workload } from '../src/bench';
import { backends } from '../src/engine';
import { normalGenerator, randomGate } from '../src/random';
import { engine, privateBuild, root } from './helpers/private-build';
import { DynamicRouter } from '../src/router';


describe('moe-router bench (CLI)', () => {
  // A private build of the CLI (helpers/private-build.ts), with the engine named explicitly.
  let build: ReturnType<typeof privateBuild>;
  let env: NodeJS.ProcessEnv;
  beforeAll(() => {
    build = privateBuild('moe-bench-cli');
    env = { ...process.env, MOE_ROUTER_NATIVE_PATH: engine() };
  }, 120_000);
  afterAll(() => build.remove());

  const cli = (...args: string[]) =>
    spawnSync(process.execPath, [path.join(build.dir, 'cli.js'), 'bench', ...args], { cwd: root, env, encoding: 'utf8' });
  const TINY = ['--tokens', '8', '--hidden', '16', '--experts', '8', '--top-k', '2', '--time', '20'];

  it('--json prints one JSON object a line with every promised field', () => {
    const run = cli(...TINY, '--json', '--backend', 'all');
    expect(run.status, run.stderr).toBe(0);
    const lines = run.stdout.trim().split('\n');
    expect(lines).toHaveLength(backends().length);
    const records = lines.map((line) => JSON.parse(line));
    records.forEach((r, i) => {
      expect(r).toMatchObject({ tokens: 8, hidden: 16, experts: 8, topK: 2, dtype: 'f32', backend: backends()[i] });
      expect(typeof r.workload).toBe('string');
      for (const field of ['median_ms', 'p99_ms', 'mean_ms', 'samples', 'tokens_per_s']) {
        expect(Number.isFinite(r[field]) && r[field] > 0, field).toBe(true);
      }
      expect(r.p99_ms).toBeGreaterThanOrEqual(r.median_ms);
    });
  });

  it('routes logits and other dtypes and strategies, and prints a table without --json', () => {
    const logits = cli('--tokens', '8', '--experts', '8', '--top-k', '2', '--logits', '--dtype', 'bf16', '--strategy', 'top-p', '--time', '20', '--json');
    expect(logits.status, logits.stderr).toBe(0);
    expect(JSON.parse(logits.stdout)).toMatchObject({ kind: 'logits', hidden: null, dtype: 'bf16', strategy: 'top-p' });
    const table = cli(...TINY);
    expect(table.status, table.stderr).toBe(0);
    expect(table.stdout).toMatch(/workload\s+dtype\s+tokens\s+hidden\s+experts\s+k\s+backend\s+median ms\s+p99 ms/);
    expect(table.stdout).toContain('gate-T8-D16-E8-k2');
  });

  it('rejects an unknown flag or value with E_CONFIG', () => {
    for (const args of [['--bogus'], ['--dtype', 'f64'], ['--workload', 'nope'], ['--tokens', '0']]) {
      const run = cli(...args);
      expect(run.status).toBe(1);
      expect(run.stderr).toContain('E_CONFIG');
    }
  });
});

describe('bench flags and workloads', () => {
  it('keeps the canonical workloads in step with ../shared/workloads.json', () => {
    const file = path.resolve(root, '../shared/workloads.json');
    if (!existsSync(file)) return; // a checkout without the shared folder
    const shared = JSON.parse(readFileSync(file, 'utf8')) as {
      gate: { name: string; T: number; D: number; E: number; k: number }[];
      logits: { name: string; T: number; E: number; k: number }[];
    };
    const expected: Workload[] = [
      ...shared.gate.map((w) => ({ name: w.name, kind: 'gate' as const, tokens: w.T, hidden: w.D, experts: w.E, topK: w.k })),
      ...shared.logits.map((w) => ({ name: w.name, kind: 'logits' as const, tokens: w.T, hidden: null, experts: w.E, topK: w.k })),
    ];
    expect(CANONICAL_WORKLOADS).toEqual(expected);
  });

  it('runs gate workloads in f32 and bf16 and logits workloads in f32 by default', () => {
    const cases = parseBenchArgs([]).cases.map((c) => `${c.workload.name}:${c.dtype}`);
    expect(cases).toEqual(canonicalCases().map((c) => `${c.workload.name}:${c.dtype}`));
    expect(cases).toHaveLength(5 * 2 + 3);
    expect(cases).toContain('mixtral-prefill:bf16');
    expect(cases).not.toContain('logits-64x8:bf16');
    expect(parseBenchArgs(['--logits']).cases.every((c) => c.workload.kind === 'logits')).toBe(true);
    expect(parseBenchArgs(['--workload', 'olmoe-prefill', '--dtype', 'f16']).cases.map((c) => c.dtype)).toEqual(['f16']);
  });
});

describe('measureTogether', () => {
  it('alternates the functions round by round and pools each one\'s samples', async () => {
    const calls: string[] = [];
    const busy = (name: string) => () => {
      calls.push(name);
      const until = performance.now() + 0.05;
      while (performance.now() < until);
    };
    const timing = { timeMs: 25, capMs: 1000, minSamples: 10, warmupMs: 0 };
    const [a, b] = await measureTogether([busy('a'), busy('b')], timing, 5);
    // Five runs of a, then of b, and so on: the calls switch names at least nine times.
    const switches = calls.filter((name, i) => i > 0 && name !== calls[i - 1]).length;
    expect(switches).toBeGreaterThanOrEqual(9);
    for (const m of [a!, b!]) {
      expect(m.samples).toBeGreaterThanOrEqual(10);
      expect(m.min_ms).toBeLessThanOrEqual(m.median_ms);
      expect(m.median_ms).toBeLessThanOrEqual(m.p99_ms);
      expect(m.min_ms).toBeGreaterThan(0);
    }
  });
});

describe('floor', () => {
  it('counts the input at its dtype, the f32 gate and the outputs, and takes the larger bound', () => {
    const mixtral = CANONICAL_WORKLOADS.find((w) => w.name === 'mixtral-prefill')!;
    const cost = workloadCost(mixtral, 'f32');
    expect(cost.flops).toBe(2 * 4096 * 4096 * 8);
    expect(cost.bytes).toBe(4096 * 4096 * 4 + 8 * 4096 * 4 + 4096 * 2 * 8 + 4096 * 4 + 8 * 4);
    const floor = floorOf(cost, { gflops: 160, gbps: 27 });
    expect(floor.bound).toBe('memory');
    expect(floor.ms).toBeCloseTo((cost.bytes / 27e9) * 1e3, 9);
    expect(workloadCost(mixtral, 'bf16').bytes).toBe(cost.bytes - 4096 * 4096 * 2);
    const logits = CANONICAL_WORKLOADS.find((w) => w.name === 'logits-64x8')!;
    expect(workloadCost(logits, 'f32')).toEqual({ flops: 0, bytes: 65536 * 64 * 4 + 65536 * 8 * 8 + 65536 * 4 + 64 * 4 });
  });
});

describe('onnxruntime anchor graphs (bench/onnx-graph.ts encoder)', () => {
  const softmax = (row: number[]) => {
    const exps = row.map(Math.exp);
    const sum = exps.reduce((a, b) => a + b, 0);
    return exps.map((e) => e / sum);
  };
  // Gate W [4, 3] and hidden [2, 3] whose logits are [1, 0, 3, 0] and [1, 2, 3, 1]:
  // top-2 are experts (2, 0) and (2, 1); the counts are [1, 1, 2, 0].
  const tiny: Workload = { name: 'tiny', kind: 'gate', tokens: 2, hidden: 3, experts: 4, topK: 2 };
  const weight = Float32Array.of(1, 0, 0, 0, 2, 0, 3, 0, 0, 0, 1, 0);
  const hidden = Float32Array.of(1, 0, 0, 1, 1, 0);
  const logits = [[1, 0, 3, 0], [1, 2, 3, 1]];
  const expectedWeights = [1 / (1 + Math.exp(-2)), Math.exp(-2) / (1 + Math.exp(-2)), 1 / (1 + Math.exp(-1)), Math.exp(-1) / (1 + Math.exp(-1))];

  it('encodes a gate graph that onnxruntime runs to the hand-computed routing and aux loss', async () => {
    const session = await createSession(gateGraph(tiny, weight), 1);
    const out = await session.run({ hidden: new ort.Tensor('float32', hidden, [2, 3]) });
    expect(Array.from(out.indices!.data as BigInt64Array, Number)).toEqual([2, 0, 2, 1]);
    Array.from(out.weights!.data as Float32Array).forEach((w, i) => expect(w).toBeCloseTo(expectedWeights[i]!, 6));
    const [p0, p1] = logits.map(softmax);
    const fraction = [1, 1, 2, 0].map((c) => c / 4);
    const aux = 4 * fraction.reduce((sum, f, e) => sum + f * (p0![e]! + p1![e]!) / 2, 0);
    expect((out.aux_loss!.data as Float32Array)[0]).toBeCloseTo(aux, 6);
    await session.release();
  });

  it('encodes a logits graph: softmax, top-k, renormalize', async () => {
    const session = await createSession(logitsGraph({ ...tiny, kind: 'logits', hidden: null }), 1);
    const out = await session.run({ logits: new ort.Tensor('float32', Float32Array.from(logits.flat()), [2, 4]) });
    expect(Array.from(out.indices!.data as BigInt64Array, Number)).toEqual([2, 0, 2, 1]);
    Array.from(out.weights!.data as Float32Array).forEach((w, i) => expect(w).toBeCloseTo(expectedWeights[i]!, 6));
    await session.release();
  });

  it('does the same work as our router on random data', async () => {
    const workload: Workload = { name: 'random', kind: 'gate', tokens: 64, hidden: 32, experts: 16, topK: 4 };
    const W = randomGate(16, 32, 3);
    const normal = normalGenerator(5);
    const x = Float32Array.from({ length: 64 * 32 }, () => normal());
    const router = new DynamicRouter({ inputDim: 32, numExperts: 16, topK: 4, weight: W, losses: true, backend: 'scalar' });
    const ours = router.route(x);
    const session = await createSession(gateGraph(workload, W), 1);
    const out = await session.run({ hidden: new ort.Tensor('float32', x, [64, 32]) });
    expect(Array.from(out.indices!.data as BigInt64Array, Number)).toEqual(Array.from(ours.experts));
    Array.from(out.weights!.data as Float32Array).forEach((w, i) => expect(w).toBeCloseTo(ours.weights[i]!, 5));
    expect((out.aux_loss!.data as Float32Array)[0]).toBeCloseTo(ours.auxLoss!, 5);
    ours.release();
    router.dispose();
    await session.release();
  });
});
