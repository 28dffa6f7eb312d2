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
    # by hand, not the sign of B_noise (GᵀHG's estimate is <= 0 at 30 % of seeds here):
    # g_i = 2 x_i (x_iᵀw − y_i), and H = 2 mean x xᵀ over the Hessian batch alone
    g = 2 * x * (x @ model.weight.detach().T - y)
    dev, h = g - g.mean(0), 2 * x[:8].T @ x[:8] / 8
    trace_h_sigma = float((dev @ h * dev).sum()) / 15
    assert res.trace_h_sigma == pytest.approx(trace_h_sigma, rel=1e-10)
    assert res.g_h_g == pytest.approx(float(g.mean(0) @ h @ g.mean(0)) - trace_h_sigma / 16, rel=1e-10)


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


def _train(model, opt, monitor, ema, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 4, generator=gen)
        y = x.sum(1, keepdim=True) + torch.randn(16, 1, generator=gen)
        opt.zero_grad()
        for xb, yb in zip(x.chunk(2), y.chunk(2)):
            (F.mse_loss(model(xb), yb) / 2).backward()
            monitor.after_micro_batch(len(xb))
        ema.update(monitor.after_step())
        opt.step()


def test_a_resumed_training_continues_the_same_b_simple_series(tmp_path):
    from gns_utils.noise import NoiseScaleEMA

    def fresh():
        torch.manual_seed(0)
        model = nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        return model, opt, GradientNoiseMonitor(model.parameters()), NoiseScaleEMA(decay=0.9, adaptive=4)

    model, opt, monitor, ema = fresh()
    _train(model, opt, monitor, ema, 30, seed=1)
    _train(model, opt, monitor, ema, 30, seed=2)
    unbroken = ema.history()

    model, opt, monitor, ema = fresh()
    _train(model, opt, monitor, ema, 30, seed=1)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "ema": ema.state_dict(),
                "monitor": monitor.state_dict()}, tmp_path / "ckpt.pt")
    model, opt, monitor, ema = fresh()
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)  # torch's safe default loads it
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    ema.load_state_dict(state["ema"])
    monitor.load_state_dict(state["monitor"])
    _train(model, opt, monitor, ema, 30, seed=2)
    for key, values in unbroken.items():
        torch.testing.assert_close(torch.as_tensor(ema.history()[key]), torch.as_tensor(values), rtol=0, atol=0, equal_nan=True,
                                   msg=lambda m, key=key: f"{key}: {m}")
    assert monitor.n_steps == 60 and ema.count == 60


def test_the_moving_average_keeps_a_bounded_history():
    from gns_utils.noise import NoiseEstimate, NoiseScaleEMA

    ema, unbounded = NoiseScaleEMA(decay=0.9, max_history=100), NoiseScaleEMA(decay=0.9, max_history=None)
    for t in range(1000):
        est = NoiseEstimate(g2=1.0 + 0.001 * t, trace_sigma=5.0, b_small=1.0, b_big=8.0)
        ema.update(est)
        unbounded.update(est)
    assert len(ema._rows["g2"]) <= 200 and len(ema.history()["g2"]) == 100
    assert ema.b_simple == unbounded.b_simple and ema.count == 1000
    assert ema.uncertainty().estimate == pytest.approx(unbounded.uncertainty().estimate)


@pytest.mark.parametrize("source", ["micro_batches", "per_example"])
@pytest.mark.parametrize("change", ["clip", "unscale"])
def test_clipping_or_unscaling_before_after_step_is_refused(source, change):
    """Before: B_simple came out as nonsense (negative, or far off) with no message."""
    from gns_utils.noise import PerExampleNormMonitor

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = GradientNoiseMonitor(model.parameters()) if source == "micro_batches" else PerExampleNormMonitor(model)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    for wrong in (True, False):
        opt.zero_grad()
        for xb, yb in zip(x.chunk(2), y.chunk(2)):
            if source == "per_example":
                with monitor.capture():
                    loss = F.mse_loss(model(xb), yb) / 2
            else:
                loss = F.mse_loss(model(xb), yb) / 2
            loss.backward()
            monitor.after_micro_batch(len(xb))
        if wrong:
            if change == "clip":
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
            else:  # what GradScaler.unscale_ does: divide the gradients in place
                torch._foreach_mul_([p.grad for p in model.parameters()], 1 / 1024)
            with pytest.raises(RuntimeError, match="before clipping or unscaling"):
                monitor.after_step()
        else:  # the right order: measure, then clip
            assert monitor.after_step() is not None
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
        opt.step()


def test_with_a_grad_scaler_the_estimate_is_that_of_the_unscaled_gradients_and_overflow_steps_are_skipped():
    torch.manual_seed(0)
    x, y = torch.randn(16, 4), torch.randn(16, 1)

    def step(scaler, blow_up=False):
        torch.manual_seed(1)
        model = nn.Linear(4, 1)
        monitor = GradientNoiseMonitor(model.parameters())
        scale = scaler.get_scale() if scaler else 1.0
        for xb, yb in zip(x.chunk(4), y.chunk(4)):
            loss = F.mse_loss(model(xb), yb) / 4 * (1e38 if blow_up else 1.0)
            (scaler.scale(loss) if scaler else loss).backward()
            monitor.after_micro_batch(len(xb), loss_scale=scale / 4)  # the scaler's factor is divided out
        return monitor, monitor.after_step()

    _, plain = step(None)
    _, scaled = step(torch.amp.GradScaler("cpu", init_scale=2.0**16))
    assert scaled.g2 == pytest.approx(plain.g2, rel=1e-6) and scaled.trace_sigma == pytest.approx(plain.trace_sigma,
                                                                                                  rel=1e-6)
    monitor, overflow = step(torch.amp.GradScaler("cpu", init_scale=2.0**16), blow_up=True)
    assert overflow is None and monitor.n_skipped == 1  # the step the scaler skips gives no estimate


def test_big_norm_from_the_hooks_equals_the_accumulated_gradient_and_survives_clipping():
    torch.manual_seed(0)
    x, y = torch.randn(24, 4, dtype=torch.float64), torch.randn(24, 1, dtype=torch.float64)
    estimates = {}
    for mode in ("grad", "hooks"):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()
        monitor = GradientNoiseMonitor(model.parameters(), big_norm=mode)
        for xb, yb in zip(x.split([6, 8, 10]), y.split([6, 8, 10])):  # unequal micro-batches
            (F.mse_loss(model(xb), yb) * len(xb) / 24).backward()
            monitor.after_micro_batch(len(xb))
        if mode == "hooks":
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)  # a trainer clipping before its callback
        estimates[mode] = monitor.after_step()
    assert estimates["hooks"].g2 == pytest.approx(estimates["grad"].g2, rel=1e-10)
    assert estimates["hooks"].trace_sigma == pytest.approx(estimates["grad"].trace_sigma, rel=1e-10)


def test_hessian_noise_scale_in_units_of_tokens():
    """A loss averaged over the L units of each example: B_noise and B_simple per unit are L times those per example."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1, bias=False).double()
    x, y = torch.randn(32, 3, dtype=torch.float64), torch.randn(32, 1, dtype=torch.float64)
    per_example = hessian_noise_scale(model, F.mse_loss, x, y, population=True)
    per_token = hessian_noise_scale(model, F.mse_loss, x, y, population=True, units_per_example=20)
    assert per_token.b_noise == pytest.approx(20 * per_example.b_noise, rel=1e-12)
    assert per_token.b_simple == pytest.approx(20 * per_example.b_simple, rel=1e-12)
    assert per_token.g2 == pytest.approx(per_example.g2, rel=1e-12)
    with pytest.raises(ValueError, match="units_per_example"):
        hessian_noise_scale(model, F.mse_loss, x, y, units_per_example=0)


def test_a_compiled_model_gets_a_message_that_names_the_alternative():
    from gns_utils.noise import PerExampleNormMonitor

    compiled = torch.compile(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)))  # compiles lazily
    with pytest.raises(ValueError, match="torch.compile.*GradientNoiseMonitor"):
        PerExampleNormMonitor(compiled)


def test_per_example_monitor_sums_half_precision_gradients_in_float32_or_better():
    """bf16 gradients: the batch norm is the float64 sum of the squared gradient entries, not a bf16-rounded norm."""
    from gns_utils.noise import PerExampleNormMonitor

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 3)).to(torch.bfloat16)
    x, y = torch.randn(32, 20).to(torch.bfloat16), torch.randint(0, 3, (32,))
    monitor = PerExampleNormMonitor(model)
    with monitor.capture():
        loss = F.cross_entropy(model(x).float(), y)
    loss.backward()
    monitor.after_micro_batch(32)
    est = monitor.after_step()
    big = sum(float(p.grad.double().square().sum()) for p in model.parameters())
    assert est.g2 + est.trace_sigma / est.b_big == pytest.approx(big, rel=1e-6)  # a bf16 norm is off by ~1e-3
    reference = model.to(torch.float64)  # the same weights in float64: the small norm agrees to bf16's accuracy
    ref_monitor = PerExampleNormMonitor(reference)
    reference.zero_grad()
    with ref_monitor.capture():
        loss = F.cross_entropy(reference(x.double()), y)
    loss.backward()
    ref_monitor.after_micro_batch(32)
    ref = ref_monitor.after_step()
    assert est.trace_sigma == pytest.approx(ref.trace_sigma, rel=0.02)


def test_micro_batch_monitor_refuses_train_mode_batchnorm_when_given_the_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1))
    x, y = torch.randn(16, 4), torch.randn(16, 1)

    def step(monitor):
        model.zero_grad()
        for xb, yb in zip(x.chunk(2), y.chunk(2)):
            (F.mse_loss(model(xb), yb) / 2).backward()
            monitor.after_micro_batch(len(xb))
        return monitor.after_step()

    with pytest.raises(ValueError, match="BatchNorm '1' is in train mode.*allow_batchnorm=True"):
        step(GradientNoiseMonitor(model))
    assert step(GradientNoiseMonitor(model, allow_batchnorm=True)) is not None  # measured knowingly
    model.eval()  # running statistics: each micro-batch's gradient is a mean of per-example gradients again
    assert step(GradientNoiseMonitor(model)).trace_sigma > 0


def test_hessian_noise_scale_on_the_lstm_language_model_matches_plain_double_backward():
    """nn.LSTM on CPU (float32, the fused mkldnn kernel): B_noise's four sums against per-example autograd
    gradients and Hessian-vector products by double backward, computed without torch.func."""
    from gns_utils.experiments.models import LSTMLanguageModel

    torch.manual_seed(0)
    model = LSTMLanguageModel(vocab_size=11, embed_dim=6, hidden=8).eval()
    x, y = torch.randint(0, 11, (6, 7)), torch.randint(0, 11, (6, 7))

    def loss(out, t):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), t.reshape(-1))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # vmap's fallback for the fused LSTM kernel is slow, not wrong
        res = hessian_noise_scale(model, loss, x, y, population=True, chunk_size=3, units_per_example=7)
    params = list(model.parameters())

    def flat(grads):
        return torch.cat([g.reshape(-1) for g in grads]).double()

    per = torch.stack([flat(torch.autograd.grad(loss(model(x[i:i + 1]), y[i:i + 1]), params)) for i in range(6)])
    mean, dev = per.mean(0), per - per.mean(0)
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss(model(x), y), params, create_graph=True)])

    def hvp(v):
        return flat(torch.autograd.grad(g, params, grad_outputs=v.float(), retain_graph=True))

    assert res.trace_sigma == pytest.approx(7 * float((dev * dev).sum()) / 6, rel=1e-5)  # per token: × 7
    assert res.trace_h_sigma == pytest.approx(7 * float(sum(d @ hvp(d) for d in dev)) / 6, rel=1e-5)
    assert res.g_h_g == pytest.approx(float(mean @ hvp(mean)), rel=1e-5)
    assert res.g2 == pytest.approx(float(mean @ mean), rel=1e-5)


@pytest.mark.parametrize("sequence", [False, True])
def test_per_example_norms_can_be_read_out_and_equal_torch_func_per_sample_gradients(sequence):
    from torch.func import functional_call, grad, vmap

    from gns_utils.noise import PerExampleNormMonitor

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2)).double()
    model[0].bias.requires_grad_(False)  # a frozen bias: not part of any g_i
    shape = (10, 3, 5) if sequence else (10, 5)
    x, y = torch.randn(*shape, dtype=torch.float64), torch.randn(*shape[:-1], 2, dtype=torch.float64)
    monitor = PerExampleNormMonitor(model)
    assert monitor.sq_norms is None
    for xb, yb in zip(x.split([4, 6]), y.split([4, 6])):  # two unequal micro-batches, loss scaled by n_j / n
        with monitor.capture():
            loss = F.mse_loss(model(xb), yb) * len(xb) / len(x)
        loss.backward()
        monitor.after_micro_batch(len(xb))
    monitor.after_step()
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    frozen = {k: v.detach() for k, v in model.named_parameters() if not v.requires_grad}

    def example_loss(p, xi, yi):
        return F.mse_loss(functional_call(model, (p, frozen), (xi.unsqueeze(0),)), yi.unsqueeze(0))

    per = vmap(grad(example_loss), in_dims=(None, 0, 0))(params, x, y)
    expected = sum(g.reshape(len(x), -1).square().sum(1) for g in per.values())
    assert monitor.sq_norms.dtype == torch.float64
    torch.testing.assert_close(monitor.sq_norms, expected, rtol=1e-10, atol=0)
