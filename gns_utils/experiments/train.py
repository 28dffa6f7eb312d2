"""One training run: batch size B, constant learning rate ε, until the goals or the budget.

The run follows the paper's measurement recipe (App. A.2): a constant learning rate,
the goal metric evaluated on (a fixed subset of) the training set, and the gradient
noise scale measured at every step (App. A.1, A.2), so B_simple over training is
available afterwards: from per-example gradient norms taken inside the step's one
backward (:class:`gns_utils.noise.PerExampleNormMonitor`, nets of Linear layers)
or from ``n_micro`` accumulated micro-batches
(:class:`gns_utils.noise.GradientNoiseMonitor`, any net); see :func:`noise_monitor`.

A run ends with one of the statuses of :data:`gns_utils.experiments.store.STATUSES`:
``complete`` (the last goal was reached, and the run trained on to ``RUN_OUT`` × the step where
it did, or to the end of its budget: :data:`gns_utils.critical_batch.RUN_OUT`), ``budget_exhausted`` (the example budget
ran out first), ``pruned`` (stopped by the sweep once it could no longer be the fastest
run at its batch size), ``diverged`` (a non-finite loss, or the evaluated loss grew past
``BLOWUP_FACTOR`` × its initial value) or ``failed`` (an exception; recorded by the
sweep). Divergence is recorded, never raised.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from gns_utils.critical_batch import DEFAULT_SMOOTHING, RUN_OUT, steps_to_target
from gns_utils.experiments.config import METRIC_DIRECTION, ConfigError, RunConfig, goal_reached
from gns_utils.experiments.models import count_parameters
from gns_utils.experiments.seed import set_seed
from gns_utils.experiments.stopping import Curve
from gns_utils.experiments.store import (
    MetricsWriter,
    provenance,
    run_dir,
    write_json_atomic,
)
from gns_utils.noise import (
    GradientNoiseMonitor,
    NoiseEstimate,
    NoiseScaleEMA,
    PerExampleNormMonitor,
    adam_preconditioner,
    checkpoint_noise_scale,
    combine_hessian_noise_scales,
    hessian_noise_scale,
)

#: The evaluated loss may grow to this multiple of its initial value before the run counts as diverged.
BLOWUP_FACTOR = 5.0
#: Decay of the two EMAs of |G|^2 and tr Σ behind B_simple (window ≈ 1 / (1 − decay) steps).
NOISE_EMA_DECAY = 0.99
#: Independent micro-batches behind B_simple at a goal's checkpoint (:func:`checkpoint`).
CHECKPOINT_GROUPS = 16
#: Repeats of B_noise (2.8) at a checkpoint, each on its own gradient and Hessian blocks.
B_NOISE_REPEATS = 4
#: Random directions behind tr(HΣ) in each B_noise repeat.
HESSIAN_DIRECTIONS = 16
#: The Hessian batch of a B_noise repeat is this fraction of its gradient batch (its cost is directions × size).
HESSIAN_FRACTION = 4
#: ``k`` of the EMAs' step-dependent decay min(0.99, 1 − k/(t+k−1)): their lag stays ≈ t/(k+1) steps, so
#: runs of a few dozen steps (large batches) are not dominated by their first steps' large |G|^2.
NOISE_EMA_ADAPTIVE = 4.0


def make_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """SGD, momentum (0.9, the paper's CIFAR/ImageNet setting), Adam or RMSProp at constant ε.

    Uses the fused (Adam) or multi-tensor (SGD) implementations: the per-parameter
    loops are the largest cost of a small model's step on a CPU.
    """
    kwargs = dict(cfg.optimizer_kwargs)
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    params = list(model.parameters())
    if cfg.optimizer in ("sgd", "momentum"):
        defaults = {"momentum": 0.9} if cfg.optimizer == "momentum" else {}
        return torch.optim.SGD(params, lr=cfg.lr, **{"foreach": True, **defaults, **kwargs})
    if cfg.optimizer == "adam":
        fused = all(p.device.type in ("cpu", "cuda") for p in params)
        return torch.optim.Adam(params, lr=cfg.lr, **{"fused": fused, **kwargs})
    if cfg.optimizer == "rmsprop":  # the paper's A2C (α = 0.99, ε = 1e-5 as in the A2C baselines)
        return torch.optim.RMSprop(params, lr=cfg.lr, **{"alpha": 0.99, "eps": 1e-5, "foreach": True, **kwargs})
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def noise_monitor(model: torch.nn.Module, method: str, n_micro: int) -> tuple[Any, int]:
    """The step's noise source and its micro-batches per step, for ``RunConfig.noise_method``.

    ``per_example`` (or ``auto`` when the model qualifies): a
    :class:`~gns_utils.noise.PerExampleNormMonitor` and 1 micro-batch, so a step costs
    one forward/backward; otherwise a :class:`~gns_utils.noise.GradientNoiseMonitor`
    over ``n_micro`` micro-batches.

    Raises:
        ValueError: ``per_example`` asked for a model it cannot handle (the reason says why).
    """
    if method == "per_example" or (method == "auto" and not PerExampleNormMonitor.unsupported(model)):
        return PerExampleNormMonitor(model), 1
    if method not in ("auto", "micro_batch"):
        raise ValueError(f"noise_method must be 'auto', 'per_example' or 'micro_batch', got {method!r}")
    # BatchNorm nets (the paper profile's ResNets and conv autoencoders) are measured as the paper's were,
    # on micro-batches each normalised with its own statistics
    return GradientNoiseMonitor(model, allow_batchnorm=True), n_micro


def eval_schedule(max_steps: int, per_decade: int) -> np.ndarray:
    """Steps at which to evaluate: 0, then log-spaced (``per_decade`` per decade), and the last.

    Log spacing gives every batch size the same relative resolution in steps-to-target,
    which is what the log-space (2.11) fit needs.
    """
    n = int(math.ceil(per_decade * math.log10(max(max_steps, 1)))) + 1
    steps = np.unique(np.round(np.logspace(0, math.log10(max(max_steps, 1)), max(n, 2))).astype(int))
    return np.unique(np.concatenate([[0], steps, [max_steps]]))


class EpochSampler:
    """Indices of the next batch: a fresh permutation each epoch, without replacement."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, device: torch.device) -> None:
        if batch_size > n:
            raise ValueError(f"batch size {batch_size} exceeds the {n} training examples")
        self.n, self.batch_size, self.gen, self.device = n, batch_size, generator, device
        self.epoch = 0
        self._perm = torch.empty(0, dtype=torch.long)
        self._pos = n

    def next(self) -> torch.Tensor:
        if self._pos + self.batch_size > self.n:
            self._perm = torch.randperm(self.n, generator=self.gen).to(self.device)
            self._pos = 0
            self.epoch += 1
        idx = self._perm[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        return idx


class FreshSampler:
    """The batches of a problem that draws fresh examples every step (an infinite stream: no epochs)."""

    epoch = 0

    def __init__(self, draw: Callable[[], tuple[torch.Tensor, ...]]) -> None:
        self.draw = draw


def _split(batch: tuple[torch.Tensor, ...], parts: int) -> list[tuple[torch.Tensor, ...]]:
    chunks = [t.chunk(parts) for t in batch]
    return [tuple(c[i] for c in chunks) for i in range(len(chunks[0]))]


class Run:
    """One training run, advanced from logged point to logged point.

    A :class:`gns_utils.experiments.stopping.Member`: the sweep trains the learning rates of a
    batch size side by side (:func:`gns_utils.experiments.stopping.run_group`) and stops the
    ones that can no longer be the fastest; :func:`train_run` trains a single run to its end.
    The run writes ``config.json`` and ``metrics.csv`` as it goes and ``summary.json`` when it
    ends (:meth:`stop` or one of the statuses of :data:`gns_utils.experiments.store.STATUSES`).

    The goal metric of each logged point (``cfg.goal_source``): with ``batches``, the mean
    loss (or error) of the training steps since the previous logged point, placed at the mean
    step of the weights those mini-batches saw; with ``subset``, an evaluation of the fixed
    training subset at the logged step. Either way the step 0 evaluation gives the initial
    loss, against which divergence (``BLOWUP_FACTOR``) is judged.
    """

    def __init__(self, problem: Any, cfg: RunConfig, results_dir: str | Path, progress: bool = True,
                 stacked: bool = False) -> None:
        self.problem, self.cfg = problem, cfg
        self.folder = run_dir(results_dir, cfg.task, cfg.run_id)
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True)
        write_json_atomic(self.folder / "config.json", {"run_id": cfg.run_id, "config": cfg.to_dict()})
        self.start = time.perf_counter()
        set_seed(cfg.seed)
        self.model = problem.build_model(cfg.model, cfg.model_kwargs)  # the run's size (e.g. the Fig 8 widths)
        if hasattr(problem, "restart_stream"):  # problems that draw fresh examples: the stream follows the run's seed
            problem.restart_stream(cfg.seed)
        self.model.train()
        self.optimizer = make_optimizer(self.model, cfg)
        if hasattr(problem, "stream"):  # reinforcement learning: the run's own environments, acting with its model
            self.sampler = problem.stream(self.model, cfg.batch_size, cfg.seed)
        elif hasattr(problem, "sample"):  # a problem that draws fresh examples: the run owns its stream, so runs
            stream = torch.Generator(device=problem.device).manual_seed(cfg.seed)  # trained side by side agree
            self.sampler = FreshSampler(lambda: problem.sample(cfg.batch_size, generator=stream))  # with runs alone
        else:
            self.sampler = EpochSampler(problem.n_train, cfg.batch_size, torch.Generator().manual_seed(cfg.seed),
                                        problem.device)
        # stacked: the steps are taken by a grid's batched model (gns_utils.experiments.members), which
        # measures the noise on micro-batches; this run keeps the books (record_step)
        self.monitor, self.n_micro = noise_monitor(self.model, "micro_batch" if stacked else cfg.noise_method,
                                                   min(cfg.n_micro, cfg.batch_size))
        if getattr(problem, "statistics", False) and isinstance(self.monitor, PerExampleNormMonitor):
            raise ConfigError(f"task {cfg.task}: a batch drawn as sufficient statistics (data_kwargs statistics=True) "
                              "has no per-example gradients; set noise_method='micro_batch'")
        self.ema = NoiseScaleEMA(decay=NOISE_EMA_DECAY, adaptive=NOISE_EMA_ADAPTIVE)
        # parts of the network measured on their own as well (the policy of an actor-critic), per-example only
        parts = problem.noise_parts(self.model) if hasattr(problem, "noise_parts") else {}
        self.parts = {name: (PerExampleNormMonitor(module), NoiseScaleEMA(decay=NOISE_EMA_DECAY,
                                                                           adaptive=NOISE_EMA_ADAPTIVE))
                      for name, module in parts.items() if isinstance(self.monitor, PerExampleNormMonitor)}
        self.units_per_step = cfg.batch_size * problem.units_per_example
        self.max_steps = int(math.ceil(cfg.budget_examples / cfg.batch_size))
        if cfg.max_steps is not None:
            self.max_steps = min(self.max_steps, int(cfg.max_steps))
        self.schedule = [int(t) for t in eval_schedule(self.max_steps, cfg.evals_per_decade)]
        self.goals_left = list(cfg.goals)
        self.b_noise_rows: list[dict[str, float]] = []
        self.curve = Curve(lr=cfg.lr, direction=METRIC_DIRECTION[cfg.metric])
        self.step = 0
        self.n_evaluations = 0
        self.summary: dict[str, Any] | None = None
        self._interval = _empty_interval()
        self._writer = MetricsWriter(self.folder / "metrics.csv")
        self._bar = tqdm(total=self.max_steps, desc=f"B={cfg.batch_size} lr={cfg.lr:.3g}", leave=False,
                         disable=not progress)
        initial = self._evaluate()
        self.initial_loss = initial["loss"]
        self.initial_metric = initial[cfg.metric]
        self._log(0, initial)

    def _evaluate(self) -> dict[str, float]:
        self.n_evaluations += 1
        return self.problem.evaluate(self.model)

    def advance(self) -> None:
        """Train to the next logged step and log it; sets ``curve.status`` when the run ends."""
        target = self.next_log_step()
        while self.step < target:
            loss = _train_step(self.problem, self.model, self.optimizer, self.sampler, self.monitor, self.ema,
                               self._interval, self.n_micro, self.cfg.grad_clip, self.cfg.metric == "error",
                               self.parts)
            if not self._count_step(loss):
                return
        self.log_point()

    def next_log_step(self) -> int:
        """The next step at which the run logs its goal metric."""
        return next(t for t in self.schedule if t > self.step)

    def record_step(self, loss: float, error: float, g2: float, trace_sigma: float) -> bool:
        """Book a training step taken elsewhere (a stacked grid): its batch loss and error rate (NaN when
        the metric is not an error) and its A.2 |G|² and tr Σ. Returns False when the loss is not finite:
        the run then ends as ``diverged``."""
        estimate = None
        if math.isfinite(g2) and math.isfinite(trace_sigma):
            estimate = NoiseEstimate(g2=g2, trace_sigma=trace_sigma, b_small=self.units_per_step / self.n_micro,
                                     b_big=self.units_per_step)
        _book_step(self._interval, self.ema, estimate, loss, error)
        return self._count_step(loss)

    def _count_step(self, loss: float) -> bool:
        self.step += 1
        self._bar.update(1)
        if not math.isfinite(loss):
            self._write_row({"loss": math.nan, "error": math.nan}, math.nan, math.nan)
            self._finish("diverged")
            return False
        return True

    def log_point(self) -> None:
        """Log the goal metric at the current step (a logged step): goals, divergence, the end of the run."""
        self._log(self.step, self._evaluate() if self.cfg.goal_source == "subset" else None)

    def _log(self, step: int, evaluation: dict[str, float] | None) -> None:
        """Record the logged point ``step``: its goal metric, goals reached, divergence and the end of the run."""
        interval, cfg = self._interval, self.cfg
        if evaluation is not None:  # the subset's metric, at the logged step
            position, metric, loss = float(step), evaluation[cfg.metric], evaluation["loss"]
        elif cfg.goal_source == "episodes":  # the mean return of the last episodes the run's environments ended
            n = interval["steps"]
            position, metric, loss = float(step), self.sampler.mean_return(), interval["train_loss"] / n
            evaluation = {"loss": loss, "error": math.nan, cfg.metric: metric}
        else:  # the mean of the steps' own mini-batches, at the mean step of the weights they saw
            n = interval["steps"]
            position = _batch_mean_step(step, n)
            metric = interval[f"train_{cfg.metric}"] / n
            loss = interval["train_loss"] / n
            # the loss / error columns hold the goal source's values (here the mini-batch means)
            evaluation = {"loss": loss, "error": interval["train_error"] / n if cfg.metric == "error" else math.nan}
        self._write_row(evaluation, position if step > 0 else 0.0, metric)
        self._interval = _empty_interval()
        if step == 0 and cfg.goal_source == "episodes":  # no loss before the first update, and no episode
            return
        if not math.isfinite(loss) or loss > BLOWUP_FACTOR * self.initial_loss:
            self._finish("diverged")
            return
        if (step > 0 or cfg.goal_source == "subset") and (cfg.goal_source != "episodes" or math.isfinite(metric)):
            self.curve.steps.append(position if step > 0 else 0.0)
            self.curve.values.append(metric)
        while self.goals_left and goal_reached(cfg.metric, metric, self.goals_left[0]):
            goal = self.goals_left.pop(0)
            if cfg.b_noise_examples:
                self.b_noise_rows.append({"goal": goal, "step": step,
                                          **checkpoint(self.problem, self.model, self.optimizer, cfg)})
                self.monitor.reset()  # the measurement's backward passes are not a training step
                for part, _ in self.parts.values():
                    part.reset()
        last = float(self.curve.steps_to(cfg.goals[-1])[0])
        if math.isfinite(last) and (position >= RUN_OUT * last or step >= self.max_steps):
            self._finish("complete")  # past the last goal by RUN_OUT, so that its centred reading has both sides
        elif step >= self.max_steps:
            self._finish("budget_exhausted")

    def _write_row(self, evaluation: dict[str, float], position: float, metric: float) -> None:
        row = _metrics_row(self.step, self.units_per_step, self.sampler.epoch, evaluation, self._interval, self.ema,
                           time.perf_counter() - self.start)
        if self.cfg.metric not in row:  # a metric of its own (the return): a column of its own
            row[self.cfg.metric] = evaluation.get(self.cfg.metric, math.nan)
        for name, (_, ema) in self.parts.items():
            n = self._interval.get(f"n_{name}", 0)
            row.update({f"g2_{name}_mean": self._interval[f"g2_{name}"] / n if n else math.nan,
                        f"trace_sigma_{name}_mean": self._interval[f"tr_{name}"] / n if n else math.nan,
                        f"noise_steps_{name}": n, f"b_simple_{name}_ema": ema.b_simple if ema.count else math.nan})
        self._writer.write({**row, "metric_step": position, "metric": metric})

    def stop(self, status: str = "pruned") -> None:
        """End the run now (the sweep found it can no longer be the fastest): writes its summary."""
        self._finish(status)

    def _finish(self, status: str) -> None:
        if self.summary is not None:
            return
        self.curve.status = status
        self._writer.close()
        if hasattr(self.sampler, "close"):  # environments
            self.sampler.close()
        self._bar.close()
        if self.b_noise_rows:
            pd.DataFrame(self.b_noise_rows).to_csv(self.folder / "b_noise.csv", index=False)
        cfg = self.cfg
        steps_needed, steps_raw = (_steps_to_goals(self.curve, cfg.goals, smoothing)
                                   for smoothing in (DEFAULT_SMOOTHING, 0.0))
        self.summary = {
            "run_id": cfg.run_id,
            "status": status,
            "config": cfg.to_dict(),
            "units_per_example": self.problem.units_per_example,
            "batch_units": self.units_per_step,
            "steps_to_goal": _by_goal(cfg.goals, steps_needed),
            "steps_to_goal_raw": _by_goal(cfg.goals, steps_raw),
            "smoothing": DEFAULT_SMOOTHING,
            "goal_source": cfg.goal_source,
            "n_parameters": count_parameters(self.model),
            "n_steps": self.step,
            "n_examples": self.step * cfg.batch_size,
            "n_evaluations": self.n_evaluations,
            "eval_examples_forwarded": self.n_evaluations * min(cfg.eval_examples, self.problem.n_train),
            "final_metric": self.curve.values[-1] if self.curve.values else None,
            "initial_loss": self.initial_loss,
            "initial_metric": self.initial_metric,
            "b_simple_final": self.ema.b_simple if self.ema.count else None,
            "noise_method": "per_example" if isinstance(self.monitor, PerExampleNormMonitor) else "micro_batch",
            "noise_steps": self.ema.count,
            "noise_negative_g2": self.ema.n_negative_g2,
            "noise_skipped": self.monitor.n_skipped,
            "wall_time_s": time.perf_counter() - self.start,
            "provenance": provenance(device=str(self.problem.device), seed=cfg.seed),
        }
        write_json_atomic(self.folder / "summary.json", self.summary)


def _empty_interval() -> dict[str, float]:
    return {"g2": 0.0, "tr": 0.0, "n": 0, "train_loss": 0.0, "train_error": 0.0, "steps": 0}


def train_run(problem: Any, cfg: RunConfig, results_dir: str | Path, progress: bool = True,
              prune_after: int | None = None) -> dict[str, Any]:
    """Train one run to its end and write ``config.json``, ``metrics.csv`` and ``summary.json``.

    Any previous contents of the run folder are removed first (the caller decides
    whether a finished run may be reused; see :func:`gns_utils.experiments.sweep.run_sweep`).

    Args:
        problem: a problem from :func:`gns_utils.experiments.problems.make_problem`.
        cfg: the run's configuration.
        results_dir: root of the results store.
        progress: show a tqdm bar over steps.
        prune_after: stop with status ``pruned`` at the first logged step from this one on if the run
            has not ended; None = run until it reaches every goal, diverges or spends its budget.

    Returns:
        The summary written to ``summary.json``.
    """
    run = Run(problem, cfg, results_dir, progress)
    while run.curve.status is None:
        if prune_after is not None and run.step >= prune_after:
            run.stop("pruned")
            break
        run.advance()
    assert run.summary is not None
    return run.summary


def _steps_to_goals(curve: Curve, goals: tuple[float, ...], smoothing: float) -> np.ndarray:
    """Steps at which the goal metric, EMA-smoothed over logged points (A.3), first reaches each goal."""
    steps, values = np.array(curve.steps, float), np.array(curve.values, float)
    finite = np.isfinite(values)
    if not finite.all():  # a diverged tail reaches nothing
        steps, values = steps[: int(np.argmin(finite))], values[: int(np.argmin(finite))]
    if not steps.size:
        return np.full(len(goals), np.nan)
    return steps_to_target(steps, values, np.array(goals, float), smoothing=smoothing, direction=curve.direction)


def steps_to_goals_both_sources(metrics: pd.DataFrame, metric: str, goals: tuple[float, ...]) -> dict[str, np.ndarray]:
    """Steps to each goal from the two goal sources, read off one ``goal_source="subset"`` run's ``metrics.csv``.

    Such a run logs both at every logged point: the fixed training subset's ``loss`` / ``error`` at the
    logged step (``subset``), and the mean of the steps' own mini-batches since the previous logged point
    (``train_loss`` / ``train_error``), which ``goal_source="batches"`` places at the mean step of the
    weights they saw (``batches``). Both are smoothed (A.3) and read as the sweep reads them, so
    ``batches`` equals what the same training logged with ``goal_source="batches"`` would give.
    """
    column = "error" if metric == "error" else "loss"
    direction, levels = METRIC_DIRECTION[metric], np.array(goals, float)
    subset = steps_to_target(metrics["step"], metrics[column], levels, DEFAULT_SMOOTHING, direction)
    logged = metrics[metrics["step"] > 0]
    if logged.empty:
        return {"subset": subset, "batches": np.full(len(goals), np.nan)}
    n = logged["step"].diff().fillna(logged["step"].iloc[0])  # steps since the previous logged point
    batches = steps_to_target(_batch_mean_step(logged["step"], n), logged[f"train_{column}"], levels,
                              DEFAULT_SMOOTHING, direction)
    return {"subset": subset, "batches": batches}


def _batch_mean_step(step: Any, n: Any) -> Any:
    """The mean step of the weights that the ``n`` mini-batches up to logged step ``step`` saw (the k-th
    step's batch is forwarded with the weights after k − 1 updates)."""
    return step - (n + 1) / 2


def _by_goal(goals: tuple[float, ...], steps: np.ndarray) -> dict[str, float | None]:
    return {str(g): (float(s) if np.isfinite(s) else None) for g, s in zip(goals, steps)}


def _train_step(problem: Any, model: torch.nn.Module, optimizer: torch.optim.Optimizer, sampler: EpochSampler,
                monitor: GradientNoiseMonitor | PerExampleNormMonitor, ema: NoiseScaleEMA, interval: dict[str, float],
                n_micro: int, grad_clip: float | None, count_errors: bool = False,
                parts: dict[str, tuple[PerExampleNormMonitor, NoiseScaleEMA]] | None = None) -> float:
    """One optimizer step over ``n_micro`` micro-batches (1 with per-example norms); returns the batch loss.

    Adds the batch's loss (and, with ``count_errors``, its error rate) to ``interval``; ``parts``: per-example
    monitors of parts of the network, measured in the same backward (``g2_<name>``, ``tr_<name>``, ``n_<name>``)."""
    parts = parts or {}
    batch = sampler.draw() if hasattr(sampler, "draw") else problem.batch(sampler.next())
    total_units = problem.units(batch)
    optimizer.zero_grad(set_to_none=True)  # the first backward then takes its gradient buffer, no addition
    loss_sum = 0.0
    error_sum = 0.0
    capture = monitor.capture if isinstance(monitor, PerExampleNormMonitor) else contextlib.nullcontext
    for micro in _split(batch, n_micro) if n_micro > 1 else [batch]:
        units = problem.units(micro)
        metrics: dict[str, float] = {}
        with contextlib.ExitStack() as stack:
            for context in (capture, *(m.capture for m, _ in parts.values())):
                stack.enter_context(context())
            loss = problem.loss(model, micro, metrics) if count_errors else problem.loss(model, micro)
        error_sum += metrics.get("error", math.nan) * units / total_units
        if n_micro > 1:
            loss = loss * (units / total_units)
        loss.backward()
        monitor.after_micro_batch(units)
        for part, _ in parts.values():
            part.after_micro_batch(units)
        loss_sum += float(loss.detach())
    for name, (part, part_ema) in parts.items():
        part_estimate = part.after_step()
        if part_estimate is not None:
            part_ema.update(part_estimate)
            interval[f"g2_{name}"] = interval.get(f"g2_{name}", 0.0) + float(part_estimate.g2)
            interval[f"tr_{name}"] = interval.get(f"tr_{name}", 0.0) + float(part_estimate.trace_sigma)
            interval[f"n_{name}"] = interval.get(f"n_{name}", 0) + 1
    _book_step(interval, ema, monitor.after_step(), loss_sum, error_sum)
    if not math.isfinite(loss_sum):
        return loss_sum
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss_sum


def _book_step(interval: dict[str, float], ema: NoiseScaleEMA, estimate: NoiseEstimate | None, loss: float,
               error: float) -> None:
    """Add one step's noise estimate (None: not measured), batch loss and error rate to the logged interval."""
    if estimate is not None:
        ema.update(estimate)
        interval["g2"] += float(estimate.g2)
        interval["tr"] += float(estimate.trace_sigma)
        interval["n"] += 1
    interval["train_loss"] += loss
    interval["train_error"] += error
    interval["steps"] += 1


def _metrics_row(step: int, units_per_step: int, epoch: int, evaluation: dict[str, float], interval: dict[str, float],
                 ema: NoiseScaleEMA, wall: float) -> dict[str, Any]:
    n = interval["n"]
    return {
        "step": step,
        "examples": step * units_per_step,
        "epoch": epoch,
        "loss": evaluation.get("loss", math.nan),
        "error": evaluation.get("error", math.nan),
        "train_loss": interval["train_loss"] / interval["steps"] if interval["steps"] else math.nan,
        "train_error": interval["train_error"] / interval["steps"] if interval["steps"] else math.nan,
        "g2_mean": interval["g2"] / n if n else math.nan,
        "trace_sigma_mean": interval["tr"] / n if n else math.nan,
        "noise_steps": n,
        "b_simple_ema": ema.b_simple if ema.count else math.nan,
        "wall_time_s": wall,
    }


def checkpoint(problem: Any, model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: RunConfig
               ) -> dict[str, float]:
    """The noise scales at the current weights, measured when a goal is reached.

    On ``n = cfg.b_noise_examples`` training examples per measurement, fixed blocks of the
    problem's measurement blocks (``problem.measurement_batch``), in eval mode, with the random state
    restored afterwards so the run's trajectory does not change:

    * ``b_simple_checkpoint``: B_simple (2.9) from ``CHECKPOINT_GROUPS`` independent
      micro-batch gradients of one block (:func:`gns_utils.noise.checkpoint_noise_scale`),
      with its jackknife standard error;
    * ``b_simple_preconditioned``: the same for Adam's update direction, every gradient scaled
      by Adam's current 1/(√v̂ + ε) (:func:`gns_utils.noise.adam_preconditioner`);
    * ``b_noise``: B_noise (2.8) where the problem offers Hessian batches, from
      ``B_NOISE_REPEATS`` repeats, each with its own gradient block of ``n`` examples and a
      separate Hessian batch of ``n / HESSIAN_FRACTION``, ``HESSIAN_DIRECTIONS`` random directions for tr(HΣ)
      (:func:`gns_utils.noise.hessian_noise_scale`), combined as a ratio of means with a
      standard error (:func:`gns_utils.noise.combine_hessian_noise_scales`).
    """
    n = cfg.b_noise_examples
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    devices = [problem.device] if problem.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.seed)
        on_policy = getattr(problem, "on_policy", False)  # reinforcement learning: the model plays the frames
        batch = problem.measurement_batch(n, 0, model=model) if on_policy else problem.measurement_batch(n, 0)
        groups = _split(batch, CHECKPOINT_GROUPS)
        loss_fn = problem.loss
        units = float(problem.units(groups[0]))
        raw = checkpoint_noise_scale(model, loss_fn, groups, units=units)
        out.update(b_simple_checkpoint=raw.b_simple, b_simple_checkpoint_stderr=raw.stderr)
        if on_policy:  # groups of whole environment segments above; here groups of shuffled frames
            frames = _split(problem.shuffle_frames(batch, torch.Generator().manual_seed(cfg.seed)), CHECKPOINT_GROUPS)
            shuffled = checkpoint_noise_scale(model, loss_fn, frames, units=units)
            out.update(b_simple_frames=shuffled.b_simple, b_simple_frames_stderr=shuffled.stderr)
            policy = checkpoint_noise_scale(model, problem.policy_loss, groups, units=units)
            out.update(b_simple_policy=policy.b_simple, b_simple_policy_stderr=policy.stderr)
        if cfg.optimizer == "adam":
            pre = checkpoint_noise_scale(model, loss_fn, groups, units=units,
                                         preconditioner=adam_preconditioner(optimizer, model))
            out.update(b_simple_preconditioned=pre.b_simple, b_simple_preconditioned_stderr=pre.stderr)
        results = []
        for r in range(B_NOISE_REPEATS):
            gradient_batch = problem.hessian_batch(n, 2 * r + 1)
            if gradient_batch is None:  # Hessian-vector products do not run for this problem
                break
            loss, inputs, targets = gradient_batch
            # the Hessian batch: the head of its own block of n (smaller blocks would overlap the others)
            _, h_inputs, h_targets = problem.hessian_batch(n, 2 * r + 2)
            h_inputs, h_targets = h_inputs[: n // HESSIAN_FRACTION], h_targets[: n // HESSIAN_FRACTION]
            results.append(hessian_noise_scale(model, loss, inputs, targets, hessian_inputs=h_inputs,
                                               hessian_targets=h_targets, directions=HESSIAN_DIRECTIONS,
                                               generator=torch.Generator().manual_seed(r)))
        if results:
            combined = combine_hessian_noise_scales(results)
            out.update(b_noise=combined.b_noise, b_noise_stderr=combined.b_noise_stderr,
                       b_simple_hessian_batch=combined.b_simple, trace_h_sigma=combined.trace_h_sigma,
                       g_h_g=combined.g_h_g)
    model.train(was_training)
    return {k: float(v) for k, v in out.items()}
