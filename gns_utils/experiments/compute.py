"""Where a sweep's compute goes: examples trained, the share the (2.11) fits need, evaluation.

Counted from the run files of a results folder (``summary.json``, ``metrics.csv``), for the runs
of a task's sweep at its main seed (the reference re-runs that measure B_noise are left out):

* ``examples_trained``: Σ over runs of steps × B (examples; sequences for language models);
* ``share_needed``: the part of those the fits use — for each run, the examples up to the last
  goal at which it is the fastest run of its batch size (:func:`gns_utils.critical_batch.best_runs`),
  and at the sweep's last goal up to ``RUN_OUT`` × that step (the points past the goal its reading uses);
  a run that is never the fastest needs none;
* ``examples_evaluated``: examples forwarded to evaluate the goal metric on a fixed subset;
* ``eval_share``: the evaluation's share of the compute, a forward pass counted as a third of a
  training step (forward + backward ≈ 3 forwards);
* ``runs_all_seeds``, ``examples_all_seeds`` and ``share_needed_all_seeds``: the same over every seed
  (the main sweep and its repeats at ``seeds``), where a run is needed up to the hardest goal at which its
  (B, rate) is the one :func:`gns_utils.critical_batch.expected_steps` chooses from the seed-averaged
  steps: the points the seed-aware fits use (:func:`needed_steps_all_seeds`).

:func:`unneeded_by_closeness` splits the examples the fits do not need by how close their run came to
the fastest run of its batch size: what a stopping rule that keeps every fastest run could still save.

:func:`replay_stopping` replays the stopping rules of :mod:`gns_utils.experiments.stopping` on the
stored curves of every batch size's grid and says whether every fastest run would have been kept.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gns_utils.critical_batch import RUN_OUT, b_crit_by_goal, best_runs, expected_steps
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
    return _with_run_out(best).groupby("run_id")["steps"].max()


def _with_run_out(used: pd.DataFrame) -> pd.DataFrame:
    """Steps needed at each goal: at the last goal ``RUN_OUT`` × the crossing, the points past it that its
    centred reading uses (:data:`gns_utils.critical_batch.RUN_OUT`)."""
    last = used["goal"] == pd.unique(used["goal"])[-1] if len(used) else used["goal"].astype(bool)
    return used.assign(steps=np.where(last, RUN_OUT * used["steps"], used["steps"]))


def all_seed_runs(results_dir: str | Path, task: str) -> list[dict[str, Any]]:
    """Summaries of every run of ``task``'s sweep and its repeats at other seeds (not the B_noise re-runs)."""
    out = []
    for path in sorted((Path(results_dir) / task / "runs").glob("*/summary.json")):
        summary = json.loads(path.read_text())
        if not summary["config"].get("b_noise_examples") and summary["status"] != "failed":
            out.append(summary)
    return out


def needed_steps_all_seeds(summaries: list[dict[str, Any]]) -> pd.Series:
    """Per run id, over every seed: the steps up to the hardest goal at which the run's (B, rate) is the rate
    :func:`gns_utils.critical_batch.expected_steps` chooses (seed-averaged steps, read as the runs recorded
    them); a run whose rate is never chosen needs none."""
    table = runs_table(summaries)
    chosen = expected_steps(table, batch="batch_units").dropna(subset=["steps"])[["goal", "batch_units", "lr"]]
    used = table.merge(chosen, on=["goal", "batch_units", "lr"])
    return _with_run_out(used).groupby("run_id")["steps"].max()


def _evaluated(results_dir: Path, summary: dict[str, Any]) -> float:
    if "eval_examples_forwarded" in summary:
        return float(summary["eval_examples_forwarded"])
    cfg = summary["config"]  # runs from before the count was kept: every logged row was an evaluation
    metrics = results_dir / cfg["task"] / "runs" / summary["run_id"] / "metrics.csv"
    rows = len(pd.read_csv(metrics)) if metrics.exists() else 0
    return float(rows * cfg["eval_examples"])


def compute_table(results_dir: str | Path, tasks: list[str]) -> pd.DataFrame:
    """One row per task: ``runs, examples_trained, share_needed, examples_evaluated, eval_share`` (main seed's
    sweep) and ``runs_all_seeds, steps_all_seeds, examples_all_seeds, share_needed_all_seeds`` (every seed); ``statistics``: the
    task draws its batches as sufficient statistics, so its examples cost nothing per example (totals over tasks
    leave it out)."""
    results_dir = Path(results_dir)
    rows = []
    for task in tasks:
        summaries = sweep_runs(results_dir, task)
        runs = closeness(summaries)
        trained = int(runs["examples_trained"].sum()) if len(runs) else 0
        needed = float(runs["examples_needed"].sum()) if len(runs) else 0.0
        evaluated = sum(_evaluated(results_dir, s) for s in summaries)
        every = all_seed_runs(results_dir, task)
        need = needed_steps_all_seeds(every) if every else pd.Series(dtype=float)
        all_trained = all_needed = 0.0
        all_steps = 0
        for s in every:
            batch, steps = s["config"]["batch_size"], s.get("n_steps", 0)
            all_steps += steps
            all_trained += steps * batch
            used = float(need.get(s["run_id"], 0.0))
            all_needed += min(used, steps) * batch if np.isfinite(used) else 0.0
        experiment = json.loads((results_dir / task / "experiment.json").read_text())
        rows.append({"task": task, "statistics": bool(experiment.get("data_kwargs", {}).get("statistics", False)),
                     "runs": len(summaries), "examples_trained": trained,
                     "share_needed": needed / trained if trained else np.nan, "examples_evaluated": evaluated,
                     "eval_share": FORWARD_COST * evaluated / (trained + FORWARD_COST * evaluated)
                     if trained else np.nan,
                     "runs_all_seeds": len(every), "steps_all_seeds": all_steps, "examples_all_seeds": all_trained,
                     "share_needed_all_seeds": all_needed / all_trained if all_trained else np.nan})
    return pd.DataFrame(rows)


def counted_total(table: pd.DataFrame) -> tuple[int, float, float]:
    """Over the tasks of :func:`compute_table` whose examples cost compute (not those drawn as sufficient
    statistics): ``(tasks, examples trained at every seed, the share of them the fits use)``."""
    counted = table[~table["statistics"]]
    every = counted["examples_all_seeds"]
    total = float(every.sum())
    share = float((every * counted["share_needed_all_seeds"]).sum() / total) if total else float("nan")
    return len(counted), total, share


#: The closeness bins of :func:`unneeded_by_closeness` between "fastest at a goal" and "further or no
#: goal": (label, upper edge of steps over the fastest run's).
CLOSENESS_BINS = (("within 10 %", 1.1), ("10–25 %", 1.25), ("25–50 %", 1.5))


def closeness(summaries: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per run: ``run_id, batch_size, lr, examples_trained, examples_needed, closeness``.

    ``closeness`` ρ is the least, over the goals the run reached, of its steps to the goal over the
    fastest run's at its batch size: 1 for a run that is the fastest at some goal, 1.08 for one that
    came within 8 % of the fastest at its best goal, ∞ for one that reached no goal. Examples count
    steps × B (sequences for language models); ``examples_needed`` as in :func:`compute_table`.
    """
    table = runs_table(summaries)
    table["fastest"] = table.groupby(["batch_examples", "goal"])["steps"].transform("min")
    rho = (table["steps"] / table["fastest"]).groupby(table["run_id"]).min()  # NaN steps are skipped
    need = needed_steps(summaries)
    rows = []
    for s in summaries:
        batch, run = s["config"]["batch_size"], s["run_id"]
        trained = s.get("n_steps", 0) * batch
        needed = float(need[run]) * batch if run in need.index and np.isfinite(need[run]) else 0.0
        ratio = rho.get(run, np.nan)
        rows.append({"run_id": run, "batch_size": batch, "lr": s["config"]["lr"], "examples_trained": trained,
                     "examples_needed": min(needed, trained),
                     "closeness": float(ratio) if np.isfinite(ratio) else np.inf})
    return pd.DataFrame(rows)


def unneeded_by_closeness(summaries: list[dict[str, Any]]) -> pd.Series:
    """The examples the fits do not need, as shares of all examples trained, by their run's closeness.

    Bins (ρ of :func:`closeness`): ``fastest at a goal`` (ρ = 1: trained past its last winning goal while
    it could still win a later one), then ``within 10 %``, ``10–25 %``, ``25–50 %`` of the fastest at
    its best goal, and ``further or no goal``. Every fastest run is trained to its last winning goal, so
    a rule that never drops one must train each rate until a rival has beaten it on every goal left;
    when that rival is within a few per cent, no curve seen earlier tells the two apart. The shares add
    up to 1 − ``share_needed``.
    """
    frame = closeness(summaries)
    total = frame["examples_trained"].sum()
    unneeded = frame["examples_trained"] - frame["examples_needed"]
    labels = ["fastest at a goal", *(label for label, _ in CLOSENESS_BINS), "further or no goal"]
    bins = np.digitize(frame["closeness"].to_numpy(), [1.0 + 1e-9, *(edge for _, edge in CLOSENESS_BINS)])
    shares = unneeded.groupby(bins).sum().reindex(range(len(labels)), fill_value=0.0) / max(total, 1)
    return pd.Series(shares.to_numpy(dtype=float), index=labels, name="share_of_examples")


def replay_stopping(results_dir: str | Path, task: str, margin: float | None = None,
                    outpaced: float | None = None) -> dict[str, Any]:
    """Replay the stopping rules on a task's stored runs, grid by grid.

    The exact rule always; ``margin`` and ``outpaced`` add the predictive rules of
    :mod:`gns_utils.experiments.stopping`. The stored runs must have trained at least as long as
    the replayed rules would let them (an exhaustive sweep, or one stopped by fewer rules).

    Returns:
        ``kept_every_best`` (no run would have stopped before its last winning goal), ``dropped``
        (``(batch size, lr, stop step, steps needed)`` of the runs it would have cut short),
        ``share_needed`` under the replayed stops, ``examples_trained`` under them, and
        ``b_crit_shift``: per goal, B_crit refitted (2.11) from the runs as the replayed stops leave
        them (a goal reached after a run's stop is not reached) against B_crit from the stored runs,
        as ``z = (log B_crit_replayed − log B_crit) / (s.e. of log B_crit)`` (0 where every fastest
        run is kept; None where either fit is a bound or missing).
    """
    summaries = sweep_runs(results_dir, task)
    goals = tuple(json.loads((Path(results_dir) / task / "experiment.json").read_text())["goals"])
    need = needed_steps(summaries)
    dropped, trained, needed = [], 0.0, 0.0
    truncated = []  # the summaries as the replayed stops would have left them
    by_batch: dict[int, list[dict[str, Any]]] = {}
    for s in summaries:
        by_batch.setdefault(s["config"]["batch_size"], []).append(s)
    for batch, group in sorted(by_batch.items()):
        curves = [stored_curve(results_dir, s) for s in group]
        stops = replay([(c.steps, c.values, s["status"]) for c, s in zip(curves, group)], goals, margin=margin,
                       direction=curves[0].direction if curves else "below", outpaced=outpaced,
                       lrs=[s["config"]["lr"] for s in group])
        for s, c, stop in zip(group, curves, stops):
            n = min(float(stop), float(s["n_steps"]))
            trained += n * batch
            truncated.append({**s, "steps_to_goal": {g: (v if v is not None and v <= stop else None)
                                                     for g, v in s["steps_to_goal"].items()}})
            if s["run_id"] in need.index and np.isfinite(need[s["run_id"]]):
                end = float(c.steps[-1]) if len(c.steps) else 0.0  # a run-out ends with the run's budget
                wanted = min(float(need[s["run_id"]]), end)
                needed += wanted * batch
                if stop < wanted:
                    dropped.append((batch, s["config"]["lr"], float(stop), wanted))
    return {"kept_every_best": not dropped, "dropped": dropped, "examples_trained": trained,
            "share_needed": needed / trained if trained else np.nan,
            "b_crit_shift": _b_crit_shift(summaries, truncated) if dropped else {str(g): 0.0 for g in goals}}


def _b_crit_shift(summaries: list[dict[str, Any]], truncated: list[dict[str, Any]]) -> dict[str, float | None]:
    """Per goal, ``(log B_crit(truncated) − log B_crit(summaries)) / s.e.(log B_crit)`` (see :func:`replay_stopping`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bounds and short fits are reported as None below
        full, cut = (b_crit_by_goal(best_runs(runs_table(x), batch="batch_units"), batch="batch_units")
                     for x in (summaries, truncated))
    out: dict[str, float | None] = {}
    for goal in full["goal"]:
        a, b = full[full["goal"] == goal].iloc[0], cut[cut["goal"] == goal]
        ok = (not b.empty and a["bound"] == "none" and b.iloc[0]["bound"] == "none"
              and a["b_crit_stderr"] and np.isfinite(a["b_crit_stderr"]))
        out[str(goal)] = (float(np.log(b.iloc[0]["b_crit"] / a["b_crit"]) / (a["b_crit_stderr"] / a["b_crit"]))
                          if ok else None)
    return out
