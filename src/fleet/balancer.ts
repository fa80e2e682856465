/** Choosing one endpoint of a tier. Every balancer picks among the members that may take a request. */
import type { Member } from './member';
import type { BalancerName } from './types';

export type Balancer = (candidates: Member[], turn: number) => Member;

/** Lowest score wins; ties go to the candidate after the round-robin turn, so load still spreads. */
function lowest(candidates: Member[], turn: number, score: (m: Member) => number): Member {
  let best = candidates[turn % candidates.length]!;
  let bestScore = score(best);
  for (let i = 1; i < candidates.length; i++) {
    const m = candidates[(turn + i) % candidates.length]!;
    const s = score(m);
    if (s < bestScore) {
      best = m;
      bestScore = s;
    }
  }
  return best;
}

const BALANCERS: Record<BalancerName, Balancer> = {
  'round-robin': (candidates, turn) => candidates[turn % candidates.length]!,
  // Smooth weighted round-robin (as nginx): over any window each member gets its weight's share.
  weighted: (candidates) => {
    let total = 0;
    let best = candidates[0]!;
    for (const m of candidates) {
      m.currentWeight += m.weight;
      total += m.weight;
      if (m.currentWeight > best.currentWeight) best = m;
    }
    best.currentWeight -= total;
    return best;
  },
  'least-request': (candidates, turn) => lowest(candidates, turn, (m) => m.inflight),
  // Members never called first (score -1), then the lowest smoothed latency of successful calls; a
  // member called but never successful last, so that one that only fails is not preferred.
  latency: (candidates, turn) => lowest(candidates, turn, (m) => m.latencyMs ?? (m.requests === 0 ? -1 : Infinity)),
  // The lowest recent error rate, then the fewest in flight.
  health: (candidates, turn) => lowest(candidates, turn, (m) => m.breaker.errorRate() * 1e6 + m.inflight),
};

export const BALANCER_NAMES = Object.keys(BALANCERS) as BalancerName[];

export function balancer(name: BalancerName): Balancer {
  return BALANCERS[name];
}
