"""From a finished sweep to the task's numbers: B_crit per goal, B_simple, B_noise.

Works on what :mod:`gns_utils.experiments.pipeline` has loaded (it never trains or reads run
files) and writes ``<results_dir>/<task>/summary.json``:

* ``b_crit``, ``b_crit_stderr``   the (2.11) fit at the last goal (the "full run" value).
* ``b_crit_start``                the fit at the first goal ("start of training").
* ``b_simple``                    B_simple averaged over training as in Appendix D
                                  (each full-batch step weighted equally), measured on the
                                  *reference run*: the best-tuned run at the batch size
                                  nearest the fitted B_crit (the paper measures B_simple on
                                  a run with a well-tuned learning rate, App. C).
* ``b_simple_start``              ratio of the mean |G|^2 and tr Σ estimates of the
                                  reference run before it reached the first goal.
* ``b_noise``                     Hessian B_noise (2.8) over the reference run's goal checkpoints,
                                  as the ratio of the summed tr(HΣ) and GᵀHG estimates (a ratio of
                                  means, like B_simple: single checkpoints on a few hundred
                                  examples are noisy and GᵀHG can come out ≤ 0), where measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gns_utils.experiments.config import ExperimentConfig
from gns_utils.experiments.store import provenance, task_dir, write_json_atomic
from gns_utils.theory import training_average


def reference_run(best: pd.DataFrame, b_crit: float) -> pd.Series:
    """The best-tuned run (last goal it reached) at the batch size nearest ``b_crit`` (log scale).

    Args:
        best: :func:`gns_utils.critical_batch.best_runs` of the sweep, with ``batch_units``.
        b_crit: B_crit at the last goal, in the same units (NaN: the geometric middle).
    """
    reached = best.dropna(subset=["steps"])
    last_goal = reached["goal"].min()
    candidates = reached[reached["goal"] == last_goal]
    log_b = np.log(candidates["batch_units"].to_numpy(float))
    target = np.log(b_crit) if np.isfinite(b_crit) else float(log_b.mean())
    return candidates.iloc[int(np.argmin(np.abs(log_b - target)))]


def summarize_task(cfg: ExperimentConfig, table: pd.DataFrame, by_goal: pd.DataFrame, reference: pd.DataFrame,
                   b_noise: pd.DataFrame, results_dir: str | Path, extra: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """Collect B_crit per goal and the reference run's B_simple / B_noise; write the task summary.

    Reads nothing: every input is already in memory.

    Args:
        cfg: the experiment.
        table: :func:`gns_utils.experiments.sweep.run_sweep`'s run table.
        by_goal: :func:`gns_utils.critical_batch.b_crit_by_goal` of the sweep's best runs.
        reference: the ``metrics.csv`` rows of the reference run, on which B_simple is measured
            (:func:`gns_utils.experiments.store.load_metrics`).
        b_noise: the reference run's ``b_noise.csv`` rows (empty when B_noise was not measured).
        results_dir: root of the results store.
        extra: fields to add to the summary.

    Returns:
        The summary, also written to ``<results_dir>/<task>/summary.json``.
    """
    if reference.empty:
        raise ValueError(f"task {cfg.task}: the reference run has no metrics")
    last, first = by_goal.iloc[-1], by_goal.iloc[0]
    batch_units = float(reference["batch_units"].iloc[0])
    b_simple, b_simple_start = b_simple_over_training(reference, batch_units, cfg.metric, float(cfg.goals[0]))
    runs = table.drop_duplicates("run_id")
    summary: dict[str, Any] = {
        "task": cfg.task,
        "domain": cfg.domain,
        "dataset": cfg.dataset,
        "model": cfg.model,
        "optimizer": cfg.optimizer,
        "units": cfg.units,
        "metric": cfg.metric,
        "b_crit": _num(last["b_crit"]),
        "b_crit_stderr": _num(last["b_crit_stderr"]),
        "b_crit_bound": last["bound"],
        "b_crit_goal": float(last["goal"]),
        "b_crit_start": _num(first["b_crit"]),
        "b_crit_start_stderr": _num(first["b_crit_stderr"]),
        "b_crit_start_goal": float(first["goal"]),
        "b_crit_start_bound": first["bound"],
        "b_simple": _num(b_simple),
        "b_simple_start": _num(b_simple_start),
        "b_noise": _num(b_noise["trace_h_sigma"].sum() / b_noise["g_h_g"].sum()) if len(b_noise) else None,
        "reference_run": {"run_id": str(reference["run_id"].iloc[0]), "batch_units": batch_units,
                          "batch_examples": int(reference["batch_examples"].iloc[0]),
                          "lr": float(reference["lr"].iloc[0])},
        "n_runs": int(len(runs)),
        "n_runs_trained": int(runs["trained"].fillna(False).astype(bool).sum()),
        "goals": by_goal.to_dict(orient="records"),
        "b_noise_checkpoints": b_noise.to_dict(orient="records"),
        "profile": cfg.profile,
        "config": cfg.to_dict(),
        "provenance": provenance(device=cfg.device, seed=cfg.seed),
        **(extra or {}),
    }
    write_json_atomic(task_dir(results_dir, cfg.task) / "summary.json", summary)
    return summary


#: The columns of :func:`task_table`.
TASK_TABLE_COLUMNS = ("task", "units", "b_crit_start", "b_crit", "b_crit_stderr", "b_crit_bound", "b_simple_start",
                      "b_simple", "b_noise", "n_runs", "n_runs_trained")


def task_table(summaries: list[dict[str, Any]]) -> pd.DataFrame:
    """Task summaries side by side, one row per task (:data:`TASK_TABLE_COLUMNS`; B in each task's ``units``)."""
    return pd.DataFrame([{k: s.get(k) for k in TASK_TABLE_COLUMNS} for s in summaries], columns=TASK_TABLE_COLUMNS)


def b_simple_over_training(metrics: pd.DataFrame, batch_units: float, metric: str, first_goal: float
                           ) -> tuple[float, float]:
    """(B_simple averaged over training as in App. D, B_simple before the first goal).

    The average weights each full-batch step equally (ds = dS / (1 + ℬ/B)) and uses the
    run's EMA estimate ℬ (a ratio of the two EMAs, eq. 2.9). The start value is the ratio
    of the mean tr Σ and mean |G|^2 estimates over the steps before ``first_goal`` was
    reached — a ratio of means, never a mean of ratios.
    """
    ok = metrics["b_simple_ema"].notna() & (metrics["step"] > 0)
    average = float(training_average(metrics.loc[ok, "step"].to_numpy(float),
                                     metrics.loc[ok, "b_simple_ema"].to_numpy(float), batch_units)) \
        if ok.sum() >= 2 else float("nan")
    reached = metrics[metrics[metric] <= first_goal]
    stop = reached["step"].iloc[0] if len(reached) else metrics["step"].max()
    early = metrics[metrics["step"] <= stop]
    weights = early["noise_steps"].fillna(0)
    g2 = (early["g2_mean"].fillna(0) * weights).sum()
    start = float((early["trace_sigma_mean"].fillna(0) * weights).sum() / g2) if g2 > 0 else float("nan")
    return average, start


def _num(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None
