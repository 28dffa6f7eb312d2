"""The local critical batch size of a real task, by branching from checkpoints of one run (Merrill et al. 2025).

:mod:`gns_utils.experiments.branching` reads a local B_crit from continuations; this module trains them.

1. **Checkpoints** (:func:`reference_checkpoints`): one run at the task's reference batch size and rate (those
   of the sweep's reference run, on which B_simple and B_noise were measured at every goal) is retrained, its
   goal metric evaluated on the problem's fixed evaluation subset; where it first reaches a goal, the weights
   and the optimizer's state are kept (Adam's moments travel with the weights).
2. **Continuations** (:func:`continuations`): from a checkpoint, at every batch size of a ladder, runs at the
   rate of the task's own rate law (:func:`rate_law`, fitted to the sweep's best rates at that goal), or at a
   few multiples of it, ``replicates`` times with their own batch order, until the mean of their evaluation
   loss has fallen by Δ = ``fraction`` × the checkpoint's loss (and some way past it, so that the crossing is
   read with points on both sides).
3. **The reading** (:func:`gns_utils.experiments.branching.read_local_b_crit`): the crossing of the
   replicate-averaged loss curve per (B, ε), the (2.11) fit to S(B) (the local B_crit) and Merrill et al.'s
   tolerance rule, with a bootstrap over replicates.

The evaluation loss is the mean loss per unit (image) on the problem's fixed evaluation subset, the same at
every batch size, so the continuations of a checkpoint are measured against one target.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from gns_utils.experiments.branching import mean_curve_steps, read_local_b_crit
from gns_utils.experiments.config import ExperimentConfig, goal_reached
from gns_utils.experiments.store import provenance
from gns_utils.experiments.train import BLOWUP_FACTOR, EpochSampler, eval_schedule, make_optimizer

__all__ = ["BranchResult", "Checkpoint", "branch_task", "branching_verdict", "compare_with_sweep", "continuations",
           "rate_law", "reference_checkpoints", "run_branching", "run_calibration_branching", "verdict_lines",
           "write_branching_summary"]

#: Continuations of a (B, ε) go on until the mean loss has been below the target for this many times the
#: steps of its first crossing, so that the centred reading has points on both sides of it.
PAST_CROSSING = 1.5


@dataclass
class Checkpoint:
    """The reference run where it first reached ``goal``: its step, its loss on the first ``eval_examples`` of
    the evaluation subset (what the continuations are measured by), its goal metric, and its state."""

    goal: float
    step: int
    loss: float
    metric: float
    eval_examples: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]


def rate_law(best: pd.DataFrame, goal: float) -> tuple[float, float]:
    """The task's rate law at a goal: ``ε(B) = a·B^s`` fitted (least squares in logs) to the sweep's best rate
    at each batch size for that goal, ``s`` clipped to [0, 1] (Adam's square-root rule to SGD's linear one).

    Args:
        best: :func:`gns_utils.critical_batch.expected_steps` of the sweep (``goal, batch_units, lr, steps``).
        goal: the goal whose best rates are fitted.

    Returns:
        ``(a, s)``.

    Raises:
        ValueError: fewer than two batch sizes reached the goal.
    """
    rows = best[(best["goal"] == goal) & np.isfinite(best["steps"])]
    if rows["batch_units"].nunique() < 2:
        raise ValueError(f"the sweep reached the goal {goal} at fewer than two batch sizes: no rate law to fit")
    x, y = np.log(rows["batch_units"].to_numpy(float)), np.log(rows["lr"].to_numpy(float))
    slope = float(np.clip(np.polyfit(x, y, 1)[0], 0.0, 1.0))
    return float(np.exp(np.mean(y - slope * x))), slope


def _evaluate(problem: Any, model: torch.nn.Module, metric: str) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        result = problem.evaluate(model)
    model.train()
    return float(result["loss"]), float(result[metric])


def _evaluate_loss(problem: Any, model: torch.nn.Module, examples: int) -> float:
    """The mean loss per unit on the first ``examples`` of the problem's fixed evaluation subset."""
    model.eval()
    with torch.no_grad():
        value = float(problem.loss(model, problem.batch(problem.eval_idx[:examples])))
    model.train()
    return value


def reference_checkpoints(problem: Any, cfg: ExperimentConfig, batch_size: int, lr: float, goals: list[float],
                          seed: int = 0, max_steps: int = 20_000, eval_every: int = 10,
                          eval_examples: int = 2048) -> list[Checkpoint]:
    """Train one run of ``cfg`` at (``batch_size``, ``lr``) and keep its state where it first reaches each goal.

    The goal metric (``cfg.metric``) is evaluated on the problem's fixed evaluation subset every
    ``eval_every`` steps; the continuations' loss on its first ``eval_examples``.

    Raises:
        RuntimeError: the run diverged, or did not reach every goal within ``max_steps``.
    """
    torch.manual_seed(seed)
    model = problem.build_model(cfg.model, cfg.model_kwargs)
    optimizer = make_optimizer(model, cfg.run(batch_size, lr))
    sampler = EpochSampler(problem.n_train, batch_size, torch.Generator().manual_seed(seed), problem.device)
    left = list(goals)  # easiest first, as a task's goals are
    out: list[Checkpoint] = []
    initial, _ = _evaluate(problem, model, cfg.metric)
    for step in range(max_steps + 1):
        if step % eval_every == 0:
            loss, value = _evaluate(problem, model, cfg.metric)
            if not math.isfinite(loss) or loss > BLOWUP_FACTOR * initial:
                raise RuntimeError(f"the reference run of {cfg.task} diverged at step {step}")
            while left and goal_reached(cfg.metric, value, left[0]):
                out.append(Checkpoint(left.pop(0), step, _evaluate_loss(problem, model, eval_examples), value,
                                      eval_examples, copy.deepcopy(model.state_dict()),
                                      copy.deepcopy(optimizer.state_dict())))
            if not left:
                return out
        loss = problem.loss(model, problem.batch(sampler.next()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    raise RuntimeError(f"the reference run of {cfg.task} did not reach the goals {left} in {max_steps} steps; "
                       "raise max_steps or choose easier checkpoint goals")


def continuations(problem: Any, cfg: ExperimentConfig, checkpoint: Checkpoint, batch_size: int, rates: list[float],
                  replicates: int, target: float, max_steps: int, evals_per_decade: int = 20, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Continuations of one checkpoint at one batch size.

    At each rate, ``replicates`` runs (batch orders ``seed``, ``seed + 1``, …) advance together from the
    checkpoint's weights and optimizer state, evaluated at the steps of
    :func:`gns_utils.experiments.train.eval_schedule`; they stop once their mean loss has reached ``target`` and
    the step is :data:`PAST_CROSSING` times that crossing's, or at ``max_steps``. A run that diverges is ``inf``
    from there on and ends its rate.

    Returns:
        ``(schedule [T], losses [replicates, rates, T])``; NaN after a rate's runs stopped.
    """
    schedule = eval_schedule(max_steps, evals_per_decade)
    losses = np.full((replicates, len(rates), schedule.size), np.nan)
    losses[:, :, 0] = checkpoint.loss
    for k, lr in enumerate(rates):
        members = []
        for r in range(replicates):
            model = problem.build_model(cfg.model, cfg.model_kwargs)
            model.load_state_dict(checkpoint.model)
            optimizer = make_optimizer(model, cfg.run(batch_size, lr))
            optimizer.load_state_dict(copy.deepcopy(checkpoint.optimizer))
            for group in optimizer.param_groups:
                group["lr"] = lr
            generator = torch.Generator().manual_seed(seed + r)
            members.append((model, optimizer, EpochSampler(problem.n_train, batch_size, generator, problem.device)))
        crossed = None
        for t in range(1, schedule.size):
            for r, (model, optimizer, sampler) in enumerate(members):
                for _ in range(int(schedule[t] - schedule[t - 1])):
                    loss = problem.loss(model, problem.batch(sampler.next()))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                value = _evaluate_loss(problem, model, checkpoint.eval_examples)
                diverged = not math.isfinite(value) or value > BLOWUP_FACTOR * checkpoint.loss
                losses[r, k, t] = math.inf if diverged else value
            if np.isinf(losses[:, k, t]).any():
                break
            if crossed is None and losses[:, k, t].mean() <= target:
                crossed = schedule[t]
            if crossed is not None:  # go on until the reading itself (centred, so later) is well behind
                read = mean_curve_steps(schedule[:t + 1], losses[:, [k], :t + 1], target)[0]
                if math.isfinite(read) and schedule[t] >= PAST_CROSSING * read and t >= 3:
                    break
    return schedule, losses


def branch_task(problem: Any, cfg: ExperimentConfig, best: pd.DataFrame, checkpoints: list[Checkpoint],
                batch_sizes: list[int], fraction: float, replicates: int, max_examples: int,
                rate_factors: tuple[float, ...] = (2 ** -1, 2 ** -0.5, 1.0), study_goal: float | None = None,
                fractions: tuple[float, ...] = (), tolerances: tuple[float, ...] = (0.2,), max_steps: int = 5000,
                max_widen: int = 2, evals_per_decade: int = 20, n_boot: int = 200, seed: int = 0,
                progress: bool = True
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The local critical batch size at each checkpoint of a real task.

    At every checkpoint each batch size of ``batch_sizes`` runs at ``rate_factors`` times the rate law's rate
    (:func:`rate_law` at the checkpoint's goal; the factors must include 1). When the fastest of them at Δ =
    ``fraction`` is an end of the grid, one more rate beyond it is run, up to ``max_widen`` times (as a sweep
    widens its grid), so that the optimum is bracketed. S(B) is read between the rates
    (:func:`gns_utils.experiments.branching.best_rate_steps`: reading ``"grid"``) and at the law's rate alone
    (``"law"``). At ``study_goal`` the continuations go on to the largest of ``fractions`` so that the local
    B_crit is also read at each smaller Δ from the same runs, and at each τ of ``tolerances`` (elsewhere at
    ``fraction`` and the first τ).

    Args:
        best: the sweep's best runs (for the rate law).
        checkpoints: :func:`reference_checkpoints`.
        fraction: Δ = ``fraction`` × the checkpoint's evaluation loss.
        max_examples: a continuation stops after this many examples (or ``max_steps`` steps) at the latest.

    Returns:
        ``(local, steps)``: one row per (checkpoint, Δ, τ, reading) (``goal, step, checkpoint_loss, fraction,
        target, tolerance, rates`` (``"grid"`` or ``"law"``), ``lr_law_slope``, and
        :func:`~gns_utils.experiments.branching.read_local_b_crit`'s fields); and one row per
        (checkpoint, Δ, B, ε) with the steps of the replicate-averaged curve.

    Raises:
        ValueError: ``rate_factors`` does not hold 1.
    """
    if 1.0 not in rate_factors:
        raise ValueError(f"rate_factors must include 1 (the rate law's own rate), got {rate_factors}")
    b = np.asarray(batch_sizes, float)
    rng = np.random.default_rng(seed)
    rows, step_rows = [], []
    bar = tqdm(total=len(checkpoints) * len(batch_sizes), desc=f"{cfg.task} continuations", disable=not progress)
    for i, c in enumerate(checkpoints):
        study = study_goal is not None and math.isclose(c.goal, study_goal)
        wanted = sorted({fraction, *(fractions if study else ())})
        a, s = rate_law(best, c.goal)
        runs = []  # per batch size: (schedule, rates, losses)
        for batch in batch_sizes:
            factors = list(rate_factors)
            steps_cap = int(min(max_steps, max(max_examples // batch, 10)))

            def run(fs: list[float]) -> tuple[np.ndarray, np.ndarray]:
                return continuations(problem, cfg, c, batch, [f * a * batch ** s for f in fs], replicates,
                                     c.loss * (1 - max(wanted)), steps_cap, evals_per_decade, seed=seed + 1000 * (i + 1))

            schedule, losses = run(factors)
            for _ in range(max_widen if len(factors) > 1 else 0):  # the fastest rate at an end: one more beyond it
                by_rate = mean_curve_steps(schedule, losses, c.loss * (1 - fraction))
                if not np.isfinite(by_rate).any() or 0 < int(np.nanargmin(by_rate)) < len(factors) - 1:
                    break
                low = int(np.nanargmin(by_rate)) == 0
                extra = factors[0] ** 2 / factors[1] if low else factors[-1] ** 2 / factors[-2]
                _, more = run([extra])
                factors = [extra, *factors] if low else [*factors, extra]
                losses = np.concatenate([more, losses] if low else [losses, more], axis=1)
            runs.append((schedule, [f * a * batch ** s for f in factors], losses, factors))
            bar.update()
        for frac in wanted:
            target = c.loss * (1 - frac)
            readings = {"grid": [(sch, rt, ls) for sch, rt, ls, _ in runs],
                        "law": [(sch, [rt[fs.index(1.0)]], ls[:, [fs.index(1.0)]]) for sch, rt, ls, fs in runs]}
            for label, data in readings.items():
                for tau in (tolerances if study else tolerances[:1]):
                    read = read_local_b_crit(b, data, target, replicates, rng, tau, n_boot)
                    rows.append({"goal": c.goal, "step": c.step, "checkpoint_loss": c.loss, "fraction": frac,
                                 "target": target, "tolerance": tau, "rates": label, "lr_law_slope": s,
                                 **{k: v for k, v in read.items() if k != "steps"}})
            for (sch, rt, ls, fs), batch in zip(runs, batch_sizes):
                for k, lr in enumerate(rt):
                    step_rows.append({"goal": c.goal, "fraction": frac, "batch_size": batch, "lr": lr,
                                      "rate_factor": fs[k],
                                      "steps": float(mean_curve_steps(sch, ls[:, [k]], target)[0])})
    bar.close()
    return pd.DataFrame(rows), pd.DataFrame(step_rows)


@dataclass
class BranchResult:
    """Notebook 06's measurement on one real task: the readings, the steps per (B, ε), and the comparison
    per checkpoint with the sweep's B_crit(goal) and the reference run's B_simple and B_noise there."""

    task: str
    units: str
    metric: str
    settings: dict[str, Any]
    local: pd.DataFrame
    steps: pd.DataFrame
    comparison: pd.DataFrame
    sweep_goals: pd.DataFrame
    figure_dir: Path


def compare_with_sweep(local: pd.DataFrame, sweep_goals: pd.DataFrame, fraction: float, tolerance: float
                       ) -> pd.DataFrame:
    """One row per checkpoint: the local B_crit (``"grid"`` reading at Δ = ``fraction``, τ = ``tolerance``) and
    the law-rate reading, the tolerance CBS, the sweep's B_crit at the same goal, and B_simple (2.9) and B_noise
    (2.8) measured on the reference run where it reached that goal, with the ratios
    ``local_over_sweep`` (and ``local_over_sweep_z``: the log difference over the combined log standard errors)
    and ``b_simple_over_local``.
    """
    chosen = local[np.isclose(local["fraction"], fraction) & np.isclose(local["tolerance"], tolerance)]
    grid = chosen[chosen["rates"] == "grid"].set_index("goal")
    law = chosen[chosen["rates"] == "law"].set_index("goal")
    sweep = sweep_goals.set_index("goal")
    rows = []
    for goal, g in grid.iterrows():
        s = sweep.loc[goal] if goal in sweep.index else pd.Series(dtype=float)

        def value(key: str) -> float:
            v = s.get(key)
            return float(v) if v is not None and pd.notna(v) else math.nan

        sweep_b, sweep_se = value("b_crit"), value("b_crit_stderr")
        if s.get("bound", "none") != "none":
            sweep_b, sweep_se = math.nan, math.nan
        log_se = math.hypot(g["b_crit_stderr"] / g["b_crit"], sweep_se / sweep_b)
        rows.append({
            "goal": goal, "step": int(g["step"]), "local_b_crit": g["b_crit"], "local_b_crit_stderr": g["b_crit_stderr"],
            "local_ci_low": g["ci_low"], "local_ci_high": g["ci_high"], "local_n_rate_edge": int(g["n_rate_edge"]),
            "local_b_crit_law": law.loc[goal, "b_crit"] if goal in law.index else math.nan,
            "tolerance_cbs": g["tolerance_cbs"], "tolerance_cbs_from_fit": g["tolerance_cbs_from_fit"],
            "s_min": g["s_min"], "sweep_b_crit": sweep_b, "sweep_b_crit_stderr": sweep_se,
            "b_simple": value("b_simple_checkpoint"), "b_simple_stderr": value("b_simple_checkpoint_stderr"),
            "b_noise": value("b_noise"), "b_noise_stderr": value("b_noise_stderr"),
            "local_over_sweep": g["b_crit"] / sweep_b,
            "local_over_sweep_z": math.log(g["b_crit"] / sweep_b) / log_se if log_se > 0 else math.nan,
            "b_simple_over_local": value("b_simple_checkpoint") / g["b_crit"],
        })
    return pd.DataFrame(rows)


def _frames(stored: dict[str, Any], keys: tuple[str, ...]) -> list[pd.DataFrame]:
    return [pd.DataFrame(stored[k]) for k in keys]


def run_branching(setting: dict[str, Any], profile: str, results_dir: str | Path, seed: int = 0,
                  device: str = "auto", progress: bool = True) -> BranchResult:
    """Checkpoints, continuations and readings of one task of :data:`~gns_utils.experiments.profiles.BRANCHING`.

    Reads the task's sweep back (:func:`gns_utils.experiments.pipeline.run_experiment`, ``record=False``: the
    notebook that owns the task must have run), retrains its reference run to the checkpoints, branches, and
    writes ``<results_dir>/local_critical_batch/<task>.json``. When that file holds the same settings and seed,
    it is read back instead (stepping through the notebook again trains nothing).
    """
    from gns_utils.experiments.pipeline import run_experiment  # the sweep machinery, only needed here
    from gns_utils.experiments.problems import make_problem
    from gns_utils.experiments.profiles import BRANCHING_DIR, experiment_configs
    from gns_utils.experiments.store import read_json, write_json_atomic

    folder = Path(results_dir) / BRANCHING_DIR
    path = folder / f"{setting['task']}.json"
    cfg = experiment_configs(setting["domain"], profile, tasks=[setting["task"]], device=device)[0]
    identity = {**setting, "seed": seed, "profile": profile}
    stored = read_json(path)
    if stored is None or stored.get("settings") != json_roundtrip(identity):
        problem = make_problem(cfg)
        sweep = run_experiment(cfg, results_dir, progress=progress, problem=problem, record=False)
        ref = sweep.summary["reference_run"]
        checkpoints = reference_checkpoints(problem, cfg, int(ref["batch_examples"]), float(ref["lr"]),
                                            list(setting["goals"]), seed=seed)
        local, steps = branch_task(problem, cfg, sweep.best, checkpoints, list(setting["batch_sizes"]),
                                   setting["fraction"], setting["replicates"], setting["max_examples"],
                                   rate_factors=tuple(setting["rate_factors"]), study_goal=setting.get("study_goal"),
                                   fractions=tuple(setting.get("fractions", ())),
                                   tolerances=tuple(setting.get("tolerances", (0.2,))), seed=seed, progress=progress)
        sweep_goals = pd.DataFrame(sweep.summary["goals"])
        stored = {"settings": identity, "task": cfg.task, "units": cfg.units,
                  "reference_run": {k: ref[k] for k in ("batch_examples", "lr")},
                  "checkpoints": [{"goal": c.goal, "step": c.step, "loss": c.loss, "metric": c.metric}
                                  for c in checkpoints],
                  "local": local.to_dict(orient="records"), "steps": steps.to_dict(orient="records"),
                  "sweep_goals": sweep_goals.to_dict(orient="records"), "provenance": provenance()}
        write_json_atomic(path, stored)
    local, steps, sweep_goals = _frames(stored, ("local", "steps", "sweep_goals"))
    tolerance = (setting.get("tolerances") or [0.2])[0]
    return BranchResult(cfg.task, cfg.units, cfg.metric, setting, local, steps,
                        compare_with_sweep(local, sweep_goals, setting["fraction"], tolerance), sweep_goals,
                        folder / "figures")


def json_roundtrip(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` as it reads back from JSON (tuples as lists), to compare settings with a stored file's."""
    import json

    return json.loads(json.dumps(data))


def run_calibration_branching(setting: dict[str, Any], profile: str, results_dir: str | Path, seed: int = 0
                              ) -> pd.DataFrame:
    """:func:`gns_utils.experiments.branching.calibration_branching` on the calibration task's problem at
    ``profile`` (its spectrum, start and noise), with the settings of
    :data:`~gns_utils.experiments.profiles.BRANCHING`; stored in ``local_critical_batch/calibration.json`` and
    read back when the settings and seed match. ``floor`` is the loss floor σ²/2."""
    from gns_utils.experiments.branching import calibration_branching
    from gns_utils.experiments.problems import make_problem
    from gns_utils.experiments.profiles import BRANCHING_DIR, experiment_configs
    from gns_utils.experiments.store import read_json, write_json_atomic

    path = Path(results_dir) / BRANCHING_DIR / "calibration.json"
    identity = {**setting, "seed": seed, "profile": profile}
    stored = read_json(path)
    if stored is None or stored.get("settings") != json_roundtrip(identity):
        problem = make_problem(experiment_configs("synthetic", "cpu" if profile == "smoke" else profile)[0])
        frame = calibration_branching(problem.eigenvalues, problem.u0, problem.noise_var, setting["checkpoints"],
                                      setting["fraction"], setting["batch_sizes"], setting["replicates"],
                                      np.random.default_rng(seed), n_boot=setting["n_boot"])
        frame["floor"] = 0.5 * float(problem.noise_var)
        stored = {"settings": identity, "local": frame.to_dict(orient="records"), "provenance": provenance()}
        write_json_atomic(path, stored)
    return pd.DataFrame(stored["local"])


def branching_verdict(calibration: pd.DataFrame, results: list[BranchResult]) -> dict[str, Any]:
    """The numbers notebook 06 and the README state: the calibration's measured / exact local B_crit and how
    often the interval held the exact value; per task the local B_crit over the sweep's B_crit(goal), how many
    differ beyond 2 standard errors (in logs), and B_simple over the local B_crit."""
    out: dict[str, Any] = {}
    if len(calibration):
        ratio = calibration["b_crit"] / calibration["b_crit_exact"]
        out["calibration"] = {"n": int(len(calibration)), "ratio_min": float(ratio.min()),
                              "ratio_max": float(ratio.max()), "covered": int(calibration["covered"].sum()),
                              "b_simple_over_exact_min": float((calibration["b_simple"] / calibration["b_crit_exact"]).min()),
                              "b_simple_over_exact_max": float((calibration["b_simple"] / calibration["b_crit_exact"]).max())}
    tasks = []
    for r in results:
        c = r.comparison.dropna(subset=["local_b_crit"])
        resolved = c.dropna(subset=["local_over_sweep"])
        tasks.append({
            "task": r.task, "units": r.units, "n_checkpoints": int(len(r.comparison)), "n_fitted": int(len(c)),
            "local_over_sweep_min": float(resolved["local_over_sweep"].min()) if len(resolved) else None,
            "local_over_sweep_max": float(resolved["local_over_sweep"].max()) if len(resolved) else None,
            "n_above_sweep": int((resolved["local_over_sweep_z"] > 2).sum()),
            "n_below_sweep": int((resolved["local_over_sweep_z"] < -2).sum()),
            "b_simple_over_local_min": float(c["b_simple_over_local"].min()) if len(c) else None,
            "b_simple_over_local_max": float(c["b_simple_over_local"].max()) if len(c) else None,
            "n_rate_edge": int(c["local_n_rate_edge"].sum()) if len(c) else 0,
            "comparison": r.comparison.to_dict(orient="records"),
        })
    out["tasks"] = tasks
    return out


def write_branching_summary(results_dir: str | Path, profile: str, calibration: pd.DataFrame,
                            results: list[BranchResult]) -> dict[str, Any]:
    """Notebook 06's numbers in ``<results_dir>/local_critical_batch/local_cbs.json`` (the README reads them)."""
    from gns_utils.experiments.profiles import BRANCHING_DIR
    from gns_utils.experiments.store import write_json_if_changed

    summary = {"profile": profile, **branching_verdict(calibration, results),
               "sensitivity": {r.task: r.local[(r.local["rates"] == "grid")
                                               & np.isclose(r.local["goal"], r.settings["study_goal"])
                                               ].to_dict(orient="records")
                               for r in results if r.settings.get("study_goal") is not None},
               "provenance": provenance()}
    write_json_if_changed(Path(results_dir) / BRANCHING_DIR / "local_cbs.json", summary)
    return summary


def verdict_lines(summary: dict[str, Any]) -> list[str]:
    """The verdict of notebook 06 in plain sentences, from :func:`write_branching_summary`'s numbers."""
    from gns_utils.experiments.profiles import display_name

    lines = []
    cal = summary.get("calibration")
    if cal:
        lines.append(f"Calibration (noisy linear regression, exact answer known): the local B_crit by branching is "
                     f"{cal['ratio_min']:.2f}–{cal['ratio_max']:.2f} of the exact one at {cal['n']} checkpoints; its "
                     f"95 % interval holds the exact value at {cal['covered']} of them. There B_simple is "
                     f"{cal['b_simple_over_exact_min']:.2f}–{cal['b_simple_over_exact_max']:.2f} of the exact local "
                     "B_crit.")
    for t in summary.get("tasks", []):
        name = display_name(t["task"])
        if not t["n_fitted"]:
            lines.append(f"{name}: no checkpoint gave a fitted local B_crit (only bounds).")
            continue
        if t["local_over_sweep_min"] is None:
            lines.append(f"{name}: local B_crit fitted at {t['n_fitted']} of {t['n_checkpoints']} checkpoints; the "
                         "sweep has no fitted B_crit at those goals to compare with.")
            continue
        n = t["n_fitted"]
        side = ("above the sweep's beyond 2 s.e. at " + f"{t['n_above_sweep']} of {n}" if t["n_above_sweep"]
                else "")
        below = (f"below it beyond 2 s.e. at {t['n_below_sweep']} of {n}" if t["n_below_sweep"] else "")
        beyond = "; ".join(x for x in (side, below) if x) or "within 2 s.e. of the sweep's at every checkpoint"
        edge = (f" At {t['n_rate_edge']} (batch size, checkpoint) pairs the fastest rate sat at an end of the grid, "
                "so S(B) there is an upper bound." if t["n_rate_edge"] else "")
        lines.append(f"{name}: the local B_crit is {t['local_over_sweep_min']:.2f}–{t['local_over_sweep_max']:.2f}× "
                     f"the sweep's B_crit at the same goal ({n} checkpoints; {beyond}); B_simple there is "
                     f"{t['b_simple_over_local_min']:.2f}–{t['b_simple_over_local_max']:.2f} of the local B_crit."
                     + edge)
    return lines
