/**
 * Load test of `moe-router serve` on loopback: starts the built CLI (dist/cli.js) with the default
 * OLMoE-shaped router (2048 → 64 experts, top-8, seed 0), drives POST /route with autocannon (16
 * connections, a bounded duration per body), reports requests/s and p99 latency, and fails on any
 * error, timeout or non-2xx answer. Stops the server with SIGTERM and checks it exits 0.
 *
 *   npx tsup && npx tsup bench/load.ts --no-config --format cjs --target node20 -d dist && node dist/load.js [seconds]
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import autocannon from 'autocannon';
import { normalGenerator } from '../src/random';

const CONNECTIONS = 16;
const SECONDS = Number(process.argv[2] ?? 10);
const D = 2048;

function body(tokens: number): string {
  const normal = normalGenerator(tokens);
  return JSON.stringify({ hidden: Array.from({ length: tokens }, () => Array.from({ length: D }, () => Number(normal().toFixed(4)))) });
}

async function main(): Promise<void> {
  const cli = path.resolve(__dirname, 'cli.js');
  const server = spawn(process.execPath, [cli, 'serve', '--port', '0', '--host', '127.0.0.1'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise<number | null>((resolve) => server.once('exit', (code) => resolve(code)));
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    server.once('exit', (code) => reject(new Error(`moe-router serve exited with ${code}`)));
    server.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      const found = /(http:\/\/127\.0\.0\.1:\d+)/.exec(out)?.[1];
      if (found) resolve(found);
    });
  });
  let failed = false;
  const rows = [];
  for (const tokens of [1, 8]) {
    const result = await autocannon({
      url: `${url}/route`,
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: body(tokens),
      connections: CONNECTIONS,
      duration: SECONDS,
    });
    const bad = result.errors + result.timeouts + result.non2xx;
    if (bad > 0) failed = true;
    rows.push({
      body: `${tokens}×${D} hidden`,
      connections: CONNECTIONS,
      seconds: SECONDS,
      'requests/s': Math.round(result.requests.average),
      'tokens/s': Math.round(result.requests.average * tokens),
      'p50 ms': result.latency.p50,
      'p99 ms': result.latency.p99,
      requests: result.requests.total,
      'errors+timeouts+non2xx': bad,
    });
  }
  console.table(rows);
  server.kill('SIGTERM');
  const code = await exited;
  console.log(`server exit code after SIGTERM: ${code}`);
  if (failed || code !== 0) process.exitCode = 1;
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
