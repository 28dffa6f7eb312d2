"""Where the runs of a learning-rate grid train: in this process (``local``) or on a Ray cluster (``ray``).

``ExperimentConfig.executor``:

* ``"local"`` (default): the grid's runs train one after the other in this process, in lockstep.
* ``"ray"``: each run of the grid is a Ray actor (:class:`RayRun`) that loads the problem from
  its config and trains there; the driver keeps the lockstep and the stopping rules
  (:func:`gns_utils.experiments.stopping.run_group`) and advances all runs at the same step in
  parallel. ``ray.init()`` starts a local Ray instance unless one is running, or joins the
  cluster named by ``RAY_ADDRESS``; ``"ray:<address>"`` joins ``<address>`` (``ray:auto``,
  ``ray:ray://head:10001``). Each actor asks for one CPU, and one GPU when the run's device is
  CUDA (or ``auto`` on a cluster with GPUs). Run folders are written by the actors into the
  results folder, which must be shared by every machine (a network file system); a run whose
  folder holds a final summary is reused, so a sweep resumes across restarts and machines. A run
  whose actor is lost (its machine went away) is recorded as ``failed`` and the sweep goes on; a
  resumed sweep trains it again.
  With ``engine='stacked'`` (or ``auto`` on a cluster with GPUs) a grid is one actor instead
  (:class:`RayGroup`): its rates train as one batched model on one device.

Ray is an optional extra: ``pip install "gns_utils[ray]"``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from gns_utils.experiments.config import ConfigError, RunConfig
from gns_utils.experiments.stopping import Curve


def ray_module() -> Any:
    """The ``ray`` package, initialised for ``executor``; a clear error when it is not installed."""
    try:
        import ray
    except ImportError as err:
        raise ConfigError("executor='ray' needs Ray: pip install 'gns_utils[ray]' (or pip install ray), "
                          "or use executor='local'") from err
    return ray


def init_ray(executor: str) -> Any:
    """``ray.init`` for ``executor`` (``ray`` or ``ray:<address>``) unless Ray is already initialised."""
    ray = ray_module()
    if not ray.is_initialized():
        address = executor.split(":", 1)[1] if ":" in executor else None
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    return ray


class RayRun:
    """A :class:`gns_utils.experiments.train.Run` inside a Ray actor (see the module docstring)."""

    def __init__(self, cfg: dict[str, Any], results_dir: str) -> None:
        from gns_utils.experiments.problems import make_problem
        from gns_utils.experiments.train import Run

        run_cfg = RunConfig(**{**cfg, "goals": tuple(cfg["goals"])})
        self.run = Run(make_problem(run_cfg), run_cfg, results_dir, progress=False)

    def initial_metric(self) -> float:
        return self.run.initial_metric

    def advance(self) -> tuple[list[float], list[float], str | None, dict | None]:
        self.run.advance()
        return self._state()

    def stop(self, status: str) -> tuple[list[float], list[float], str | None, dict | None]:
        self.run.stop(status)
        return self._state()

    def _state(self) -> tuple[list[float], list[float], str | None, dict | None]:
        curve = self.run.curve
        return list(curve.steps), list(curve.values), curve.status, self.run.summary


class _Handle:
    """The driver's handle on a run in a Ray actor: a member of :func:`~gns_utils.experiments.stopping.run_group`.

    ``on_error(member, err)`` records the run as failed when its actor is lost (its machine went away)
    before the run could be stopped; the sweep goes on, and a resumed sweep trains the run again."""

    ray: Any
    actor: Any
    cfg: RunConfig
    on_error: Callable[[Any, BaseException], None]
    curve: Curve
    summary: dict | None

    def update(self, state: tuple[list[float], list[float], str | None, dict | None]) -> None:
        self.curve.steps, self.curve.values, self.curve.status, self.summary = state

    def stop(self, status: str) -> None:
        try:
            self.update(self.ray.get(self._stop_call(status)))
        except Exception as err:  # noqa: BLE001 — the actor is gone: the run is recorded as failed
            self.on_error(self, err)

    def _stop_call(self, status: str) -> Any:
        return self.actor.stop.remote(status)


class RayMember(_Handle):
    """The driver's handle on a :class:`RayRun` actor (see :class:`_Handle`)."""

    def __init__(self, ray: Any, cfg: RunConfig, results_dir: str | Path, gpus: float,
                 on_error: Callable[[Any, BaseException], None]) -> None:
        self.ray, self.cfg, self.on_error = ray, cfg, on_error
        actor = ray.remote(num_cpus=1, num_gpus=gpus)(RayRun)
        self.actor = actor.remote(cfg.to_dict(), str(Path(results_dir).resolve()))
        self.curve = Curve(lr=cfg.lr)
        self.summary = None

    def initial_metric(self) -> float:
        return self.ray.get(self.actor.initial_metric.remote())


class RayGroup:
    """A grid's runs as one :class:`~gns_utils.experiments.members.StackedGroup` inside a Ray actor
    (``engine='stacked'``, or ``auto`` with GPUs): one member group per task, one GPU for all its rates."""

    def __init__(self, cfgs: list[dict[str, Any]], results_dir: str) -> None:
        from gns_utils.experiments.members import StackedGroup
        from gns_utils.experiments.problems import make_problem
        from gns_utils.experiments.train import Run

        run_cfgs = [RunConfig(**{**c, "goals": tuple(c["goals"])}) for c in cfgs]
        problem = make_problem(run_cfgs[0])
        self.runs: dict[int, Any] = {}
        self.errors: dict[int, BaseException] = {}
        for k, cfg in enumerate(run_cfgs):
            try:
                self.runs[k] = Run(problem, cfg, results_dir, progress=False, stacked=True)
            except Exception as err:  # noqa: BLE001 — reported to the driver, which records the run as failed
                self.errors[k] = err
        self.group = StackedGroup(problem, self.runs, on_error=self.errors.__setitem__) if self.runs else None

    def initial_metrics(self) -> dict[int, float | BaseException]:
        """Each run's goal metric before training, or the exception that kept it from being built."""
        return {**self.errors, **{k: run.initial_metric for k, run in self.runs.items()}}

    def advance(self, keys: list[int]) -> dict[int, Any]:
        self.group.advance(keys)
        return {k: self.errors[k] if k in self.errors else self._state(k) for k in keys}

    def stop(self, key: int, status: str) -> tuple[list[float], list[float], str | None, dict | None]:
        self.runs[key].stop(status)
        return self._state(key)

    def _state(self, key: int) -> tuple[list[float], list[float], str | None, dict | None]:
        run = self.runs[key]
        return list(run.curve.steps), list(run.curve.values), run.curve.status, run.summary


class RayGroupMember(_Handle):
    """The driver's handle on one run of a :class:`RayGroup` (see :class:`_Handle`)."""

    def __init__(self, ray: Any, actor: Any, key: int, cfg: RunConfig,
                 on_error: Callable[[Any, BaseException], None]) -> None:
        self.ray, self.actor, self.key, self.cfg, self.on_error = ray, actor, key, cfg, on_error
        self.curve = Curve(lr=cfg.lr)
        self.summary = None

    def _stop_call(self, status: str) -> Any:
        return self.actor.stop.remote(self.key, status)


def advance_in_parallel(members: list[RayMember]) -> list[tuple[RayMember, BaseException]]:
    """Advance the members' actors at once; returns the (member, exception) of those that raised."""
    ray = members[0].ray
    futures = [m.actor.advance.remote() for m in members]
    failed = []
    for m, future in zip(members, futures):
        try:
            m.update(ray.get(future))
        except Exception as err:  # noqa: BLE001 — the caller records the run as failed
            failed.append((m, err))
    return failed


def gpus_per_run(ray: Any, device: str) -> float:
    """1 for CUDA runs (``cuda``, ``cuda:N``, or ``auto`` on a cluster that has GPUs), else 0."""
    if device.startswith("cuda"):
        return 1.0
    return 1.0 if device == "auto" and ray.cluster_resources().get("GPU", 0) > 0 else 0.0
