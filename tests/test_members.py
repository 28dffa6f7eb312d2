"""K learning rates as one batched model: the same weights, losses and noise estimates as K separate runs."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gns_utils.experiments.members import StackedMembers
from gns_utils.experiments.models import PaperCNN
from gns_utils.noise import GradientNoiseMonitor

LRS = [0.02, 0.05, 0.1]


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 4)).double()


def _batches(n_steps, batch=8, features=12, classes=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, features, generator=g, dtype=torch.float64),
             torch.randint(0, classes, (batch,), generator=g)) for _ in range(n_steps)]


def _torch_optimizer(model, optimizer, lr, kwargs):
    if optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, foreach=False, **kwargs)
    momentum = kwargs.get("momentum", 0.9) if optimizer == "momentum" else 0.0
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, foreach=False)


def _separate_runs(model, batches, optimizer, kwargs, n_micro=2, grad_clip=None):
    """Each rate alone, as the harness trains it: micro-batch accumulation, GradientNoiseMonitor, torch.optim."""
    out = []
    for lr in LRS:
        m = copy.deepcopy(model)
        opt = _torch_optimizer(m, optimizer, lr, kwargs)
        monitor = GradientNoiseMonitor(m)
        losses, estimates = [], []
        for x, y in batches:
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for xm, ym in zip(x.chunk(n_micro), y.chunk(n_micro)):
                loss = F.cross_entropy(m(xm), ym) / n_micro
                loss.backward()
                monitor.after_micro_batch(len(xm))
                total += float(loss.detach())
            estimates.append(monitor.after_step())
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(m.parameters(), grad_clip)
            opt.step()
            losses.append(total)
        out.append((m, losses, estimates))
    return out


@pytest.mark.parametrize("optimizer,kwargs,grad_clip", [
    ("sgd", {}, None), ("momentum", {"momentum": 0.8}, None), ("adam", {"betas": (0.8, 0.99)}, None),
    ("sgd", {}, 0.5), ("adam", {}, 0.5),
])
def test_stacked_members_train_exactly_as_separate_runs(optimizer, kwargs, grad_clip):
    model, batches = _mlp(), _batches(6)
    members = StackedMembers(model, LRS, F.cross_entropy, optimizer=optimizer, optimizer_kwargs=kwargs,
                             grad_clip=grad_clip)
    steps = [members.step(x, y) for x, y in batches]
    for k, (alone, losses, estimates) in enumerate(_separate_runs(model, batches, optimizer, kwargs,
                                                                  grad_clip=grad_clip)):
        for name, p in alone.named_parameters():
            torch.testing.assert_close(members.member_state_dict(k)[name], p.detach(), rtol=1e-10, atol=1e-12)
        for step, loss, est in zip(steps, losses, estimates):
            assert float(step.loss[k]) == pytest.approx(loss, rel=1e-10)
            assert float(step.g2[k]) == pytest.approx(est.g2, rel=1e-8, abs=1e-12)
            assert float(step.trace_sigma[k]) == pytest.approx(est.trace_sigma, rel=1e-8, abs=1e-12)
    assert all(p.grad is None for p in model.parameters())  # the model itself is left as it was


def test_a_convolutional_net_four_micro_batches():
    torch.manual_seed(0)
    model = PaperCNN(channels=(4, 8), hidden=32, dropout=0.0).double()
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(8, 1, 28, 28, generator=g, dtype=torch.float64), torch.randint(0, 10, (8,), generator=g))
               for _ in range(3)]
    members = StackedMembers(model, LRS, F.cross_entropy, n_micro=4)
    steps = [members.step(x, y) for x, y in batches]
    for k, (alone, losses, estimates) in enumerate(_separate_runs(model, batches, "sgd", {}, n_micro=4)):
        for name, p in alone.named_parameters():
            torch.testing.assert_close(members.member_state_dict(k)[name], p.detach(), rtol=1e-9, atol=1e-12)
        assert float(steps[-1].trace_sigma[k]) == pytest.approx(estimates[-1].trace_sigma, rel=1e-8)


def test_members_that_stop_leave_the_others_unchanged():
    model, batches = _mlp(), _batches(6)
    full = StackedMembers(model, LRS, F.cross_entropy, optimizer="adam")
    part = StackedMembers(model, LRS, F.cross_entropy, optimizer="adam")
    for i, (x, y) in enumerate(batches):
        if i == 3:
            part.keep([0, 2])
        full.step(x, y)
        last = part.step(x, y)
    assert part.members == [0, 2] and last.loss.shape == (2,)
    for k in (0, 2):
        for name, p in full.member_state_dict(k).items():
            torch.testing.assert_close(part.member_state_dict(k)[name], p, rtol=0, atol=0)
    with pytest.raises(ValueError, match="not being trained"):
        part.keep([1])


def test_a_diverging_member_does_not_touch_the_others():
    model, batches = _mlp(), _batches(4)
    members = StackedMembers(model, [0.05, 0.1], F.cross_entropy)
    alone = StackedMembers(model, [0.05], F.cross_entropy)
    for i, (x, y) in enumerate(batches):
        if i == 2:  # member 1's weights blow up
            next(iter(members.params.values()))[1].fill_(float("nan"))
        step = members.step(x, y)
        alone.step(x, y)
    assert torch.isnan(step.loss[1]) and torch.isnan(step.g2[1]) and torch.isnan(step.trace_sigma[1])
    assert torch.isfinite(step.g2[0]) and torch.isfinite(step.loss[0])
    for name, p in alone.member_state_dict(0).items():
        torch.testing.assert_close(members.member_state_dict(0)[name], p, rtol=0, atol=0)


def test_bad_settings_are_refused_before_training():
    model = _mlp()
    with pytest.raises(ValueError, match="optimizer must be one of"):
        StackedMembers(model, LRS, F.cross_entropy, optimizer="lion")
    with pytest.raises(ValueError, match="n_micro must be >= 2"):
        StackedMembers(model, LRS, F.cross_entropy, n_micro=1)
    with pytest.raises(ValueError, match="positive finite"):
        StackedMembers(model, [0.1, -1.0], F.cross_entropy)
    with pytest.raises(ValueError, match="unsupported optimizer_kwargs"):
        StackedMembers(model, LRS, F.cross_entropy, optimizer_kwargs={"weight_decay": 0.1})
    with pytest.raises(ValueError, match="batch norm"):
        StackedMembers(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)), LRS, F.cross_entropy)
    members = StackedMembers(model, LRS, F.cross_entropy, n_micro=3)
    x, y = _batches(1)[0]
    with pytest.raises(ValueError, match="equal micro-batches"):
        members.step(x, y)
