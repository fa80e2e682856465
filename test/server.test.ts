// The HTTP service against real servers on 127.0.0.1 (ephemeral ports, no mocked HTTP): every status
// code, the metrics after real routes, the fastify plugin embedded in another app, and a graceful
// shutdown of `moe-router serve` (node dist/cli.js, built by `npx tsup`) that drains a request in flight.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import Fastify, { type FastifyInstance } from 'fastify';
import { afterEach, describe, expect, it } from 'vitest';
import { MonitoredRouter, buildServer, moeRouterPlugin, type RouterPluginOptions } from '../src/index';
import { cliPath } from './helpers/cli';
import { D, E, FlakyRouter, data, makeRouter, routed } from './helpers/service';

const apps: FastifyInstance[] = [];
const routers: MonitoredRouter[] = [];
afterEach(async () => {
  for (const app of apps.splice(0)) await app.close();
  for (const router of routers.splice(0)) router.dispose();
});

async function listen(app: FastifyInstance): Promise<string> {
  apps.push(app);
  await app.listen({ port: 0, host: '127.0.0.1' });
  return `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
}

async function serve(options: Partial<RouterPluginOptions> = {}) {
  const router = options.router ?? new MonitoredRouter(makeRouter());
  routers.push(router);
  const url = await listen(await buildServer({ ...options, router }));
  return { url, router };
}

/** A JSON answer, loosely typed for the assertions. */
async function json(res: Response): Promise<any> {
  return res.json();
}

function rows(x: Float32Array, width: number): number[][] {
  return Array.from({ length: x.length / width }, (_, t) => Array.from(x.subarray(t * width, (t + 1) * width)));
}

function post(url: string, body: unknown, headers: Record<string, string> = {}) {
  return fetch(`${url}/route`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

/** What the service should answer for `x`: the first k_t experts and weights of each token. */
function expectedAnswer(x: Float32Array) {
  const router = makeRouter();
  const r = routed(router, x);
  router.dispose();
  const K = r.experts.length / r.tokens;
  return {
    experts: r.expertsPerToken.map((k, t) => r.experts.slice(t * K, t * K + k)),
    weights: r.expertsPerToken.map((k, t) => r.weights.slice(t * K, t * K + k)),
    expertsPerToken: r.expertsPerToken,
  };
}

describe('POST /route', () => {
  it('200: routes hidden states and logits', async () => {
    const { url } = await serve();
    const x = data(5, D, 1);
    const res = await post(url, { hidden: rows(x, D) });
    expect(res.status).toBe(200);
    const body = await json(res);
    expect(body).toMatchObject({ tokens: 5, topK: 4, ...expectedAnswer(x), invalidTokens: [] });
    const logits = data(2, E, 2);
    const viaLogits = await json(await post(url, { logits: rows(logits, E) }));
    const direct = makeRouter();
    const expected = routed({ route: (v) => direct.routeLogits(v) }, logits).experts;
    direct.dispose();
    expect(viaLogits.experts).toEqual([expected.slice(0, 4), expected.slice(4, 8)]);
    expect((await json(await post(url, { hidden: [] }))).tokens).toBe(0);
  });

  it('400 with a code: malformed JSON, wrong body shape, wrong row width, non-finite values', async () => {
    const { url } = await serve();
    const cases: [unknown, string][] = [
      ['{"hidden": [[1, 2]', 'E_JSON'],
      [{}, 'E_SCHEMA'],
      [{ hidden: [[1]], logits: [[1]] }, 'E_SCHEMA'],
      [{ hidden: [1, 2, 3] }, 'E_SCHEMA'],
      [{ hidden: [['1', '2']] }, 'E_SCHEMA'],
      [{ hidden: 'x' }, 'E_SCHEMA'],
      [[], 'E_SCHEMA'],
      [{ hidden: [new Array(D).fill(0), new Array(D + 1).fill(0)] }, 'E_SHAPE'],
      [{ logits: [new Array(E - 1).fill(0)] }, 'E_SHAPE'],
      [{ logits: [new Array(E).fill(1e39)] }, 'E_NONFINITE'],
    ];
    for (const [body, code] of cases) {
      const res = await post(url, body);
      expect({ body, status: res.status }).toEqual({ body, status: 400 });
      const answer = await json(res);
      expect(answer).toMatchObject({ statusCode: 400, code, error: 'Bad Request' });
      expect(answer.message.length).toBeGreaterThan(0);
    }
    const shape = await json(await post(url, { hidden: [new Array(D + 1).fill(0)] }));
    expect(shape.message).toMatch(/hidden\[0\] has 33 values; every row needs inputDim = 32/);
    // Each JSON failure says what it is: a key that could reach a prototype is valid JSON, but refused.
    const jsonCases: [string, RegExp][] = [
      ['{"hidden": [[1, 2]', /^the body is not valid JSON: .*position 18/],
      ['', /^the body is empty/],
      [`{"__proto__": {"x": 1}, "hidden": [${JSON.stringify(new Array(D).fill(0))}]}`, /^the body has a __proto__ or constructor\.prototype key, which is refused/],
      ['{"constructor": {"prototype": {}}, "hidden": []}', /^the body has a __proto__ or constructor\.prototype key, which is refused/],
    ];
    for (const [body, message] of jsonCases) {
      const res = await post(url, body);
      expect({ body, status: res.status }).toEqual({ body, status: 400 });
      expect(await json(res)).toMatchObject({ code: 'E_JSON', message: expect.stringMatching(message) });
    }
  });

  it('413 over the body limit, 415 for a body that is not JSON', async () => {
    const { url } = await serve({ bodyLimit: 2048 });
    const ok = await post(url, { hidden: rows(data(2, D, 3), D) });
    expect(ok.status).toBe(200);
    const big = await post(url, { hidden: rows(data(40, D, 4), D) });
    expect(big.status).toBe(413);
    expect(await json(big)).toMatchObject({ statusCode: 413, code: 'E_BODY_TOO_LARGE' });
    const text = await fetch(`${url}/route`, { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body: 'hello' });
    expect(text.status).toBe(415);
    expect(await json(text)).toMatchObject({ code: 'E_MEDIA_TYPE' });
    // text/plain too, though fastify alone would read it as a string (and answer 400 E_SCHEMA).
    const plain = await fetch(`${url}/route`, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: JSON.stringify({ logits: [[1]] }) });
    expect(plain.status).toBe(415);
    expect(await json(plain)).toMatchObject({ code: 'E_MEDIA_TYPE' });
  });

  it('400 for rows of the wrong width before any buffer is sized by them', async () => {
    // 2.7 million empty rows (8 MB) of a 4096-expert router once made the service size a Float32Array of
    // rows × numExperts (11 billion) before it looked at a row: a RangeError, answered 500.
    const { url } = await serve({ router: new MonitoredRouter(makeRouter({ numExperts: 4096, weight: new Float32Array(4096 * D) })) });
    const body = `{"logits":[${new Array(2_700_000).fill('[]').join(',')}]}`;
    const res = await post(url, body);
    expect(res.status).toBe(400);
    expect(await json(res)).toMatchObject({ code: 'E_SHAPE', message: expect.stringMatching(/^logits\[0\] has 0 values/) });
  });

  it('404 for other paths and 405 for other methods, with a code like every error', async () => {
    const { url } = await serve();
    const missing = await fetch(`${url}/nope`);
    expect(missing.status).toBe(404);
    expect(await json(missing)).toMatchObject({ statusCode: 404, code: 'E_NOT_FOUND', error: 'Not Found', message: expect.stringContaining('POST /route') });
    const wrong = await fetch(`${url}/route`, { method: 'DELETE' });
    expect(wrong.status).toBe(405);
    expect(wrong.headers.get('allow')).toBe('POST');
    expect(await json(wrong)).toMatchObject({ statusCode: 405, code: 'E_METHOD', error: 'Method Not Allowed' });
    expect((await fetch(`${url}/metrics`, { method: 'POST' })).headers.get('allow')).toBe('GET, HEAD');
  });

  it('401 without the right x-api-key; the other routes stay open', async () => {
    const { url } = await serve({ apiKey: 's3cret-key' });
    const body = { hidden: rows(data(1, D, 5), D) };
    const attempts: Record<string, string>[] = [{}, { 'x-api-key': 'wrong' }, { 'x-api-key': 's3cret-key-but-longer' }, { 'x-api-key': '' }];
    for (const headers of attempts) {
      const res = await post(url, body, headers);
      expect(res.status).toBe(401);
      expect(await json(res)).toMatchObject({ statusCode: 401, code: 'E_AUTH' });
    }
    expect((await post(url, body, { 'x-api-key': 's3cret-key' })).status).toBe(200);
    expect((await fetch(`${url}/metrics`)).status).toBe(200);
    expect((await fetch(`${url}/health`)).status).toBe(200);
    expect((await fetch(`${url}/ready`)).status).toBe(200);
  });

  it('429 past the per-client rate limit, only when one is set', async () => {
    const body = { hidden: rows(data(1, D, 6), D) };
    const limited = await serve({ rateLimit: { max: 2, timeWindow: 60_000 } });
    expect((await post(limited.url, body)).status).toBe(200);
    expect((await post(limited.url, body)).status).toBe(200);
    const over = await post(limited.url, body);
    expect(over.status).toBe(429);
    expect(over.headers.get('retry-after')).not.toBeNull();
    expect(await json(over)).toMatchObject({ statusCode: 429, code: 'E_RATE_LIMIT' });
    expect((await fetch(`${limited.url}/metrics`)).status).toBe(200);
    const open = await serve();
    for (let i = 0; i < 5; i++) expect((await post(open.url, body)).status).toBe(200);
  });

  it('500 and 503: a failing router makes /health unhealthy', async () => {
    const flaky = new FlakyRouter(makeRouter());
    flaky.failWith = 'E_BACKEND';
    const router = new MonitoredRouter(flaky, { alerts: { minRequests: 1 } });
    const { url } = await serve({ router });
    flaky.broken = true;
    const res = await post(url, { hidden: rows(data(1, D, 7), D) });
    expect(res.status).toBe(500);
    expect(await json(res)).toMatchObject({ statusCode: 500, code: 'E_BACKEND', message: 'injected E_BACKEND failure' });
    const health = await fetch(`${url}/health`);
    expect(health.status).toBe(503);
    expect(await json(health)).toMatchObject({ status: 'unhealthy', errorRate: 1, lastError: { code: 'E_BACKEND' }, ready: true });
  });
});

describe('GET /metrics, /health, /ready', () => {
  it('serves Prometheus text that agrees with the routes made', async () => {
    const { url, router } = await serve();
    const tokens = [3, 1, 4];
    for (const [i, T] of tokens.entries()) expect((await post(url, { hidden: rows(data(T, D, 10 + i), D) })).status).toBe(200);
    expect((await post(url, { hidden: [[1]] })).status).toBe(400);
    const res = await fetch(`${url}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = await res.text();
    const backend = router.backend;
    expect(text).toContain(`moe_router_requests_total{entry="route",backend="${backend}"} 3\n`);
    expect(text).toContain('moe_router_tokens_total 8\n'); // the warm-up is not counted
    expect(text).toContain('moe_router_experts_per_token_count 8\n');
    expect(text).toContain('moe_router_experts_per_token_sum 32\n'); // top-4 for every token
    expect(text).toContain(`moe_router_backend_info{backend="${backend}"} 1\n`);
    expect(text).toContain('moe_router_request_duration_seconds_count 3\n');
    const stats = router.stats();
    for (let e = 0; e < E; e++) expect(text).toContain(`moe_router_expert_assignments_total{expert="${e}"} ${stats.expertAssignments[e]}\n`);
  });

  it('answers /health and /ready as JSON', async () => {
    const { url, router } = await serve();
    const health = await fetch(`${url}/health`);
    expect(health.status).toBe(200);
    expect(await json(health)).toMatchObject({ status: 'ok', backend: router.backend, errorRate: 0, lastError: null, ready: true });
    const ready = await fetch(`${url}/ready`);
    expect(ready.status).toBe(200);
    expect(await json(ready)).toEqual({ ready: true });
  });
});

describe('moeRouterPlugin', () => {
  it('mounts the routes in another fastify app, under a prefix, beside its own routes', async () => {
    const router = new MonitoredRouter(makeRouter());
    routers.push(router);
    const app = Fastify();
    app.get('/own', async () => ({ own: true }));
    app.register(moeRouterPlugin, { router, prefix: '/moe' } as RouterPluginOptions);
    const url = await listen(app);
    const x = data(2, D, 20);
    const res = await fetch(`${url}/moe/route`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ hidden: rows(x, D) }) });
    expect(res.status).toBe(200);
    expect((await json(res)).experts).toEqual(expectedAnswer(x).experts);
    expect(await json(await fetch(`${url}/own`))).toEqual({ own: true });
    expect((await fetch(`${url}/moe/ready`)).status).toBe(200);
    expect((await fetch(`${url}/route`)).status).toBe(404);
  });
});

describe('moe-router serve (the CLI)', () => {
  function start(args: string[]): Promise<{ child: ChildProcessWithoutNullStreams; url: string; stderr: () => string }> {
    const cli = cliPath();
    const dir = mkdtempSync(path.join(tmpdir(), 'moe-serve-'));
    const config = path.join(dir, 'router.json');
    writeFileSync(config, JSON.stringify({ inputDim: D, numExperts: E, topK: 4, seed: 1 }));
    const child = spawn(process.execPath, [cli, 'serve', '--port', '0', '--config', config, ...args]);
    let stdout = '';
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    return new Promise((resolve, reject) => {
      child.once('exit', (code) => reject(new Error(`serve exited with ${code} before listening: ${stderr}`)));
      child.stdout.on('data', (chunk: Buffer) => {
        stdout += chunk.toString();
        const url = /(http:\/\/127\.0\.0\.1:\d+)/.exec(stdout)?.[1];
        if (url) resolve({ child, url, stderr: () => stderr });
      });
    });
  }

  function waitFor(check: () => boolean): Promise<void> {
    return new Promise((resolve) => {
      const poll = () => (check() ? resolve() : setTimeout(poll, 10));
      poll();
    });
  }

  it('drains a request in flight on SIGTERM, answers it, and exits 0', async () => {
    const { child, url, stderr } = await start(['--api-key', 'k']);
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const x = data(3, D, 30);
    const body = JSON.stringify({ hidden: rows(x, D) });
    // Expect: 100-continue makes the server confirm it has the request before the body is sent, so the
    // request is certainly in flight when the signal arrives.
    const request = http.request(`${url}/route`, {
      method: 'POST',
      agent: false,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), expect: '100-continue', 'x-api-key': 'k' },
    });
    const response = new Promise<{ status: number; body: string }>((resolve, reject) => {
      request.on('response', (res) => {
        let text = '';
        res.on('data', (chunk: Buffer) => (text += chunk.toString()));
        res.on('end', () => resolve({ status: res.statusCode!, body: text }));
      });
      request.on('error', reject);
    });
    await new Promise<void>((resolve) => request.once('continue', () => resolve()));
    child.kill('SIGTERM');
    await waitFor(() => stderr().includes('SIGTERM received'));
    expect(stderr()).toContain('draining 1 in-flight request(s)');
    request.end(body);
    const answer = await response;
    expect(answer.status).toBe(200);
    expect(JSON.parse(answer.body)).toMatchObject({ tokens: 3, ...expectedAnswer(x) });
    expect(await exited).toBe(0);
    expect(stderr()).toContain('stopped');
  });

  it('stops on SIGINT with nothing in flight and exits 0; a bad flag exits 1', async () => {
    const { child } = await start([]);
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    child.kill('SIGINT');
    expect(await exited).toBe(0);
    const bad = spawn(process.execPath, [cliPath(), 'serve', '--port', 'eighty']);
    let stderr = '';
    bad.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    expect(await new Promise((resolve) => bad.once('exit', resolve))).toBe(1);
    expect(stderr).toMatch(/--port must be an integer/);
  });
});
