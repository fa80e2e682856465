// The README's JavaScript examples run as written: each ```js block, with the names it leaves to the
// reader (a gate, hidden states, endpoints) defined here, against this checkout's package. A renamed
// method or option, or an example that throws, fails here instead of in a user's first hour; a renamed
// property the examples only read fails their type check against the package's declarations.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Registry } from 'prom-client';
import ts from 'typescript';
import { expect, it } from 'vitest';
import * as lib from '../src/index';
import { normalGenerator, randomGate } from '../src/random';

const blocks = [...readFileSync(path.resolve(__dirname, '..', 'README.md'), 'utf8').matchAll(/```js\n([\s\S]*?)```/g)].map(
  (m) => m[1]!,
);

const D = 2048;
const E = 64;
const normal = normalGenerator(7);
const rows = (tokens: number, width: number) => Float32Array.from({ length: tokens * width }, () => normal());
const router = () => new lib.DynamicRouter({ inputDim: D, numExperts: E, topK: 8, weight: randomGate(E, D, 3) });

// Runs `code` as the body of an async function whose parameters are `names`, with require() giving
// this checkout's package for 'dynamic-moe-router'. The examples assert nothing themselves: running
// to the end (every call made, every option accepted) is the check.
async function run(code: string, names: Record<string, unknown>): Promise<void> {
  const load = (name: string) => {
    if (name !== 'dynamic-moe-router') throw new Error(`the README requires ${name}`);
    return lib;
  };
  const AsyncFunction = Object.getPrototypeOf(async () => undefined).constructor as new (
    ...args: string[]
  ) => (...values: unknown[]) => Promise<void>;
  await new AsyncFunction('require', ...Object.keys(names), code)(load, ...Object.values(names));
}

it('has the two JavaScript examples this test knows', () => {
  expect(blocks).toHaveLength(2);
  expect(blocks[0]).toMatch(/new DynamicRouter/);
  expect(blocks[1]).toMatch(/new ModelFleet/);
});

// The names the examples leave to the reader, with the types a reader would give them.
const givenNames = `
type Router = import('dynamic-moe-router').DynamicRouter;
declare const weight: Float32Array, hidden: Float32Array, logits: Float32Array, sample: Float32Array;
declare const router: Router, gpuRouter: Router, cpuRouter: Router;
declare const registry: import('prom-client').Registry;
declare const req: { prompt: string };
declare function callModel(req: unknown, signal: AbortSignal): Promise<{ text: string }>;
declare function callLarge(req: unknown): Promise<{ text: string }>;
declare const newEndpoint: { id: string; invoke: typeof callLarge };
`;

it('type-checks the examples against the package declarations', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'moe-readme-'));
  try {
    // Each block becomes the body of an async function in a checked JavaScript file, as a reader
    // would paste it; `require('dynamic-moe-router')` resolves to this checkout's sources.
    const files = blocks.map((code, i) => {
      const file = path.join(dir, `example${i}.js`);
      writeFileSync(file, `// @ts-check\nasync function example() {\n${code}}\nmodule.exports = example;\n`);
      return file;
    });
    const names = path.join(dir, 'names.d.ts');
    writeFileSync(names, givenNames);
    const program = ts.createProgram([...files, names], {
      allowJs: true,
      checkJs: true,
      noEmit: true,
      strict: true,
      skipLibCheck: true,
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.CommonJS,
      moduleResolution: ts.ModuleResolutionKind.Node10,
      esModuleInterop: true,
      types: ['node'],
      typeRoots: [path.resolve(__dirname, '..', 'node_modules', '@types')],
      paths: { 'dynamic-moe-router': [path.resolve(__dirname, '..', 'src', 'index.ts')] },
    });
    const ours = new Set([...files, names]);
    const messages = ts
      .getPreEmitDiagnostics(program)
      .filter((d) => d.file && ours.has(path.resolve(d.file.fileName)))
      .map((d) => {
        const { line } = d.file!.getLineAndCharacterOfPosition(d.start ?? 0);
        // Two lines precede each block in its file: the message gives the line within the block.
        return `${path.basename(d.file!.fileName)}, block line ${line - 1}: ${ts.flattenDiagnosticMessageText(d.messageText, ' ')}`;
      });
    expect(messages).toEqual([]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}, 60_000);

it('runs the tour', async () => {
  await run(blocks[0]!, {
    weight: randomGate(E, D, 3),
    hidden: rows(64, D),
    logits: rows(64, E),
    sample: rows(256, D),
  });
});

it('runs the operations example', async () => {
  const served: string[] = [];
  const endpoint = (id: string) => async () => {
    served.push(id);
    return { text: id };
  };
  const monitored = router();
  await run(blocks[1]!, {
    router: monitored,
    registry: new Registry(),
    gpuRouter: router(),
    cpuRouter: router(),
    callModel: endpoint('a'),
    callLarge: endpoint('b'),
    req: { prompt: 'hello' },
    newEndpoint: { id: 'a2', invoke: endpoint('a2') },
  });
  expect(served).toEqual(['a']);
});
