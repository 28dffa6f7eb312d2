"""How the noise scale moves during training: temperature (App. C, Fig 15) and adaptive batch size (App. D, Fig 16).

* :func:`train_schedule`       one run whose batch size and learning rate change as it goes: a
  fixed schedule of :class:`Phase` s, or a :class:`gns_utils.BatchSizeController` that grows the
  batch with the measured B_simple. Every step is logged (B, ε, examples, the mini-batch metric,
  the A.2 estimates of ``|G|^2`` and ``tr Σ``).
* :func:`temperature_phases`   the Fig 15 variants: the temperature ``T ≈ ε/B`` cut ``k``-fold for a
  window of training by ``ε ÷ k``, ``B × k`` or ``ε ÷ √k`` and ``B × √k``, and a control that scales
  ``ε`` and ``B`` together (``T`` unchanged).
* :func:`windowed_noise_scale` B_simple over windows of steps (a ratio of sums, never of ratios);
  :func:`rise_factors` its change in the window against the unchanged run.
* :func:`goal_crossings`       steps and examples at which a run reaches each goal, measured as the
  sweep measures them (the same log-spaced logging and smoothing), so that a run with a changing
  batch size can be placed on the fixed-batch Pareto fronts.
* :func:`gamma_by_goal`        ``γ = E[√ℬ]²/E[ℬ]`` (D.5) from a fixed-batch run's B_simple, up to each
  goal, and the predicted ``S/S_min = E/E_min = 1 + √γ`` (footnote 17).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from gns_utils.batch_size import BatchSizeController
from gns_utils.critical_batch import DEFAULT_SMOOTHING, steps_to_target
from gns_utils.experiments.config import METRIC_DIRECTION, ExperimentConfig, RunConfig
from gns_utils.experiments.profiles import DYNAMICS_DIR
from gns_utils.experiments.seed import set_seed
from gns_utils.experiments.stopping import Curve
from gns_utils.experiments.store import _jsonable, provenance, read_json, write_csv_atomic, write_json_if_changed
from gns_utils.experiments.train import (
    NOISE_EMA_ADAPTIVE,
    NOISE_EMA_DECAY,
    EpochSampler,
    _empty_interval,
    _train_step,
    eval_schedule,
    make_optimizer,
    noise_monitor,
)
from gns_utils.noise import NoiseScaleEMA
from gns_utils.theory import adaptive_gain, adaptive_speedup, fit_optimal_lr, lr_grid_centre, optimal_lr

__all__ = ["DYNAMICS_DIR", "AdaptiveResult", "Phase", "TemperatureResult", "gamma_by_goal", "goal_crossings",
           "rise_factors", "run_adaptive", "run_temperature", "temperature_phases", "train_schedule",
           "windowed_noise_scale", "write_dynamics_summary"]


@dataclass(frozen=True)
class Phase:
    """From step ``start`` on (until the next phase), train at ``batch_factor × B`` and ``lr_factor × ε``."""

    start: int
    batch_factor: float = 1.0
    lr_factor: float = 1.0


def temperature_phases(k: float, start: int, end: int, control: float | None = None) -> dict[str, list[Phase]]:
    """The runs of Fig 15: the temperature ``T ≈ ε/B`` cut ``k``-fold on steps ``[start, end)``, then restored.

    ``unchanged``; ``lr ÷ k``; ``B × k``; ``lr ÷ √k, B × √k`` (three ways to the same ``T/k``); and
    ``lr × c, B × c`` (``c = control``, default ``√k``), the control that keeps ``T`` (App. C: B_simple
    should rise ``k``-fold in the first three and stay put in the control). A ``c`` below ``√k`` keeps the
    control's learning rate within the stable range where ``√k`` times the tuned rate is not.
    """
    if not (k > 1 and 0 < start < end):
        raise ValueError(f"need k > 1 and 0 < start < end, got k={k}, start={start}, end={end}")
    root = math.sqrt(k)
    c = root if control is None else float(control)
    if not c > 1:
        raise ValueError(f"control must be > 1, got {control}")
    cut = {"unchanged": (1.0, 1.0), f"lr ÷ {k:g}": (1.0, 1.0 / k), f"B × {k:g}": (k, 1.0),
           f"lr ÷ {root:g}, B × {root:g}": (root, 1.0 / root), f"lr × {c:g}, B × {c:g} (same T)": (c, c)}
    return {name: [Phase(0), Phase(start, b, lr), Phase(end)] for name, (b, lr) in cut.items()}


def train_schedule(problem: Any, cfg: RunConfig, steps: int, phases: Sequence[Phase] = (Phase(0),),
                   controller: BatchSizeController | None = None, goals_stop: bool = False,
                   progress: bool = True, desc: str = "") -> pd.DataFrame:
    """Train one run for ``steps`` steps with a batch size and learning rate that change as it goes.

    The batch size and learning rate are ``cfg.batch_size × batch_factor`` and ``cfg.lr × lr_factor``
    of the phase in force, or, with a ``controller``, its :attr:`~gns_utils.BatchSizeController.batch_size`
    and :attr:`~gns_utils.BatchSizeController.lr`, updated after every step from the run's
    B_simple (the harness's moving average, :class:`gns_utils.NoiseScaleEMA`). Model, optimizer,
    noise monitor and batch order are the harness's (:class:`gns_utils.experiments.train.Run`), so a
    phase-free run is the sweep's run at ``(cfg.batch_size, cfg.lr)``; the optimizer's state carries
    over every change.

    Args:
        problem: a problem of :mod:`gns_utils.experiments.problems` (not reinforcement learning).
        cfg: the run's settings (``batch_size`` and ``lr`` are the starting point).
        steps: optimizer steps to train (at most).
        phases: the schedule (ignored with a ``controller``).
        controller: grow the batch with B_simple instead (its initial batch size and lr are used).
        goals_stop: stop once the mini-batch metric, smoothed as the sweep smooths it, reaches ``cfg.goals[-1]``.
        progress: show a tqdm bar.
        desc: the bar's label.

    Returns:
        One row per step: ``step`` (1, 2, …), ``batch_size`` (examples), ``batch_units``, ``lr``,
        ``examples`` (batch units processed up to and including the step), ``loss``, ``metric`` (the
        step's mini-batch value of ``cfg.metric``), ``g2``, ``trace_sigma`` (the step's A.2 estimates,
        nan where the monitor gave none) and ``b_simple_ema``.

    Raises:
        ValueError: no steps, or phases that do not start at step 0.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if controller is None and (not phases or phases[0].start != 0):
        raise ValueError("phases must start with a Phase at step 0")
    set_seed(cfg.seed)
    model = problem.build_model(cfg.model, cfg.model_kwargs)
    model.train()
    optimizer = make_optimizer(model, cfg)
    sampler = EpochSampler(problem.n_train, cfg.batch_size, torch.Generator().manual_seed(cfg.seed), problem.device)
    ema = NoiseScaleEMA(decay=NOISE_EMA_DECAY, adaptive=NOISE_EMA_ADAPTIVE)
    monitor, _ = noise_monitor(model, cfg.noise_method, min(cfg.n_micro, cfg.batch_size))
    per_example = hasattr(monitor, "capture")  # one backward per step; else micro-batches
    rows: list[dict[str, float]] = []
    examples = 0.0
    count_errors = cfg.metric == "error"
    recent: list[float] = []  # the last logged interval's metric values (for goals_stop)
    logged = set(int(t) for t in eval_schedule(steps, cfg.evals_per_decade))
    curve = Curve(lr=cfg.lr, direction=METRIC_DIRECTION[cfg.metric])  # the sweep's logged, smoothed goal metric
    for step in tqdm(range(1, steps + 1), desc=desc or f"B={cfg.batch_size} lr={cfg.lr:.3g}", leave=False,
                     disable=not progress):
        if controller is not None:
            batch, lr = controller.batch_size, controller.lr
        else:
            phase = [p for p in phases if p.start < step][-1]
            batch, lr = max(1, int(round(cfg.batch_size * phase.batch_factor))), cfg.lr * phase.lr_factor
        if per_example:
            n_micro = 1
        elif controller is not None and controller.micro_batch_size is not None:
            n_micro = controller.micro_batches  # a larger batch is more micro-batches of accumulation
        else:
            n_micro = min(cfg.n_micro, batch)
        sampler.batch_size = batch
        for group in optimizer.param_groups:
            group["lr"] = lr
        interval = _empty_interval()
        loss = _train_step(problem, model, optimizer, sampler, monitor, ema, interval, n_micro, cfg.grad_clip,
                           count_errors)
        units = batch * problem.units_per_example
        examples += units
        metric = interval["train_error"] if count_errors else loss
        estimated = interval["n"] > 0
        rows.append({"step": step, "batch_size": batch, "batch_units": units, "lr": lr, "examples": examples,
                     "loss": loss, "metric": metric, "g2": interval["g2"] if estimated else math.nan,
                     "trace_sigma": interval["tr"] if estimated else math.nan,
                     "b_simple_ema": ema.b_simple if ema.count else math.nan})
        if not math.isfinite(loss):
            break
        if controller is not None and ema.count:
            controller.update(ema.b_simple, step)
        recent.append(metric)
        if step in logged:
            curve.steps.append(step - (len(recent) + 1) / 2)
            curve.values.append(float(np.mean(recent)))
            recent = []
            if goals_stop and np.isfinite(curve.steps_to(cfg.goals[-1])).all():
                break
    return pd.DataFrame(rows)


def windowed_noise_scale(frame: pd.DataFrame, window: int) -> pd.DataFrame:
    """B_simple = Σ tr Σ / Σ |G|^2 over consecutive windows of ``window`` steps of a :func:`train_schedule` log.

    Returns one row per window: ``step`` (its middle), ``examples`` (at its end), ``b_simple``.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    block = (frame["step"].to_numpy() - 1) // window
    grouped = frame.assign(block=block).groupby("block")
    out = pd.DataFrame({"step": grouped["step"].mean(), "examples": grouped["examples"].max(),
                        "g2": grouped["g2"].sum(min_count=1), "trace_sigma": grouped["trace_sigma"].sum(min_count=1)})
    out["b_simple"] = np.where(out["g2"] > 0, out["trace_sigma"] / out["g2"], np.nan)
    return out.reset_index(drop=True)


def _ratio_of_sums(frame: pd.DataFrame, lo: float, hi: float) -> float:
    part = frame[(frame["step"] >= lo) & (frame["step"] < hi)]
    g2, tr = part["g2"].sum(), part["trace_sigma"].sum()
    return float(tr / g2) if g2 > 0 else math.nan


def rise_factors(frames: dict[str, pd.DataFrame], start: int, end: int, reference: str = "unchanged") -> pd.DataFrame:
    """B_simple of each run against the unchanged run, in the second half of the window and after it.

    ``in window``: ``B_simple(run) / B_simple(reference)`` over steps ``[(start + end)/2, end)`` (the
    first half lets the optimizer settle into the new temperature); ``after``: the same over the
    second half of the steps after ``end`` (has it returned?). Each B_simple is a ratio of sums over
    the steps (A.1).
    """
    mid = (start + end) / 2
    last = min(int(f["step"].max()) for f in frames.values())
    after = end + (last + 1 - end) / 2
    ref = frames[reference]
    rows = []
    for name, frame in frames.items():
        rows.append({"run": name, "b_simple_before": _ratio_of_sums(frame, start / 2, start),
                     "b_simple_in_window": _ratio_of_sums(frame, mid, end),
                     "rise_in_window": _ratio_of_sums(frame, mid, end) / _ratio_of_sums(ref, mid, end),
                     "rise_after": _ratio_of_sums(frame, after, last + 1) / _ratio_of_sums(ref, after, last + 1)})
    return pd.DataFrame(rows)


def goal_crossings(frame: pd.DataFrame, goals: Sequence[float], metric: str, evals_per_decade: int,
                   max_steps: int | None = None) -> pd.DataFrame:
    """Steps and examples at which a :func:`train_schedule` run reaches each goal, as the sweep measures them.

    The steps' mini-batch metric is averaged over the sweep's log-spaced intervals
    (:func:`gns_utils.experiments.train.eval_schedule`), each mean placed at the mean step of the
    weights its mini-batches saw, smoothed with :data:`gns_utils.critical_batch.DEFAULT_SMOOTHING`
    (A.3) and interpolated to the goal; the examples are those processed up to that (fractional)
    step. A run at a fixed batch size gives what the sweep's run gives when ``max_steps`` is the run's
    step budget (``ceil(budget_examples / B)``, which sets the log-spaced grid; default: the last step).

    Returns:
        One row per goal: ``goal``, ``steps``, ``examples`` (nan where not reached).
    """
    last = int(frame["step"].max())
    schedule = [int(t) for t in eval_schedule(max_steps or last, evals_per_decade) if 0 < t <= last]
    values = frame.set_index("step")["metric"]
    positions, means, previous = [], [], 0
    for t in schedule:
        part = values.loc[previous + 1:t]
        positions.append(t - (len(part) + 1) / 2)
        means.append(float(part.mean()))
        previous = t
    steps = steps_to_target(np.array(positions), np.array(means), np.array(goals, float), smoothing=DEFAULT_SMOOTHING,
                            direction=METRIC_DIRECTION[metric])
    cumulative = np.concatenate([[0.0], frame["examples"].to_numpy(float)])
    step_axis = np.concatenate([[0.0], frame["step"].to_numpy(float)])
    examples = np.where(np.isfinite(steps), np.interp(np.nan_to_num(steps), step_axis, cumulative), np.nan)
    return pd.DataFrame({"goal": list(goals), "steps": steps, "examples": examples})


def gamma_by_goal(noise: pd.DataFrame, batch_units: float, goal_steps: dict[float, float]) -> pd.DataFrame:
    """``γ`` (D.5) of the noise scale up to each goal, from a fixed-batch run's logged B_simple.

    ``ℬ`` is the run's B_simple in each logged interval (``trace_sigma_mean / g2_mean`` of its
    ``metrics.csv``); the expectation is over full-batch steps, ``ds = dS/(1 + ℬ/B)`` (App. D). ``γ`` is
    unchanged by a constant factor on ``ℬ``, so a noise scale that is a constant multiple of B_simple
    (``B_noise``, ``B_crit``) gives the same ``γ``.

    Args:
        noise: the run's metrics with ``step``, ``g2_mean``, ``trace_sigma_mean`` per logged point.
        batch_units: the run's batch size ``B``.
        goal_steps: the run's steps to each goal.

    Returns:
        One row per goal: ``goal``, ``gamma``, ``predicted_overhead`` (``1 + √γ``: S/S_min and E/E_min of
        the adaptive schedule at the balanced point, against 2 for a fixed batch at B_crit) and
        ``predicted_saving`` (``2/(1 + √γ)``).
    """
    s = noise["step"].to_numpy(float)
    b = (noise["trace_sigma_mean"] / noise["g2_mean"]).to_numpy(float)
    ds = np.diff(np.concatenate([[0.0], s])) / (1.0 + np.where(b > 0, b, np.nan) / batch_units)
    rows = []
    for goal, at in goal_steps.items():
        keep = s <= at
        gamma = adaptive_gain(b[keep], weights=np.nan_to_num(ds[keep])) if np.isfinite(at) else math.nan
        rows.append({"goal": goal, "gamma": gamma, "predicted_overhead": adaptive_speedup(gamma),
                     "predicted_saving": 2.0 / adaptive_speedup(gamma)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------------
# The experiments of notebook 05: runs cached under <results_dir>/noise_dynamics/<task>/ (an interrupted notebook
# resumes with the runs it finished), their summaries in <results_dir>/noise_dynamics/dynamics.json.

def _slug(name: str) -> str:
    """A file name for a variant: ``"lr ÷ 4, B × 4"`` → ``"lr_4_B_4"``."""
    return re.sub(r"_+", "_", "".join(c if c.isalnum() else "_" for c in name)).strip("_")


def _cached(path: Path, identity: dict[str, Any], train: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """The table at ``path`` if it was written for ``identity`` (same settings), else ``train()`` written atomically."""
    meta = read_json(path.with_suffix(".json"))
    if path.exists() and meta is not None and meta.get("identity") == _jsonable(identity):
        return pd.read_csv(path)
    frame = train()
    write_csv_atomic(path, frame)
    write_json_if_changed(path.with_suffix(".json"), {"identity": identity, "provenance": provenance()})
    return frame


def _windowed(frame: pd.DataFrame, window: int) -> pd.DataFrame:
    """The per-step log summed over windows of steps: what is kept of each run (``windowed_noise_scale`` plus the
    window's mean metric and last batch size, learning rate and B_simple EMA)."""
    out = windowed_noise_scale(frame, window)
    block = (frame["step"].to_numpy() - 1) // window
    grouped = frame.assign(block=block).groupby("block")
    out["metric"] = grouped["metric"].mean().to_numpy()
    for column in ("batch_size", "batch_units", "lr", "b_simple_ema"):
        out[column] = grouped[column].last().to_numpy()
    out["steps_in_window"] = grouped["step"].count().to_numpy()
    return out


@dataclass
class TemperatureResult:
    """Fig 15 for one task: the windowed logs of each variant and their rise factors."""

    task: str
    cfg: ExperimentConfig
    settings: dict[str, Any]
    k: float
    windows: dict[str, pd.DataFrame]
    rises: pd.DataFrame
    folder: Path


def run_temperature(settings: dict[str, Any], profile: str, k: float, results_dir: str | Path, seed: int = 0,
                    device: str = "auto", progress: bool = True) -> TemperatureResult:
    """Train the Fig 15 variants of one task (:func:`temperature_phases`) and measure B_simple's rise.

    ``settings``: a task entry of :data:`gns_utils.experiments.profiles.DYNAMICS` (``domain``, ``task``,
    ``batch_size``, ``steps``, ``start``, ``end``, ``window``, optionally ``control``). The learning rate is the task's grid centre
    at ``batch_size``; every variant starts from the same weights and batch order (the seed).
    """
    from gns_utils.experiments.problems import make_problem
    from gns_utils.experiments.profiles import experiment_configs

    cfg = experiment_configs(settings["domain"], profile, tasks=[settings["task"]], seed=seed, device=device)[0]
    batch, window = int(settings["batch_size"]), int(settings["window"])
    start, end, steps = int(settings["start"]), int(settings["end"]), int(settings["steps"])
    if start % window or end % window:
        raise ValueError(f"start {start} and end {end} must be multiples of window {window}")
    lr = float(lr_grid_centre(batch, cfg.lr_star, cfg.lr_b_star, cfg.lr_alpha))
    run_cfg = cfg.run(batch, lr)
    folder = Path(results_dir) / DYNAMICS_DIR / cfg.task
    problem = None
    windows = {}
    variants = temperature_phases(k, start, end, settings.get("control"))
    for name, phases in variants.items():
        identity = {"run": run_cfg.run_id, "phases": [dataclasses.asdict(p) for p in phases], "steps": steps,
                    "window": window}

        def train(phases: list[Phase] = phases, name: str = name) -> pd.DataFrame:
            nonlocal problem
            problem = problem if problem is not None else make_problem(cfg)
            return _windowed(train_schedule(problem, run_cfg, steps, phases, progress=progress,
                                            desc=f"{cfg.task}: {name}"), window)

        windows[name] = _cached(folder / "temperature" / f"{_slug(name)}.csv", identity, train)
    rises = rise_factors(windows, start, end)
    rises.insert(1, "temperature_factor", [_temperature_factor(p, start) for p in variants.values()])
    write_csv_atomic(folder / "temperature.csv", rises)
    return TemperatureResult(cfg.task, cfg, dict(settings, lr=lr), k, windows, rises, folder)


def _temperature_factor(phases: list[Phase], start: int) -> float:
    """``T_window / T`` of a variant (``T ≈ ε/B``)."""
    phase = [p for p in phases if p.start <= start][-1]
    return phase.lr_factor / phase.batch_factor


@dataclass
class AdaptiveResult:
    """Fig 16 for one task: the controller's runs against the fixed-batch sweep."""

    task: str
    settings: dict[str, Any]
    r: float
    lr_law: tuple[float, float]
    windows: dict[int, pd.DataFrame]
    crossings: pd.DataFrame
    comparison: pd.DataFrame
    folder: Path


def run_adaptive(settings: dict[str, Any], sweep: Any, results_dir: str | Path, device: str = "auto",
                 progress: bool = True) -> AdaptiveResult:
    """Train with a :class:`gns_utils.BatchSizeController` and compare with the task's fixed-batch sweep (App. D).

    ``sweep``: the task's :class:`gns_utils.experiments.pipeline.TaskResult` (its committed runs). The
    controller follows ``B(s) = √(r·B_simple(s))`` (D.6) with ``r = E_min/S_min`` of the last goal's
    (2.11) fit, from ``settings["batch_size"]`` up to the sweep's largest batch size, in steps of
    ``ratio``; at each change the learning rate is the (2.6) law ``ε_max/(1 + B_noise/B)`` fitted to the
    sweep's best rates at the last goal. Each seed's run stops when it reaches the last goal.

    The comparison per goal (where the goal's fit is not a bound): the runs' steps ``S`` and examples
    ``E`` (mean over seeds), ``S/S_min`` and ``E/E_min``, their measured trade-off
    ``(S/S_min − 1)(E/E_min − 1)`` against the predicted ``γ`` (D.5) of the sweep's reference run, and the
    steps a fixed batch size would need for the same examples on the fitted front (2.11),
    ``S_fixed(E) = S_min·x/(x − 1)`` with ``x = E/E_min``: ``step_saving = S_fixed(E)/S``; likewise
    ``examples_saving = E_fixed(S)/E`` with ``E_fixed(S) = E_min·y/(y − 1)``, ``y = S/S_min``.
    """
    from gns_utils.experiments.problems import make_problem

    cfg = dataclasses.replace(sweep.cfg, device=device)
    goals = [g for g in cfg.goals if sweep.fits.get(g) is not None and sweep.fits[g].bound == "none"]
    if not goals:
        raise RuntimeError(f"task {cfg.task}: no goal has a bounded (2.11) fit; the controller needs r = E_min/S_min")
    last = sweep.fits[goals[-1]]
    r = float(last.e_min / last.s_min)
    best = sweep.best[sweep.best["goal"] == cfg.goals[-1]].dropna(subset=["steps"])
    eps_max, b_noise_lr = fit_optimal_lr(best["batch_units"], best["lr"])

    def law(b: float) -> float:
        return float(optimal_lr(b, eps_max, b_noise_lr))

    b0 = int(settings["batch_size"])
    steps = int(math.ceil(cfg.budget_examples / b0))
    folder = Path(results_dir) / DYNAMICS_DIR / cfg.task
    problem = None
    windows, crossings = {}, []
    for seed in settings["seeds"]:
        run_cfg = cfg.run(b0, law(b0), seed=seed)
        identity = {"run": run_cfg.run_id, "r": r, "lr_law": [eps_max, b_noise_lr], "steps": steps,
                    **{k: settings[k] for k in ("ratio", "min_interval", "hysteresis", "window")}}

        def train(run_cfg: Any = run_cfg, seed: int = seed) -> pd.DataFrame:
            nonlocal problem
            problem = problem if problem is not None else make_problem(cfg)
            controller = BatchSizeController(r, b0, law(b0), ratio=int(settings["ratio"]),
                                             max_batch_size=max(cfg.batch_sizes), hysteresis=settings["hysteresis"],
                                             min_interval=int(settings["min_interval"]), lr_rule=law)
            frame = train_schedule(problem, run_cfg, steps, controller=controller, goals_stop=True,
                                   progress=progress, desc=f"{cfg.task}: adaptive, seed {seed}")
            crossed = goal_crossings(frame, cfg.goals, cfg.metric, cfg.evals_per_decade, max_steps=steps)
            out = _windowed(frame, int(settings["window"]))
            for goal, s, e in crossed.itertuples(index=False):  # kept with the windows: one file per run
                out[f"steps_to_{goal}"], out[f"examples_to_{goal}"] = s, e
            return out

        windows[seed] = _cached(folder / "adaptive" / f"seed_{seed}.csv", identity, train)
        w = windows[seed]
        crossings += [{"seed": seed, "goal": g, "steps": w[f"steps_to_{g}"].iloc[0],
                       "examples": w[f"examples_to_{g}"].iloc[0]} for g in cfg.goals]
    crossings = pd.DataFrame(crossings)
    ref = sweep.summary["reference_run"]
    ref_steps = read_json(Path(sweep.figure_dir).parent / "runs" / ref["run_id"] / "summary.json")["steps_to_goal"]
    gamma = gamma_by_goal(sweep.noise, ref["batch_units"],
                          {g: math.nan if ref_steps.get(str(g)) is None else float(ref_steps[str(g)]) for g in goals})
    rows = []
    for goal in goals:
        fit, mine = sweep.fits[goal], crossings[crossings["goal"] == goal]
        s, e = float(mine["steps"].mean()), float(mine["examples"].mean())
        x, y = e / fit.e_min, s / fit.s_min
        g = gamma[gamma["goal"] == goal].iloc[0]
        rows.append({"goal": goal, "b_crit": fit.b_crit, "s_min": fit.s_min, "e_min": fit.e_min, "steps": s,
                     "steps_seed_spread": float(mine["steps"].std(ddof=1)) if len(mine) > 1 else math.nan,
                     "examples": e, "steps_over_s_min": y, "examples_over_e_min": x,
                     "tradeoff_measured": (y - 1) * (x - 1), "gamma_predicted": g["gamma"],
                     "overhead_predicted": g["predicted_overhead"], "saving_predicted": g["predicted_saving"],
                     "step_saving": fit.s_min * x / (x - 1) / s if x > 1 else math.nan,
                     "examples_saving": fit.e_min * y / (y - 1) / e if y > 1 else math.nan})
    comparison = pd.DataFrame(rows)
    write_csv_atomic(folder / "adaptive.csv", comparison)
    return AdaptiveResult(cfg.task, dict(settings), r, (float(eps_max), float(b_noise_lr)), windows, crossings,
                          comparison, folder)


def write_dynamics_summary(results_dir: str | Path, profile: str, temperature: list[TemperatureResult],
                           adaptive: AdaptiveResult | None) -> dict[str, Any]:
    """The notebook's numbers in ``<results_dir>/noise_dynamics/dynamics.json`` (the README's key numbers)."""
    summary = {
        "profile": profile,
        "temperature": [{"task": t.task, "optimizer": t.cfg.optimizer, "k": t.k, **t.settings,
                         "rises": t.rises.to_dict(orient="records")} for t in temperature],
        "adaptive": None if adaptive is None else {
            "task": adaptive.task, "r": adaptive.r, "lr_law": {"eps_max": adaptive.lr_law[0],
                                                              "b_noise": adaptive.lr_law[1]},
            **adaptive.settings, "comparison": adaptive.comparison.to_dict(orient="records"),
            "batch_sizes": {str(seed): sorted(set(int(b) for b in w["batch_size"])) for seed, w in
                            adaptive.windows.items()}},
        "provenance": provenance(),
    }
    write_json_if_changed(Path(results_dir) / DYNAMICS_DIR / "dynamics.json", summary)
    return summary
