"""Many learning rates of one batch size trained as one batched model (stacked weights, ``torch.func``).

The runs of a sweep's grid at batch size B differ only in ε: same model, same initial weights (the
run's seed), same batches (the sampler's seed). :class:`StackedMembers` keeps the K members' weights
stacked along a leading dimension and takes one training step for all of them:

* one batch for all members, split into ``n_micro`` equal micro-batches;
* per micro-batch one vmapped forward/backward (``torch.func.vmap`` of ``grad_and_value`` over
  ``functional_call``) giving every member's gradient at once;
* per member ``|G|²`` and ``tr Σ`` from the micro-batch and full-batch gradients (A.2,
  :func:`gns_utils.noise.two_batch_estimates`), as
  :class:`~gns_utils.noise.GradientNoiseMonitor` measures a single run;
* per-member gradient clipping and an update with per-member ε and optimizer state: SGD,
  momentum (0.9 unless given) or Adam, with ``torch.optim``'s update rules;
* :meth:`StackedMembers.keep` drops members that stopped, so the others go on at their cost alone.

On a GPU the step of a small model is bound by kernel launches, which the batched model shares
between its members; whether that makes it faster on a given device is what
``benchmarks/members_throughput.py`` measures. On a CPU the arithmetic dominates and the vmapped
step was measured slower than K runs one after the other (``benchmarks/README.md``), so the sweep
trains its members one after the other (:mod:`gns_utils.experiments.sweep`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from gns_utils.noise import two_batch_estimates

#: The update rules :class:`StackedMembers` implements (those of ``torch.optim.SGD`` and ``Adam``).
OPTIMIZERS = ("sgd", "momentum", "adam")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class MembersStep:
    """One step of every member: ``loss`` (the batch's mean loss), ``g2`` = |G|² and ``trace_sigma``
    = tr Σ estimates (A.2; NaN where a member's gradient is not finite), each of shape ``[K]``."""

    loss: torch.Tensor
    g2: torch.Tensor
    trace_sigma: torch.Tensor

    @property
    def b_simple(self) -> torch.Tensor:
        """tr Σ / |G|² per member, one step's (noisy) ratio (2.9)."""
        return self.trace_sigma / self.g2


class StackedMembers:
    """K copies of ``model``, one per learning rate in ``lrs``, trained together.

    Args:
        model: the network (its current weights are every member's start); it is not modified.
            Train-mode batch norm is refused: its running statistics would be shared by all members.
        lrs: one learning rate ε per member.
        loss_fn: ``loss_fn(outputs, targets)`` → the micro-batch's mean loss (e.g. ``F.cross_entropy``).
        optimizer: ``sgd`` | ``momentum`` | ``adam`` (see :data:`OPTIMIZERS`).
        optimizer_kwargs: ``momentum`` (default 0.9, ``momentum`` only); ``betas``, ``eps`` (Adam).
        n_micro: micro-batches per step (≥ 2: the two batch sizes of the A.2 estimate).
        grad_clip: clip each member's full-batch gradient to this norm before its update (None: no clip).
        randomness: ``vmap``'s treatment of random ops such as dropout: ``same`` (one mask for every
            member, as K runs from one seed would draw) or ``different``.

    Raises:
        ValueError: an unknown optimizer, ``n_micro < 2``, no learning rate or a non-positive one,
            or train-mode batch norm.
    """

    def __init__(self, model: nn.Module, lrs: Sequence[float], loss_fn: LossFn, optimizer: str = "sgd",
                 optimizer_kwargs: Mapping[str, Any] | None = None, n_micro: int = 2,
                 grad_clip: float | None = None, randomness: str = "same") -> None:
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if n_micro < 2:
            raise ValueError(f"n_micro must be >= 2 (the A.2 estimate needs two batch sizes), got {n_micro}")
        if not lrs or not all(lr > 0 and math.isfinite(lr) for lr in lrs):
            raise ValueError(f"lrs must be one or more positive finite learning rates, got {list(lrs)}")
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
        if norms:
            raise ValueError("train-mode batch norm would share its running statistics between members; "
                             "train such a model one run at a time, or call .eval() on its norm layers")
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.n_micro, self.grad_clip = n_micro, grad_clip
        kwargs = dict(optimizer_kwargs or {})
        self.momentum = float(kwargs.pop("momentum", 0.9 if optimizer == "momentum" else 0.0))
        self.betas = tuple(float(b) for b in kwargs.pop("betas", (0.9, 0.999)))
        self.eps = float(kwargs.pop("eps", 1e-8))
        if kwargs:
            raise ValueError(f"unsupported optimizer_kwargs {sorted(kwargs)}; StackedMembers takes momentum, "
                             "betas and eps")
        k = len(lrs)
        self.params = {n: p.detach().unsqueeze(0).repeat(k, *([1] * p.dim()))
                       for n, p in model.named_parameters() if p.requires_grad}
        self.fixed = {**{n: p.detach() for n, p in model.named_parameters() if not p.requires_grad},
                      **dict(model.named_buffers())}
        first = next(iter(self.params.values()))
        self.lrs = torch.as_tensor(list(lrs), dtype=first.dtype, device=first.device)
        self.members = list(range(k))  # the original index of each member still trained
        self.state: dict[str, dict[str, torch.Tensor]] = {}
        self.steps = 0
        self._grad = vmap(grad_and_value(self._loss), in_dims=(0, None, None), randomness=randomness)

    def _loss(self, params: dict[str, torch.Tensor], inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(functional_call(self.model, {**params, **self.fixed}, (inputs,)), targets)

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> MembersStep:
        """One step of every member on the batch ``(inputs, targets)``; its size must divide by ``n_micro``."""
        batch = inputs.shape[0]
        if batch % self.n_micro:
            raise ValueError(f"the batch ({batch}) must split into {self.n_micro} equal micro-batches")
        total = {n: torch.zeros_like(p) for n, p in self.params.items()}
        small_sq = torch.zeros(len(self.members), dtype=torch.float64, device=self.lrs.device)
        loss = torch.zeros_like(small_sq)
        for x, y in zip(inputs.chunk(self.n_micro), targets.chunk(self.n_micro)):
            grads, values = self._grad(self.params, x, y)
            small_sq += _sq_norms(grads)
            loss += values.to(torch.float64) / self.n_micro
            for n, g in grads.items():
                total[n].add_(g, alpha=1.0 / self.n_micro)
        big_sq = _sq_norms(total)
        g2, trace_sigma = _estimates(small_sq / self.n_micro, big_sq, batch / self.n_micro, batch)
        if self.grad_clip is not None:  # torch.nn.utils.clip_grad_norm_, per member
            scale = (self.grad_clip / (big_sq.sqrt() + 1e-6)).clamp(max=1.0)
            for g in total.values():
                g.mul_(_per_member(scale.to(g.dtype), g))
        self._update(total)
        self.steps += 1
        return MembersStep(loss=loss, g2=g2, trace_sigma=trace_sigma)

    def _update(self, grads: dict[str, torch.Tensor]) -> None:
        """``torch.optim.SGD`` (with momentum: dampening 0, no Nesterov) or ``Adam``, ε per member."""
        for n, p in self.params.items():
            g, lr = grads[n], _per_member(self.lrs, grads[n])
            if self.optimizer == "adam":
                (b1, b2), t = self.betas, self.steps + 1
                st = self.state.setdefault(n, {"m": torch.zeros_like(p), "v": torch.zeros_like(p)})
                st["m"].lerp_(g, 1 - b1)
                st["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (st["v"].sqrt() / math.sqrt(1 - b2 ** t)).add_(self.eps)
                p.sub_(lr / (1 - b1 ** t) * st["m"] / denom)
            elif self.momentum:
                st = self.state.get(n)
                if st is None:
                    st = self.state[n] = {"buf": g.clone()}
                else:
                    st["buf"].mul_(self.momentum).add_(g)
                p.sub_(lr * st["buf"])
            else:
                p.sub_(lr * g)

    def keep(self, members: Sequence[int]) -> None:
        """Go on with these members only (original indices, as in :attr:`members`); the others stop."""
        unknown = sorted(set(members) - set(self.members))
        if unknown:
            raise ValueError(f"members {unknown} are not being trained (training: {self.members})")
        rows = torch.tensor([self.members.index(m) for m in members], device=self.lrs.device)
        self.params = {n: p.index_select(0, rows) for n, p in self.params.items()}
        self.state = {n: {k: v.index_select(0, rows) for k, v in st.items()} for n, st in self.state.items()}
        self.lrs = self.lrs.index_select(0, rows)
        self.members = list(members)

    def member_state_dict(self, member: int) -> dict[str, torch.Tensor]:
        """The weights of one member (original index), for ``model.load_state_dict(..., strict=False)``."""
        row = self.members.index(member)
        return {n: p[row].clone() for n, p in self.params.items()}


def _per_member(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values`` of shape ``[K]`` shaped to broadcast over a stacked ``[K, ...]`` tensor."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def _sq_norms(grads: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Per member, the squared norm of a stacked gradient, summed in float64."""
    return sum(g.flatten(1).to(torch.float64).pow(2).sum(1) for g in grads.values())


def _estimates(small: torch.Tensor, big: torch.Tensor, b_small: float, b_big: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A.2's |G|² and tr Σ per member; NaN for members whose norms are not finite (a diverged member)."""
    g2 = torch.full_like(big, math.nan)
    trace_sigma = torch.full_like(big, math.nan)
    ok = torch.isfinite(small) & torch.isfinite(big)
    if ok.any():
        est = two_batch_estimates(small[ok], big[ok], b_small, b_big)
        g2[ok], trace_sigma[ok] = est.g2, est.trace_sigma
    return g2, trace_sigma
