// The command line's flags, for every command: an unknown flag, a flag without its value, a stray
// argument or a value out of range is an E_CONFIG error with exit code 1 (never silently ignored, so
// `serve --prot 9000` cannot quietly serve on 8080), and `--version` prints the package's version.
// Runs dist/cli.js, built by `npx tsup` (npm install does it).
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { moeRouter } from './helpers/cli';

describe('moe-router flags', () => {
  it.each([
    [['demo', '--token', '64'], "Unknown option '--token'"],
    [['demo', '--tokens'], "Option '--tokens <value>' argument missing"],
    [['demo', '--tokens', '0'], '--tokens must be an integer ≥ 1 (and below 2^53) (got "0")'],
    [['demo', '--tokens', '64x'], '--tokens must be an integer ≥ 1 (and below 2^53) (got "64x")'],
    [['demo', '--tokens', '1e20'], '--tokens must be an integer ≥ 1 (and below 2^53) (got "1e20")'],
    // Sizes past what an array holds: a message, not a RangeError's stack.
    [['demo', '--tokens', '99999999999'], '--tokens 99999999999 (× 2048 hidden values) needs 204799999997952 values, more than this process can allocate'],
    [['serve', '--prot', '9000'], "Unknown option '--prot'"],
    [['serve', '--port', '70000'], '--port must be an integer in [0, 65535] (got "70000")'],
    [['serve', '--rate-limit', '0'], '--rate-limit must be an integer ≥ 1 (and below 2^53) (got "0")'],
    [['card', '--config'], "Option '--config <value>' argument missing"],
    [['validate', 'router.json'], "Unexpected argument 'router.json'"],
    [['bench', '--tokens=-3'], '--tokens must be an integer ≥ 1 (and below 2^53) (got "-3")'],
    [['bench', '--tokenz', '3'], "Unknown option '--tokenz'"],
    [['bench', '--logits', '--hidden', '7'], '--hidden does not apply with --logits'],
    [['bench', '--workload', 'decode-olmoe', '--logits'], '--workload decode-olmoe has no logits workload'],
  ])('%j fails with E_CONFIG', async (args, message) => {
    const out = await moeRouter(...args);
    expect(out.code).toBe(1);
    expect(out.stdout).toBe('');
    expect(out.stderr).toContain(`E_CONFIG: ${message}`);
  });

  it.each(['demo', 'serve', 'card', 'validate', 'bench'])('%s --help prints the usage and exits 0', async (command) => {
    const out = await moeRouter(command, '--help');
    expect(out).toMatchObject({ code: 0, stderr: '' });
    expect(out.stdout).toMatch(command === 'bench' ? /^moe-router bench \[options\]/ : /^Usage: moe-router <command>/);
  });

  it('--version prints the version of package.json', async () => {
    const { version } = JSON.parse(readFileSync(path.resolve(__dirname, '..', 'package.json'), 'utf8')) as { version: string };
    for (const flag of ['--version', 'version']) expect(await moeRouter(flag)).toEqual({ code: 0, stdout: `${version}\n`, stderr: '' });
  });
});
