/** The model card: Markdown with YAML front matter (options, backend, stats) describing a router. */
import { engineVersion } from './engine';
import { optionNames, rejectUnknownOptions } from './errors';
import type { Routable } from './routable';

export interface ModelCardOptions {
  name?: string;
  description?: string;
}

const CARD_OPTIONS = optionNames<ModelCardOptions>({ name: true, description: true });

type Yaml = string | number | boolean | null | undefined | readonly Yaml[] | ArrayLike<number> | { [key: string]: Yaml };

/**
 * Numbers as JSON writes them (round-trip exact, no locale), with a mantissa of "1.0" where JSON writes
 * "1e-30", which YAML 1.1 readers (PyYAML) would take for a string; non-finite ones as YAML spells them.
 */
function scalar(value: number | string | boolean | null | undefined): string {
  if (typeof value === 'number') {
    if (Number.isFinite(value)) return String(value).replace(/^(-?\d+)e/, '$1.0e');
    return Number.isNaN(value) ? '.nan' : value > 0 ? '.inf' : '-.inf';
  }
  if (typeof value === 'string') return JSON.stringify(value); // a JSON string is a valid double-quoted YAML scalar
  return value === undefined || value === null ? 'null' : String(value);
}

/** Block-style YAML for plain objects; arrays (and typed arrays) in flow style. */
function yaml(value: { [key: string]: Yaml }, indent = ''): string[] {
  const lines: string[] = [];
  for (const [key, v] of Object.entries(value)) {
    if (v === undefined) continue;
    if (typeof v === 'object' && v !== null && 'length' in v) {
      lines.push(`${indent}${key}: [${Array.from(v as ArrayLike<number | string>, (x) => scalar(x)).join(', ')}]`);
    } else if (typeof v === 'object' && v !== null) {
      lines.push(`${indent}${key}:`, ...yaml(v as { [key: string]: Yaml }, `${indent}  `));
    } else {
      lines.push(`${indent}${key}: ${scalar(v)}`);
    }
  }
  return lines;
}

function round(value: number, digits = 6): number {
  return Number(value.toFixed(digits));
}

/** A parameter as the card's table shows it: six significant digits (1e-30 stays 1e-30). */
function significant(value: number): number {
  return Number(value.toPrecision(6));
}

/** The model card of a router; `router.modelCard(options)` calls this. */
export function modelCard(router: Routable, options: ModelCardOptions = {}): string {
  rejectUnknownOptions('modelCard option', options, CARD_OPTIONS);
  const name = options.name ?? `MoE router ${router.numExperts}×${router.inputDim}, top-${router.topK}`;
  const o = router.options;
  const stats = router.stats();
  const parameters = router.parameters;
  const strategy = o.strategy ?? 'top-k';
  // top-k gives every token topK experts; expert-choice may give a token none.
  const minExperts = strategy === 'top-k' ? router.topK : strategy === 'expert-choice' ? 0 : (o.minExperts ?? 1);
  const front = yaml({
    name,
    description: options.description,
    library: 'dynamic-moe-router',
    engine: engineVersion(),
    backend: router.backend,
    options: { ...o } as { [key: string]: Yaml },
    parameters,
    stats: {
      tokens: stats.tokens,
      calls: stats.calls,
      meanExpertsPerToken: round(stats.meanExpertsPerToken),
      flopReduction: round(stats.flopReduction),
      loadBalanceScore: round(stats.loadBalanceScore),
      droppedAssignments: stats.droppedAssignments,
      expertUtilization: Array.from(stats.expertUtilization, (u) => round(u)),
    },
  });
  const kRange = minExperts === router.topK ? `${router.topK}` : `${minExperts} to ${router.topK}`;
  const used = stats.tokens > 0;
  const body = [
    `# ${name}`,
    '',
    ...(options.description ? [options.description, ''] : []),
    '## Routing',
    '',
    '| | |',
    '|---|---|',
    `| gate | ${router.inputDim} → ${router.numExperts} experts |`,
    `| strategy | ${strategy}${strategy === 'top-p' ? ` (topP ${significant(parameters.topP)})` : strategy === 'threshold' ? ` (threshold ${significant(parameters.threshold)})` : ''} |`,
    `| experts per token | ${kRange} |`,
    `| scoring | ${o.scoring ?? 'softmax'}, ${o.order ?? 'softmax-then-select'} |`,
    `| capacity | ${o.capacityFactor ? `factor ${o.capacityFactor}, drop by ${o.dropPolicy ?? 'position'}` : 'unbounded'} |`,
    `| backend | ${router.backend} |`,
    '',
    '## Observed',
    '',
    used
      ? [
          `${stats.tokens} tokens in ${stats.calls} calls: ${round(stats.meanExpertsPerToken, 3)} experts per token on average,`,
          `${(100 * stats.flopReduction).toFixed(1)}% fewer expert FLOPs than static top-${router.topK},`,
          `load balance score ${round(stats.loadBalanceScore, 3)} (1 = even), ${stats.droppedAssignments} assignments dropped by capacity.`,
        ].join('\n')
      : 'No tokens routed yet.',
    '',
  ];
  return ['---', ...front, '---', '', ...body].join('\n');
}
