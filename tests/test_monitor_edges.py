"""Common mistakes in a user's loop get a clear error or a one-time warning instead of a wrong number."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gns_utils import GradientNoiseMonitor, NoiseScaleEMA, PerExampleNormMonitor
from gns_utils.noise import checkpoint_noise_scale


def _data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, x @ torch.randn(6, 1, generator=g) + 0.3 * torch.randn(n, 1, generator=g)


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))


def test_gradients_left_from_an_earlier_step_are_an_error():
    model, (x, y) = _model(), _data()
    monitor = GradientNoiseMonitor(model)
    F.mse_loss(model(x[:8]), y[:8]).backward()  # a step without zero_grad() before the next
    monitor.reset()
    F.mse_loss(model(x[8:16]), y[8:16]).backward()
    with pytest.raises(RuntimeError, match="zero_grad"):
        monitor.after_micro_batch(8)
    model.zero_grad(set_to_none=False)  # zeros (not None) are fine
    for part in (slice(0, 8), slice(8, 16)):
        (F.mse_loss(model(x[part]), y[part]) / 2).backward()
        monitor.after_micro_batch(8)
    assert monitor.after_step() is not None


@pytest.mark.parametrize("kind", ["micro", "per_example"])
def test_after_step_with_nothing_recorded_warns_once(kind):
    model = _model()
    monitor = GradientNoiseMonitor(model) if kind == "micro" else PerExampleNormMonitor(model)
    with pytest.warns(RuntimeWarning, match="no micro-batch recorded"):
        assert monitor.after_step() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert monitor.after_step() is None  # once


def _steps(monitor, model, x, y, sizes, loss_scale, n_steps=220):
    """Steps at fixed weights: micro-batches of ``sizes`` examples, each loss divided by len(sizes)."""
    g = torch.Generator().manual_seed(1)
    for _ in range(n_steps):
        model.zero_grad()
        idx = torch.randperm(len(x), generator=g)
        start = 0
        for size in sizes:
            part = idx[start:start + size]
            start += size
            (F.mse_loss(model(x[part]), y[part]) / len(sizes)).backward()
            monitor.after_micro_batch(size, loss_scale=1 / len(sizes) if loss_scale else None)
        monitor.after_step()


def test_a_weighting_the_monitor_does_not_know_warns_and_the_right_one_does_not():
    x, y = _data(4096)
    model = _model()
    with torch.no_grad():  # near the optimum of the linear part: |G|^2 small against tr Σ / B
        model[2].weight.mul_(0.0)
    monitor = GradientNoiseMonitor(model)
    with pytest.warns(RuntimeWarning, match="loss_scale"):
        _steps(monitor, model, x, y, (2, 62), loss_scale=False)
    monitor = GradientNoiseMonitor(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _steps(monitor, model, x, y, (2, 62), loss_scale=True)


def _stream(monitor, values):
    from types import SimpleNamespace

    for v in values:
        monitor._check_plausible(SimpleNamespace(g2=float(v)))


@pytest.mark.parametrize("law", ["normal", "chi2"])
def test_zero_mean_skewed_estimates_of_a_long_run_do_not_warn(law):
    # near a noise floor |G|^2 ≈ 0 and its estimates are skewed: a correct run must not be told it is wrong
    rng = np.random.default_rng(7)
    for _ in range(5):
        values = rng.standard_normal(20_000) if law == "normal" else rng.chisquare(1, 20_000) - 1.0
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _stream(GradientNoiseMonitor(_model()), values)


def test_a_persistent_negative_bias_warns():
    rng = np.random.default_rng(8)
    with pytest.warns(RuntimeWarning, match="in each of the last 4 blocks"):
        _stream(GradientNoiseMonitor(_model()), rng.standard_normal(2_000) - 1.0)


def test_ema_update_with_none_says_what_to_do():
    with pytest.raises(TypeError, match="after_step\\(\\) returns None"):
        NoiseScaleEMA().update(None)


def test_checkpoint_measurement_inside_a_step_leaves_the_monitor_unaffected():
    x, y = _data()
    results = []
    for interleave in (False, True):
        model = _model()
        monitor = GradientNoiseMonitor(model)
        model.zero_grad()
        for j, part in enumerate((slice(0, 16), slice(16, 32))):
            (F.mse_loss(model(x[part]), y[part]) / 2).backward()
            monitor.after_micro_batch(16)
            if interleave and j == 0:
                checkpoint_noise_scale(model, lambda m, b: F.mse_loss(m(b[0]), b[1]),
                                       [(x[k:k + 32], y[k:k + 32]) for k in range(64, 256, 32)])
        estimate = monitor.after_step()
        results.append((estimate.g2, estimate.trace_sigma))
    assert results[0] == pytest.approx(results[1], rel=1e-12)


def test_checkpoint_refuses_a_train_mode_batchnorm_like_the_monitors():
    x, y = _data()
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
    batches = [(x[k:k + 32], y[k:k + 32]) for k in range(0, 128, 32)]

    def loss(m, b):
        return F.mse_loss(m(b[0]), b[1])

    with pytest.raises(ValueError, match="BatchNorm.*allow_batchnorm=True"):
        checkpoint_noise_scale(model, loss, batches)
    assert checkpoint_noise_scale(model, loss, batches, allow_batchnorm=True).trace_sigma > 0
    model.eval()
    assert checkpoint_noise_scale(model, loss, batches).trace_sigma > 0
