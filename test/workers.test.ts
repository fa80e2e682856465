// Worker threads: routing in them gives the main thread's answer, and terminating one while its
// routes are in flight neither crashes nor hangs the process (it did both: an async route's promise
// could not be created in the dying environment and garbage was returned, and when the last worker
// that had loaded the engine exited, Node unloaded it under the engine's running threads). In a child
// process, since a crash is what is being tested.
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { engine, privateBuild, root } from './helpers/private-build';

let build: ReturnType<typeof privateBuild>;
beforeAll(() => {
  build = privateBuild('moe-workers');
}, 120_000);
afterAll(() => build.remove());

it('workers route like the main thread, and terminating them mid-route leaves the process running', () => {
  const run = spawnSync(
    process.execPath,
    [path.join(__dirname, 'fixtures', 'terminated-workers.cjs'), path.join(build.dir, 'index.js'), '24'],
    { cwd: root, env: { ...process.env, MOE_ROUTER_NATIVE_PATH: engine() }, encoding: 'utf8', timeout: 120_000 },
  );
  expect(run.signal, run.stderr).toBeNull();
  expect(run.status, run.stderr).toBe(0);
  expect(run.stdout.trim().split('\n')).toEqual(['same answer', 'done']);
}, 180_000);
