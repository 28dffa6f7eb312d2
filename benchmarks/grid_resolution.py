"""How far a discrete learning-rate grid alone biases B_crit, on the calibration task's exact steps.

The sweep chooses, per (goal, B), the best of the rates it trained; the exact constant-rate B_crit
(:func:`gns_utils.theory.noisy_linear_constant_lr_b_crit`) uses the continuous optimum. With no noise at all
(the steps of the expected loss, :func:`gns_utils.theory.noisy_linear_steps_to_goal`), this script fits (2.11)
to the best grid rate's steps for grids of several spacings, each at several offsets, and with the sweep's
refinement rounds (``lr_refine``: the midpoints around every goal's fastest rate,
:func:`gns_utils.experiments.sweep.refined_lrs`). A grid misses the optimum by up to half a spacing; for SGD at
large B the optimum sits just below the divergence edge, where the grid cannot follow it, so S(B) at large B
is overstated and B_crit comes out low.

Usage: ``python benchmarks/grid_resolution.py [--offsets 8]`` (output kept in ``benchmarks/grid_resolution.txt``).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd

from gns_utils.critical_batch import b_crit_by_goal
from gns_utils.experiments.problems import make_problem
from gns_utils.experiments.profiles import experiment_configs
from gns_utils.experiments.sweep import portable_lr
from gns_utils.theory import noisy_linear_stable_lr, noisy_linear_steps_to_goal

SETTINGS = ((2.0, 0), (2.0 ** 0.5, 0), (2.0 ** 0.25, 0), (2.0, 1), (2.0, 2), (2.0 ** 0.5, 1))


def grid_b_crit(problem, goals, batch_sizes, spacing: float, refine: int, offset: float) -> np.ndarray:
    """B_crit per goal fitted to the exact steps of the best rate of a grid (``spacing`` apart, shifted by
    ``offset`` spacings, every stable rate) after ``refine`` rounds of the sweep's refinement."""
    lam, u0, var = problem.eigenvalues, problem.u0, problem.noise_var
    rows = []
    for b in batch_sizes:
        top = 2.0 * noisy_linear_stable_lr(lam, b)  # rates beyond twice the edge diverge at once
        lrs = [portable_lr(spacing ** (k + offset)) for k in range(-60, 10) if 1e-4 < spacing ** (k + offset) < top]
        steps = {lr: noisy_linear_steps_to_goal(lam, u0, var, b, lr, goals) for lr in lrs}
        for k in range(refine):
            step = spacing ** (0.5 ** (k + 1))
            winners = {min(steps, key=lambda lr: steps[lr][g]) for g in range(len(goals))}
            for lr in {portable_lr(w * f) for w in winners for f in (1 / step, step)} - set(steps):
                steps[lr] = noisy_linear_steps_to_goal(lam, u0, var, b, lr, goals)
        for g, goal in enumerate(goals):
            best = min(s[g] for s in steps.values())
            if np.isfinite(best):
                rows.append({"goal": goal, "batch_size": b, "lr": 1.0, "steps": best})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fit = b_crit_by_goal(pd.DataFrame(rows))
    return fit.set_index("goal")["b_crit"].reindex(goals).to_numpy(float)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--offsets", type=int, default=8, help="grid offsets (fractions of a spacing) per setting")
    args = parser.parse_args()
    start = time.time()
    cfg = experiment_configs("synthetic", "cpu")[0]
    problem = make_problem(cfg)
    goals = np.asarray(cfg.goals, float)
    exact = np.asarray(problem.exact_constant_lr_b_crit(goals, cfg.batch_sizes).b_crit, float)
    print(f"Calibration task (cpu preset), batch sizes {cfg.batch_sizes[0]}-{cfg.batch_sizes[-1]}; exact steps, "
          f"no noise; {args.offsets} grid offsets per setting")
    print("exact constant-rate B_crit per goal: " + ", ".join(f"{b:.4g}" for b in exact) + "\n")
    print("B_crit of the best grid rate / exact: median [min, max] over the offsets")
    table = {}
    for spacing, refine in SETTINGS:
        ratios = np.array([grid_b_crit(problem, goals, cfg.batch_sizes, spacing, refine, off) / exact
                           for off in np.arange(args.offsets) / args.offsets])
        name = f"spacing {spacing:.3f}, lr_refine {refine} (finest {spacing ** (0.5 ** refine):.3f})"
        table[name] = [f"{np.median(r):.2f} [{r.min():.2f}, {r.max():.2f}]" for r in ratios.T]
    frame = pd.DataFrame(table, index=[f"{g:g}" for g in goals]).T
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(frame.to_string())
    print(f"\n[{time.time() - start:.0f} s]")


if __name__ == "__main__":
    main()
