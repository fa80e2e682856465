/**
 * The HTTP service (`moe-router serve`) and the fastify plugin behind it, for services that embed the
 * router: POST /route, GET /metrics, GET /health, GET /ready.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import type { FastifyError, FastifyInstance, FastifyPluginAsync } from 'fastify';
import { parse as parseSecureJson } from 'secure-json-parse';
import { integerFlag } from './args';
import { createRouter, loadConfig, type RateLimitConfig } from './config';
import { RouterError } from './errors';
import type { MonitoredRouter } from './monitor';
import type { RoutingResult } from './routable';

export interface RouterPluginOptions {
  /** The router to serve; the plugin does not dispose it. */
  router: MonitoredRouter;
  /** When set, POST /route needs this value in the `x-api-key` header. */
  apiKey?: string;
  /** Per-client (per IP) limit on POST /route; off unless set. */
  rateLimit?: RateLimitConfig;
  /** Largest POST /route body in bytes (default 8 MiB). */
  bodyLimit?: number;
}

export interface ServeOptions {
  port?: number;
  host?: string;
  /** Path of a config file (see config.ts); the default config without one. */
  config?: string;
  apiKey?: string;
  /** Requests per minute per client; overrides the config's rateLimit. */
  rateLimit?: number;
}

export interface RunningServer {
  app: FastifyInstance;
  router: MonitoredRouter;
  url: string;
  /** Requests being handled now. */
  readonly inflight: number;
  /** Stops accepting, lets the requests in flight finish, then disposes the router. */
  close(): Promise<void>;
}

interface RouteBody {
  hidden?: number[][];
  logits?: number[][];
}

const DEFAULT_BODY_LIMIT = 8 * 1024 * 1024;
/** Batches with fewer multiply-adds than this are routed on the event loop (a few µs); larger ones off it. */
const SYNC_WORK_LIMIT = 1 << 20;
/** How long a shutdown waits for the requests in flight before it gives up. */
const DRAIN_TIMEOUT_MS = 30_000;

const rows = { type: 'array', items: { type: 'array', items: { type: 'number' } } } as const;
const BODY_SCHEMA = {
  type: 'object',
  properties: { hidden: rows, logits: rows },
  oneOf: [{ required: ['hidden'] }, { required: ['logits'] }],
} as const;
const RESPONSE_SCHEMA = {
  type: 'object',
  properties: {
    tokens: { type: 'integer' },
    topK: { type: 'integer' },
    backend: { type: 'string' },
    experts: { type: 'array', items: { type: 'array', items: { type: 'integer' } } },
    weights: { type: 'array', items: { type: 'array', items: { type: 'number' } } },
    expertsPerToken: { type: 'array', items: { type: 'integer' } },
    flopReduction: { type: 'number' },
    invalidTokens: { type: 'array', items: { type: 'integer' } },
  },
} as const;

/** The service's routes and their methods (fastify answers HEAD for each GET route too). */
const ROUTE_METHODS: Record<string, string> = { '/route': 'POST', '/metrics': 'GET', '/health': 'GET', '/ready': 'GET' };

const STATUS_TEXT: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  404: 'Not Found',
  405: 'Method Not Allowed',
  413: 'Payload Too Large',
  415: 'Unsupported Media Type',
  429: 'Too Many Requests',
  500: 'Internal Server Error',
  503: 'Service Unavailable',
};

/** An HTTP failure of our own, with the code the body carries. */
class HttpError extends Error {
  constructor(
    readonly statusCode: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

const INPUT_ERRORS: readonly string[] = ['E_SHAPE', 'E_DTYPE', 'E_NONFINITE', 'E_CONFIG'];

/** The status and body code of an error raised while serving a request. */
function classify(error: FastifyError | Error): { status: number; code: string; message: string } {
  if (error instanceof HttpError) return { status: error.statusCode, code: error.code, message: error.message };
  if (error instanceof RouterError) {
    const status = INPUT_ERRORS.includes(error.code) ? 400 : error.code === 'E_DISPOSED' ? 503 : 500;
    return { status, code: error.code, message: error.message };
  }
  const e = error as FastifyError;
  if (e.validation) return { status: 400, code: 'E_SCHEMA', message: `${e.message}; expected { hidden: number[][] } or { logits: number[][] }` };
  if (e.statusCode === 413) return { status: 413, code: 'E_BODY_TOO_LARGE', message: e.message };
  if (e.statusCode === 415) return { status: 415, code: 'E_MEDIA_TYPE', message: e.message };
  if (e.statusCode === 429) return { status: 429, code: 'E_RATE_LIMIT', message: e.message };
  if (e.statusCode !== undefined && e.statusCode >= 400 && e.statusCode < 500) return { status: 400, code: 'E_JSON', message: e.message };
  return { status: 500, code: 'E_INTERNAL', message: 'internal error' };
}

/** A JSON body, refusing keys that could reach an object's prototype (as fastify does). */
function parseJsonBody(text: string): unknown {
  if (text.length === 0) throw new HttpError(400, 'E_JSON', 'the body is empty; send a JSON object');
  try {
    return parseSecureJson(text, null, { protoAction: 'error', constructorAction: 'error' });
  } catch (error) {
    // secure-json-parse refuses both kinds of key with one SyntaxError: 'forbidden prototype property'.
    const reason = (error as Error).message;
    const refused = /forbidden prototype property/.test(reason);
    throw new HttpError(400, 'E_JSON', refused ? 'the body has a __proto__ or constructor.prototype key, which is refused' : `the body is not valid JSON: ${reason}`);
  }
}

function sha256(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

/** number[][] rows of `width` values into one Float32Array [T * width]. */
function toFloat32(data: number[][], width: number, name: string, widthName: string): Float32Array {
  // Every row's width first: rows of the wrong width must not size the allocation (an 8 MiB body of
  // empty rows asks for gigabytes).
  data.forEach((row, t) => {
    if (row.length !== width) throw new RouterError('E_SHAPE', `${name}[${t}] has ${row.length} values; every row needs ${widthName} = ${width}`);
  });
  const out = new Float32Array(data.length * width);
  data.forEach((row, t) => out.set(row, t * width));
  return out;
}

/** Experts and weights per token: the first k_t slots of each token (a capacity drop shows as -1). */
function answer(r: RoutingResult) {
  const K = r.topK;
  const experts: number[][] = [];
  const weights: number[][] = [];
  for (let t = 0; t < r.tokens; t++) {
    const k = Math.min(r.expertsPerToken[t]!, K);
    experts.push(Array.from(r.experts.subarray(t * K, t * K + k)));
    weights.push(Array.from(r.weights.subarray(t * K, t * K + k)));
  }
  return {
    tokens: r.tokens,
    topK: K,
    backend: r.backend,
    experts,
    weights,
    expertsPerToken: Array.from(r.expertsPerToken),
    flopReduction: r.flopReduction,
    invalidTokens: Array.from(r.invalidTokens),
  };
}

/**
 * The routes as a fastify plugin (encapsulated: its error handler and hooks stay inside it). Register it
 * with a `prefix` to mount the routes elsewhere. /ready answers 200 once a warm-up route has run (on the
 * app's ready) and until the app starts closing.
 */
export const moeRouterPlugin: FastifyPluginAsync<RouterPluginOptions> = async (app, options) => {
  const { router, apiKey, rateLimit } = options;
  const bodyLimit = options.bodyLimit ?? DEFAULT_BODY_LIMIT;
  if (apiKey !== undefined && (typeof apiKey !== 'string' || apiKey.length === 0)) {
    throw new RouterError('E_CONFIG', 'apiKey must be a non-empty string');
  }
  const expectedKey = apiKey === undefined ? undefined : sha256(apiKey);
  let warmed = false;
  let closing = false;

  if (rateLimit) await app.register((await import('@fastify/rate-limit')).default, { global: false });
  // Only JSON bodies: fastify would read text/plain into a string, which then failed the schema (400)
  // where any other type that is not JSON gets 415.
  app.removeContentTypeParser('text/plain');
  // fastify's own JSON parser answers "not valid JSON" for every failure, a refused __proto__ key included;
  // this one says which.
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_request, body, done) => {
    try {
      done(null, parseJsonBody(body as string));
    } catch (error) {
      done(error as HttpError, undefined);
    }
  });

  app.addHook('onReady', async () => {
    await router.warmUp();
    warmed = true;
  });
  app.addHook('preClose', async () => {
    closing = true;
  });
  // Requests finishing during a shutdown close their connection, so the drain does not wait on keep-alive.
  app.addHook('onSend', async (_request, reply) => {
    if (closing) reply.header('connection', 'close');
  });

  app.setErrorHandler((error: FastifyError, request, reply) => {
    const { status, code, message } = classify(error);
    if (status >= 500) process.stderr.write(`moe-router: ${request.method} ${request.url} failed: ${error.stack ?? error.message}\n`);
    reply.code(status).send({ statusCode: status, code, error: STATUS_TEXT[status] ?? 'Error', message });
  });

  app.post<{ Body: RouteBody }>(
    '/route',
    {
      bodyLimit,
      schema: { body: BODY_SCHEMA, response: { 200: RESPONSE_SCHEMA } },
      config: rateLimit ? { rateLimit: { max: rateLimit.max, timeWindow: rateLimit.timeWindow } } : {},
      // After the rate limit (onRequest), before the body is read.
      preParsing: async (request, _reply, payload) => {
        if (expectedKey) {
          const given = request.headers['x-api-key'];
          // Both sides hashed to 32 bytes: the comparison takes the same time whatever the key's length.
          if (typeof given !== 'string' || !timingSafeEqual(sha256(given), expectedKey)) {
            throw new HttpError(401, 'E_AUTH', 'a valid x-api-key header is required');
          }
        }
        return payload;
      },
    },
    async (request) => {
      const isLogits = request.body.logits !== undefined;
      const data = (isLogits ? request.body.logits : request.body.hidden)!;
      const width = isLogits ? router.numExperts : router.inputDim;
      const input = toFloat32(data, width, isLogits ? 'logits' : 'hidden', isLogits ? 'numExperts' : 'inputDim');
      const work = data.length * width * (isLogits ? 1 : router.numExperts);
      let result: RoutingResult;
      if (work <= SYNC_WORK_LIMIT) result = isLogits ? router.routeLogits(input) : router.route(input);
      else result = await (isLogits ? router.routeLogitsAsync(input) : router.routeAsync(input));
      try {
        return answer(result);
      } finally {
        result.release();
      }
    },
  );

  app.get('/metrics', async (_request, reply) => {
    reply.type(router.registry.contentType);
    return router.metricsText();
  });

  app.get('/health', async (_request, reply) => {
    const health = router.health();
    reply.code(health.status === 'unhealthy' ? 503 : 200);
    return { ...health, ready: warmed && !closing };
  });

  app.get('/ready', async (_request, reply) => {
    const ready = warmed && !closing;
    reply.code(ready ? 200 : 503);
    return { ready };
  });
};

/**
 * A fastify app serving `router` (strict JSON: no type coercion of the body). fastify is loaded here, on
 * first use, so that importing the library does not pay for it.
 */
export async function buildServer(options: RouterPluginOptions): Promise<FastifyInstance> {
  const { default: Fastify } = await import('fastify');
  const app = Fastify({ logger: false, ajv: { customOptions: { coerceTypes: false } } });
  app.register(moeRouterPlugin, options);
  // Other paths and methods answer in the same shape as every other error (an app embedding the plugin
  // keeps its own not-found handler).
  app.setNotFoundHandler((request, reply) => {
    const path = request.url.split('?')[0]!;
    const method = ROUTE_METHODS[path];
    const status = method ? 405 : 404;
    if (method) reply.header('allow', method === 'GET' ? 'GET, HEAD' : method);
    const message = method
      ? `${request.method} ${path} is not served; use ${method} ${path}`
      : `no route ${request.method} ${path}; the routes are ${Object.entries(ROUTE_METHODS).map(([p, m]) => `${m} ${p}`).join(', ')}`;
    reply.code(status).send({ statusCode: status, code: method ? 'E_METHOD' : 'E_NOT_FOUND', error: STATUS_TEXT[status], message });
  });
  return app;
}

/** Loads the config, builds the router and listens. */
export async function startServer(options: ServeOptions = {}): Promise<RunningServer> {
  const config = loadConfig(options.config);
  const router = createRouter(config);
  const rateLimit = options.rateLimit !== undefined ? { max: options.rateLimit, timeWindow: 60_000 } : config.rateLimit;
  let app: FastifyInstance;
  try {
    app = await buildServer({ router, apiKey: options.apiKey, rateLimit, bodyLimit: config.bodyLimit });
  } catch (error) {
    router.dispose();
    throw error;
  }
  let inflight = 0;
  app.server.on('request', (_request, response) => {
    inflight += 1;
    response.once('close', () => (inflight -= 1));
  });
  try {
    await app.listen({ port: options.port ?? 8080, host: options.host ?? '127.0.0.1' });
  } catch (error) {
    await app.close();
    router.dispose();
    throw error;
  }
  const address = app.server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return {
    app,
    router,
    url: `http://${host}:${address.port}`,
    get inflight() {
      return inflight;
    },
    async close() {
      await app.close();
      router.dispose();
    },
  };
}

/** The command line's flags, as given. */
export interface ServeFlags {
  port?: string;
  host?: string;
  config?: string;
  apiKey?: string;
  rateLimit?: string;
}

/**
 * `moe-router serve`: starts the service and stops it gracefully on SIGTERM/SIGINT (the requests in
 * flight finish, then the process exits 0; a second signal, or a drain longer than 30 s, exits 1).
 * The API key can also come from the MOE_ROUTER_API_KEY environment variable (kept out of `ps`).
 * Resolves to 1 when it cannot start, and to 0 once it serves (the signal handlers end the process).
 */
export async function runServe(flags: ServeFlags): Promise<number> {
  const say = (line: string) => process.stderr.write(`moe-router: ${line}\n`);
  let running: RunningServer;
  try {
    running = await startServer({
      port: integerFlag('port', flags.port, 0, 65535),
      host: flags.host,
      config: flags.config,
      apiKey: flags.apiKey ?? process.env.MOE_ROUTER_API_KEY,
      rateLimit: integerFlag('rate-limit', flags.rateLimit, 1),
    });
  } catch (error) {
    say(error instanceof RouterError ? `${error.code}: ${error.message}` : `cannot start: ${(error as Error).message}`);
    return 1;
  }
  let stopping = false;
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) {
      say(`${signal} again: exiting without draining`);
      process.exit(1);
    }
    stopping = true;
    say(`${signal} received, draining ${running.inflight} in-flight request(s)`);
    setTimeout(() => {
      say(`requests still in flight after ${DRAIN_TIMEOUT_MS / 1000} s; exiting`);
      process.exit(1);
    }, DRAIN_TIMEOUT_MS).unref();
    running.close().then(
      () => {
        say('stopped');
        process.exit(0);
      },
      (error: Error) => {
        say(`shutdown failed: ${error.message}`);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  // Announced only once the handlers are in place: whoever waits for this line may signal at once.
  const { router } = running;
  process.stdout.write(`moe-router: serving ${router.numExperts} experts × ${router.inputDim}, top-${router.topK} on ${router.backend} at ${running.url}\n`);
  return 0;
}
