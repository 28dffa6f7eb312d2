"""The data-parallel noise source (App. A.1): each rank's gradient against the all-reduced one, for DDP.

Under ``DistributedDataParallel`` every rank already holds a small-batch gradient (its own
examples) and, after the all-reduce, the big-batch one (every rank's): the two squared norms of
A.2 cost one norm of each gradient bucket before and after its all-reduce, taken inside a DDP
communication hook, plus one all-reduce of three numbers per step. :class:`DataParallelNoiseMonitor`
registers that hook and speaks the same two calls as the other monitors
(:class:`gns_utils.noise.NoiseSource`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from gns_utils.noise.estimate import NoiseEstimate, two_batch_estimates

if TYPE_CHECKING:  # pragma: no cover
    from torch._C._distributed_c10d import GradBucket  # dist.GradBucket, not re-exported to type checkers


class DataParallelNoiseMonitor:
    """``|G|^2`` and ``tr Σ`` from DDP's own gradients: each rank's local gradient (B_small) and the
    all-reduced one (B_big), measured in a communication hook (A.1). Usage (under ``torchrun``)::

        model = DDP(net)
        monitor = DataParallelNoiseMonitor(model)        # replaces DDP's default all-reduce hook
        for step, micro_batches in enumerate(loader):
            opt.zero_grad()
            for j, (xb, yb) in enumerate(micro_batches):   # gradient accumulation, optional
                sync = contextlib.nullcontext() if j == len(micro_batches) - 1 else model.no_sync()
                with sync:
                    (loss_fn(model(xb), yb) * len(xb) / n_local).backward()
                monitor.after_micro_batch(len(xb))       # this rank's units (examples, tokens)
            estimate = monitor.after_step()              # the same NoiseEstimate on every rank
            ...clip, opt.step()

    Scaling: DDP averages the ranks' gradients with equal weights, so with ``n_r`` units on rank ``r``
    (all micro-batches of the step) and ``W`` ranks the small squared norm is the mean over ranks of
    ``|g_r|^2`` (``b_small`` = the harmonic mean of the ``n_r``) and the big one ``|Σ_r g_r / W|^2``
    (``b_big = W² / Σ_r 1/n_r``): equal local batches give ``b_small = n`` and ``b_big = W·n``, and
    unequal ones are handled exactly. Within a rank, micro-batch ``j``'s loss is scaled by ``s_j``
    (default ``n_j / n_r``; pass ``loss_scale`` to :meth:`after_micro_batch`, e.g. times a grad
    scaler's ``get_scale()``): the norms are divided by ``(Σ_j s_j)²``. A step whose norms are not
    finite (a grad scaler's overflow) gives None and counts in ``n_skipped`` on every rank.

    The hook replaces DDP's default all-reduce (it does the same averaging all-reduce), so do not
    register another communication hook. Call :meth:`after_step` on every rank every step (it holds
    a collective), before clipping or unscaling (those act on ``.grad`` after the hook has measured).

    Cost: two reads of the gradient per step (its norm before and after the all-reduce) and one
    all-reduce of two numbers; ``benchmarks/ddp_overhead.py`` measures it against plain DDP. With
    ``every = m`` only every ``m``-th step is measured (the others run DDP's plain all-reduce and
    return None), which divides the cost by ``m``; B_simple averaged over many steps needs no more.

    Args:
        model: the ``DistributedDataParallel`` model.
        process_group: the group DDP reduces over (default: the world).
        every: measure steps ``0, m, 2m, …`` (counted by :meth:`after_step` calls, the same on every rank).

    Attributes:
        n_steps, n_skipped: steps with an estimate; steps skipped for a non-finite norm.
    """

    def __init__(self, model: torch.nn.parallel.DistributedDataParallel, process_group: Any = None,
                 every: int = 1) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        if not isinstance(model, torch.nn.parallel.DistributedDataParallel):
            raise TypeError(f"DataParallelNoiseMonitor needs a DistributedDataParallel model, got "
                            f"{type(model).__name__}; wrap it first: model = DDP(model)")
        self.group = process_group if process_group is not None else dist.group.WORLD
        self.world_size = dist.get_world_size(self.group)
        if self.world_size < 2:
            raise ValueError("a data-parallel noise estimate needs >= 2 ranks; with one process use "
                             "GradientNoiseMonitor (micro-batches) or PerExampleNormMonitor")
        self.every = every
        self.n_steps = 0
        self.n_skipped = 0
        self._step = 0  # after_step calls so far: step s is measured when s % every == 0
        self._reset()
        model.register_comm_hook(self, DataParallelNoiseMonitor._hook)

    def _reset(self) -> None:
        self._local_sq: list[torch.Tensor] = []
        self._global_sq: list[torch.Tensor] = []
        self._units: list[float] = []
        self._scales: list[float | None] = []
        self._synced = False  # an unmeasured step's all-reduce ran

    @staticmethod
    def _hook(state, bucket):  # a type comment, no annotations: DDP checks them, and they are strings here
        # type: (DataParallelNoiseMonitor, GradBucket) -> torch.futures.Future[torch.Tensor]
        """Measure ``|bucket|^2`` before and after DDP's averaging all-reduce (a ``dist.GradBucket``)."""
        buffer = bucket.buffer()
        measure = state._step % state.every == 0
        if measure:
            state._local_sq.append(torch.linalg.vector_norm(buffer).double().square())
        buffer.div_(state.world_size)
        future = dist.all_reduce(buffer, group=state.group, async_op=True).get_future()
        if not measure:
            state._synced = True
            return future.then(lambda fut: fut.value()[0])

        def measured(fut: torch.futures.Future[list[torch.Tensor]]) -> torch.Tensor:
            reduced = fut.value()[0]
            state._global_sq.append(torch.linalg.vector_norm(reduced).double().square())
            return reduced

        return future.then(measured)

    def after_micro_batch(self, units: float, loss_scale: float | None = None) -> None:
        """Record one micro-batch of this rank (``units`` batch units) whose backward just ran."""
        if not units > 0:
            raise ValueError(f"units must be positive, got {units}")
        if loss_scale is not None and not loss_scale > 0:
            raise ValueError(f"loss_scale must be positive, got {loss_scale}")
        self._units.append(float(units))
        self._scales.append(loss_scale)

    def after_step(self) -> NoiseEstimate | None:
        """This step's estimate (identical on every rank), or None for a non-finite or unmeasured step
        (see ``every``). A collective on measured steps: call it on every rank, after the step's last
        (synchronised) backward.

        Raises:
            RuntimeError: no micro-batch was recorded, or DDP's all-reduce did not run this step (every
                backward was under ``no_sync``).
        """
        local, reduced, units, scales, synced = (self._local_sq, self._global_sq, self._units, self._scales,
                                                 self._synced)
        measured = self._step % self.every == 0
        self._reset()
        self._step += 1
        if not units:
            raise RuntimeError("after_step() without after_micro_batch(): call after_micro_batch(units) after "
                               "each backward")
        if not measured:
            if not synced:
                raise RuntimeError("DDP's all-reduce did not run this step (every backward under no_sync(), or the "
                                   "hook was replaced): the last micro-batch's backward must synchronise")
            return None
        if not local or len(reduced) != len(local):
            raise RuntimeError("DDP's all-reduce did not run this step (every backward under no_sync(), or the "
                               "hook was replaced): the last micro-batch's backward must synchronise")
        n_local = sum(units)
        if any(s is not None for s in scales):
            if not all(s is not None for s in scales):
                raise ValueError("loss_scale was passed for some micro-batches of the step but not others")
            scale = float(sum(s for s in scales if s is not None))
        else:
            scale = 1.0
        device = local[0].device
        stats = torch.stack([torch.stack(local).sum() / scale**2, torch.tensor(1.0 / n_local, dtype=torch.float64,
                                                                                 device=device)])
        dist.all_reduce(stats, group=self.group)  # Σ_r |g_r|^2 and Σ_r 1/n_r
        small_sum, inverse_units = stats.tolist()
        big = float(torch.stack(reduced).sum()) / scale**2
        small = small_sum / self.world_size
        if not (math.isfinite(small) and math.isfinite(big)):
            self.n_skipped += 1
            return None
        self.n_steps += 1
        w = self.world_size
        return two_batch_estimates(small, big, w / inverse_units, w * w / inverse_units)

    def state_dict(self) -> dict[str, int]:
        """The counters (save between steps)."""
        return {"n_steps": self.n_steps, "n_skipped": self.n_skipped, "step": self._step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the counters saved by :meth:`state_dict` (a checkpoint without ``step`` restarts the count)."""
        self.n_steps, self.n_skipped = int(state["n_steps"]), int(state["n_skipped"])
        self._step = int(state.get("step", 0))


__all__ = ["DataParallelNoiseMonitor"]
