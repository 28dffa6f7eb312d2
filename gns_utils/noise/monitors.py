"""Step-wise sources of the A.2 pair inside a training loop (the :class:`NoiseSource` protocol).

* :class:`GradientNoiseMonitor`   micro-batches of gradient accumulation (``B_small``) and their
  accumulated gradient (``B_big``): any network, a few percent of a step.
* :class:`PerExampleNormMonitor`  single examples (``B_small = 1``) and the batch, from
  per-example gradient norms taken inside the step's one ordinary backward (nets whose
  trainable layers are all ``nn.Linear``).

Both return a :class:`~gns_utils.noise.estimate.NoiseEstimate` per step, to be folded into a
:class:`~gns_utils.noise.ema.NoiseScaleEMA`.
"""

from __future__ import annotations

import math
import warnings
import weakref
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from gns_utils.noise.estimate import NoiseEstimate, two_batch_estimates
from gns_utils.noise.per_example import (
    _accumulation_dtype,
    _layerwise_unsupported,
    _products_sq_norm_and_sum,
    _row_norms,
    _total_sq_norm,
    _train_mode_batchnorm,
)

__all__ = ["GradientNoiseMonitor", "NoiseSource", "PerExampleNormMonitor"]


@runtime_checkable
class NoiseSource(Protocol):
    """What a training loop talks to; any source of (small, big) pairs implements it.

    The loop calls :meth:`after_micro_batch` after each ``loss.backward()`` and
    :meth:`after_step` once before clipping and ``optimizer.step()``. A data-parallel
    source (each rank's local gradient against the all-reduced one, see
    :func:`data_parallel_estimate`) implements the same two calls, so callers need not
    change.
    """

    n_skipped: int

    def after_micro_batch(self, units: float, loss_scale: float | None = None) -> None:
        """Record one micro-batch of ``units`` batch units whose backward just ran."""

    def after_step(self) -> NoiseEstimate | None:
        """Return this step's estimate (or None) and reset for the next step."""


#: Monitors with hooks attached, so that a measurement with its own backward passes
#: (:func:`gns_utils.noise.checkpoint_noise_scale`) can suspend them (:func:`suspended_monitors`).
_ATTACHED: "weakref.WeakSet[_StepMonitor]" = weakref.WeakSet()
#: Steps per block over which the mean |G|² estimate is tested (:meth:`_StepMonitor._check_plausible`).
PLAUSIBILITY_STEPS = 50
#: Consecutive blocks whose mean must be below zero beyond :data:`PLAUSIBILITY_Z` standard errors before a warning.
PLAUSIBILITY_BLOCKS = 4
PLAUSIBILITY_Z = 2.5


@contextmanager
def suspended_monitors() -> Iterator[None]:
    """Inside, the hooks of every attached monitor ignore backward passes (another measurement's)."""
    monitors = list(_ATTACHED)
    for monitor in monitors:
        monitor._suspended += 1
    try:
        yield
    finally:
        for monitor in monitors:
            monitor._suspended -= 1


class _StepMonitor:
    """What the step-wise monitors share: their counters, hook removal, argument and plausibility checks."""

    params: list[torch.Tensor]  # the monitored parameters (set by the subclass)
    _grad_versions: list[tuple[int, int] | None] | None  # see _record_gradients; None after a reset

    def __init__(self) -> None:
        self.n_steps = 0
        self.n_skipped = 0
        self.n_too_few = 0
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._suspended = 0
        self._recent_g2: list[float] = []
        self._blocks_below = 0
        self._warned: set[str] = set()
        _ATTACHED.add(self)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _nothing_recorded(self) -> None:
        """:meth:`after_step` with no micro-batch since the last step: say so once."""
        self._warn_once("nothing", f"{type(self).__name__}.after_step() was called with no micro-batch recorded "
                                   "since the last step, so it gives no estimate: call after_micro_batch(units) after "
                                   "each loss.backward() of the step")

    def _check_plausible(self, estimate: NoiseEstimate) -> None:
        """Warn once when the |G|² estimates average below zero, beyond :data:`PLAUSIBILITY_Z` standard errors,
        in each of :data:`PLAUSIBILITY_BLOCKS` consecutive blocks of :data:`PLAUSIBILITY_STEPS` steps:
        E[estimate] = |G|² ≥ 0, so the micro-batch losses are weighted otherwise than the monitor assumes.

        Blocks, not a sliding window, and several in a row: near a noise floor the true |G|² is ≈ 0 and the
        estimates are skewed, and a test repeated at every step over a sliding window fires on correct runs
        by chance alone. Tested on seeded zero-mean streams of 20,000 steps (Gaussian and χ²(1) − 1: no
        warning) and on a persistent bias (warned)."""
        self._recent_g2.append(float(estimate.g2))
        if len(self._recent_g2) < PLAUSIBILITY_STEPS or "weights" in self._warned:
            return
        g2 = np.asarray(self._recent_g2)
        self._recent_g2 = []
        below = g2.mean() + PLAUSIBILITY_Z * g2.std(ddof=1) / math.sqrt(g2.size) < 0
        self._blocks_below = self._blocks_below + 1 if below else 0
        if self._blocks_below >= PLAUSIBILITY_BLOCKS:
            self._warn_once("weights", (
                f"the |G|^2 estimates averaged below zero, beyond {PLAUSIBILITY_Z:g} standard errors, in each of the "
                f"last {PLAUSIBILITY_BLOCKS} blocks of {g2.size} steps (the last: {g2.mean():.3g}), which cannot "
                "happen when the micro-batch losses are weighted as the monitor assumes "
                "(mean loss × units / total units of the step). If you scale each micro-batch's loss otherwise "
                "(e.g. by 1/k with unequal micro-batches, or a sum-reduced loss), pass that factor as "
                "after_micro_batch(units, loss_scale=...); B_simple is wrong until then"))

    def _record_gradients(self) -> None:
        """Remember which ``.grad`` tensors the last backward left (their identity and version counter)."""
        self._grad_versions = [(id(p.grad), p.grad._version) if p.grad is not None else None for p in self.params]

    def _gradients_changed(self) -> bool:
        """Whether the ``.grad`` tensors were replaced or changed in place since the last backward."""
        recorded: list[tuple[int, int] | None] | None = getattr(self, "_grad_versions", None)
        if recorded is None:
            return False
        return recorded != [(id(p.grad), p.grad._version) if p.grad is not None else None for p in self.params]

    @staticmethod
    def _refuse_changed_gradients() -> None:
        """Clipping or ``GradScaler.unscale_`` before :meth:`after_step` would make its estimate meaningless."""
        raise RuntimeError(
            "the gradients changed after the last backward and before after_step() (gradient clipping, "
            "GradScaler.unscale_(), or another in-place change): call after_step() right after the last "
            "after_micro_batch(), before clipping or unscaling; with a GradScaler pass "
            "loss_scale=<your scale> * scaler.get_scale() to after_micro_batch()")

    def state_dict(self) -> dict[str, int]:
        """The monitor's counters (a step's records live only until :meth:`after_step`): save them between steps."""
        return {"n_steps": self.n_steps, "n_skipped": self.n_skipped, "n_too_few": self.n_too_few}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the counters saved by :meth:`state_dict`."""
        self.n_steps, self.n_skipped, self.n_too_few = (int(state[k]) for k in ("n_steps", "n_skipped", "n_too_few"))

    def remove(self) -> None:
        """Remove the hooks; the monitor is unusable afterwards."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        _ATTACHED.discard(self)

    @staticmethod
    def _check_micro_batch(units: float, loss_scale: float | None) -> None:
        if not units > 0:
            raise ValueError(f"units must be positive, got {units}")
        if loss_scale is not None and not loss_scale > 0:
            raise ValueError(f"loss_scale must be positive, got {loss_scale}")


class GradientNoiseMonitor(_StepMonitor):
    """``|G|^2`` and ``tr Σ`` from the micro-batches of gradient accumulation (A.2).

    A gradient hook on every parameter sees each micro-batch's gradient as it arrives,
    before it is added to ``.grad``, and takes its squared norm; :meth:`after_step` takes
    the squared norm of the accumulated ``.grad``. No gradient is copied. Usage::

        monitor = GradientNoiseMonitor(model)   # or model.parameters()
        opt.zero_grad()
        for xb, yb in micro_batches:            # k >= 2 micro-batches per step
            loss = loss_fn(model(xb), yb) * (n_units(xb) / n_units_total)
            loss.backward()
            monitor.after_micro_batch(n_units(xb))
        est = monitor.after_step()              # NoiseEstimate or None
        ...clip, opt.step()

    Scaling: micro-batch ``j`` has ``n_j`` units (examples, or tokens for language
    models), its mean loss gradient is ``g_j`` and the loop back-propagates
    ``s_j·(mean loss)``; by default ``s_j = n_j / N`` with ``N = Σ n_j``, or pass
    ``loss_scale=s_j`` (e.g. ``1/k``; ``n_j`` for a sum-reduced loss). The monitor divides
    the scale out: ``|g_j|^2 = |s_j g_j|^2 / s_j^2``, and the big gradient is
    ``Σ s_j g_j / Σ s_j`` (the accumulated ``.grad``), with weights ``w_j = s_j / Σ s``.

    Batch sizes: ``E|g_j|^2 = |G|^2 + tr Σ / n_j``, so the small norm, the plain average of
    the ``k`` micro-batch norms, is unbiased with ``b_small`` = harmonic mean of the
    ``n_j`` (= ``N/k`` for equal micro-batches); ``E|Σ w_j g_j|^2 = |G|^2 + tr Σ Σ w_j²/n_j``
    gives ``b_big = 1 / Σ w_j²/n_j`` (= ``N`` with the default scaling). Unequal
    micro-batches are therefore handled exactly.

    Requirements: ``.grad`` is zero (or None) at the start of each step; exactly one
    ``backward()`` per micro-batch reaches the parameters between calls (use
    :meth:`reset` after any other backward). Micro-batches should hold independent
    examples, as in (2.3). Norms are measured before any gradient clipping. With AMP's
    ``GradScaler``, pass ``loss_scale = s_j · scaler.get_scale()``.

    Cost: one read of each micro-batch gradient (in the hook) and one of ``.grad``, i.e.
    ``k + 1`` memory passes over the parameters per step, about 3–5 % of a step of the
    paper's CNN at batch 128 (4 micro-batches) on CPU (``benchmarks/noise_overhead.py``).
    Measured alternatives were slower: keeping references to the incoming gradients for
    one ``torch._foreach_norm`` per micro-batch (also an extra gradient's memory), and
    a plain ``vector_norm`` per tensor (single-threaded; row norms use all threads).
    Differencing consecutive accumulated gradients needs a gradient copy and more passes.

    ``big_norm="hooks"`` measures the big norm inside the hooks as well: as micro-batch ``j``'s
    gradient arrives, its dot product with the ``.grad`` accumulated so far gives the cross terms of
    ``|Σ_j s_j g_j|^2``, so :meth:`after_step` never reads ``.grad`` and may come after clipping or
    unscaling (a trainer that clips before its last callback). It costs one more read of ``.grad``
    per micro-batch.

    BatchNorm: in train mode each micro-batch is normalised with its own statistics, so the
    micro-batch gradients are not samples of one per-example gradient distribution (2.3) and the
    estimate would describe something else. Given the model (rather than its parameters), the
    monitor checks this at every micro-batch and refuses a train-mode BatchNorm unless
    ``allow_batchnorm=True``; given parameters only it cannot see the layers.

    Args:
        params: the model (preferred: its train-mode BatchNorm layers are refused), or the
            parameters the optimizer updates (those with ``requires_grad`` are monitored).
        big_norm: ``"grad"`` (default: read the accumulated ``.grad`` in :meth:`after_step`, which
            must then come before clipping) or ``"hooks"`` (see above).
        allow_batchnorm: measure even with BatchNorm layers in train mode (the estimate is then that
            of micro-batch-normalised gradients, not the paper's ``B_simple``).

    Attributes:
        n_steps: steps that returned an estimate.
        n_skipped: steps skipped because a gradient norm was nan or infinite.
        n_too_few: steps with fewer than 2 micro-batches (no estimate).
    """

    _cross: torch.Tensor | float  # set in reset()
    _stale: torch.Tensor | bool

    def __init__(self, params: nn.Module | Iterable[torch.Tensor], big_norm: str = "grad",
                 allow_batchnorm: bool = False) -> None:
        model = params if isinstance(params, nn.Module) else None
        self._batchnorms = [] if model is None or allow_batchnorm else [
            (name or type(m).__name__, m) for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.params = [p for p in (params.parameters() if isinstance(params, nn.Module) else params) if p.requires_grad]
        if not self.params:
            raise ValueError("GradientNoiseMonitor needs at least one parameter with requires_grad=True")
        if big_norm not in ("grad", "hooks"):
            raise ValueError(f"big_norm must be 'grad' or 'hooks', got {big_norm!r}")
        self.big_norm = big_norm
        super().__init__()
        self._pending: list[torch.Tensor | None] = [None] * len(self.params)
        self._repeated = False
        self._handles = [p.register_hook(self._make_hook(i))  # type: ignore[no-untyped-call]  # untyped in torch
                         for i, p in enumerate(self.params)]
        self.reset()

    def _make_hook(self, index: int) -> Callable[[torch.Tensor], None]:
        param = self.params[index]

        def hook(incoming: torch.Tensor) -> None:
            if self._suspended:
                return
            if not self._micro_sq and self._pending[index] is None and param.grad is not None:  # first backward
                # of the step: .grad must be zero
                left = param.grad.detach().any()  # a flag on the device; read once, in after_micro_batch
                self._stale = left if self._stale is False else self._stale | left
            if self._pending[index] is not None:
                self._repeated = True
            self._pending[index] = _row_norms(incoming.detach())
            if self.big_norm == "hooks" and param.grad is not None:  # <Σ_{l<j} s_l g_l, s_j g_j>, before it adds
                cross = torch.dot(param.grad.detach().reshape(-1), incoming.detach().reshape(-1).to(param.grad.dtype))
                self._cross = self._cross + cross.to(torch.float64)
        return hook

    def reset(self) -> None:
        """Forget the current step's micro-batches (e.g. after an unrelated backward)."""
        self._grad_versions = None
        self._cross = 0.0  # big_norm="hooks": the cross terms, a tensor once one arrives
        self._pending = [None] * len(self.params)
        self._repeated = False
        self._stale = False
        self._micro_sq: list[torch.Tensor] = []
        self._units: list[float] = []
        self._scales: list[float | None] = []

    def after_micro_batch(self, units: float, loss_scale: float | None = None) -> None:
        """Record the micro-batch whose ``backward()`` just ran.

        Args:
            units: batch units in this micro-batch (examples, or tokens for language models).
            loss_scale: the factor ``s_j`` its mean loss was multiplied by before
                ``backward()``; None means ``units / N`` (``N`` the step's total units).

        Raises:
            ValueError: ``units`` or ``loss_scale`` not positive, or a BatchNorm of the model is in
                train mode (see ``allow_batchnorm``).
            RuntimeError: no gradient arrived since the last call, or a parameter
                received two gradients (two backward passes in one micro-batch).
        """
        self._check_micro_batch(units, loss_scale)
        for name, module in self._batchnorms:
            if module.training:
                self.reset()
                raise ValueError(
                    f"BatchNorm {name!r} is in train mode: each micro-batch is normalised with its own statistics, "
                    "so the micro-batch gradients are not samples of the batch gradient and B_simple would be "
                    "wrong. Put the BatchNorm layers in eval mode, use GroupNorm or LayerNorm, or pass "
                    "allow_batchnorm=True to GradientNoiseMonitor to measure anyway")
        stale, self._stale = bool(self._stale), False
        if stale:
            self.reset()
            raise RuntimeError(
                "the gradients were not zero when this step's first backward began, so the accumulated .grad mixes "
                "in an earlier step and |G|^2 and tr Σ would be wrong: call optimizer.zero_grad() (or "
                "model.zero_grad()) before each step's first micro-batch, or monitor.reset() after an unrelated "
                "backward")
        norms = [n for n in self._pending if n is not None]
        repeated = self._repeated
        self._pending = [None] * len(self.params)
        self._repeated = False
        if repeated:
            self.reset()
            raise RuntimeError("a parameter received two gradients since the last after_micro_batch(): call "
                               "after_micro_batch() after every backward(), or reset() after an unrelated backward "
                               "(gns_utils.noise.checkpoint_noise_scale suspends the monitors during its own)")
        if not norms:
            raise RuntimeError("no gradient reached the monitored parameters since the last call; "
                               "call after_micro_batch() right after loss.backward()")
        self._micro_sq.append(_total_sq_norm(norms))
        self._units.append(float(units))
        self._scales.append(loss_scale)
        self._record_gradients()

    def after_step(self) -> NoiseEstimate | None:
        """This step's estimate, measured on the accumulated ``.grad`` (call before clipping).

        Returns:
            A :class:`NoiseEstimate` in batch units (python floats), or None when the step
            had fewer than 2 micro-batches or a norm was not finite (counted in
            ``n_too_few`` / ``n_skipped``). The per-step record is reset either way.

        Raises:
            ValueError: explicit ``loss_scale`` given for some micro-batches but not others.
        """
        micro_sq, units, scales, cross = self._micro_sq, np.asarray(self._units), self._scales, self._cross
        changed = self._gradients_changed() and self.big_norm == "grad"
        self.reset()
        if changed:
            self._refuse_changed_gradients()
        if not micro_sq:
            self._nothing_recorded()
        if len(micro_sq) < 2:
            self.n_too_few += 1
            if self.n_too_few == 1 and micro_sq:  # say once why no estimate comes (not when nothing was recorded)
                warnings.warn("GradientNoiseMonitor got 1 micro-batch this step; it needs >= 2 backward passes "
                              "(micro-batches) per step to estimate |G|^2 and tr Σ, so this step gives no estimate. "
                              "Split each batch into micro-batches (gradient accumulation), or use "
                              "PerExampleNormMonitor (one backward, nets of nn.Linear layers)", RuntimeWarning,
                              stacklevel=2)
            return None
        s = _loss_scales(units, scales)
        if self.big_norm == "hooks":  # |Σ_j s_j g_j|^2 = Σ_j |s_j g_j|^2 + 2 Σ_{l<j} <s_l g_l, s_j g_j>
            big_raw = torch.stack(micro_sq).sum() + 2.0 * torch.as_tensor(cross, dtype=torch.float64,
                                                                           device=micro_sq[0].device)
        else:
            grads = [p.grad for p in self.params if p.grad is not None]
            big_raw = _total_sq_norm([_row_norms(g.detach()) for g in grads])
        small_each = torch.stack(micro_sq) / torch.as_tensor(s**2, dtype=torch.float64, device=big_raw.device)
        small, big = torch.stack([small_each.mean(), big_raw / float(s.sum()) ** 2]).tolist()
        if not (math.isfinite(small) and math.isfinite(big)):
            self.n_skipped += 1
            return None
        w = s / s.sum()
        b_small = 1.0 / float(np.mean(1.0 / units))
        b_big = 1.0 / float(np.sum(w**2 / units))
        self.n_steps += 1
        estimate = two_batch_estimates(small, big, b_small, b_big)
        self._check_plausible(estimate)
        return estimate


def _loss_scales(units: np.ndarray, scales: list[float | None]) -> np.ndarray:
    """The factors ``s_j`` each micro-batch's mean loss was multiplied by."""
    given = [s is not None for s in scales]
    if all(given):
        return np.asarray(scales, dtype=float)
    if any(given):
        raise ValueError("loss_scale was passed for some micro-batches of the step but not others; "
                         "pass it always or never")
    shares: np.ndarray = units / units.sum()
    return shares


class PerExampleNormMonitor(_StepMonitor):
    """``|G|^2`` and ``tr Σ`` from per-example gradient norms inside the training backward (A.2, ``B_small = 1``).

    For networks whose trainable parameters all sit in ``nn.Linear`` layers. During an
    ordinary forward/backward, a forward hook keeps each layer's input ``a_i`` and a hook
    on its output receives ``δ_i``, the gradient of the (scaled) batch-mean loss with
    respect to that output. Example ``i``'s gradient in the layer is
    ``g_i = (n/s)·δ_iᵀ a_i`` (weight) and ``(n/s)·Σ_t δ_it`` (bias), so for one input row
    per example ``|g_i|^2 = (n/s)^2 |δ_i|^2 (|a_i|^2 + 1)`` (Goodfellow 2015); with ``T``
    rows per example (sequences) the weight part is ``Σ (δ_i δ_iᵀ) ⊙ (a_i a_iᵀ)``.
    Autograd still computes ``.grad`` as usual: the monitor adds ``O(n·(in + out))``
    work per layer, against the second forward/backward that
    :class:`GradientNoiseMonitor` needs, and the small batch is a single example
    (lower variance than half a batch). Usage::

        monitor = PerExampleNormMonitor(model)
        opt.zero_grad()
        with monitor.capture():
            loss = loss_fn(model(x), y)          # mean over the n examples (of their own mean losses)
        loss.backward()
        monitor.after_micro_batch(n * units_per_example)
        est = monitor.after_step()               # NoiseEstimate or None; before clipping
        ...clip, opt.step()

    Several micro-batches per step are allowed (one ``capture`` + ``backward`` +
    :meth:`after_micro_batch` each), scaled as in :class:`GradientNoiseMonitor`:
    ``b_small`` = units per example, ``b_big = 1 / Σ w_j²/n_j``. The loss must be the mean
    over the examples of per-example losses, each example's forward independent of the
    others (no train-mode BatchNorm), and each Linear layer must run once per forward.

    Args:
        model: the network; ValueError (with the reason) if it does not qualify, see
            :meth:`unsupported`.

    Attributes:
        n_steps, n_skipped, n_too_few: as in :class:`GradientNoiseMonitor`
            (``n_too_few``: steps with fewer than 2 examples).
        sq_norms: the last step's per-example squared gradient norms ``|g_i|^2`` (each example's
            gradient of its own loss, float64 tensor on the model's device, micro-batches in
            order), or None before the first step: for outlier examples, clipping studies or
            B_simple's distribution. Read it after :meth:`after_step`.
    """

    def __init__(self, model: nn.Module) -> None:
        reason = self.unsupported(model)
        if reason:
            raise ValueError(f"PerExampleNormMonitor cannot handle this model: {reason}; "
                             "use GradientNoiseMonitor (micro-batches) instead")
        self.layers = [m for m in model.modules() if isinstance(m, nn.Linear)
                       and any(p.requires_grad for p in m.parameters(recurse=False))]
        self.params = [p for p in model.parameters() if p.requires_grad]
        super().__init__()
        self._capturing = False
        self.sq_norms: torch.Tensor | None = None
        self._generation = 0  # advanced whenever captured forwards are consumed or given up
        self._handles = [m.register_forward_hook(self._forward_hook) for m in self.layers]
        self.reset()

    @staticmethod
    def unsupported(model: nn.Module) -> str:
        """Why the monitor cannot handle ``model`` ('' when it can)."""
        if hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            return ("the model is compiled with torch.compile, and the per-example hooks need eager execution: "
                    "build the monitor on the uncompiled model and train that, or measure with GradientNoiseMonitor "
                    "(micro-batches), whose gradient hooks work with compiled models")
        return _layerwise_unsupported(model, (nn.Linear,)) or _train_mode_batchnorm(model)

    def reset(self) -> None:
        """Forget the current step's micro-batches (gradients of forwards captured before are then ignored)."""
        self._grad_versions = None
        self._generation += 1
        self._ran: set[nn.Module] = set()
        self._pending: list[torch.Tensor] = []
        self._examples = 0
        self._sums: list[list[torch.Tensor]] = []
        self._n: list[float] = []
        self._units: list[float] = []
        self._scales: list[float | None] = []

    @contextmanager
    def capture(self) -> Iterator[None]:
        """Record the Linear layers' inputs and output gradients of the forward run inside."""
        self._capturing = True
        try:
            yield
        finally:
            self._capturing = False

    def _forward_hook(self, module: nn.Linear, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if not (self._capturing and output.requires_grad) or self._suspended:
            return
        if module in self._ran:
            self.reset()
            raise RuntimeError(f"{module!r} ran twice in one forward; per-example norms need each Linear layer "
                               "once per forward (use GradientNoiseMonitor)")
        self._ran.add(module)
        a = args[0].detach()
        a = a.to(_accumulation_dtype(a))  # half-precision activations and deltas are summed in float32
        n = a.shape[0]
        if self._examples and n != self._examples:
            raise RuntimeError(f"Linear layers saw {self._examples} and {n} examples in one forward")
        self._examples = n
        weight, bias = module.weight.requires_grad, module.bias is not None and module.bias.requires_grad
        generation = self._generation

        def record(sq_norms: Callable[[], torch.Tensor]) -> None:
            if self._generation == generation:  # a forward given up since (reset, or an error) is ignored
                self._pending.append(sq_norms())

        if a.dim() == 2:  # one row per example: this layer's |g_i|^2 ∝ |δ_i|^2 (|a_i|^2 + 1), a_i's part now
            aa = torch.linalg.vector_norm(a, dim=1).square_() if weight else a.new_zeros(n)
            if bias:
                aa.add_(1.0)
            output.register_hook(  # type: ignore[no-untyped-call]  # Tensor.register_hook is untyped in torch
                lambda delta: record(lambda: delta.detach().to(aa.dtype).square().sum(1) * aa))
            return
        a = a.reshape(n, -1, a.shape[-1])
        output.register_hook(lambda delta: record(  # type: ignore[no-untyped-call]  # untyped in torch
            lambda: _linear_sq_norms(delta.detach().to(a.dtype).reshape(n, -1, delta.shape[-1]), a, weight, bias)))

    def after_micro_batch(self, units: float, loss_scale: float | None = None) -> None:
        """Record the micro-batch whose ``backward()`` just ran (arguments as in :class:`GradientNoiseMonitor`).

        Raises:
            ValueError: ``units`` or ``loss_scale`` not positive.
            RuntimeError: no captured forward, or its backward did not reach every layer.
        """
        self._check_micro_batch(units, loss_scale)
        pending, ran, n = self._pending, len(self._ran), self._examples
        self._pending, self._ran, self._examples = [], set(), 0
        self._generation += 1
        if not ran:
            raise RuntimeError("no forward was captured since the last call: run the forward inside "
                               "`with monitor.capture():`, then loss.backward(), then after_micro_batch()")
        if len(pending) != ran:
            raise RuntimeError(f"the backward reached {len(pending)} of the {ran} Linear layers captured in the "
                               "forward; call after_micro_batch() right after loss.backward()")
        self._sums.append(pending)  # read with the gradient norms in after_step, in one transfer
        self._n.append(float(n))
        self._units.append(float(units))
        self._scales.append(loss_scale)
        self._record_gradients()

    def after_step(self) -> NoiseEstimate | None:
        """This step's estimate from the per-example norms and the accumulated ``.grad`` (call before clipping).

        Returns:
            A :class:`NoiseEstimate` in batch units, or None when the step had fewer than
            2 examples or a norm was not finite (counted in ``n_too_few`` / ``n_skipped``).
        """
        sums, n, units, scales = self._sums, self._n, self._units, self._scales
        changed = self._gradients_changed()
        self.reset()
        if changed:
            self._refuse_changed_gradients()
        if not sums:
            self._nothing_recorded()
        if not sums or sum(n) < 2:
            self.n_too_few += 1
            return None
        s = _loss_scales(np.asarray(units), scales).tolist()
        s_total, n_total = sum(s), sum(n)
        # |Σ_j s_j g_j|^2 from the row norms of .grad, squared and summed in float64 (as GradientNoiseMonitor)
        big_raw = _total_sq_norm([_row_norms(p.grad.detach()) for p in self.params if p.grad is not None])
        # g_i = (n_j / s_j) δ_iᵀ a_i in micro-batch j: each example's |g_i|^2, summed over the layers
        self.sq_norms = torch.cat([torch.stack([t.to(torch.float64) for t in layers]).sum(0) * (n_j / s_j) ** 2
                                   for layers, n_j, s_j in zip(sums, n, s)])
        big_sq, small_sum = torch.stack([big_raw, self.sq_norms.sum()]).tolist()  # one transfer
        big, small = big_sq / s_total**2, small_sum / n_total  # the small norm: the mean of |g_i|^2
        if not (math.isfinite(small) and math.isfinite(big)):
            self.n_skipped += 1
            return None
        b_small = n_total / sum(n_j * n_j / u_j for n_j, u_j in zip(n, units))  # 1 / mean of 1/(units per example)
        b_big = 1.0 / sum((s_j / s_total) ** 2 / u_j for s_j, u_j in zip(s, units))
        self.n_steps += 1
        estimate = two_batch_estimates(small, big, b_small, b_big)
        self._check_plausible(estimate)
        return estimate


def _linear_sq_norms(d: torch.Tensor, a: torch.Tensor, weight: bool, bias: bool) -> torch.Tensor:
    """``|δ_iᵀ a_i|^2 + |Σ_t δ_it|^2`` for each example of ``d: [n, T, out]``, ``a: [n, T, in]`` (float64 ``[n]``).

    Gram matrices or outer products, whichever is cheaper (see :func:`_products_sq_norm_and_sum`).
    """
    sq = _products_sq_norm_and_sum(d, a)[0] if weight else d.new_zeros(len(d), dtype=torch.float64)
    if bias:
        sq = sq + d.sum(1).square().sum(1).double()
    return sq
