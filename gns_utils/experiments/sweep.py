"""Batch-size × learning-rate sweeps (App. A.2, A.3), resumable run by run.

Batch sizes are swept in increasing order. At each batch size B the sweep trains at
``lr_grid_size`` learning rates ``lr_grid_spacing`` apart (√2 in the cpu presets), centred on
the optimum predicted so far: at the first batch size the preset law
ε_central(B) = ε*/(1 + B*/B)^α (A.3); after that the best rates found at the batch sizes
already swept, extrapolated by a power law fitted to the last three of them
(:func:`predicted_lr`). The grid is widened one rate at a time on every side where the
fastest rate for *any* goal sits on the edge of the rates tried (up to ``max_widen`` rates
per side); a batch size where every rate diverged widens downwards, one where no rate
reached any goal without diverging widens upwards, so no batch size drops out of the fit
silently.

Every run's folder is named by the hash of its config; a run whose folder already
holds a valid final ``summary.json`` is reused, anything else is (re)trained, so an
interrupted sweep resumes with nothing lost and nothing half-read.

Stopping: the learning rates of a batch size train side by side, in lockstep, and each stops
as soon as it can no longer be the fastest for any goal it has not reached: every such goal
was already reached by another rate in no more steps (:mod:`gns_utils.experiments.stopping`;
a larger rate also stops once a smaller one beat it to a goal by the factor ``stop_outpaced``, since
larger rates only lose ground as goals get harder; ``stop_margin`` adds a predictive rule,
``exhaustive=True`` turns stopping off). Rates added when the grid widens train against the finished
rates' stored curves. The runs the exact rule stops (status ``pruned``) are never the fastest for a
goal; the outpaced rule rests on the ordering of rates above, checked by replaying it on exhaustive
sweeps (``benchmarks/sweep_compute.py``).

Engines: a grid's runs train in this process one model per rate (``engine="sequential"``) or as one
batched model (``stacked``, :mod:`gns_utils.experiments.members`; ``auto`` picks it on CUDA where the
task allows it), or as Ray actors (``executor="ray"``, :mod:`gns_utils.experiments.executors`).
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from gns_utils.experiments.config import METRIC_DIRECTION, ConfigError, ExperimentConfig, RunConfig, goal_reached
from gns_utils.experiments.executors import (
    RayGroup,
    RayGroupMember,
    RayMember,
    advance_in_parallel,
    gpus_per_run,
    init_ray,
)
from gns_utils.experiments.members import StackedGroup, stacking_unsupported
from gns_utils.experiments.problems import make_problem
from gns_utils.experiments.store import (
    FINAL_STATUSES,
    load_run_summary,
    provenance,
    run_dir,
    task_dir,
    write_json_atomic,
)
from gns_utils.experiments.stopping import Curve, run_group
from gns_utils.experiments.train import Run, train_run
from gns_utils.noise import PerExampleNormMonitor
from gns_utils.theory import lr_grid, lr_grid_centre


#: Significant digits a swept learning rate is rounded to. A rate enters the run's hash (its folder name);
#: computed from a power-law fit, its last bits differ between machines and libraries, which would make a
#: sweep on another machine train other rates from the second batch size on, instead of the same ones.
LR_DIGITS = 6


def portable_lr(lr: float) -> float:
    """``lr`` rounded to :data:`LR_DIGITS` significant digits (the same on every machine)."""
    return float(f"{float(lr):.{LR_DIGITS}g}")


def initial_lrs(cfg: ExperimentConfig, batch_size: int, centre: float | None = None) -> list[float]:
    """The starting grid at B: ``lr_grid_size`` rates, ``lr_grid_spacing`` apart, centred at ``centre``
    (default: the preset law ε_central(B), A.3), each rounded by :func:`portable_lr`."""
    if centre is None:
        return [portable_lr(lr) for lr in lr_grid(batch_size, cfg.lr_star, cfg.lr_b_star, cfg.lr_alpha,
                                                  n=cfg.lr_grid_size, spacing=cfg.lr_grid_spacing)]
    # B* = 0 makes the grid's centre ε* itself: the grid around ``centre``
    return [portable_lr(lr) for lr in lr_grid(batch_size, centre, 0.0, n=cfg.lr_grid_size,
                                              spacing=cfg.lr_grid_spacing)]


def _fastest_lr(summaries: list[dict], goal: float) -> float | None:
    """The rate of the run that reached ``goal`` in the fewest steps (None: no run reached it)."""
    reached = [(s["steps_to_goal"][str(float(goal))], s["config"]["lr"]) for s in summaries
               if s.get("steps_to_goal", {}).get(str(float(goal))) is not None]
    return float(min(reached)[1]) if reached else None


def best_lr(summaries: list[dict], goals: tuple[float, ...]) -> float | None:
    """The rate of the fastest run for the hardest goal any of ``summaries`` reached (None: no goal reached)."""
    for goal in reversed(goals):
        lr = _fastest_lr(summaries, goal)
        if lr is not None:
            return lr
    return None


def predicted_lr(cfg: ExperimentConfig, batch_size: int, found: dict[int, float]) -> float:
    """The optimum rate expected at ``batch_size`` from the best rates ``found`` at smaller batch sizes.

    None found: the preset law ε_central(B) (A.3). One: that rate moved along the preset law.
    Two or more: a power law ε ∝ B^s fitted to the last three (s clipped to [0, 1], between
    Adam's square-root rule and SGD's linear rule, 2.6), extrapolated to ``batch_size``.
    """
    centre = float(lr_grid_centre(batch_size, cfg.lr_star, cfg.lr_b_star, cfg.lr_alpha))
    if not found:
        return centre
    sizes = sorted(found)[-3:]
    last = sizes[-1]
    if len(sizes) == 1:
        return found[last] * centre / float(lr_grid_centre(last, cfg.lr_star, cfg.lr_b_star, cfg.lr_alpha))
    slope = float(np.polyfit(np.log(sizes), np.log([found[b] for b in sizes]), 1)[0])
    return found[last] * (batch_size / last) ** float(np.clip(slope, 0.0, 1.0))


def run_or_load(problem: Any, cfg: RunConfig, results_dir: str | Path, progress: bool = True,
                prune_after: int | None = None) -> tuple[dict, bool]:
    """The run's summary: loaded if already finished, else trained now.

    Returns:
        (summary, trained): ``trained`` is False when a finished run was reused.
        An exception inside training is recorded as status ``failed`` (with its
        traceback) and the sweep goes on; ``KeyboardInterrupt`` propagates and leaves
        the run folder without a summary, so the next sweep redoes it.
    """
    folder = run_dir(results_dir, cfg.task, cfg.run_id)
    summary = load_run_summary(folder, expected_run_id=cfg.run_id)
    if summary is not None and summary["status"] in FINAL_STATUSES:
        return summary, False
    try:
        return train_run(problem, cfg, results_dir, progress=progress, prune_after=prune_after), True
    except Exception as err:  # noqa: BLE001 — recorded, the sweep continues
        return _record_failure(problem, cfg, results_dir, err), True


def _record_failure(problem: Any, cfg: RunConfig, results_dir: str | Path, err: Exception) -> dict:
    """Write (and return) the summary of a run that raised: status ``failed`` with its traceback."""
    folder = run_dir(results_dir, cfg.task, cfg.run_id)
    summary = {"run_id": cfg.run_id, "status": "failed", "config": cfg.to_dict(),
               "batch_units": cfg.batch_size * problem.units_per_example,
               "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(),
               "steps_to_goal": {str(g): None for g in cfg.goals},
               "provenance": provenance(device=str(getattr(problem, "device", None)), seed=cfg.seed)}
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "summary.json", summary)
    return summary


class _Member:
    """A :class:`~gns_utils.experiments.train.Run` in a grid: an exception ends it as ``failed``, not the grid."""

    def __init__(self, problem: Any, cfg: RunConfig, results_dir: str | Path, progress: bool,
                 stacked: bool = False) -> None:
        self.problem, self.cfg, self.results_dir = problem, cfg, results_dir
        self.run: Run | None = None
        self.summary: dict | None = None
        try:
            self.run = Run(problem, cfg, results_dir, progress, stacked=stacked)
            self.curve = self.run.curve
        except Exception as err:  # noqa: BLE001 — recorded, the sweep continues
            self._fail(err)

    def _fail(self, err: BaseException) -> None:
        self.summary = _record_failure(self.problem, self.cfg, self.results_dir, err)
        self.curve = Curve(lr=self.cfg.lr, status="failed")

    def advance(self) -> None:
        try:
            self.run.advance()
        except Exception as err:  # noqa: BLE001
            self._fail(err)
        self._collect()

    def stop(self, status: str) -> None:
        self.run.stop(status)
        self._collect()

    def _collect(self) -> None:
        if self.summary is None and self.run is not None and self.run.summary is not None:
            self.summary = self.run.summary


def train_group(problem: Any, cfgs: list[RunConfig], results_dir: str | Path, goals: tuple[float, ...],
                rivals: list[Curve] = (), exhaustive: bool = False, margin: float | None = None,
                progress: bool = True, outpaced: float | None = None) -> list[dict]:
    """Train the runs of one batch size's grid in lockstep; each stops once it can no longer be the
    fastest (:func:`gns_utils.experiments.stopping.run_group`). ``rivals``: curves of the grid's
    runs that already finished. Returns the runs' summaries."""
    if cfgs and cfgs[0].executor != "local":
        return _train_group_on_ray(problem, cfgs, results_dir, goals, rivals, exhaustive, margin, outpaced)
    stacked = bool(cfgs) and use_stacked(problem, cfgs[0])
    members = [_Member(problem, c, results_dir, progress, stacked=stacked) for c in cfgs]
    for m in members:
        if m.run is not None:
            _check_initial_metric(m.cfg, m.run.initial_metric, goals)
    advance = None
    if stacked:
        live = {m: m.run for m in members if m.run is not None}
        if live:
            group = StackedGroup(problem, live, on_error=lambda m, err: m._fail(err))

            def advance(go: list[_Member]) -> None:
                group.advance(go)
                for m in go:
                    m._collect()
    run_group(members, goals, rivals=rivals, margin=margin, exhaustive=exhaustive, outpaced=outpaced,
              advance=advance)
    return [m.summary for m in members]


def use_stacked(problem: Any, cfg: RunConfig, cuda: bool | None = None) -> bool:
    """Whether the grid of ``cfg``'s batch size trains as one batched model (``cfg.engine``).

    ``cuda``: whether the grid trains on a GPU (default: the problem's device; Ray workers may have
    GPUs the driver lacks). ``auto``: on CUDA, where :func:`~gns_utils.experiments.members.stacking_unsupported` finds nothing
    against it and the net has no recurrent layer (``vmap`` has no batching rule for the fused LSTM
    kernels and would loop over the members). ``stacked``: always (:func:`check_engine` refused what
    cannot be stacked before training).
    """
    if cfg.engine == "sequential":
        return False
    if cuda is None:
        cuda = getattr(problem, "device", torch.device("cpu")).type == "cuda"
    if cfg.engine == "auto" and not cuda:
        return False
    model = problem.build_model(cfg.model, cfg.model_kwargs)
    if cfg.engine == "auto" and any(isinstance(m, torch.nn.RNNBase) for m in model.modules()):
        return False
    return stacking_unsupported(problem, cfg, model) is None


def check_engine(problem: Any, cfg: ExperimentConfig) -> None:
    """``engine='stacked'`` for a grid that cannot be stacked: a ConfigError before any run."""
    if cfg.engine != "stacked":
        return
    model = problem.build_model(cfg.model, cfg.model_kwargs)
    for batch_size in cfg.batch_sizes:
        reason = stacking_unsupported(problem, cfg.run(batch_size, cfg.lr_star), model)
        if reason:
            raise ConfigError(f"engine='stacked' cannot train task {cfg.task} at batch size {batch_size}: {reason}. "
                              "Use engine='sequential' (or 'auto', which stacks only what it can, on CUDA).")


def _check_initial_metric(cfg: RunConfig, initial: float, goals: tuple[float, ...]) -> None:
    """A goal the untrained model already meets says nothing about batch size: fail before training."""
    if goal_reached(cfg.metric, initial, goals[0]):
        met = [g for g in goals if goal_reached(cfg.metric, initial, g)]
        raise ConfigError(f"goals {met} of task {cfg.task} are already met before training "
                          f"(initial {cfg.metric}: {initial:.4g}); choose harder goals")


def _train_group_on_ray(problem: Any, cfgs: list[RunConfig], results_dir: str | Path, goals: tuple[float, ...],
                        rivals: list[Curve], exhaustive: bool, margin: float | None,
                        outpaced: float | None = None) -> list[dict]:
    """:func:`train_group` with every run in a Ray actor (:mod:`gns_utils.experiments.executors`)."""
    ray = init_ray(cfgs[0].executor)
    gpus = gpus_per_run(ray, cfgs[0].device)
    if use_stacked(problem, cfgs[0], cuda=gpus > 0):
        return _train_stacked_group_on_ray(ray, gpus, problem, cfgs, results_dir, goals, rivals, exhaustive, margin,
                                           outpaced)
    # one actor per run, one CPU each: a group larger than the cluster would wait forever for its last actors,
    # so it trains in turns of at most that many, each later turn racing the finished runs' stored curves
    capacity = max(1, int(ray.cluster_resources().get("CPU", 1)))
    if len(cfgs) > capacity:
        summaries: list[dict] = []
        for k in range(0, len(cfgs), capacity):
            done = _train_group_on_ray(problem, cfgs[k:k + capacity], results_dir, goals, rivals, exhaustive, margin,
                                       outpaced)
            summaries += done
            rivals = rivals + [stored_curve(results_dir, s) for s in done]
        return summaries

    def fail(member: RayMember, err: BaseException) -> None:
        member.summary = _record_failure(problem, member.cfg, results_dir, err)
        member.curve.status = "failed"

    members = [RayMember(ray, c, results_dir, gpus, on_error=fail) for c in cfgs]

    try:
        for m in members:
            try:
                _check_initial_metric(m.cfg, m.initial_metric(), goals)
            except ConfigError:
                raise
            except Exception as err:  # noqa: BLE001 — the actor could not build the run
                fail(m, err)

        def advance(group: list[RayMember]) -> None:
            for member, err in advance_in_parallel(group):
                fail(member, err)

        run_group(members, goals, rivals=rivals, margin=margin, exhaustive=exhaustive, outpaced=outpaced,
                  advance=advance)
    finally:
        for m in members:
            ray.kill(m.actor)
    return [m.summary for m in members]


def _train_stacked_group_on_ray(ray: Any, gpus: float, problem: Any, cfgs: list[RunConfig], results_dir: str | Path,
                                goals: tuple[float, ...], rivals: list[Curve], exhaustive: bool, margin: float | None,
                                outpaced: float | None) -> list[dict]:
    """:func:`train_group` with the whole grid as one stacked group in one Ray actor (:class:`RayGroup`)."""
    actor = ray.remote(num_cpus=1, num_gpus=gpus)(RayGroup).remote([c.to_dict() for c in cfgs],
                                                                   str(Path(results_dir).resolve()))
    def fail(member: RayGroupMember, err: BaseException) -> None:
        member.summary = _record_failure(problem, member.cfg, results_dir, err)
        member.curve.status = "failed"

    members = [RayGroupMember(ray, actor, k, c, on_error=fail) for k, c in enumerate(cfgs)]

    try:
        try:
            initials = ray.get(actor.initial_metrics.remote())
        except Exception as err:  # noqa: BLE001 — the actor could not start: neither could any of its runs
            initials = {m.key: err for m in members}
        for m, initial in sorted(initials.items()):
            if isinstance(initial, BaseException):
                fail(members[m], initial)
            else:
                _check_initial_metric(members[m].cfg, initial, goals)

        def advance(group: list[RayGroupMember]) -> None:
            try:
                states = ray.get(actor.advance.remote([m.key for m in group]))
            except Exception as err:  # noqa: BLE001 — the actor itself failed: so did every run it was training
                states = {m.key: err for m in group}
            for m in group:
                if isinstance(states[m.key], BaseException):
                    fail(m, states[m.key])
                else:
                    m.update(states[m.key])

        run_group(members, goals, rivals=rivals, margin=margin, exhaustive=exhaustive, outpaced=outpaced,
                  advance=advance)
    finally:
        ray.kill(actor)
    return [m.summary for m in members]


def stored_curve(results_dir: str | Path, summary: dict) -> Curve:
    """The goal-metric curve of a finished run, from its ``metrics.csv`` (a rival of later runs)."""
    cfg = summary["config"]
    curve = Curve(lr=cfg["lr"], status=summary["status"], direction=METRIC_DIRECTION[cfg["metric"]])
    path = run_dir(results_dir, cfg["task"], summary["run_id"]) / "metrics.csv"
    if summary["status"] == "failed" or not path.exists():
        return curve
    frame = pd.read_csv(path)
    if "metric_step" in frame:
        if cfg.get("goal_source", "subset") in ("batches", "episodes"):
            frame = frame[frame["step"] > 0]
        steps, values = frame["metric_step"], frame["metric"]
    else:
        steps, values = frame["step"], frame[cfg["metric"]]
    keep = steps.notna()
    curve.steps, curve.values = steps[keep].astype(float).tolist(), values[keep].astype(float).tolist()
    return curve


def run_sweep(cfg: ExperimentConfig, results_dir: str | Path, problem: Any = None, progress: bool = True,
              record: bool = True, rates: Mapping[int, Sequence[float]] | None = None) -> pd.DataFrame:
    """Run (or resume) the whole sweep of an experiment; return the run table.

    Args:
        cfg: the experiment.
        results_dir: root of the results store; runs go to ``<results_dir>/<task>/runs/``.
        problem: the loaded problem (built from ``cfg`` when None).
        progress: tqdm bars for the sweep and each run.
        record: write ``<results_dir>/<task>/experiment.json`` (False for the repeats at other seeds).
        rates: the rates to train at each batch size (in examples), as they are: no grid is predicted and
            none widened. The repeats of ``seed_rates="grid"`` pass the main sweep's rates, so that every
            seed trains the same rates and :func:`gns_utils.critical_batch.expected_steps` averages each of
            them over every seed. Batch sizes missing from ``rates`` are skipped.

    Returns:
        :func:`runs_table` of the runs this sweep used; its ``trained`` column says which
        were trained by this call (False: a finished run found in the store and reused).
    """
    if problem is None:
        problem = make_problem(cfg)
    _check_noise_method(problem, cfg)
    check_engine(problem, cfg)
    if record:
        write_json_atomic(task_dir(results_dir, cfg.task) / "experiment.json", cfg.to_dict())
    summaries: list[dict] = []
    trained: list[bool] = []
    found: dict[int, float] = {}
    sizes = [b for b in cfg.batch_sizes if rates is None or b in rates]
    bar = tqdm(total=sum(len(rates[b]) for b in sizes) if rates is not None else len(sizes) * cfg.lr_grid_size,
               desc=f"sweep {cfg.task} seed {cfg.seed}", disable=not progress)
    for batch_size in sizes:
        if rates is not None:
            lrs = sorted({portable_lr(lr) for lr in rates[batch_size]})
        else:
            lrs = sorted(initial_lrs(cfg, batch_size, predicted_lr(cfg, batch_size, found)))
        done: dict[float, dict] = {}
        fresh: dict[float, bool] = {}
        widened = {"low": 0, "high": 0}

        def train(lrs: list[float]) -> None:  # each rate not in ``done``: from the store, or trained as one group
            group = []
            for lr in (lr for lr in lrs if lr not in done):
                run_cfg = cfg.run(batch_size, lr)
                summary = load_run_summary(run_dir(results_dir, cfg.task, run_cfg.run_id), expected_run_id=run_cfg.run_id)
                if summary is not None and summary["status"] in FINAL_STATUSES:
                    done[lr], fresh[lr] = summary, False
                else:
                    group.append(run_cfg)
            if group:
                rivals = [stored_curve(results_dir, s) for s in done.values()]
                bar.set_postfix(B=batch_size, rates=len(group))
                for run_cfg, summary in zip(group, train_group(problem, group, results_dir, cfg.goals, rivals,
                                                              cfg.exhaustive, cfg.stop_margin, progress,
                                                              outpaced=cfg.stop_outpaced)):
                    done[run_cfg.lr], fresh[run_cfg.lr] = summary, True

        while True:
            train(lrs)
            for summary in done.values():
                _check_goals_not_met_at_start(summary)
            sides = [side for side in sides_to_widen(list(done.values()), cfg.goals) if widened[side] < cfg.max_widen]
            if not sides or rates is not None:
                break
            for side in sides:
                widened[side] += 1
            lrs = sorted(set(done) | {portable_lr(min(done) / cfg.lr_grid_spacing if side == "low"
                                                  else max(done) * cfg.lr_grid_spacing) for side in sides})
            bar.total += len(sides)
        for spacing in refine_spacings(cfg) if rates is None else []:
            extra = [lr for lr in refined_lrs(list(done.values()), cfg.goals, spacing) if lr not in done]
            bar.total += len(extra)
            train(extra)
        bar.update(len(done))
        summaries.extend(done.values())
        trained.extend(fresh[lr] for lr in done)
        best = best_lr(list(done.values()), cfg.goals)
        if best is not None:
            found[batch_size] = best
    bar.close()
    return runs_table(summaries, trained)


def _check_noise_method(problem: Any, cfg: ExperimentConfig) -> None:
    """``noise_method='per_example'`` on a model it cannot handle, or anything but ``micro_batch`` on batches
    drawn as sufficient statistics: a ConfigError before any run."""
    if getattr(problem, "statistics", False) and cfg.noise_method != "micro_batch":
        raise ConfigError(f"task {cfg.task}: its batches are drawn as sufficient statistics (data_kwargs "
                          f"statistics=True), which have no per-example gradients; set noise_method='micro_batch' "
                          f"(got {cfg.noise_method!r})")
    if cfg.noise_method != "per_example":
        return
    reason = PerExampleNormMonitor.unsupported(problem.build_model(cfg.model, cfg.model_kwargs))
    if reason:
        raise ConfigError(f"noise_method='per_example' cannot measure model {cfg.model!r}: {reason}. "
                          "Use noise_method='micro_batch' (or 'auto', which picks it for such models).")


def _check_goals_not_met_at_start(summary: dict) -> None:
    """A goal the untrained model already meets says nothing about batch size: fail clearly."""
    trivial = [g for g, steps in summary.get("steps_to_goal", {}).items() if steps is not None and steps <= 0]
    if trivial:
        raise ConfigError(
            f"goals {trivial} of task {summary['config']['task']} are already met before training "
            f"(initial {summary['config']['metric']}: {summary.get('initial_metric')}); choose goals below it")


def refine_spacings(cfg: ExperimentConfig) -> list[float]:
    """The spacing of each refinement round (``cfg.lr_refine`` of them): √spacing, then its square root…"""
    return [cfg.lr_grid_spacing ** (0.5 ** (k + 1)) for k in range(cfg.lr_refine)]


def refined_lrs(summaries: list[dict], goals: tuple[float, ...], spacing: float) -> list[float]:
    """The rates one refinement round adds: ``ε/spacing`` and ``ε·spacing`` around every rate ε that is the
    fastest for some goal (each rounded by :func:`portable_lr`), sorted."""
    winners = {lr for lr in (_fastest_lr(summaries, goal) for goal in goals) if lr is not None}
    return sorted({portable_lr(lr * f) for lr in winners for f in (1.0 / spacing, spacing)})


def sides_to_widen(summaries: list[dict], goals: tuple[float, ...]) -> list[str]:
    """Where the learning-rate grid of one batch size must grow: a subset of ``["low", "high"]``.

    * the fastest rate for any goal is the smallest (largest) rate tried → ``low`` (``high``);
    * no rate reached any goal: every run diverged → ``low``; none diverged → ``high``
      (rates too small to get anywhere within the budget); some of each → nothing to learn
      from widening (the budget is too small for this batch size).
    """
    lrs = sorted(s["config"]["lr"] for s in summaries)
    sides: set[str] = set()
    any_reached = False
    for goal in goals:
        best = _fastest_lr(summaries, goal)
        if best is None:
            continue
        any_reached = True
        if len(lrs) > 1 and best == lrs[0]:
            sides.add("low")
        if len(lrs) > 1 and best == lrs[-1]:
            sides.add("high")
    if not any_reached and summaries:
        diverged = [s["status"] == "diverged" for s in summaries]
        if all(diverged):
            sides.add("low")
        elif not any(diverged) and not any(s["status"] == "failed" for s in summaries):
            sides.add("high")
    return sorted(sides)


def run_selected(cfg: ExperimentConfig, points: list[tuple[int, float] | tuple[int, float, float]],
                 results_dir: str | Path, problem: Any = None, progress: bool = True) -> pd.DataFrame:
    """Train (or reuse) one run per ``(batch size in examples, rate[, last goal])`` of ``points`` at
    ``cfg.seed``: the repeats of a sweep at another seed, where only the rates that matter are trained again.

    Each point trains on its own until it reaches its last goal (default: the experiment's hardest), its
    budget runs out or it diverges; goals past its last goal are not in its config, so its run table has no
    rows for them.

    Returns:
        :func:`runs_table` of those runs.

    Raises:
        ConfigError: a last goal that is not one of ``cfg.goals``.
    """
    if problem is None:
        problem = make_problem(cfg)
    goals = [float(g) for g in cfg.goals]
    configs = []
    for point in points:
        batch_size, lr, *rest = point
        last = float(rest[0]) if rest else goals[-1]
        if last not in goals:
            raise ConfigError(f"run_selected: last goal {last} of the point (B={batch_size}, lr={lr}) is not one "
                              f"of the experiment's goals {goals}")
        configs.append(cfg.run(batch_size, lr, goals=tuple(goals[:goals.index(last) + 1])))
    summaries, trained = [], []
    for run_cfg in tqdm(configs, desc=f"repeats {cfg.task} seed {cfg.seed}", disable=not progress):
        summary, fresh = run_or_load(problem, run_cfg, results_dir, progress)
        summaries.append(summary)
        trained.append(fresh)
    return runs_table(summaries, trained)


def runs_table(summaries: list[dict], trained: list[bool] | None = None) -> pd.DataFrame:
    """Long table: one row per (run, goal) with the batch size in both units, ``lr``, ``steps``.

    ``batch_units`` is B in the task's units (images, tokens or examples), as each run
    recorded it; ``batch_examples`` counts examples (sequences for language models);
    ``steps`` is the step at which the smoothed goal metric reached the goal (A.3), NaN when
    it did not, and ``steps_raw`` the same without smoothing; ``seed`` is the run's seed;
    ``trained`` (when given) says whether the run was trained by the sweep that made the
    table. This is the input of :func:`gns_utils.critical_batch.best_runs` with
    ``batch="batch_units"``.
    """
    columns = ["run_id", "status", "batch_units", "batch_examples", "lr", "seed", "goal", "steps", "steps_raw",
               "trained"]
    rows = []
    for k, s in enumerate(summaries):
        cfg = s["config"]
        raw = s.get("steps_to_goal_raw", {})
        for goal, steps in s.get("steps_to_goal", {}).items():
            rows.append({"run_id": s["run_id"], "status": s["status"], "batch_units": s["batch_units"],
                         "batch_examples": cfg["batch_size"], "lr": cfg["lr"], "seed": cfg.get("seed", 0),
                         "goal": float(goal), "steps": np.nan if steps is None else float(steps),
                         "steps_raw": np.nan if raw.get(goal) is None else float(raw[goal]),
                         "trained": None if trained is None else bool(trained[k])})
    return pd.DataFrame(rows, columns=columns)
