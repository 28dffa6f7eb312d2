"""The paper's closed-form predictions against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from gns_utils.theory import (
    adaptive_batch_size,
    adaptive_gain,
    adaptive_speedup,
    examples_for_batch,
    fit_optimal_lr,
    lr_grid,
    lr_grid_centre,
    optimal_improvement,
    optimal_lr,
    steps_for_batch,
    training_average,
)


def test_optimal_lr_and_improvement_eq_2_6_2_7():
    # B = B_noise halves the rate; B = 3·B_noise gives 3/4 of it.
    assert optimal_lr(100.0, 0.8, 100.0) == pytest.approx(0.4)
    np.testing.assert_allclose(optimal_lr([100.0, 300.0, 1e9], 0.8, 100.0), [0.4, 0.6, 0.8], rtol=1e-6)
    assert optimal_improvement(25.0, 2.0, 100.0) == pytest.approx(2.0 / 5.0)
    assert isinstance(optimal_lr(1.0, 1.0, 1.0), float)


def test_fit_optimal_lr_recovers_parameters():
    b = 2.0 ** np.arange(2, 14)
    lr = optimal_lr(b, 0.5, 256.0) * np.exp(np.random.default_rng(0).normal(0, 0.02, b.size))
    eps_max, b_noise = fit_optimal_lr(b, lr)
    assert eps_max == pytest.approx(0.5, rel=0.05)
    assert b_noise == pytest.approx(256.0, rel=0.1)
    with pytest.raises(ValueError, match="at least 3"):
        fit_optimal_lr([1.0, 2.0, np.nan], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="mismatched"):
        fit_optimal_lr([1.0, 2.0, 3.0], [0.1, 0.2])


def test_steps_and_examples_eq_2_11():
    # S_min = 100, E_min = 5000 -> B_crit = 50.
    assert steps_for_batch(50.0, 100.0, 50.0) == pytest.approx(200.0)
    assert steps_for_batch(10.0, 100.0, 50.0) == pytest.approx(600.0)
    assert examples_for_batch(50.0, 5000.0, 50.0) == pytest.approx(10000.0)
    assert examples_for_batch(200.0, 5000.0, 50.0) == pytest.approx(25000.0)
    b = np.array([5.0, 50.0, 500.0])
    s, e = steps_for_batch(b, 100.0, 50.0), examples_for_batch(b, 5000.0, 50.0)
    np.testing.assert_allclose(e, b * s)
    np.testing.assert_allclose((s / 100.0 - 1) * (e / 5000.0 - 1), 1.0)


def test_lr_grid_eq_a_3():
    assert lr_grid_centre(100.0, 1.0, 100.0) == pytest.approx(0.5)
    assert lr_grid_centre(100.0, 1.0, 300.0, alpha=0.5) == pytest.approx(0.5)
    np.testing.assert_allclose(lr_grid(100.0, 1.0, 100.0, n=3, spacing=2.0), [0.25, 0.5, 1.0])
    np.testing.assert_allclose(lr_grid(100.0, 1.0, 100.0, n=2, spacing=4.0), [0.25, 1.0])
    assert lr_grid([10.0, 100.0, 1000.0], 1.0, 100.0, n=5).shape == (3, 5)
    with pytest.raises(ValueError, match="spacing"):
        lr_grid(100.0, 1.0, 100.0, spacing=1.0)


def test_training_average_constant_noise_scale():
    assert training_average([0, 10, 50, 100], [300.0] * 4, 64) == pytest.approx(300.0)


def test_training_average_two_segments_by_hand():
    # B = 100; ℬ = 100 on steps 0–10, ramps to 300 over 10–20, 300 on 20–30.
    # ds/dS = 1/(1 + ℬ/B) = 0.5, 0.5, 0.25, 0.25; trapezoid:
    #   ∫ℬ ds = 10·50 + 10·(50+75)/2 + 10·75 = 1875;  ∫ds = 5 + 3.75 + 2.5 = 11.25
    #   B_avg = 1875/11.25 = 166.67 (a plain average over S would give 200).
    steps, noise = [0, 10, 20, 30], [100.0, 100.0, 300.0, 300.0]
    assert training_average(steps, noise, 100) == pytest.approx(1875 / 11.25)
    # NaN / non-positive points are dropped, and order does not matter.
    assert training_average([0, 5, 10, 20, 25, 30], [100, np.nan, 100, 300, -7, 300], 100) == pytest.approx(1875 / 11.25)
    assert training_average(steps[::-1], noise[::-1], 100) == pytest.approx(1875 / 11.25)
    assert np.isnan(training_average([0, 1], [np.nan, np.nan], 100))


def test_adaptive_schedule_d3_d5():
    assert adaptive_batch_size(400.0, 4.0) == pytest.approx(40.0)
    assert adaptive_gain([7.0, 7.0, 7.0]) == pytest.approx(1.0)
    # ℬ = 1 and 9: E[√ℬ]² = 4, E[ℬ] = 5 -> γ = 0.8; weights 3:1 -> 1.5²/3 = 0.75.
    assert adaptive_gain([1.0, 9.0]) == pytest.approx(0.8)
    assert adaptive_gain([1.0, 9.0], weights=[3.0, 1.0]) == pytest.approx(0.75)
    assert adaptive_speedup(1.0) == pytest.approx(2.0)
    assert adaptive_speedup(0.64) == pytest.approx(1.8)


def test_adaptive_tradeoff_curve_matches_gamma():
    # Integrate S_tot and E_tot for B(s) = √(rℬ(s)) and check (S/S_min − 1)(E/E_min − 1) = γ.
    noise = np.linspace(10.0, 1000.0, 1001)  # ℬ sampled uniformly in s, ds = 1
    r = 123.0
    b = adaptive_batch_size(noise, r)
    s_min, e_min = noise.size, noise.sum()
    s_tot, e_tot = np.sum(1 + noise / b), np.sum(b + noise)
    assert (s_tot / s_min - 1) * (e_tot / e_min - 1) == pytest.approx(adaptive_gain(noise))
