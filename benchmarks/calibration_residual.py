"""Where the calibration task's measured B_crit still differs from the exact one, batch size by batch size.

For every goal and batch size of a finished calibration sweep (``results/noisy_linear_regression`` by
default) it sets side by side: the steps the project's estimator reads (``measured``: the centred
local-linear reading, log S averaged over the seeds at the chosen rate, :func:`gns_utils.critical_batch.expected_steps`),
the exact steps of the expected loss at that same rate (``exact_at_rate``, ``inf`` where the expected loss
at that rate never reaches the goal: its stationary loss is above it), and the exact steps of the best
constant rate (``tuned``). Then it refits (2.11) with each: measured, exact at the chosen rates, and the
tuned steps (the exact answer). Rows where ``exact_at_rate`` is infinite are rates the runs reached the goal
at only by a fluctuation of the loss below a plateau that lies above it. One more reading is fitted for
comparison: the crossing of the seed-averaged loss curve at each rate trained at every seed (the curves
averaged up to the shortest of them; a goal the average does not reach by then is not read).

``near_end`` counts, per chosen (goal, B), the seeds whose crossing was read within the local window's
half-width of the end of their logged curve (the last logged step below ``e^h`` × the crossing, ``h`` =
:data:`gns_utils.critical_batch.LOCAL_HALF_WIDTH`), where the window is one-sided; ``pruned`` counts the
seeds whose run the stopping rules ended before its last goal. (Whether either moves the reading:
``benchmarks/calibration_run_out.py`` and ``benchmarks/calibration_unpruned.py``.)

Usage: ``python benchmarks/calibration_residual.py [RESULTS_DIR]`` (output kept in
``benchmarks/calibration_residual.txt``).
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pandas as pd

from gns_utils.critical_batch import LOCAL_HALF_WIDTH, b_crit_by_goal, expected_steps, steps_to_target
from gns_utils.experiments.compute import all_seed_runs
from gns_utils.experiments.pipeline import local_steps
from gns_utils.experiments.problems import make_problem
from gns_utils.experiments.profiles import experiment_configs
from gns_utils.experiments.store import run_dir
from gns_utils.experiments.sweep import runs_table
from gns_utils.theory import noisy_linear_steps_to_goal, noisy_linear_tuned_steps


def averaged_curve_steps(table: pd.DataFrame, results: str, task: str, goals: list[float]) -> pd.DataFrame:
    """Steps to each goal read from the seed-averaged loss curve of every (B, rate) trained at every seed."""
    n_seeds = table["seed"].nunique()
    rows = []
    for (batch, lr), cell in table.groupby(["batch_units", "lr"]):
        ids = cell["run_id"].unique()
        if len(ids) < n_seeds:
            continue
        curves = [pd.read_csv(run_dir(results, task, i) / "metrics.csv", usecols=["metric_step", "metric"]).dropna()
                  .set_index("metric_step")["metric"] for i in ids]
        end = min(c.index.max() for c in curves)
        both = pd.concat(curves, axis=1).loc[:end].interpolate(method="index", limit_area="inside").dropna()
        steps = steps_to_target(both.index.to_numpy(float), both.mean(axis=1).to_numpy(float), goals,
                                direction="below", method="local")
        rows += [{"goal": g, "batch_units": batch, "lr": lr, "seed": 0, "steps": s} for g, s in zip(goals, steps)]
    return expected_steps(pd.DataFrame(rows), batch="batch_units")


def main() -> None:
    results = sys.argv[1] if len(sys.argv) > 1 else "results"
    cfg = experiment_configs("synthetic", "cpu")[0]
    problem = make_problem(cfg)
    lam, u0, var = problem.eigenvalues, problem.u0, problem.noise_var
    goals = [float(g) for g in cfg.goals]
    table = local_steps(runs_table(all_seed_runs(results, cfg.task)), results, cfg)
    sizes = sorted(int(b) for b in table["batch_units"].unique())
    best = expected_steps(table, batch="batch_units")
    tuned = noisy_linear_tuned_steps(lam, u0, var, sizes, goals)
    ends = {i: pd.read_csv(run_dir(results, cfg.task, i) / "metrics.csv", usecols=["metric_step", "metric"])
            .dropna()["metric_step"].max() for i in table["run_id"].unique()
            if (run_dir(results, cfg.task, i) / "metrics.csv").exists()}
    table = table.assign(end=table["run_id"].map(ends))
    rows = []
    for r in best.itertuples(index=False):
        k, j = goals.index(float(r.goal)), sizes.index(int(r.batch_units))
        cell = table[(table["goal"] == r.goal) & (table["batch_units"] == r.batch_units) & (table["lr"] == r.lr)]
        rows.append({"goal": r.goal, "B": int(r.batch_units), "seeds": int(r.n_seeds), "lr": r.lr,
                     "lr_tuned": tuned.lrs[k, j], "measured": r.steps,
                     "exact_at_rate": noisy_linear_steps_to_goal(lam, u0, var, r.batch_units, r.lr, [r.goal])[0],
                     "tuned": tuned.steps[k, j],
                     "near_end": int((cell["end"] < np.exp(LOCAL_HALF_WIDTH) * cell["steps"]).sum()),
                     "pruned": int((cell["status"] == "pruned").sum())})
    frame = pd.DataFrame(rows)
    print(f"Calibration sweep in {results}/{cfg.task}: {table['run_id'].nunique()} runs, seeds "
          f"{sorted(int(s) for s in table['seed'].unique())}\n")
    with pd.option_context("display.width", 200, "display.max_rows", 200):
        print(frame.to_string(index=False, float_format=lambda v: f"{v:.4g}"))

    def fit(column: str) -> np.ndarray:
        part = frame[np.isfinite(frame[column])].rename(columns={"B": "batch_size", column: "steps"})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out = b_crit_by_goal(part.assign(lr=1.0)[["goal", "batch_size", "lr", "steps"]])
        return out.set_index("goal")["b_crit"].reindex(goals).to_numpy(float)

    averaged = averaged_curve_steps(table, results, cfg.task, goals)
    frame = frame.merge(averaged[["goal", "batch_units", "steps"]].rename(columns={"batch_units": "B",
                                                                                 "steps": "averaged_curve"}),
                        on=["goal", "B"], how="left")
    exact = fit("tuned")
    summary = pd.DataFrame({"B_crit exact (tuned steps)": exact,
                            "measured / exact": fit("measured") / exact,
                            "exact steps at the chosen rates / exact": fit("exact_at_rate") / exact,
                            "seed-averaged curve / exact": fit("averaged_curve") / exact,
                            "chosen rates whose expected loss never reaches the goal":
                                frame.groupby("goal")["exact_at_rate"].apply(lambda s: int(np.isinf(s).sum()))
                                .reindex(goals).to_numpy(),
                            "chosen cells with a seed read near its curve's end":
                                frame.groupby("goal")["near_end"].apply(lambda s: int((s > 0).sum()))
                                .reindex(goals).to_numpy(),
                            "batch sizes fitted": frame.groupby("goal").size().reindex(goals).to_numpy()},
                           index=goals)
    print("\n(2.11) fits per goal (B_crit from the tuned steps at these batch sizes):")
    with pd.option_context("display.width", 200):
        print(summary.to_string(float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
