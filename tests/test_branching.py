"""The local critical batch size by branching (gns_utils.experiments.branching), against exact answers."""

import numpy as np
import pytest

from gns_utils.experiments.branching import (
    best_rate_steps,
    calibration_branching,
    mean_curve_steps,
    tolerance_cbs,
    tolerance_cbs_from_b_crit,
)
from gns_utils.experiments.problems import make_problem
from gns_utils.experiments.profiles import experiment_configs


def test_tolerance_rule_on_an_exact_hyperbola_reads_tau_b_crit_plus_the_ladders_start():
    b_crit, e_min, tau = 300.0, 1e4, 0.2
    ladder = 8.0 * 2.0 ** (np.arange(0, 41) / 4)  # dense: the log-B interpolation is then close to exact
    examples = e_min * (1 + ladder / b_crit)
    expected = tolerance_cbs_from_b_crit(b_crit, ladder[0], tau)
    assert expected == pytest.approx(tau * b_crit + (1 + tau) * 8.0)
    assert tolerance_cbs(ladder, examples, tau) == pytest.approx(expected, rel=0.01)


def test_tolerance_rule_edges():
    ladder = [8, 16, 32]
    assert tolerance_cbs(ladder, [100.0, 101.0, 102.0], 0.2) == 32.0  # never beyond 1 + τ: the ladder's top
    assert np.isnan(tolerance_cbs(ladder, [np.nan, 101.0, 102.0], 0.2))  # B_0 did not reach the target
    assert tolerance_cbs(ladder, [100.0, 110.0, np.inf], 0.2) == 16.0  # the next one never reached it
    with pytest.raises(ValueError, match="tolerance"):
        tolerance_cbs(ladder, [1.0, 2.0, 3.0], 0.0)
    with pytest.raises(ValueError, match="increasing"):
        tolerance_cbs([8, 8, 16], [1.0, 2.0, 3.0], 0.2)


def test_best_rate_steps_finds_the_minimum_between_the_rates():
    rates = 0.1 * 2.0 ** np.arange(5)
    log_opt, log_s_min, curvature = np.log(0.283), np.log(120.0), 0.8  # midway between 0.2 and 0.4
    steps = np.exp(log_s_min + curvature * (np.log(rates) - log_opt) ** 2)
    assert steps.min() > 125.0  # the grid's fastest rate overstates S
    assert best_rate_steps(rates, steps) == pytest.approx(120.0, rel=1e-9)
    assert best_rate_steps(rates[:2], steps[:2]) == pytest.approx(steps[:2].min())  # no neighbour beyond: its own steps
    assert np.isnan(best_rate_steps(rates, np.full(5, np.nan)))


def test_mean_curve_steps_reads_the_crossing_of_the_average_over_replicates():
    schedule = np.arange(0, 201)
    curve = 1.0 + 2.0 * np.exp(-schedule / 40.0)  # reaches 1.5 at 40 ln 4
    shifts = np.array([-0.3, 0.3, -0.1, 0.1])[:, None, None]  # symmetric: the mean is the curve itself
    losses = curve[None, None, :] + shifts * np.exp(-schedule / 40.0)
    steps = mean_curve_steps(schedule, losses, 1.5)
    assert steps[0] == pytest.approx(40.0 * np.log(4.0), rel=0.01)
    first_passage = [np.argmax(losses[r, 0] <= 1.5) for r in range(4)]
    assert min(first_passage) < steps[0] - 3  # one replicate alone crosses early
    diverged = losses.copy()
    diverged[1, 0, 50:] = np.inf
    assert np.isnan(mean_curve_steps(schedule, diverged, 1.5)[0])


def test_calibration_local_b_crit_matches_the_exact_one_from_the_closed_form():
    cfg = experiment_configs("synthetic", "smoke")[0]
    problem = make_problem(experiment_configs("synthetic", "cpu")[0])  # the cpu problem: d = 16, λ_i = 1/i
    assert cfg.dataset == "noisy_linear"
    frame = calibration_branching(problem.eigenvalues, problem.u0, problem.noise_var, [0.7, 0.58, 0.53, 0.51], 0.7,
                                  [2 ** k for k in range(3, 14)], replicates=32, rng=np.random.default_rng(0),
                                  n_boot=100)
    ratio = frame["b_crit"] / frame["b_crit_exact"]
    assert frame["b_crit_exact"].is_monotonic_increasing  # the local B_crit grows as the loss falls
    assert ratio.between(0.85, 1.15).all(), ratio.tolist()
    assert frame["covered"].sum() >= 3, frame[["b_crit", "ci_low", "ci_high", "b_crit_exact"]]
    assert (frame["s_min"] >= 1).all()  # continuations of at least a step, not a fraction of one
