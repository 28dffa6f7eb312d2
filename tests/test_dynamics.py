"""Notebook 05's machinery: runs with a changing temperature or batch size, and what is measured from them."""

import math

import numpy as np
import pandas as pd
import pytest

from gns_utils import BatchSizeController
from gns_utils.experiments.dynamics import (gamma_by_goal, goal_crossings, rise_factors, temperature_phases,
                                            train_schedule, windowed_noise_scale)
from gns_utils.experiments.problems import make_problem
from gns_utils.experiments.profiles import dynamics_settings, experiment_configs
from gns_utils.experiments.train import train_run


@pytest.fixture(scope="module")
def image():
    cfg = experiment_configs("image", "smoke")[0]
    return cfg, make_problem(cfg)


def test_a_fixed_batch_schedule_reaches_the_goals_where_the_sweeps_run_does(image, tmp_path):
    """goal_crossings measures steps-to-goal as the sweep does, so adaptive runs can sit on its fronts."""
    cfg, problem = image
    run_cfg = cfg.run(16, 0.5)
    summary = train_run(problem, run_cfg, tmp_path, progress=False)
    frame = train_schedule(problem, run_cfg, summary["n_steps"], progress=False)
    crossed = goal_crossings(frame, cfg.goals, cfg.metric, cfg.evals_per_decade,
                             max_steps=math.ceil(cfg.budget_examples / 16))  # the run's budget sets its logging
    expected = [summary["steps_to_goal"][str(g)] for g in cfg.goals]
    assert all(e is not None for e in expected)
    assert crossed["steps"].tolist() == pytest.approx(expected, rel=1e-9)
    assert crossed["examples"].tolist() == pytest.approx([16 * s for s in expected], rel=1e-9)


def test_phases_set_the_batch_size_and_learning_rate_of_each_step(image):
    cfg, problem = image
    phases = temperature_phases(4, start=5, end=10)
    assert list(phases) == ["unchanged", "lr ÷ 4", "B × 4", "lr ÷ 2, B × 2", "lr × 2, B × 2 (same T)"]
    frame = train_schedule(problem, cfg.run(8, 0.4), 14, phases["lr ÷ 2, B × 2"], progress=False)
    assert frame["batch_size"].tolist() == [8] * 5 + [16] * 5 + [8] * 4
    assert frame["lr"].tolist() == pytest.approx([0.4] * 5 + [0.2] * 5 + [0.4] * 4)
    assert frame["examples"].iloc[-1] == 8 * 9 + 16 * 5
    assert frame["g2"].notna().all() and (frame["trace_sigma"] > 0).all()
    with pytest.raises(ValueError, match="control must be > 1"):
        temperature_phases(16, 5, 10, control=0.5)


def test_a_controller_grows_the_batch_by_more_micro_batches():
    cfg = experiment_configs("language", "smoke")[0]  # an LSTM: the micro-batch monitor
    problem = make_problem(cfg)
    controller = BatchSizeController(r=1e6, batch_size=4, lr=cfg.lr_star, micro_batch_size=2, min_interval=3,
                                     max_batch_size=16)
    frame = train_schedule(problem, cfg.run(4, cfg.lr_star), 20, controller=controller, progress=False)
    assert frame["batch_size"].iloc[0] == 4 and frame["batch_size"].iloc[-1] == 16
    assert frame["batch_size"].is_monotonic_increasing
    assert (frame["batch_units"] == frame["batch_size"] * problem.units_per_example).all()
    assert frame["trace_sigma"].notna().all()  # >= 2 micro-batches at every step


def _frame(b_simple, steps=100):
    """A per-step log whose B_simple is exactly b_simple(step)."""
    step = np.arange(1, steps + 1)
    g2 = np.full(steps, 2.0)
    return pd.DataFrame({"step": step, "examples": step * 10.0, "g2": g2, "trace_sigma": g2 * b_simple(step)})


def test_rise_factors_and_windows_on_a_known_noise_scale():
    base = _frame(lambda s: np.full(s.shape, 50.0))
    cut = _frame(lambda s: np.where((s > 40) & (s <= 60), 800.0, 50.0))  # updates 41..60, as Phase(40), Phase(60)
    windows = windowed_noise_scale(cut, 10)
    assert windows["b_simple"].tolist() == pytest.approx([50, 50, 50, 50, 800, 800, 50, 50, 50, 50])
    assert windows["step"].tolist() == pytest.approx([5.5 + 10 * i for i in range(10)])
    rises = rise_factors({"unchanged": base, "cut": cut}, start=40, end=60).set_index("run")
    assert rises.loc["cut", "rise_in_window"] == pytest.approx(16.0)
    assert rises.loc["cut", "rise_after"] == pytest.approx(1.0)
    assert rises.loc["unchanged", "rise_in_window"] == pytest.approx(1.0)


def test_gamma_of_a_reference_run_whose_noise_scale_grows_linearly():
    # ℬ(S) = S on a run at a batch far above ℬ (so ds = dS): γ = (∫√S)² / (∫S ∫1) = (2/3)² / (1/2) = 8/9
    steps = np.arange(1, 100_001, dtype=float)
    noise = pd.DataFrame({"step": steps, "g2_mean": 1.0, "trace_sigma_mean": steps})
    out = gamma_by_goal(noise, batch_units=1e15, goal_steps={0.5: 25_000.0, 0.1: 100_000.0, 0.05: math.nan})
    assert out["gamma"].tolist()[:2] == pytest.approx([8 / 9, 8 / 9], rel=1e-4)  # scale-free: any prefix
    assert out["predicted_overhead"].iloc[1] == pytest.approx(1 + math.sqrt(8 / 9), rel=1e-4)
    assert math.isnan(out["gamma"].iloc[2])


def test_settings_are_checked_before_any_training():
    from gns_utils.experiments.config import ConfigError

    assert [t["task"] for t in dynamics_settings("cpu")["temperature"]] == ["fashion_mnist_mlp_sgd",
                                                                            "prose_lstm_adam"]
    with pytest.raises(ConfigError, match="unknown temperature tasks"):
        dynamics_settings("cpu", tasks=["mnist"])
    with pytest.raises(ConfigError, match="k .* must be a number > 1"):
        dynamics_settings("cpu", k=1.0)


@pytest.mark.parametrize("profile", ["smoke", "cpu", "paper"])
def test_every_profile_names_tasks_of_its_own_presets(profile):
    settings = dynamics_settings(profile)
    for entry in settings["temperature"]:
        experiment_configs(entry["domain"], profile, tasks=[entry["task"]])  # ConfigError if not a preset task
        assert entry["start"] % entry["window"] == 0 and entry["end"] % entry["window"] == 0
        assert 0 < entry["start"] < entry["end"] < entry["steps"]
    adaptive = settings["adaptive"]
    (cfg,) = experiment_configs(adaptive["domain"], profile, tasks=[adaptive["task"]])
    assert cfg.optimizer == "sgd" and adaptive["batch_size"] <= max(cfg.batch_sizes)
