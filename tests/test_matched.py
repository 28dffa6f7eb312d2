"""Matched comparisons: B_simple measured where each goal is reached, against exact answers."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from gns_utils import ratio_of_means_jackknife, windowed_b_simple
from gns_utils.experiments.report import matched_by_goal, matched_noise_scales, step_average_b_crit
from gns_utils.experiments.store import write_json_atomic
from gns_utils.experiments.summary import goal_points, goal_report

STEPS = np.array([1, 2, 4, 8, 16, 32, 64, 128], dtype=float)
COUNTS = np.array([1, 1, 2, 4, 8, 16, 32, 64], dtype=float)  # steps in each logged interval


def test_window_is_centred_on_the_point_and_a_ratio_of_sums():
    # true tr Σ = 10 everywhere, |G|^2 = 1 before step 16 and 0.5 from it on: B_simple jumps 10 → 20
    g2 = COUNTS * np.where(STEPS < 16, 1.0, 0.5)
    tr = COUNTS * 10.0
    w = windowed_b_simple(STEPS, g2, tr, COUNTS, at_step=64, factor=1.5, min_estimates=20)
    assert (w.step_low, w.step_high, w.n_estimates) == (64, 64, 32) and w.estimate == pytest.approx(20.0)
    w = windowed_b_simple(STEPS, g2, tr, COUNTS, at_step=16, factor=1.5, min_estimates=20)
    # [16/1.5, 24] holds 8 estimates; ×1.5 again: [7.1, 36] holds 4 + 8 + 16 = 28
    assert (w.step_low, w.step_high, w.n_estimates) == (8, 32, 28)
    assert w.estimate == pytest.approx((10 * 28) / (4 * 1.0 + 8 * 0.5 + 16 * 0.5))  # not the mean of the ratios
    assert w.stderr == pytest.approx(ratio_of_means_jackknife(tr[3:6], g2[3:6], n_blocks=3).stderr)


def test_window_widens_to_the_whole_log_and_skips_empty_intervals():
    g2, tr = COUNTS * 2.0, COUNTS * 6.0
    counts = COUNTS.copy()
    counts[2] = 0  # an interval without estimates (e.g. all non-finite) is left out
    w = windowed_b_simple(STEPS, g2, tr, counts, at_step=4, min_estimates=10_000)
    assert w.estimate == pytest.approx(3.0) and w.n_estimates == counts.sum() and (w.step_low, w.step_high) == (1, 128)
    with pytest.raises(ValueError, match="at_step > 0"):
        windowed_b_simple(STEPS, g2, tr, COUNTS, at_step=0)
    with pytest.raises(ValueError, match="no per-step"):
        windowed_b_simple(STEPS, g2, tr, np.zeros_like(COUNTS), at_step=4)


def test_windowed_estimate_is_unbiased_for_noisy_per_step_estimates():
    # per-step A.2 estimates: unbiased and noisy, |G|^2 often negative (B ≪ B_simple); truth B_simple = 20
    rng = np.random.default_rng(0)
    estimates, errors = [], []
    for _ in range(200):
        g2_steps = 0.5 + rng.normal(0, 1.0, int(COUNTS.sum()))
        tr_steps = 10.0 + rng.normal(0, 5.0, int(COUNTS.sum()))
        edges = np.concatenate([[0], np.cumsum(COUNTS).astype(int)])
        g2 = np.array([g2_steps[a:b].sum() for a, b in zip(edges[:-1], edges[1:])])
        tr = np.array([tr_steps[a:b].sum() for a, b in zip(edges[:-1], edges[1:])])
        w = windowed_b_simple(STEPS, g2, tr, COUNTS, at_step=100, min_estimates=90)
        estimates.append(w.estimate)
        errors.append(w.stderr)
    estimates = np.array(estimates)
    assert np.isfinite(estimates).all()
    se_of_median = 1.25 * estimates.std() / math.sqrt(len(estimates))
    assert abs(np.median(estimates) - 20.0) < 4 * se_of_median
    assert 0.3 < np.median(errors) / estimates.std() < 3  # a standard error of the right size


def _metrics(run_id, b_simple_by_step):
    steps = STEPS
    return pd.DataFrame({"run_id": run_id, "step": steps, "noise_steps": COUNTS, "g2_mean": 1.0,
                         "trace_sigma_mean": [b_simple_by_step(s) for s in steps]})


def test_matched_noise_scales_measure_each_best_run_at_its_own_crossing():
    metrics = pd.concat([_metrics("small", lambda s: 2.0 * s), _metrics("big", lambda s: 3.0 * s)])
    best = pd.DataFrame({"goal": [1.0, 1.0, 0.5], "batch_units": [8, 64, 8], "steps": [64.0, 8.0, 128.0],
                         "run_id": ["small", "big", "small"]})
    matched = matched_noise_scales(best, metrics).set_index(["goal", "batch_units"])
    assert matched.loc[(1.0, 8), "at_step"] == 64 and matched.loc[(1.0, 8), "b_simple_local"] == pytest.approx(128.0)
    # the big run at step 8: [8/1.5, 12] holds 4 estimates, [3.6, 18] and [2.4, 27] 14, [1.6, 40.5] 31 ≥ 20
    big = 3.0 * (1 * 2 + 2 * 4 + 4 * 8 + 8 * 16 + 16 * 32) / 31
    assert matched.loc[(1.0, 64), "b_simple_local"] == pytest.approx(big)
    by_goal = matched_by_goal(matched.reset_index()).set_index("goal")
    assert by_goal.loc[1.0, "b_simple_local_small_b"] == pytest.approx(128.0)
    values = [128.0, big]
    assert by_goal.loc[1.0, "b_simple_local_median"] == pytest.approx(np.median(values))
    assert by_goal.loc[1.0, "b_simple_local_log10_spread"] == pytest.approx(np.log10(values).std())
    assert by_goal.loc[0.5, "b_simple_local_n_runs"] == 1 and pd.isna(by_goal.loc[0.5, "b_simple_local_log10_spread"])


def test_step_average_weights_each_goal_by_the_minimum_steps_it_adds():
    by_goal = pd.DataFrame({"goal": [1.0, 0.5, 0.2, 0.1], "b_crit": [10.0, 100.0, 1000.0, 5.0],
                            "s_min": [10.0, 30.0, 100.0, 50.0], "bound": ["none", "none", "none", "lower"]})
    assert step_average_b_crit(by_goal) == pytest.approx((10 * 10 + 100 * 20 + 1000 * 70) / 100)


def test_goal_points_pool_every_fitted_goal_and_score_each_predictor(tmp_path):
    rows = []
    for task, factor in (("a", 1.0), ("b", 1.0)):
        goals = [{"goal": g, "b_crit": b, "b_crit_stderr": 1.0, "bound": "none", "b_simple_local_median": b * factor,
                  "b_simple_local_small_b": b * factor / 2, "b_simple_local_log10_spread": 0.1}
                 for g, b in ((1.0, 10.0), (0.5, 100.0), (0.2, 1000.0))]
        goals.append({"goal": 0.1, "b_crit": 4000.0, "bound": "lower"})  # a bound is not a point
        path = write_json_atomic(tmp_path / task / "summary.json", {"task": task, "goals": goals})
        rows.append({"task": task, "units": "images", "path": str(path)})
    points = goal_points(pd.DataFrame(rows))
    assert len(points) == 6 and list(points["goal_index"][:3]) == [0, 1, 2]
    report = goal_report(points)
    assert report["b_simple_local_median"]["identity"] == pytest.approx(1.0)
    assert report["b_simple_local_median"]["ratio_median"] == pytest.approx(1.0)
    assert report["b_simple_local_small_b"]["ratio_max"] == pytest.approx(0.5)
    assert report["b_simple_local_small_b"]["identity"] < 1.0 and report["b_simple_local_small_b"]["fit"] == pytest.approx(1.0)
    json.dumps(report)  # plain numbers
