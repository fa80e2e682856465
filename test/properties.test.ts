// Random cases, native engine vs the independent reference (test/reference/), on every CPU backend
// this machine has. Each case is built from an integer seed (test/reference/cases.ts), so a failure
// message carries everything needed to rebuild it: `makeCase(seed, strategy)`.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { makeCase, STRATEGIES, type Case } from './reference/cases';
import { backendList, referenceRun, runCase } from './reference/harness';
import { RefError, type RefRouting } from './reference/reference';

const CASES_PER_STRATEGY = 320;

interface Tally {
  cases: number;
  calls: number;
  exact: number;
  consistency: number;
  hidden: number;
  logits: number;
  half: number;
  rejected: number;
  sanitizedInvalid: number;
  drops: number;
  groups: number;
  noise: number;
  multiCall: number;
  bigE: number;
  bigT: number;
  dynamicK: number;
  calibrated: number;
}

function tallyCase(t: Tally, c: Case, results: (RefRouting | RefError)[]) {
  t.cases++;
  if (c.calls.length > 1) t.multiCall++;
  if (c.options.groups) t.groups++;
  if (c.options.noise) t.noise++;
  if (c.options.numExperts >= 256) t.bigE++;
  if (c.calls[0].T >= 1000) t.bigT++;
  for (let i = 0; i < results.length; i++) {
    const r = results[i];
    const call = c.calls[i];
    t.calls++;
    if (call.kind === 'route') t.hidden++;
    else t.logits++;
    if (call.dtype !== 'f32') t.half++;
    if (r instanceof RefError) {
      t.rejected++;
      continue;
    }
    if (r.detail.exact) t.exact++;
    else t.consistency++;
    if (r.invalidTokens.length > 0) t.sanitizedInvalid++;
    if (r.droppedAssignments > 0) t.drops++;
    const ks = new Set(r.expertsPerToken);
    if (ks.size > 1) t.dynamicK++;
  }
}

const backendNames = backendList();

describe('native engine agrees with the reference', () => {
  it('has at least the scalar backend', () => {
    expect(backendNames).toContain('scalar');
  });

  STRATEGIES.forEach((strategy, si) => {
    it(`${strategy}: ${CASES_PER_STRATEGY} random cases × [${backendNames.join(', ')}]`, { timeout: 120_000 }, async () => {
      const tally: Tally = {
        cases: 0, calls: 0, exact: 0, consistency: 0, hidden: 0, logits: 0, half: 0, rejected: 0,
        sanitizedInvalid: 0, drops: 0, groups: 0, noise: 0, multiCall: 0, bigE: 0, bigT: 0, dynamicK: 0, calibrated: 0,
      };
      await fc.assert(
        fc.asyncProperty(fc.noBias(fc.integer({ min: 1, max: 2 ** 31 - 1 })), async (seed) => {
          const c = makeCase(seed, strategy);
          // (cases that calibrate first build their reference inside runCase)
          const refs = c.calibrate ? undefined : referenceRun(c)[0];
          tallyCase(tally, c, (refs ?? referenceRun(c)[0]).results);
          if (c.calibrate) tally.calibrated++;
          for (const backend of backendNames) {
            const mismatch = await runCase(c, backend, refs);
            if (mismatch) throw new Error(`${mismatch}\n  rebuild with makeCase(${seed}, '${strategy}')`);
          }
        }),
        { seed: 0x5eed + si, numRuns: CASES_PER_STRATEGY, endOnFailure: true },
      );
      if (process.env.TALLY) console.log(strategy, JSON.stringify(tally));
      // The generator must keep exercising what it is meant to (counts are deterministic per seed).
      expect(tally.cases).toBe(CASES_PER_STRATEGY);
      expect(tally.hidden).toBeGreaterThanOrEqual(100);
      expect(tally.logits).toBeGreaterThanOrEqual(80);
      expect(tally.half).toBeGreaterThanOrEqual(80);
      expect(tally.exact).toBeGreaterThanOrEqual(60);
      expect(tally.rejected).toBeGreaterThanOrEqual(3);
      expect(tally.sanitizedInvalid).toBeGreaterThanOrEqual(3);
      expect(tally.noise).toBeGreaterThanOrEqual(20);
      expect(tally.multiCall).toBeGreaterThanOrEqual(20);
      expect(tally.bigE).toBeGreaterThanOrEqual(10);
      expect(tally.bigT).toBeGreaterThanOrEqual(5);
      if (strategy !== 'expert-choice') expect(tally.groups).toBeGreaterThanOrEqual(30);
      expect(tally.drops).toBeGreaterThanOrEqual(strategy === 'expert-choice' ? 30 : 15);
      if (strategy !== 'top-k') expect(tally.dynamicK).toBeGreaterThanOrEqual(50);
      if (['top-p', 'threshold', 'norm'].includes(strategy)) expect(tally.calibrated).toBeGreaterThanOrEqual(30);
    });
  });
});
