"""Steps-to-target, best runs and the eq. 2.11 fit against known answers."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from gns_utils.critical_batch import (
    DEFAULT_SMOOTHING,
    TradeoffFit,
    b_crit_by_goal,
    best_runs,
    ema,
    fit_tradeoff,
    fit_tradeoff_by_goal,
    steps_to_target,
)

BATCHES = 2.0 ** np.arange(3, 15)  # 8 … 16384
S_MIN = 1000.0


def synthetic_steps(b_crit: float, noise: float, seed: int, batches: np.ndarray = BATCHES) -> np.ndarray:
    """Eq. 2.11 with multiplicative log-normal noise."""
    rng = np.random.default_rng(seed)
    return S_MIN * (1.0 + b_crit / batches) * np.exp(rng.normal(0.0, noise, batches.size))


# --------------------------------------------------------------------------- steps_to_target
def test_steps_to_target_below_piecewise_linear_exact():
    steps = [0, 10, 20, 40]
    loss = [4.0, 3.0, 2.0, 1.0]
    got = steps_to_target(steps, loss, [4.5, 4.0, 3.5, 2.5, 1.5, 1.0, 0.5], smoothing=0)
    np.testing.assert_allclose(got, [0.0, 0.0, 5.0, 15.0, 30.0, 40.0, np.nan])


def test_steps_to_target_above_and_first_crossing_only():
    steps = [0, 100, 200, 300, 400]
    acc = [0.1, 0.5, 0.3, 0.9, 0.95]  # rises, dips, rises again
    got = steps_to_target(steps, acc, [0.3, 0.5, 0.7, 0.99], smoothing=0, direction="above")
    # 0.3 first crossed between 0 and 100 (at 50); 0.7 between 200 (0.3) and 300 (0.9).
    np.testing.assert_allclose(got, [50.0, 100.0, 200.0 + 100.0 * (0.7 - 0.3) / 0.6, np.nan])


def test_steps_to_target_scalar_target_and_divergence():
    assert steps_to_target([1, 2, 3], [3.0, 2.0, 1.0], 2.0, smoothing=0).shape == (1,)
    # A NaN (diverged) point and everything after it never count.
    got = steps_to_target([0, 1, 2, 3], [3.0, 2.0, np.nan, 0.0], [2.5, 1.0], smoothing=0)
    np.testing.assert_allclose(got, [0.5, np.nan])


def test_smoothing_delays_crossing_on_noisy_curve():
    rng = np.random.default_rng(0)
    steps = np.arange(2000)
    clean = 3.0 * np.exp(-steps / 500.0)
    noisy = clean * np.exp(rng.normal(0.0, 0.15, steps.size))
    targets = np.array([2.0, 1.0, 0.5])
    true = -500.0 * np.log(targets / 3.0)
    raw = steps_to_target(steps, noisy, targets, smoothing=0)
    smooth = steps_to_target(steps, noisy, targets, smoothing=0.9)
    assert np.all(raw < true)  # unsmoothed: noise dips cross early
    assert np.all(smooth > raw)  # smoothing delays the crossing ...
    assert np.all(np.abs(smooth - true) < np.abs(raw - true))  # ... towards the noiseless one


def test_ema_bias_corrected():
    np.testing.assert_allclose(ema([5.0, 5.0, 5.0], 0.9), [5.0, 5.0, 5.0])
    np.testing.assert_allclose(ema([1.0, 3.0], 0.5), [1.0, (0.25 * 1 + 0.5 * 3) / 0.75])


@pytest.mark.parametrize(
    "steps, values, kwargs, match",
    [
        ([0, 2, 1], [1, 2, 3], {}, "strictly increasing"),
        ([0, 1, 2], [1, 2], {}, "same length"),
        ([0, 1, 2], [1, 2, 3], {"direction": "up"}, "direction"),
        ([0, 1, 2], [1, 2, 3], {"smoothing": 1.0}, "smoothing"),
    ],
)
def test_steps_to_target_validation(steps, values, kwargs, match):
    with pytest.raises(ValueError, match=match):
        steps_to_target(steps, values, [1.0], **kwargs)


# --------------------------------------------------------------------------- best_runs
def _sweep() -> pd.DataFrame:
    rows = []
    # batch 32: rates 0.01, 0.02, 0.04; best in the middle for goal 1.0, at the top for 0.5.
    for lr, s1, s2 in [(0.01, 300, 900), (0.02, 200, 800), (0.04, 250, 700)]:
        rows += [dict(batch_size=32, lr=lr, goal=1.0, steps=s1, run_id=f"b32-{lr}"),
                 dict(batch_size=32, lr=lr, goal=0.5, steps=s2, run_id=f"b32-{lr}")]
    # batch 64: best at the smallest rate; nobody reaches goal 0.5.
    for lr, s1 in [(0.02, 100), (0.04, 150), (0.08, np.nan)]:
        rows += [dict(batch_size=64, lr=lr, goal=1.0, steps=s1, run_id=f"b64-{lr}"),
                 dict(batch_size=64, lr=lr, goal=0.5, steps=np.nan, run_id=f"b64-{lr}")]
    return pd.DataFrame(rows)


def test_best_runs_picks_fastest_and_flags_edges():
    best = best_runs(_sweep())
    assert list(best.columns[:7]) == ["goal", "batch_size", "lr", "steps", "examples", "n_lr", "lr_on_edge"]
    assert "run_id" in best.columns
    assert list(zip(best["goal"], best["batch_size"])) == [(1.0, 32), (1.0, 64), (0.5, 32)]
    assert best["lr"].tolist() == [0.02, 0.02, 0.04]
    assert best["steps"].tolist() == [200, 100, 700]
    assert best["examples"].tolist() == [6400, 6400, 22400]
    assert best["lr_on_edge"].tolist() == [False, True, True]
    assert best["n_lr"].tolist() == [3, 3, 3]
    assert best["run_id"].tolist() == ["b32-0.02", "b64-0.02", "b32-0.04"]


def test_best_runs_keep_unreached_and_missing_column():
    best = best_runs(_sweep(), keep_unreached=True)
    row = best[(best["goal"] == 0.5) & (best["batch_size"] == 64)]
    assert len(row) == 1 and np.isnan(row["steps"].iloc[0]) and not row["lr_on_edge"].iloc[0]
    with pytest.raises(ValueError, match="missing required column"):
        best_runs(_sweep().drop(columns="lr"))


# --------------------------------------------------------------------------- fit_tradeoff
def test_fit_exact_on_noiseless_points():
    fit = fit_tradeoff(BATCHES, S_MIN * (1 + 300.0 / BATCHES))
    assert isinstance(fit, TradeoffFit) and fit.bound == "none" and fit.n_points == BATCHES.size
    np.testing.assert_allclose([fit.s_min, fit.b_crit, fit.e_min], [S_MIN, 300.0, 3e5], rtol=1e-6)
    assert fit.b_crit == fit.e_min / fit.s_min
    np.testing.assert_allclose(fit.steps(300.0), 2 * S_MIN, rtol=1e-6)
    np.testing.assert_allclose(fit.examples(300.0), 2 * 3e5, rtol=1e-6)
    assert fit.r2 == pytest.approx(1.0)


@pytest.mark.parametrize("b_crit", [10.0, 100.0, 1000.0, 10000.0])
def test_fit_recovers_parameters_within_5_percent(b_crit):
    # 16 replicate runs per batch size with 5% noise: stderr(log B_crit) <= 0.021, so
    # 5% is >= 2.4 standard errors at every B_crit; also check against 3 stderr.
    batches = np.repeat(BATCHES, 16)
    fit = fit_tradeoff(batches, synthetic_steps(b_crit, 0.05, seed=int(b_crit), batches=batches))
    assert fit.bound == "none"
    assert fit.b_crit == pytest.approx(b_crit, rel=0.05)
    assert fit.s_min == pytest.approx(S_MIN, rel=0.05)
    assert fit.e_min == pytest.approx(S_MIN * b_crit, rel=0.05)
    assert abs(np.log(fit.b_crit / b_crit)) < 3 * fit.log_b_crit_stderr
    assert fit.ci_low < fit.b_crit < fit.ci_high
    # the interval is symmetric in log B_crit, hence asymmetric in B_crit
    assert np.log(fit.ci_high / fit.b_crit) == pytest.approx(np.log(fit.b_crit / fit.ci_low))


def test_covariance_interval_covers_truth():
    b_crit, covered = 300.0, 0
    for seed in range(100):
        fit = fit_tradeoff(BATCHES, synthetic_steps(b_crit, 0.07, seed))
        covered += fit.ci_low <= b_crit <= fit.ci_high
    assert covered >= 85  # nominal 95%; 93–94 observed


def test_bootstrap_interval_covers_truth_and_is_seeded():
    b_crit, covered = 300.0, 0
    for seed in range(25):
        fit = fit_tradeoff(BATCHES, synthetic_steps(b_crit, 0.07, seed), bootstrap=60, seed=seed)
        assert fit.method == "bootstrap" and fit.n_bootstrap == 60
        covered += fit.ci_low <= b_crit <= fit.ci_high
    assert covered >= 20  # >= 80% of a nominal 95% interval
    steps = synthetic_steps(b_crit, 0.07, 1)
    a, b = (fit_tradeoff(BATCHES, steps, bootstrap=30, seed=5) for _ in range(2))
    assert (a.ci_low, a.ci_high, a.b_crit_stderr) == (b.ci_low, b.ci_high, b.b_crit_stderr)


def test_saturated_points_flag_upper_bound():
    with pytest.warns(RuntimeWarning, match="saturated"):
        fit = fit_tradeoff(BATCHES, synthetic_steps(0.5, 0.05, seed=3))
    assert fit.bound == "upper"
    assert fit.b_crit == BATCHES.min()
    assert np.isnan(fit.b_crit_stderr) and np.isnan(fit.ci_low) and np.isnan(fit.ci_high)
    assert fit.b_crit == pytest.approx(fit.e_min / fit.s_min)
    assert fit.s_min == pytest.approx(S_MIN, rel=0.05)  # S_min is still constrained


def test_linear_regime_flags_lower_bound():
    with pytest.warns(RuntimeWarning, match="linear regime"):
        fit = fit_tradeoff(BATCHES, synthetic_steps(1e7, 0.05, seed=4))
    assert fit.bound == "lower"
    assert fit.b_crit == BATCHES.max()
    assert fit.e_min == pytest.approx(S_MIN * 1e7, rel=0.1)  # E_min is still constrained
    assert fit.b_crit == pytest.approx(fit.e_min / fit.s_min)


def test_well_constrained_fit_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fit_tradeoff(BATCHES, synthetic_steps(300.0, 0.05, 0)).bound == "none"


@pytest.mark.parametrize(
    "batches, steps, match",
    [
        ([8, 16, np.nan, 32], [10, 8, 7, np.nan], "at least 3 finite points"),
        ([8, 16, 32], [10, 8], "mismatched lengths"),
        ([8, 16, 32], [10, -8, 7], "positive"),
        ([0, 16, 32], [10, 8, 7], "positive"),
        ([16, 16, 16], [10, 8, 7], "distinct batch sizes"),
    ],
)
def test_fit_tradeoff_validation(batches, steps, match):
    with pytest.raises(ValueError, match=match):
        fit_tradeoff(batches, steps)


# --------------------------------------------------------------------------- per goal
def _best_frame() -> pd.DataFrame:
    rows = []
    for goal, b_crit in [(2.0, 50.0), (1.0, 200.0), (0.5, 800.0)]:
        for b, s in zip(BATCHES, S_MIN * (1 + b_crit / BATCHES)):
            rows.append(dict(goal=goal, batch_size=b, lr=0.1, steps=s, examples=b * s, lr_on_edge=b == 8))
    rows += [dict(goal=0.1, batch_size=8.0, lr=0.1, steps=5e4, examples=4e5, lr_on_edge=False),
             dict(goal=0.1, batch_size=16.0, lr=0.1, steps=np.nan, examples=np.nan, lr_on_edge=False)]
    return pd.DataFrame(rows)


def test_b_crit_by_goal_grows_and_marks_insufficient():
    table = b_crit_by_goal(_best_frame())
    assert table["goal"].tolist() == [2.0, 1.0, 0.5, 0.1]
    np.testing.assert_allclose(table["b_crit"].iloc[:3], [50.0, 200.0, 800.0], rtol=1e-5)
    assert table["bound"].tolist() == ["none", "none", "none", "insufficient"]
    assert np.isnan(table["b_crit"].iloc[3]) and table["n_points"].iloc[3] == 1
    assert table["n_lr_edge"].tolist() == [1, 1, 1, 0]
    fits = fit_tradeoff_by_goal(_best_frame())
    assert fits[0.1] is None and fits[2.0].b_crit == pytest.approx(50.0, rel=1e-5)


def test_smoothing_lags_a_log_linear_curve_by_a_fixed_factor_and_leaves_b_crit_unchanged():
    # On a log-spaced schedule (ratio r per point) a curve linear in log(step) is lagged by the EMA
    # by a/(1-a) points in steady state, i.e. every crossing moves by the same factor r^(a/(1-a)):
    # S_min grows by that factor and B_crit = E_min/S_min does not move (A.3).
    a, r = DEFAULT_SMOOTHING, 10 ** (1 / 30)
    steps = r ** np.arange(400)
    b_crit, s_min = 300.0, 2000.0
    batch = 2.0 ** np.arange(3, 13)
    goal_steps = s_min * (1 + b_crit / batch)
    raw, smooth = [], []
    for s_goal in goal_steps:
        metric = 1.0 - 0.1 * np.log(steps / s_goal)  # reaches the goal 1.0 exactly at s_goal
        raw.append(steps_to_target(steps, metric, 1.0, smoothing=0)[0])
        smooth.append(steps_to_target(steps, metric, 1.0, smoothing=a)[0])
    np.testing.assert_allclose(raw, goal_steps, rtol=1e-3)  # linear interpolation between log-spaced points
    np.testing.assert_allclose(np.array(smooth) / goal_steps, r ** (a / (1 - a)), rtol=1e-3)
    fit_raw, fit_smooth = fit_tradeoff(batch, raw), fit_tradeoff(batch, smooth)
    assert fit_raw.b_crit == pytest.approx(b_crit, rel=1e-3)
    assert fit_smooth.b_crit == pytest.approx(b_crit, rel=1e-3)
    assert fit_smooth.s_min == pytest.approx(s_min * r ** (a / (1 - a)), rel=1e-3)


def test_steps_that_grow_with_batch_size_are_rejected_not_called_saturated():
    """Before: such data came back as a 'saturated' bound, B_crit <= the smallest batch size."""
    import warnings as _warnings

    import pandas as pd

    from gns_utils.critical_batch import best_runs, fit_tradeoff, fit_tradeoff_by_goal

    b = np.array([16, 32, 64, 128, 256, 512], float)
    rising = 100.0 * (b / 16) ** 0.3 * np.exp(np.array([0.01, -0.02, 0.015, 0.0, -0.01, 0.02]))
    with pytest.raises(ValueError, match="steps grow with the batch size"):
        fit_tradeoff(b, rising)
    flat = 100.0 * np.exp(np.array([0.01, -0.02, 0.015, 0.0, -0.01, 0.02]))  # saturated: still a bound
    with pytest.warns(RuntimeWarning, match="saturated"):
        assert fit_tradeoff(b, flat).bound == "upper"
    table = pd.DataFrame({"batch_size": b, "lr": 0.1, "goal": 1.0, "steps": rising})
    with _warnings.catch_warnings(record=True) as caught:
        _warnings.simplefilter("always")
        assert fit_tradeoff_by_goal(best_runs(table)) == {1.0: None}
    assert any("steps grow" in str(w.message) for w in caught)
