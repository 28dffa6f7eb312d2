"""``B_simple = tr Σ / |G|^2`` (2.9) at a checkpoint from ``k`` micro-batch gradients, in any metric.

Each of ``k`` independent micro-batches ``j`` of ``m_j`` examples (or batch units: tokens,
frames) gives a gradient ``g_j`` with ``E g_j = G`` and covariance ``Σ / m_j`` (2.3). With
``M = Σ_j m_j`` and the pooled gradient ``ĝ = Σ_j m_j g_j / M`` the unbiased estimates are
(A.2 between groups; for equal groups of ``m``)::

    tr Σ  ≈ Σ_j m_j |g_j − ĝ|^2 / (k − 1)      = m/(k−1) Σ_j |g_j − ĝ|^2
    |G|^2 ≈ |ĝ|^2 − tr Σ / M                   = |ĝ|^2 − tr Σ / (k·m)

since ``E Σ_j m_j |g_j − ĝ|^2 = Σ_j m_j (|G|^2 + tr Σ/m_j) − M (|G|^2 + tr Σ/M) = (k − 1) tr Σ``.
For equal groups they are the means over ``j`` of the A.2 pairs with ``B_small = m`` (group
``j``) and ``B_big = k·m`` (all groups), so ``B_simple`` is a ratio of means.

A preconditioner ``P`` (elementwise, e.g. Adam's ``1/(sqrt(v̂) + ε)``) measures the noise
in the metric the optimizer steps in: every ``g_j`` becomes ``P ⊙ g_j``, whose mean is ``PG``
and covariance ``PΣP / m_j``, so the same formulas give ``tr(PΣP)`` and ``|PG|^2`` and
``B_simple = tr(PΣP) / |PG|^2``. A constant ``P = c·1`` leaves it unchanged.

* :func:`checkpoint_noise_scale`  the estimates and a delete-one-group jackknife error; plain
  autograd, so any model (recurrent nets, autoencoders, ...) and any loss.
* :func:`adam_preconditioner`     the ``P`` a ``torch.optim.Adam`` applies at its next step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, Union, cast

import numpy as np
import torch
from torch import nn

from gns_utils.noise.monitors import suspended_monitors
from gns_utils.noise.per_example import _train_mode_batchnorm

__all__ = ["CheckpointNoiseScale", "adam_preconditioner", "checkpoint_noise_scale"]

Preconditioner = Union[Mapping[str, torch.Tensor], Sequence[torch.Tensor]]


@dataclass(frozen=True)
class CheckpointNoiseScale:
    """``B_simple`` (2.9) at one point in weight space, from ``k`` micro-batch gradients.

    Attributes:
        b_simple: ``tr Σ / |G|^2`` (``tr(PΣP) / |PG|^2`` with a preconditioner), in batch units;
            nan when the ``|G|^2`` estimate is ≤ 0.
        stderr: delete-one-group jackknife standard error of ``b_simple`` (nan for ``k = 2`` or
            when a leave-one-out ``|G|^2`` is ≤ 0).
        g2: estimate of ``|G|^2`` (``|PG|^2``).
        trace_sigma: estimate of ``tr Σ`` (``tr(PΣP)``) per batch unit.
        k: micro-batches.
        m: batch units per micro-batch (their mean when they differ).
        preconditioned: whether a preconditioner was applied.
    """

    b_simple: float
    stderr: float
    g2: float
    trace_sigma: float
    k: int
    m: float
    preconditioned: bool


def _group_estimates(gram: np.ndarray, units: np.ndarray) -> tuple[float, float]:
    """``(|G|^2, tr Σ)`` from the Gram matrix ``gram[i, j] = g_iᵀg_j`` of ``k ≥ 2`` group gradients."""
    total = units.sum()
    w = units / total
    pooled_sq = float(w @ gram @ w)  # |ĝ|^2
    spread = float(units @ np.diag(gram)) - total * pooled_sq  # Σ_j m_j |g_j − ĝ|^2
    trace_sigma = spread / (len(units) - 1)
    return pooled_sq - trace_sigma / total, trace_sigma


def _preconditioner_list(preconditioner: Preconditioner, names: Sequence[str], params: Sequence[torch.Tensor]
                         ) -> list[torch.Tensor]:
    """The preconditioner as one tensor per trainable parameter, checked against their shapes."""
    if isinstance(preconditioner, Mapping):
        missing = [n for n in names if n not in preconditioner]
        if missing:
            raise ValueError(f"the preconditioner has no entry for parameter(s) {missing}")
        factors = [preconditioner[n] for n in names]
    else:
        factors = list(preconditioner)
        if len(factors) != len(params):
            raise ValueError(f"the preconditioner has {len(factors)} tensors for {len(params)} trainable parameters")
    out = []
    for name, p, f in zip(names, params, factors):
        f = torch.as_tensor(f, device=p.device).detach()
        if torch.broadcast_shapes(f.shape, p.shape) != p.shape:  # type: ignore[no-untyped-call]  # untyped in torch
            raise ValueError(f"preconditioner for {name!r} has shape {tuple(f.shape)}; parameter is {tuple(p.shape)}")
        if not bool(torch.isfinite(f).all()):
            raise ValueError(f"preconditioner for {name!r} is not finite")
        out.append(f)
    return out


def _default_units(batch: Any) -> float:
    """Examples in a batch: the length of its first tensor (or of the batch itself)."""
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return float(len(first))


def checkpoint_noise_scale(
    model: nn.Module, loss_fn: Callable[[nn.Module, Any], torch.Tensor], batches: Sequence[Any],
    preconditioner: Preconditioner | None = None, units: float | Sequence[float] | None = None,
    allow_batchnorm: bool = False,
) -> CheckpointNoiseScale:
    """``B_simple = tr Σ / |G|^2`` (2.9) from the gradients of ``k ≥ 2`` independent micro-batches.

    Each group gradient ``g_j`` is ``torch.autograd.grad`` of ``loss_fn(model, batches[j])``
    (a mean over the batch's ``m_j`` units) with respect to the trainable parameters; with
    ``ĝ = Σ_j m_j g_j / M`` (``M = Σ_j m_j``), A.2 between groups gives (module docstring)::

        tr Σ  ≈ Σ_j m_j |g_j − ĝ|^2 / (k − 1)        |G|^2 ≈ |ĝ|^2 − tr Σ / M

    both unbiased when the micro-batches are independent draws. ``B_simple`` is their
    ratio. With ``preconditioner`` ``P`` every ``g_j`` is first multiplied elementwise by
    ``P``, giving ``B_simple = tr(PΣP) / |PG|^2`` of the preconditioned gradient.

    The standard error is a delete-one-group jackknife: the estimate is recomputed on each
    ``k − 1`` groups (``ĝ`` included) and ``SE² = (k−1)/k Σ_j (B_(j) − mean B_(·))²``. (A
    jackknife over the ``k`` per-group A.2 pairs as if they were independent steps would
    miss the noise in ``|ĝ|^2``, which they all share.) It needs ``k ≥ 3``; a few tens of
    groups make it reliable, and the estimate itself is precise only when
    ``M ≳ B_simple`` (the ``|G|^2`` estimate is then well above its noise).

    Any model and loss work (recurrent nets, autoencoders, ...): nothing but autograd is
    used. The model's mode is left alone: dropout in train mode draws new masks per batch
    (as in training). A BatchNorm in train mode would normalise each micro-batch with its own
    statistics, so the group gradients would not be samples of one gradient distribution (2.3):
    it is refused, as by the monitors, unless ``allow_batchnorm=True`` (put the model in eval
    mode). ``.grad`` is not touched, and the hooks of attached monitors
    (:class:`~gns_utils.noise.GradientNoiseMonitor`, :class:`~gns_utils.noise.PerExampleNormMonitor`)
    are suspended during these backward passes, so a training step's measurement goes on unaffected. All ``k`` group gradients are held at once (``k × #params`` numbers) for
    their Gram matrix, which is formed in float64.

    Args:
        model: the network at the checkpoint.
        loss_fn: ``loss_fn(model, batch)`` → the scalar mean loss of ``batch``.
        batches: ``k ≥ 2`` independent micro-batches (e.g. ``(inputs, targets)`` tuples),
            ideally of equal size.
        preconditioner: optional ``P``: a mapping from parameter name (as in
            ``model.named_parameters()``) to a tensor, or a sequence of tensors aligned with
            the trainable parameters in ``model.parameters()`` order; each broadcastable to
            its parameter's shape (e.g. :func:`adam_preconditioner`).
        units: batch units per micro-batch, one number for all or one per batch (e.g. the
            tokens each holds when the loss is a mean over tokens); default: the length of
            each batch's first tensor. ``tr Σ`` and ``B_simple`` come out in these units.
        allow_batchnorm: measure even with BatchNorm layers in train mode (the estimate is then that
            of micro-batch-normalised gradients, not the paper's ``B_simple``).

    Returns:
        A :class:`CheckpointNoiseScale` (python floats).

    Raises:
        ValueError: fewer than 2 batches, units not positive or of the wrong length, a
            non-scalar or non-finite loss, a model without trainable parameters, a
            preconditioner that does not match the parameters, or a BatchNorm in train mode.
    """
    reason = "" if allow_batchnorm else _train_mode_batchnorm(model)
    if reason:
        raise ValueError(f"{reason}, or pass allow_batchnorm=True to measure micro-batch-normalised gradients")
    batches = list(batches)
    k = len(batches)
    if k < 2:
        raise ValueError(f"need at least 2 micro-batches, got {k}")
    if units is None:
        unit_counts = np.array([_default_units(b) for b in batches], dtype=float)
    elif np.ndim(units) == 0:
        unit_counts = np.full(k, float(cast(float, units)))  # a 0-d number (np.ndim(units) == 0)
    else:
        unit_counts = np.asarray(units, dtype=float).ravel()
        if unit_counts.size != k:
            raise ValueError(f"units has {unit_counts.size} entries for {k} micro-batches")
    if not (np.all(np.isfinite(unit_counts)) and np.all(unit_counts > 0)):
        raise ValueError(f"units must be positive, got {unit_counts.tolist()}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no parameters with requires_grad=True")
    names, params = [n for n, _ in named], [p for _, p in named]
    factors = None if preconditioner is None else _preconditioner_list(preconditioner, names, params)

    per_param: list[list[torch.Tensor]] = [[] for _ in params]
    for j, batch in enumerate(batches):
        loss = loss_fn(model, batch)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar tensor (the batch's mean loss); batch {j} gave "
                             f"{getattr(loss, 'shape', type(loss))}")
        if not bool(torch.isfinite(loss)):
            raise ValueError(f"the loss of micro-batch {j} is not finite")
        with suspended_monitors():  # an attached monitor's hooks would take these gradients for a micro-batch
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        for i, (p, g) in enumerate(zip(params, grads)):
            g = torch.zeros_like(p) if g is None else g.detach()
            if factors is not None:
                g = g * factors[i]
            per_param[i].append(g.reshape(-1))
    gram_t = torch.zeros(k, k, dtype=torch.float64)
    for rows in per_param:
        stacked = torch.stack(rows).to(torch.float64)
        gram_t += (stacked @ stacked.T).cpu()
        rows.clear()
    gram = gram_t.numpy()

    g2, trace_sigma = _group_estimates(gram, unit_counts)
    b_simple = trace_sigma / g2 if g2 > 0 else math.nan
    stderr = math.nan
    if k >= 3 and math.isfinite(b_simple):
        leave_out_list = []
        for j in range(k):
            keep = np.arange(k) != j
            g2_j, trace_j = _group_estimates(gram[np.ix_(keep, keep)], unit_counts[keep])
            leave_out_list.append(trace_j / g2_j if g2_j > 0 else math.nan)
        leave_out = np.array(leave_out_list)
        if np.all(np.isfinite(leave_out)):
            stderr = math.sqrt((k - 1) / k * float(np.sum((leave_out - leave_out.mean()) ** 2)))
    return CheckpointNoiseScale(b_simple=b_simple, stderr=stderr, g2=g2, trace_sigma=trace_sigma, k=k,
                                m=float(unit_counts.mean()), preconditioned=factors is not None)


def adam_preconditioner(optimizer: torch.optim.Optimizer, model: nn.Module | None = None
                        ) -> list[torch.Tensor] | dict[str, torch.Tensor]:
    """The elementwise ``P = 1 / (sqrt(v̂) + ε)`` that ``torch.optim.Adam`` applies at its next step.

    Adam's step is ``−lr · m̂ ⊙ P`` with ``v̂ = v / (1 − β2^t)`` the bias-corrected second
    moment (``exp_avg_sq``, or ``max_exp_avg_sq`` with ``amsgrad``) after ``t`` steps, and
    ``β2``, ``ε`` from each parameter's group; ``AdamW`` has the same ``P``. Feed it to
    :func:`checkpoint_noise_scale` for ``B_simple`` in the metric Adam steps in.

    Args:
        optimizer: a ``torch.optim.Adam`` (or ``AdamW``; fused or not) that has taken a step.
        model: optional; then ``P`` is returned by parameter name for every trainable
            parameter of ``model``.

    Returns:
        Detached tensors shaped like the parameters: a list aligned with the optimizer's
        trainable parameters (param groups in order), or a dict name → tensor with ``model``.

    Raises:
        ValueError: not an Adam optimizer, a parameter without Adam state (before the first
            ``optimizer.step()``, or never given a gradient), or with ``model``, a trainable
            parameter that the optimizer does not hold.
    """
    if not isinstance(optimizer, torch.optim.Adam):
        raise ValueError(f"adam_preconditioner needs a torch.optim.Adam or AdamW, got {type(optimizer).__name__}")
    factors: dict[int, torch.Tensor] = {}
    ordered = []
    for group in optimizer.param_groups:
        beta2, eps = float(group["betas"][1]), float(group["eps"])
        for p in group["params"]:
            if not p.requires_grad:
                continue
            state = optimizer.state.get(p, {})
            if "exp_avg_sq" not in state or float(state["step"]) < 1:
                raise ValueError(f"Adam has no second-moment state for a parameter of shape {tuple(p.shape)}: "
                                 "take an optimizer.step() (with a gradient for it) first")
            v = state["max_exp_avg_sq"] if group.get("amsgrad", False) else state["exp_avg_sq"]
            v_hat = v.detach() / (1.0 - beta2 ** float(state["step"]))
            factors[id(p)] = 1.0 / (v_hat.sqrt() + eps)
            ordered.append(factors[id(p)])
    if model is None:
        return ordered
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            if id(p) not in factors:
                raise ValueError(f"parameter {name!r} of the model is not held by the optimizer")
            out[name] = factors[id(p)]
    return out
