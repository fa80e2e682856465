// A private build of the package's dist/ for tests that run it in child processes, so that other
// tests rebuilding dist/ in place (binding.test.ts) cannot race with them. It lies under
// node_modules/.cache, where its dependencies resolve; `engine()` is this checkout's .node file, to
// name explicitly (MOE_ROUTER_NATIVE_PATH).
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

export const root = path.resolve(__dirname, '..', '..');

/** The engine node-gyp-build loads for the package at `dir` (this checkout by default). */
export function engine(dir = root): string {
  return (createRequire(__filename)('node-gyp-build') as { path(dir: string): string }).path(dir);
}

/** Builds dist/ into a new directory named after `prefix`; remove() deletes it. */
export function privateBuild(prefix: string): { dir: string; remove(): void } {
  const cache = path.join(root, 'node_modules', '.cache');
  mkdirSync(cache, { recursive: true });
  const dir = mkdtempSync(path.join(cache, `${prefix}-`));
  execFileSync('npx', ['tsup', '--silent', '--out-dir', dir], { cwd: root, stdio: 'ignore' });
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}
