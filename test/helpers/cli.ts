// The command line as the tests run it: dist/cli.js, which `npx tsup` builds (npm install does it).
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';

/** dist/cli.js's path; throws a message saying how to build it when it is missing. */
export function cliPath(): string {
  const cli = path.resolve(__dirname, '..', '..', 'dist', 'cli.js');
  if (!existsSync(cli)) throw new Error('dist/cli.js is missing: build it with `npx tsup` before these tests');
  return cli;
}

const run = promisify(execFile);

/** Runs `moe-router ...args` to its end: its exit code and output. */
export async function moeRouter(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [cliPath(), ...args], { timeout: 60_000 });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}
