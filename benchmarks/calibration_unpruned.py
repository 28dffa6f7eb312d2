"""Are the calibration task's early readings at its last goal made by the stopping rules?

At the last calibration goal the small batches' steps read early against the exact steps of the expected
loss at the same rate (``benchmarks/calibration_residual.py``). The sweep's stopping rules prune each seed's
runs apart, so a rate whose every seed reached the goal might be one whose seeds were lucky. This script
trains, without any stopping rule, the rates the committed sweep tried near the optimum at B = 8 … 64 at
three fresh seeds (10, 11, 12), each run to its run-out past the last goal (or its budget), reads them as the
pipeline does (:func:`gns_utils.experiments.pipeline.local_steps`, :func:`gns_utils.critical_batch.expected_steps`)
and sets each cell beside the exact steps at its rate and the tuned exact steps.

Usage: ``python benchmarks/calibration_unpruned.py OUT_DIR`` (about 1.5 min on 2 cores; output kept in
``benchmarks/calibration_unpruned.txt``).
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from gns_utils import theory
from gns_utils.critical_batch import expected_steps
from gns_utils.experiments.pipeline import local_steps
from gns_utils.experiments.problems import make_problem
from gns_utils.experiments.profiles import experiment_configs
from gns_utils.experiments.sweep import runs_table
from gns_utils.experiments.train import train_run

#: The rates the committed sweep (main seed) trained near the optimum at each small batch size.
GRID = {8: [0.003914, 0.004654, 0.005535, 0.006582], 16: [0.007807, 0.009284, 0.01104],
        32: [0.015572, 0.018519, 0.022022, 0.026189], 64: [0.031062, 0.043928, 0.052239, 0.062123]}
SEEDS = (10, 11, 12)


def _train(job: tuple[str, int, float, int]) -> dict:
    import torch

    torch.set_num_threads(1)
    out, batch, lr, seed = job
    cfg = experiment_configs("synthetic", "cpu")[0]
    return train_run(make_problem(cfg), cfg.run(batch, lr, seed=seed), out, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="a results folder of its own")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    cfg = experiment_configs("synthetic", "cpu")[0]
    problem = make_problem(cfg)
    goal = cfg.goals[-1]
    jobs = [(args.out_dir, b, lr, s) for b, lrs in GRID.items() for lr in lrs for s in SEEDS]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        summaries = list(pool.map(_train, jobs))
    print(f"{len(summaries)} runs at seeds {SEEDS}, no stopping rule, in {time.perf_counter() - start:.0f} s; "
          f"goal {goal:g} (the last)\n")
    table = local_steps(runs_table(summaries), args.out_dir, cfg)
    at_goal = table[table["goal"] == goal]
    for (b, lr), cell in at_goal.groupby(["batch_units", "lr"]):
        exact = theory.noisy_linear_steps_to_goal(problem.eigenvalues, problem.u0, problem.noise_var, b, lr, [goal])[0]
        seeds = ", ".join("–" if not np.isfinite(v) else f"{v:.0f}" for v in cell["steps"])
        print(f"B {b:4.0f}  lr {lr:.5f}  steps by seed {seeds:22s} exact at this rate {exact:7.0f}")
    best = expected_steps(at_goal, batch="batch_units")
    sizes = sorted(GRID)
    tuned = theory.noisy_linear_tuned_steps(problem.eigenvalues, problem.u0, problem.noise_var, sizes, [goal])
    print("\nchosen (every seed reached, smallest mean log S):")
    for r in best.itertuples():
        exact = theory.noisy_linear_steps_to_goal(problem.eigenvalues, problem.u0, problem.noise_var, r.batch_units,
                                                  r.lr, [goal])[0]
        print(f"B {r.batch_units:4.0f}  lr {r.lr:.5f}  steps {r.steps:6.0f}  exact at this rate {exact:7.0f}  "
              f"tuned exact {tuned.steps[0, sizes.index(int(r.batch_units))]:6.0f}")


if __name__ == "__main__":
    main()
