"""The adaptive batch size of App. D: γ (D.5), the predicted savings, and the BatchSizeController."""

import math

import numpy as np
import pytest
import torch

from gns_utils import BatchSizeController, adaptive_batch_size, adaptive_gain, adaptive_speedup


@pytest.mark.parametrize("p", [0.5, 1.0, 2.0, 4.0])
def test_gamma_of_a_power_law_noise_scale_equals_its_closed_form(p):
    # ℬ(s) = s^p on s in (0, 1]: E[√ℬ] = 1/(1 + p/2), E[ℬ] = 1/(1 + p), so γ = (1 + p)/(1 + p/2)²
    s = (np.arange(200_000) + 0.5) / 200_000
    assert adaptive_gain(1e3 * s**p) == pytest.approx((1 + p) / (1 + p / 2) ** 2, rel=1e-6)


def _simulate(noise_scale, batch_of, s_total=1.0, ds=1e-4):
    """Training under the model of App. D: a step at batch B advances the full-batch steps s by
    1/(1 + ℬ(s)/B) (the (2.11) trade-off, step by step); returns the steps S and examples E to reach s_total."""
    s, steps, examples = 0.0, 0.0, 0.0
    while s < s_total:
        b = batch_of(s)
        advance = 1.0 / (1.0 + noise_scale(s) / b)
        # many steps of this size at once, ds of progress: ds / advance steps of b examples each
        steps += ds / advance
        examples += ds / advance * b
        s += ds
    return steps, examples


def test_adaptive_schedule_costs_one_plus_root_gamma_of_the_minimum_in_steps_and_examples():
    """Footnote 17: with B(s) = √(r·ℬ(s)) and r = E_min/S_min, S/S_min = E/E_min = 1 + √γ; a fixed batch at
    B_crit = E_min/S_min costs 2·S_min and 2·E_min."""
    def noise(s):  # ℬ grows 100× over training, as B_simple does on the image tasks
        return 10.0 * 100.0**s

    grid = (np.arange(100_000) + 0.5) / 100_000
    s_min, e_min = 1.0, float(np.mean(noise(grid)))  # E_min = ∫ℬ ds (B → 0), S_min = ∫ds (B → ∞)
    gamma = adaptive_gain(noise(grid))
    r = e_min / s_min
    steps, examples = _simulate(noise, lambda s: adaptive_batch_size(noise(s), r))
    assert steps / s_min == pytest.approx(adaptive_speedup(gamma), rel=1e-3)
    assert examples / e_min == pytest.approx(adaptive_speedup(gamma), rel=1e-3)
    fixed_steps, fixed_examples = _simulate(noise, lambda s: r)
    assert (fixed_steps / s_min, fixed_examples / e_min) == pytest.approx((2.0, 2.0), rel=1e-3)
    assert gamma < 0.8  # a noise scale that grows 100× leaves a real saving


def test_controller_in_powers_of_two_comes_within_a_few_percent_of_the_ideal_schedule():
    def noise(s):
        return 10.0 * 100.0**s

    grid = (np.arange(100_000) + 0.5) / 100_000
    e_min = float(np.mean(noise(grid)))
    control = BatchSizeController(r=e_min, batch_size=16, lr=0.1, min_interval=0, hysteresis=0.0)
    state = {"step": 0}

    def batch_of(s):
        state["step"] += 1
        control.update(noise(s), state["step"])
        return control.batch_size

    steps, examples = _simulate(noise, batch_of)
    ideal = adaptive_speedup(adaptive_gain(noise(grid)))
    assert steps / 1.0 == pytest.approx(ideal, rel=0.03)
    assert examples / e_min == pytest.approx(ideal, rel=0.03)
    # √(r·ℬ) runs from 46 to 464 (r = E_min = 215): 16 jumps to 64 at once, then each power of two up to 512
    assert [b for _, b, _ in control.history] == [16, 64, 128, 256, 512]


def test_controller_decisions_on_a_scripted_noise_scale():
    control = BatchSizeController(r=100.0, batch_size=32, lr=0.1, min_interval=10, hysteresis=0.05)
    # √(100·ℬ): ℬ = 10 → 31.6 (stay), ℬ = 40 → 63 (grow to 64), ℬ = 170 → 130 (to 128), ℬ = 2000 → 447 (to 512)
    assert not control.update(10.0, step=20)
    assert control.target == pytest.approx(math.sqrt(1000.0))
    assert control.update(40.0, step=21)
    assert (control.batch_size, control.lr) == (64, pytest.approx(0.2))  # lr_rule "linear": ε ∝ B
    assert not control.update(170.0, step=25)  # min_interval: 10 steps since the change at 21
    assert control.update(170.0, step=31) and control.batch_size == 128
    assert control.update(2000.0, step=41) and control.batch_size == 512  # jumps straight to the best size
    assert not control.update(1.0, step=60)  # decrease=False: never shrinks
    assert not control.update(math.nan, step=70) and not control.update(-5.0, step=71)  # early-training noise
    assert control.history == [(0, 32, 0.1), (21, 64, pytest.approx(0.2)), (31, 128, pytest.approx(0.4)),
                               (41, 512, pytest.approx(1.6))]


def test_hysteresis_holds_the_batch_until_the_gain_is_worth_it():
    # at B = 32 the next size 64 is better once √(r·ℬ) passes 45 (the geometric midpoint); with 5 % hysteresis the
    # cost c(B) = (B + ℬ)(1 + r/B) must fall by 5 %, which needs a larger noise scale
    eager = BatchSizeController(r=100.0, batch_size=32, lr=0.1, min_interval=0, hysteresis=0.0)
    calm = BatchSizeController(r=100.0, batch_size=32, lr=0.1, min_interval=0, hysteresis=0.05)
    b_simple = 22.0  # √(100·22) = 46.9: just past the midpoint
    assert eager.cost(64, b_simple) < eager.cost(32, b_simple) < eager.cost(64, b_simple) / 0.95
    assert eager.update(b_simple, 1) and not calm.update(b_simple, 1)
    needed = next(b for b in np.arange(22.0, 200.0, 0.5) if calm.cost(64, b) <= 0.95 * calm.cost(32, b))
    assert not calm.update(needed - 0.5, 2) and calm.update(needed, 3)


def test_decrease_and_integer_ratio_and_limits():
    control = BatchSizeController(r=100.0, batch_size=27, lr=0.09, ratio=3, min_interval=0, decrease=True,
                                  min_batch_size=3, max_batch_size=243, lr_rule="sqrt")
    assert not control.update(9.0, 1) and control.batch_size == 27  # √900 = 30: 27 stays best
    assert control.update(0.5, 2) and control.batch_size == 9  # √50 = 7.1: 9 (allowed: 3, 9, 27, 81, 243)
    assert control.lr == pytest.approx(0.09 / math.sqrt(3))  # "sqrt": ε ∝ √B
    assert control.update(1e6, 3) and control.batch_size == 243  # capped at max_batch_size


def test_lr_rule_callable_and_micro_batches():
    control = BatchSizeController(r=400.0, batch_size=32, lr=0.05, min_interval=0, micro_batch_size=16,
                                  lr_rule=lambda b: 0.5 / (1 + 200 / b))  # the fitted ε_opt(B) of (2.6)
    assert control.micro_batches == 2
    assert control.update(200.0, 1) and control.batch_size == 256 and control.micro_batches == 16
    assert control.lr == pytest.approx(0.5 / (1 + 200 / 256))
    shrinking = BatchSizeController(r=1.0, batch_size=64, lr=0.1, min_interval=0, micro_batch_size=16, decrease=True)
    assert shrinking.update(1.0, 1) and shrinking.batch_size == 16  # never below one micro-batch


def test_a_resumed_controller_continues_identically(tmp_path):
    rng = np.random.default_rng(0)
    series = 30.0 * np.exp(np.linspace(0, 3, 400)) * rng.lognormal(0, 0.3, 400)  # a noisy, growing B_simple

    def make():
        return BatchSizeController(r=200.0, batch_size=16, lr=0.1, min_interval=25, hysteresis=0.03)

    whole = make()
    for step, b in enumerate(series):
        whole.update(float(b), step)
    first = make()
    for step, b in enumerate(series[:170]):
        first.update(float(b), step)
    torch.save(first.state_dict(), tmp_path / "controller.pt")
    resumed = make()
    resumed.load_state_dict(torch.load(tmp_path / "controller.pt", weights_only=True))
    for step, b in enumerate(series[170:], start=170):
        resumed.update(float(b), step)
    assert resumed.history == whole.history and len(whole.history) >= 4
    assert (resumed.batch_size, resumed.lr) == (whole.batch_size, whole.lr)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="r must be a positive number"):
        BatchSizeController(r=0.0, batch_size=32, lr=0.1)
    with pytest.raises(ValueError, match="ratio must be an integer"):
        BatchSizeController(r=10.0, batch_size=32, lr=0.1, ratio=1.5)
    with pytest.raises(ValueError, match="lr_rule"):
        BatchSizeController(r=10.0, batch_size=32, lr=0.1, lr_rule="cubic")
    with pytest.raises(ValueError, match="multiple of micro_batch_size"):
        BatchSizeController(r=10.0, batch_size=30, lr=0.1, micro_batch_size=16)
