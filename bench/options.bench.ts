/**
 * What the routing options beyond the default cost, on the canonical logits workloads (f32, the
 * router's default backend and threads): the default routing (top-k, softmax, normalized weights,
 * no bias or groups) selects across tokens with packed keys, and so do `normalize: false`, sigmoid
 * scoring without a bias, groups or losses and select-then-softmax without a bias (up to E = 128),
 * sigmoid or softmax scoring with a selection bias or groups (up to E = 512 and 16 groups), and the
 * candidates of top-p, threshold, entropy, norm and capacity by score; capacity by position routes
 * as without capacity, then drops (item 86); dispatch scatters on the thread pool (item 88); expert
 * choice selects each expert's tokens by radix selection (item 91); the other options route token
 * by token through the scores (docs/semantics.md §13; bench/NOTES.md items 57-60, 71-92). Each
 * option set is timed in alternating rounds with the default (`measureTogether`), so that a ratio
 * compares moments of the same phase of a shared machine; printed: median ms, ns a token, and the
 * ratio to the default.
 *
 *   npm run bench:options [-- --workload logits-64x8,logits-256x8]
 */
import { parseFlags } from '../src/args';
import { CANONICAL_WORKLOADS, DEFAULT_TIMING, formatMs, makeInputs, measureTogether, routerTask } from '../src/bench';
import { RouterError, type RouterOptions } from '../src/index';

type Extra = Partial<RouterOptions>;

/** The option sets, each named as a user would write it. */
function optionSets(experts: number): [string, Extra][] {
  const bias = new Float32Array(experts).map((_, e) => (e % 7) * 0.01);
  return [
    ['default', {}],
    ['losses: true', { losses: true }],
    ['normalize: false', { normalize: false }],
    ["order: 'select-then-softmax'", { order: 'select-then-softmax' }],
    ["scoring: 'sigmoid'", { scoring: 'sigmoid' }],
    ["scoring: 'sigmoid', selectionBias", { scoring: 'sigmoid', selectionBias: bias }],
    ['DeepSeek-V3 (sigmoid, bias, groups 8/4, scale 2.5)', { scoring: 'sigmoid', selectionBias: bias, groups: { count: 8, select: 4 }, normalize: true, scale: 2.5 }],
    ['selectionBias (softmax; ERNIE 4.5)', { selectionBias: bias }],
    ['DeepSeek-V2 (softmax, groups 8/3, normalize false)', { groups: { count: 8, select: 3 }, normalize: false, scale: 16 }],
    ["strategy: 'top-p'", { strategy: 'top-p', topP: 0.6 }],
    ["strategy: 'threshold'", { strategy: 'threshold', threshold: 0.05 }],
    ["strategy: 'entropy', minExperts: 2", { strategy: 'entropy', minExperts: 2 }],
    ["strategy: 'norm', minExperts: 2 (batch statistics)", { strategy: 'norm', minExperts: 2 }],
    ['capacityFactor: 1.25', { capacityFactor: 1.25 }],
    ['capacityFactor: 1 (about half the experts overflow)', { capacityFactor: 1 }],
    ["capacityFactor: 1, dropPolicy: 'score'", { capacityFactor: 1, dropPolicy: 'score' }],
    ['dispatch: true', { dispatch: true }],
    ["strategy: 'expert-choice'", { strategy: 'expert-choice' }],
  ];
}

async function main(): Promise<void> {
  const usage = 'usage: npm run bench:options [-- --workload logits-64x8,logits-256x8]';
  const flags = parseFlags(process.argv.slice(2), { workload: { type: 'string' } }, usage);
  const names = (flags.workload ?? 'logits-64x8,logits-256x8').split(',');
  const timing = { ...DEFAULT_TIMING, timeMs: 600 };
  for (const name of names) {
    const workload = CANONICAL_WORKLOADS.find((w) => w.name === name && w.kind === 'logits');
    if (!workload) throw new RouterError('E_CONFIG', `${name} is not a canonical logits workload`);
    const inputs = makeInputs(workload, 'f32');
    console.log(`${workload.name}: ${workload.tokens} tokens × ${workload.experts} experts, top-${workload.topK}, f32`);
    console.log(`${'options'.padEnd(52)} ${'backend'.padEnd(7)} ${'median ms'.padStart(9)} ${'ns/token'.padStart(9)} ${'× default'.padStart(9)}`);
    for (const [label, extra] of optionSets(workload.experts)) {
      const tasks = [{}, extra].map((options) => routerTask({ workload, dtype: 'f32', options }, inputs));
      const [plain, optioned] = await measureTogether(tasks.map((task) => task.run), timing);
      const ms = optioned!.median_ms;
      const ratio = ms / plain!.median_ms;
      console.log(`${label.padEnd(52)} ${tasks[1]!.router.backend.padEnd(7)} ${formatMs(ms).padStart(9)} ${((ms * 1e6) / workload.tokens).toFixed(0).padStart(9)} ${ratio.toFixed(2).padStart(9)}`);
      for (const task of tasks) task.router.dispose();
    }
    console.log('');
  }
}

main().catch((error: unknown) => {
  if (!(error instanceof RouterError)) throw error;
  process.stderr.write(`bench:options: ${error.code}: ${error.message}\n`);
  process.exitCode = 1;
});
