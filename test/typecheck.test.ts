// The library, its tests and its benchmarks type-check under the repository's tsconfig (strict).
// The build checks only what the published declarations cover, and vitest strips types without
// checking them, so a test calling the API in a way its types forbid, or a benchmark gone stale
// against a renamed option, would otherwise pass here and fail for a TypeScript user.
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { expect, it } from 'vitest';

it('type-checks src, test and bench with tsc --noEmit', () => {
  const root = path.resolve(__dirname, '..');
  const tsc = path.join(root, 'node_modules', 'typescript', 'bin', 'tsc');
  const run = spawnSync(process.execPath, [tsc, '--noEmit', '-p', root], { cwd: root, encoding: 'utf8' });
  expect(run.stdout + run.stderr).toBe('');
  expect(run.status).toBe(0);
}, 120_000);
