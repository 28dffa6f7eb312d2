"""Sweeps on Ray: a smoke sweep on a local Ray instance with 2 workers writes the run folders the local executor writes."""

import json

import pytest
import torch

from gns_utils.experiments.config import ConfigError, make_experiment
from gns_utils.experiments.profiles import presets
from gns_utils.experiments.sweep import run_sweep


def _smoke_preset():
    preset = presets("synthetic", "smoke")[0]
    preset.update(lr_star=1.5, lr_b_star=64.0, goals=[0.7, 0.56], batch_sizes=[8, 16, 32], lr_grid_size=2,
                  max_widen=1, budget_examples=8_000, seeds=[])
    return preset


def _folders(root, task):
    out = {}
    for folder in sorted((root / task / "runs").iterdir()):
        s = json.loads((folder / "summary.json").read_text())
        out[folder.name] = (s["status"], s.get("n_steps"), s["steps_to_goal"], sorted(p.name for p in folder.iterdir()))
    return out


def _start_local_ray(ray):
    """A local Ray instance with 2 CPUs; skip (with Ray's reason) if its raylet cannot start on this machine.

    Ray's raylet gives its agents a fixed 15 s to start and aborts otherwise (ray-project/ray#65983),
    which happens on an overloaded machine; one retry, then the test is skipped, not failed."""
    for attempt in range(2):
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            return
        except Exception as err:  # noqa: BLE001
            ray.shutdown()
            reason = f"{type(err).__name__}: {err}"
    pytest.skip(f"a local Ray instance did not start here: {reason}")


def test_ray_executor_writes_the_run_folders_of_the_local_executor(tmp_path):
    ray = pytest.importorskip("ray")
    preset = _smoke_preset()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the Ray workers (one CPU each): the same floating-point sums
    try:
        local = run_sweep(make_experiment(preset), tmp_path / "local", progress=False)
        stacked = {**preset, "engine": "stacked", "noise_method": "micro_batch"}
        run_sweep(make_experiment(stacked), tmp_path / "local_stacked", progress=False)
    finally:
        torch.set_num_threads(threads)
    _start_local_ray(ray)
    try:
        remote = run_sweep(make_experiment({**preset, "executor": "ray"}), tmp_path / "ray", progress=False)
        resumed = run_sweep(make_experiment({**preset, "executor": "ray"}), tmp_path / "ray", progress=False)
        # a member group per task: the grid as one stacked group in one actor
        run_sweep(make_experiment({**stacked, "executor": "ray"}), tmp_path / "ray_stacked", progress=False)
    finally:
        ray.shutdown()
    task = preset["task"]
    assert _folders(tmp_path / "local", task) == _folders(tmp_path / "ray", task)
    assert _folders(tmp_path / "local_stacked", task) == _folders(tmp_path / "ray_stacked", task)
    assert sorted(local["run_id"].unique()) == sorted(remote["run_id"].unique())
    assert not resumed["trained"].any()  # a second sweep on the same folder reuses every finished run


def test_executor_is_validated_before_anything_runs():
    with pytest.raises(ConfigError, match="executor must be 'local', 'ray' or 'ray:<address>'"):
        make_experiment({**_smoke_preset(), "executor": "dask"})


class _InProcessRay:
    """A stand-in for Ray that runs each actor in this process; ``lose`` names the actor methods after
    which the actor is gone (as when its machine goes away): calls to it then fail as Ray's do."""

    def __init__(self, lose=()):
        self.lose, self.lost = set(lose), 0

    def remote(self, **resources):
        return lambda cls: type("ActorClass", (), {"remote": lambda _, *args: _Actor(self, cls(*args))})()

    @staticmethod
    def get(result):
        if isinstance(result, BaseException):
            raise result
        return result

    def kill(self, actor):
        actor.gone = True

    @staticmethod
    def cluster_resources():
        return {"CPU": 2.0}


class _Actor:
    def __init__(self, ray, obj):
        self.ray, self.obj, self.gone = ray, obj, False

    def __getattr__(self, name):
        def call(*args):
            if self.gone:
                return RuntimeError("the actor died")  # what ray.get raises for a lost actor (RayActorError)
            if name in self.ray.lose:
                self.gone = True
                self.ray.lost += 1
                return RuntimeError("the actor died")
            try:
                return getattr(self.obj, name)(*args)
            except Exception as err:  # noqa: BLE001 — raised by ray.get, as Ray does
                return err
        return type("Method", (), {"remote": staticmethod(call)})


@pytest.mark.parametrize("engine", ["sequential", "stacked"])
@pytest.mark.parametrize("lost_in", ["advance", "stop"])  # while training; while paused, when the sweep stops it
def test_a_lost_ray_actor_fails_its_runs_the_sweep_goes_on_and_a_resumed_sweep_trains_them_again(
        tmp_path, monkeypatch, engine, lost_in):
    preset = {**_smoke_preset(), "engine": engine, "noise_method": "micro_batch"}
    local = run_sweep(make_experiment(preset), tmp_path / "local", progress=False)
    lossy = _InProcessRay(lose={lost_in})
    monkeypatch.setattr("gns_utils.experiments.sweep.init_ray", lambda executor: lossy)
    first = run_sweep(make_experiment({**preset, "executor": "ray"}), tmp_path / "ray", progress=False)
    assert lossy.lost > 0
    failed = set(first.loc[first["status"] == "failed", "run_id"])
    assert failed and (lost_in == "advance" or failed <= set(local.loc[local["status"] == "pruned", "run_id"]))
    monkeypatch.setattr("gns_utils.experiments.sweep.init_ray", lambda executor: _InProcessRay())
    run_sweep(make_experiment({**preset, "executor": "ray"}), tmp_path / "ray", progress=False)
    expected, resumed = (_folders(tmp_path / folder, preset["task"]) for folder in ("local", "ray"))
    assert {run: resumed[run] for run in expected} == expected
    # runs that only the failed sweep asked for (its later grids centred on other rates) stay as they failed
    assert all(resumed[run][0] == "failed" for run in set(resumed) - set(expected))
