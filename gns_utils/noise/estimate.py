"""The A.2 estimates: unbiased ``|G|^2`` and ``tr Σ`` from squared gradient norms at two batch sizes.

Symbols (McCandlish et al. 2018, section 2 and Appendix A): ``G`` the true gradient, ``Σ``
the per-example gradient covariance (2.2); a batch of ``B`` i.i.d. examples has mean
gradient ``G_B`` with ``E|G_B|^2 = |G|^2 + tr Σ / B`` (2.3, Appendix A.1). Two batch sizes
``B_small < B_big`` give (A.2)::

    |G|^2 ≈ (B_big |G_big|^2 − B_small |G_small|^2) / (B_big − B_small)
    tr Σ  ≈ (|G_small|^2 − |G_big|^2) / (1/B_small − 1/B_big)

Batch units: ``b_small``, ``b_big`` count the units the loss is a mean over (examples,
tokens for language models, frames for games); ``tr Σ`` is then per unit.

* :func:`two_batch_estimates`     the two formulas above, on numbers, arrays or tensors.
* :func:`data_parallel_estimate`  the pair from each rank's gradient and the all-reduced one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch

Number = Union[float, int]
ArrayLike = Union[float, np.ndarray, torch.Tensor]

__all__ = ["NoiseEstimate", "data_parallel_estimate", "two_batch_estimates"]


@dataclass(frozen=True)
class NoiseEstimate:
    """Unbiased one-step estimates of ``|G|^2`` and ``tr Σ`` (A.2).

    Attributes:
        g2: estimate of ``|G|^2``; may be negative when ``b_big ≪ B_simple``.
        trace_sigma: estimate of ``tr Σ`` (per batch unit).
        b_small: the small batch size, in batch units.
        b_big: the big batch size, in batch units.
    """

    g2: ArrayLike
    trace_sigma: ArrayLike
    b_small: float
    b_big: float


def _check_sq_norm(name: str, value: ArrayLike) -> None:
    """Raise ValueError unless every element of ``value`` is finite and ≥ 0."""
    if isinstance(value, (int, float)):  # the per-step case: no array machinery
        finite, negative = math.isfinite(value), value < 0
    elif isinstance(value, torch.Tensor):
        finite = bool(torch.isfinite(value).all())
        negative = finite and bool((value < 0).any())
    else:
        arr = np.asarray(value, dtype=float)
        finite = bool(np.isfinite(arr).all())
        negative = finite and bool((arr < 0).any())
    if not finite:
        raise ValueError(f"{name} must be finite, got a non-finite value (nan or inf)")
    if negative:
        raise ValueError(f"{name} is a squared norm and must be non-negative, got a negative value")


def _check_batch_sizes(b_small: Number, b_big: Number) -> tuple[float, float]:
    """Validate and return ``(b_small, b_big)`` as floats."""
    b_small, b_big = float(b_small), float(b_big)
    if not (math.isfinite(b_small) and math.isfinite(b_big)):
        raise ValueError(f"batch sizes must be finite, got b_small={b_small}, b_big={b_big}")
    if b_small < 1:
        raise ValueError(f"b_small must be >= 1 batch unit, got {b_small}")
    if b_big <= b_small:
        raise ValueError(f"b_big must be larger than b_small, got b_small={b_small}, b_big={b_big}")
    return b_small, b_big


def two_batch_estimates(
    sq_norm_small: ArrayLike, sq_norm_big: ArrayLike, b_small: Number, b_big: Number
) -> NoiseEstimate:
    """Unbiased ``|G|^2`` and ``tr Σ`` from squared gradient norms at two batch sizes (A.2).

    With ``E|G_B|^2 = |G|^2 + tr Σ / B`` (2.3, Appendix A.1), solving the two equations gives::

        |G|^2 ≈ (B_big |G_big|^2 − B_small |G_small|^2) / (B_big − B_small)
        tr Σ  ≈ (|G_small|^2 − |G_big|^2) / (1/B_small − 1/B_big)

    Both are unbiased when ``sq_norm_small`` and ``sq_norm_big`` are (each may itself be
    an average of several independent squared norms at that batch size).

    Args:
        sq_norm_small: ``|G_small|^2``; a float, numpy array or tensor (elementwise).
        sq_norm_big: ``|G_big|^2``; same type and shape as ``sq_norm_small``.
        b_small: ``B_small`` in batch units, ≥ 1.
        b_big: ``B_big`` in batch units, > ``b_small``.

    Returns:
        A :class:`NoiseEstimate` whose ``g2`` and ``trace_sigma`` have the inputs' type
        (python floats for python numbers).

    Raises:
        ValueError: ``b_small < 1``, ``b_big <= b_small``, or a negative or non-finite norm.
    """
    b_small, b_big = _check_batch_sizes(b_small, b_big)
    _check_sq_norm("sq_norm_small", sq_norm_small)
    _check_sq_norm("sq_norm_big", sq_norm_big)
    if isinstance(sq_norm_small, (int, float)) and isinstance(sq_norm_big, (int, float)):
        sq_norm_small, sq_norm_big = float(sq_norm_small), float(sq_norm_big)
    g2 = (b_big * sq_norm_big - b_small * sq_norm_small) / (b_big - b_small)
    trace_sigma = (sq_norm_small - sq_norm_big) / (1.0 / b_small - 1.0 / b_big)
    return NoiseEstimate(g2=g2, trace_sigma=trace_sigma, b_small=b_small, b_big=b_big)


def data_parallel_estimate(
    local_sq_norm: ArrayLike, global_sq_norm: ArrayLike, local_batch: Number, world_size: int,
    all_reduce: bool | None = None,
) -> NoiseEstimate:
    """``|G|^2`` and ``tr Σ`` from each rank's local gradient and the all-reduced one (A.2).

    ``b_small`` = the local batch (units per rank), ``b_big = local_batch × world_size``.
    The small squared norm is the mean over ranks of ``|G_local|^2``: when a
    ``torch.distributed`` process group is initialised the local value is summed over
    ranks with ``all_reduce`` and divided by ``world_size``; otherwise
    ``local_sq_norm`` is taken to be that mean already (e.g. computed by the caller).
    The global gradient must be the mean of the local ones (DDP's default).

    Args:
        local_sq_norm: ``|G_local|^2`` of this rank's gradient (before the all-reduce).
        global_sq_norm: ``|G_global|^2`` of the all-reduced (averaged) gradient.
        local_batch: units per rank per step.
        world_size: number of ranks, ≥ 2.
        all_reduce: force (True) or skip (False) the all-reduce; None = all-reduce, which needs an
            initialised process group (ValueError otherwise, naming the two fixes).

    Returns:
        A :class:`NoiseEstimate` (python floats).

    Raises:
        ValueError: ``world_size < 2``, no process group with ``all_reduce=None``, a ``world_size``
            other than the process group's, or the errors of :func:`two_batch_estimates`.
    """
    if world_size < 2:
        raise ValueError(f"world_size must be >= 2 for a data-parallel estimate, got {world_size}")
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    if all_reduce is None:
        if not initialised:  # the caller's local norm would silently stand for the mean over ranks
            raise ValueError("no torch.distributed process group is initialised, so this rank's |G_local|^2 cannot be "
                             "averaged over ranks: call torch.distributed.init_process_group first (torchrun does), "
                             "or pass all_reduce=False with local_sq_norm already the mean over ranks of |G_local|^2")
        all_reduce = True
    if all_reduce and initialised and torch.distributed.get_world_size() != world_size:
        raise ValueError(f"world_size={world_size} but the process group has {torch.distributed.get_world_size()} "
                         "ranks; pass torch.distributed.get_world_size()")
    local = torch.as_tensor(local_sq_norm, dtype=torch.float64).detach().clone()
    if all_reduce:
        if isinstance(local_sq_norm, torch.Tensor):
            local = local.to(local_sq_norm.device)
        torch.distributed.all_reduce(local, op=torch.distributed.ReduceOp.SUM)
        local = local / world_size
    big = float(global_sq_norm.detach().double()) if isinstance(global_sq_norm, torch.Tensor) else float(global_sq_norm)
    return two_batch_estimates(float(local), big, local_batch, float(local_batch) * world_size)
