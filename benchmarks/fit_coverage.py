"""How often the (2.11) fit's 95 % interval for B_crit covers the true value, by interval method.

Simulates sweeps whose steps follow S(B) = S_min (1 + B_crit/B) exactly, times log-normal noise of
``--noise`` (standard deviation of log S), at batch sizes 2^4 … 2^12 around B_crit = 500, fits each with
:func:`gns_utils.fit_tradeoff` — the covariance interval (default) and the bootstrap one
(``bootstrap=200``) — and counts how often each interval contains B_crit. Prints the coverage with its
binomial standard error. Usage::

    python benchmarks/fit_coverage.py [--replicates 400] [--noise 0.1 0.2]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

from gns_utils import fit_tradeoff

B_CRIT, S_MIN = 500.0, 1000.0
BATCH = 2.0 ** np.arange(4, 13)


def coverage(noise: float, replicates: int, bootstrap: int, seed: int = 0) -> tuple[float, float, int]:
    rng = np.random.default_rng(seed)
    hits = total = 0
    for _ in range(replicates):
        steps = S_MIN * (1 + B_CRIT / BATCH) * np.exp(noise * rng.standard_normal(BATCH.size))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            fit = fit_tradeoff(BATCH, steps, bootstrap=bootstrap, seed=int(rng.integers(1 << 30)))
        if fit.bound != "none":
            continue
        total += 1
        hits += fit.ci_low <= B_CRIT <= fit.ci_high
    p = hits / total
    return p, float(np.sqrt(p * (1 - p) / total)), total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=400)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.1, 0.2])
    args = parser.parse_args()
    print(f"B_crit {B_CRIT:g}, S_min {S_MIN:g}, batch sizes {BATCH.min():g}..{BATCH.max():g} "
          f"({BATCH.size} points), {args.replicates} simulated sweeps per row; nominal coverage 95 %")
    for noise in args.noise:
        for name, bootstrap in (("covariance", 0), ("bootstrap (200)", 200)):
            p, se, n = coverage(noise, args.replicates, bootstrap)
            print(f"  noise sd(log S) {noise:.2f}, {name:16s}: coverage {100 * p:.1f} % ± {100 * se:.1f} ({n} fits)")


if __name__ == "__main__":
    main()
