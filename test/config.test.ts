// The config file: weights from a seed, raw f32, .npy and .safetensors (f32/f16/bf16), every problem
// reported with a clear message, `moe-router validate` and `card` (node dist/cli.js), and modelCard.
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { DynamicRouter, Tensor, checkConfig, createRouter, f32ToBf16, f32ToF16, loadConfig, modelCard, validateConfig } from '../src/index';
import { randomGate } from '../src/random';
import { moeRouter } from './helpers/cli';
import { D, E, data, makeRouter, routed } from './helpers/service';

const dir = mkdtempSync(path.join(tmpdir(), 'moe-config-'));
const W = randomGate(E, D, 42);
const x = data(6, D, 1);

const open: { dispose(): void }[] = [];
afterEach(() => {
  for (const thing of open.splice(0)) thing.dispose();
});

/** Writes a file in the temp folder and returns its path. */
function file(name: string, content: string | Uint8Array | object): string {
  const where = path.join(dir, name);
  writeFileSync(where, typeof content === 'string' || content instanceof Uint8Array ? content : JSON.stringify(content));
  return where;
}

function bytes(array: Float32Array | Float64Array | Uint16Array): Uint8Array {
  return new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
}

/** A .npy file as numpy writes it: magic, version, header padded to 64 bytes, data. */
function npy(descr: string, shape: number[], payload: Uint8Array, version = 1, fortran = false): Uint8Array {
  const dict = `{'descr': '${descr}', 'fortran_order': ${fortran ? 'True' : 'False'}, 'shape': (${shape.join(', ')}${shape.length === 1 ? ',' : ''}), }`;
  const preamble = version === 1 ? 10 : 12;
  const total = Math.ceil((preamble + dict.length + 1) / 64) * 64;
  const header = dict.padEnd(total - preamble - 1, ' ') + '\n';
  const head = Buffer.alloc(preamble);
  head.write('\x93NUMPY', 0, 'latin1');
  head[6] = version;
  if (version === 1) head.writeUInt16LE(header.length, 8);
  else head.writeUInt32LE(header.length, 8);
  return Buffer.concat([head, Buffer.from(header, 'latin1'), payload]);
}

/** A .safetensors file: u64 header length, JSON header, then the tensors' bytes. */
function safetensors(tensors: Record<string, { dtype: string; shape: number[]; payload: Uint8Array }>): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.payload.length] };
    offset += t.payload.length;
  }
  let json = JSON.stringify(header);
  json = json.padEnd(Math.ceil(json.length / 8) * 8, ' ');
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([length, Buffer.from(json), ...Object.values(tensors).map((t) => t.payload)]);
}

/** Routes x with the router a config builds. */
function viaConfig(config: object, name = `c${Math.random().toString(36).slice(2)}.json`) {
  const router = createRouter(loadConfig(file(name, config)));
  open.push(router);
  return routed(router, x);
}

/** Routes x with a router over `weight`. */
function viaWeight(weight: Float32Array | Tensor, patch: object = {}) {
  const router = new DynamicRouter({ inputDim: D, numExperts: E, topK: 4, weight, ...patch });
  open.push(router);
  return routed(router, x);
}

const shape = { inputDim: D, numExperts: E, topK: 4 };
const bf16 = Uint16Array.from(W, (v) => f32ToBf16(v));
const f16 = Uint16Array.from(W, (v) => f32ToF16(v));
// A checkpoint-like file with several tensors, two of them gates of the right shape.
file(
  'many.safetensors',
  safetensors({
    'model.embed.weight': { dtype: 'F32', shape: [3, 5], payload: bytes(new Float32Array(15)) },
    'model.layers.0.mlp.gate.weight': { dtype: 'BF16', shape: [E, D], payload: bytes(bf16) },
    'model.layers.1.mlp.gate.weight': { dtype: 'F16', shape: [E, D], payload: bytes(f16) },
  }),
);

describe('config weights', () => {
  it('seed: the reproducible random gate, with the router options of the file', () => {
    expect(viaConfig({ ...shape, seed: 42, strategy: 'top-p', topP: 0.5 })).toEqual(viaWeight(W, { strategy: 'top-p', topP: 0.5 }));
    const config = loadConfig(file('seeded.json', { ...shape, seed: 42, name: 'gate', rateLimit: { max: 5, timeWindow: '1 minute' } }));
    expect(config).toMatchObject({ weightSource: 'seed 42', name: 'gate', rateLimit: { max: 5, timeWindow: 60_000 } });
  });

  it('raw little-endian f32', () => {
    file('gate.bin', bytes(W));
    expect(viaConfig({ ...shape, weightFile: 'gate.bin' })).toEqual(viaWeight(W));
  });

  it('.npy: float32, float16 and float64, format versions 1 and 2', () => {
    file('gate.npy', npy('<f4', [E, D], bytes(W)));
    expect(viaConfig({ ...shape, weightFile: 'gate.npy' })).toEqual(viaWeight(W));
    const half = Uint16Array.from(W, (v) => f32ToF16(v));
    file('gate16.npy', npy('<f2', [E, D], bytes(half), 2));
    expect(viaConfig({ ...shape, weightFile: 'gate16.npy' })).toEqual(viaWeight(Tensor.from(half, [E, D], { dtype: 'f16' })));
    file('gate64.npy', npy('<f8', [E, D], bytes(Float64Array.from(W))));
    expect(viaConfig({ ...shape, weightFile: 'gate64.npy' })).toEqual(viaWeight(W));
  });

  it('.safetensors: one tensor, or one picked by name among many (F32, F16, BF16)', () => {
    file('one.safetensors', safetensors({ 'gate.weight': { dtype: 'F32', shape: [E, D], payload: bytes(W) } }));
    expect(viaConfig({ ...shape, weightFile: 'one.safetensors' })).toEqual(viaWeight(W));
    expect(viaConfig({ ...shape, weightFile: 'many.safetensors', weightTensor: 'model.layers.0.mlp.gate.weight' })).toEqual(
      viaWeight(Tensor.from(bf16, [E, D], { dtype: 'bf16' })),
    );
    expect(viaConfig({ ...shape, weightFile: 'many.safetensors', weightTensor: 'model.layers.1.mlp.gate.weight' })).toEqual(
      viaWeight(Tensor.from(f16, [E, D], { dtype: 'f16' })),
    );
  });
});

describe('config problems', () => {
  function problems(raw: unknown): string[] {
    return checkConfig(raw, dir).problems;
  }

  it('lists every problem of the file itself', () => {
    const found = problems({ inputDim: 0, numExperts: E, topk: 4, seed: 1.5, weightFile: 'x.bin', rateLimit: { max: 0 }, bias: [1, 2], cache: 3 });
    expect(found).toEqual([
      "unknown key 'topk' (did you mean 'topK'?)",
      'inputDim must be a positive integer (got 0)',
      'topK must be a positive integer (got undefined)',
      'set seed or weightFile, not both',
      'seed must be an integer in [0, 2^32) (got 1.5)',
      'bias must have numExperts = 64 values (got 2)',
      "rateLimit must be { max: positive integer, timeWindow?: ms or '1 minute' } (got {\"max\":0})",
      'cache must be an object',
    ]);
    expect(problems({ ...shape, seed: 1, cache: { maxbytes: 5 }, alerts: { errorrate: 0.1 }, breaker: { clock: 1, openMs: 5 } })).toEqual([
      "cache.maxbytes is unknown (did you mean 'maxBytes'?)",
      "alerts.errorrate is unknown (did you mean 'errorRate'?)",
      'breaker.clock is unknown',
    ]);
    expect(problems({ ...shape })).toEqual(['set either seed (an integer, for a reproducible random gate) or weightFile (raw f32, .npy or .safetensors)']);
    expect(problems({ ...shape, seed: 1, rateLimit: { max: 3, timeWindow: 'soon' } })).toEqual([
      'rateLimit.timeWindow must be a positive number of ms or a duration like \'1 minute\' (got "soon")',
    ]);
    expect(problems([])).toEqual(['the config must be a JSON object']);
    // What only a GPU machine's serve used to refuse (the breaker is built on CUDA), and keys of its own.
    expect(problems({ ...shape, seed: 1, weightTensor: 'w', rateLimit: { max: 5, frob: 1 }, breaker: { failures: 'x' } })).toEqual([
      'weightTensor names a tensor of weightFile, which is not set',
      'rateLimit.frob is unknown',
      'breaker failures must be a positive integer (got "x")',
    ]);
    // The engine's bound on numExperts, before a gate of numExperts × inputDim values is drawn.
    expect(problems({ ...shape, numExperts: 70_000, seed: 1 })).toEqual(['numExperts must be at most 65536 (got 70000)']);
  });

  it('says what is wrong with a weight file', () => {
    const transposed = new Float32Array(E * D);
    file('t.npy', npy('<f4', [D, E], bytes(transposed)));
    expect(problems({ ...shape, weightFile: 't.npy' })[0]).toMatch(/must hold \[numExperts, inputDim\] = \[64, 32\] \(got \[32, 64\]\) — it looks transposed/);
    file('short.bin', bytes(new Float32Array(10)));
    expect(problems({ ...shape, weightFile: 'short.bin' })[0]).toMatch(/got 40 bytes \(10 f32 values\)/);
    file('be.npy', npy('>f4', [E, D], bytes(W)));
    expect(problems({ ...shape, weightFile: 'be.npy' })[0]).toMatch(/dtype '>f4'; little-endian/);
    file('fortran.npy', npy('<f4', [E, D], bytes(W), 1, true));
    expect(problems({ ...shape, weightFile: 'fortran.npy' })[0]).toMatch(/Fortran/);
    file('junk.npy', 'not numpy');
    expect(problems({ ...shape, weightFile: 'junk.npy' })[0]).toMatch(/is not a .npy file/);
    expect(problems({ ...shape, weightFile: 'missing.npy' })[0]).toMatch(/cannot open weightFile .*missing\.npy/);
    expect(problems({ ...shape, weightFile: 'junk.npy', weightTensor: 'w' })[0]).toMatch(/weightTensor names a tensor of a .safetensors file/);
    const many = problems({ ...shape, weightFile: 'many.safetensors' })[0];
    expect(many).toMatch(/holds 3 tensors; set weightTensor to one of its tensors of shape \[64, 32\]: 'model.layers.0.mlp.gate.weight', 'model.layers.1.mlp.gate.weight'/);
    expect(problems({ ...shape, weightFile: 'many.safetensors', weightTensor: 'gate' })[0]).toMatch(/has no tensor 'gate'/);
    // An offset before the data would read the header's own bytes as weights.
    const json = JSON.stringify({ w: { dtype: 'F32', shape: [E, D], data_offsets: [-8, E * D * 4 - 8] } });
    const length = Buffer.alloc(8);
    length.writeBigUInt64LE(BigInt(json.length));
    file('negative.safetensors', Buffer.concat([length, Buffer.from(json), bytes(W)]));
    expect(problems({ ...shape, weightFile: 'negative.safetensors' })[0]).toMatch(/data_offsets \[-8, \d+\] lie outside the file/);
    file('bad.safetensors', safetensors({ w: { dtype: 'I8', shape: [E, D], payload: new Uint8Array(E * D) } }));
    expect(problems({ ...shape, weightFile: 'bad.safetensors' })[0]).toMatch(/has dtype I8; F32, F16, BF16 or F64 is needed/);
  });

  it('validateConfig also builds the router, so range errors show too', () => {
    expect(validateConfig(file('good.json', { ...shape, seed: 3 }))).toEqual([]);
    expect(validateConfig(file('k.json', { ...shape, topK: 65, seed: 3 }))[0]).toMatch(/^E_CONFIG: .*topK/);
    expect(validateConfig(file('k2.json', { ...shape, topK: 65, minExperts: 66, seed: 3 }))).toEqual([
      'E_CONFIG: option topK must be an integer in [1, numExperts] (got 65)',
      'E_CONFIG: option minExperts must be an integer in [1, topK] (got 66)',
    ]);
    expect(validateConfig(file('tok.json', { ...shape, seed: 3, strategy: 'expert-choice', cache: { mode: 'token' } }))[0]).toMatch(
      /cache mode 'token' cannot be used with this router: strategy 'expert-choice'/,
    );
    expect(validateConfig(file('broken.json', '{"inputDim": 3,'))[0]).toMatch(/is not valid JSON/);
    expect(validateConfig(path.join(dir, 'absent.json'))[0]).toMatch(/cannot read config/);
    expect(() => loadConfig(file('bad2.json', { ...shape }))).toThrow(/is not usable:\n {2}- set either seed/);
  });

  it("docs/serving.md's example config is valid, given the checkpoint it names", () => {
    const doc = readFileSync(path.resolve(__dirname, '..', 'docs', 'serving.md'), 'utf8');
    const example = JSON.parse(/```json\n([\s\S]*?)```/.exec(doc)![1]!) as Record<string, unknown>;
    const [experts, dim] = [example.numExperts as number, example.inputDim as number];
    file(
      example.weightFile as string,
      safetensors({
        [example.weightTensor as string]: { dtype: 'F32', shape: [experts, dim], payload: bytes(randomGate(experts, dim, 5)) },
      }),
    );
    expect(validateConfig(file('serving-example.json', example))).toEqual([]);
  });
});

describe('model card', () => {
  it('is Markdown with YAML front matter: options, backend and stats', () => {
    const router = makeRouter({ strategy: 'top-p', topP: 0.5, groups: { count: 8, select: 4 } });
    open.push(router);
    routed(router, x);
    const card = modelCard(router, { name: 'layer 0 gate', description: 'Routes layer 0.' });
    const [, front, body] = card.split(/^---$/m);
    expect(front).toContain('\nname: "layer 0 gate"\n');
    expect(front).toContain('\ndescription: "Routes layer 0."\n');
    expect(front).toContain(`\nbackend: "${router.backend}"\n`);
    expect(front).toContain('\noptions:\n  inputDim: 32\n  numExperts: 64\n  topK: 4\n  strategy: "top-p"\n  topP: 0.5\n  groups:\n    count: 8\n    select: 4\n');
    expect(front).toContain('\nstats:\n  tokens: 6\n  calls: 1\n');
    expect(front).toMatch(/\n {2}expertUtilization: \[(\d|\.|, |e-)+\]\n/);
    expect(body).toContain('# layer 0 gate');
    expect(body).toContain('| strategy | top-p (topP 0.5) |');
    expect(body).toContain('6 tokens in 1 calls');
    expect(body).toContain('| experts per token | 1 to 4 |');
  });

  it('says top-k gives topK experts a token, and writes small and large numbers as YAML 1.1 floats', () => {
    const topK = makeRouter({ scale: 1e21 });
    const threshold = makeRouter({ strategy: 'threshold', threshold: 1e-30 });
    open.push(topK, threshold);
    expect(modelCard(topK)).toContain('| experts per token | 4 |');
    expect(modelCard(topK)).toContain('\n  scale: 1.0e+21\n');
    const card = modelCard(threshold);
    expect(card).toContain('\n  threshold: 1.0e-30\n');
    expect(card).toContain('| strategy | threshold (threshold 1e-30) |');
  });
});

describe('moe-router validate and card (the CLI)', () => {
  it('validate: ok and exit 0, or every problem and exit 1', async () => {
    const good = file('cli-good.json', { ...shape, seed: 1 });
    expect(await moeRouter('validate', '--config', good)).toMatchObject({ code: 0, stdout: `${good}: ok\n` });
    const bad = file('cli-bad.json', { ...shape, seed: 1, weightFile: 'gate.bin', strategy: 'top-q' });
    const out = await moeRouter('validate', '--config', bad);
    expect(out.code).toBe(1);
    expect(out.stderr).toContain('1 problem(s)');
    expect(out.stderr).toContain('  - set seed or weightFile, not both\n');
    const engine = await moeRouter('validate', '--config', file('cli-strategy.json', { ...shape, seed: 1, strategy: 'top-q' }));
    expect(engine.stderr).toMatch(/E_CONFIG: option strategy must be one of/);
    expect((await moeRouter('validate')).code).toBe(1);
  });

  it('card: prints the model card of a config', async () => {
    const config = file('cli-card.json', { ...shape, seed: 1, name: 'demo gate' });
    const out = await moeRouter('card', '--config', config);
    expect(out.code).toBe(0);
    expect(out.stdout.startsWith('---\nname: "demo gate"\n')).toBe(true);
    expect(out.stdout).toContain('No tokens routed yet.');
  });
});
