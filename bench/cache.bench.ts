/**
 * What the routing cache and the monitor cost, with tinybench:
 *   plain      router.route(x)                      (x changes every call)
 *   miss       cache.route(x), request mode          (x changes every call: hash, route, copy, store, evict)
 *   hit        cache.route(x), request mode          (the same x: hash, look up, copy out)
 *   tok-miss   cache.route(x), token mode            (every row new)
 *   tok-hit    cache.route(x), token mode            (every row cached)
 *   monitored  MonitoredRouter.route(x), no cache    (timing and counting per call)
 * and then the content hash alone (GB/s over 8 KB, 1 MB, 64 MB).
 * "pays above" is the hit rate above which a request-mode cache costs less than routing every call.
 * Every round runs each task briefly, one after another, and a cost is the median over the rounds of
 * (task / plain − 1) within the round: a shared machine here has phases of a few seconds in which
 * everything runs 30–50% slower, and short interleaved rounds put both sides of a ratio in the same
 * phase. Times are the median of the rounds' medians.
 *
 *   npm run bench:cache
 */
import { Bench } from 'tinybench';
import { MonitoredRouter, RoutingCache, DynamicRouter } from '../src/index';
import { loadNative } from '../src/native';
import { normalGenerator, randomGate } from '../src/random';

interface Shape {
  name: string;
  tokens: number;
  hidden: number;
  experts: number;
  topK: number;
  logits?: boolean;
}

const SHAPES: Shape[] = [
  { name: 'olmoe-decode', tokens: 1, hidden: 2048, experts: 64, topK: 8 },
  { name: 'olmoe-batch64', tokens: 64, hidden: 2048, experts: 64, topK: 8 },
  { name: 'qwen3-batch16', tokens: 16, hidden: 4096, experts: 128, topK: 8 },
  { name: 'logits-64x8', tokens: 64, hidden: 0, experts: 64, topK: 8, logits: true },
];
/** Small enough to fill within a second or two of misses: steady state for a stream of new inputs. */
const CACHE_BYTES = 16 << 20;
const ROUNDS = 41;
const TIME_MS = 25;

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

/** Per task: its median time (µs) and its median ratio to plain within a round. */
interface Measured {
  us: Record<string, number>;
  ratio: Record<string, number>;
}

async function measure(shape: Shape): Promise<Measured> {
  const width = shape.logits ? shape.experts : shape.hidden;
  const router = new DynamicRouter({
    inputDim: shape.logits ? 1 : shape.hidden,
    numExperts: shape.experts,
    topK: shape.topK,
    weight: randomGate(shape.experts, shape.logits ? 1 : shape.hidden, 1),
  });
  const twin = new DynamicRouter({ ...router.options, weight: randomGate(shape.experts, shape.logits ? 1 : shape.hidden, 1) });
  const request = new RoutingCache(router, { mode: 'request', maxBytes: CACHE_BYTES });
  const token = new RoutingCache(router, { mode: 'token', maxBytes: CACHE_BYTES });
  const monitored = new MonitoredRouter(twin);
  const normal = normalGenerator(2);
  const x = Float32Array.from({ length: shape.tokens * width }, () => normal());
  const route = (target: { route(v: Float32Array): { release(): void }; routeLogits(v: Float32Array): { release(): void } }, v: Float32Array) =>
    (shape.logits ? target.routeLogits(v) : target.route(v)).release();
  let counter = 0;
  /** A new input each call: the first value of every row moves, so no row repeats. */
  const fresh = () => {
    counter += 1;
    for (let t = 0; t < shape.tokens; t++) x[t * width] = counter;
    return x;
  };
  const same = Float32Array.from(x);
  // Misses are timed on full caches, which evict an entry for every one they store.
  for (const cache of [request, token]) while (cache.cacheStats().evictions === 0) route(cache, fresh());
  route(request, same);
  route(token, same);
  const bench = new Bench({ time: TIME_MS, warmupTime: 5 });
  bench
    .add('plain', () => route(router, fresh()))
    .add('miss', () => route(request, fresh()))
    .add('hit', () => route(request, same))
    .add('tok-miss', () => route(token, fresh()))
    .add('tok-hit', () => route(token, same))
    .add('monitored', () => route(monitored, fresh()));
  const samples = new Map<string, number[]>();
  const ratios = new Map<string, number[]>();
  for (let round = 0; round < ROUNDS; round++) {
    await bench.run();
    const us = new Map(bench.tasks.map((task) => [task.name, task.result!.latency.p50! * 1000]));
    for (const [name, value] of us) {
      samples.set(name, [...(samples.get(name) ?? []), value]);
      ratios.set(name, [...(ratios.get(name) ?? []), value / us.get('plain')!]);
    }
  }
  request.dispose(); // disposes router; token shares it
  monitored.dispose();
  const medians = (map: Map<string, number[]>) => Object.fromEntries([...map].map(([name, values]) => [name, median(values)]));
  return { us: medians(samples), ratio: medians(ratios) };
}

async function main(): Promise<void> {
  const rows = [];
  for (const shape of SHAPES) {
    const { us, ratio } = await measure(shape);
    const pct = (task: string) => `${((ratio[task]! - 1) * 100).toFixed(1)}%`;
    rows.push({
      workload: shape.name,
      'T×D→E,k': `${shape.tokens}×${shape.logits ? 'logits' : shape.hidden}→${shape.experts},${shape.topK}`,
      'plain µs': us.plain!.toFixed(1),
      'miss µs': us.miss!.toFixed(1),
      'miss cost': pct('miss'),
      'hit µs': us.hit!.toFixed(1),
      'hit speed-up': `${(1 / ratio.hit!).toFixed(1)}×`,
      'pays above': breakEven(ratio.miss! - 1, ratio.hit!),
      'tok-miss cost': pct('tok-miss'),
      'tok-hit speed-up': `${(1 / ratio['tok-hit']!).toFixed(1)}×`,
      'monitored cost': pct('monitored'),
    });
  }
  console.table(rows);
  console.table(await hashSpeed());
}

/**
 * The hit rate above which a cache costs less than routing every request: p·h + (1 − p)(1 + m) < 1,
 * with m what a miss adds to a route and h a hit's cost, both as shares of a route.
 */
function breakEven(m: number, h: number): string {
  return `${((100 * m) / (1 + m - h)).toFixed(0)}%`;
}

/** The key's hash alone (native moe_hash128 through the binding), from cache (8 KB, 1 MB) and from DRAM (64 MB). */
async function hashSpeed(): Promise<Record<string, string>[]> {
  const { hash128 } = loadNative();
  const rows = [];
  for (const bytes of [8 << 10, 1 << 20, 64 << 20]) {
    const data = new Uint8Array(bytes).map((_, i) => (i * 2654435761) >>> 24);
    const bench = new Bench({ time: 300 });
    bench.add('hash', () => hash128(data));
    await bench.run();
    const seconds = bench.tasks[0]!.result!.latency.p50! / 1000;
    rows.push({ bytes: String(bytes), 'µs': (seconds * 1e6).toFixed(2), 'GB/s': (bytes / seconds / 1e9).toFixed(1) });
  }
  return rows;
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
