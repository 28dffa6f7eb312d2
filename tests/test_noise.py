"""Tests of gns_utils.noise against exact answers.

The exact problem is linear regression on a finite dataset of N points, sampled with
replacement: per-example loss ½(xᵀw − y)², per-example gradient g_i = x_i(x_iᵀw − y_i),
G = mean g_i, Σ = population covariance of the g_i, H = mean x xᵀ (anisotropic features,
w away from the optimum). Statistical checks use fixed seeds and a tolerance of
4 standard errors of the mean over the random batches.
"""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gns_utils.noise import (
    GradientNoiseMonitor,
    NoiseEstimate,
    NoiseScaleEMA,
    NoiseSource,
    PerExampleNormMonitor,
    data_parallel_estimate,
    hessian_noise_scale,
    per_example_estimate,
    ratio_of_means_jackknife,
    two_batch_estimates,
)

N_SE = 4.0  # tolerance of every statistical check, in standard errors
SHARP_OFFSET = (0.05, 0.1, -0.3, 0.3)  # make_exact(offset=...): w off the optimum along high curvature, B_noise ≈ 2


# float64 and one thread for every test here (the fixture lives in conftest.py)
pytestmark = pytest.mark.usefixtures("float64_one_thread")


# ----------------------------------------------------------------------------- helpers


@dataclass
class Exact:
    """A linear-regression problem with everything in closed form."""

    X: np.ndarray  # [N, d]
    y: np.ndarray  # [N]
    w: np.ndarray  # [d]
    g: np.ndarray  # per-example gradients [N, d]
    G: np.ndarray
    sigma: np.ndarray
    H: np.ndarray

    @property
    def g2(self) -> float:
        return float(self.G @ self.G)

    @property
    def trace_sigma(self) -> float:
        return float(np.trace(self.sigma))

    @property
    def b_simple(self) -> float:
        return self.trace_sigma / self.g2

    @property
    def trace_h_sigma(self) -> float:
        return float(np.trace(self.H @ self.sigma))

    @property
    def g_h_g(self) -> float:
        return float(self.G @ self.H @ self.G)

    def model(self) -> nn.Module:
        model = nn.Linear(self.X.shape[1], 1, bias=False)
        with torch.no_grad():
            model.weight.copy_(torch.from_numpy(self.w)[None])
        return model

    def tensors(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.X[idx]), torch.from_numpy(self.y[idx])


def mse_half(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over examples of ½(xᵀw − y)²."""
    return 0.5 * ((out.squeeze(-1) - target) ** 2).mean()


def make_exact(n_points: int = 40, dim: int = 4, seed: int = 0, isotropic: bool = False,
               offset: tuple[float, ...] = (1.0, -0.8, 0.1, 0.05)) -> Exact:
    """``w = w_opt + offset``; the default offset lies mostly along low curvature (B_noise ≈ 65)."""
    rng = np.random.default_rng(seed)
    if isotropic:  # orthogonal design: Xᵀ X / N = I, so H = I
        q, _ = np.linalg.qr(rng.normal(size=(n_points, dim)))
        X = q * math.sqrt(n_points)
    else:
        X = rng.normal(size=(n_points, dim)) * np.array([0.3, 0.7, 1.5, 3.0])[:dim]
    y = X @ rng.normal(size=dim) + 0.5 * rng.normal(size=n_points)
    w_opt = np.linalg.lstsq(X, y, rcond=None)[0]  # G = 0 there
    w = w_opt + np.array(offset)[:dim]  # off the optimum
    g = X * (X @ w - y)[:, None]
    G = g.mean(0)
    sigma = (g - G).T @ (g - G) / n_points
    return Exact(X=X, y=y, w=w, g=g, G=G, sigma=sigma, H=X.T @ X / n_points)


def assert_unbiased(samples: np.ndarray, truth: float, label: str, resolve: float | None = None) -> None:
    """The mean of ``samples`` is within N_SE standard errors of ``truth``; with ``resolve``,
    that tolerance must also be below ``resolve`` (so an error of that size would fail)."""
    samples = np.asarray(samples, float)
    se = samples.std(ddof=1) / math.sqrt(len(samples))
    message = f"{label}: mean {samples.mean():.5g} vs exact {truth:.5g} (SE {se:.3g})"
    assert abs(samples.mean() - truth) < N_SE * se, message
    if resolve is not None:
        assert N_SE * se < resolve, f"{label}: tolerance {N_SE * se:.3g} cannot resolve an error of {resolve:.3g}"


def monitor_step(model: nn.Module, monitor: GradientNoiseMonitor, loss_fn, parts, scales=None):
    """One accumulation step over micro-batches ``parts``; default n_j/N scaling."""
    total = sum(len(x) for x, _ in parts)
    for p in model.parameters():
        p.grad = None
    for j, (x, y) in enumerate(parts):
        scale = len(x) / total if scales is None else scales[j]
        (loss_fn(model(x), y) * scale).backward()
        monitor.after_micro_batch(len(x), None if scales is None else scales[j])
    return monitor.after_step()


# ----------------------------------------------------------------------------- two_batch_estimates


def test_two_batch_inverts_expected_norms(exact: Exact) -> None:
    # E|G_B|^2 = |G|^2 + tr Σ / B (A.1); A.2 must return |G|^2 and tr Σ exactly
    sq = {b: exact.g2 + exact.trace_sigma / b for b in (3, 24)}
    est = two_batch_estimates(sq[3], sq[24], 3, 24)
    assert isinstance(est.g2, float)
    assert est.g2 == pytest.approx(exact.g2, rel=1e-12)
    assert est.trace_sigma == pytest.approx(exact.trace_sigma, rel=1e-12)
    assert (est.b_small, est.b_big) == (3.0, 24.0)


def test_two_batch_elementwise_types() -> None:
    small, big = np.array([5.0, 2.0, 1.0]), np.array([1.0, 1.5, 0.9])
    est_np = two_batch_estimates(small, big, 2, 8)
    est_t = two_batch_estimates(torch.from_numpy(small), torch.from_numpy(big), 2, 8)
    assert isinstance(est_np.g2, np.ndarray) and isinstance(est_t.trace_sigma, torch.Tensor)
    for i in range(3):
        one = two_batch_estimates(float(small[i]), float(big[i]), 2, 8)
        assert est_np.g2[i] == pytest.approx(one.g2) and float(est_t.g2[i]) == pytest.approx(one.g2)
        assert est_np.trace_sigma[i] == pytest.approx(one.trace_sigma)
        assert float(est_t.trace_sigma[i]) == pytest.approx(one.trace_sigma)


def test_two_batch_unbiased_on_random_batches(exact: Exact) -> None:
    rng = np.random.default_rng(1)
    idx = rng.integers(0, len(exact.X), size=(400, 16))
    big = exact.g[idx].mean(1)  # batches of 16
    small = exact.g[idx[:, :4]].mean(1)  # their first 4 examples
    est = two_batch_estimates((small**2).sum(1), (big**2).sum(1), 4, 16)
    assert_unbiased(est.g2, exact.g2, "g2")
    assert_unbiased(est.trace_sigma, exact.trace_sigma, "trace_sigma")


@pytest.mark.parametrize(
    "args, match",
    [
        ((1.0, 0.5, 8, 8), "b_big must be larger than b_small"),
        ((1.0, 0.5, 8, 4), "b_big must be larger than b_small"),
        ((1.0, 0.5, 0.5, 4), "b_small must be >= 1"),
        ((-1.0, 0.5, 1, 4), "sq_norm_small .* non-negative"),
        ((1.0, np.array([0.5, -0.1]), 1, 4), "sq_norm_big .* non-negative"),
        ((math.nan, 0.5, 1, 4), "sq_norm_small must be finite"),
        ((1.0, torch.tensor([0.5, math.inf]), 1, 4), "sq_norm_big must be finite"),
    ],
)
def test_two_batch_bad_inputs(args, match) -> None:
    with pytest.raises(ValueError, match=match):
        two_batch_estimates(*args)


# ----------------------------------------------------------------------------- per-example source


@pytest.mark.parametrize("method", ["func", "layerwise"])
def test_per_example_matches_sample_formulas(exact: Exact, method: str) -> None:
    idx = np.arange(0, 40, 3)
    x, y = exact.tensors(idx)
    est = per_example_estimate(exact.model(), mse_half, x, y, chunk_size=5, method=method)
    g = exact.g[idx]
    trace = ((g - g.mean(0)) ** 2).sum() / (len(g) - 1)
    assert est.trace_sigma == pytest.approx(trace, rel=1e-10)
    assert est.g2 == pytest.approx((g.mean(0) ** 2).sum() - trace / len(g), rel=1e-10)
    assert (est.b_small, est.b_big) == (1.0, float(len(idx)))


@pytest.mark.parametrize("method", ["func", "layerwise"])
def test_per_example_unbiased(exact: Exact, method: str) -> None:
    rng = np.random.default_rng(2)
    model = exact.model()
    ests = [per_example_estimate(model, mse_half, *exact.tensors(rng.integers(0, 40, 6)), method=method)
            for _ in range(300)]
    assert_unbiased([e.g2 for e in ests], exact.g2, "g2")
    assert_unbiased([e.trace_sigma for e in ests], exact.trace_sigma, "trace_sigma")


def test_per_example_chunking_and_accumulate_grad() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 7), nn.Tanh(), nn.Linear(7, 4))
    x, y = torch.randn(11, 3), torch.randint(0, 4, (11,))
    ref = per_example_estimate(model, F.cross_entropy, x, y, chunk_size=100, method="func")
    for method, chunk in (("func", 3), ("layerwise", 3), ("layerwise", 100)):
        est = per_example_estimate(model, F.cross_entropy, x, y, chunk_size=chunk, method=method)
        assert est.g2 == pytest.approx(ref.g2, rel=1e-10)
        assert est.trace_sigma == pytest.approx(ref.trace_sigma, rel=1e-10)
    F.cross_entropy(model(x), y).backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    per_example_estimate(model, F.cross_entropy, x, y, accumulate_grad=True)
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, e)


def test_layerwise_matches_func_on_conv_net() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(2, 3, (3, 5), stride=(2, 1), dilation=(1, 2), padding=(1, 3)), nn.ReLU(),
        nn.Conv2d(3, 4, 3, padding="same", bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(4 * 3 * 4, 5),
    )
    x, y = torch.randn(9, 2, 11, 10), torch.randint(0, 5, (9,))
    a = per_example_estimate(net, F.cross_entropy, x, y, chunk_size=4, method="func")
    b = per_example_estimate(net, F.cross_entropy, x, y, chunk_size=4, method="layerwise")
    assert b.g2 == pytest.approx(a.g2, rel=1e-9) and b.trace_sigma == pytest.approx(a.trace_sigma, rel=1e-9)


def test_per_example_sequence_model_gram_path() -> None:
    # Linear layers on [n, T, features] inputs: per-example gradient sums over T (Gram path)
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 40), nn.Flatten())
    x, y = torch.randn(7, 3, 6), torch.randint(0, 120, (7,))
    a = per_example_estimate(net, F.cross_entropy, x, y, method="func")
    b = per_example_estimate(net, F.cross_entropy, x, y, method="layerwise", units_per_example=3)
    # a sequence of 3 units acts like a batch of 3: tr Σ per unit = 3 × tr Σ per sequence
    assert b.trace_sigma == pytest.approx(3 * a.trace_sigma, rel=1e-10)
    assert b.g2 == pytest.approx(a.g2, rel=1e-10) and (b.b_small, b.b_big) == (3.0, 21.0)


def test_per_example_dropout_train_mode_runs() -> None:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3)).train()
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
    for method in ("func", "layerwise"):
        est = per_example_estimate(net, F.cross_entropy, x, y, method=method)
        assert math.isfinite(est.g2) and est.trace_sigma > 0


def test_per_example_bad_inputs(exact: Exact) -> None:
    x, y = exact.tensors(np.arange(5))
    with pytest.raises(ValueError, match="at least 2 examples"):
        per_example_estimate(exact.model(), mse_half, x[:1], y[:1])
    with pytest.raises(ValueError, match="differ in length"):
        per_example_estimate(exact.model(), mse_half, x, y[:3])
    with pytest.raises(ValueError, match="chunk_size"):
        per_example_estimate(exact.model(), mse_half, x, y, chunk_size=0)
    with pytest.raises(ValueError, match="method must be"):
        per_example_estimate(exact.model(), mse_half, x, y, method="magic")
    bn = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).train()
    with pytest.raises(ValueError, match="BatchNorm in train mode"):
        per_example_estimate(bn, F.cross_entropy, x.float().double(), torch.zeros(5, dtype=torch.long))
    emb = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 3))
    with pytest.raises(ValueError, match="cannot handle this model.*Embedding"):
        per_example_estimate(emb, F.cross_entropy, torch.arange(5), torch.zeros(5, dtype=torch.long),
                             method="layerwise")


def test_per_example_falls_back_to_func_with_buffers() -> None:
    # an eval-mode BatchNorm has trainable parameters (not Linear/Conv) and buffers: auto → func
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3))
    net(torch.randn(64, 4))  # populate the running statistics
    net.eval()
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    est = per_example_estimate(net, F.cross_entropy, x, y)
    ref = per_example_estimate(net, F.cross_entropy, x, y, method="func", chunk_size=3)
    assert est.trace_sigma == pytest.approx(ref.trace_sigma, rel=1e-10)


# ----------------------------------------------------------------------------- micro-batch source


def test_monitor_matches_formula_and_is_a_noise_source(exact: Exact) -> None:
    model = exact.model()
    monitor = GradientNoiseMonitor(model.parameters())
    assert isinstance(monitor, NoiseSource)
    idx = np.arange(16)
    parts = [exact.tensors(idx[4 * j:4 * j + 4]) for j in range(4)]
    est = monitor_step(model, monitor, mse_half, parts)
    micro = [exact.g[idx[4 * j:4 * j + 4]].mean(0) for j in range(4)]
    ref = two_batch_estimates(float(np.mean([(m**2).sum() for m in micro])), float((exact.g[idx].mean(0) ** 2).sum()),
                              4, 16)
    assert est.g2 == pytest.approx(ref.g2, rel=1e-10) and est.trace_sigma == pytest.approx(ref.trace_sigma, rel=1e-10)
    assert (est.b_small, est.b_big) == (4.0, 16.0)
    # loss_scale = 1/k is the same convention for equal micro-batches
    est_k = monitor_step(model, monitor, mse_half, parts, scales=[0.25] * 4)
    assert est_k.g2 == pytest.approx(est.g2, rel=1e-10)
    assert monitor.n_steps == 2 and monitor.n_skipped == 0


def test_monitor_ignores_the_functional_estimators(exact: Exact) -> None:
    # per_example_estimate and hessian_noise_scale never fire the monitor's parameter hooks
    model = exact.model()
    monitor = GradientNoiseMonitor(model.parameters())
    x, y = exact.tensors(np.arange(12))
    parts = list(zip(x.split(6), y.split(6)))
    clean = monitor_step(model, monitor, mse_half, parts)
    model.zero_grad(set_to_none=True)
    for xb, yb in parts:
        (mse_half(model(xb), yb) * 0.5).backward()
        for method in ("func", "layerwise"):
            per_example_estimate(model, mse_half, x, y, method=method)
        hessian_noise_scale(model, mse_half, x, y)
        monitor.after_micro_batch(6)
    est = monitor.after_step()
    assert est.g2 == pytest.approx(clean.g2, rel=1e-12)
    assert est.trace_sigma == pytest.approx(clean.trace_sigma, rel=1e-12)


def test_monitor_unbiased(exact: Exact) -> None:
    rng = np.random.default_rng(3)
    model = exact.model()
    monitor = GradientNoiseMonitor(model.parameters())
    ests = []
    for _ in range(300):
        x, y = exact.tensors(rng.integers(0, 40, 16))
        ests.append(monitor_step(model, monitor, mse_half, list(zip(x.split(4), y.split(4)))))
    assert_unbiased([e.g2 for e in ests], exact.g2, "g2")
    assert_unbiased([e.trace_sigma for e in ests], exact.trace_sigma, "trace_sigma")


@pytest.mark.parametrize("scaling", ["n_j/N", "1/k"])
def test_monitor_unequal_micro_batches_unbiased(exact: Exact, scaling: str) -> None:
    rng = np.random.default_rng(4)
    sizes = [2, 3, 5, 6]
    scales = None if scaling == "n_j/N" else [1 / len(sizes)] * len(sizes)
    model = exact.model()
    monitor = GradientNoiseMonitor(model.parameters())
    ests = []
    for _ in range(300):
        x, y = exact.tensors(rng.integers(0, 40, sum(sizes)))
        ests.append(monitor_step(model, monitor, mse_half, list(zip(x.split(sizes), y.split(sizes))), scales))
    # E|g_j|^2 = |G|^2 + tr Σ/n_j; E|Σ w_j g_j|^2 = |G|^2 + tr Σ Σ w_j²/n_j with w_j = s_j / Σ s
    assert ests[0].b_small == pytest.approx(1 / np.mean(1 / np.array(sizes)))  # 10/3
    assert ests[0].b_big == pytest.approx(16.0 if scaling == "n_j/N" else 1 / np.sum(1 / 16 / np.array(sizes)))
    assert_unbiased([e.g2 for e in ests], exact.g2, "g2")
    assert_unbiased([e.trace_sigma for e in ests], exact.trace_sigma, "trace_sigma")


def test_monitor_skips_and_errors(exact: Exact) -> None:
    model = exact.model()
    monitor = GradientNoiseMonitor(model.parameters())
    x, y = exact.tensors(np.arange(8))
    bad_y = y.clone()
    bad_y[0] = math.inf
    assert monitor_step(model, monitor, mse_half, [(x[:4], bad_y[:4]), (x[4:], y[4:])]) is None
    assert monitor.n_skipped == 1
    assert monitor_step(model, monitor, mse_half, [(x, y)]) is None
    assert monitor.n_too_few == 1
    model.zero_grad()
    mse_half(model(x), y).backward(retain_graph=True)
    mse_half(model(x), y).backward()
    with pytest.raises(RuntimeError, match="two gradients"):
        monitor.after_micro_batch(8)
    with pytest.raises(RuntimeError, match="no gradient reached"):
        monitor.after_micro_batch(8)
    with pytest.raises(ValueError, match="units must be positive"):
        monitor.after_micro_batch(0)
    model.zero_grad()
    mse_half(model(x), y).backward()
    monitor.after_micro_batch(8, loss_scale=0.5)
    mse_half(model(x), y).backward()
    monitor.after_micro_batch(8)
    with pytest.raises(ValueError, match="loss_scale was passed for some"):
        monitor.after_step()


# ----------------------------------------------------------------------------- per-example norms in the training backward


def per_example_step(model: nn.Module, monitor: PerExampleNormMonitor, loss_fn, parts, scales=None,
                     units_per_example: float = 1.0):
    """One step over micro-batches ``parts``, forward captured, default n_j/N scaling."""
    total = sum(len(x) for x, _ in parts)
    for p in model.parameters():
        p.grad = None
    for j, (x, y) in enumerate(parts):
        scale = len(x) / total if scales is None else scales[j]
        with monitor.capture():
            loss = loss_fn(model(x), y)
        (loss * scale).backward()
        monitor.after_micro_batch(len(x) * units_per_example, None if scales is None else scales[j])
    return monitor.after_step()


def test_per_example_monitor_matches_sample_formulas(exact: Exact) -> None:
    model = exact.model()
    monitor = PerExampleNormMonitor(model)
    assert isinstance(monitor, NoiseSource)
    idx = np.arange(0, 40, 3)
    g = exact.g[idx]
    trace = ((g - g.mean(0)) ** 2).sum() / (len(g) - 1)
    for parts in ([exact.tensors(idx)], [exact.tensors(idx[:5]), exact.tensors(idx[5:])]):
        # one micro-batch, or two unequal ones with the default n_j/N scaling: the same estimate
        est = per_example_step(model, monitor, mse_half, parts)
        assert est.trace_sigma == pytest.approx(trace, rel=1e-10)
        assert est.g2 == pytest.approx((g.mean(0) ** 2).sum() - trace / len(g), rel=1e-10)
        assert est.b_small == 1.0 and est.b_big == pytest.approx(len(idx), rel=1e-12)
    assert monitor.n_steps == 2


@pytest.mark.parametrize("scaling", ["n_j/N", "1/k"])
def test_per_example_monitor_unbiased(exact: Exact, scaling: str) -> None:
    rng = np.random.default_rng(6)
    sizes = [2, 3, 5]
    scales = None if scaling == "n_j/N" else [1 / len(sizes)] * len(sizes)
    model = exact.model()
    monitor = PerExampleNormMonitor(model)
    ests = []
    for _ in range(300):
        x, y = exact.tensors(rng.integers(0, 40, sum(sizes)))
        ests.append(per_example_step(model, monitor, mse_half, list(zip(x.split(sizes), y.split(sizes))), scales))
    assert ests[0].b_small == 1.0
    assert ests[0].b_big == pytest.approx(10.0 if scaling == "n_j/N" else 1 / np.sum(1 / 9 / np.array(sizes)))
    assert_unbiased([e.g2 for e in ests], exact.g2, "g2")
    assert_unbiased([e.trace_sigma for e in ests], exact.trace_sigma, "trace_sigma")


def test_per_example_monitor_matches_torch_func_on_mlps() -> None:
    torch.manual_seed(7)
    nets = {
        "biases, in-place ReLU": nn.Sequential(nn.Linear(5, 7), nn.ReLU(inplace=True), nn.Linear(7, 3)),
        "frozen bias": nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)),
        "frozen first weight": nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)),
    }
    nets["frozen bias"][2].bias.requires_grad_(False)
    nets["frozen first weight"][0].weight.requires_grad_(False)
    x, y = torch.randn(12, 5), torch.randint(0, 3, (12,))
    for name, net in nets.items():
        est = per_example_step(net, PerExampleNormMonitor(net), F.cross_entropy, [(x[:4], y[:4]), (x[4:], y[4:])])
        ref = per_example_estimate(net, F.cross_entropy, x, y, method="func")
        assert est.g2 == pytest.approx(ref.g2, rel=1e-10), name
        assert est.trace_sigma == pytest.approx(ref.trace_sigma, rel=1e-10), name
        # the step's .grad is the ordinary batch-mean gradient
        grads = [p.grad.clone() for p in net.parameters() if p.requires_grad]
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        for g, p in zip(grads, [p for p in net.parameters() if p.requires_grad]):
            torch.testing.assert_close(g, p.grad)


def test_per_example_monitor_sequences_gram_path() -> None:
    # Linear layers on [n, T, features]: a sequence's gradient sums over its T positions
    torch.manual_seed(8)
    net = nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 40), nn.Flatten())
    x, y = torch.randn(7, 3, 6), torch.randint(0, 120, (7,))
    est = per_example_step(net, PerExampleNormMonitor(net), F.cross_entropy, [(x, y)], units_per_example=3)
    ref = per_example_estimate(net, F.cross_entropy, x, y, method="func", units_per_example=3)
    assert est.trace_sigma == pytest.approx(ref.trace_sigma, rel=1e-10)
    assert est.g2 == pytest.approx(ref.g2, rel=1e-10) and (est.b_small, est.b_big) == (3.0, 21.0)


def test_per_example_monitor_refuses_what_it_cannot_measure(exact: Exact) -> None:
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="Conv2d.*only Linear may.*use GradientNoiseMonitor"):
        PerExampleNormMonitor(conv)
    with pytest.raises(ValueError, match="BatchNorm in train mode"):
        PerExampleNormMonitor(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, affine=False)))
    assert PerExampleNormMonitor.unsupported(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, affine=False)).eval()) == ""
    shared = nn.Linear(3, 3)
    twice = nn.Sequential(shared, nn.Tanh(), shared)
    monitor = PerExampleNormMonitor(twice)
    with pytest.raises(RuntimeError, match="ran twice"), monitor.capture():
        twice(torch.randn(4, 3, requires_grad=True))

    model = exact.model()
    monitor = PerExampleNormMonitor(model)
    x, y = exact.tensors(np.arange(8))
    mse_half(model(x), y).backward()  # not captured
    with pytest.raises(RuntimeError, match="no forward was captured"):
        monitor.after_micro_batch(8)
    with monitor.capture():
        loss = mse_half(model(x), y)
    with pytest.raises(RuntimeError, match="backward reached 0 of the 1"):
        monitor.after_micro_batch(8)
    loss.backward()  # hooks of that forward still fire, but it was already given up: the next step is clean
    with torch.no_grad(), monitor.capture():
        model(x)  # evaluation inside capture is ignored
    est = per_example_step(model, monitor, mse_half, [(x, y)])
    assert est is not None and monitor.n_steps == 1
    assert per_example_step(model, monitor, mse_half, [(x[:1], y[:1])]) is None and monitor.n_too_few == 1
    with pytest.raises(ValueError, match="units must be positive"):
        monitor.after_micro_batch(0)


# ----------------------------------------------------------------------------- data-parallel source


def test_data_parallel_pure_unbiased(exact: Exact) -> None:
    rng = np.random.default_rng(5)
    world, local = 4, 3
    ests = []
    for _ in range(400):
        g = exact.g[rng.integers(0, 40, (world, local))].mean(1)  # each rank's local gradient
        local_mean_sq = float((g**2).sum(1).mean())  # what the all-reduce would give
        global_sq = float((g.mean(0) ** 2).sum())
        ests.append(data_parallel_estimate(local_mean_sq, global_sq, local, world, all_reduce=False))
    assert (ests[0].b_small, ests[0].b_big) == (3.0, 12.0)
    assert_unbiased([e.g2 for e in ests], exact.g2, "g2")
    assert_unbiased([e.trace_sigma for e in ests], exact.trace_sigma, "trace_sigma")
    with pytest.raises(ValueError, match="world_size must be >= 2"):
        data_parallel_estimate(1.0, 0.5, 4, 1)


def _dp_worker(rank: int, port: int, queue) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        est = data_parallel_estimate(torch.tensor([3.0, 5.0][rank]), 2.0, local_batch=4, world_size=2)
        queue.put((rank, est.g2, est.trace_sigma))
    finally:
        torch.distributed.destroy_process_group()


def test_data_parallel_all_reduce_two_gloo_ranks() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_dp_worker, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    ref = two_batch_estimates(4.0, 2.0, 4, 8)  # mean of the local norms 3 and 5
    for _, g2, trace in results:
        assert g2 == pytest.approx(ref.g2) and trace == pytest.approx(ref.trace_sigma)


# ----------------------------------------------------------------------------- moving averages


def sampled_estimates(exact: Exact, steps: int, b_small: int, b_big: int, seed: int) -> NoiseEstimate:
    """Per-step A.2 estimates from random batches (the small batch is part of the big one)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(exact.X), size=(steps, b_big))
    small = (exact.g[idx[:, :b_small]].mean(1) ** 2).sum(1)
    big = (exact.g[idx].mean(1) ** 2).sum(1)
    return two_batch_estimates(small, big, b_small, b_big)


def feed(ema: NoiseScaleEMA, est: NoiseEstimate) -> None:
    for g2, trace in zip(est.g2, est.trace_sigma):
        ema.update(NoiseEstimate(g2, trace, est.b_small, est.b_big))


def test_ema_debiasing_and_counters() -> None:
    ema = NoiseScaleEMA(decay=0.9)
    assert math.isnan(ema.b_simple)
    ema.update(NoiseEstimate(2.0, 10.0, 1, 4))
    assert ema.g2 == pytest.approx(2.0) and ema.b_simple == pytest.approx(5.0)  # debiased from the first step
    ema.update(NoiseEstimate(-1.0, 20.0, 1, 4))
    ema.update(NoiseEstimate(math.nan, 1.0, 1, 4))
    w = np.array([0.9, 1.0]) / 1.9  # (1-d)(d, 1) / (1 - d^2)
    assert ema.g2 == pytest.approx(w @ [2.0, -1.0]) and ema.trace_sigma == pytest.approx(w @ [10.0, 20.0])
    assert (ema.count, ema.n_negative_g2, ema.n_skipped) == (2, 1, 1)
    df = ema.to_dataframe()
    assert list(df["g2"]) == [2.0, -1.0] and list(df["step"]) == [0.0, 1.0]
    assert set(ema.history()) >= {"g2", "trace_sigma", "b_small", "b_big"}
    with pytest.raises(ValueError, match="decay must be in"):
        NoiseScaleEMA(decay=1.0)


def test_adaptive_ema_weights_by_hand() -> None:
    # k = 1: d_t = 1 − 1/t, the plain running mean of every step.
    ema = NoiseScaleEMA(decay=0.99, adaptive=1)
    g2, trace = np.array([4.0, -1.0, 2.0, 3.0]), np.array([1.0, 5.0, 2.0, 8.0])
    for a, b in zip(g2, trace):
        ema.update(NoiseEstimate(a, b, 1, 4))
    assert ema.g2 == pytest.approx(g2.mean()) and ema.b_simple == pytest.approx(trace.sum() / g2.sum())
    assert ema.effective_steps == pytest.approx(4.0)
    # k = 2: step s is weighted ∝ s while 1 − 2/(t+1) < d.
    ema = NoiseScaleEMA(decay=0.99, adaptive=2)
    for a, b in zip(g2, trace):
        ema.update(NoiseEstimate(a, b, 1, 4))
    w = np.arange(1, 5) / 10.0
    assert ema.g2 == pytest.approx(w @ g2) and ema.trace_sigma == pytest.approx(w @ trace)
    assert ema.effective_steps == pytest.approx(1.0 / (w**2).sum())
    # once 1 − k/t exceeds d the constant decay takes over
    assert ema.step_decay(10_000) == 0.99 and ema.step_decay(1) == 0.0 and ema.step_decay(3) == 0.5
    with pytest.raises(ValueError, match="adaptive must be"):
        NoiseScaleEMA(adaptive=0.5)


def test_adaptive_ema_tracks_a_short_run_that_constant_decay_lags() -> None:
    # B_simple rising over a 60-step run (|G|^2 falls 10× while tr Σ stays): the constant
    # 0.99 decay still averages over the whole run, the adaptive one follows the recent steps.
    t = np.arange(1, 61)
    g2, trace = 10.0 * 0.1 ** (t / 60), np.full(60, 100.0)
    constant, adaptive = NoiseScaleEMA(decay=0.99), NoiseScaleEMA(decay=0.99, adaptive=4)
    for a, b in zip(g2, trace):
        constant.update(NoiseEstimate(a, b, 1, 4))
        adaptive.update(NoiseEstimate(a, b, 1, 4))
    truth = trace[-1] / g2[-1]
    w = t * (t + 1) * (t + 2)  # k = 4: weights ∝ s(s+1)(s+2) (1 − 4/(t+3) < 0.99 throughout)
    assert adaptive.b_simple == pytest.approx(trace[-1] / (w @ g2 / w.sum()))
    assert 0.5 * truth < adaptive.b_simple < truth
    assert constant.b_simple < 0.35 * truth  # lagging far behind
    d = 0.99  # (Σ d^j)² / Σ d^2j over j < 60
    assert constant.effective_steps == pytest.approx(((1 - d**60) / (1 - d)) ** 2 / ((1 - d**120) / (1 - d**2)))


def test_ema_b_simple_converges(exact: Exact) -> None:
    ema = NoiseScaleEMA(decay=0.9999)  # about 20,000 steps at a fixed w
    feed(ema, sampled_estimates(exact, 40000, 16, 64, seed=6))
    unc = ema.uncertainty()
    # "within a few percent" is resolvable: ≈ 2 % (a 20-block jackknife s.e. is itself uncertain by 1/√38 ≈ 16 %)
    assert unc.stderr < 0.04 * exact.b_simple
    assert abs(ema.b_simple - exact.b_simple) < N_SE * unc.stderr
    assert abs(unc.estimate - exact.b_simple) < N_SE * unc.stderr


def test_ratio_of_averages_unbiased_but_average_of_ratios_biased(exact: Exact) -> None:
    est = sampled_estimates(exact, 3000, 128, 512, seed=7)
    assert np.std(est.g2) > 0.25 * exact.g2  # per-step |G|^2 estimates are noisy
    ema = NoiseScaleEMA(decay=0.999)
    feed(ema, est)
    unc = ratio_of_means_jackknife(est.trace_sigma, est.g2)
    assert unc.stderr < 0.1 * exact.b_simple
    assert abs(unc.estimate - exact.b_simple) < N_SE * unc.stderr
    # An average of per-step ratios does not estimate B_simple: |G|^2 estimates near 0 leave their mean without an
    # expectation (from −9 to +14 × B_simple over seeds here), and their median lies far below it. The order
    # statistic N_SE binomial standard errors (√n / 2) above the middle bounds that median from above.
    ratios = np.sort(est.trace_sigma / est.g2)
    assert ratios[math.ceil(len(ratios) / 2 + N_SE * math.sqrt(len(ratios)) / 2)] < exact.b_simple
    # the EMA reports the ratio of its two averages, not an average of ratios
    d = 0.999 ** np.arange(len(est.g2))[::-1]
    assert ema.b_simple == pytest.approx(float(d @ est.trace_sigma / (d @ est.g2)), rel=1e-9)


def test_jackknife_stderr_is_calibrated(exact: Exact) -> None:
    est = sampled_estimates(exact, 200 * 100, 16, 64, seed=8)
    tr, g2 = est.trace_sigma.reshape(200, 100), est.g2.reshape(200, 100)
    ratios = tr.sum(1) / g2.sum(1)
    ses = [ratio_of_means_jackknife(tr[i], g2[i]).stderr for i in range(200)]
    assert 0.8 < np.mean(ses) / ratios.std(ddof=1) < 1.25
    with pytest.raises(ValueError, match="at least 2 steps"):
        ratio_of_means_jackknife(np.ones(1), np.ones(1))


# ----------------------------------------------------------------------------- sources agree on a network


def test_per_example_and_micro_batch_agree_on_mlp() -> None:
    torch.manual_seed(11)
    data_x, data_y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    exact = hessian_noise_scale(net, F.cross_entropy, data_x, data_y, population=True)  # exact |G|^2, tr Σ
    monitor = GradientNoiseMonitor(net.parameters())
    gen = torch.Generator().manual_seed(12)
    per_ex, micro = [], []
    for _ in range(250):
        idx = torch.randint(0, 64, (16,), generator=gen)
        x, y = data_x[idx], data_y[idx]
        per_ex.append(per_example_estimate(net, F.cross_entropy, x, y))
        micro.append(monitor_step(net, monitor, F.cross_entropy, list(zip(x.split(4), y.split(4)))))
    for field, truth in (("g2", exact.g2), ("trace_sigma", exact.trace_sigma)):
        a = np.array([getattr(e, field) for e in per_ex])
        b = np.array([getattr(e, field) for e in micro])
        assert_unbiased(a, truth, f"per-example {field}")
        assert_unbiased(b, truth, f"micro-batch {field}")
        assert_unbiased(a - b, 0.0, f"per-example − micro-batch {field}")


@pytest.mark.parametrize("frozen", ["0.bias", "2.weight", "0.weight"])
def test_layerwise_leaves_frozen_parameters_out_like_func(frozen: str) -> None:
    # The batch gradient has no entry for a frozen weight or bias, so neither may the per-example norms:
    # the layerwise method must give the func method's answer to float rounding.
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    dict(model.named_parameters())[frozen].requires_grad_(False)
    x, y = torch.randn(24, 5), torch.randint(0, 3, (24,))
    est = {m: per_example_estimate(model, F.cross_entropy, x, y, chunk_size=8, method=m) for m in ("func", "layerwise")}
    assert est["layerwise"].trace_sigma == pytest.approx(est["func"].trace_sigma, rel=1e-9)
    assert est["layerwise"].g2 == pytest.approx(est["func"].g2, rel=1e-9)


class _Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm, self.head = nn.LSTM(3, 4, batch_first=True), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0][:, -1])


@pytest.mark.filterwarnings("ignore:There is a performance drop")
def test_func_method_on_an_lstm_matches_per_example_backward_passes_or_refuses_clearly() -> None:
    for dtype in (torch.float32, torch.float64):
        torch.manual_seed(4)
        model = _Tagger().to(dtype)
        x, y = torch.randn(6, 5, 3, dtype=dtype), torch.randint(0, 2, (6,))
        grads = []
        for i in range(len(x)):  # one ordinary backward per example: the independent reference
            model.zero_grad()
            F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]).double())
        g = torch.stack(grads)
        trace = float(((g - g.mean(0)) ** 2).sum() / (len(g) - 1))
        try:
            est = per_example_estimate(model, F.cross_entropy, x, y, chunk_size=4, method="func")
        except ValueError as err:  # vmap cannot batch this kernel: the message names the alternatives
            assert dtype == torch.float64, "float32 on CPU goes through vmap's fallback and must work"
            assert "recurrent module 'lstm'" in str(err) and "checkpoint_noise_scale" in str(err)
            continue
        assert est.trace_sigma == pytest.approx(trace, rel=1e-4)
