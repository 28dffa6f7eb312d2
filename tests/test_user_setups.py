"""Mistakes a new user makes with the library get a clear message instead of a wrong number."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gns_utils.noise import GradientNoiseMonitor, data_parallel_estimate, hessian_noise_scale


def test_data_parallel_estimate_without_a_process_group_refuses_instead_of_returning_zero_noise():
    # before: the local norm silently stood for the mean over ranks, so equal norms gave tr Σ = 0
    with pytest.raises(ValueError, match="no torch.distributed process group is initialised"):
        data_parallel_estimate(2.0, 2.0, local_batch=8, world_size=2)
    est = data_parallel_estimate(3.0, 2.0, local_batch=8, world_size=2, all_reduce=False)  # the documented way
    assert est.trace_sigma > 0


def test_hessian_batch_passed_positionally_gets_a_clear_error():
    torch.manual_seed(0)
    model = nn.Linear(3, 1, bias=False).double()
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    # before: the Hessian batch landed in chunk_size / population ("Boolean value of Tensor ... is ambiguous")
    with pytest.raises(TypeError, match="positional argument"):
        hessian_noise_scale(model, F.mse_loss, x, y, x[:8], y[:8])
    res = hessian_noise_scale(model, F.mse_loss, x, y, hessian_inputs=x[:8], hessian_targets=y[:8])
    assert res.b_noise > 0


def test_one_backward_per_step_says_why_no_estimate_comes():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    monitor = GradientNoiseMonitor(model.parameters())
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    with pytest.warns(RuntimeWarning, match="needs >= 2 backward passes"):
        for _ in range(3):  # warned once, not at every step
            model.zero_grad()
            F.mse_loss(model(x), y).backward()
            monitor.after_micro_batch(8)
            assert monitor.after_step() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.zero_grad()
        F.mse_loss(model(x), y).backward()
        monitor.after_micro_batch(8)
        monitor.after_step()  # no second warning
    assert monitor.n_too_few == 4
