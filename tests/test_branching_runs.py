"""Branching on a real task (notebook 06): the rate law, checkpoints, continuations and the comparison table."""

import math

import numpy as np
import pandas as pd
import pytest

from gns_utils.experiments.branching_runs import (PAST_CROSSING, branch_task, compare_with_sweep, continuations,
                                                  rate_law, reference_checkpoints)
from gns_utils.experiments.branching import mean_curve_steps
from gns_utils.experiments.config import ConfigError
from gns_utils.experiments.problems import make_problem
from gns_utils.experiments.profiles import branching_settings, experiment_configs


def _best(rates, goal=0.2):
    return pd.DataFrame({"goal": goal, "batch_units": list(rates), "lr": list(rates.values()), "steps": 10.0})


def test_rate_law_recovers_a_power_law_and_clips_its_slope():
    a, s = rate_law(_best({b: 0.01 * b ** 0.7 for b in (8, 16, 64, 256)}), 0.2)
    assert a == pytest.approx(0.01) and s == pytest.approx(0.7)
    assert rate_law(_best({b: 1e-4 * b ** 1.3 for b in (8, 16, 64)}), 0.2)[1] == 1.0  # past SGD's linear rule
    with pytest.raises(ValueError, match="fewer than two batch sizes"):
        rate_law(_best({8: 0.1}), 0.2)


def test_settings_are_checked_before_any_training():
    assert [t["task"] for t in branching_settings("cpu")["tasks"]] == ["fashion_mnist_mlp_sgd", "fashion_mnist_mlp_adam"]
    assert branching_settings("cpu", replicates=5, fraction=0.2)["tasks"][0]["replicates"] == 5
    for kwargs, match in (({"replicates": 1}, "replicates"), ({"fraction": 1.5}, "fraction"),
                          ({"tasks": ["nope"]}, "unknown tasks")):
        with pytest.raises(ConfigError, match=match):
            branching_settings("cpu", **kwargs)
    for setting in branching_settings("cpu")["tasks"] + branching_settings("paper")["tasks"]:
        assert 1.0 in setting["rate_factors"]  # the law's own rate is always read


@pytest.fixture(scope="module")
def smoke():
    cfg = experiment_configs("image", "smoke")[0]
    return cfg, make_problem(cfg, device="cpu")


def test_checkpoints_and_continuations_on_a_real_problem(smoke):
    cfg, problem = smoke
    [checkpoint] = reference_checkpoints(problem, cfg, 16, 0.5, [0.5], eval_every=2, eval_examples=256)
    assert checkpoint.metric <= 0.5 and checkpoint.step > 0 and checkpoint.eval_examples == 256
    target = 0.8 * checkpoint.loss
    schedule, losses = continuations(problem, cfg, checkpoint, 16, [0.25, 0.5], 3, target, max_steps=400)
    assert losses.shape == (3, 2, schedule.size) and np.all(losses[:, :, 0] == checkpoint.loss)
    read = mean_curve_steps(schedule, losses, target)
    for k in range(2):
        logged = np.isfinite(losses[0, k])
        assert np.isfinite(read[k]) and logged.sum() < schedule.size  # stopped once the reading was behind it
        last = schedule[logged][-1]
        assert last >= PAST_CROSSING * read[k] and np.isnan(losses[:, k, logged.sum():]).all()
    with pytest.raises(ValueError, match="must include 1"):
        branch_task(problem, cfg, _best({8: 0.1, 16: 0.2}, 0.5), [checkpoint], [8, 16], 0.1, 2, 1000,
                    rate_factors=(0.5, 2.0))


def test_comparison_with_the_sweep():
    local = pd.DataFrame([
        {"goal": 0.2, "step": 40, "fraction": 0.1, "tolerance": 0.2, "rates": "grid", "b_crit": 200.0,
         "b_crit_stderr": 20.0, "ci_low": 160.0, "ci_high": 240.0, "n_rate_edge": 1, "tolerance_cbs": 70.0,
         "tolerance_cbs_from_fit": 59.2, "s_min": 12.0},
        {"goal": 0.2, "step": 40, "fraction": 0.1, "tolerance": 0.2, "rates": "law", "b_crit": 150.0,
         "b_crit_stderr": 20.0, "ci_low": 110.0, "ci_high": 190.0, "n_rate_edge": 0, "tolerance_cbs": 60.0,
         "tolerance_cbs_from_fit": 49.2, "s_min": 14.0}])
    sweep = pd.DataFrame([{"goal": 0.2, "b_crit": 100.0, "b_crit_stderr": 10.0, "bound": "none",
                           "b_simple_checkpoint": 50.0, "b_simple_checkpoint_stderr": 5.0, "b_noise": 40.0,
                           "b_noise_stderr": 4.0}])
    [row] = compare_with_sweep(local, sweep, 0.1, 0.2).to_dict(orient="records")
    assert row["local_over_sweep"] == 2.0 and row["local_b_crit_law"] == 150.0 and row["local_n_rate_edge"] == 1
    assert row["local_over_sweep_z"] == pytest.approx(math.log(2.0) / math.hypot(0.1, 0.1))
    assert row["b_simple_over_local"] == 0.25 and row["b_noise"] == 40.0
    sweep.loc[0, "bound"] = "upper"  # a bound at the sweep's goal: nothing to compare with
    assert math.isnan(compare_with_sweep(local, sweep, 0.1, 0.2)["local_over_sweep"].iloc[0])
