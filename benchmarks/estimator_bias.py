"""Where the bias of the measured B_crit comes from, on the calibration task (noisy linear regression).

The exact constant-rate B_crit is known there (:func:`gns_utils.theory.noisy_linear_constant_lr_b_crit`:
the (2.11) fit to the steps of the expected loss under the best constant rate). This script simulates
sweeps of the cpu preset's problem and batch sizes with many seeds (numpy SGD,
:func:`gns_utils.experiments.synthetic.simulate_sgd_losses`; each batch size gets a grid of rates
``--spacing`` apart around the exact optimum, at a random offset), and fits (2.11) to the steps that a
ladder of readings gives, one effect added at a time:

* ``exact, best grid rate``: the expected loss's steps at the best rate of the grid (the grid's spacing alone);
* ``raw first crossing``: one noisy run at that rate, its first crossing of the goal;
* ``EMA (A.3)``: the same run smoothed by the causal EMA (decay 0.6 per logged point);
* ``local-linear``: smoothed by the centred local-linear fit (:func:`gns_utils.critical_batch.local_linear`);
* ``fastest of grid, EMA``: the paper's A.3 procedure (fastest run of one seed's grid, EMA) — the old estimator;
* ``fastest of grid, local``: the same with the centred reading;
* ``seed-mean, local``: log S averaged over ``--seeds`` seeds at each rate, then the best rate
  (:func:`gns_utils.critical_batch.expected_steps`) — the project's estimator.

It prints the median and the 16-84 % range of measured / exact B_crit over the simulated sweeps, per goal,
and the coverage of the seed-aware 95 % interval (:func:`gns_utils.critical_batch.seed_aware_b_crit`).

Usage: ``python benchmarks/estimator_bias.py [--replicates 48] [--seeds 3] [--spacing 2]``
(output kept in ``benchmarks/estimator_bias.txt``).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd

from gns_utils import theory
from gns_utils.critical_batch import (
    best_runs,
    expected_steps,
    fit_tradeoff,
    seed_aware_b_crit,
    steps_by_seed,
)
from gns_utils.experiments.profiles import presets
from gns_utils.experiments.synthetic import power_law_spectrum, simulate_calibration_sweeps


def problem() -> tuple[np.ndarray, np.ndarray, float, np.ndarray, np.ndarray, int]:
    """The cpu calibration preset: spectrum, start, σ², goals, batch sizes, evaluations per decade."""
    p = presets("synthetic", "cpu")[0]
    kw = p["data_kwargs"]
    lam = power_law_spectrum(kw["dim"], kw["power"])
    u0 = -np.random.default_rng(kw["data_seed"]).standard_normal(kw["dim"])
    return lam, u0, kw["noise_var"], np.array(p["goals"], float), np.array(p["batch_sizes"], float), \
        p["evals_per_decade"]


def simulate(replicates: int, spacing: float, n_rates: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Every run's steps to each goal by each reading; the exact constant-rate B_crit per goal."""
    lam, u0, var, goals, batch_sizes, per_decade = problem()
    exact = theory.noisy_linear_constant_lr_b_crit(lam, u0, var, goals, batch_sizes).b_crit
    runs = simulate_calibration_sweeps(lam, u0, var, goals, batch_sizes, per_decade, replicates, spacing, n_rates,
                                       np.random.default_rng(seed))
    return runs, exact


def _fit(steps: pd.Series, batch_sizes: pd.Series) -> float:
    ok = np.isfinite(steps.to_numpy(float))
    if ok.sum() < 3:
        return np.nan
    fit = fit_tradeoff(batch_sizes[ok], steps[ok])
    return fit.b_crit if fit.bound == "none" else np.nan


def ladder(runs: pd.DataFrame, exact: np.ndarray, n_seeds: int) -> tuple[pd.DataFrame, np.ndarray]:
    """measured / exact B_crit per sweep and reading; the seed-aware interval's coverage per goal."""
    goals = list(pd.unique(runs["goal"]))
    ratios, covered = [], []
    seeds = sorted(runs["seed"].unique())
    for start in range(0, len(seeds) - n_seeds + 1, n_seeds):
        group = runs[runs["seed"].isin(seeds[start:start + n_seeds])]
        one = group[group["seed"] == seeds[start]]
        # the rate best in expectation, per (goal, B): one seed's run there
        at_best = one.loc[one.groupby(["goal", "batch_size"])["expected"].idxmin()]
        readings = {
            "exact, best grid rate": at_best.assign(steps=at_best["expected"]),
            "raw first crossing": at_best.assign(steps=at_best["raw"]),
            "EMA (A.3)": at_best.assign(steps=at_best["ema"]),
            "local-linear": at_best.assign(steps=at_best["local"]),
            "fastest of grid, EMA": best_runs(one.assign(steps=one["ema"])),
            "fastest of grid, local": best_runs(one.assign(steps=one["local"])),
            "seed-mean, local": expected_steps(group.assign(steps=group["local"])),
        }
        for name, table in readings.items():
            for g, goal in enumerate(goals):
                rows = table[table["goal"] == goal]
                ratios.append({"reading": name, "goal": goal, "ratio": _fit(rows["steps"], rows["batch_size"]) / exact[g]})
        local = group.assign(steps=group["local"])
        best = expected_steps(local)
        by_goal = seed_aware_b_crit(best, steps_by_seed(local, best))
        covered.append(((by_goal["ci_low"] <= exact) & (exact <= by_goal["ci_high"])).to_numpy())
    return pd.DataFrame(ratios), np.mean(covered, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicates", type=int, default=48, help="simulated seeds (sweeps = replicates / seeds)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per simulated sweep")
    parser.add_argument("--spacing", type=float, default=2.0, help="factor between neighbouring rates")
    parser.add_argument("--rates", type=int, default=7, help="rates per batch size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.simplefilter("ignore", RuntimeWarning)
    start = time.perf_counter()
    runs, exact = simulate(args.replicates, args.spacing, args.rates, args.seed)
    ratios, coverage = ladder(runs, exact, args.seeds)
    n_sweeps = args.replicates // args.seeds
    print(f"Calibration task (cpu preset), {args.replicates} simulated seeds, {args.rates} rates x{args.spacing:g} apart per "
          f"batch size; the seed-mean reading uses {args.seeds} seeds per sweep ({n_sweeps} sweeps), the others one.")
    print("exact constant-rate B_crit per goal: " + ", ".join(f"{b:.4g}" for b in exact))
    print("\nmeasured / exact B_crit: median [16 %, 84 %] over the simulated sweeps")
    table = ratios.groupby(["reading", "goal"], sort=False)["ratio"].agg(
        lambda v: f"{np.nanmedian(v):.2f} [{np.nanpercentile(v, 16):.2f}, {np.nanpercentile(v, 84):.2f}]").unstack("goal")
    table.columns = [f"{g:g}" for g in table.columns]
    print(table.to_string())
    print("\ncoverage of the seed-aware 95 % interval per goal: " + ", ".join(f"{c:.2f}" for c in coverage)
          + f" ({n_sweeps} sweeps)")
    print(f"\n[{time.perf_counter() - start:.0f} s]")


if __name__ == "__main__":
    main()
