"""Where a sweep's compute goes: examples trained, the share the (2.11) fits need, evaluation.

Counted from the run files of a results folder (``summary.json``, ``metrics.csv``), for the runs
of a task's sweep at its main seed (the reference re-runs that measure B_noise are left out):

* ``examples_trained``: Σ over runs of steps × B (examples; sequences for language models);
* ``share_needed``: the part of those the fits use — for each run, the examples up to the last
  goal at which it is the fastest run of its batch size (:func:`gns_utils.critical_batch.best_runs`);
  a run that is never the fastest needs none;
* ``examples_evaluated``: examples forwarded to evaluate the goal metric on a fixed subset;
* ``eval_share``: the evaluation's share of the compute, a forward pass counted as a third of a
  training step (forward + backward ≈ 3 forwards).

:func:`replay_stopping` replays the stopping rules of :mod:`gns_utils.experiments.stopping` on the
stored curves of every batch size's grid and says whether every fastest run would have been kept.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gns_utils.critical_batch import best_runs
from gns_utils.experiments.stopping import replay
from gns_utils.experiments.sweep import runs_table, stored_curve

#: Cost of forwarding one example relative to training on it (forward + backward ≈ 3 forwards).
FORWARD_COST = 1.0 / 3.0


def sweep_runs(results_dir: str | Path, task: str) -> list[dict[str, Any]]:
    """Summaries of the sweep runs of ``task`` at its main seed (not the B_noise reference re-runs)."""
    root = Path(results_dir) / task
    seed = json.loads((root / "experiment.json").read_text()).get("seed", 0)
    out = []
    for folder in sorted((root / "runs").iterdir()):
        path = folder / "summary.json"
        if not path.exists():
            continue
        summary = json.loads(path.read_text())
        cfg = summary["config"]
        if cfg.get("seed", 0) == seed and not cfg.get("b_noise_examples") and summary["status"] != "failed":
            out.append(summary)
    return out


def needed_steps(summaries: list[dict[str, Any]]) -> pd.Series:
    """Per run id: the steps up to the last goal at which the run is the fastest of its batch size."""
    best = best_runs(runs_table(summaries), batch="batch_units")
    return best.groupby("run_id")["steps"].max()


def _evaluated(results_dir: Path, summary: dict[str, Any]) -> float:
    if "eval_examples_forwarded" in summary:
        return float(summary["eval_examples_forwarded"])
    cfg = summary["config"]  # runs from before the count was kept: every logged row was an evaluation
    metrics = results_dir / cfg["task"] / "runs" / summary["run_id"] / "metrics.csv"
    rows = len(pd.read_csv(metrics)) if metrics.exists() else 0
    return float(rows * cfg["eval_examples"])


def compute_table(results_dir: str | Path, tasks: list[str]) -> pd.DataFrame:
    """One row per task: ``runs, examples_trained, share_needed, examples_evaluated, eval_share``."""
    results_dir = Path(results_dir)
    rows = []
    for task in tasks:
        summaries = sweep_runs(results_dir, task)
        need = needed_steps(summaries)
        batch = {s["run_id"]: s["config"]["batch_size"] for s in summaries}
        trained = sum(s.get("n_steps", 0) * batch[s["run_id"]] for s in summaries)
        needed = sum(float(need[r]) * batch[r] for r in need.index if np.isfinite(need[r]))
        evaluated = sum(_evaluated(results_dir, s) for s in summaries)
        rows.append({"task": task, "runs": len(summaries), "examples_trained": trained,
                     "share_needed": needed / trained if trained else np.nan, "examples_evaluated": evaluated,
                     "eval_share": FORWARD_COST * evaluated / (trained + FORWARD_COST * evaluated)
                     if trained else np.nan})
    return pd.DataFrame(rows)


def replay_stopping(results_dir: str | Path, task: str, margin: float | None = None) -> dict[str, Any]:
    """Replay the stopping rules on a task's stored runs, grid by grid.

    Returns:
        ``kept_every_best`` (no run would have stopped before its last winning goal), ``dropped``
        (``(batch size, lr, stop step, steps needed)`` of the runs it would have cut short),
        ``share_needed`` under the replayed stops, and ``examples_trained`` under them.
    """
    summaries = sweep_runs(results_dir, task)
    goals = tuple(json.loads((Path(results_dir) / task / "experiment.json").read_text())["goals"])
    need = needed_steps(summaries)
    dropped, trained, needed = [], 0.0, 0.0
    by_batch: dict[int, list[dict[str, Any]]] = {}
    for s in summaries:
        by_batch.setdefault(s["config"]["batch_size"], []).append(s)
    for batch, group in sorted(by_batch.items()):
        curves = [stored_curve(results_dir, s) for s in group]
        stops = replay([(c.steps, c.values, s["status"]) for c, s in zip(curves, group)], goals, margin=margin,
                       direction=curves[0].direction if curves else "below")
        for s, stop in zip(group, stops):
            n = min(float(stop), float(s["n_steps"]))
            trained += n * batch
            if s["run_id"] in need.index and np.isfinite(need[s["run_id"]]):
                needed += float(need[s["run_id"]]) * batch
                if stop < need[s["run_id"]]:
                    dropped.append((batch, s["config"]["lr"], float(stop), float(need[s["run_id"]])))
    return {"kept_every_best": not dropped, "dropped": dropped, "examples_trained": trained,
            "share_needed": needed / trained if trained else np.nan}
