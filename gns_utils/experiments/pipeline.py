"""One call per task for the domain notebooks: sweep, reference run, summary.

:func:`run_experiment` is everything a domain notebook computes for one task:

1. load the data once (:func:`gns_utils.experiments.problems.make_problem`);
2. run or resume the batch-size × learning-rate sweep (:func:`gns_utils.experiments.sweep.run_sweep`),
   and its repeats at ``cfg.seeds`` (the main sweep's rates at every batch size, or only the rates that
   matter, each up to the last goal it matters for: ``cfg.seed_rates``);
3. read every run's steps to each goal from its logged curve with the centred local-linear smoothing
   (:func:`gns_utils.critical_batch.steps_to_target`, ``method="local"``), average ``log S`` over the
   seeds at each rate and keep the best rate (:func:`gns_utils.critical_batch.expected_steps`), and fit
   (2.11) per goal with a seed-aware error (:func:`gns_utils.critical_batch.seed_aware_b_crit`); beside
   it, the paper's A.3 reading (fastest run of the main seed, causal EMA) and the change without any
   smoothing (the smoothing systematic);
4. re-run the reference run (the best-tuned run nearest B_crit) with the noise scales measured
   at each goal's checkpoint (:func:`gns_utils.experiments.train.checkpoint`: B_noise (2.8) where
   Hessian-vector products run, B_simple from independent micro-batches, and for Adam in its
   preconditioned metric), when ``b_noise_examples`` asks for it; the re-run follows the same
   trajectory (same seed; the measurements run in eval mode with the random state restored);
5. read the metrics of the runs the figures need, once, and write
   ``<results_dir>/<task>/summary.json`` (:func:`gns_utils.experiments.report.summarize_task`).

Every batch size here is in two columns: ``batch_units`` (B in the task's units: images or
tokens, as each run recorded it) and ``batch_examples`` (examples or sequences per step).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gns_utils.critical_batch import (
    TradeoffFit,
    b_crit_by_goal,
    best_runs,
    expected_steps,
    fit_tradeoff_by_goal,
    seed_aware_b_crit,
    steps_by_seed,
    steps_to_target,
)
from gns_utils.experiments.config import METRIC_DIRECTION, ExperimentConfig
from gns_utils.experiments.problems import make_problem
from gns_utils.experiments.profiles import DEFAULT_WIDTHS, WIDTHS_SUFFIX
from gns_utils.experiments.report import matched_noise_scales, reference_run, summarize_task
from gns_utils.experiments.store import load_metrics, read_metrics, run_dir, task_dir
from gns_utils.experiments.sweep import run_or_load, run_selected, run_sweep, runs_table
from gns_utils.theory import training_average


@dataclass
class TaskResult:
    """What a notebook plots for one task.

    Attributes:
        cfg: the experiment.
        summary: the task summary written to disk.
        table: long run table (one row per run and goal; ``batch_units``, ``batch_examples``).
        best: fastest run per (goal, batch size) — the points of the (2.11) fits.
        by_goal: B_crit per goal with errors.
        fits: the (2.11) fit of each goal (None where it had too few points).
        curves: metrics of the best run at each batch size (training curves, Fig 6).
        noise: the reference run's metrics: B_simple over training.
        b_noise: B_noise at the reference run's goal checkpoints (may be empty).
        matched: B_simple of each best run at the step where it reaches each goal (matched points).
        figure_dir: where this task's figures go.
        seeds: B_crit per goal at the main seed and at each of ``cfg.seeds`` (the rerun spread).
    """

    cfg: ExperimentConfig
    summary: dict[str, Any]
    table: pd.DataFrame
    best: pd.DataFrame
    by_goal: pd.DataFrame
    fits: dict[float, TradeoffFit | None]
    curves: pd.DataFrame
    noise: pd.DataFrame
    b_noise: pd.DataFrame
    matched: pd.DataFrame
    figure_dir: Path
    seeds: pd.DataFrame


def run_experiment(cfg: ExperimentConfig, results_dir: str | Path, progress: bool = True,
                   problem: Any = None, record: bool = True) -> TaskResult:
    """Sweep, fit, measure and summarise one task (resuming whatever already ran).

    ``record=False`` reads a sweep back for another notebook: runs still missing are trained, but the task's
    ``experiment.json`` and ``summary.json`` (the record of the notebook that owns the task) are not rewritten.
    """
    problem = problem if problem is not None else make_problem(cfg)
    main = local_steps(run_sweep(cfg, results_dir, problem=problem, progress=progress, record=record), results_dir, cfg)
    if expected_steps(main, batch="batch_units").dropna(subset=["steps"]).empty:
        raise RuntimeError(
            f"task {cfg.task}: no run reached any goal {cfg.goals}; raise budget_examples or choose easier goals")
    repeats = []
    for seed in cfg.seeds:
        other = dataclasses.replace(cfg, seed=seed, seeds=())
        if cfg.seed_rates == "grid":  # the main sweep's rates at every batch size, so each is averaged over every seed
            repeat = run_sweep(other, results_dir, problem=problem, progress=progress, record=False,
                               rates=main_rates(main))
        else:
            repeat = run_selected(other, selected_points(main), results_dir, problem=problem, progress=progress)
        repeats.append(local_steps(repeat, results_dir, cfg))
    table = pd.concat([main, *repeats], ignore_index=True)
    best = expected_steps(table, batch="batch_units")
    fits = fit_tradeoff_by_goal(best, batch="batch_units")
    by_goal = seed_aware_b_crit(best, steps_by_seed(table, best, batch="batch_units"), batch="batch_units")
    by_goal = by_goal.merge(fastest_run_b_crit(main), on="goal", how="left")
    by_goal = by_goal.merge(smoothing_systematic(table, by_goal), on="goal", how="left")
    if hasattr(problem, "exact_prediction"):  # the calibration task: the theory's exact answers per goal
        by_goal = by_goal.merge(exact_b_crit(problem, cfg, table), on="goal", how="left")
    seeds = seed_frame(by_goal)
    if cfg.seeds:
        by_goal = by_goal.merge(seed_spread(seeds), on="goal", how="left")
    last = by_goal.dropna(subset=["b_crit"])
    ref = reference_run(best, float(last["b_crit"].iloc[-1]) if len(last) else np.nan)
    ref_id = ref["run_id"]
    runs = table[table["run_id"].isin(set(best["run_id"]))]
    if cfg.b_noise_examples:
        ref_cfg = cfg.run(int(ref["batch_examples"]), float(ref["lr"]), b_noise_examples=cfg.b_noise_examples)
        summary, _ = run_or_load(problem, ref_cfg, results_dir, progress)
        if summary["status"] != "failed":
            ref_id = summary["run_id"]
            runs = pd.concat([runs, runs_table([summary])])
    best_ids = best.dropna(subset=["steps"]).sort_values("goal").drop_duplicates("batch_units")["run_id"]
    metrics = read_metrics(results_dir, cfg.task, runs)  # the sweep's run table: no summary is read twice
    matched = matched_noise_scales(best, metrics)
    parts = [c[len("g2_"):-len("_mean")] for c in metrics.columns if c.startswith("g2_") and c.endswith("_mean")
             and c != "g2_mean"]  # parts of the network measured on their own (the policy of an actor-critic)
    matched_parts = {part: matched_noise_scales(best, metrics, part) for part in parts}
    curves = metrics[metrics["run_id"].isin(set(best_ids))].reset_index(drop=True)
    noise = metrics[metrics["run_id"] == ref_id].reset_index(drop=True)
    b_noise_file = run_dir(results_dir, cfg.task, ref_id) / "b_noise.csv"
    b_noise = pd.read_csv(b_noise_file) if b_noise_file.exists() else pd.DataFrame()
    extra = {"b_crit_seeds": seeds.to_dict(orient="records"), **pooled_b_simple(table, results_dir, cfg)}
    summary = summarize_task(cfg, table, by_goal, noise, b_noise, results_dir, matched=matched, extra=extra,
                             matched_parts=matched_parts, write=record)
    return TaskResult(cfg, summary, table, best, by_goal, fits, curves, noise, b_noise, matched,
                      task_dir(results_dir, cfg.task) / "figures", seeds)


def local_steps(table: pd.DataFrame, results_dir: str | Path, cfg: ExperimentConfig) -> pd.DataFrame:
    """The run table with ``steps`` read from each run's logged goal curve by the centred local-linear
    smoothing (no lag; :func:`gns_utils.critical_batch.local_linear`); the run's own causal-EMA reading
    (A.3, what stopped it) is kept as ``steps_ema`` and the unsmoothed one stays in ``steps_raw``."""
    out = table.rename(columns={"steps": "steps_ema"})
    out.insert(out.columns.get_loc("steps_ema"), "steps", np.nan)
    direction = METRIC_DIRECTION[cfg.metric]
    goals = np.array(cfg.goals, float)
    for run_id, rows in out.groupby("run_id", sort=False):
        path = run_dir(results_dir, cfg.task, run_id) / "metrics.csv"
        if not path.exists():  # a run that failed before logging
            continue
        curve = pd.read_csv(path, usecols=["step", "metric_step", "metric"]).dropna()
        if cfg.goal_source != "subset":  # as the run's own curve: the initial subset evaluation is not a batch mean
            curve = curve[curve["step"] > 0]
        if curve.empty:
            continue
        steps = steps_to_target(curve["metric_step"].to_numpy(float), curve["metric"].to_numpy(float), goals,
                                direction=direction, method="local")
        by_goal = dict(zip(goals.tolist(), steps.tolist()))
        out.loc[rows.index, "steps"] = rows["goal"].map(by_goal).to_numpy(float)
    return out


def pooled_b_simple(table: pd.DataFrame, results_dir: str | Path, cfg: ExperimentConfig) -> dict[str, Any]:
    """B_simple averaged over training (App. D), pooled over every run of the sweep and its repeats that reached
    the last goal: a whole-run noise scale that does not hang on one run's draw.

    One run's App. D average (the task's ``b_simple``, from the reference run) moves with its trajectory: between
    seeds of the same (B, ε) by a factor 2 at the median on the A2C task (``benchmarks/rl_b_simple_stability.py``),
    and so between machines whose float rounding differs. The median over many runs moves far less.

    Returns:
        ``b_simple_pooled`` (the median over those runs), ``b_simple_pooled_seed_min`` and ``_seed_max`` (the
        least and greatest of the per-seed medians: the draw-to-draw range), ``b_simple_pooled_n_runs``.
    """
    last = float(cfg.goals[-1])
    reached = table[(table["goal"] == last) & np.isfinite(table["steps"].to_numpy(float))]
    values, seeds = [], []
    for row in reached.drop_duplicates("run_id").itertuples():
        path = run_dir(results_dir, cfg.task, row.run_id) / "metrics.csv"
        if not path.exists():
            continue
        log = pd.read_csv(path, usecols=["step", "b_simple_ema"]).dropna()
        log = log[log["step"] > 0]
        if len(log) >= 2:
            value = float(training_average(log["step"].to_numpy(float), log["b_simple_ema"].to_numpy(float),
                                           float(row.batch_units)))
            if np.isfinite(value) and value > 0:
                values.append(value)
                seeds.append(int(row.seed))
    if not values:
        return {"b_simple_pooled": None, "b_simple_pooled_seed_min": None, "b_simple_pooled_seed_max": None,
                "b_simple_pooled_n_runs": 0}
    per_seed = pd.Series(values).groupby(seeds).median()
    return {"b_simple_pooled": float(np.median(values)), "b_simple_pooled_seed_min": float(per_seed.min()),
            "b_simple_pooled_seed_max": float(per_seed.max()), "b_simple_pooled_n_runs": len(values)}


def main_rates(table: pd.DataFrame) -> dict[int, list[float]]:
    """The rates the main sweep trained at each batch size (in examples): what the repeats of
    ``seed_rates="grid"`` train, so that :func:`gns_utils.critical_batch.expected_steps` finds every rate
    trained at every seed (a repeat that predicted and widened its own grid would share few rates with the
    main sweep, and where no rate is shared the choice falls back to the fastest single run of any seed)."""
    return {int(b): sorted(float(lr) for lr in lrs)
            for b, lrs in table.groupby("batch_examples")["lr"].unique().items()}


def selected_points(table: pd.DataFrame) -> list[tuple[int, float, float]]:
    """What the repeats at other seeds train when ``seed_rates="selected"``: one ``(batch size in examples,
    rate, last goal)`` per pair that is fastest for some goal in ``table`` (one seed's sweep, local reading).

    ``last goal`` is the hardest goal at which that pair won: the repeat trains until it reaches it and no
    further, since at harder goals another rate of its batch size won and only that rate's seeds are
    averaged there (:func:`gns_utils.critical_batch.expected_steps` compares rates that every seed trained).
    """
    best = expected_steps(table, batch="batch_units").dropna(subset=["steps"])
    order = {g: k for k, g in enumerate(pd.unique(table["goal"]))}
    best = best.assign(_order=best["goal"].map(order)).sort_values("_order", kind="mergesort")
    last = best.drop_duplicates(["batch_examples", "lr"], keep="last").sort_values(["batch_examples", "lr"])
    return [(int(b), float(lr), float(goal)) for b, lr, goal in
            last[["batch_examples", "lr", "goal"]].itertuples(index=False)]


def fastest_run_b_crit(table: pd.DataFrame) -> pd.DataFrame:
    """The paper's A.3 reading, for comparison: the fastest run of one seed's grid per batch size, its steps
    read by the causal EMA (``steps_ema``), fitted per goal (``b_crit_fastest_ema`` and its fit-only s.e.)."""
    ema = table.drop(columns="steps").rename(columns={"steps_ema": "steps"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fit = b_crit_by_goal(best_runs(ema, batch="batch_units"), batch="batch_units")
    fit.loc[fit["bound"] != "none", "b_crit"] = np.nan
    return fit[["goal", "b_crit", "b_crit_stderr"]].rename(
        columns={"b_crit": "b_crit_fastest_ema", "b_crit_stderr": "b_crit_fastest_ema_stderr"})


def smoothing_systematic(table: pd.DataFrame, by_goal: pd.DataFrame) -> pd.DataFrame:
    """B_crit per goal refitted with the *unsmoothed* steps-to-goal, and the change it makes.

    The same estimator (:func:`gns_utils.critical_batch.expected_steps`) on the raw crossings; the refit is
    the unflagged least-squares value (not clamped to the grid's edge when it leaves the batch sizes).

    Returns one row per goal: ``b_crit_unsmoothed`` and ``b_crit_smoothing_systematic``
    = |log B_crit(smoothed) − log B_crit(unsmoothed)| as a relative error (e^|Δ| − 1), quoted
    next to the standard error.
    """
    raw = table.drop(columns="steps").rename(columns={"steps_raw": "steps"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fits = fit_tradeoff_by_goal(expected_steps(raw, batch="batch_units"), batch="batch_units")
    unsmoothed = pd.DataFrame({"goal": list(fits), "b_crit_raw": [np.nan if f is None else f.b_crit_fit
                                                                   for f in fits.values()]})
    merged = by_goal[["goal", "b_crit"]].merge(unsmoothed, on="goal")
    change = np.expm1(np.abs(np.log(merged["b_crit"].astype(float) / merged["b_crit_raw"].astype(float))))
    return pd.DataFrame({"goal": merged["goal"], "b_crit_unsmoothed": merged["b_crit_raw"],
                         "b_crit_smoothing_systematic": change})


def exact_b_crit(problem: Any, cfg: ExperimentConfig, table: pd.DataFrame) -> pd.DataFrame:
    """The calibration task's exact answers per goal (:mod:`gns_utils.experiments.synthetic`).

    ``b_crit_predicted``: the paper's prediction, B_noise averaged over the full-batch path to the
    goal (App. D); ``b_crit_exact``: the (2.11) fit to the exact expected-loss steps of perfectly
    tuned constant-rate SGD at the sweep's batch sizes (what an infinitely repeated sweep finds).
    """
    predicted = problem.exact_prediction(cfg.goals)
    exact = problem.exact_constant_lr_b_crit(cfg.goals, sorted(table["batch_units"].unique()))
    return pd.DataFrame({"goal": [float(g) for g in cfg.goals], "b_crit_predicted": np.asarray(predicted.b_crit, float),
                         "b_crit_exact": np.asarray(exact.b_crit, float)})


def seed_frame(by_goal: pd.DataFrame) -> pd.DataFrame:
    """Each seed's own B_crit per goal (``goal, seed, b_crit, bound``; NaN and ``bound="unresolved"`` where that
    seed's fit is a bound), from the per-seed fits of :func:`gns_utils.critical_batch.seed_aware_b_crit`."""
    rows = []
    for _, row in by_goal.iterrows():
        values = list(row["b_crit_seeds"]) if isinstance(row["b_crit_seeds"], list) else []
        for seed, value in zip(row["seeds"], values):
            rows.append({"goal": row["goal"], "seed": int(seed), "b_crit": value,
                         "bound": "none" if np.isfinite(value) else "unresolved"})
    return pd.DataFrame(rows, columns=["goal", "seed", "b_crit", "bound"])


def seed_spread(seeds: pd.DataFrame) -> pd.DataFrame:
    """Per goal, over the seeds whose fit is not a bound: ``b_crit_seed_mean`` (geometric) and
    ``b_crit_seed_rel_std`` (standard deviation of B_crit over seeds / their mean)."""
    rows = []
    for goal, group in seeds[seeds["bound"] == "none"].dropna(subset=["b_crit"]).groupby("goal", sort=False):
        values = group["b_crit"].to_numpy(float)
        rows.append({"goal": goal, "b_crit_seed_mean": float(np.exp(np.log(values).mean())),
                     "b_crit_seed_rel_std": float(values.std(ddof=1) / values.mean()) if len(values) > 1 else np.nan})
    return pd.DataFrame(rows, columns=["goal", "b_crit_seed_mean", "b_crit_seed_rel_std"])


@dataclass(frozen=True)
class WidthStudy:
    """The model-size study of the paper's Fig 8: one experiment at several LSTM widths.

    Attributes:
        base: the language-model experiment whose data, optimizer and goals are reused.
        widths: LSTM widths (``model_kwargs["hidden"]``).
        task: results folder of the study (``<base task>_widths``).
    """

    base: ExperimentConfig
    widths: tuple[int, ...]

    @property
    def task(self) -> str:
        return self.base.task + WIDTHS_SUFFIX


def width_study_config(base: ExperimentConfig, widths: list[int] | None = None) -> WidthStudy:
    """Validate the widths of the Fig 8 study (None = the profile's default).

    Raises:
        ValueError: widths that are not at least two distinct positive integers.
    """
    chosen = tuple(widths) if widths is not None else DEFAULT_WIDTHS[base.profile]
    if len(set(chosen)) < 2 or any(not isinstance(w, int) or isinstance(w, bool) or w < 1 for w in chosen):
        raise ValueError(f"widths must be at least two distinct positive integers, got {widths!r}")
    return WidthStudy(base, tuple(sorted(chosen)))


def run_width_study(study: WidthStudy, result: TaskResult, results_dir: str | Path, problem: Any,
                    progress: bool = True) -> pd.DataFrame:
    """Train each width at the reference run's batch size and learning rate, to the budget.

    Every width runs until the last goal or the budget, logging B_simple, so the
    curves can be compared against loss and against tokens processed.

    Returns:
        The runs' metrics, tidy, with a ``hidden`` column.
    """
    ref = result.summary["reference_run"]
    frames = []
    for width in study.widths:
        run_cfg = study.base.run(ref["batch_examples"], ref["lr"], task=study.task,
                                 model_kwargs={**study.base.model_kwargs, "hidden": width})
        run_or_load(problem, run_cfg, results_dir, progress)
        frame = load_metrics(results_dir, study.task, [run_cfg.run_id])
        frame["hidden"] = width
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def width_study_verdict(frame: pd.DataFrame, n_levels: int = 8) -> dict[str, Any]:
    """Does B_simple depend on the loss reached rather than on the width (the paper's Fig 8)?

    Compares the spread across widths of log10 B_simple at common loss levels with the
    spread at common token counts (both over the range every width covers).

    Returns:
        ``spread_vs_loss``, ``spread_vs_tokens`` (mean standard deviation of log10 B_simple
        across widths) and ``held`` (the loss spread is the smaller) with a sentence.
    """
    data = frame.dropna(subset=["b_simple_ema"])
    data = data[(data["step"] > 0) & (data["b_simple_ema"] > 0)]
    spreads = {}
    for x in ("loss", "examples"):
        groups = [g.sort_values(x) for _, g in data.groupby("hidden")]
        lo = max(g[x].min() for g in groups)
        hi = min(g[x].max() for g in groups)
        if not lo < hi:
            spreads[x] = float("nan")
            continue
        grid = np.geomspace(lo, hi, n_levels) if x == "examples" else np.linspace(lo, hi, n_levels)
        curves = np.array([np.interp(grid, g[x].to_numpy(float), np.log10(g["b_simple_ema"].to_numpy(float)))
                           for g in groups])
        spreads[x] = float(curves.std(axis=0).mean())
    held = bool(spreads["loss"] < spreads["examples"])
    sentence = (f"Spread of log10 B_simple across widths: {spreads['loss']:.3f} at equal loss, "
                f"{spreads['examples']:.3f} at equal tokens processed — the paper's finding (curves coincide "
                f"against loss, differ against tokens) {'held' if held else 'did not hold'} here.")
    return {"spread_vs_loss": spreads["loss"], "spread_vs_tokens": spreads["examples"], "held": held,
            "sentence": sentence}
