"""Many learning rates of one batch size trained as one batched model (stacked weights, ``torch.func``).

The runs of a sweep's grid at batch size B differ only in ε: same model, same initial weights (the
run's seed), same batches (the sampler's seed). :class:`StackedMembers` keeps the K members' weights
stacked along a leading dimension and takes one training step for all of them:

* one batch for all members, split into ``n_micro`` equal micro-batches;
* per micro-batch one vmapped forward/backward (``torch.func.vmap`` of ``grad_and_value`` over
  ``functional_call``) giving every member's gradient, loss and metrics (e.g. its error rate) at once;
* per member ``|G|²`` and ``tr Σ`` from the micro-batch and full-batch gradients (A.2,
  :func:`gns_utils.noise.two_batch_estimates`), as
  :class:`~gns_utils.noise.GradientNoiseMonitor` measures a single run;
* per-member gradient clipping and an update with per-member ε and optimizer state: SGD,
  momentum (0.9 unless given) or Adam, with ``torch.optim``'s update rules;
* :meth:`StackedMembers.keep` drops members that stopped, so the others go on at their cost alone;
  :meth:`StackedMembers.split` sets members aside (with their weights and optimizer state) to be
  trained later as a stack of their own.

On a GPU the step of a small model is bound by kernel launches, which the batched model shares
between its members; whether that makes it faster on a given device is what
``benchmarks/members_throughput.py`` measures. On a CPU the arithmetic dominates and the vmapped
step was measured slower than K runs one after the other (``benchmarks/README.md``), so a sweep
stacks its members only on CUDA (or when asked, ``engine="stacked"``; :mod:`gns_utils.experiments.sweep`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from gns_utils.noise import two_batch_estimates

#: The update rules :class:`StackedMembers` implements (those of ``torch.optim.SGD`` and ``Adam``).
OPTIMIZERS = ("sgd", "momentum", "adam")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``batch_loss(model, batch)`` → ``(mean loss, {name: metric})``: ``model`` is called like the network.
BatchLoss = Callable[[Callable[..., Any], tuple], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class MembersStep:
    """One step of every member: ``loss`` (the batch's mean loss), ``g2`` = |G|² and ``trace_sigma``
    = tr Σ estimates (A.2; NaN where a member's gradient is not finite), each of shape ``[K]``, and
    ``metrics``: the batch means of the metrics a ``batch_loss`` returns (e.g. ``error``), each ``[K]``."""

    loss: torch.Tensor
    g2: torch.Tensor
    trace_sigma: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)

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
        loss_fn: ``loss_fn(outputs, targets)`` → the micro-batch's mean loss (e.g. ``F.cross_entropy``);
            trained with :meth:`step`. None when ``batch_loss`` is given.
        optimizer: ``sgd`` | ``momentum`` | ``adam`` (see :data:`OPTIMIZERS`).
        optimizer_kwargs: ``momentum`` (default 0.9, ``momentum`` only); ``betas``, ``eps`` (Adam).
        n_micro: micro-batches per step (≥ 2: the two batch sizes of the A.2 estimate).
        grad_clip: clip each member's full-batch gradient to this norm before its update (None: no clip).
        randomness: ``vmap``'s treatment of random ops such as dropout: ``same`` (one mask for every
            member, as K runs from one seed would draw) or ``different``.
        batch_loss: instead of ``loss_fn``, ``batch_loss(model, batch)`` → ``(mean loss, metrics)`` on a
            whole batch tuple, with ``model`` called like the network (see :data:`BatchLoss`; e.g. a
            problem's ``loss_terms``); trained with :meth:`step_batch`.
        units_per_example: batch units per example (tokens per sequence for a language model): the
            A.2 estimates are per unit, as :class:`~gns_utils.noise.GradientNoiseMonitor` counts them.

    Raises:
        ValueError: an unknown optimizer, ``n_micro < 2``, no learning rate or a non-positive one,
            train-mode batch norm, or not exactly one of ``loss_fn`` and ``batch_loss``.
    """

    def __init__(self, model: nn.Module, lrs: Sequence[float], loss_fn: LossFn | None = None, optimizer: str = "sgd",
                 optimizer_kwargs: Mapping[str, Any] | None = None, n_micro: int = 2,
                 grad_clip: float | None = None, randomness: str = "same", batch_loss: BatchLoss | None = None,
                 units_per_example: int = 1) -> None:
        if (loss_fn is None) == (batch_loss is None):
            raise ValueError("give exactly one of loss_fn(outputs, targets) and batch_loss(model, batch)")
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
        self.model, self.optimizer = model, optimizer
        self.batch_loss: BatchLoss = batch_loss or (lambda net, batch: (loss_fn(net(batch[0]), batch[1]), {}))
        self.n_micro, self.grad_clip, self.units_per_example = n_micro, grad_clip, units_per_example
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
        self._grad = vmap(grad_and_value(self._loss, has_aux=True), in_dims=(0, None), randomness=randomness)

    def _loss(self, params: dict[str, torch.Tensor], batch: tuple) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        weights = {**params, **self.fixed}
        loss, metrics = self.batch_loss(lambda *inputs: functional_call(self.model, weights, inputs), batch)
        return loss, {k: v.detach() for k, v in metrics.items()}

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> MembersStep:
        """One step of every member on the batch ``(inputs, targets)``; its size must divide by ``n_micro``."""
        return self.step_batch((inputs, targets))

    def step_batch(self, batch: tuple[torch.Tensor, ...]) -> MembersStep:
        """One step of every member on a batch tuple (split along its first dimension into ``n_micro``
        equal micro-batches, as the sequential engine splits it)."""
        size = batch[0].shape[0]
        if size % self.n_micro:
            raise ValueError(f"the batch ({size}) must split into {self.n_micro} equal micro-batches")
        total = {n: torch.zeros_like(p) for n, p in self.params.items()}
        small_sq = torch.zeros(len(self.members), dtype=torch.float64, device=self.lrs.device)
        loss = torch.zeros_like(small_sq)
        metrics: dict[str, torch.Tensor] = {}
        chunks = [t.chunk(self.n_micro) for t in batch]
        for micro in zip(*chunks):
            grads, (values, micro_metrics) = self._grad(self.params, tuple(micro))
            small_sq += _sq_norms(grads)
            loss += values.to(torch.float64) / self.n_micro
            for k, v in micro_metrics.items():
                metrics[k] = metrics.get(k, 0.0) + v.to(torch.float64) / self.n_micro
            for n, g in grads.items():
                total[n].add_(g, alpha=1.0 / self.n_micro)
        big_sq = _sq_norms(total)
        units = size * self.units_per_example
        g2, trace_sigma = _estimates(small_sq / self.n_micro, big_sq, units / self.n_micro, units)
        if self.grad_clip is not None:  # torch.nn.utils.clip_grad_norm_, per member
            scale = (self.grad_clip / (big_sq.sqrt() + 1e-6)).clamp(max=1.0)
            for g in total.values():
                g.mul_(_per_member(scale.to(g.dtype), g))
        self._update(total)
        self.steps += 1
        return MembersStep(loss=loss, g2=g2, trace_sigma=trace_sigma, metrics=metrics)

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

    def split(self, members: Sequence[int]) -> StackedMembers:
        """Take these members out (original indices): returned as a stack of their own, at this step,
        with their weights and optimizer state; this stack goes on with the rest."""
        members = list(members)
        rest = [m for m in self.members if m not in members]
        if not members or not rest or len(set(members)) != len(members):
            raise ValueError(f"split takes some but not all of the members {self.members}, each once; got {members}")
        other = copy.copy(self)  # the same network, loss and vmapped gradient; keep() gives each its own rows
        other.keep(members)
        self.keep(rest)
        return other

    def member_state_dict(self, member: int) -> dict[str, torch.Tensor]:
        """The weights of one member (original index), for ``model.load_state_dict(..., strict=False)``."""
        row = self.members.index(member)
        return {n: p[row].clone() for n, p in self.params.items()}

    def load_member_into(self, member: int, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Copy one member's weights into ``model`` (a copy of the network) and, if given, its optimizer
        state into ``optimizer`` (a ``torch.optim.SGD`` or ``Adam`` over ``model``'s parameters), so that
        what reads a single run (an evaluation, :func:`gns_utils.noise.adam_preconditioner`) reads this member."""
        row = self.members.index(member)
        named = dict(model.named_parameters())
        with torch.no_grad():
            for n, p in self.params.items():
                named[n].copy_(p[row])
        if optimizer is None or not self.steps:
            return
        for n, st in self.state.items():
            p = named[n]
            if self.optimizer == "adam":
                optimizer.state[p] = {"step": torch.tensor(float(self.steps)), "exp_avg": st["m"][row].clone(),
                                      "exp_avg_sq": st["v"][row].clone()}
            else:
                optimizer.state[p] = {"momentum_buffer": st["buf"][row].clone()}


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


# --------------------------------------------------------------------------------------
# A sweep's grid as stacks of members (the ``stacked`` engine of gns_utils.experiments.sweep)


def stacking_unsupported(problem: Any, cfg: Any, model: nn.Module | None = None) -> str | None:
    """Why the runs of the grid of ``cfg`` (a :class:`~gns_utils.experiments.config.RunConfig`) cannot be
    trained as one batched model (None: they can); ``model``: its network (built when None)."""
    if hasattr(problem, "stream"):
        return "a reinforcement-learning run acts in its own environments with its own weights"
    if cfg.optimizer not in OPTIMIZERS:
        return f"optimizer {cfg.optimizer!r} is not one of {OPTIMIZERS}"
    extra = sorted(set(cfg.optimizer_kwargs) - {"momentum", "betas", "eps"})
    if extra:
        return f"optimizer_kwargs {extra} are not supported (momentum, betas and eps are)"
    if cfg.noise_method == "per_example":
        return "noise_method='per_example' measures one run at a time (use 'auto' or 'micro_batch')"
    n_micro = min(cfg.n_micro, cfg.batch_size)
    if n_micro < 2 or cfg.batch_size % n_micro:
        return f"batch size {cfg.batch_size} does not split into {cfg.n_micro} equal micro-batches"
    model = model if model is not None else problem.build_model(cfg.model, cfg.model_kwargs)
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return "batch norm's running statistics would be shared between the members"
    return None


def _batch_loss(problem: Any) -> BatchLoss:
    """The problem's loss with its metrics as tensors (``loss_terms``), or its plain loss and no metrics."""
    if hasattr(problem, "loss_terms"):
        return problem.loss_terms
    return lambda net, batch: (problem.loss(net, batch), {})


class StackedGroup:
    """The runs of one batch size's grid (:class:`~gns_utils.experiments.train.Run`, built with
    ``stacked=True``) trained as stacks of :class:`StackedMembers`.

    Every run keeps its own books (``metrics.csv``, goals, checkpoints, ``summary.json``); the group
    takes the steps. Pass :meth:`advance` to :func:`gns_utils.experiments.stopping.run_group`: the
    members it is given advance to their next logged step together; members the stopping rules pause
    are set aside as a stack of their own (:meth:`StackedMembers.split`), with their state, and train
    from there if a rival's divergence brings them back.

    Args:
        problem: the grid's problem.
        runs: the grid's runs (same batch size, seed, model and schedule; different ε), keyed by the
            objects ``run_group`` will pass to :meth:`advance` (each with ``.curve``), e.g. the sweep's members.
        on_error: called with ``(key, exception)`` for each member of a stack whose step raised.
    """

    def __init__(self, problem: Any, runs: Mapping[Any, Any], on_error: Callable[[Any, BaseException], None]) -> None:
        self.problem, self.on_error = problem, on_error
        self.keys = list(runs)
        self.runs = [runs[k] for k in self.keys]
        lead = self.runs[0]
        cfg = lead.cfg
        self.stacks = [StackedMembers(lead.model, [r.cfg.lr for r in self.runs], batch_loss=_batch_loss(problem),
                                      optimizer=cfg.optimizer, optimizer_kwargs=cfg.optimizer_kwargs,
                                      n_micro=lead.n_micro, grad_clip=cfg.grad_clip,
                                      units_per_example=problem.units_per_example)]

    def advance(self, members: Sequence[Any]) -> None:
        """Advance these members (keys of ``runs``) to their next logged step."""
        chosen = {self.keys.index(m) for m in members}
        for stack in list(self.stacks):
            inside = [k for k in stack.members if k in chosen]
            if inside and len(inside) < len(stack.members):
                self.stacks.append(stack.split([k for k in stack.members if k not in chosen]))
        for stack in [s for s in self.stacks if s.members and set(s.members) <= chosen]:
            try:
                self._advance(stack)
            except Exception as err:  # noqa: BLE001 — every member of the stack fails, the grid goes on
                for k in stack.members:
                    if self.runs[k].curve.status is None:
                        self.on_error(self.keys[k], err)
                stack.members = []
        self.stacks = [s for s in self.stacks if s.members]

    def _advance(self, stack: StackedMembers) -> None:
        runs = [self.runs[k] for k in stack.members]
        target = runs[0].next_log_step()
        while runs and runs[0].step < target:
            batch = self._draw(runs[0])  # one batch for all; the other samplers move on as if they trained alone
            for run in runs[1:]:
                if hasattr(run.sampler, "draw"):
                    run.sampler.draw()
                else:
                    run.sampler.next()
            out = stack.step_batch(batch)
            error = out.metrics.get("error", torch.full_like(out.loss, math.nan))
            rows = torch.stack([out.loss, error, out.g2, out.trace_sigma], 1).tolist()  # one transfer per step
            alive = [k for k, run, row in zip(stack.members, runs, rows) if run.record_step(*row)]
            if len(alive) < len(stack.members):
                _keep(stack, alive)
                runs = [self.runs[k] for k in alive]
        for k, run in zip(stack.members, runs):
            stack.load_member_into(k, run.model, run.optimizer)  # what the log reads: evaluations, checkpoints
            run.log_point()
        _keep(stack, [k for k in stack.members if self.runs[k].curve.status is None])

    def _draw(self, run: Any) -> tuple:
        sampler = run.sampler
        return sampler.draw() if hasattr(sampler, "draw") else self.problem.batch(sampler.next())


def _keep(stack: StackedMembers, members: list[int]) -> None:
    if members != stack.members:
        if members:
            stack.keep(members)
        else:
            stack.members = []
