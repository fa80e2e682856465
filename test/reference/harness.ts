// Runs a generated case on the native engine and compares every call with the reference.
import { DynamicRouter, RouterError, Tensor, backends } from '../../src/index';
import { compareRouting, snapshot } from './compare';
import { describeOptions, refOptions, type Case, type CaseCall } from './cases';
import { ReferenceRouter, RefError, meanStd, rowNorms, type RefRouting } from './reference';
import { widen } from './half';

/** The CPU backends this machine has (`backends` may be a list or a function returning one). */
export function backendList(): string[] {
  const b: unknown = backends;
  const list = typeof b === 'function' ? (b as () => string[])() : (b as string[]);
  return list.filter((n) => n !== 'cuda');
}

export function nativeOptions(c: Case, backend: string): any {
  const o: any = { ...c.options, backend };
  if (c.weightDtype !== 'f32')
    o.weight = Tensor.from(c.options.weight, [c.options.numExperts, c.options.inputDim], { dtype: c.weightDtype });
  return o;
}

export function nativeInput(call: CaseCall, width: number, asTensor: boolean): any {
  if (call.dtype === 'f32' && !asTensor) return call.data;
  return Tensor.from(call.data, [call.T, width], { dtype: call.dtype });
}

/** The parameter a native calibrate() returned, applied to the reference the way §11 says. */
export function applyCalibration(ref: ReferenceRouter, c: Case, parameter: number): void {
  const o = ref.opt;
  if (o.strategy === 'top-p') ref.topP = parameter;
  else if (o.strategy === 'threshold') ref.threshold = parameter;
  else if (o.strategy === 'norm') {
    const cal = c.calibrate!;
    const x = widen(cal.data, cal.dtype);
    const norms = rowNorms(x, cal.T, x.length / cal.T);
    ref.normStats = { mu: parameter, sigma: meanStd(norms).sigma };
  }
}

/** Computes the reference for every call of a case (stops at the first expected error). */
export function referenceRun(
  c: Case,
  calibrated?: number,
): { ref: ReferenceRouter; results: (RefRouting | RefError)[] }[] {
  const ref = new ReferenceRouter(refOptions(c));
  if (calibrated !== undefined) applyCalibration(ref, c, calibrated);
  const results: (RefRouting | RefError)[] = [];
  const states: { ref: ReferenceRouter; results: (RefRouting | RefError)[] }[] = [];
  for (const call of c.calls) {
    if (call.setStep !== undefined) ref.step = call.setStep;
    try {
      results.push(call.kind === 'route' ? ref.route(call.data, call.dtype) : ref.routeLogits(call.data, call.dtype));
    } catch (e) {
      if (!(e instanceof RefError)) throw e;
      results.push(e);
      break;
    }
  }
  states.push({ ref, results });
  return states;
}

/**
 * Runs case `c` on `backend`; returns null when every call agrees, else the first mismatch with the
 * case's seed, options and call index. The reference results are computed once by the caller.
 */
export async function runCase(
  c: Case,
  backend: string,
  refsIn?: { ref: ReferenceRouter; results: (RefRouting | RefError)[] },
): Promise<string | null> {
  const head = `[${c.describe} backend=${backend}] ${describeOptions(c)}`;
  let router: any;
  try {
    router = new DynamicRouter(nativeOptions(c, backend));
  } catch (e: any) {
    return `${head}\n  constructor threw ${e?.code ?? ''} ${e?.message ?? e}`;
  }
  try {
    let refs = refsIn;
    if (c.calibrate) {
      // Calibrate natively, then hold the reference to the parameter the native side reached.
      const cal = c.calibrate;
      const logits = c.calls[0].kind === 'routeLogits';
      const width = logits ? c.options.numExperts : c.options.inputDim;
      const sample = cal.dtype === 'f32' ? cal.data : Tensor.from(cal.data, [cal.T, width], { dtype: cal.dtype });
      let res: { parameter: number; meanExperts: number };
      try {
        res = router.calibrate(sample, { meanExperts: cal.meanExperts, logits });
      } catch (e: any) {
        return `${head}\n  calibrate threw ${e?.code ?? ''} ${e?.message ?? e}`;
      }
      if (router.step !== 0) return `${head}\n  calibrate moved step to ${router.step}`;
      if (!Number.isFinite(res.parameter) || !Number.isFinite(res.meanExperts))
        return `${head}\n  calibrate returned ${JSON.stringify(res)}`;
      refs = referenceRun(c, res.parameter)[0];
    }
    if (!refs) refs = referenceRun(c)[0];
    for (let i = 0; i < refs.results.length; i++) {
      const call = c.calls[i];
      const expected = refs.results[i];
      const ctx = `${head}\n  call ${i} (${call.kind}${call.async ? 'Async' : ''}, T=${call.T}, injected=${JSON.stringify(call.injected)})`;
      if (call.setStep !== undefined) router.step = call.setStep;
      const stepBefore = router.step;
      const width = call.kind === 'route' ? c.options.inputDim : c.options.numExperts;
      const input = nativeInput(call, width, (c.seed + i) % 3 === 0);
      let got: ReturnType<typeof snapshot> | undefined;
      let err: any;
      try {
        const fn = call.async ? `${call.kind}Async` : call.kind;
        const r = call.async ? await router[fn](input) : router[fn](input);
        got = snapshot(r);
        if ((c.seed + i) % 2 === 0) r.release();
      } catch (e) {
        err = e;
      }
      if (expected instanceof RefError) {
        if (!err) return `${ctx}: expected ${expected.code} at token ${expected.token}, got a routing`;
        if (!(err instanceof RouterError) || (err as any).code !== expected.code)
          return `${ctx}: expected RouterError ${expected.code}, got ${err?.code} ${err?.message}`;
        if (!new RegExp(`\\b${expected.token}\\b`).test(err.message))
          return `${ctx}: the ${expected.code} message does not name token ${expected.token}: ${err.message}`;
        return null;
      }
      if (err) return `${ctx}: threw ${err?.code ?? ''} ${err?.message ?? err}`;
      const m = compareRouting(got!, expected, refs.ref, ctx);
      if (m) return m;
      if (router.step !== stepBefore + 1) return `${ctx}: router.step ${router.step} after the call, expected ${stepBefore + 1}`;
      // The selection bias follows the pre-capacity counts; past a call decided at a near-tie the
      // two sides may legitimately hold different biases.
      if (c.options.biasUpdateRate && !expected.detail.exact) break;
    }
  } finally {
    router.dispose();
  }
  return null;
}
