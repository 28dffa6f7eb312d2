"""Do the two goal sources agree? Steps to goal read off the steps' own mini-batches against a fixed
training subset, on the same runs.

Usage::

    python benchmarks/goal_source_agreement.py [--task fashion_mnist_mlp_adam] [--seeds 0 1 2]
        [--eval-examples N] [--results results] [--jobs 2]

For each batch size of a task's committed sweep (``--results``), the learning rate that was fastest to
the last goal is trained again at each seed with ``goal_source="subset"``, past the committed run's steps
to the last goal (by ``--extra``). Such a run logs both goal sources at every logged point: the fixed
training subset's metric at the logged step (``metrics.csv`` columns ``loss`` / ``error``) and the mean of
the steps' own mini-batches since the previous logged point (``train_loss`` / ``train_error``), placed at
the mean step of the weights they saw, as ``goal_source="batches"`` places it. Steps to each goal are read
off both curves with the same A.3 smoothing (``train.steps_to_goals_both_sources``), and B_crit is
fitted (2.11) per goal and seed from each, so the two sources are compared on identical trainings.
``--eval-examples N`` sets the subset's size (the training set's size or more: the whole training set).

Prints, per goal: the median over batch sizes and seeds of S_batches / S_subset, its spread, the seed
spread of S_subset itself (the noise the two should agree within), and B_crit from each source per seed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gns_utils.critical_batch import b_crit_by_goal, best_runs
from gns_utils.experiments.compute import sweep_runs
from gns_utils.experiments.config import make_experiment
from gns_utils.experiments.problems import make_problem
from gns_utils.experiments.store import run_dir
from gns_utils.experiments.train import steps_to_goals_both_sources, train_run


def committed_best(results: Path, task: str) -> tuple[dict, list[tuple[int, float, float]]]:
    """The task's experiment config and, per batch size, ``(B, lr, steps)`` of the committed run that was
    fastest to the last goal."""
    experiment = json.loads((results / task / "experiment.json").read_text())
    last = str(experiment["goals"][-1])
    best: dict[int, tuple[float, float]] = {}
    for s in sweep_runs(results, task):
        steps = s["steps_to_goal"].get(last)
        batch = s["config"]["batch_size"]
        if steps is not None and (batch not in best or steps < best[batch][1]):
            best[batch] = (s["config"]["lr"], steps)
    return experiment, [(b, lr, steps) for b, (lr, steps) in sorted(best.items())]


def train_both(experiment: dict, batch: int, lr: float, steps: float, seed: int, extra: float,
               eval_examples: int | None = None) -> pd.DataFrame:
    """One run with the subset goal source (``eval_examples`` in the subset: None, the task's; at least the
    training set's size, all of it); its steps to each goal from both sources."""
    torch.set_num_threads(1)
    goals = tuple(experiment["goals"])
    cfg = make_experiment({**experiment, "goal_source": "subset", "b_noise_examples": 0, "seed": seed,
                           "seeds": [], "eval_examples": eval_examples or experiment["eval_examples"]})
    run = cfg.run(batch, lr, goals=(*goals, 0.0),  # a goal never met: the run trains to its budget
                  budget_examples=int(np.ceil(extra * steps)) * batch)
    problem = make_problem(cfg)
    with tempfile.TemporaryDirectory() as folder:
        train_run(problem, run, folder, progress=False)
        metrics = pd.read_csv(run_dir(folder, cfg.task, run.run_id) / "metrics.csv")
    both = steps_to_goals_both_sources(metrics, cfg.metric, goals)
    units = batch * problem.units_per_example
    return pd.DataFrame({"seed": seed, "batch_units": units, "batch_examples": batch, "lr": lr, "goal": goals,
                         "steps_subset": both["subset"], "steps_batches": both["batches"]})


def b_crit(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """B_crit per goal (2.11) from one run per batch size, steps from ``column``."""
    table = frame.rename(columns={column: "steps"})[["batch_units", "lr", "goal", "steps"]]
    return b_crit_by_goal(best_runs(table, batch="batch_units"), batch="batch_units").set_index("goal")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="fashion_mnist_mlp_adam")
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--extra", type=float, default=1.5,
                        help="train to this multiple of the committed run's steps to the last goal")
    parser.add_argument("--eval-examples", type=int, default=None,
                        help="examples in the subset (default: the task's; the training set's size or more: all)")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    experiment, best = committed_best(args.results, args.task)
    jobs = [(experiment, b, lr, steps, seed, args.extra, args.eval_examples) for seed in args.seeds
            for b, lr, steps in best]
    with ProcessPoolExecutor(args.jobs) as pool:
        frame = pd.concat(pool.map(train_both, *zip(*jobs)), ignore_index=True)
    pd.set_option("display.width", 200)
    print(f"{args.task}: the committed fastest rate to the last goal at each of {len(best)} batch sizes, "
          f"seeds {args.seeds}, trained with goal_source='subset' (subset of "
          f"{args.eval_examples or experiment['eval_examples']} examples) to {args.extra:g}x its committed steps; "
          f"torch {torch.__version__}, 1 thread per run")
    frame["log_ratio"] = np.log(frame["steps_batches"] / frame["steps_subset"])
    rows = []
    for goal, group in frame.groupby("goal", sort=False):
        log_s = np.log(group.pivot(index="batch_units", columns="seed", values="steps_subset"))
        rows.append({"goal": goal, "pairs": int(group["log_ratio"].notna().sum()),
                     "S_batches/S_subset median": float(np.exp(group["log_ratio"].median())),
                     "ratio min": float(np.exp(group["log_ratio"].min())),
                     "ratio max": float(np.exp(group["log_ratio"].max())),
                     "seed spread of S_subset (sd of log)": float(log_s.std(axis=1, ddof=1).median())
                     if log_s.shape[1] > 1 else np.nan})
    print("\nsteps to goal, the two sources on the same runs (all batch sizes and seeds):")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("\nS_batches / S_subset by batch size (median over seeds), per goal:")
    print(frame.assign(ratio=np.exp(frame["log_ratio"])).pivot_table(index="batch_units", columns="goal",
                                                                     values="ratio", aggfunc="median")
          .to_string(float_format=lambda v: f"{v:.3f}"))
    print("\nB_crit per goal from each source (fit of (2.11); bound: none = fitted; the ratio where both are):")
    out = []
    for seed, group in frame.groupby("seed"):
        fits = {source: b_crit(group, f"steps_{source}") for source in ("subset", "batches")}
        for goal in fits["subset"].index.intersection(fits["batches"].index):
            a, b = fits["subset"].loc[goal], fits["batches"].loc[goal]
            out.append({"seed": seed, "goal": goal, "B_crit subset": a["b_crit"], "s.e.": a["b_crit_stderr"],
                        "bound": a["bound"], "B_crit batches": b["b_crit"], "s.e. ": b["b_crit_stderr"],
                        "bound ": b["bound"],
                        "batches/subset": b["b_crit"] / a["b_crit"] if a["bound"] == b["bound"] == "none" else np.nan})
    print(pd.DataFrame(out).to_string(index=False, float_format=lambda v: f"{v:,.3f}"))


if __name__ == "__main__":
    main()
