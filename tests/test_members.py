"""K learning rates as one batched model: the same weights, losses and noise estimates as K separate runs."""

import copy
import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gns_utils.experiments.config import ConfigError, make_experiment
from gns_utils.experiments.members import StackedGroup, StackedMembers, stacking_unsupported
from gns_utils.experiments.store import load_run_summary, run_dir
from gns_utils.experiments.sweep import run_sweep, use_stacked
from gns_utils.experiments.train import Run
from gns_utils.experiments.models import PaperCNN
from gns_utils.noise import GradientNoiseMonitor, adam_preconditioner

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


def test_split_members_go_on_exactly_as_in_the_full_stack():
    model, batches = _mlp(), _batches(6)
    full = StackedMembers(model, LRS, F.cross_entropy, optimizer="adam")
    part = StackedMembers(model, LRS, F.cross_entropy, optimizer="adam")
    aside = None
    for i, (x, y) in enumerate(batches):
        if i == 2:
            aside = part.split([1])
        full.step(x, y)
        part.step(x, y)
        if aside is not None:
            aside.step(x, y)
    assert part.members == [0, 2] and aside.members == [1] and aside.steps == part.steps == 6
    for stack, k in ((part, 0), (aside, 1), (part, 2)):
        for name, p in full.member_state_dict(k).items():
            torch.testing.assert_close(stack.member_state_dict(k)[name], p, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="some but not all"):
        part.split([0, 2])


def test_a_member_loaded_into_a_model_and_optimizer_reads_as_a_single_run():
    model, batches = _mlp(), _batches(3)
    members = StackedMembers(model, LRS, F.cross_entropy, optimizer="adam")
    alone = copy.deepcopy(model)
    opt_alone = torch.optim.Adam(alone.parameters(), lr=LRS[2], foreach=False)
    for x, y in batches:
        members.step(x, y)
        opt_alone.zero_grad()
        sum(F.cross_entropy(alone(xm), ym) / 2 for xm, ym in zip(x.chunk(2), y.chunk(2))).backward()
        opt_alone.step()
    loaded = copy.deepcopy(model)
    opt = torch.optim.Adam(loaded.parameters(), lr=LRS[2])
    members.load_member_into(2, loaded, opt)
    x, _ = batches[0]
    torch.testing.assert_close(loaded(x), alone(x), rtol=1e-10, atol=1e-12)
    expected, got = adam_preconditioner(opt_alone, alone), adam_preconditioner(opt, loaded)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-9, atol=1e-12)


def test_metrics_and_batch_units_of_a_batch_loss():
    model, batches = _mlp(), _batches(1)

    def terms(net, batch):
        logits = net(batch[0])
        return F.cross_entropy(logits, batch[1]), {"error": (logits.argmax(1) != batch[1]).double().mean()}

    plain = StackedMembers(model, LRS, F.cross_entropy).step(*batches[0])
    tokens = StackedMembers(model, LRS, batch_loss=terms, units_per_example=5).step_batch(batches[0])
    torch.testing.assert_close(tokens.loss, plain.loss)
    torch.testing.assert_close(tokens.g2, plain.g2)  # |G|² is per batch, tr Σ per unit: 5 units per example
    torch.testing.assert_close(tokens.trace_sigma, 5 * plain.trace_sigma)
    x, y = batches[0]
    expected = float((model(x).argmax(1) != y).double().mean())  # every member starts from the model's weights
    assert torch.allclose(tokens.metrics["error"], torch.full((3,), expected, dtype=torch.float64))
    with pytest.raises(ValueError, match="exactly one of"):
        StackedMembers(model, LRS)


# --------------------------------------------------------------------------------------
# The stacked engine in a sweep: the same run folders as the sequential engine

TINY = dict(
    task="tiny", domain="image", dataset="synthetic", model="mlp", model_kwargs={"hidden": [16]},
    optimizer="sgd", metric="error", goals=[0.3, 0.15], batch_sizes=[4, 16, 64], lr_star=0.4, lr_b_star=16.0,
    lr_grid_size=2, max_widen=1, budget_examples=6000, eval_examples=256, evals_per_decade=12, profile="smoke",
    noise_method="micro_batch",
)


@pytest.mark.parametrize("optimizer,goal_source", [("sgd", "batches"), ("adam", "batches"), ("momentum", "subset")])
def test_a_stacked_sweep_writes_the_run_folders_of_the_sequential_engine(tiny_problem, tmp_path, optimizer,
                                                                          goal_source):
    tables = {}
    for engine in ("sequential", "stacked"):
        cfg = make_experiment({**TINY, "optimizer": optimizer, "engine": engine, "goal_source": goal_source})
        tables[engine] = run_sweep(cfg, tmp_path / engine, problem=tiny_problem, progress=False)
    seq, stacked = (t.sort_values(["run_id", "goal"]).reset_index(drop=True) for t in tables.values())
    assert list(seq["run_id"]) == list(stacked["run_id"]) and list(seq["status"]) == list(stacked["status"])
    assert set(seq["status"]) >= {"complete", "pruned"}  # the stopping rules acted on the stacks too
    np.testing.assert_allclose(stacked["steps"], seq["steps"], rtol=1e-4)
    for run_id in seq["run_id"].unique():
        a, b = (pd.read_csv(run_dir(tmp_path / e, "tiny", run_id) / "metrics.csv") for e in ("sequential", "stacked"))
        assert list(a["step"]) == list(b["step"]) and list(a["epoch"]) == list(b["epoch"])
        for column in ("train_loss", "train_error", "metric", "trace_sigma_mean", "b_simple_ema"):
            np.testing.assert_allclose(b[column], a[column], rtol=1e-3, atol=1e-6, err_msg=column)
        summary = load_run_summary(run_dir(tmp_path / "stacked", "tiny", run_id), run_id)
        if summary["status"] != "diverged":
            assert summary["noise_method"] == "micro_batch" and summary["noise_steps"] == summary["n_steps"]
    again = run_sweep(make_experiment({**TINY, "optimizer": optimizer, "engine": "stacked", "goal_source": goal_source}),
                      tmp_path / "stacked", problem=tiny_problem, progress=False)
    assert not again["trained"].any()  # resumed: every finished run is reused


def test_stacked_members_paused_and_brought_back_train_on_from_where_they_stood(tiny_problem, tmp_path):
    cfg = make_experiment({**TINY, "optimizer": "adam"})
    runs = {k: Run(tiny_problem, cfg.run(16, lr), tmp_path / "group", progress=False, stacked=True)
            for k, lr in enumerate([0.01, 0.02, 0.04])}
    group = StackedGroup(tiny_problem, runs, on_error=lambda k, err: pytest.fail(str(err)))
    group.advance([0, 1, 2])
    group.advance([0, 2])  # 1 paused: set aside, its state kept
    assert sorted(len(s.members) for s in group.stacks) == [1, 2]
    group.advance([1])  # brought back: catches up alone
    group.advance([0, 1, 2])
    for k, lr in enumerate([0.01, 0.02, 0.04]):
        alone = Run(tiny_problem, cfg.run(16, lr), tmp_path / f"alone{k}", progress=False, stacked=True)
        single = StackedGroup(tiny_problem, {0: alone}, on_error=lambda k, err: pytest.fail(str(err)))
        for _ in range(3):
            single.advance([0])
        assert runs[k].step == alone.step
        np.testing.assert_allclose(runs[k].curve.values, alone.curve.values, rtol=1e-5)


def test_the_engine_is_checked_before_training(tiny_problem, tmp_path):
    with pytest.raises(ConfigError, match="engine must be one of"):
        make_experiment({**TINY, "engine": "fast"})
    per_example = make_experiment({**TINY, "engine": "stacked", "noise_method": "per_example"})
    with pytest.raises(ConfigError, match="one run at a time"):
        run_sweep(per_example, tmp_path, problem=tiny_problem, progress=False)
    assert not (tmp_path / "tiny" / "runs").exists()  # refused before any run


def test_auto_stacks_on_cuda_only_what_it_can(tiny_problem):
    cfg = make_experiment({**TINY, "noise_method": "auto"}).run(16, 0.1)
    assert not use_stacked(tiny_problem, cfg)  # a CPU: members one after the other
    on_gpu = copy.copy(tiny_problem)
    on_gpu.device = torch.device("cuda")  # only the device is read; the model is built on the CPU, nothing runs
    on_gpu.build_model = tiny_problem.build_model
    assert use_stacked(on_gpu, cfg)
    assert not use_stacked(on_gpu, dataclasses.replace(cfg, engine="sequential"))
    assert not use_stacked(on_gpu, dataclasses.replace(cfg, noise_method="per_example"))
    norm = copy.copy(on_gpu)
    norm.build_model = lambda *a, **k: nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4))
    assert "batch norm" in stacking_unsupported(norm, cfg)
    assert not use_stacked(norm, cfg)
    assert "equal micro-batches" in stacking_unsupported(on_gpu, dataclasses.replace(cfg, n_micro=3))
    recurrent = copy.copy(on_gpu)
    recurrent.build_model = lambda *a, **k: nn.LSTM(8, 4)
    assert stacking_unsupported(recurrent, cfg) is None and not use_stacked(recurrent, cfg)  # it would loop
    assert use_stacked(recurrent, dataclasses.replace(cfg, engine="stacked"))
    rl = copy.copy(on_gpu)
    rl.stream = lambda *a: None
    assert "reinforcement" in stacking_unsupported(rl, cfg)


def test_a_stack_whose_step_raises_fails_its_members_and_the_sweep_goes_on(tiny_problem, tmp_path, monkeypatch):
    calls = {"n": 0}
    step = StackedMembers.step_batch

    def flaky(self, batch):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("out of memory (simulated)")
        return step(self, batch)

    monkeypatch.setattr(StackedMembers, "step_batch", flaky)
    table = run_sweep(make_experiment({**TINY, "engine": "stacked"}), tmp_path, problem=tiny_problem, progress=False)
    failed = table[table["status"] == "failed"]
    assert failed["batch_units"].nunique() == 1 and failed["run_id"].nunique() >= 2  # the whole stack of one grid
    assert (table["status"] != "failed").any()  # the other batch sizes trained
    summary = load_run_summary(run_dir(tmp_path, "tiny", failed["run_id"].iloc[0]), failed["run_id"].iloc[0])
    assert "out of memory (simulated)" in summary["error"]
