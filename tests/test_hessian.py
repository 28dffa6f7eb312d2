"""Tests of B_noise (2.8) with Hessian-vector products against exact answers.

The problems are those of ``test_noise``: linear regression on a finite dataset, sampled
with replacement, where G, Σ and H = mean x xᵀ are known in closed form. Statistical
checks use fixed seeds, a tolerance of N_SE standard errors of the mean over the random
draws, and require that standard error to resolve the effect under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gns_utils.noise import HessianNoiseScale, combine_hessian_noise_scales, hessian_noise_scale
from test_noise import N_SE, SHARP_OFFSET, Exact, assert_unbiased, make_exact, mse_half

pytestmark = pytest.mark.usefixtures("float64_one_thread")  # conftest.py


# ----------------------------------------------------------------------------- B_noise


def test_hessian_population_exact(exact: Exact) -> None:
    x, y = exact.tensors(np.arange(len(exact.X)))
    res = hessian_noise_scale(exact.model(), mse_half, x, y, chunk_size=7, population=True)
    assert res.trace_h_sigma == pytest.approx(exact.trace_h_sigma, rel=1e-8)
    assert res.g_h_g == pytest.approx(exact.g_h_g, rel=1e-8)
    assert res.b_noise == pytest.approx(exact.trace_h_sigma / exact.g_h_g, rel=1e-8)
    assert res.g2 == pytest.approx(exact.g2, rel=1e-8) and res.b_simple == pytest.approx(exact.b_simple, rel=1e-8)
    assert abs(res.b_noise / res.b_simple - 1) > 0.05  # H is not ∝ I here
    assert res.n == len(exact.X) and res.population


def test_hessian_isotropic_b_noise_equals_b_simple() -> None:
    iso = make_exact(n_points=32, seed=9, isotropic=True)
    np.testing.assert_allclose(iso.H, np.eye(4), atol=1e-12)
    res = hessian_noise_scale(iso.model(), mse_half, *iso.tensors(np.arange(32)), population=True)
    assert res.b_noise == pytest.approx(res.b_simple, rel=1e-10)
    assert res.b_noise == pytest.approx(iso.b_simple, rel=1e-8)


@pytest.fixture(scope="module")
def sharp() -> Exact:
    """The same data with w off the optimum along high curvature: B_noise ≈ 2, GᵀHG resolvable at n = 6."""
    return make_exact(offset=SHARP_OFFSET)


@pytest.mark.parametrize("problem, n, n_hessian", [("exact", 6, 8), ("sharp", 24, 32)])
def test_hessian_sample_mode_unbiased(problem: str, n: int, n_hessian: int, request: pytest.FixtureRequest) -> None:
    # n gradients and an independent Hessian batch per draw, 250 draws. On `exact`
    # (B_noise ≈ 65, n = 6) GᵀHG ≈ ĝᵀHĝ − tr(HΣ)/n is mostly correction: the tolerance must be
    # below half the correction (dropping it, or the |G|^2 one, fails). On `sharp`
    # (B_noise ≈ 2) GᵀHG and |G|^2 themselves are resolved to 25 %.
    ex: Exact = request.getfixturevalue(problem)
    rng = np.random.default_rng(10)
    model = ex.model()
    res = []
    for _ in range(250):
        hx, hy = ex.tensors(rng.integers(0, 40, n_hessian))  # an independent batch for H
        res.append(hessian_noise_scale(model, mse_half, *ex.tensors(rng.integers(0, 40, n)),
                                       hessian_inputs=hx, hessian_targets=hy))
    g_h_g_resolve = 0.5 * ex.trace_h_sigma / n if problem == "exact" else 0.25 * ex.g_h_g
    g2_resolve = 0.5 * ex.trace_sigma / n if problem == "exact" else 0.25 * ex.g2
    assert_unbiased([r.trace_h_sigma for r in res], ex.trace_h_sigma, "tr(HΣ)", resolve=0.3 * ex.trace_h_sigma)
    assert_unbiased([r.g_h_g for r in res], ex.g_h_g, "GᵀHG", resolve=g_h_g_resolve)
    assert_unbiased([r.trace_sigma for r in res], ex.trace_sigma, "tr Σ", resolve=0.3 * ex.trace_sigma)
    assert_unbiased([r.g2 for r in res], ex.g2, "|G|^2", resolve=g2_resolve)


def test_hessian_bad_inputs(exact: Exact) -> None:
    model = exact.model()
    x, y = exact.tensors(np.arange(4))
    with pytest.raises(ValueError, match="together"):
        hessian_noise_scale(model, mse_half, x, y, hessian_inputs=x)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="directions must be"):
            hessian_noise_scale(model, mse_half, x, y, directions=bad)
    drop = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1), nn.Linear(4, 1)).train()
    with pytest.raises(ValueError, match="dropout '1' is in train mode"):
        hessian_noise_scale(drop, mse_half, x, y)


def sample_formulas(ex: Exact, idx: np.ndarray, hessian_idx: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The sample-mode estimates, vectorised over draws (rows of ``idx``), with
    ``Ĥ = mean x xᵀ`` over ``hessian_idx``'s rows, or over the same examples when None."""
    n = idx.shape[1]
    g = ex.g[idx]
    mean = g.mean(1)
    d = g - mean[:, None]
    xh = ex.X[idx if hessian_idx is None else hessian_idx]
    h = np.einsum("rmi,rmj->rij", xh, xh) / xh.shape[1]
    trace_sigma = np.einsum("rni,rni->r", d, d) / (n - 1)
    trace_h_sigma = np.einsum("rni,rij,rnj->r", d, h, d) / (n - 1)
    return {"trace_sigma": trace_sigma, "g2": (mean**2).sum(1) - trace_sigma / n, "trace_h_sigma": trace_h_sigma,
            "g_h_g": np.einsum("ri,rij,rj->r", mean, h, mean) - trace_h_sigma / n}


def test_hessian_from_the_same_examples_is_biased(exact: Exact) -> None:
    # H from the gradient examples themselves (the default) is correlated with the d_i:
    # tr(HΣ) comes out too high by O(1/n); a separate Hessian batch removes the bias.
    rng = np.random.default_rng(12)
    model = exact.model()
    # the library computes exactly the sample formulas, draw by draw, in both modes
    idx, hidx = rng.integers(0, 40, (4, 6)), rng.integers(0, 40, (4, 8))
    same, separate = sample_formulas(exact, idx), sample_formulas(exact, idx, hidx)
    for r in range(len(idx)):
        a = hessian_noise_scale(model, mse_half, *exact.tensors(idx[r]))
        hx, hy = exact.tensors(hidx[r])
        b = hessian_noise_scale(model, mse_half, *exact.tensors(idx[r]), hessian_inputs=hx, hessian_targets=hy)
        for key in same:
            assert getattr(a, key) == pytest.approx(same[key][r], rel=1e-9), key
            assert getattr(b, key) == pytest.approx(separate[key][r], rel=1e-9), key
    # ... whose means over 40,000 draws measure the bias
    bias = {}
    for n in (6, 32):
        idx, hidx = rng.integers(0, 40, (40_000, n)), rng.integers(0, 40, (40_000, 8))
        rel_same = sample_formulas(exact, idx)["trace_h_sigma"] / exact.trace_h_sigma - 1
        rel_separate = sample_formulas(exact, idx, hidx)["trace_h_sigma"] / exact.trace_h_sigma - 1
        bias[n] = rel_same.mean()
        assert bias[n] > N_SE * rel_same.std() / math.sqrt(len(idx)), f"n={n}: no significant bias"
        assert_unbiased(rel_separate, 0.0, f"n={n}: separate-batch tr(HΣ) / exact − 1", resolve=0.02)
    assert 0.25 < bias[6] < 0.4 and 0.04 < bias[32] < 0.08  # +31 % and +6 % here
    assert 3.5 < bias[6] / bias[32] < 8  # O(1/n): 32/6 ≈ 5.3


def gaussian_regression(n_points: int = 50, seed: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x ~ N(0, diag λ), y = xᵀw* + noise on a fixed finite dataset; w away from w*."""
    rng = np.random.default_rng(seed)
    lam = np.array([0.2, 1.0, 4.0])
    X = rng.normal(size=(n_points, 3)) * np.sqrt(lam)
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.3 * rng.normal(size=n_points)
    return X, y, np.array([0.4, -1.0, 0.7])


def linear_model(w: np.ndarray) -> nn.Module:
    model = nn.Linear(len(w), 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(w)[None])
    return model


def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``F.mse_loss``: mean of (xᵀw − y)², i.e. g_i = 2 x_i (x_iᵀw − y_i) and H = 2 mean x xᵀ."""
    return F.mse_loss(out.squeeze(-1), target)


def test_hessian_linear_regression_with_mse_loss() -> None:
    # the textbook case: H = 2 E[x xᵀ] does not depend on w; F.mse_loss (mean reduction)
    X, y, w = gaussian_regression()
    g = 2 * X * (X @ w - y)[:, None]
    G, H = g.mean(0), 2 * X.T @ X / len(X)
    sigma = (g - G).T @ (g - G) / len(X)
    x_t, y_t = torch.from_numpy(X), torch.from_numpy(y)
    res = hessian_noise_scale(linear_model(w), mse, x_t, y_t, chunk_size=8, population=True)
    assert res.trace_h_sigma == pytest.approx(np.trace(H @ sigma), rel=1e-9)
    assert res.g_h_g == pytest.approx(G @ H @ G, rel=1e-9)
    assert res.trace_sigma == pytest.approx(np.trace(sigma), rel=1e-9)
    assert res.g2 == pytest.approx(G @ G, rel=1e-9)
    assert res.b_noise == pytest.approx(np.trace(H @ sigma) / (G @ H @ G), rel=1e-9)
    # sample mode with a separate Hessian batch: the sample formulas with Ĥ = 2 X_hᵀX_h / m
    gs, Xh = g[:20], X[30:]
    Hh = 2 * Xh.T @ Xh / len(Xh)
    d = gs - gs.mean(0)
    res = hessian_noise_scale(linear_model(w), mse, x_t[:20], y_t[:20], hessian_inputs=x_t[30:],
                              hessian_targets=y_t[30:])
    trace_h_sigma = np.einsum("ij,jk,ik->", d, Hh, d) / 19
    assert res.trace_h_sigma == pytest.approx(trace_h_sigma, rel=1e-9)
    assert res.g_h_g == pytest.approx(gs.mean(0) @ Hh @ gs.mean(0) - trace_h_sigma / 20, rel=1e-9)


# ----------------------------------------------------------------------------- random directions


def test_hessian_random_directions_unbiased_with_predicted_spread(exact: Exact) -> None:
    # Σ_i d_iᵀHd_i from k Rademacher combinations: unbiased, variance 2 Σ_{i≠l} (d_iᵀHd_l)^2 / k
    x, y = exact.tensors(np.arange(len(exact.X)))
    model = exact.model()
    d = exact.g - exact.G
    a = d @ exact.H @ d.T
    off_diagonal = (a**2).sum() - (np.diag(a) ** 2).sum()
    for k, seeds in ((4, 300), (256, 60)):
        res = [hessian_noise_scale(model, mse_half, x, y, population=True, directions=k, chunk_size=64,
                                   generator=torch.Generator().manual_seed(s)) for s in range(seeds)]
        assert res[0].directions == k and res[0].trace_sigma == pytest.approx(exact.trace_sigma, rel=1e-10)
        values = np.array([r.trace_h_sigma for r in res])
        assert_unbiased(values, exact.trace_h_sigma, f"tr(HΣ), k={k}", resolve=0.2 * exact.trace_h_sigma)
        predicted = math.sqrt(2 * off_diagonal / k) / len(exact.X)
        spread = values.std(ddof=1)
        # the sample standard deviation's relative SE, from the fourth moment (≈ 7 % for k = 4, ≈ 11 % for k = 256)
        kurtosis = np.mean((values - values.mean()) ** 4) / spread**4
        rel_se = math.sqrt((kurtosis - (seeds - 3) / (seeds - 1)) / seeds) / 2
        assert abs(spread / predicted - 1) < N_SE * rel_se, f"k={k}: spread {spread:.3g}, predicted {predicted:.3g}"
    assert predicted < 0.1 * exact.trace_h_sigma  # k = 256: within 10 % (here HΣ has effective rank 1.1)
    # the same signs give the same answer; other chunkings of the directions too
    one = hessian_noise_scale(model, mse_half, x, y, directions=8, generator=torch.Generator().manual_seed(3))
    two = hessian_noise_scale(model, mse_half, x, y, directions=8, chunk_size=3,
                              generator=torch.Generator().manual_seed(3))
    assert one.trace_h_sigma == pytest.approx(two.trace_h_sigma, rel=1e-10)


def test_hessian_random_directions_on_a_network() -> None:
    # a tanh network (H varies with w, need not be positive semi-definite): the mean over seeds
    # of the k = 8 estimate matches the exact per-example sum, in sample mode with a separate H batch
    torch.manual_seed(13)
    net = nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 3)).eval()
    x, y = torch.randn(48, 5), torch.randint(0, 3, (48,))
    hx, hy = torch.randn(32, 5), torch.randint(0, 3, (32,))
    ref = hessian_noise_scale(net, F.cross_entropy, x, y, hessian_inputs=hx, hessian_targets=hy)
    res = [hessian_noise_scale(net, F.cross_entropy, x, y, hessian_inputs=hx, hessian_targets=hy, directions=8,
                               generator=torch.Generator().manual_seed(s)) for s in range(150)]
    assert_unbiased([r.trace_h_sigma for r in res], ref.trace_h_sigma, "tr(HΣ)", resolve=0.1 * ref.trace_h_sigma)
    for r in res:  # ĝᵀHĝ is exact; only the correction −tr(HΣ)/n carries the random directions
        assert r.g_h_g - ref.g_h_g == pytest.approx(-(r.trace_h_sigma - ref.trace_h_sigma) / 48, abs=1e-12)
        assert r.trace_sigma == pytest.approx(ref.trace_sigma, rel=1e-10)


# ----------------------------------------------------------------------------- repeats


def test_combine_hessian_noise_scales_by_hand() -> None:
    def result(trace_h_sigma: float, g_h_g: float, trace_sigma: float, g2: float) -> HessianNoiseScale:
        return HessianNoiseScale(b_noise=trace_h_sigma / g_h_g, b_simple=trace_sigma / g2, trace_h_sigma=trace_h_sigma,
                                 g_h_g=g_h_g, g2=g2, trace_sigma=trace_sigma, n=8, population=False)

    results = [result(4.0, 1.0, 10.0, 2.0), result(6.0, 2.0, 12.0, -1.0), result(5.0, 0.5, 8.0, 3.0),
               result(9.0, 1.5, 14.0, 2.0)]
    combined = combine_hessian_noise_scales(results)
    # ratios of means: 24 / 5 and 44 / 6; leave-one-out ratios, SE² = (r−1)/r Σ (R_(j) − mean R_(.))²
    assert combined.b_noise == pytest.approx(24 / 5) and combined.b_simple == pytest.approx(44 / 6)
    for estimate, num, den in ((combined.b_noise_stderr, [4, 6, 5, 9], [1, 2, 0.5, 1.5]),
                               (combined.b_simple_stderr, [10, 12, 8, 14], [2, -1, 3, 2])):
        loo = [(sum(num) - num[j]) / (sum(den) - den[j]) for j in range(4)]
        mean = sum(loo) / 4
        assert estimate == pytest.approx(math.sqrt(3 / 4 * sum((v - mean) ** 2 for v in loo)))
    assert (combined.trace_h_sigma, combined.g_h_g, combined.trace_sigma, combined.g2) == (6.0, 1.25, 11.0, 1.5)
    assert combined.repeats == 4
    with pytest.raises(ValueError, match="at least 2 repeats"):
        combine_hessian_noise_scales(results[:1])
    with pytest.raises(ValueError, match="mix sample and population"):
        combine_hessian_noise_scales([results[0], HessianNoiseScale(1, 1, 1, 1, 1, 1, 8, True)])


def test_combined_repeats_recover_b_noise(sharp: Exact) -> None:
    # 60 repeats, each with its own 24 gradient examples and 32 Hessian examples
    rng = np.random.default_rng(14)
    model = sharp.model()
    results = []
    for _ in range(60):
        hx, hy = sharp.tensors(rng.integers(0, 40, 32))
        results.append(hessian_noise_scale(model, mse_half, *sharp.tensors(rng.integers(0, 40, 24)),
                                           hessian_inputs=hx, hessian_targets=hy, directions=4))
    combined = combine_hessian_noise_scales(results)
    b_noise = sharp.trace_h_sigma / sharp.g_h_g
    # B_noise's SE is ≈ 0.1 × B_noise, but a jackknife SE over 60 repeats of a ratio with a noisy denominator is
    # itself noisy: up to 0.22 × B_noise over 2,000 simulated seeds (B_simple's: up to 0.07 × B_simple)
    assert combined.b_noise_stderr < 0.25 * b_noise and combined.b_simple_stderr < 0.1 * sharp.b_simple
    assert abs(combined.b_noise - b_noise) < N_SE * combined.b_noise_stderr
    assert abs(combined.b_simple - sharp.b_simple) < N_SE * combined.b_simple_stderr
