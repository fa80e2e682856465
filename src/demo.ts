/** `moe-router demo`: routes a built-in OLMoE-shaped batch and shows how the experts are used. */
import { allocate } from './errors';
import { normalGenerator, uniformGenerator } from './random';
import { DynamicRouter } from './router';

export interface DemoOptions {
  tokens?: number;
  backend?: 'auto' | 'scalar' | 'avx2' | 'avx512' | 'neon' | 'cuda';
  out?: (line: string) => void;
}

const D = 2048;
const E = 64;
const K = 8;
const CLUSTERS = 16;
const MIN_EXPERTS = 2;

/**
 * Hidden states drawn around 16 topic centres (half of the tokens sit on one topic, half between two),
 * and a gate whose expert rows lean towards those centres (4 experts per topic) plus noise, so that
 * experts specialise the way trained ones do and some tokens are clearly easier than others.
 */
function demoData(tokens: number): { weight: Float32Array; hidden: Float32Array } {
  const normal = normalGenerator(20240607);
  const uniform = uniformGenerator(7);
  const topic = () => Math.floor(uniform() * CLUSTERS);
  const centres = Array.from({ length: CLUSTERS }, () => Float32Array.from({ length: D }, () => normal()));
  const weight = new Float32Array(E * D);
  for (let e = 0; e < E; e++) {
    const centre = centres[e % CLUSTERS]!;
    for (let d = 0; d < D; d++) weight[e * D + d] = (0.1 * centre[d]! + normal()) / Math.sqrt(D);
  }
  const hidden = allocate(Float32Array, tokens * D, `--tokens ${tokens} (× ${D} hidden values)`);
  for (let t = 0; t < tokens; t++) {
    const a = centres[topic()]!;
    const b = centres[topic()]!;
    const mix = uniform() < 0.5 ? 1 : 0.5 + 0.5 * uniform();
    for (let d = 0; d < D; d++) hidden[t * D + d] = mix * a[d]! + (1 - mix) * b[d]! + normal();
  }
  return { weight, hidden };
}

function bar(fraction: number, width: number): string {
  const cells = Math.max(0, Math.min(width, Math.round(fraction * width)));
  return '█'.repeat(cells) + '·'.repeat(width - cells);
}

export function runDemo(options: DemoOptions = {}): void {
  const out = options.out ?? ((line: string) => console.log(line));
  const tokens = options.tokens ?? 1024;
  const { weight, hidden } = demoData(tokens);
  const router = new DynamicRouter({
    inputDim: D,
    numExperts: E,
    topK: K,
    weight,
    strategy: 'top-p',
    minExperts: MIN_EXPERTS,
    losses: true,
    backend: options.backend ?? 'auto',
  });
  // Ask for 30% fewer expert FLOPs than static top-8: calibrate top-p to 5.6 experts per token.
  const target = 0.7 * K;
  const calibration = router.calibrate(hidden, { meanExperts: target });
  router.route(hidden).release(); // warm-up
  router.resetStats();
  const times: number[] = [];
  let last = router.route(hidden);
  for (let i = 0; i < 5; i++) {
    last.release();
    const start = process.hrtime.bigint();
    last = router.route(hidden);
    times.push(Number(process.hrtime.bigint() - start) / 1e6);
  }
  times.sort((a, b) => a - b);
  const median = times[Math.floor(times.length / 2)]!;
  const stats = router.stats();

  const histogram = new Array<number>(K + 1).fill(0);
  for (const k of last.expertsPerToken) histogram[k]! += 1;

  out('dynamic-moe-router demo: OLMoE-shaped gate, clustered hidden states');
  out('');
  out(`  backend             ${router.backend}`);
  out(`  batch               ${tokens} tokens × ${D} hidden → ${E} experts, k ∈ [${MIN_EXPERTS}, ${K}]`);
  out(`  strategy            top-p, calibrated to ${target.toFixed(1)} experts/token → topP = ${calibration.parameter.toFixed(4)}`);
  out(`  route time          ${median.toFixed(2)} ms (median of ${times.length})`);
  out(`  throughput          ${Math.round(tokens / (median / 1000)).toLocaleString('en-US')} tokens/s`);
  out(`  experts per token   ${stats.meanExpertsPerToken.toFixed(2)} (static top-${K}: ${K}) → ${(100 * stats.flopReduction).toFixed(1)}% fewer expert FLOPs`);
  out(`  load balance score  ${stats.loadBalanceScore.toFixed(3)} (1 = perfectly even)`);
  out(`  aux loss            ${last.auxLoss!.toFixed(3)} (1 = uniform)   router entropy ${last.entropy!.toFixed(3)}`);
  out('');
  out('  experts per token');
  const maxCount = Math.max(...histogram);
  for (let k = MIN_EXPERTS; k <= K; k++) {
    out(`    k=${k}  ${bar(histogram[k]! / maxCount, 40)} ${String(histogram[k]).padStart(6)}`);
  }
  out('');
  out('  expert utilization (share of all assignments; even = ' + (100 / E).toFixed(2) + '%)');
  const util = stats.expertUtilization;
  const maxUtil = Math.max(...util);
  for (let row = 0; row < E / 4; row++) {
    const cells: string[] = [];
    for (let col = 0; col < 4; col++) {
      const e = col * (E / 4) + row;
      cells.push(`e${String(e).padStart(2, '0')} ${bar(util[e]! / maxUtil, 12)} ${(100 * util[e]!).toFixed(1).padStart(4)}%`);
    }
    out('    ' + cells.join('   '));
  }
  last.release();
  router.dispose();
}
