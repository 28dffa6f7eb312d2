"""Tests of B_simple at a checkpoint from micro-batch gradients (gns_utils.noise.checkpoint).

Known answers: the linear-regression problem of ``test_noise`` (G, Σ exact on a finite
dataset sampled with replacement), and a linear loss whose per-example gradients are
z ~ N(μ, diag s²), so G = μ and Σ = diag s² per coordinate. Statistical checks use fixed
seeds, N_SE standard errors, and require that tolerance to resolve the effect under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gns_utils.noise import (adam_preconditioner, checkpoint_noise_scale, per_example_estimate,
                             ratio_of_means_jackknife)
from test_noise import N_SE, SHARP_OFFSET, Exact, assert_unbiased, make_exact, mse_half

pytestmark = pytest.mark.usefixtures("float64_one_thread")  # conftest.py


def batch_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return mse_half(model(x), y)


def groups(ex: Exact, idx: np.ndarray) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One micro-batch per row of ``idx``."""
    return [ex.tensors(row) for row in idx]


def by_hand(group_grads: np.ndarray, units: np.ndarray) -> tuple[float, float, float]:
    """``(|G|^2, tr Σ, jackknife SE of B_simple)`` from group-mean gradients ``[k, dim]``, directly."""

    def estimate(g: np.ndarray, m: np.ndarray) -> tuple[float, float]:
        pooled = (m[:, None] * g).sum(0) / m.sum()
        trace = float((m * ((g - pooled) ** 2).sum(1)).sum() / (len(m) - 1))
        return float(pooled @ pooled) - trace / m.sum(), trace

    g2, trace = estimate(group_grads, units)
    k = len(units)
    loo = np.array([estimate(np.delete(group_grads, j, 0), np.delete(units, j)) for j in range(k)])
    if np.any(loo[:, 0] <= 0):  # a leave-one-out |G|^2 estimate ≤ 0: no error bar
        return g2, trace, math.nan
    ratios = loo[:, 1] / loo[:, 0]
    return g2, trace, math.sqrt((k - 1) / k * ((ratios - ratios.mean()) ** 2).sum())


# ----------------------------------------------------------------------------- the formulas


def test_checkpoint_groups_of_one_equal_per_example_estimate(exact: Exact) -> None:
    idx = np.arange(0, 40, 3)
    x, y = exact.tensors(idx)
    res = checkpoint_noise_scale(exact.model(), batch_loss, list(zip(x.split(1), y.split(1))))
    ref = per_example_estimate(exact.model(), mse_half, x, y, method="func")
    assert res.trace_sigma == pytest.approx(ref.trace_sigma, rel=1e-10)
    assert res.g2 == pytest.approx(ref.g2, rel=1e-10)
    assert (res.k, res.m, res.preconditioned) == (len(idx), 1.0, False)


def test_checkpoint_matches_the_group_formulas(exact: Exact) -> None:
    rng = np.random.default_rng(20)
    model = exact.model()
    idx = rng.integers(0, 40, (7, 16))
    res = checkpoint_noise_scale(model, batch_loss, groups(exact, idx))
    g2, trace, stderr = by_hand(exact.g[idx].mean(1), np.full(7, 16.0))
    assert res.g2 == pytest.approx(g2, rel=1e-10) and res.trace_sigma == pytest.approx(trace, rel=1e-10)
    assert res.b_simple == pytest.approx(trace / g2, rel=1e-10) and res.stderr == pytest.approx(stderr, rel=1e-8)
    assert res.m == 16.0
    assert model.weight.grad is None  # .grad untouched
    # unequal groups: ĝ weighted by m_j, tr Σ = Σ m_j |g_j − ĝ|^2 / (k − 1)
    sizes = [2, 3, 5, 6, 4]
    flat = rng.integers(0, 40, sum(sizes))
    parts = np.split(flat, np.cumsum(sizes)[:-1])
    res = checkpoint_noise_scale(model, batch_loss, [exact.tensors(p) for p in parts])
    g2, trace, stderr = by_hand(np.array([exact.g[p].mean(0) for p in parts]), np.array(sizes, float))
    assert res.g2 == pytest.approx(g2, rel=1e-10) and res.trace_sigma == pytest.approx(trace, rel=1e-10)
    assert res.stderr == pytest.approx(stderr, rel=1e-8, nan_ok=True) and res.m == pytest.approx(4.0)
    # two groups: no standard error
    assert math.isnan(checkpoint_noise_scale(model, batch_loss, groups(exact, idx[:2])).stderr)


def test_checkpoint_bad_inputs(exact: Exact) -> None:
    model = exact.model()
    parts = groups(exact, np.arange(12).reshape(3, 4))
    with pytest.raises(ValueError, match="at least 2 micro-batches"):
        checkpoint_noise_scale(model, batch_loss, parts[:1])
    with pytest.raises(ValueError, match="units has 2 entries for 3"):
        checkpoint_noise_scale(model, batch_loss, parts, units=[4, 4])
    with pytest.raises(ValueError, match="units must be positive"):
        checkpoint_noise_scale(model, batch_loss, parts, units=0)
    with pytest.raises(ValueError, match="scalar tensor"):
        checkpoint_noise_scale(model, lambda m, b: (m(b[0]).squeeze(-1) - b[1]) ** 2, parts)
    with pytest.raises(ValueError, match="no entry for parameter"):
        checkpoint_noise_scale(model, batch_loss, parts, preconditioner={"bias": torch.ones(1)})
    with pytest.raises(ValueError, match="has shape"):
        checkpoint_noise_scale(model, batch_loss, parts, preconditioner=[torch.ones(3, 4)])
    with pytest.raises(ValueError, match="2 tensors for 1"):
        checkpoint_noise_scale(model, batch_loss, parts, preconditioner=[torch.ones(4), torch.ones(4)])


# ----------------------------------------------------------------------------- against the exact answers


def test_checkpoint_unbiased_on_exact_problem(exact: Exact) -> None:
    rng = np.random.default_rng(21)
    model = exact.model()
    res = [checkpoint_noise_scale(model, batch_loss, groups(exact, rng.integers(0, 40, (8, 4)))) for _ in range(300)]
    trace, g2 = np.array([r.trace_sigma for r in res]), np.array([r.g2 for r in res])
    assert_unbiased(trace, exact.trace_sigma, "tr Σ", resolve=0.15 * exact.trace_sigma)
    # dropping the −tr Σ/(k·m) correction would shift |G|^2 by tr Σ / 32
    assert_unbiased(g2, exact.g2, "|G|^2", resolve=0.5 * exact.trace_sigma / 32)
    ratio = ratio_of_means_jackknife(trace, g2)
    assert ratio.stderr < 0.15 * exact.b_simple
    assert abs(ratio.estimate - exact.b_simple) < N_SE * ratio.stderr


@pytest.mark.parametrize("offset, k, m", [(None, 32, 4), (SHARP_OFFSET, 16, 16)])
def test_checkpoint_jackknife_stderr_is_calibrated(offset: tuple[float, ...] | None, k: int, m: int) -> None:
    # the delete-one-group SE matches the spread of B_simple over draws (B_simple ≈ 27 with
    # M = 128, and ≈ 2.4 with M = 256). A jackknife of the per-group A.2 pairs, which share ĝ,
    # gives 0.4× and 4.4× here (mean SE over standard deviation); the tolerance below is ±0.47 and ±0.32.
    ex = make_exact() if offset is None else make_exact(offset=offset)
    rng = np.random.default_rng(22)
    model = ex.model()
    res = [checkpoint_noise_scale(model, batch_loss, groups(ex, rng.integers(0, 40, (k, m)))) for _ in range(200)]
    b, se = np.array([r.b_simple for r in res]), np.array([r.stderr for r in res])
    assert np.isfinite(b).all()
    b, se = b[np.isfinite(se)], se[np.isfinite(se)]  # nan where a leave-one-group-out |G|^2 is <= 0 (by chance)
    # At M = 128 B_simple has a heavy right tail (|G|^2 estimates near 0), so its standard deviation over 200 draws
    # is unstable: compare the median SE with 1.4826 × the median absolute deviation, within N_SE bootstrap SEs.

    def calibration(i: np.ndarray | slice) -> float:
        return float(np.median(se[i]) / (1.4826 * np.median(np.abs(b[i] - np.median(b[i])))))

    stderr = np.std([calibration(i) for i in np.random.default_rng(0).integers(0, len(b), (500, len(b)))])
    assert abs(calibration(slice(None)) - 1) < N_SE * stderr, (calibration(slice(None)), stderr)


# ----------------------------------------------------------------------------- preconditioners


def test_constant_preconditioner_leaves_b_simple_unchanged(exact: Exact) -> None:
    model = exact.model()
    parts = groups(exact, np.random.default_rng(23).integers(0, 40, (6, 5)))
    plain = checkpoint_noise_scale(model, batch_loss, parts)
    for p in ({"weight": torch.full((1, 4), 3.0)}, [torch.tensor(3.0)]):
        scaled = checkpoint_noise_scale(model, batch_loss, parts, preconditioner=p)
        assert scaled.b_simple == pytest.approx(plain.b_simple, rel=1e-12)
        assert scaled.stderr == pytest.approx(plain.stderr, rel=1e-10)
        assert scaled.g2 == pytest.approx(9 * plain.g2, rel=1e-12) and scaled.preconditioned


def test_diagonal_preconditioner_closed_form() -> None:
    # loss = mean_i wᵀz_i: per-example gradient z_i ~ N(μ, diag s²), so G = μ, Σ = diag s² and
    # the preconditioned B_simple is tr(PΣP) / |PG|^2 = Σ p²s² / Σ p²μ²
    mu, s = torch.tensor([1.0, 0.2, 0.0, 2.0]), torch.tensor([0.5, 3.0, 1.0, 0.2])
    p = torch.tensor([0.2, 1.0, 10.0, 0.5])
    trace, g2 = float((p**2 * s**2).sum()), float((p**2 * mu**2).sum())  # 109.02 / 1.08 ≈ 101
    assert trace / g2 > 30 * float((s**2).sum() / (mu**2).sum())  # far from the plain B_simple ≈ 2
    model = nn.Linear(4, 1, bias=False)
    gen = torch.Generator().manual_seed(24)
    res = []
    for _ in range(300):
        z = mu + s * torch.randn(32, 16, 4, generator=gen)  # 32 groups of 16
        res.append(checkpoint_noise_scale(model, lambda m, b: m(b[0]).mean(), [(zj,) for zj in z],
                                          preconditioner={"weight": p}))  # (4,) broadcasts to (1, 4)
    traces, g2s = np.array([r.trace_sigma for r in res]), np.array([r.g2 for r in res])
    assert_unbiased(traces, trace, "tr(PΣP)", resolve=0.1 * trace)
    assert_unbiased(g2s, g2, "|PG|^2", resolve=0.1 * g2)
    ratio = ratio_of_means_jackknife(traces, g2s)
    assert abs(ratio.estimate - trace / g2) < N_SE * ratio.stderr and ratio.stderr < 0.1 * trace / g2


# ----------------------------------------------------------------------------- Adam


def adam_by_hand(grads: list[list[torch.Tensor]], beta2: float, eps: float, amsgrad: bool) -> list[torch.Tensor]:
    """``1 / (sqrt(v̂) + ε)`` from the gradients of each step: v_t = β2 v + (1 − β2) g², v̂ = v / (1 − β2^t)."""
    v = [torch.zeros_like(g) for g in grads[0]]
    v_max = [torch.zeros_like(g) for g in grads[0]]
    for step in grads:
        v = [beta2 * a + (1 - beta2) * g**2 for a, g in zip(v, step)]
        v_max = [torch.maximum(a, b) for a, b in zip(v_max, v)]
    t = len(grads)
    return [1 / ((u / (1 - beta2**t)).sqrt() + eps) for u in (v_max if amsgrad else v)]


@pytest.mark.parametrize("fused, amsgrad, cls", [(False, False, torch.optim.Adam), (True, False, torch.optim.Adam),
                                                 (False, True, torch.optim.Adam), (True, False, torch.optim.AdamW)])
def test_adam_preconditioner_by_hand(fused: bool, amsgrad: bool, cls: type) -> None:
    torch.manual_seed(25)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    model[0].bias.requires_grad_(False)  # frozen: not in P
    opt = cls([p for p in model.parameters() if p.requires_grad], lr=0.05, betas=(0.8, 0.9), eps=1e-3,
              fused=fused, amsgrad=amsgrad)
    with pytest.raises(ValueError, match="take an optimizer.step"):
        adam_preconditioner(opt)
    trainable = [p for p in model.parameters() if p.requires_grad]
    grads = []
    for _ in range(4):
        opt.zero_grad()
        model(torch.randn(6, 3)).pow(2).mean().backward()
        grads.append([p.grad.clone() for p in trainable])
        opt.step()
    expected = adam_by_hand(grads, beta2=0.9, eps=1e-3, amsgrad=amsgrad)
    got = adam_preconditioner(opt)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=0)
    named = adam_preconditioner(opt, model)
    assert list(named) == ["0.weight", "2.weight", "2.bias"]
    torch.testing.assert_close(named["2.bias"], expected[2], rtol=1e-10, atol=0)


def test_adam_preconditioner_refuses_other_optimizers() -> None:
    model = nn.Linear(3, 1)
    with pytest.raises(ValueError, match="needs a torch.optim.Adam or AdamW, got SGD"):
        adam_preconditioner(torch.optim.SGD(model.parameters(), lr=0.1))
    opt = torch.optim.Adam(nn.Linear(3, 1).parameters())
    opt.zero_grad()
    opt.param_groups[0]["params"][0].sum().backward()  # only the weight gets a gradient
    opt.step()
    with pytest.raises(ValueError, match="no second-moment state"):
        adam_preconditioner(opt)


# ----------------------------------------------------------------------------- any model: an LSTM


class SequenceRegressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 8, batch_first=True)
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0]).squeeze(-1)


def token_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean over every token of the batch."""
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def test_checkpoint_on_an_lstm_in_tokens_and_in_adams_metric() -> None:
    torch.manual_seed(26)
    model = SequenceRegressor()
    x, y = torch.randn(6, 4, 5, 3), torch.randn(6, 4, 5)  # 6 micro-batches of 4 sequences of 5 tokens
    parts = list(zip(x, y))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for xb, yb in parts[:3]:
        opt.zero_grad()
        token_loss(model, (xb, yb)).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    p = adam_preconditioner(opt, model)
    grads, weighted = [], []
    for part in parts:
        g = torch.autograd.grad(token_loss(model, part), list(model.parameters()))
        grads.append(torch.cat([t.reshape(-1) for t in g]).numpy())
        weighted.append(torch.cat([(t * p[n]).reshape(-1) for t, (n, _) in zip(g, model.named_parameters())]).numpy())
    for units, pre, rows in ((None, None, grads), (20, None, grads), (None, p, weighted)):
        res = checkpoint_noise_scale(model, token_loss, parts, preconditioner=pre, units=units)
        g2, trace, stderr = by_hand(np.array(rows), np.full(6, 4.0 if units is None else 20.0))
        assert res.g2 == pytest.approx(g2, rel=1e-9) and res.trace_sigma == pytest.approx(trace, rel=1e-9)
        assert res.stderr == pytest.approx(stderr, rel=1e-7, nan_ok=True)
    in_tokens = checkpoint_noise_scale(model, token_loss, parts, units=20)
    in_sequences = checkpoint_noise_scale(model, token_loss, parts)
    assert in_tokens.trace_sigma == pytest.approx(5 * in_sequences.trace_sigma, rel=1e-12)  # 5 tokens a sequence
    assert in_tokens.g2 == pytest.approx(in_sequences.g2, rel=1e-12) and in_tokens.m == 20.0
    assert all(q.grad is None for q in model.parameters())
