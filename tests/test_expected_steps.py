"""The estimator of B_crit: lag-free reading of a curve, seed-averaged steps, seed-aware error bars.

Against exact answers: straight lines in log-steps, hand-made sweeps, and the calibration problem
(noisy linear regression), where the steps of the expected loss under the best constant rate are
known in closed form (:mod:`gns_utils.theory`) and runs are simulated by an implementation apart from
the trainer (:func:`gns_utils.experiments.synthetic.simulate_sgd_losses`).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from gns_utils import theory
from gns_utils.critical_batch import (
    b_crit_by_goal,
    best_runs,
    expected_steps,
    fit_tradeoff,
    local_linear,
    seed_aware_b_crit,
    steps_by_seed,
    steps_to_target,
)
from gns_utils.experiments.profiles import presets
from gns_utils.experiments.synthetic import power_law_spectrum, simulate_calibration_sweeps, simulate_sgd_losses
from gns_utils.experiments.train import eval_schedule


# --------------------------------------------------------------------------- local_linear
def test_local_linear_is_exact_on_a_line_in_log_steps():
    steps = eval_schedule(5000, 30).astype(float)
    values = 3.0 - 0.4 * np.log1p(steps)
    np.testing.assert_allclose(local_linear(steps, values), values, atol=1e-10)


def test_local_linear_keeps_isolated_points_and_stops_at_divergence():
    steps = np.array([0.0, 1.0, 2.0, 100.0, 101.0, 102.0, 103.0])
    values = np.array([5.0, 4.0, 3.0, 2.0, np.nan, 1.0, 1.0])
    out = local_linear(steps, values)
    assert out[0] == 5.0  # no neighbours within the window: kept as it is
    assert np.isnan(out[4:]).all()  # the divergence and every point after it
    with pytest.raises(ValueError, match="half_width"):
        local_linear(steps, values, half_width=0.0)


def test_local_reading_has_no_lag_where_the_ema_lags():
    # a short run (a large batch): the EMA lags by points, i.e. by a large share of the steps
    steps = np.arange(0, 31, dtype=float)
    values = 2.0 - 0.5 * np.log1p(steps)
    goal = 2.0 - 0.5 * np.log1p(12.0)  # reached at step 12 exactly
    assert steps_to_target(steps, values, goal, method="local")[0] == pytest.approx(12.0, rel=1e-9)
    assert steps_to_target(steps, values, goal, method="ema")[0] > 13.0  # the A.3 reading lags by > 1 step
    with pytest.raises(ValueError, match="method"):
        steps_to_target(steps, values, goal, method="centred")


# --------------------------------------------------------------------------- expected_steps
def _sweep(log_steps: dict[tuple[float, float, int], float]) -> pd.DataFrame:
    return pd.DataFrame([{"batch_size": b, "lr": lr, "seed": s, "goal": 1.0, "steps": np.exp(v), "run_id": f"{b}-{lr}-{s}"}
                         for (b, lr, s), v in log_steps.items()])


def test_expected_steps_averages_log_steps_over_seeds_before_choosing_the_rate():
    # rate 0.1 is fastest at seed 0 only by chance; on average over the seeds 0.2 is faster
    runs = _sweep({(8, 0.1, 0): 1.0, (8, 0.1, 1): 3.0, (8, 0.1, 2): 3.0,
                   (8, 0.2, 0): 2.0, (8, 0.2, 1): 2.0, (8, 0.2, 2): 2.0})
    best = expected_steps(runs)
    assert best["lr"].item() == 0.2 and best["steps"].item() == pytest.approx(np.exp(2.0))
    assert best["n_seeds"].item() == 3 and best["log_steps_sd"].item() == pytest.approx(0.0)
    assert best["run_id"].item() == "8-0.2-0"  # carried from the smallest seed
    assert best_runs(runs[runs["seed"] == 0])["lr"].item() == 0.1  # the fastest-run reading picks the other


def test_expected_steps_uses_the_rates_every_seed_trained_and_reached():
    # extra seeds trained only rate 0.2 (the "selected" design); rate 0.4 was not reached by seed 1
    runs = _sweep({(8, 0.1, 0): 1.5, (8, 0.2, 0): 2.0, (8, 0.2, 1): 2.4, (8, 0.4, 0): 1.0, (8, 0.4, 1): np.inf})
    runs.loc[runs["steps"] == np.inf, "steps"] = np.nan
    best = expected_steps(runs)
    assert best["lr"].item() == 0.2 and best["steps"].item() == pytest.approx(np.exp(2.2))
    assert best["n_lr"].item() == 3 and not best["lr_on_edge"].item()


def test_expected_steps_with_one_seed_is_best_runs():
    rng = np.random.default_rng(0)
    rows = [{"batch_size": b, "lr": lr, "seed": 0, "goal": g, "steps": float(rng.uniform(10, 100)), "run_id": f"{b}{lr}"}
            for b in (8, 16, 32) for lr in (0.1, 0.2, 0.4) for g in (0.5, 0.3)]
    runs = pd.DataFrame(rows)
    new, old = expected_steps(runs), best_runs(runs)
    pd.testing.assert_frame_equal(new[old.columns].reset_index(drop=True), old, check_exact=False, rtol=1e-12)


# --------------------------------------------------------------------------- seed_aware_b_crit
def _simulated_sweep(b_crit: float, rng: np.random.Generator, n_seeds: int, batches: np.ndarray,
                     seed_sd: float, point_sd: float) -> pd.DataFrame:
    """(2.11) with noise shared by one seed's runs (a random tilt in log B) plus independent noise."""
    rows = []
    x = (np.log(batches) - np.log(batches).mean()) / np.log(batches).std()
    for seed in range(n_seeds):
        tilt = rng.normal(0.0, seed_sd) * x + rng.normal(0.0, seed_sd)
        noise = tilt + rng.normal(0.0, point_sd, batches.size)
        for b, e in zip(batches, noise):
            rows.append({"batch_size": b, "lr": 0.1, "seed": seed, "goal": 1.0,
                         "steps": 1000.0 * (1.0 + b_crit / b) * np.exp(e), "run_id": f"{b}-{seed}"})
    return pd.DataFrame(rows)


def test_seed_aware_interval_covers_at_about_the_nominal_rate_where_the_fit_alone_does_not():
    rng = np.random.default_rng(1)
    batches = 2.0 ** np.arange(4, 12)
    b_crit, n = 300.0, 400
    seed_aware, fit_only = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(n):
            runs = _simulated_sweep(b_crit, rng, 3, batches, seed_sd=0.15, point_sd=0.05)
            best = expected_steps(runs)
            row = seed_aware_b_crit(best, steps_by_seed(runs, best)).iloc[0]
            seed_aware.append(row["ci_low"] <= b_crit <= row["ci_high"])
            fit = b_crit_by_goal(best).iloc[0]
            fit_only.append(fit["ci_low"] <= b_crit <= fit["ci_high"])
    rate, se = np.mean(seed_aware), np.sqrt(0.95 * 0.05 / n)
    # nominal 0.95 within 4 binomial standard errors (taking the larger of the two errors may over-cover)
    assert 0.95 - 4 * se <= rate <= 0.995, rate
    assert np.mean(fit_only) < 0.95 - 4 * se  # correlated seed noise: the fit-only interval is too narrow


def test_seed_aware_b_crit_per_seed_values_are_the_per_seed_fits():
    rng = np.random.default_rng(2)
    batches = 2.0 ** np.arange(4, 12)
    runs = _simulated_sweep(300.0, rng, 3, batches, seed_sd=0.1, point_sd=0.05)
    best = expected_steps(runs)
    row = seed_aware_b_crit(best, steps_by_seed(runs, best)).iloc[0]
    for seed, value in zip(row["seeds"], row["b_crit_seeds"]):
        mine = runs[runs["seed"] == seed]
        assert value == pytest.approx(fit_tradeoff(mine["batch_size"], mine["steps"]).b_crit, rel=1e-6)
    logs = np.log(row["b_crit_seeds"])
    assert row["b_crit_seed_stderr"] == pytest.approx(row["b_crit"] * logs.std(ddof=1) / np.sqrt(3), rel=1e-9)
    assert row["b_crit_stderr"] == pytest.approx(max(row["b_crit_seed_stderr"], row["b_crit_fit_stderr"]), rel=1e-9)


# --------------------------------------------------------------------------- the calibration problem
@pytest.fixture(scope="module")
def calibration_sweeps():
    """Simulated sweeps of the cpu preset's noisy linear regression: 12 seeds (4 sweeps of 3), 5 rates 2x
    apart per batch size around the exact optimum; every run read by the EMA and by the local fit."""
    p = presets("synthetic", "cpu")[0]
    kw = p["data_kwargs"]
    lam = power_law_spectrum(kw["dim"], kw["power"])
    u0 = -np.random.default_rng(kw["data_seed"]).standard_normal(kw["dim"])
    goals, batches = np.array(p["goals"][:4]), np.array(p["batch_sizes"][:10], float)
    runs = simulate_calibration_sweeps(lam, u0, kw["noise_var"], goals, batches, p["evals_per_decade"], 12, 2.0, 5,
                                       np.random.default_rng(12345))
    return runs


def test_simulated_runs_match_the_exact_expected_loss_within_their_standard_error():
    lam = power_law_spectrum(16, 1.0)
    u0 = -np.random.default_rng(6).standard_normal(16)
    steps = np.array([1, 3, 10, 30, 60])
    for b, lr in ((8, 0.05), (256, 0.8)):
        losses = simulate_sgd_losses(lam, u0, 1.0, b, [lr], 300, steps, np.random.default_rng(b))[:, 0]
        exact = theory.noisy_linear_expected_loss(lam, u0, 1.0, b, lr, steps[-1])[steps]
        z = (losses.mean(0) - exact) / (losses.std(0, ddof=1) / np.sqrt(losses.shape[0]))
        assert np.all(np.abs(z) < 4.5), z  # 5 steps x 2 settings, each |z| < 4.5 (p < 1e-5 by chance)


def test_expected_steps_recover_the_exact_steps_of_the_best_grid_rate_where_the_fastest_run_does_not(
        calibration_sweeps):
    """S(B) and B_crit against the exact answer the grid allows: the steps of the expected loss at the
    grid's best rate (the spacing's own effect, common to every reading, is measured apart in
    ``benchmarks/estimator_bias.py``)."""
    runs = calibration_sweeps
    new_ratio, old_ratio, s_ratio = [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for start in range(0, 12, 3):
            group = runs[runs["seed"].between(start, start + 2)]
            grid_best = group.groupby(["goal", "batch_size"], as_index=False)["expected"].min()
            target = b_crit_by_goal(grid_best.assign(steps=grid_best["expected"], lr=0.1)).set_index("goal")["b_crit"]
            best = expected_steps(group.assign(steps=group["local"]))
            by_goal = seed_aware_b_crit(best, steps_by_seed(group.assign(steps=group["local"]), best))
            new_ratio.append((by_goal.set_index("goal")["b_crit"] / target).to_numpy())
            matched = best.drop(columns="expected").merge(grid_best, on=["goal", "batch_size"])
            s_ratio.append(np.log(matched["steps"] / matched["expected"]).to_numpy())
            one = runs[runs["seed"] == start]
            old = b_crit_by_goal(best_runs(one.assign(steps=one["ema"]))).set_index("goal")["b_crit"]
            old_ratio.append((old / target).to_numpy())
    s_ratio = np.concatenate(s_ratio)
    # S(B) unbiased: the mean log ratio over every (sweep, goal, B) within 3 standard errors (+ 3 %) of 0
    assert abs(s_ratio.mean()) < 0.03 + 3 * s_ratio.std(ddof=1) / np.sqrt(s_ratio.size), s_ratio.mean()
    new, old = np.log(np.array(new_ratio)), np.log(np.array(old_ratio))
    se_new = new.std(axis=0, ddof=1) / np.sqrt(new.shape[0])
    # B_crit: mean log ratio within 0.1 (10 %) of 0 beyond 2 standard errors over the 4 sweeps, at every goal
    assert np.all(np.abs(new.mean(axis=0)) < 0.1 + 2 * se_new), np.exp(new.mean(axis=0))
    # the fastest-run A.3 reading (one seed, EMA) fails the same test: biased low by more than a quarter
    assert np.exp(old.mean(axis=0)).min() < 0.75, np.exp(old.mean(axis=0))


def test_the_last_goal_is_read_early_from_a_run_that_stops_there_and_not_from_its_run_out(calibration_sweeps):
    """A run that ends at its first (smoothed) crossing of the last goal ends where its noisy curve dipped, and
    the centred reading has no points after it; the trainer's run-out (``RUN_OUT`` × that step) gives it both
    sides. Each goal is read as if it were the last, against the exact answer of the grid's best rate."""
    runs = calibration_sweeps
    ratios: dict[str, list[np.ndarray]] = {"local_stopped": [], "local_run_out": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for start in range(0, 12, 3):
            group = runs[runs["seed"].between(start, start + 2)]
            grid_best = group.groupby(["goal", "batch_size"], as_index=False)["expected"].min()
            target = b_crit_by_goal(grid_best.assign(steps=grid_best["expected"], lr=0.1)).set_index("goal")["b_crit"]
            for name, found in ratios.items():
                read = group.assign(steps=group[name])
                best = expected_steps(read)
                by_goal = seed_aware_b_crit(best, steps_by_seed(read, best)).set_index("goal")["b_crit"]
                found.append((by_goal / target).to_numpy())
    run_out, stopped = (np.log(np.array(ratios[k])) for k in ("local_run_out", "local_stopped"))
    se = run_out.std(axis=0, ddof=1) / np.sqrt(run_out.shape[0])
    assert np.all(np.abs(run_out.mean(axis=0)) < 0.1 + 2 * se), np.exp(run_out.mean(axis=0))
    se = stopped.std(axis=0, ddof=1) / np.sqrt(stopped.shape[0])
    assert np.any(stopped.mean(axis=0) < np.log(0.9) - 2 * se), np.exp(stopped.mean(axis=0))
