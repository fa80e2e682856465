/**
 * ModelFleet: request-level routing across tiers of model endpoints. A request starts in the tier
 * `classify` picks, goes to one endpoint chosen by the balancer among those whose breaker admits it,
 * is retried on another endpoint (within the retry budget) when it fails, and fails over to the next,
 * more expensive tier when its tier has nothing left; the whole request respects one deadline.
 */
import { isObject, OptionProblems, optionNames, shown, unknownOptions } from '../errors';
import { balancer, BALANCER_NAMES, type Balancer } from './balancer';
import { TimeWindow, type Admission } from './breaker';
import { Member } from './member';
import type { BreakerOptions, Endpoint, EndpointHealth, FleetOptions, FleetResult, RetryOptions } from './types';

export type FleetErrorCode = 'E_CONFIG' | 'E_UNAVAILABLE' | 'E_DEADLINE' | 'E_CLASSIFY';

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

/** Retries in the last window may add budgetPercent of its requests, and at least this many (unless 0). */
const MIN_RETRIES_PER_WINDOW = 3;
/** The longest deadline a timer can hold (setTimeout's limit, about 24.8 days). */
const MAX_DEADLINE_MS = 2 ** 31 - 1;

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

const configError = (message: string) => new FleetError('E_CONFIG', message);

/**
 * Throws E_CONFIG naming every problem of the options, a line each: first every unknown name and every
 * value of the wrong type; once the types are right, every value out of range. (Tiers and endpoints may
 * carry the caller's own fields besides those the fleet reads.)
 */
function checkOptions(options: FleetOptions<unknown, unknown>): void {
  if (!isObject(options)) throw configError('ModelFleet needs an options object with tiers');
  const types = new OptionProblems(configError);
  for (const line of unknownOptions(options, FLEET_OPTIONS)) types.note(line);
  const section = (name: 'breaker' | 'retry', known: readonly string[]): Record<string, unknown> => {
    const value = options[name];
    if (value === undefined) return {};
    if (!isObject(value)) {
      types.note(`${name} must be an object (got ${shown(value)})`);
      return {};
    }
    for (const line of unknownOptions(value, known)) types.note(`${name}.${line}`);
    return value;
  };
  const breaker = section('breaker', FLEET_BREAKER_OPTIONS);
  const retry = section('retry', RETRY_OPTIONS);
  const numbers: [string, unknown][] = [
    ...FLEET_BREAKER_OPTIONS.map((key): [string, unknown] => [`breaker.${key}`, breaker[key]]),
    ...RETRY_OPTIONS.map((key): [string, unknown] => [`retry.${key}`, retry[key]]),
    ['deadlineMs', options.deadlineMs],
  ];
  for (const [name, value] of numbers) if (value !== undefined) types.real(name, value as number, 0);
  for (const name of ['classify', 'now'] as const) {
    if (options[name] !== undefined && typeof options[name] !== 'function') types.note(`${name} must be a function (got ${shown(options[name])})`);
  }
  if (options.balancer !== undefined) types.pick('balancer', options.balancer, BALANCER_NAMES, 'round-robin');
  const tiers = Array.isArray(options.tiers) ? options.tiers : [];
  if (tiers.length === 0) types.note(`tiers must be a non-empty array of { name, endpoints } (got ${shown(options.tiers)})`);
  tiers.forEach((tier, t) => {
    if (!isObject(tier)) return types.note(`tiers[${t}] must be { name, endpoints } (got ${shown(tier)})`);
    if (typeof tier.name !== 'string') types.note(`tiers[${t}].name must be a string (got ${shown(tier.name)})`);
    if (!Array.isArray(tier.endpoints) || tier.endpoints.length === 0) {
      return types.note(`tiers[${t}].endpoints must be a non-empty array (got ${shown(tier.endpoints)})`);
    }
    tier.endpoints.forEach((endpoint, i) => endpointTypes(types, endpoint, `tiers[${t}].endpoints[${i}]`));
  });
  types.raise();

  const ranges = new OptionProblems(configError);
  const range = (name: string, value: number | undefined, ok: (v: number) => boolean, expected: string) => {
    if (value !== undefined && !ok(value)) ranges.note(`${name} must be ${expected} (got ${shown(value)})`);
  };
  const b = options.breaker ?? {};
  range('breaker.failureRate', b.failureRate, (v) => v > 0 && v <= 1, 'in (0, 1]');
  for (const key of ['windowMs', 'openMs'] as const) range(`breaker.${key}`, b[key], (v) => v > 0 && Number.isFinite(v), 'a finite number > 0');
  for (const key of ['minRequests', 'halfOpenProbes'] as const) range(`breaker.${key}`, b[key], (v) => Number.isInteger(v) && v >= 1, 'an integer >= 1');
  const r = options.retry ?? {};
  range('retry.attempts', r.attempts, (v) => Number.isInteger(v) && v >= 1, 'an integer >= 1');
  range('retry.budgetPercent', r.budgetPercent, (v) => v >= 0 && Number.isFinite(v), 'a finite number >= 0');
  range('deadlineMs', options.deadlineMs, (v) => v > 0 && v <= MAX_DEADLINE_MS, `in (0, ${MAX_DEADLINE_MS}] (a timer's limit; leave it out for no deadline)`);
  const ids = new Set<string>();
  options.tiers.forEach((tier, t) =>
    tier.endpoints.forEach((endpoint, i) => endpointRanges(ranges, endpoint, `tiers[${t}].endpoints[${i}]`, ids)),
  );
  ranges.raise();
}

/** The type problems of one endpoint (`where` names it in the messages). */
function endpointTypes(problems: OptionProblems, endpoint: unknown, where: string): void {
  if (!isObject(endpoint)) return problems.note(`${where} must be { id, invoke } (got ${shown(endpoint)})`);
  if (typeof endpoint.id !== 'string') problems.note(`${where}.id must be a string (got ${shown(endpoint.id)})`);
  if (typeof endpoint.invoke !== 'function') problems.note(`${where}.invoke must be a function (got ${shown(endpoint.invoke)})`);
  for (const key of ['weight', 'costPer1kTokens'] as const) {
    if (endpoint[key] !== undefined) problems.real(`${where}.${key}`, endpoint[key] as number, 0);
  }
}

/** The range problems of one endpoint of the right types; `ids` holds the ids taken, and takes its own. */
function endpointRanges(problems: OptionProblems, endpoint: Endpoint<unknown, unknown>, where: string, ids: Set<string>): void {
  if (ids.has(endpoint.id)) problems.note(`${where}.id '${endpoint.id}' is used twice`);
  ids.add(endpoint.id);
  const { weight, costPer1kTokens } = endpoint;
  if (weight !== undefined && !(weight > 0 && Number.isFinite(weight))) problems.note(`${where}.weight must be a finite number > 0 (got ${shown(weight)})`);
  if (costPer1kTokens !== undefined && !(costPer1kTokens >= 0 && Number.isFinite(costPer1kTokens))) {
    problems.note(`${where}.costPer1kTokens must be a finite number >= 0 (got ${shown(costPer1kTokens)})`);
  }
}

/** `work`'s outcome, unless `signal` aborts first: then a rejection with what `onAbort` returns. */
function unlessAborted<T>(work: Promise<T>, signal: AbortSignal, onAbort: () => unknown): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const abort = () => reject(onAbort());
    if (signal.aborted) return abort();
    signal.addEventListener('abort', abort, { once: true });
    work.then(
      (value) => {
        signal.removeEventListener('abort', abort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener('abort', abort);
        reject(error);
      },
    );
  });
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
  /** Requests and retries started in the last window (the retry budget's). */
  private readonly requestTimes: TimeWindow;
  private readonly retryTimes: TimeWindow;

  constructor(options: FleetOptions<Req, Res>) {
    checkOptions(options as FleetOptions<unknown, unknown>);
    this.options = options;
    this.now = options.now ?? Date.now;
    this.pick = balancer(options.balancer ?? 'round-robin');
    this.maxAttempts = options.retry?.attempts ?? 3;
    this.budgetPercent = options.retry?.budgetPercent ?? 20;
    const windowMs = options.breaker?.windowMs ?? 60_000;
    this.requestTimes = new TimeWindow(windowMs);
    this.retryTimes = new TimeWindow(windowMs);
    this.tiers = options.tiers.map((tier, t) => ({
      name: tier.name,
      members: tier.endpoints.map((e) => new Member(e, t, options.breaker ?? {}, this.now)),
      turn: 0,
    }));
  }

  async invoke(req: Req): Promise<FleetResult<Res>> {
    const start = this.now();
    const deadline = new AbortController();
    const { deadlineMs } = this.options;
    const timer = deadlineMs === undefined ? undefined : setTimeout(() => deadline.abort(), deadlineMs);
    let attempts = 0;
    let lastError: unknown;
    const expired = () => new FleetError('E_DEADLINE', `deadline of ${deadlineMs} ms passed after ${attempts} attempt(s)`, attempts, lastError);
    try {
      const first = await this.classify(req, deadline.signal, expired);
      this.requestTimes.add(start);
      for (let t = first; t < this.tiers.length; t++) {
        const tried = new Set<Member<Req, Res>>();
        for (;;) {
          if (deadline.signal.aborted) throw expired();
          if (attempts >= this.maxAttempts || (attempts > 0 && !this.retryAllowed())) {
            throw new FleetError('E_UNAVAILABLE', `request failed after ${attempts} attempt(s); no attempts or retry budget left`, attempts, lastError);
          }
          const chosen = this.choose(t, tried);
          if (!chosen) break; // nothing left in this tier: fail over to the next
          const [member, admission] = chosen;
          tried.add(member);
          attempts += 1;
          if (attempts > 1) this.retryTimes.add(this.now());
          try {
            const value = await this.attempt(member, admission, req, deadline.signal);
            return { value, endpoint: member.endpoint.id, tier: this.tiers[t]!.name, attempts, latencyMs: this.now() - start };
          } catch (error) {
            lastError = error;
            if (deadline.signal.aborted) throw expired();
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
   * one finishes what it has in flight. Resolves when the old endpoint has drained; rejects with
   * E_CONFIG (and changes nothing) for an unknown id or a bad endpoint.
   */
  async replace(id: string, endpoint: Endpoint<Req, Res>): Promise<void> {
    const tier = this.tiers.find((x) => x.members.some((m) => m.endpoint.id === id));
    if (!tier) throw new FleetError('E_CONFIG', `no endpoint with id '${id}'`);
    const types = new OptionProblems(configError);
    endpointTypes(types, endpoint, 'endpoint');
    types.raise();
    const ranges = new OptionProblems(configError);
    const ids = new Set(this.tiers.flatMap((x) => x.members.map((m) => m.endpoint.id)));
    ids.delete(id);
    endpointRanges(ranges, endpoint as Endpoint<unknown, unknown>, 'endpoint', ids);
    ranges.raise();
    const index = tier.members.findIndex((m) => m.endpoint.id === id);
    const old = tier.members[index]!;
    tier.members[index] = new Member(endpoint, old.tier, this.options.breaker ?? {}, this.now);
    this.draining.add(old);
    await old.drain();
    this.draining.delete(old);
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

  /** The first tier to try; E_CLASSIFY when classify throws or answers no tier index. */
  private async classify(req: Req, deadline: AbortSignal, expired: () => FleetError): Promise<number> {
    const { classify } = this.options;
    if (!classify) return 0;
    let tier: number;
    try {
      tier = await unlessAborted(Promise.resolve().then(() => classify(req)), deadline, expired);
    } catch (error) {
      if (error instanceof FleetError) throw error;
      throw new FleetError('E_CLASSIFY', `classify threw: ${error instanceof Error ? error.message : shown(error)}`, 0, error);
    }
    if (!Number.isInteger(tier) || tier < 0 || tier >= this.tiers.length) {
      throw new FleetError('E_CLASSIFY', `classify returned ${shown(tier)}; expected a tier index in [0, ${this.tiers.length - 1}]`);
    }
    return tier;
  }

  /** The balancer's choice among the tier's untried members whose breaker admits a request. */
  private choose(t: number, tried: Set<Member<Req, Res>>): [Member<Req, Res>, Admission] | undefined {
    const tier = this.tiers[t]!;
    const candidates = tier.members.filter((m) => !tried.has(m) && m.breaker.state !== 'open');
    while (candidates.length > 0) {
      const member = this.pick(candidates as Member[], tier.turn++) as Member<Req, Res>;
      const admission = member.breaker.tryAcquire();
      if (admission !== undefined) return [member, admission];
      candidates.splice(candidates.indexOf(member), 1); // half-open and out of probes
    }
    return undefined;
  }

  private retryAllowed(): boolean {
    const now = this.now();
    const share = Math.floor((this.requestTimes.count(now) * this.budgetPercent) / 100);
    const budget = this.budgetPercent === 0 ? 0 : Math.max(MIN_RETRIES_PER_WINDOW, share);
    return this.retryTimes.count(now) < budget;
  }

  /**
   * One call. The deadline ends it even when the endpoint ignores its signal: the call then counts as
   * failed and no longer in flight (for the breaker, the balancers and replace), whenever it settles.
   */
  private attempt(member: Member<Req, Res>, admission: Admission, req: Req, deadline: AbortSignal): Promise<Res> {
    const started = this.now();
    member.started();
    let ended = false;
    const end = (failed: boolean) => {
      if (ended) return;
      ended = true;
      member.finished(failed, this.now() - started, admission);
    };
    const call = Promise.resolve()
      .then(() => member.endpoint.invoke(req, { signal: deadline }))
      .then(
        (value) => {
          end(false);
          return value;
        },
        (error: unknown) => {
          end(true);
          throw error;
        },
      );
    return unlessAborted(call, deadline, () => {
      end(true);
      return new Error('deadline passed');
    });
  }
}
