// Worker threads: routing in them gives the main thread's answer, and terminating one while its
// routes are in flight neither crashes nor hangs the process (it did both: an async route's promise
// could not be created in the dying environment and garbage was returned, and when the last worker
// that had loaded the engine exited, Node unloaded it under the engine's running threads). In a child
// process, since a crash is what is being tested.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';

const root = path.resolve(__dirname, '..');
let outDir: string;

beforeAll(() => {
  // A private build of the package (as in bench.test.ts), so that other tests rebuilding dist/ cannot
  // race with it, with the engine named explicitly.
  const cache = path.join(root, 'node_modules', '.cache');
  mkdirSync(cache, { recursive: true });
  outDir = mkdtempSync(path.join(cache, 'moe-workers-'));
  execFileSync('npx', ['tsup', '--silent', '--out-dir', outDir], { cwd: root, stdio: 'ignore' });
}, 120_000);
afterAll(() => rmSync(outDir, { recursive: true, force: true }));

it('workers route like the main thread, and terminating them mid-route leaves the process running', () => {
  const gyp = createRequire(__filename)('node-gyp-build') as { path(dir: string): string };
  const run = spawnSync(
    process.execPath,
    [path.join(__dirname, 'fixtures', 'terminated-workers.cjs'), path.join(outDir, 'index.js'), '24'],
    { cwd: root, env: { ...process.env, MOE_ROUTER_NATIVE_PATH: gyp.path(root) }, encoding: 'utf8', timeout: 120_000 },
  );
  expect(run.signal, run.stderr).toBeNull();
  expect(run.status, run.stderr).toBe(0);
  expect(run.stdout.trim().split('\n')).toEqual(['same answer', 'done']);
}, 180_000);
