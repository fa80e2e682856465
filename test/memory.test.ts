// Native memory: a router says what host memory it holds (memoryBytes), and the JavaScript engine is
// told the same figure, so that routers dropped without dispose() are collected as their size asks.
// Before, the engine saw only their small objects: a thousand unreferenced routers of 2 MiB grew the
// process by 2 GiB before any was collected. Memory, not time, is asserted.
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { DynamicRouter } from '../src/index';
import { randomGate } from '../src/random';
import { engine, root } from './helpers/private-build';
import { randomRows } from './helpers/rows';

const D = 256;
const E = 64;
const K = 8;
const WEIGHT_BYTES = E * D * 4;

describe('memoryBytes', () => {
  for (const backend of ['scalar', 'auto'] as const) {
    it(`${backend}: the packed weight at creation, grown by a batch, not shrunk by a smaller one, 0 once disposed`, () => {
      const router = new DynamicRouter({ inputDim: D, numExperts: E, topK: K, weight: randomGate(E, D, 3), backend, losses: true });
      const created = router.memoryBytes;
      expect(created).toBeGreaterThanOrEqual(WEIGHT_BYTES);
      expect(created).toBeLessThan(WEIGHT_BYTES + 16 * 1024);

      router.route(randomRows(512, D, 512)).release();
      const grown = router.memoryBytes;
      expect(grown).toBeGreaterThan(created);
      router.route(randomRows(3, D, 3)).release();
      expect(router.memoryBytes).toBe(grown);

      router.dispose();
      expect(router.memoryBytes).toBe(0);
    });
  }

  it('counts what an async route grew once it settles', async () => {
    const router = new DynamicRouter({ inputDim: D, numExperts: E, topK: K, weight: randomGate(E, D, 4) });
    const created = router.memoryBytes;
    (await router.routeAsync(randomRows(256, D, 256))).release();
    expect(router.memoryBytes).toBeGreaterThan(created);
    router.dispose();
  });
});

it('routers dropped without dispose() are collected before they pile up', () => {
  // 1000 routers of 2 MiB each: 2000 MiB if none were freed (what happened before), ~100 now.
  const run = spawnSync(process.execPath, [path.join(__dirname, 'fixtures', 'unreferenced-routers.cjs'), engine(), '1000'], {
    cwd: root,
    encoding: 'utf8',
    timeout: 120_000,
  });
  expect(run.status, run.stderr).toBe(0);
  expect(Number(run.stdout.trim())).toBeLessThan(500);
}, 180_000);
