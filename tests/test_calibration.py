"""Noisy linear regression, the calibration task: closed forms against Monte Carlo and brute force.

Statistical checks use fixed seeds and a tolerance of 5 standard errors (estimated from the
same samples); where a plausible bug would change the answer by less than that, the test
also shows that the bug is rejected by the same data.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from scipy import optimize

from gns_utils.experiments.problems import make_problem
from gns_utils.experiments.synthetic import NoisyLinearProblem, half_squared_error
from gns_utils.noise import per_example_estimate
from gns_utils.theory import (
    noisy_linear_b_crit_prediction,
    noisy_linear_constant_lr_b_crit,
    noisy_linear_expected_loss,
    noisy_linear_noise_scales,
    noisy_linear_stable_lr,
    noisy_linear_stationary_loss,
    noisy_linear_steps_to_goal,
    noisy_linear_tuned_steps,
)

LAM = np.array([1.0, 0.5, 0.25, 0.1])
U = np.array([1.0, -1.0, 0.5, 2.0])
VAR = 0.5


def _per_example_gradients(lam, u, var, n, rng):
    """``g = x(xᵀu − σξ)`` for ``n`` samples (float64), straight from the definition."""
    x = rng.standard_normal((n, lam.size)) * np.sqrt(lam)
    residual = x @ u - np.sqrt(var) * rng.standard_normal(n)
    return x * residual[:, None]


# --------------------------------------------------------------------------- (a) noise scales
def test_noise_scales_match_monte_carlo_gradients():
    g = _per_example_gradients(LAM, U, VAR, 200_000, np.random.default_rng(0))
    exact = noisy_linear_noise_scales(LAM, U, VAR)
    mean = g.mean(0)
    dev = g - mean
    n = len(g)
    # tr Σ and tr(HΣ) as means of per-example squares, with their standard errors.
    for per_example, value in ((np.sum(dev**2, 1), exact.trace_sigma), (np.sum(LAM * dev**2, 1), exact.trace_h_sigma)):
        assert abs(per_example.mean() - value) < 5 * per_example.std() / np.sqrt(n)
    # The full covariance matrix, entry by entry: Σ = HuuᵀH + (uᵀHu + σ²)H.
    hu = LAM * U
    sigma = np.outer(hu, hu) + (U @ hu + VAR) * np.diag(LAM)
    products = dev[:, :, None] * dev[:, None, :]
    se = products.std(0) / np.sqrt(n)
    assert np.all(np.abs(products.mean(0) - sigma) < 5 * se)
    # Isserlis' factor 2 (Σ = 2HuuᵀH + ...) would be rejected by the same data.
    assert np.max(np.abs(products.mean(0) - (sigma + np.outer(hu, hu))) / se) > 10
    # G = Hu; the exact |G|², GᵀHG and the ratios.
    assert np.all(np.abs(mean - hu) < 5 * g.std(0) / np.sqrt(n))
    assert exact.g2 == pytest.approx(hu @ hu)
    assert exact.g_h_g == pytest.approx(hu @ (LAM * hu))
    assert exact.b_simple == pytest.approx(np.trace(sigma) / (hu @ hu))
    assert exact.b_noise == pytest.approx(np.trace(np.diag(LAM) @ sigma) / (hu @ (LAM * hu)))
    assert exact.loss == pytest.approx(0.5 * U @ hu + 0.5 * VAR)


def test_isotropic_noise_scales_closed_form():
    d, lam, var = 7, 0.3, 0.8
    u = np.random.default_rng(1).standard_normal(d)
    s = noisy_linear_noise_scales(np.full(d, lam), u, var)
    expected = 1 + d + d * var / (lam * u @ u)
    assert s.b_simple == pytest.approx(expected, rel=1e-12)
    assert s.b_noise == pytest.approx(expected, rel=1e-12)


def test_noise_scales_reject_bad_input():
    with pytest.raises(ValueError, match="G = 0"):
        noisy_linear_noise_scales(LAM, np.zeros(4), VAR)
    with pytest.raises(ValueError, match="one per eigenvalue"):
        noisy_linear_noise_scales(LAM, U[:3], VAR)
    with pytest.raises(ValueError, match="positive"):
        noisy_linear_noise_scales([1.0, 0.0, 1.0, 1.0], U, VAR)


# --------------------------------------------------------------------------- (b) App. D prediction
def test_prediction_isotropic_is_one_line_search_step():
    # H = λI: ε_max = 1/λ takes u0 to 0 in one step, so every goal between the floor and L0
    # is reached within that step: S_min = f, E_min = f·B_noise(u0), B_crit = B_noise(u0),
    # with f = (L0 − goal)/(L0 − σ²/2) (linear within the step).
    d, lam, var = 5, 2.0, 0.4
    u0 = np.array([1.0, -2.0, 0.5, 0.0, 1.5])
    l0 = 0.5 * lam * u0 @ u0 + 0.5 * var
    goals = np.array([0.9 * l0, 0.5 * l0, 0.5 * var + 1e-3])
    pred = noisy_linear_b_crit_prediction(np.full(d, lam), u0, var, goals)
    f = (l0 - goals) / (l0 - 0.5 * var)
    b_noise = 1 + d + d * var / (lam * u0 @ u0)
    np.testing.assert_allclose(pred.s_min, f, rtol=1e-10)
    np.testing.assert_allclose(pred.e_min, f * b_noise, rtol=1e-10)
    np.testing.assert_allclose(pred.b_crit, b_noise, rtol=1e-10)
    assert len(pred.loss_path) == 2 and pred.loss_path[1] == pytest.approx(0.5 * var, abs=1e-12)


def _brute_force_prediction(lam, u0, var, goals):
    """App. D by hand: numerical line searches, Σ built as a matrix, B_noise = tr(HΣ)/GᵀHG."""
    h = np.diag(lam)

    def loss(u):
        return 0.5 * u @ h @ u + 0.5 * var

    u, losses, b_noise = u0.copy(), [loss(u0)], []
    while losses[-1] > min(goals):
        g = h @ u
        sigma = np.outer(g, g) + (u @ h @ u + var) * h
        b_noise.append(np.trace(h @ sigma) / (g @ h @ g))
        step = optimize.minimize_scalar(lambda e: loss(u - e * g), bounds=(0, 10 / lam.min()), method="bounded",
                                        options={"xatol": 1e-12}).x
        u = u - step * g
        losses.append(loss(u))
    out = []
    for goal in goals:
        t = next(i for i, value in enumerate(losses) if value <= goal) - 1
        frac = (losses[t] - goal) / (losses[t] - losses[t + 1])
        out.append((t + frac, sum(b_noise[:t]) + frac * b_noise[t]))
    return np.array(out)


def test_prediction_two_eigenvalues_against_brute_force():
    lam, u0, var = np.array([1.0, 0.05]), np.array([-1.0, 2.0]), 0.3
    goals = np.array([0.6, 0.3, 0.17, 0.1505, 0.15001])
    pred = noisy_linear_b_crit_prediction(lam, u0, var, goals)
    brute = _brute_force_prediction(lam, u0, var, goals)
    # The numerical line search leaves ~1e-6 relative errors in u, amplified in the late B_noise.
    np.testing.assert_allclose(pred.s_min, brute[:, 0], rtol=1e-5)
    np.testing.assert_allclose(pred.e_min, brute[:, 1], rtol=1e-4)
    assert pred.s_min[-1] > 5  # the zigzag takes several steps: the test exercises the path, not one step
    assert np.all(np.diff(pred.b_crit) >= 0) and pred.b_crit[-1] > 1e3 * pred.b_crit[0]  # grows as the loss falls


def test_prediction_rejects_goals_outside_the_range():
    with pytest.raises(ValueError, match="floor"):
        noisy_linear_b_crit_prediction(LAM, U, VAR, [1.0, 0.5 * VAR])
    with pytest.raises(ValueError, match="initial loss"):
        noisy_linear_b_crit_prediction(LAM, U, VAR, [10.0])


# --------------------------------------------------------------------------- (c) expected loss of SGD
def _recursion_without_fourth_moment(lam, u0, var, b, lr, steps):
    """A plausible bug: the (ε²/B)λ_i² m_i term (the Huu^TH part of Σ) left out."""
    m, out = u0**2, [0.5 * lam @ u0**2 + 0.5 * var]
    for _ in range(steps):
        m = (1 - lr * lam) ** 2 * m + lr**2 / b * (lam @ m + var) * lam
        out.append(0.5 * lam @ m + 0.5 * var)
    return np.array(out)


def test_expected_loss_matches_monte_carlo_sgd():
    lam, u0, var, b, lr, steps, chains = np.array([1.0, 0.3, 0.1]), np.array([2.0, -3.0, 4.0]), 0.5, 2, 0.6, 25, 20_000
    rng = np.random.default_rng(2)
    u = np.tile(u0, (chains, 1))
    losses = [0.5 * (u**2) @ lam + 0.5 * var]
    for _ in range(steps):
        x = rng.standard_normal((chains, b, lam.size)) * np.sqrt(lam)
        residual = np.einsum("cbd,cd->cb", x, u) - np.sqrt(var) * rng.standard_normal((chains, b))
        u = u - lr * np.einsum("cbd,cb->cd", x, residual) / b
        losses.append(0.5 * (u**2) @ lam + 0.5 * var)
    losses = np.array(losses)
    mc, se = losses.mean(1), losses.std(1) / np.sqrt(chains)
    exact = noisy_linear_expected_loss(lam, u0, var, b, lr, steps)
    assert exact.shape == (steps + 1,)
    assert np.all(np.abs(mc - exact) <= 5 * se + 1e-12)
    buggy = _recursion_without_fourth_moment(lam, u0, var, b, lr, steps)
    assert np.max(np.abs(mc - buggy) / np.maximum(se, 1e-12)) > 10


def test_steps_to_goal_stationary_loss_and_stability_agree_with_the_recursion():
    lam, u0, var, b, lr = np.array([1.0, 0.2, 0.05]), np.array([1.0, 2.0, -3.0]), 0.4, 4, 0.5
    curve = noisy_linear_expected_loss(lam, u0, var, b, lr, 4000)
    floor = noisy_linear_stationary_loss(lam, var, b, lr)
    assert curve[-1] == pytest.approx(floor, rel=1e-9)
    goals = np.array([curve[0] * 0.99, 0.5 * (curve[0] + floor), floor * 1.01, floor * 0.999])
    steps = noisy_linear_steps_to_goal(lam, u0, var, b, lr, goals)
    for goal, s in zip(goals[:3], steps[:3]):
        t = int(np.argmax(curve <= goal))  # first integer step at the goal, then linear within the step
        assert s == pytest.approx(t - 1 + (curve[t - 1] - goal) / (curve[t - 1] - curve[t]), rel=1e-9)
    assert steps[3] == np.inf  # below the stationary loss of this rate
    edge = noisy_linear_stable_lr(lam, b)
    assert np.isfinite(noisy_linear_expected_loss(lam, u0, var, b, 0.99 * edge, 20_000)[-1])
    assert noisy_linear_expected_loss(lam, u0, var, b, 1.01 * edge, 20_000)[-1] > 1e3 * curve[0]
    assert noisy_linear_stable_lr(lam, np.inf) == pytest.approx(2.0, rel=1e-9)


def test_tuned_full_batch_isotropic_equals_the_line_search_prediction():
    # H = λI, B → ∞: ε = 1/λ reaches the floor in one step, and no constant rate beats it,
    # so the tuned steps equal the App. D S_min = (L0 − goal)/(L0 − σ²/2).
    d, lam, var = 4, 0.5, 0.2
    u0 = np.array([1.0, -1.0, 2.0, 0.5])
    goals = np.array([1.0, 0.5, 0.2])
    tuned = noisy_linear_tuned_steps(np.full(d, lam), u0, var, [np.inf], goals)
    pred = noisy_linear_b_crit_prediction(np.full(d, lam), u0, var, goals)
    np.testing.assert_allclose(tuned.steps[:, 0], pred.s_min, rtol=1e-6)
    np.testing.assert_allclose(tuned.lrs[:, 0], 1 / lam, rtol=1e-3)


def test_tuned_steps_beat_a_dense_scan_and_feed_the_fit():
    lam, u0, var = np.array([1.0, 0.3, 0.1, 0.03]), np.array([1.0, -2.0, 1.5, 3.0]), 0.5
    goals = [0.6, 0.3]
    result = noisy_linear_constant_lr_b_crit(lam, u0, var, goals, [2, 8, 32, 128, 512, 2048], n_grid=25)
    tuned = result.tuned
    b = 8
    scan = np.array([noisy_linear_steps_to_goal(lam, u0, var, b, lr, goals)
                     for lr in np.geomspace(1e-3, noisy_linear_stable_lr(lam, b), 300, endpoint=False)])
    j = list(tuned.batch_sizes).index(b)
    assert np.all(tuned.steps[:, j] <= scan.min(0) * (1 + 1e-6))
    assert np.all(tuned.steps[:, j] >= scan.min(0) * (1 - 0.02))  # the scan is close to the optimum too
    assert np.all(np.diff(tuned.steps, axis=1) < 0)  # bigger batches, fewer steps
    assert result.bound == ("none", "none")
    assert result.b_crit[1] > result.b_crit[0]
    fitted = result.s_min[:, None] * (1 + result.b_crit[:, None] / tuned.batch_sizes)
    assert np.max(np.abs(np.log(fitted / tuned.steps))) < 0.25


# --------------------------------------------------------------------------- (d) the problem
@pytest.fixture(scope="module")
def problem():
    return NoisyLinearProblem(dim=8, power=1.0, noise_var=0.25, data_seed=3, seed=11)


def test_problem_model_and_exact_evaluation(problem):
    model = problem.build_model()
    weight = model.weight
    assert model.bias is None and weight.shape == (1, 8) and weight.dtype == torch.float32
    assert torch.count_nonzero(weight) == 0
    assert problem.evaluate(model)["loss"] == pytest.approx(problem.initial_loss, rel=1e-12)
    assert problem.initial_loss == pytest.approx(noisy_linear_noise_scales(problem.eigenvalues, problem.u0, 0.25).loss)
    w = torch.randn(1, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.weight.copy_(w)
    u = w.double().numpy().ravel() - problem.w_star
    exact = 0.5 * np.sum(np.arange(1, 9) ** -1.0 * u**2) + 0.125
    assert set(problem.evaluate(model)) == {"loss"}
    assert problem.evaluate(model)["loss"] == pytest.approx(exact, rel=1e-6)
    # ... and it is the population mean of the training loss.
    x, y = problem.sample(200_000, torch.Generator().manual_seed(1))
    per_example = 0.5 * (model(x).squeeze(1) - y).double() ** 2
    assert abs(per_example.mean().item() - exact) < 5 * per_example.std().item() / np.sqrt(len(y))
    assert problem.loss(model, (x, y)).item() == pytest.approx(per_example.mean().item(), rel=1e-4)


def test_problem_batches_are_fresh_deterministic_and_correctly_distributed(problem):
    idx = torch.zeros(4, dtype=torch.long)
    problem.build_model()  # restarts the stream
    first = problem.batch(idx)
    second = problem.batch(idx)
    assert first[0].shape == (4, 8) and first[1].shape == (4,)
    assert not torch.equal(first[0], second[0])  # same indices, fresh examples
    problem.build_model()
    assert torch.equal(problem.batch(idx)[0], first[0])  # every run sees the same stream
    twin = NoisyLinearProblem(dim=8, power=1.0, noise_var=0.25, data_seed=3, seed=11)
    assert torch.equal(twin.batch(idx)[0], first[0]) and np.array_equal(twin.w_star, problem.w_star)
    other = NoisyLinearProblem(dim=8, power=1.0, noise_var=0.25, data_seed=3, seed=12)
    assert not torch.equal(other.batch(idx)[0], first[0])
    assert problem.units(first) == 4 and problem.n_train <= 2**20

    x, y = problem.batch(torch.zeros(100_000, dtype=torch.long))
    x, y = x.double().numpy(), y.double().numpy()
    n = len(y)
    cov = x.T @ x / n
    target = np.diag(problem.eigenvalues)
    se = np.sqrt((np.outer(problem.eigenvalues, problem.eigenvalues) + target**2) / n)  # Var(x_i x_j)/n
    assert np.all(np.abs(cov - target) < 5 * se)
    residual = y - x @ problem.w_star
    assert abs(residual.var() - 0.25) < 5 * 0.25 * np.sqrt(2 / n)  # σ², not σ or σ⁴
    assert abs(residual.mean()) < 5 * 0.5 / np.sqrt(n)


def test_problem_per_example_b_simple_matches_the_exact_value(problem):
    model = problem.build_model()
    x, y = problem.sample(2**17, torch.Generator().manual_seed(5))
    estimate = per_example_estimate(model, half_squared_error, x, y, chunk_size=4096)
    exact = problem.noise_scales(model)
    assert exact.b_simple == pytest.approx(problem.noise_scales().b_simple)
    assert estimate.trace_sigma == pytest.approx(exact.trace_sigma, rel=0.03)
    assert estimate.g2 == pytest.approx(exact.g2, rel=0.03)
    assert estimate.trace_sigma / estimate.g2 == pytest.approx(exact.b_simple, rel=0.04)


def test_problem_sgd_follows_the_exact_expected_loss(problem):
    b, lr, steps, runs = 16, 0.4, 12, 48
    finals = []
    for seed in range(runs):
        p = NoisyLinearProblem(dim=8, power=1.0, noise_var=0.25, data_seed=3, seed=seed)
        model = p.build_model()
        for _ in range(steps):  # plain SGD: w ← w − ε ĝ
            model.zero_grad()
            p.loss(model, p.batch(torch.arange(b))).backward()
            with torch.no_grad():
                model.weight -= lr * model.weight.grad
        finals.append(p.evaluate(model)["loss"])
    finals = np.array(finals)
    exact = noisy_linear_expected_loss(problem.eigenvalues, problem.u0, 0.25, b, lr, steps)[-1]
    assert abs(finals.mean() - exact) < 5 * finals.std() / np.sqrt(runs)
    assert exact < 0.5 * problem.initial_loss  # the check is made after real progress


def test_make_problem_dispatches_synthetic_and_predictions_delegate():
    cfg = types.SimpleNamespace(domain="synthetic", dataset="noisy_linear", seed=4, device="cpu", model="linear",
                                model_kwargs={}, data_kwargs={"dim": 6, "power": 0.5, "noise_var": 0.3, "data_seed": 2})
    p = make_problem(cfg)
    assert isinstance(p, NoisyLinearProblem)
    assert (p.dim, p.power, p.noise_var, p.data_seed, p.seed) == (6, 0.5, 0.3, 2, 4)
    np.testing.assert_allclose(p.eigenvalues, np.arange(1, 7) ** -0.5)
    goals = [0.5 * (p.initial_loss + p.loss_floor), p.loss_floor + 1e-3]
    np.testing.assert_array_equal(p.exact_prediction(goals).b_crit,
                                  noisy_linear_b_crit_prediction(p.eigenvalues, -p.w_star, 0.3, goals).b_crit)
    loss_fn, x, y = p.hessian_batch(32)
    assert loss_fn is half_squared_error and x.shape == (32, 6)
    assert torch.equal(p.hessian_batch(32)[1], x)  # fixed, and apart from the training stream
    with pytest.raises(ValueError, match="noisy_linear"):
        make_problem(types.SimpleNamespace(**{**vars(cfg), "dataset": "mnist"}))


def test_runs_at_different_seeds_see_different_examples_and_each_seed_reproduces(tmp_path):
    from gns_utils.experiments.config import make_experiment
    from gns_utils.experiments.profiles import presets
    from gns_utils.experiments.train import train_run

    exp = make_experiment(presets("synthetic", "smoke")[0], {"b_noise_examples": 0})
    problem = NoisyLinearProblem(dim=8, power=1.0, noise_var=1.0, data_seed=6, seed=0)
    losses = {}
    for key, seed in (("a", 1), ("b", 2), ("a_again", 1)):
        cfg = exp.run(8, 0.05, seed=seed, budget_examples=800, goals=(0.5001,))
        train_run(problem, cfg, tmp_path / key, progress=False)
        losses[key] = (tmp_path / key / cfg.task / "runs" / cfg.run_id / "metrics.csv").read_text().split("\n")[-2]
    assert losses["a"] != losses["b"]
    assert losses["a"].split(",")[:4] == losses["a_again"].split(",")[:4]


# --------------------------------------------------------------------------- (e) batches as sufficient statistics
def test_the_loss_of_the_sums_is_the_loss_of_the_examples(problem):
    model = problem.build_model()
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, 8, generator=torch.Generator().manual_seed(2)))
    x, y = problem.examples(50, torch.Generator().manual_seed(3))
    xd, yd = x.double(), y.double()
    halves = [(xd[:20], yd[:20]), (xd[20:], yd[20:])]
    sums = (torch.stack([a.T @ a for a, _ in halves]), torch.stack([a.T @ b for a, b in halves]),
            torch.stack([b @ b for _, b in halves]), torch.tensor([20.0, 30.0], dtype=torch.float64))
    assert problem.units(sums) == 50
    assert problem.loss(model, sums).item() == pytest.approx(problem.loss(model, (x, y)).item(), rel=1e-6)
    model.zero_grad()
    problem.loss(model, sums).backward()
    from_sums = model.weight.grad.clone()
    model.zero_grad()
    problem.loss(model, (x, y)).backward()
    torch.testing.assert_close(from_sums, model.weight.grad, rtol=1e-5, atol=1e-6)


def test_sufficient_statistics_have_the_moments_of_the_sums_over_examples():
    from gns_utils.experiments.synthetic import sufficient_statistics

    rng = np.random.default_rng(0)
    scale, w_star, sigma, n, draws = np.sqrt(LAM), np.array([0.7, -1.2, 0.4, 1.5]), np.sqrt(VAR), 100, 20_000
    sxx, sxy, syy = (np.array(a) for a in zip(*(sufficient_statistics(rng, scale, w_star, sigma, n)
                                                  for _ in range(draws))))
    assert n > 4 * LAM.size  # Bartlett's decomposition, not the examples
    h = np.diag(LAM)
    # Σxxᵀ: mean nH, variance n(λ_iλ_j + δ_ij λ_i²) (Wishart)
    var_xx = n * (np.outer(LAM, LAM) + h**2)
    assert np.all(np.abs(sxx.mean(0) - n * h) < 5 * np.sqrt(var_xx / draws))
    assert np.all(np.abs(sxx.var(0) / var_xx - 1) < 5 * np.sqrt(2 / draws) * 1.5)
    # Σxy: mean nHw*; Σy²: mean n(w*ᵀHw* + σ²), variance 2n(w*ᵀHw* + σ²)²
    s2 = w_star @ h @ w_star + VAR
    assert np.all(np.abs(sxy.mean(0) - n * LAM * w_star) < 5 * sxy.std(0) / np.sqrt(draws))
    se_yy = np.sqrt(2 * n * s2**2 / draws)
    assert abs(syy.mean() - n * s2) < 5 * se_yy
    assert abs(LAM.size * VAR) > 5 * se_yy  # χ²(n) in place of χ²(n − d) would be rejected
    assert syy.var() / (2 * n * s2**2) == pytest.approx(1.0, abs=5 * np.sqrt(2 / draws) * 2)
    # The gradient at w, (Σxxᵀ w − Σxy)/n: mean Hu and covariance Σ/n (the problem's exact Σ)
    w = w_star + U
    g = (sxx @ w - sxy) / n
    hu = LAM * U
    sigma_exact = np.outer(hu, hu) + (U @ hu + VAR) * h
    dev = g - g.mean(0)
    products = n * dev[:, :, None] * dev[:, None, :]
    assert np.all(np.abs(g.mean(0) - hu) < 5 * g.std(0) / np.sqrt(draws))
    assert np.all(np.abs(products.mean(0) - sigma_exact) < 5 * products.std(0) / np.sqrt(draws))


def test_sgd_on_sufficient_statistics_follows_the_exact_expected_loss_at_any_batch_size():
    # batches twice the examples the nominal sampler could permute, trained to the stationary loss, where the
    # excess over the floor is the gradient noise's alone
    b, lr, steps, runs = 2**21, 1.0, 150, 32
    finals = []
    for seed in range(runs):
        p = NoisyLinearProblem(dim=8, power=1.0, noise_var=0.25, data_seed=3, seed=seed, statistics=True)
        model = p.build_model()
        for _ in range(steps):
            model.zero_grad()
            p.loss(model, p.batch(torch.empty(b))).backward()
            with torch.no_grad():
                model.weight -= lr * model.weight.grad
        finals.append(p.evaluate(model)["loss"] - p.loss_floor)
    finals = np.array(finals)
    exact = noisy_linear_expected_loss(p.eigenvalues, p.u0, 0.25, b, lr, steps)[-1] - p.loss_floor
    assert abs(finals.mean() - exact) < 5 * finals.std() / np.sqrt(runs)
    full_batch = noisy_linear_expected_loss(p.eigenvalues, p.u0, 0.25, np.inf, lr, steps)[-1] - p.loss_floor
    assert full_batch < 0.01 * exact  # what is left of the excess is the noise of 2 M examples


def test_statistics_batches_train_in_sweeps_with_micro_batch_noise_and_a_step_cap(tmp_path):
    from gns_utils.experiments.config import ConfigError, make_experiment
    from gns_utils.experiments.profiles import presets
    from gns_utils.experiments.sweep import run_sweep
    from gns_utils.experiments.train import train_run

    preset = presets("synthetic", "smoke")[1]
    assert preset["data_kwargs"]["statistics"] and preset["noise_method"] == "micro_batch"
    exp = make_experiment(preset, {})
    problem = make_problem(exp)
    assert problem.statistics and problem.groups == exp.n_micro
    cfg = exp.run(2**21, 1.0, max_steps=7, budget_examples=2**21 * 100)  # over the nominal 2**20 examples
    summary = train_run(problem, cfg, tmp_path, progress=False)
    assert summary["status"] == "budget_exhausted" and summary["n_steps"] == 7
    metrics = (tmp_path / cfg.task / "runs" / cfg.run_id / "metrics.csv").read_text()
    assert "b_simple" in metrics.splitlines()[0]
    with pytest.raises(ConfigError, match="micro_batch"):  # when the config is made, before any data or run
        make_experiment(preset, {"noise_method": "auto"})
    with pytest.raises(ConfigError, match="micro_batch"):  # and for a problem drawn as sums however it was made
        run_sweep(make_experiment({**preset, "data_kwargs": {**preset["data_kwargs"], "statistics": False}},
                                  {"noise_method": "auto"}), tmp_path / "auto", progress=False,
                  problem=problem)
    with pytest.raises(ConfigError, match="max_steps"):
        make_experiment(preset, {"max_steps": 0})


def test_an_unset_step_cap_leaves_the_run_ids_as_they_were():
    from gns_utils.experiments.config import make_experiment
    from gns_utils.experiments.profiles import presets
    from gns_utils.experiments.store import config_hash

    cfg = make_experiment(presets("synthetic", "smoke")[0], {}).run(8, 0.1)
    identity = {k: v for k, v in cfg.to_dict().items() if k not in ("device", "executor", "engine", "profile",
                                                                      "max_steps")}
    assert cfg.max_steps is None and cfg.run_id == config_hash(identity)
    assert cfg.run_id != make_experiment(presets("synthetic", "smoke")[0], {"max_steps": 10}).run(8, 0.1).run_id
