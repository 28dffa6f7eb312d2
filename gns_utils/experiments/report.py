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
* ``goals``                       per goal: the (2.11) fit, and the *matched* noise scale: B_simple
                                  of every best-tuned run (one per batch size) in a window around the
                                  step where that run reaches the goal (:func:`matched_noise_scales`),
                                  summarised as the value at the smallest batch size, the median over
                                  batch sizes and their spread (the Appendix C check: well-tuned runs
                                  at different B should agree at equal loss).
* per goal, also: ``b_simple_app_d`` (B_simple of the reference run averaged as in App. D from
                                  the start to the goal), the checkpoint noise scales measured on the
                                  reference run when it reached the goal (:data:`CHECKPOINT_COLUMNS`:
                                  B_noise (2.8) with its standard error over repeats, B_simple from
                                  independent micro-batches, and for Adam B_simple of the gradient in
                                  Adam's preconditioned metric), ``b_crit_unsmoothed`` and
                                  ``b_crit_smoothing_systematic`` (the fit without the A.3 smoothing)
                                  and, with extra seeds, the seed-to-seed spread of B_crit.
* ``b_crit_step_average``         B_crit averaged over training as in A.3: each goal's B_crit weighted
                                  by the minimum steps S_min it adds (:func:`step_average_b_crit`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from gns_utils.experiments.config import ExperimentConfig, goal_reached
from gns_utils.experiments.store import provenance, task_dir, write_json_if_changed
from gns_utils.noise import windowed_b_simple
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


def hardest_fitted_goal(by_goal: pd.DataFrame) -> pd.Series:
    """The row of ``by_goal`` that gives a task its B_crit: the hardest goal the sweep could fit.

    A goal reached at too few batch sizes (bound ``"insufficient"``) says nothing about B_crit; taking it would
    blank the task's value though easier goals were fitted. When no goal was fitted, the hardest one.
    """
    fitted = by_goal[by_goal["bound"] != "insufficient"]
    return (fitted if len(fitted) else by_goal).iloc[-1]


def summarize_task(cfg: ExperimentConfig, table: pd.DataFrame, by_goal: pd.DataFrame, reference: pd.DataFrame,
                   b_noise: pd.DataFrame, results_dir: str | Path, matched: pd.DataFrame | None = None,
                   extra: dict[str, Any] | None = None,
                   matched_parts: dict[str, pd.DataFrame] | None = None, write: bool = True) -> dict[str, Any]:
    """Collect B_crit per goal and the reference run's B_simple / B_noise; write the task summary (``write``).

    Reads nothing: every input is already in memory.

    Args:
        cfg: the experiment.
        table: :func:`gns_utils.experiments.sweep.run_sweep`'s run table.
        by_goal: :func:`gns_utils.critical_batch.b_crit_by_goal` of the sweep's best runs.
        reference: the ``metrics.csv`` rows of the reference run, on which B_simple is measured
            (:func:`gns_utils.experiments.store.load_metrics`).
        b_noise: the reference run's ``b_noise.csv`` rows (empty when B_noise was not measured).
        results_dir: root of the results store.
        matched: :func:`matched_noise_scales` of the sweep's best runs (added to ``goals``).
        extra: fields to add to the summary.
        matched_parts: the same for parts of the network measured on their own (the policy of an
            actor-critic), added to ``goals`` as ``b_simple_<part>_local_*``.

    Returns:
        The summary, also written to ``<results_dir>/<task>/summary.json``.
    """
    if reference.empty:
        raise ValueError(f"task {cfg.task}: the reference run has no metrics")
    last, first = hardest_fitted_goal(by_goal), by_goal.iloc[0]
    batch_units = float(reference["batch_units"].iloc[0])
    b_simple, b_simple_start = b_simple_over_training(reference, batch_units, cfg.metric, float(cfg.goals[0]))
    runs = table.drop_duplicates("run_id")
    goals = by_goal.merge(app_d_by_goal(reference, batch_units, cfg.metric, cfg.goals), on="goal", how="left")
    if matched is not None and len(matched):
        goals = goals.merge(matched_by_goal(matched), on="goal", how="left")
    for part, frame in (matched_parts or {}).items():
        if len(frame):
            goals = goals.merge(matched_by_goal(frame, prefix=f"b_simple_{part}_local"), on="goal", how="left")
    if len(b_noise):
        goals = goals.merge(checkpoints_by_goal(b_noise), on="goal", how="left")
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
        "b_crit_step_average": _num(step_average_b_crit(by_goal)),
        "b_simple": _num(b_simple),
        "b_simple_start": _num(b_simple_start),
        "b_noise": _num(b_noise["trace_h_sigma"].sum() / b_noise["g_h_g"].sum())
        if len(b_noise) and "trace_h_sigma" in b_noise else None,
        "reference_run": {"run_id": str(reference["run_id"].iloc[0]), "batch_units": batch_units,
                          "batch_examples": int(reference["batch_examples"].iloc[0]),
                          "lr": float(reference["lr"].iloc[0])},
        "n_runs": int(len(runs)),
        "n_runs_trained": int(runs["trained"].fillna(False).astype(bool).sum()),
        "goals": goals.to_dict(orient="records"),
        "b_noise_checkpoints": b_noise.to_dict(orient="records"),
        "profile": cfg.profile,
        "config": cfg.to_dict(),
        "provenance": provenance(device=cfg.device, seed=cfg.seed),
        **(extra or {}),
    }
    if write:
        # nothing trained: the same runs give the same summary, kept with its record of when they were trained
        ignore = ("provenance", "n_runs_trained") if summary["n_runs_trained"] == 0 else ("provenance",)
        write_json_if_changed(task_dir(results_dir, cfg.task) / "summary.json", summary, ignore)
    return summary


#: The columns of :func:`task_table`.
TASK_TABLE_COLUMNS = ("task", "units", "b_crit_start", "b_crit", "b_crit_stderr", "b_crit_bound", "b_simple_start",
                      "b_simple", "b_noise", "n_runs", "n_runs_trained")


def matched_noise_scales(best: pd.DataFrame, metrics: pd.DataFrame, part: str | None = None) -> pd.DataFrame:
    """B_simple of each best-tuned run at the point where it reaches each goal (matched points).

    For every row of ``best`` (fastest run per goal and batch size) the run's logged per-step
    estimates are summed in a window of steps around ``steps`` (the step at which it reached
    the goal), :func:`gns_utils.noise.windowed_b_simple`.

    Args:
        best: :func:`gns_utils.critical_batch.best_runs` output with ``batch_units`` and ``run_id``.
        metrics: the ``metrics.csv`` rows of those runs (``step``, ``g2_mean``,
            ``trace_sigma_mean``, ``noise_steps``; :func:`gns_utils.experiments.store.load_metrics`).
        part: a part of the network measured on its own (columns ``g2_<part>_mean``,
            ``trace_sigma_<part>_mean``, ``noise_steps_<part>``); None = the whole network.

    Returns:
        One row per (goal, batch size): ``goal, batch_units, run_id, at_step, b_simple_local,
        b_simple_local_stderr, n_estimates``.
    """
    columns = ["goal", "batch_units", "run_id", "at_step", "b_simple_local", "b_simple_local_stderr", "n_estimates"]
    logs = {run_id: frame.sort_values("step") for run_id, frame in metrics.groupby("run_id")}
    rows = []
    for point in best.dropna(subset=["steps"]).itertuples():
        log = logs.get(point.run_id)
        if log is None or not (point.steps > 0):
            continue
        g2, trace, count = (("g2_mean", "trace_sigma_mean", "noise_steps") if part is None else
                            (f"g2_{part}_mean", f"trace_sigma_{part}_mean", f"noise_steps_{part}"))
        n = log[count].fillna(0).to_numpy(float)
        window = windowed_b_simple(log["step"].to_numpy(float), log[g2].fillna(0).to_numpy(float) * n,
                                   log[trace].fillna(0).to_numpy(float) * n, n, float(point.steps))
        rows.append([point.goal, point.batch_units, point.run_id, float(point.steps), window.estimate, window.stderr,
                     window.n_estimates])
    return pd.DataFrame(rows, columns=columns)


def matched_by_goal(matched: pd.DataFrame, prefix: str = "b_simple_local") -> pd.DataFrame:
    """Per goal: the matched B_simple at the smallest batch size, the median over batch sizes, min, max,
    and the spread (standard deviation of log10 B_simple over batch sizes); columns ``<prefix>_*``."""
    rows = []
    for goal, group in matched.groupby("goal", sort=False):
        values = group.sort_values("batch_units")["b_simple_local"].to_numpy(float)
        positive = values[np.isfinite(values) & (values > 0)]
        rows.append({"goal": goal, f"{prefix}_small_b": _num(values[0]) if len(values) else None,
                     f"{prefix}_median": _num(np.median(positive)) if len(positive) else None,
                     f"{prefix}_min": _num(positive.min()) if len(positive) else None,
                     f"{prefix}_max": _num(positive.max()) if len(positive) else None,
                     f"{prefix}_log10_spread": _num(np.log10(positive).std()) if len(positive) >= 2 else None,
                     f"{prefix}_n_runs": int(len(positive))})
    return pd.DataFrame(rows)


#: Columns of a checkpoint row (``b_noise.csv`` of the reference run) carried into each goal's record.
CHECKPOINT_COLUMNS = ("b_noise", "b_noise_stderr", "b_simple_checkpoint", "b_simple_checkpoint_stderr",
                      "b_simple_preconditioned", "b_simple_preconditioned_stderr",
                      "b_simple_frames", "b_simple_frames_stderr", "b_simple_policy", "b_simple_policy_stderr")


def checkpoints_by_goal(checkpoints: pd.DataFrame) -> pd.DataFrame:
    """The noise scales measured at each goal's checkpoint on the reference run (one row per goal)."""
    columns = [c for c in CHECKPOINT_COLUMNS if c in checkpoints]
    return checkpoints.drop_duplicates("goal", keep="last")[["goal", *columns]].reset_index(drop=True)


def app_d_by_goal(metrics: pd.DataFrame, batch_units: float, metric: str, goals: tuple[float, ...]) -> pd.DataFrame:
    """B_simple averaged as in Appendix D from the start of training to each goal (reference run).

    The paper's prediction for a goal is B_crit ≈ the noise scale averaged over the training
    that reaches it (App. D); this is that average of the run's B_simple, each full-batch step
    weighted equally (:func:`gns_utils.theory.training_average`), up to the first evaluation at
    which the run's metric reached the goal.
    """
    rows = []
    ok = metrics[metrics["b_simple_ema"].notna() & (metrics["step"] > 0)]
    for goal in goals:
        reached = metrics[[goal_reached(metric, v, goal) for v in metrics[metric]]]
        if reached.empty:
            continue
        part = ok[ok["step"] <= reached["step"].iloc[0]]
        value = training_average(part["step"].to_numpy(float), part["b_simple_ema"].to_numpy(float), batch_units) \
            if len(part) else np.nan
        rows.append({"goal": float(goal), "b_simple_app_d": _num(value)})
    return pd.DataFrame(rows, columns=["goal", "b_simple_app_d"])


def step_average_b_crit(by_goal: pd.DataFrame) -> float:
    """B_crit averaged over training as in A.3: ``Σ_k B_crit(g_k) ΔS_min,k / Σ_k ΔS_min,k``.

    ``ΔS_min,k = S_min(g_k) − S_min(g_{k−1})`` (from 0 before the first goal) are the minimum
    (full-batch) steps each goal adds, over the goals whose fit is not a bound, in training order.
    """
    fitted = by_goal[by_goal["bound"] == "none"].dropna(subset=["b_crit", "s_min"])
    s_min = np.maximum.accumulate(fitted["s_min"].to_numpy(float))
    weights = np.diff(np.concatenate([[0.0], s_min]))
    return float(np.sum(fitted["b_crit"].to_numpy(float) * weights) / weights.sum()) if weights.sum() > 0 else np.nan


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
    reached = metrics[[goal_reached(metric, v, first_goal) for v in metrics[metric]]]
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


#: The calibration target: measured / exact constant-rate B_crit within this range at every goal.
CALIBRATION_RANGE = (0.9, 1.1)


def calibration_verdict(goals: list[dict[str, Any]]) -> str:
    """A markdown verdict on the calibration task, computed from its per-goal summary records.

    Compares the measured B_crit (the project's estimator) and the paper's A.3 reading (``b_crit_fastest_ema``)
    with the exact constant-rate B_crit, goal by goal, and counts the goals whose interval covers it.
    """
    frame = pd.DataFrame(goals).dropna(subset=["b_crit", "b_crit_exact"])
    if frame.empty:
        return "No goal has both a measured and an exact B_crit."
    ratio = frame["b_crit"] / frame["b_crit_exact"]
    old = (frame["b_crit_fastest_ema"] / frame["b_crit_exact"]).dropna() if "b_crit_fastest_ema" in frame \
        else pd.Series(dtype=float)
    covered = int(((frame["ci_low"] <= frame["b_crit_exact"]) & (frame["b_crit_exact"] <= frame["ci_high"])).sum())
    lo, hi = CALIBRATION_RANGE
    inside = int(ratio.between(lo, hi).sum())
    exact = frame["b_crit_exact"].astype(float)
    lines = [f"**Measured / exact B_crit: {ratio.min():.2f}–{ratio.max():.2f}** over {len(frame)} goals "
             f"({inside} of {len(frame)} within {lo}–{hi}); the seed-aware interval covers the exact value at "
             f"{covered} of {len(frame)} goals."]
    if len(frame) > 1:
        lines.append(f"The exact B_crit of these goals spans {np.log10(exact.max() / exact.min()):.1f} decades "
                     f"({exact.min():,.0f} → {exact.max():,.0f} examples).")
    if len(old):
        lines.append(f"The paper's A.3 reading (fastest run of one seed, causal EMA) gives {old.min():.2f}–{old.max():.2f} "
                     "of the exact value on the same runs.")
    return " ".join(lines)


#: Kaplan et al. (2020, "Scaling Laws for Neural Language Models", §5.1): for language models
#: B_crit(L) ≈ B* / L^(1/α_B) with α_B ≈ 0.21 (L in nats per token), i.e. log B_crit falls with
#: log L at slope −1/α_B ≈ −4.8. Only the shape is comparable across data and tokenizers, not B*.
KAPLAN_ALPHA_B = 0.21


def b_crit_loss_slope(goals: list[dict[str, Any]]) -> dict[str, float]:
    """The slope of ``log B_crit`` on ``log L`` over a language task's fitted goals, beside Kaplan et al.'s.

    Uses the goals whose (2.11) fit is a value (``bound == "none"``) and resolved (s.e. < 0.5 × the value);
    the goal is the loss in nats per token. Least squares in log-log (:func:`scipy.stats.linregress`).

    Returns:
        ``n_goals``, ``slope`` and ``slope_stderr`` (NaN with fewer than 3 goals), ``kaplan_slope``
        (−1/:data:`KAPLAN_ALPHA_B`), ``z`` ((slope − kaplan_slope) / slope_stderr), ``loss_high``,
        ``loss_low`` and ``b_crit_low``, ``b_crit_high`` (at those losses).
    """
    frame = pd.DataFrame(goals).reindex(columns=["goal", "b_crit", "b_crit_stderr", "bound"])
    frame = frame[frame["bound"].fillna("none") == "none"].copy()
    for column in ("goal", "b_crit", "b_crit_stderr"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame = frame[(frame["b_crit"] > 0) & (frame["goal"] > 0)
                  & ~(frame["b_crit_stderr"] >= 0.5 * frame["b_crit"])].sort_values("goal", ascending=False)
    kaplan = -1.0 / KAPLAN_ALPHA_B
    out = {"n_goals": int(len(frame)), "slope": np.nan, "slope_stderr": np.nan, "kaplan_slope": kaplan,
           "z": np.nan, "loss_high": np.nan, "loss_low": np.nan, "b_crit_low": np.nan, "b_crit_high": np.nan}
    if len(frame) < 3:
        return out
    fit = stats.linregress(np.log(frame["goal"].to_numpy(float)), np.log(frame["b_crit"].to_numpy(float)))
    out.update(slope=float(fit.slope), slope_stderr=float(fit.stderr),
               z=float((fit.slope - kaplan) / fit.stderr) if fit.stderr > 0 else np.nan,
               loss_high=float(frame["goal"].iloc[0]), loss_low=float(frame["goal"].iloc[-1]),
               b_crit_low=float(frame["b_crit"].iloc[0]), b_crit_high=float(frame["b_crit"].iloc[-1]))
    return out


def loss_slope_verdict(goals: list[dict[str, Any]], units: str = "tokens", sequence_length: int | None = None) -> str:
    """A markdown sentence on :func:`b_crit_loss_slope`: how fast B_crit grows as the loss falls, against
    Kaplan et al.'s power law in shape (a slope outside 2 s.e. of theirs is called steeper or shallower)."""
    s = b_crit_loss_slope(goals)
    if not np.isfinite(s["slope"]):
        return f"Fewer than 3 resolved goals ({s['n_goals']}): no slope of B_crit against the loss."
    seqs = (f" ({s['b_crit_low'] / sequence_length:,.0f} → {s['b_crit_high'] / sequence_length:,.0f} sequences)"
            if sequence_length else "")
    if abs(s["z"]) <= 2:
        judged = "within 2 s.e. of theirs"
    else:
        judged = ("steeper" if s["slope"] < s["kaplan_slope"] else "shallower") + \
            f" than theirs ({abs(s['z']):.1f} s.e.)"
    text = (f"**B_crit against the loss**: over {s['n_goals']} resolved goals, as the loss falls from "
            f"{s['loss_high']:g} to {s['loss_low']:g} nats per token (a factor {s['loss_high'] / s['loss_low']:.2f}), "
            f"B_crit grows from {s['b_crit_low']:,.0f} to {s['b_crit_high']:,.0f} {units}{seqs}: a slope of "
            f"log B_crit on log L of {s['slope']:.1f} ± {s['slope_stderr']:.1f}. Kaplan et al. (2020) find "
            f"B_crit ∝ L^(−1/{KAPLAN_ALPHA_B}), a slope of {s['kaplan_slope']:.1f}: ours is {judged}. "
            "Only the shape compares: their data, tokenizer and models differ, and their law is fitted over a wider "
            "range of loss.")
    return text.replace(" -", " −")  # minus signs
