"""``B_noise = tr(HΣ) / (GᵀHG)`` (2.8) with Hessian-vector products, at one point in weight space.

``H`` is the Hessian of the loss; with ``H ∝ I`` ``B_noise`` equals ``B_simple = tr Σ / |G|^2``
(2.9). With per-example gradients ``g_i`` of ``n`` examples, ``ĝ = mean_i g_i`` and deviations
``d_i = g_i − ĝ``, the traces need ``Σ_i d_iᵀ H d_i`` and ``ĝᵀHĝ``.

* :func:`hessian_noise_scale`           one estimate; ``n + 1`` Hessian-vector products (exact
  per-example sum), or ``k + 1`` with ``directions = k`` random combinations of the ``d_i``.
* :func:`combine_hessian_noise_scales`  ``B_noise`` and ``B_simple`` from ``r`` independent
  estimates as ratios of means, with jackknife standard errors.

Use them at a few checkpoints, not every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence, cast

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vjp, vmap

from gns_utils.noise.ema import ratio_of_means_jackknife
from gns_utils.noise.per_example import (
    LossFn,
    ParamDict,
    _check_batch,
    _check_functional,
    _dict_sq_norm,
    _per_example_grad_fn,
    _split_state,
)

__all__ = ["CombinedHessianNoiseScale", "HessianNoiseScale", "combine_hessian_noise_scales", "hessian_noise_scale"]


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
        directions: random directions ``k`` behind ``Σ_i d_iᵀHd_i`` (None: the exact per-example sum).
    """

    b_noise: float
    b_simple: float
    trace_h_sigma: float
    g_h_g: float
    g2: float
    trace_sigma: float
    n: int
    population: bool
    directions: int | None = None


def _hvp_fn(model: nn.Module, loss_fn: LossFn, params: ParamDict, consts: ParamDict, inputs: torch.Tensor,
            targets: torch.Tensor) -> Callable[[ParamDict], ParamDict]:
    """``V`` → ``H V`` for a chunk of directions ``V`` (dict, leading dim c), ``H`` the Hessian of
    the mean loss over ``inputs`` at ``params``.

    Reverse-over-reverse: the vector-Jacobian product of ``grad`` (``vᵀH = (Hv)ᵀ``, ``H``
    symmetric). The graph of the gradient is built once and every chunk reuses it; unlike
    forward-over-reverse it needs no forward-mode formula from the loss, which ``F.mse_loss``
    (mean reduction) and ``F.huber_loss`` lack or get wrong.
    """

    def mean_loss(p: ParamDict) -> torch.Tensor:
        return loss_fn(functional_call(model, (p, consts), (inputs,)), targets)

    # vjp's return type includes has_aux=True's 3-tuple; without has_aux it is (output, vjp_fn)
    _, vjp_fn = cast(tuple[ParamDict, Callable[[ParamDict], tuple[ParamDict]]], vjp(grad(mean_loss), params))
    batched = vmap(vjp_fn)
    return lambda v: batched(v)[0]


def _dot_per_example(a: ParamDict, b: ParamDict) -> torch.Tensor:
    """``a_iᵀ b_i`` for each row ``i`` of two dicts of ``[c, *shape]`` tensors, returned in float64.

    Each parameter's row products are summed in the tensors' own dtype (torch's reductions sum
    pairwise, so float32 rows lose ~1e-7 relative) and the per-parameter results added in float64;
    converting whole per-example gradients to float64 first cost as much as the rest of the estimate.
    """
    total: torch.Tensor | None = None
    for k in a:
        rows = a[k].reshape(a[k].shape[0], -1)
        d = torch.einsum("ij,ij->i", rows, b[k].reshape(b[k].shape[0], -1).to(rows.dtype)).to(torch.float64)
        total = d if total is None else total + d
    if total is None:
        raise ValueError("no tensors to take products of")
    return total


def _sum_quadratic_forms(hvp: Callable[[ParamDict], ParamDict], vectors: ParamDict, chunk_size: int) -> torch.Tensor:
    """``Σ_j v_jᵀ H v_j`` over the rows of ``vectors``, ``chunk_size`` rows per product (float64)."""
    total: torch.Tensor | None = None
    rows = next(iter(vectors.values())).shape[0]
    for lo in range(0, rows, chunk_size):
        chunk = {k: v[lo:lo + chunk_size] for k, v in vectors.items()}
        s = _dot_per_example(chunk, hvp(chunk)).sum()
        total = s if total is None else total + s
    if total is None:
        raise ValueError("no vectors to take quadratic forms of")
    return total


def hessian_noise_scale(
    model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor, *,
    chunk_size: int = 16, population: bool = False,
    hessian_inputs: torch.Tensor | None = None, hessian_targets: torch.Tensor | None = None,
    directions: int | None = None, generator: torch.Generator | None = None, units_per_example: float = 1.0,
) -> HessianNoiseScale:
    """``B_noise = tr(HΣ) / (GᵀHG)`` (2.8) from per-example gradients and Hessian-vector products.

    With per-example gradients ``g_i`` of the ``n`` examples, ``ĝ = mean_i g_i`` and
    deviations ``d_i = g_i − ĝ``:

    * sample mode (``population=False``, the inputs are a random sample)::

          tr Σ   ≈ Σ_i |d_i|^2 / (n−1)          |G|^2 ≈ |ĝ|^2 − tr Σ / n
          tr(HΣ) ≈ Σ_i d_iᵀ H d_i / (n−1)       GᵀHG  ≈ ĝᵀHĝ − tr(HΣ) / n

      unbiased when ``H`` is independent of the sample: pass ``hessian_inputs``, a
      separate batch. With ``H`` from the same examples (the default) ``H`` and the
      ``g_i`` are correlated and ``tr(HΣ)`` carries an ``O(1/n)`` relative bias, set by
      fourth moments of the data (on the tests' linear regression +31 % at ``n = 6`` and
      +6 % at ``n = 32``; ``GᵀHG``, through its correction, far more).
    * population mode (``population=True``, the inputs are the whole finite dataset):
      ``Σ`` with ``1/n``, no corrections, ``G = ĝ``; exact.

    ``H`` is the Hessian of the mean loss over ``hessian_inputs`` (default: ``inputs``),
    applied ``chunk_size`` directions at a time as the vector-Jacobian product of the
    gradient (reverse-over-reverse, the gradient's graph built once); per-example gradients
    are computed twice (for ``ĝ``, then for the ``d_i``) instead of being stored.

    ``Σ_i d_iᵀHd_i`` is summed exactly (``directions=None``: ``n`` products) or estimated
    from ``k = directions`` random combinations ``v_j = Σ_i r_ij d_i`` with independent
    Rademacher signs ``r_ij = ±1``: ``E[v_jᵀHv_j] = Σ_i d_iᵀHd_i``, so
    ``Σ_j v_jᵀHv_j / k`` is unbiased (and so are ``tr(HΣ)`` and ``GᵀHG``, linear in it).
    The price is extra variance: with ``A_il = d_iᵀHd_l``,
    ``Var = 2 Σ_{i≠l} A_il^2 / k``, i.e. a relative standard deviation of ``tr(HΣ)`` of
    about ``sqrt(2 tr((HΣ)^2) / k) / tr(HΣ) = sqrt(2 / (k·r))``, where
    ``r = (tr HΣ)^2 / tr((HΣ)^2)`` is the effective rank of ``HΣ`` (1 ≤ r ≤ rank for
    positive semi-definite ``H``): at most ``sqrt(2/k)`` (32 % at ``k = 20``), independent of
    ``n``, and much less when many directions carry noise. It adds to the sampling noise of
    ``tr(HΣ)`` itself; :func:`combine_hessian_noise_scales` averages both over repeats.
    ``tr Σ`` and ``|G|^2`` stay exact sums.

    Cost: ``n + 1`` Hessian-vector products (``k + 1`` with ``directions``), each ≈ 2–4
    forward+backward passes over the Hessian batch: ``O(n · m)`` example-passes for ``m``
    Hessian examples, ``O(k · m)`` with ``directions`` (plus two per-example gradient passes,
    ``O(n)``, and ``k`` parameter-sized vectors in memory). Put the model in eval mode:
    dropout (``H`` would be random) and BatchNorm in train mode are refused.

    Args:
        model: the network (any dtype; use float64 for exact checks).
        loss_fn: ``loss_fn(outputs, targets)``, mean-reduced.
        inputs: ``n ≥ 2`` examples for the gradients (the whole dataset if ``population``).
        targets: their targets.
        chunk_size: examples / directions per vectorised chunk.
        population: treat ``inputs`` as the whole finite dataset (see above).
        hessian_inputs: optional separate examples defining ``H`` (sample mode).
        hessian_targets: their targets (required with ``hessian_inputs``).
        directions: ``k ≥ 1`` random directions for ``Σ_i d_iᵀHd_i``; None: the exact sum.
        generator: random generator (CPU) for the Rademacher signs; None: torch's global one.
        units_per_example: batch units per example when ``loss_fn`` is a mean over units within an
            example (tokens of a sequence: its length). ``tr Σ``, ``tr(HΣ)``, ``B_noise`` and
            ``B_simple`` then come out per unit (B in tokens); the default 1 keeps them per example.

    Returns:
        A :class:`HessianNoiseScale` (python floats); ``b_noise``/``b_simple`` are nan when
        their denominator estimate is ≤ 0.

    Raises:
        ValueError: fewer than 2 examples, mismatched inputs, bad ``chunk_size`` or
            ``directions``, train-mode BatchNorm or dropout, or ``hessian_inputs`` without
            ``hessian_targets``.
    """
    n = _check_batch(inputs, targets, chunk_size, minimum=2)
    if not (isinstance(units_per_example, (int, float)) and units_per_example > 0):
        raise ValueError(f"units_per_example must be a positive number, got {units_per_example!r}")
    if (hessian_inputs is None) != (hessian_targets is None):
        raise ValueError("pass hessian_inputs and hessian_targets together")
    if directions is not None and (isinstance(directions, bool) or not isinstance(directions, int) or directions < 1):
        raise ValueError(f"directions must be None or an integer >= 1, got {directions!r}")
    if hessian_inputs is None or hessian_targets is None:  # both None (checked above)
        hessian_inputs, hessian_targets = inputs, targets
    _check_functional(model)
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.training:
            raise ValueError(f"dropout {name!r} is in train mode; H would be random: call model.eval() first")
    params, consts = _split_state(model)
    grad_fn = _per_example_grad_fn(model, loss_fn)
    hvp = _hvp_fn(model, loss_fn, params, consts, hessian_inputs, hessian_targets)

    mean_grad = {k: torch.zeros_like(v) for k, v in params.items()}
    chunks = zip(inputs.split(chunk_size), targets.split(chunk_size))  # type: ignore[no-untyped-call]  # torch: untyped
    for x, y in chunks:
        for k, g in grad_fn(params, consts, x, y).items():
            mean_grad[k] += g.sum(0)
    mean_grad = {k: v / n for k, v in mean_grad.items()}

    if directions is not None:  # v_j = Σ_i r_ij d_i, accumulated chunk by chunk
        signs = torch.randint(0, 2, (n, directions), generator=generator).mul_(2).sub_(1)
        combos = {k: torch.zeros(directions, *v.shape, dtype=v.dtype, device=v.device) for k, v in params.items()}
    sum_dd = torch.zeros((), dtype=torch.float64, device=inputs.device)
    sum_dhd = torch.zeros((), dtype=torch.float64, device=inputs.device)
    lo = 0
    chunks = zip(inputs.split(chunk_size), targets.split(chunk_size))  # type: ignore[no-untyped-call]  # torch: untyped
    for x, y in chunks:
        dev = {k: g - mean_grad[k] for k, g in grad_fn(params, consts, x, y).items()}
        sum_dd += _dot_per_example(dev, dev).sum()
        if directions is None:
            sum_dhd += _sum_quadratic_forms(hvp, dev, chunk_size)
        else:
            for k, d in dev.items():
                r = signs[lo:lo + len(x)].to(device=d.device, dtype=d.dtype)
                combos[k] += (r.T @ d.reshape(len(x), -1)).reshape(combos[k].shape)
        lo += len(x)
    if directions is not None:
        sum_dhd = _sum_quadratic_forms(hvp, combos, chunk_size) / directions
    g_batched = {k: v.unsqueeze(0) for k, v in mean_grad.items()}
    ghg_raw = float(_sum_quadratic_forms(hvp, g_batched, 1))
    g2_raw = float(_dict_sq_norm(mean_grad))

    denom = n if population else n - 1
    trace_sigma, trace_h_sigma = float(sum_dd) / denom, float(sum_dhd) / denom
    g2, g_h_g = g2_raw, ghg_raw
    if not population:
        g2, g_h_g = g2_raw - trace_sigma / n, ghg_raw - trace_h_sigma / n
    # a batch of B units holds B / u examples: the covariances per unit are u times those per example
    trace_sigma, trace_h_sigma = trace_sigma * units_per_example, trace_h_sigma * units_per_example
    return HessianNoiseScale(
        b_noise=trace_h_sigma / g_h_g if g_h_g > 0 else math.nan,
        b_simple=trace_sigma / g2 if g2 > 0 else math.nan,
        trace_h_sigma=trace_h_sigma, g_h_g=g_h_g, g2=g2, trace_sigma=trace_sigma, n=n, population=population,
        directions=directions,
    )


@dataclass(frozen=True)
class CombinedHessianNoiseScale:
    """``B_noise`` (2.8) and ``B_simple`` (2.9) from ``r`` independent :class:`HessianNoiseScale` results.

    Attributes:
        b_noise: ``mean tr(HΣ) / mean GᵀHG`` over the repeats.
        b_noise_stderr: its delete-one-repeat jackknife standard error.
        b_simple: ``mean tr Σ / mean |G|^2``.
        b_simple_stderr: its jackknife standard error.
        trace_h_sigma: mean of the ``tr(HΣ)`` estimates.
        g_h_g: mean of the ``GᵀHG`` estimates.
        g2: mean of the ``|G|^2`` estimates.
        trace_sigma: mean of the ``tr Σ`` estimates.
        repeats: ``r``.
    """

    b_noise: float
    b_noise_stderr: float
    b_simple: float
    b_simple_stderr: float
    trace_h_sigma: float
    g_h_g: float
    g2: float
    trace_sigma: float
    repeats: int


def combine_hessian_noise_scales(results: Sequence[HessianNoiseScale]) -> CombinedHessianNoiseScale:
    """``B_noise`` and ``B_simple`` as ratios of means over independent repeats, with standard errors.

    Each result should come from its own gradient batch and its own separate Hessian batch
    (``hessian_inputs``), all of the same sizes, so that its four estimates are unbiased and
    independent of the other repeats'. The noise scales are ratios of the means,
    ``B_noise = mean tr(HΣ) / mean GᵀHG`` (2.8) and ``B_simple = mean tr Σ / mean |G|^2`` (2.9),
    never means of the per-repeat ratios (biased, and undefined where a denominator estimate
    is ≤ 0); each standard error is the delete-one-repeat jackknife of that ratio
    (:func:`~gns_utils.noise.ema.ratio_of_means_jackknife` with one repeat per block).

    Args:
        results: ``r ≥ 2`` results of :func:`hessian_noise_scale`, all in sample mode or all
            in population mode.

    Returns:
        A :class:`CombinedHessianNoiseScale`; a ratio and its error are nan when the summed
        denominator (or a leave-one-out sum) is ≤ 0.

    Raises:
        ValueError: fewer than 2 results, or sample and population results mixed.
    """
    results = list(results)
    if len(results) < 2:
        raise ValueError(f"need at least 2 repeats for a standard error, got {len(results)}")
    if len({r.population for r in results}) > 1:
        raise ValueError("results mix sample and population mode; combine one kind")
    field = {name: np.array([getattr(r, name) for r in results], dtype=float)
             for name in ("trace_h_sigma", "g_h_g", "trace_sigma", "g2")}
    b_noise = ratio_of_means_jackknife(field["trace_h_sigma"], field["g_h_g"], n_blocks=len(results))
    b_simple = ratio_of_means_jackknife(field["trace_sigma"], field["g2"], n_blocks=len(results))
    return CombinedHessianNoiseScale(
        b_noise=b_noise.estimate, b_noise_stderr=b_noise.stderr, b_simple=b_simple.estimate,
        b_simple_stderr=b_simple.stderr, **{k: float(v.mean()) for k, v in field.items()}, repeats=len(results),
    )
