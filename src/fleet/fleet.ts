/**
 * ModelFleet: request-level routing across tiers of model endpoints. A request starts in the tier
 * `classify` picks, goes to one endpoint chosen by the balancer among those whose breaker admits it,
 * is retried on another endpoint (within the retry budget) when it fails, and fails over to the next,
 * more expensive tier when its tier has nothing left; the whole request respects one deadline.
 */
import { optionNames, unknownOptions } from '../errors';
import { balancer, BALANCER_NAMES, type Balancer } from './balancer';
import { Member } from './member';
import type { BreakerOptions, Endpoint, EndpointHealth, FleetOptions, FleetResult, RetryOptions } from './types';

export type FleetErrorCode = 'E_CONFIG' | 'E_UNAVAILABLE' | 'E_DEADLINE';

export class FleetError extends Error {
  readonly code: FleetErrorCode;
  /** Attempts made before giving up. */
  readonly attempts: number;

  constructor(code: FleetErrorCode, message: string, attempts = 0, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'FleetError';
    this.code = code;
    this.attempts = attempts;
  }
}

/** Retries in the last window may add budgetPercent of its requests, and at least this many. */
const MIN_RETRIES_PER_WINDOW = 3;

const FLEET_OPTIONS = optionNames<FleetOptions>({
  tiers: true,
  classify: true,
  balancer: true,
  breaker: true,
  retry: true,
  deadlineMs: true,
  now: true,
});
const FLEET_BREAKER_OPTIONS = optionNames<BreakerOptions>({ failureRate: true, windowMs: true, minRequests: true, openMs: true, halfOpenProbes: true });
const RETRY_OPTIONS = optionNames<RetryOptions>({ attempts: true, budgetPercent: true });

function checkOptions(options: FleetOptions<unknown, unknown>): void {
  const bad = (message: string): never => {
    throw new FleetError('E_CONFIG', message);
  };
  if (!options || !Array.isArray(options.tiers) || options.tiers.length === 0) bad('ModelFleet needs tiers: a non-empty array');
  // A misspelled option (the endpoints and tiers aside: they may carry the caller's own fields).
  const unknown = [
    ...unknownOptions(options, FLEET_OPTIONS),
    ...unknownOptions(options.breaker ?? {}, FLEET_BREAKER_OPTIONS).map((line) => `breaker.${line}`),
    ...unknownOptions(options.retry ?? {}, RETRY_OPTIONS).map((line) => `retry.${line}`),
  ];
  if (unknown.length > 0) bad(unknown.map((line) => `option ${line}`).join('\n'));
  const ids = new Set<string>();
  options.tiers.forEach((tier, t) => {
    if (!tier || !Array.isArray(tier.endpoints) || tier.endpoints.length === 0) bad(`tiers[${t}] needs a non-empty endpoints array`);
    for (const endpoint of tier.endpoints) checkEndpoint(endpoint, ids);
  });
  if (options.balancer !== undefined && !BALANCER_NAMES.includes(options.balancer)) {
    bad(`balancer must be one of ${BALANCER_NAMES.join(', ')} (got ${JSON.stringify(options.balancer)})`);
  }
  const b = options.breaker ?? {};
  if (b.failureRate !== undefined && !(b.failureRate > 0 && b.failureRate <= 1)) bad(`breaker.failureRate must be in (0, 1] (got ${b.failureRate})`);
  for (const key of ['windowMs', 'openMs'] as const) {
    if (b[key] !== undefined && !(b[key]! > 0)) bad(`breaker.${key} must be > 0 (got ${b[key]})`);
  }
  for (const key of ['minRequests', 'halfOpenProbes'] as const) {
    if (b[key] !== undefined && !(Number.isInteger(b[key]) && b[key]! >= 1)) bad(`breaker.${key} must be an integer >= 1 (got ${b[key]})`);
  }
  const r = options.retry ?? {};
  if (r.attempts !== undefined && !(Number.isInteger(r.attempts) && r.attempts >= 1)) bad(`retry.attempts must be an integer >= 1 (got ${r.attempts})`);
  if (r.budgetPercent !== undefined && !(r.budgetPercent >= 0)) bad(`retry.budgetPercent must be >= 0 (got ${r.budgetPercent})`);
  if (options.deadlineMs !== undefined && !(options.deadlineMs > 0)) bad(`deadlineMs must be > 0 (got ${options.deadlineMs})`);
}

function checkEndpoint(endpoint: Endpoint<unknown, unknown>, ids: Set<string>): void {
  if (!endpoint || typeof endpoint.id !== 'string' || typeof endpoint.invoke !== 'function') {
    throw new FleetError('E_CONFIG', 'every endpoint needs an id (string) and an invoke function');
  }
  if (ids.has(endpoint.id)) throw new FleetError('E_CONFIG', `endpoint id '${endpoint.id}' is used twice`);
  ids.add(endpoint.id);
  if (endpoint.weight !== undefined && !(endpoint.weight > 0 && Number.isFinite(endpoint.weight))) {
    throw new FleetError('E_CONFIG', `endpoint '${endpoint.id}' weight must be a positive number (got ${endpoint.weight})`);
  }
}

export class ModelFleet<Req = unknown, Res = unknown> {
  private readonly options: FleetOptions<Req, Res>;
  private readonly tiers: { name: string; members: Member<Req, Res>[]; turn: number }[];
  /** Replaced members still finishing their requests, for health(). */
  private readonly draining = new Set<Member<Req, Res>>();
  private readonly pick: Balancer;
  private readonly now: () => number;
  private readonly maxAttempts: number;
  private readonly budgetPercent: number;
  private readonly windowMs: number;
  private requestTimes: number[] = [];
  private retryTimes: number[] = [];

  constructor(options: FleetOptions<Req, Res>) {
    checkOptions(options as FleetOptions<unknown, unknown>);
    this.options = options;
    this.now = options.now ?? Date.now;
    this.pick = balancer(options.balancer ?? 'round-robin');
    this.maxAttempts = options.retry?.attempts ?? 3;
    this.budgetPercent = options.retry?.budgetPercent ?? 20;
    this.windowMs = options.breaker?.windowMs ?? 60_000;
    this.tiers = options.tiers.map((tier, t) => ({
      name: tier.name,
      members: tier.endpoints.map((e) => new Member(e, t, options.breaker ?? {}, this.now)),
      turn: 0,
    }));
  }

  async invoke(req: Req): Promise<FleetResult<Res>> {
    const start = this.now();
    const deadline = new AbortController();
    const timer = this.options.deadlineMs === undefined ? undefined : setTimeout(() => deadline.abort(), this.options.deadlineMs);
    try {
      const first = await this.classify(req);
      this.requestTimes.push(start);
      let attempts = 0;
      let lastError: unknown;
      for (let t = first; t < this.tiers.length; t++) {
        const tried = new Set<Member<Req, Res>>();
        for (;;) {
          if (attempts >= this.maxAttempts || (attempts > 0 && !this.retryAllowed())) {
            throw new FleetError('E_UNAVAILABLE', `request failed after ${attempts} attempt(s); no attempts or retry budget left`, attempts, lastError);
          }
          const member = this.choose(t, tried);
          if (!member) break; // nothing left in this tier: fail over to the next
          tried.add(member);
          attempts += 1;
          if (attempts > 1) this.retryTimes.push(this.now());
          try {
            const value = await this.attempt(member, req, deadline.signal);
            return { value, endpoint: member.endpoint.id, tier: this.tiers[t]!.name, attempts, latencyMs: this.now() - start };
          } catch (error) {
            if (deadline.signal.aborted) {
              throw new FleetError('E_DEADLINE', `deadline of ${this.options.deadlineMs} ms passed after ${attempts} attempt(s)`, attempts, error);
            }
            lastError = error;
          }
        }
      }
      throw new FleetError('E_UNAVAILABLE', `no endpoint could serve the request (${attempts} attempt(s) from tier '${this.tiers[first]!.name}' on)`, attempts, lastError);
    } finally {
      if (timer) clearTimeout(timer);
    }
  }

  /**
   * Puts `endpoint` in the place of the one called `id`: new requests go to it at once, while the old
   * one finishes what it has in flight. Resolves when the old endpoint has drained.
   */
  replace(id: string, endpoint: Endpoint<Req, Res>): Promise<void> {
    for (const tier of this.tiers) {
      const index = tier.members.findIndex((m) => m.endpoint.id === id);
      if (index < 0) continue;
      const ids = new Set(this.tiers.flatMap((x) => x.members.map((m) => m.endpoint.id)));
      ids.delete(id);
      checkEndpoint(endpoint as Endpoint<unknown, unknown>, ids);
      const old = tier.members[index]!;
      tier.members[index] = new Member(endpoint, old.tier, this.options.breaker ?? {}, this.now);
      this.draining.add(old);
      return old.drain().then(() => {
        this.draining.delete(old);
      });
    }
    return Promise.reject(new FleetError('E_CONFIG', `no endpoint with id '${id}'`));
  }

  health(): EndpointHealth[] {
    const report = (m: Member<Req, Res>): EndpointHealth => {
      const breaker = m.breaker.state;
      return {
        id: m.endpoint.id,
        tier: this.tiers[m.tier]!.name,
        state: m.draining ? 'draining' : breaker === 'open' ? 'down' : breaker === 'half-open' ? 'probing' : 'up',
        breaker,
        inflight: m.inflight,
        latencyMs: m.latencyMs,
        errorRate: m.breaker.errorRate(),
        requests: m.requests,
        costPer1kTokens: m.endpoint.costPer1kTokens ?? null,
      };
    };
    return [...this.tiers.flatMap((t) => t.members.map(report)), ...[...this.draining].map(report)];
  }

  private async classify(req: Req): Promise<number> {
    if (!this.options.classify) return 0;
    const tier = await this.options.classify(req);
    if (!Number.isInteger(tier) || tier < 0 || tier >= this.tiers.length) {
      throw new FleetError('E_CONFIG', `classify returned ${JSON.stringify(tier)}; expected a tier index in [0, ${this.tiers.length - 1}]`);
    }
    return tier;
  }

  /** The balancer's choice among the tier's untried members whose breaker admits a request. */
  private choose(t: number, tried: Set<Member<Req, Res>>): Member<Req, Res> | undefined {
    const tier = this.tiers[t]!;
    const candidates = tier.members.filter((m) => !tried.has(m) && m.breaker.state !== 'open');
    while (candidates.length > 0) {
      const member = this.pick(candidates as Member[], tier.turn++) as Member<Req, Res>;
      if (member.breaker.tryAcquire()) return member;
      candidates.splice(candidates.indexOf(member), 1); // half-open and out of probes
    }
    return undefined;
  }

  private retryAllowed(): boolean {
    const horizon = this.now() - this.windowMs;
    this.requestTimes = this.requestTimes.filter((at) => at >= horizon);
    this.retryTimes = this.retryTimes.filter((at) => at >= horizon);
    const budget = Math.max(MIN_RETRIES_PER_WINDOW, Math.floor((this.requestTimes.length * this.budgetPercent) / 100));
    return this.retryTimes.length < budget;
  }

  /** One call; the deadline aborts it even when the endpoint ignores its signal. */
  private attempt(member: Member<Req, Res>, req: Req, deadline: AbortSignal): Promise<Res> {
    if (deadline.aborted) return Promise.reject(new Error('deadline passed'));
    const started = this.now();
    member.started();
    let settled = false;
    const call = Promise.resolve()
      .then(() => member.endpoint.invoke(req, { signal: deadline }))
      .then(
        (value) => {
          settled = true;
          member.finished(false, this.now() - started);
          return value;
        },
        (error: unknown) => {
          settled = true;
          member.finished(true, this.now() - started);
          throw error;
        },
      );
    const aborted = new Promise<never>((_, reject) => {
      deadline.addEventListener('abort', () => {
        if (!settled) reject(new Error('deadline passed'));
      }, { once: true });
    });
    call.catch(() => undefined); // a call abandoned at the deadline may still reject later
    return Promise.race([call, aborted]);
  }
}
