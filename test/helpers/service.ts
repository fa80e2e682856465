// Shared by the cache, monitor, server and config tests: small routers, data, result snapshots and a
// primary router that can be made to fail like a broken GPU.
import { normalGenerator, randomGate } from '../../src/random';
import { DynamicRouter, RouterError, type RouterOptions } from '../../src/index';
import type { Routable, RouteInput, RoutingResult } from '../../src/routable';

export const D = 32;
export const E = 64;
export const K = 4;

export function makeRouter(patch: Partial<RouterOptions> = {}, seed = 1): DynamicRouter {
  return new DynamicRouter({ inputDim: D, numExperts: E, topK: K, weight: randomGate(E, D, seed), ...patch });
}

/** `tokens` rows of `width` standard normal values. */
export function data(tokens: number, width: number, seed: number): Float32Array {
  const normal = normalGenerator(seed);
  return Float32Array.from({ length: tokens * width }, () => normal());
}

/** A routing result as plain values, to compare answers from different paths. */
export function plain(r: RoutingResult) {
  return {
    tokens: r.tokens,
    experts: Array.from(r.experts),
    weights: Array.from(r.weights),
    expertsPerToken: Array.from(r.expertsPerToken),
    expertCounts: Array.from(r.expertCounts),
    invalidTokens: Array.from(r.invalidTokens),
    flopReduction: r.flopReduction,
    droppedAssignments: r.droppedAssignments,
  };
}

/** Routes and snapshots, releasing the pooled buffers. */
export function routed(router: Pick<Routable, 'route'>, input: RouteInput) {
  const r = router.route(input);
  const snapshot = plain(r);
  r.release();
  return snapshot;
}

/** `r` naming 'cuda' as the backend that computed it. */
function onCuda(r: RoutingResult): RoutingResult {
  return new Proxy(r, {
    get: (target, key) => (key === 'backend' ? 'cuda' : key === 'release' ? () => target.release() : Reflect.get(target, key)),
  });
}

/**
 * A router that delegates to a real one and says it runs on CUDA, but throws `failWith` (E_CUDA by
 * default) while `broken`: what a failing GPU backend looks like to the breaker and the monitor.
 */
export class FlakyRouter implements Routable {
  broken = false;
  failWith: RouterError['code'] = 'E_CUDA';
  /**
   * While set, its answers name the real router's CPU backend, as a native CUDA router's call that fell
   * back to the CPU does (no error: the breaker does not see it).
   */
  fallsBack = false;
  /** Calls that reached this router. */
  calls = 0;
  constructor(readonly inner: DynamicRouter) {}

  private check(): void {
    this.calls += 1;
    if (this.broken) throw new RouterError(this.failWith, `injected ${this.failWith} failure`);
  }

  private answer(r: RoutingResult): RoutingResult {
    return this.fallsBack ? r : onCuda(r);
  }

  get inputDim() {
    return this.inner.inputDim;
  }
  get numExperts() {
    return this.inner.numExperts;
  }
  get topK() {
    return this.inner.topK;
  }
  get options() {
    return this.inner.options;
  }
  get backend() {
    return 'cuda';
  }
  get configVersion() {
    return this.inner.configVersion;
  }
  get disposed() {
    return this.inner.disposed;
  }
  get parameters() {
    return this.inner.parameters;
  }
  route(x: RouteInput) {
    this.check();
    return this.answer(this.inner.route(x));
  }
  routeLogits(x: RouteInput) {
    this.check();
    return this.answer(this.inner.routeLogits(x));
  }
  async routeAsync(x: RouteInput) {
    this.check();
    return this.answer(await this.inner.routeAsync(x));
  }
  async routeLogitsAsync(x: RouteInput) {
    this.check();
    return this.answer(await this.inner.routeLogitsAsync(x));
  }
  calibrate(...args: Parameters<DynamicRouter['calibrate']>) {
    return this.inner.calibrate(...args);
  }
  updateBias(counts: Int32Array) {
    this.inner.updateBias(counts);
  }
  stats() {
    return this.inner.stats();
  }
  resetStats() {
    this.inner.resetStats();
  }
  dispose() {
    this.inner.dispose();
  }
}
