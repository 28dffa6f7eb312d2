"""The cross-task statistics: unresolved values left out and counted, independent tasks pooled once, the
within-task slope and the ratio intervals, against hand-made points whose answers are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gns_utils.experiments.summary import (
    GOAL_PREDICTORS,
    NOT_POOLED,
    UNRESOLVED_REL_SE,
    calibration_report,
    goal_report,
    is_resolved,
    r2_report,
    ratio_interval,
    summary_table,
    task_slopes,
    verdict_markdown,
)

VARIANT = next(iter(NOT_POOLED))


def test_a_value_is_unresolved_when_its_standard_error_reaches_half_of_it():
    values = np.array([100.0, 100.0, 100.0, 100.0, -5.0, np.nan])
    stderrs = np.array([10.0, UNRESOLVED_REL_SE * 100 - 1e-9, UNRESOLVED_REL_SE * 100, np.nan, 1.0, 1.0])
    assert is_resolved(values, stderrs).tolist() == [True, True, False, True, False, False]


def _points(tasks: dict[str, tuple[np.ndarray, np.ndarray]], stderr: float = 0.05) -> pd.DataFrame:
    rows = []
    for task, (b_simple, b_crit) in tasks.items():
        for k, (x, y) in enumerate(zip(b_simple, b_crit)):
            rows.append({"task": task, "units": "images", "goal": float(k), "goal_index": k, "b_crit": y,
                         "b_crit_stderr": stderr * y, "ci_low": y * (1 - 2 * stderr), "ci_high": y * (1 + 2 * stderr),
                         "synthetic": task == "synthetic", "pooled": task not in NOT_POOLED and task != "synthetic",
                         **{c: x for c in GOAL_PREDICTORS}})
    return pd.DataFrame(rows)


def test_within_task_slope_is_exact_on_a_power_law_and_counts_ratios_beyond_their_interval():
    x = np.array([10.0, 30.0, 100.0, 300.0])
    points = _points({"a": (x, 2.0 * x**1.5), "b": (x, x * np.array([1.02, 0.98, 1.01, 0.99]))})
    slopes = task_slopes(points).set_index("task")
    assert slopes.loc["a", "slope"] == pytest.approx(1.5) and slopes.loc["a", "slope_stderr"] == pytest.approx(0, abs=1e-9)
    assert slopes.loc["a", "n_below_one"] == 4 and slopes.loc["a", "n_above_one"] == 0  # B_simple < B_crit
    assert slopes.loc["b", "n_below_one"] + slopes.loc["b", "n_above_one"] == 0  # within ±10 % of 1
    low, high = ratio_interval(points[points["task"] == "b"], "b_simple_app_d")
    np.testing.assert_allclose(low, 1 / np.array([1.02, 0.98, 1.01, 0.99]) / 1.1)


def test_goal_report_leaves_out_unresolved_goals_the_variant_and_the_synthetic_task():
    x = np.array([10.0, 100.0, 1000.0])
    points = _points({"a": (x, x), "b": (x, 3 * x), VARIANT: (x, 100 * x), "synthetic": (x, 1000 * x)})
    noisy = points.index[(points["task"] == "a") & (points["goal_index"] == 2)]
    points.loc[noisy, "b_crit_stderr"] = 0.6 * points.loc[noisy, "b_crit"]  # unresolved: left out, counted
    report = goal_report(points)["b_simple_local_median"]
    assert report["n_points"] == 5 and report["n_unresolved"] == 1 and report["n_tasks"] == 2
    assert report["ratio_min"] == pytest.approx(1 / 3) and report["ratio_max"] == pytest.approx(1.0)
    assert report["n_differ_from_one"] == 3  # task b's three goals
    # one point per task: each task's last resolved goal (a: goal 1, b: goal 2)
    assert report["task_median_abs_log10_ratio"] == pytest.approx(np.log10(3) / 2)
    # a predictor's own s.e. counts too
    points["b_noise_stderr"] = 0.6 * points["b_noise"]
    assert goal_report(points)["b_noise"]["n_points"] == 0


def test_whole_run_table_marks_unresolved_values_and_pools_one_point_per_task():
    measured = pd.DataFrame({"task": ["a", "b", "c", VARIANT], "units": "images",
                             "b_crit": [100.0, 1000.0, 30.0, 5000.0], "b_crit_stderr": [10.0, 100.0, 20.0, 100.0],
                             "b_simple": [100.0, 1000.0, 3.0, 50.0], "b_crit_bound": "none"})
    table = summary_table(measured).set_index("task")
    assert table.loc["c", "b_crit_kind"] == "unresolved" and not table.loc[VARIANT, "pooled"]
    r2 = r2_report(table.reset_index())
    assert np.isnan(r2["ours_identity"])  # a and b only: fewer than 3 pooled, resolved points


def test_verdict_states_the_computed_numbers():
    x = np.array([10.0, 30.0, 100.0, 300.0])
    points = _points({"a": (x, 2.0 * x**1.5), "b": (x, x)})
    table = summary_table(pd.DataFrame({"task": ["a", "b"], "units": "images", "b_crit": [600.0, 300.0],
                                        "b_crit_stderr": [10.0, 10.0], "b_simple": [100.0, 300.0]}))
    text = verdict_markdown(table, r2_report(table), goal_report(points), task_slopes(points),
                            {"n_points": 0})
    assert "| a | 4 (+0 unresolved) |" in text and "1.50 ± 0.00" in text
    assert "faster than B_simple on: a" in text and "B_simple = B_crit within the error at every resolved goal**: b" in text


def test_growth_factors_that_divide_by_a_bound_say_so():
    from gns_utils.experiments.tables import _growth

    assert _growth({"b_crit": 100.0, "b_crit_start": 10.0}) == "×10"
    assert _growth({"b_crit": 100.0, "b_crit_start": 10.0, "b_crit_start_bound": "upper"}) == "≥ ×10"
    assert _growth({"b_crit": 100.0, "b_crit_start": 10.0, "b_crit_bound": "upper"}) == "≤ ×10"
    assert _growth({"b_crit": 100.0, "b_crit_start": 10.0, "b_crit_start_bound": "upper", "b_crit_bound": "upper"}) == "×?"


def test_the_task_level_b_crit_is_the_hardest_goal_fitted():
    import pandas as pd

    from gns_utils.experiments.report import hardest_fitted_goal

    by_goal = pd.DataFrame({"goal": [50.0, 100.0, 200.0], "b_crit": [80.0, 110.0, float("nan")],
                            "bound": ["none", "upper", "insufficient"]})
    assert hardest_fitted_goal(by_goal)["goal"] == 100.0
    assert hardest_fitted_goal(by_goal.iloc[[2]])["goal"] == 200.0  # nothing fitted: the hardest goal, flagged


def test_b_crit_loss_slope_recovers_a_power_law_and_judges_it_against_kaplan():
    from gns_utils.experiments.report import KAPLAN_ALPHA_B, b_crit_loss_slope, loss_slope_verdict
    losses = [6.0, 5.0, 4.5, 4.0, 3.8]
    exact = [dict(goal=g, b_crit=3e6 * g ** (-1 / KAPLAN_ALPHA_B), b_crit_stderr=10.0, bound="none") for g in losses]
    bounded = dict(goal=7.0, b_crit=640.0, b_crit_stderr=None, bound="upper")  # a bound is not a point
    unresolved = dict(goal=3.7, b_crit=9e4, b_crit_stderr=6e4, bound="none")   # s.e. >= half the value
    s = b_crit_loss_slope([bounded, *exact, unresolved])
    assert s["n_goals"] == 5 and s["loss_high"] == 6.0 and s["loss_low"] == 3.8
    assert s["slope"] == pytest.approx(-1 / KAPLAN_ALPHA_B, rel=1e-9) and s["slope_stderr"] < 1e-9
    # a steeper law, with scatter: slope -8 within its standard error, judged steeper than Kaplan's
    rng = np.random.default_rng(0)
    steep = [dict(goal=g, b_crit=1e8 * g ** -8.0 * np.exp(0.03 * rng.standard_normal()), b_crit_stderr=1.0,
                  bound="none") for g in losses]
    s = b_crit_loss_slope(steep)
    assert abs(s["slope"] + 8.0) < 3 * s["slope_stderr"] and s["z"] < -2
    text = loss_slope_verdict(steep, "tokens", sequence_length=20)
    assert "steeper than theirs" in text and "sequences" in text and "−4.8" in text
    assert "Fewer than 3" in loss_slope_verdict(exact[:2])


def test_calibration_report_scores_the_estimator_and_the_paper_reading_against_the_exact_answer():
    points = pd.DataFrame({"synthetic": [True, True, True, False], "b_crit": [10.0, 100.0, 1000.0, 50.0],
                           "b_crit_exact": [10.0, 125.0, 900.0, np.nan], "b_crit_predicted": [8.0, 80.0, 800.0, np.nan],
                           "b_crit_fastest_ema": [6.0, 75.0, 450.0, 40.0],
                           "ci_low": [9.0, 90.0, 850.0, 40.0], "ci_high": [11.0, 120.0, 1100.0, 60.0]})
    out = calibration_report(points)
    assert out["n_points"] == 3 and out["n_exact_covered"] == 2  # 125 lies above its interval
    assert out["measured_over_exact_min"] == pytest.approx(0.8) and out["measured_over_exact_max"] == pytest.approx(1000 / 900)
    assert out["fastest_ema_over_exact_min"] == pytest.approx(0.5) and out["fastest_ema_over_exact_max"] == pytest.approx(0.6)
    assert (out["exact_min"], out["exact_max"]) == (10.0, 900.0)  # the real task's point is not the calibration's
    assert out["exact_decades"] == pytest.approx(np.log10(90.0))
