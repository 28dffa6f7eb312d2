"""``B_noise = tr(HΣ) / (GᵀHG)`` (2.8) with Hessian-vector products, at one point in weight space.

``H`` is the Hessian of the loss; with ``H ∝ I`` ``B_noise`` equals ``B_simple = tr Σ / |G|^2``
(2.9). :func:`hessian_noise_scale` costs ``n + 1`` Hessian-vector products: use it at a few
checkpoints, not every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

from gns_utils.noise.per_example import (
    LossFn,
    ParamDict,
    _check_batch,
    _check_functional,
    _dict_sq_norm,
    _per_example_grad_fn,
    _split_state,
)

__all__ = ["HessianNoiseScale", "hessian_noise_scale"]


@dataclass(frozen=True)
class HessianNoiseScale:
    """``B_noise`` (2.8) and ``B_simple`` (2.9) at one point in weight space.

    Attributes:
        b_noise: ``tr(HΣ) / (GᵀHG)``  (2.8).
        b_simple: ``tr Σ / |G|^2``  (2.9).
        trace_h_sigma: estimate of ``tr(HΣ)``.
        g_h_g: estimate of ``GᵀHG``.
        g2: estimate of ``|G|^2``.
        trace_sigma: estimate of ``tr Σ``.
        n: examples used for the gradients.
        population: whether the examples were treated as the whole (finite) dataset.
    """

    b_noise: float
    b_simple: float
    trace_h_sigma: float
    g_h_g: float
    g2: float
    trace_sigma: float
    n: int
    population: bool


def _batched_hvp_fn(model: nn.Module, loss_fn: LossFn, consts: ParamDict, inputs: torch.Tensor,
                    targets: torch.Tensor) -> Callable[[ParamDict, ParamDict], ParamDict]:
    """``f(params, V)`` → ``H V`` for a chunk of directions ``V`` (dict, leading dim c),
    ``H`` the Hessian of the mean loss over ``inputs``; forward-over-reverse (jvp of grad)."""

    def mean_loss(params: ParamDict) -> torch.Tensor:
        return loss_fn(functional_call(model, (params, consts), (inputs,)), targets)

    grad_fn = grad(mean_loss)

    def hvp(params: ParamDict, v: ParamDict) -> ParamDict:
        return jvp(grad_fn, (params,), (v,))[1]

    return vmap(hvp, in_dims=(None, 0))


def _dot_per_example(a: ParamDict, b: ParamDict) -> torch.Tensor:
    """``a_iᵀ b_i`` for each row ``i`` of two dicts of ``[c, *shape]`` tensors (float64)."""
    total = None
    for k in a:
        d = (a[k].reshape(a[k].shape[0], -1).to(torch.float64) * b[k].reshape(b[k].shape[0], -1)).sum(1)
        total = d if total is None else total + d
    return total


def hessian_noise_scale(
    model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor,
    chunk_size: int = 16, population: bool = False,
    hessian_inputs: torch.Tensor | None = None, hessian_targets: torch.Tensor | None = None,
) -> HessianNoiseScale:
    """``B_noise = tr(HΣ) / (GᵀHG)`` (2.8) from per-example gradients and Hessian-vector products.

    With per-example gradients ``g_i`` of the ``n`` examples, ``ĝ = mean_i g_i`` and
    deviations ``d_i = g_i − ĝ``:

    * sample mode (``population=False``, the inputs are a random sample)::

          tr Σ   ≈ Σ_i |d_i|^2 / (n−1)          |G|^2 ≈ |ĝ|^2 − tr Σ / n
          tr(HΣ) ≈ Σ_i d_iᵀ H d_i / (n−1)       GᵀHG  ≈ ĝᵀHĝ − tr(HΣ) / n

      unbiased when ``H`` is independent of the sample (pass ``hessian_inputs``, a
      separate batch); with ``H`` from the same examples (the default) ``H`` and the
      ``g_i`` are correlated and ``tr(HΣ)`` carries an ``O(1/n)`` relative bias.
    * population mode (``population=True``, the inputs are the whole finite dataset):
      ``Σ`` with ``1/n``, no corrections, ``G = ĝ``; exact.

    ``H`` is the Hessian of the mean loss over ``hessian_inputs`` (default: ``inputs``),
    applied with forward-over-reverse products (``torch.func.jvp`` of ``grad``),
    ``chunk_size`` directions at a time; per-example gradients are computed twice (for
    ``ĝ``, then for the ``d_i``) instead of being stored.

    Cost: ``n + 1`` Hessian-vector products, each ≈ 2–4 forward+backward passes over the
    Hessian batch, i.e. ``O(n · m)`` example-passes for ``m`` Hessian examples — use it at a
    few checkpoints on a few hundred examples, not every step. Put the model in eval
    mode: dropout (``H`` would be random) and BatchNorm in train mode are refused.

    Args:
        model: the network (any dtype; use float64 for exact checks).
        loss_fn: ``loss_fn(outputs, targets)``, mean-reduced.
        inputs: ``n ≥ 2`` examples for the gradients (the whole dataset if ``population``).
        targets: their targets.
        chunk_size: examples / directions per vectorised chunk.
        population: treat ``inputs`` as the whole finite dataset (see above).
        hessian_inputs: optional separate examples defining ``H`` (sample mode).
        hessian_targets: their targets (required with ``hessian_inputs``).

    Returns:
        A :class:`HessianNoiseScale` (python floats); ``b_noise``/``b_simple`` are nan when
        their denominator estimate is ≤ 0.

    Raises:
        ValueError: fewer than 2 examples, mismatched inputs, bad ``chunk_size``,
            train-mode BatchNorm or dropout, or ``hessian_inputs`` without ``hessian_targets``.
    """
    n = _check_batch(inputs, targets, chunk_size, minimum=2)
    if (hessian_inputs is None) != (hessian_targets is None):
        raise ValueError("pass hessian_inputs and hessian_targets together")
    if hessian_inputs is None:
        hessian_inputs, hessian_targets = inputs, targets
    _check_functional(model)
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.training:
            raise ValueError(f"dropout {name!r} is in train mode; H would be random: call model.eval() first")
    params, consts = _split_state(model)
    grad_fn = _per_example_grad_fn(model, loss_fn)
    hvp_fn = _batched_hvp_fn(model, loss_fn, consts, hessian_inputs, hessian_targets)

    mean_grad = {k: torch.zeros_like(v) for k, v in params.items()}
    for x, y in zip(inputs.split(chunk_size), targets.split(chunk_size)):
        for k, g in grad_fn(params, consts, x, y).items():
            mean_grad[k] += g.sum(0)
    mean_grad = {k: v / n for k, v in mean_grad.items()}

    sum_dd = torch.zeros((), dtype=torch.float64, device=inputs.device)
    sum_dhd = torch.zeros((), dtype=torch.float64, device=inputs.device)
    for x, y in zip(inputs.split(chunk_size), targets.split(chunk_size)):
        dev = {k: g - mean_grad[k] for k, g in grad_fn(params, consts, x, y).items()}
        sum_dd += _dot_per_example(dev, dev).sum()
        sum_dhd += _dot_per_example(dev, hvp_fn(params, dev)).sum()
    g_batched = {k: v.unsqueeze(0) for k, v in mean_grad.items()}
    ghg_raw = float(_dot_per_example(g_batched, hvp_fn(params, g_batched))[0])
    g2_raw = float(_dict_sq_norm(mean_grad))

    denom = n if population else n - 1
    trace_sigma, trace_h_sigma = float(sum_dd) / denom, float(sum_dhd) / denom
    g2, g_h_g = g2_raw, ghg_raw
    if not population:
        g2, g_h_g = g2_raw - trace_sigma / n, ghg_raw - trace_h_sigma / n
    return HessianNoiseScale(
        b_noise=trace_h_sigma / g_h_g if g_h_g > 0 else math.nan,
        b_simple=trace_sigma / g2 if g2 > 0 else math.nan,
        trace_h_sigma=trace_h_sigma, g_h_g=g_h_g, g2=g2, trace_sigma=trace_sigma, n=n, population=population,
    )
