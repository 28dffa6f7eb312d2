"""The local B_crit by branching, on the calibration task: measured against exact, and the interval's coverage.

:func:`gns_utils.experiments.branching.calibration_branching` on the cpu preset's problem: a reference run
(B = 32) checkpointed at the losses 0.7, 0.58, 0.53 and 0.51; from each, continuations at B = 8 … 8192 that
must remove 70 % of the reducible loss, five rates 2^¼ apart around the exact optimum at every batch size,
``--replicates`` continuations each, read from the replicate-averaged loss curve. Repeated for ``--seeds``
independent seeds; it prints measured / exact B_crit per checkpoint and whether the bootstrap interval held
the exact value, and the totals.

Usage: ``python benchmarks/branching_calibration.py [--seeds 6] [--replicates 32]`` (output kept in
``benchmarks/branching_calibration.txt``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from gns_utils.experiments.branching import calibration_branching
from gns_utils.experiments.problems import make_problem
from gns_utils.experiments.profiles import experiment_configs

CHECKPOINTS = (0.7, 0.58, 0.53, 0.51)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--replicates", type=int, default=32)
    args = parser.parse_args()
    problem = make_problem(experiment_configs("synthetic", "cpu")[0])
    start = time.time()
    ratios, covered = [], []
    print(f"checkpoints {CHECKPOINTS}, 70 % of the reducible loss, B = 8 … 8192, {args.replicates} replicates")
    for seed in range(args.seeds):
        frame = calibration_branching(problem.eigenvalues, problem.u0, problem.noise_var, CHECKPOINTS, 0.7,
                                      [2 ** k for k in range(3, 14)], args.replicates, np.random.default_rng(seed),
                                      n_boot=100)
        r = (frame["b_crit"] / frame["b_crit_exact"]).to_numpy()
        ratios += list(r)
        covered += list(frame["covered"])
        print(f"seed {seed}: measured / exact " + ", ".join(f"{x:.3f}" for x in r)
              + "; interval holds the exact value: " + ", ".join("yes" if c else "no" for c in frame["covered"]),
              flush=True)
    print(f"\nmeasured / exact over {len(ratios)} checkpoints: {min(ratios):.3f}–{max(ratios):.3f} "
          f"(median {np.median(ratios):.3f}); the 95 % bootstrap interval held it at {sum(covered)} of {len(covered)}")
    print(f"[{time.time() - start:.0f} s]")


if __name__ == "__main__":
    main()
