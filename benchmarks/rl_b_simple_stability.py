"""Which whole-run noise scale of the reinforcement-learning task is stable between runs that should agree.

Two runs of the same A2C configuration on two machines follow different trajectories (float rounding
differs, and CartPole's returns amplify any difference), so the whole-run B_simple of a task must be a
quantity that does not depend on the draw. Seeds stand in for machines here: the repeats at seeds 1
and 2 train the same (B, ε) grid as seed 0. For every (B, ε) trained at all three seeds, from each run's
``metrics.csv``:

* ``app_d_ema``: the App. D training average of the per-step ratio of the two EMAs (what the summaries
  report as ``b_simple``; :func:`gns_utils.theory.training_average` of ``b_simple_ema``);
* ``ratio_of_sums``: Σ tr Σ / Σ |G|² over every logged step (one ratio of two averages, eq. 2.9);
* ``at_last_goal``: the ratio of sums in the window around the step where the run reaches the last goal
  it reaches (:func:`gns_utils.noise.windowed_b_simple`, as the per-goal matched points).

Reported: per quantity, the median over (B, ε) of the spread between seeds (max / min of the three
seeds' values) and how many values are not positive. Usage::

    python benchmarks/rl_b_simple_stability.py [RESULTS] [--task cartpole_a2c]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from gns_utils.noise import windowed_b_simple
from gns_utils.theory import training_average


def run_quantities(metrics: pd.DataFrame, batch_units: float, last_goal_step: float | None) -> dict[str, float]:
    """The three whole-run noise scales of one run (see the module docstring)."""
    ok = metrics["b_simple_ema"].notna() & (metrics["step"] > 0)
    app_d = float(training_average(metrics.loc[ok, "step"], metrics.loc[ok, "b_simple_ema"], batch_units)) \
        if ok.sum() >= 2 else np.nan
    n = metrics["noise_steps"].fillna(0).to_numpy(float)
    g2 = (metrics["g2_mean"].fillna(0).to_numpy(float) * n)
    trace = (metrics["trace_sigma_mean"].fillna(0).to_numpy(float) * n)
    sums = float(trace.sum() / g2.sum()) if g2.sum() > 0 else np.nan
    at_goal = np.nan
    if last_goal_step is not None and last_goal_step > 0:
        at_goal = windowed_b_simple(metrics["step"].to_numpy(float), g2, trace, n, float(last_goal_step)).estimate
    return {"app_d_ema": app_d, "ratio_of_sums": sums, "at_last_goal": float(at_goal) if at_goal is not None else np.nan}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, default=Path("results"))
    parser.add_argument("--task", default="cartpole_a2c")
    args = parser.parse_args()
    root = args.results / args.task / "runs"
    rows = []
    for path in sorted(root.glob("*/summary.json")):
        s = json.loads(path.read_text())
        cfg = s["config"]
        if cfg.get("b_noise_examples") or s["status"] == "failed":
            continue
        metrics = pd.read_csv(path.parent / "metrics.csv")
        reached = [v for v in s.get("steps_to_goal", {}).values() if v is not None]
        rows.append({"batch": s["batch_units"], "lr": cfg["lr"], "seed": cfg.get("seed", 0),
                     **run_quantities(metrics, float(s["batch_units"]), max(reached) if reached else None)})
    frame = pd.DataFrame(rows)
    seeds = frame["seed"].nunique()
    full = frame.groupby(["batch", "lr"]).filter(lambda g: g["seed"].nunique() == seeds)
    print(f"{args.task}: {len(full.groupby(['batch', 'lr']))} (B, lr) points trained at all {seeds} seeds")
    for quantity in ("app_d_ema", "ratio_of_sums", "at_last_goal"):
        spreads = []
        for _, group in full.groupby(["batch", "lr"]):
            values = group[quantity].to_numpy(float)
            if np.all(np.isfinite(values) & (values > 0)):
                spreads.append(values.max() / values.min())
        bad = int((~(np.isfinite(full[quantity]) & (full[quantity] > 0))).sum())
        print(f"  {quantity:14s} seed spread (max/min over seeds), median over points {np.median(spreads):.2f}, "
              f"90th percentile {np.percentile(spreads, 90):.2f}; {bad} of {len(full)} values not positive")


if __name__ == "__main__":
    main()


def seed_medians(frame: pd.DataFrame, quantity: str) -> pd.Series:
    """Per seed: the median of ``quantity`` over the seed's runs that reached every goal they were trained for."""
    return frame.groupby("seed")[quantity].median()
