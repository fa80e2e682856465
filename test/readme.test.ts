// The README's JavaScript examples run as written: each ```js block, with the names it leaves to the
// reader (a gate, hidden states, endpoints) defined here, against this checkout's package. A renamed
// method or option, or an example that throws, fails here instead of in a user's first hour.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Registry } from 'prom-client';
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
