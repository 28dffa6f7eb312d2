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
  folder holds a final summary is reused, so a sweep resumes across restarts and machines.

Ray is an optional extra: ``pip install "gns_utils[ray]"``.
"""

from __future__ import annotations

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


class RayMember:
    """The driver's handle on a :class:`RayRun` actor: a member of :func:`~gns_utils.experiments.stopping.run_group`."""

    def __init__(self, ray: Any, cfg: RunConfig, results_dir: str | Path, gpus: float) -> None:
        self.ray, self.cfg = ray, cfg
        actor = ray.remote(num_cpus=1, num_gpus=gpus)(RayRun)
        self.actor = actor.remote(cfg.to_dict(), str(Path(results_dir).resolve()))
        self.curve = Curve(lr=cfg.lr)
        self.summary: dict | None = None
        self.error: BaseException | None = None

    def initial_metric(self) -> float:
        return self.ray.get(self.actor.initial_metric.remote())

    def update(self, state: tuple[list[float], list[float], str | None, dict | None]) -> None:
        self.curve.steps, self.curve.values, self.curve.status, self.summary = state

    def stop(self, status: str) -> None:
        self.update(self.ray.get(self.actor.stop.remote(status)))


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
