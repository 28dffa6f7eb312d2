"""Frozen configurations built from papermill parameters, validated before any training.

* :class:`ExperimentConfig`  one task's sweep: data, model, optimizer, goals, batch
  sizes, the learning-rate grid centred at ε_central(B) = ε*/(1 + B*/B)^α (App. A.3).
* :class:`RunConfig`         one training run: the experiment's fixed fields plus one
  batch size B and one learning rate ε. Its hash is the run's folder name.

Profiles (``smoke`` | ``cpu`` | ``paper``) are presets: :func:`make_experiment` starts
from a preset and overrides every field the caller passes (``None`` keeps the preset).
Unknown keys and wrong types raise :class:`ConfigError` with the fix in the message.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

from gns_utils.experiments.models import ACTOR_CRITIC_ARCHS, AUTOENCODER_ARCHS, MODELS, Autoencoder
from gns_utils.experiments.store import config_hash

#: The presets every notebook runs at (defined in :mod:`gns_utils.experiments.profiles`).
PROFILES = ("smoke", "cpu", "paper")
#: What the batch size B counts in each domain (the paper's units for B, B_crit and B_simple).
UNITS = {"image": "images", "language": "tokens", "autoencoder": "images", "synthetic": "examples", "rl": "frames"}
OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop")
#: Goal metrics and which way is better: ``below`` (a goal is reached when the metric falls to it) or ``above``.
METRIC_DIRECTION = {"error": "below", "loss": "below", "return": "above"}
METRICS = tuple(METRIC_DIRECTION)
DOMAINS = tuple(UNITS)
NOISE_METHODS = ("auto", "per_example", "micro_batch")
GOAL_SOURCES = ("batches", "subset", "episodes")
ENGINES = ("auto", "sequential", "stacked")


def goal_reached(metric: str, value: float, goal: float) -> bool:
    """Whether ``value`` of the goal metric ``metric`` has reached ``goal`` (:data:`METRIC_DIRECTION`)."""
    return bool(value >= goal) if METRIC_DIRECTION.get(metric) == "above" else bool(value <= goal)


#: What the repeats of a sweep at extra seeds train (:attr:`ExperimentConfig.seed_rates`).
SEED_RATES = ("grid", "selected")


class ConfigError(ValueError):
    """A parameter is unknown, of the wrong type or out of range."""


def _frozen_mapping(value: Mapping[str, Any] | None) -> types.MappingProxyType:
    return types.MappingProxyType(dict(value or {}))


@dataclass(frozen=True, kw_only=True)
class _RunFields:
    """The fields every run of an experiment shares (documented in :class:`ExperimentConfig`)."""

    task: str
    domain: str
    dataset: str
    model: str
    optimizer: str
    metric: str
    goals: tuple[float, ...]
    budget_examples: int
    max_steps: int | None = None
    data_kwargs: Mapping[str, Any] = field(default_factory=dict)
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    optimizer_kwargs: Mapping[str, Any] = field(default_factory=dict)
    n_micro: int = 2
    noise_method: str = "auto"
    eval_examples: int = 4096
    evals_per_decade: int = 30
    goal_source: str = "batches"
    exhaustive: bool = False
    stop_margin: float | None = None
    stop_outpaced: float | None = 1.5
    grad_clip: float | None = None
    b_noise_examples: int = 0
    seed: int = 0
    device: str = "auto"
    executor: str = "local"
    engine: str = "auto"
    profile: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("data_kwargs", "model_kwargs", "optimizer_kwargs"):
            object.__setattr__(self, name, _frozen_mapping(getattr(self, name)))
        object.__setattr__(self, "goals", tuple(float(g) for g in self.goals))

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python copy (for JSON)."""
        return _asdict(self)

    @property
    def units(self) -> str:
        """What the batch size B counts: ``"images"`` or ``"tokens"`` (:data:`UNITS`)."""
        return UNITS[self.domain]


@dataclass(frozen=True, kw_only=True)
class ExperimentConfig(_RunFields):
    """One task: what to train and how to sweep it.

    Attributes:
        task: results sub-folder name, e.g. ``"fashion_mnist_mlp_sgd"``.
        domain: ``image`` | ``language`` | ``autoencoder`` | ``synthetic`` (the noisy linear
            regression calibration task, where B_noise is known exactly) | ``rl`` (A2C on vectorised
            environments, :mod:`gns_utils.experiments.rl`; batch sizes count environments, B frames).
        dataset: dataset name understood by :mod:`gns_utils.experiments.problems`.
        data_kwargs: dataset options (subset size, tokenizer, sequence length ...).
        model: registry name in :mod:`gns_utils.experiments.models`.
        model_kwargs: keyword arguments of the model.
        optimizer: ``sgd`` | ``momentum`` (0.9) | ``adam`` | ``rmsprop`` (the paper's A2C).
        optimizer_kwargs: extra optimizer arguments (e.g. ``betas`` for Adam).
        metric: goal metric on the training set, ``error`` or ``loss`` (lower is better), or for
            reinforcement learning ``return``, the mean episodic return (higher is better).
        goals: goal levels of ``metric``, from easiest to hardest.
        batch_sizes: batch sizes B to sweep, in examples (sequences for language models, parallel
            environments for reinforcement learning: B in frames is environments × rollout steps).
        lr_star: ε* of the grid centre ε_central(B) = ε*/(1 + B*/B)^α.
        lr_b_star: B* of the grid centre.
        lr_alpha: α of the grid centre (1 for SGD / momentum, 0.5–1 for Adam).
        lr_grid_size: learning rates per batch size.
        lr_grid_spacing: factor between neighbouring rates.
        max_widen: extra rates tried per side when the best rate is on the grid's edge.
        lr_refine: rounds of refinement once the grid is settled: each round trains the geometric
            midpoints between every rate that is fastest for some goal and its neighbours at the current
            spacing, then halves the spacing (in log ε). A discrete grid misses the optimum rate by up
            to half a spacing and so overstates S(B) most where the optimum sits against the divergence
            edge (large B for SGD), which biases B_crit low; 0 (default) = the grid as it is.
        seeds: extra seeds at which the sweep is repeated (``seed`` is the main sweep's; empty = no
            repeats). ``log S`` is averaged over the seeds at each rate before the fastest rate is
            chosen, and per-seed fits give B_crit its seed-aware error bar
            (:func:`gns_utils.critical_batch.seed_aware_b_crit`).
        seed_rates: what the repeats train: ``grid`` (the rates the main sweep trained at every batch size,
            none predicted or widened anew) or ``selected`` (at each
            batch size, only the rates the main sweep found fastest for some goal, each trained up to the
            hardest goal it was fastest for: a few short runs per batch size instead of a grid).
        budget_examples: examples a run may use before it stops (``budget_exhausted``).
        max_steps: steps a run may take before it stops (also ``budget_exhausted``), whatever its
            batch size; None (default) = ``budget_examples / B`` alone. A sweep whose batch sizes span
            many decades needs both: the examples of its largest batches, and a bound on its smallest,
            whose rates train until one of them reaches the hardest goal.
        n_micro: micro-batches per step when B_simple is measured from micro-batches (>= 2).
        noise_method: how each step measures |G|^2 and tr Σ: ``per_example`` (per-example
            gradient norms inside the step's one backward, for nets whose trainable layers
            are all ``nn.Linear``; :class:`~gns_utils.noise.PerExampleNormMonitor`),
            ``micro_batch`` (``n_micro`` accumulated micro-batches, any net;
            :class:`~gns_utils.noise.GradientNoiseMonitor`) or ``auto`` (the first
            where the model qualifies, else the second).
        eval_examples: fixed training subset on which the initial loss (and, with
            ``goal_source="subset"``, the goal metric) is evaluated.
        evals_per_decade: logged points per decade of steps (log-spaced schedule).
        goal_source: where the goal metric comes from: ``batches`` (default) — the loss or
            error of the training steps' own mini-batches, averaged between logged points
            (free: no extra forward passes) — or ``subset`` — a forward pass over the fixed
            ``eval_examples`` subset at every logged point, in eval mode (the only choice that
            is exact for the synthetic task, and for models with dropout or batch norm the
            eval-mode metric) — or, for reinforcement learning only, ``episodes`` — the mean return
            of the last episodes the run's environments finished. All are smoothed (A.3) before
            the goals are read off.
        exhaustive: train every learning rate of a grid until it has reached every goal (or
            diverged, spent its budget, or passed twice the fastest run's steps to the last
            goal). Default False: a rate stops as soon as it can no longer be the fastest for
            any goal it has not reached (:mod:`gns_utils.experiments.stopping`; this exact rule
            leaves the fits as they are) or once a smaller rate outpaced it (``stop_outpaced``).
        stop_margin: also stop a rate that is more than this factor behind another rate in
            steps at its own current level (:func:`gns_utils.experiments.stopping.can_still_win`);
            None (default) = off. Faster, and may drop a run that would have won a later goal.
        stop_outpaced: also stop a rate once a *smaller* rate reached a goal it has not reached
            in at most 1/``stop_outpaced`` of its steps: larger rates only lose ground as goals get
            harder (:mod:`gns_utils.experiments.stopping`). Default 1.5; None = off.
        grad_clip: gradient-norm clipping threshold, or None.
        b_noise_examples: examples used by the Hessian B_noise at goal checkpoints (0 = off).
        seed: random seed (weights, sampling, dropout).
        device: ``auto`` (CUDA when present) | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps``.
        executor: where a grid's runs train: ``local`` (this process) | ``ray`` (Ray actors on a
            local instance or the cluster of ``RAY_ADDRESS``) | ``ray:<address>``
            (:mod:`gns_utils.experiments.executors`).
        engine: how a grid's learning rates train: ``sequential`` (one model per rate, stepped one
            after the other, or one Ray actor per rate), ``stacked`` (the grid as one batched model,
            :mod:`gns_utils.experiments.members`, in this process or in one Ray actor; noise from
            ``n_micro`` micro-batches, A.2) or ``auto`` (default: ``stacked`` on CUDA where the problem
            allows it, else ``sequential``).
        profile: the preset this config came from.
    """

    batch_sizes: tuple[int, ...]
    lr_star: float
    lr_b_star: float
    lr_alpha: float = 1.0
    lr_grid_size: int = 3
    lr_grid_spacing: float = 2.0
    max_widen: int = 2
    lr_refine: int = 0
    seeds: tuple[int, ...] = ()
    seed_rates: str = "grid"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "batch_sizes", tuple(int(b) for b in self.batch_sizes))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        _check_experiment(self)

    def run(self, batch_size: int, lr: float, **changes: Any) -> "RunConfig":
        """The :class:`RunConfig` of one (B, ε) point of this experiment.

        Sweep runs do not measure B_noise (``b_noise_examples=0``) unless ``changes`` asks;
        only the reference run does (see :mod:`gns_utils.experiments.pipeline`).
        """
        base = {f.name: getattr(self, f.name) for f in dataclasses.fields(_RunFields)}  # not ``seeds``, ``seed_rates``
        base.update(batch_size=int(batch_size), lr=float(lr), b_noise_examples=0)
        base.update(changes)
        return RunConfig(**base)


@dataclass(frozen=True, kw_only=True)
class RunConfig(_RunFields):
    """One training run at batch size B and constant learning rate ε.

    Fields have the meaning given in :class:`ExperimentConfig`. ``device``, ``executor``, ``engine`` and
    ``profile`` do not enter :attr:`run_id` (they change how a run is computed, not what).
    """

    batch_size: int
    lr: float

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive finite number, got {self.lr}")

    @property
    def run_id(self) -> str:
        """Hash of every field that changes the computation."""
        identity = {k: v for k, v in self.to_dict().items() if k not in ("device", "executor", "engine", "profile")
                    and not (k == "max_steps" and v is None)}  # unset: the ids of runs made before the field existed
        return config_hash(identity)


def _asdict(cfg: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out[f.name] = dict(value) if isinstance(value, Mapping) else (list(value) if isinstance(value, tuple) else value)
    return out


def _check_experiment(cfg: ExperimentConfig) -> None:
    problems = []
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", cfg.task):
        problems.append(f"task {cfg.task!r} must use letters, digits, '_', '-', '.' only (it names a folder)")
    for name, choices in (("domain", DOMAINS), ("optimizer", OPTIMIZERS), ("metric", METRICS), ("profile", PROFILES),
                          ("noise_method", NOISE_METHODS)):
        if getattr(cfg, name) not in choices:
            problems.append(f"{name} must be one of {choices}, got {getattr(cfg, name)!r}")
    if not cfg.goals:
        problems.append("goals must name at least one goal level")
    elif METRIC_DIRECTION.get(cfg.metric) == "above" and any(b <= a for a, b in zip(cfg.goals, cfg.goals[1:])):
        problems.append(f"goals must increase from easiest to hardest ({cfg.metric}: higher is better), got {cfg.goals}")
    elif METRIC_DIRECTION.get(cfg.metric) == "below" and any(b >= a for a, b in zip(cfg.goals, cfg.goals[1:])):
        problems.append(f"goals must decrease from easiest to hardest (lower is better), got {cfg.goals}")
    if (cfg.domain == "rl") != (cfg.metric == "return") or (cfg.domain == "rl") != (cfg.goal_source == "episodes"):
        problems.append("the rl domain, and only it, has metric='return' (mean episodic return) and "
                        f"goal_source='episodes'; got domain={cfg.domain!r}, metric={cfg.metric!r}, "
                        f"goal_source={cfg.goal_source!r}")
    if len(cfg.batch_sizes) < 3:
        problems.append(f"batch_sizes needs at least 3 sizes for the (2.11) fit, got {cfg.batch_sizes}")
    if any(b < 1 or b & (b - 1) for b in cfg.batch_sizes):
        problems.append(f"batch_sizes must be powers of two, got {cfg.batch_sizes}")
    if list(cfg.batch_sizes) != sorted(set(cfg.batch_sizes)):
        problems.append(f"batch_sizes must be increasing and distinct, got {cfg.batch_sizes}")
    for name in ("lr_star", "lr_b_star", "lr_alpha"):
        if not getattr(cfg, name) > 0:
            problems.append(f"{name} must be > 0, got {getattr(cfg, name)}")
    if cfg.lr_grid_size < 1 or cfg.lr_grid_spacing <= 1:
        problems.append("lr_grid_size must be >= 1 and lr_grid_spacing > 1")
    if cfg.lr_refine < 0:
        problems.append(f"lr_refine must be >= 0, got {cfg.lr_refine}")
    if cfg.budget_examples < max(cfg.batch_sizes, default=1):
        problems.append(f"budget_examples ({cfg.budget_examples}) is smaller than the largest batch size")
    if cfg.data_kwargs.get("statistics") and cfg.noise_method != "micro_batch":
        problems.append(f"data_kwargs statistics=True draws batches as sums, which have no per-example gradients: "
                        f"noise_method must be 'micro_batch', got {cfg.noise_method!r}")
    if cfg.max_steps is not None and not (int(cfg.max_steps) == cfg.max_steps and cfg.max_steps >= 1):
        problems.append(f"max_steps must be a positive integer or None, got {cfg.max_steps!r}")
    if cfg.n_micro < 2:
        problems.append(f"n_micro must be >= 2 to measure the noise scale, got {cfg.n_micro}")
    if cfg.batch_sizes and min(cfg.batch_sizes) % cfg.n_micro:
        problems.append(f"the smallest batch size {min(cfg.batch_sizes)} must be divisible by n_micro={cfg.n_micro}")
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", cfg.device):
        problems.append(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {cfg.device!r}")
    if cfg.seed_rates not in SEED_RATES:
        problems.append(f"seed_rates must be one of {SEED_RATES}, got {cfg.seed_rates!r}")
    if cfg.seed in cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        problems.append(f"seeds must be distinct extra seeds other than seed={cfg.seed}, got {list(cfg.seeds)}")
    if cfg.goal_source not in GOAL_SOURCES:
        problems.append(f"goal_source must be one of {GOAL_SOURCES}, got {cfg.goal_source!r}")
    if not (cfg.executor in ("local", "ray") or cfg.executor.startswith("ray:")):
        problems.append(f"executor must be 'local', 'ray' or 'ray:<address>', got {cfg.executor!r}")
    if cfg.engine not in ENGINES:
        problems.append(f"engine must be one of {ENGINES}, got {cfg.engine!r}")
    if cfg.stop_margin is not None and not cfg.stop_margin > 1:
        problems.append(f"stop_margin must be > 1 or None, got {cfg.stop_margin}")
    if cfg.stop_outpaced is not None and not cfg.stop_outpaced >= 1:
        problems.append(f"stop_outpaced must be >= 1 or None, got {cfg.stop_outpaced}")
    if cfg.grad_clip is not None and not cfg.grad_clip > 0:
        problems.append(f"grad_clip must be > 0 or None, got {cfg.grad_clip}")
    problems += _model_problems(cfg.model, cfg.model_kwargs)
    if problems:
        raise ConfigError("invalid experiment configuration:\n  - " + "\n  - ".join(problems))


def _model_problems(model: str, model_kwargs: Mapping[str, Any]) -> list[str]:
    """Unknown model names, unknown ``model_kwargs`` keys or a bad ``arch`` (checked before training)."""
    if model not in MODELS:
        return [f"model must be one of {tuple(MODELS)}, got {model!r}"]
    cls = Autoencoder if model == "vae" else MODELS[model]
    accepted = set(inspect.signature(cls).parameters) - {"variational"}
    problems = []
    unknown = sorted(set(model_kwargs) - accepted)
    if unknown:
        problems.append(f"model_kwargs {unknown} are not parameters of model {model!r}; it takes {sorted(accepted)}")
    archs = ACTOR_CRITIC_ARCHS if model == "actor_critic" else AUTOENCODER_ARCHS
    if "arch" in model_kwargs and model_kwargs["arch"] not in archs:
        choices = " or ".join(repr(a) for a in archs)
        problems.append(f"arch must be {choices}, got {model_kwargs['arch']!r}")
    return problems


def _check_type(name: str, value: Any, hint: Any) -> None:
    """Raise ConfigError when ``value`` does not fit the annotation ``hint``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in args:
            try:
                _check_type(name, value, arg)
                return
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{name}: expected {_type_name(hint)}, got {type(value).__name__} {value!r}")
    if hint is type(None):
        ok = value is None
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint in (str, bool):
        ok = isinstance(value, hint)
    elif origin is tuple:
        ok = isinstance(value, (list, tuple))
        if ok:
            for item in value:
                _check_type(f"{name}[]", item, args[0])
    elif origin in (Mapping, dict) or hint is Mapping:
        ok = isinstance(value, Mapping)
    else:
        ok = True
    if not ok:
        raise ConfigError(f"{name}: expected {_type_name(hint)}, got {type(value).__name__} {value!r}")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def make_experiment(preset: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """Build an :class:`ExperimentConfig` from a preset and user overrides.

    Args:
        preset: a profile's full set of fields (see :mod:`gns_utils.experiments.profiles`).
        overrides: fields to replace; a value of ``None`` keeps the preset's value, and a
            dict for a dict field (``data_kwargs``, ``model_kwargs`` ...) updates the preset's
            dict key by key (again skipping ``None`` values). A ``seed`` other than the preset's moves
            the repeat seeds (``seeds``) by the same amount unless ``seeds`` is given too: seed 1000 of a
            preset with ``seeds=[1, 2]`` repeats at 1001 and 1002.

    Raises:
        ConfigError: an unknown key (with the list of known ones), a wrong type, or a
            value out of range — before any data is loaded or any model trained.
    """
    hints = typing.get_type_hints(ExperimentConfig)
    merged = dict(preset)
    overrides = dict(overrides or {})
    if overrides.get("seed") is not None and overrides.get("seeds") is None and merged.get("seeds"):
        # another main seed moves the repeats with it: seed k repeats at k + (the preset's offsets)
        shift = int(overrides["seed"]) - int(merged.get("seed", 0))
        merged["seeds"] = [int(s) + shift for s in merged["seeds"]]
    for key, value in (overrides or {}).items():
        if key not in hints:
            raise ConfigError(f"unknown parameter {key!r}; known parameters: {sorted(hints)}")
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = {**merged[key], **{k: v for k, v in value.items() if v is not None}}
        elif value is not None:
            merged[key] = value
    missing = [k for k, f in ExperimentConfig.__dataclass_fields__.items()
               if k not in merged and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"missing parameters {missing}")
    for key, value in merged.items():
        if key not in hints:
            raise ConfigError(f"unknown parameter {key!r}; known parameters: {sorted(hints)}")
        _check_type(key, value, hints[key])
    return ExperimentConfig(**merged)
