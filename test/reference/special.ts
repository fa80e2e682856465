// Standard normal CDF in double, accurate to ~1e-15 in the range that matters.

/** erf(x) for |x| ≤ 6 via the all-positive series erf(x) = 2/√π · e^{-x²} Σ 2^n x^{2n+1} / (2n+1)!!. */
function erfSeries(x: number): number {
  const x2 = x * x;
  let term = x;
  let sum = x;
  for (let n = 1; n < 500; n++) {
    term *= (2 * x2) / (2 * n + 1);
    sum += term;
    if (term < sum * 1e-17) break;
  }
  return (2 / Math.sqrt(Math.PI)) * Math.exp(-x2) * sum;
}

/** erfc(x) for x ≥ 0 via the Lentz continued fraction (good for x ≥ 2). */
function erfcCF(x: number): number {
  // erfc(x) = e^{-x²}/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + 2/(x + ...)))))
  const tiny = 1e-300;
  let f = x;
  if (f === 0) f = tiny;
  let C = f;
  let Dd = 0;
  for (let n = 1; n < 500; n++) {
    const a = n / 2;
    Dd = x + a * Dd;
    if (Dd === 0) Dd = tiny;
    C = x + a / C;
    if (C === 0) C = tiny;
    Dd = 1 / Dd;
    const delta = C * Dd;
    f *= delta;
    if (Math.abs(delta - 1) < 1e-16) break;
  }
  return Math.exp(-x * x) / Math.sqrt(Math.PI) / f;
}

export function erfc(x: number): number {
  if (Number.isNaN(x)) return NaN;
  if (x < 0) return 2 - erfc(-x);
  if (x < 2) return 1 - erfSeries(x);
  if (x > 27) return 0;
  return erfcCF(x);
}

/** Φ(z), the standard normal CDF. */
export function normalCdf(z: number): number {
  if (Number.isNaN(z)) return NaN;
  if (z === Infinity) return 1;
  if (z === -Infinity) return 0;
  return 0.5 * erfc(-z / Math.SQRT2);
}
