"""Estimators of the gradient noise scale: |G|^2, tr Σ, B_simple and B_noise.

Symbols (McCandlish et al. 2018, section 2 and Appendix A):

* ``ℓ_i(θ)``   loss of example ``i``; ``g_i = ∇ℓ_i`` its per-example gradient.
* ``L(θ)``     expected loss over the data distribution, ``L = E_i ℓ_i``.
* ``G``        true gradient ``G = ∇L = E_i g_i``; ``|G|^2`` its squared norm.
* ``Σ``        per-example gradient covariance ``Σ = E_i (g_i − G)(g_i − G)ᵀ`` (2.2);
  ``tr Σ = E_i |g_i − G|^2``.
* ``G_B``      the mean gradient of a batch of ``B`` i.i.d. examples: unbiased,
  ``E[G_B] = G``, with covariance ``Σ / B`` (2.3), hence
  ``E|G_B|^2 = |G|^2 + tr Σ / B``  (Appendix A.1).
* ``H``        Hessian of ``L``.
* ``B_simple`` ``tr Σ / |G|^2``  (2.9); equals ``B_noise`` when ``H ∝ I``.
* ``B_noise``  ``tr(HΣ) / (GᵀHG)``  (2.8).
* ``b_small``, ``b_big``  two batch sizes ``B_small < B_big`` whose squared gradient
  norms ``|G_small|^2``, ``|G_big|^2`` give the unbiased estimates (A.2)::

      |G|^2 ≈ (B_big |G_big|^2 − B_small |G_small|^2) / (B_big − B_small)
      tr Σ  ≈ (|G_small|^2 − |G_big|^2) / (1/B_small − 1/B_big)

Batch units: every batch size here (``b_small``, ``b_big``, ``units``) counts the
units the loss is a mean over: examples (images) by default, tokens for language
models (pass the token count), frames for games. ``tr Σ`` and ``B_simple`` are then per
unit, as in the paper's Table 1.

Sources of the (small, big) pair, all returning a :class:`NoiseEstimate`:

* :func:`per_example_estimate`  single examples (``b_small = 1``) and the batch:
  ``torch.func`` per-example gradients, or per-layer norms for Linear/Conv2d nets.
* :class:`GradientNoiseMonitor` micro-batches and their accumulated gradient, a few
  percent of a step inside a gradient-accumulation loop.
* :class:`PerExampleNormMonitor` single examples and the batch, from per-example norms
  taken inside the training step's one backward (nets of ``nn.Linear`` layers).
* :func:`data_parallel_estimate` each rank's local gradient and the all-reduced one.
  All step-wise sources follow the :class:`NoiseSource` protocol.

Per step the estimates are noisy (the |G|^2 estimate is often negative when
``B ≪ B_simple``); :class:`NoiseScaleEMA` keeps two separate moving averages and
reports ``B_simple`` as the ratio of the averages, never an average of ratios.
:func:`hessian_noise_scale` measures ``B_noise`` (2.8) with Hessian-vector products.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Protocol, Union, runtime_checkable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

Number = Union[float, int]
ArrayLike = Union[float, np.ndarray, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ParamDict = dict[str, torch.Tensor]

__all__ = [
    "NoiseEstimate",
    "two_batch_estimates",
    "NoiseScaleEMA",
    "RatioUncertainty",
    "ratio_of_means_jackknife",
    "NoiseSource",
    "GradientNoiseMonitor",
    "PerExampleNormMonitor",
    "per_example_estimate",
    "data_parallel_estimate",
    "HessianNoiseScale",
    "hessian_noise_scale",
]


# --------------------------------------------------------------------------------------
# The A.2 estimates
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Moving averages and their uncertainty
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RatioUncertainty:
    """A ratio of means with its block-jackknife standard error.

    Attributes:
        estimate: ``mean(numerator) / mean(denominator)`` over the window.
        stderr: block-jackknife standard error of ``estimate``.
        n_steps: steps in the window.
        n_blocks: blocks the window was cut into.
        block_size: steps per block.
    """

    estimate: float
    stderr: float
    n_steps: int
    n_blocks: int
    block_size: int


def ratio_of_means_jackknife(
    numerator: np.ndarray, denominator: np.ndarray, n_blocks: int = 20
) -> RatioUncertainty:
    """Delete-one-block jackknife of ``mean(numerator) / mean(denominator)``.

    The series is cut into ``n_blocks`` contiguous blocks of equal length (the oldest
    ``len % n_blocks`` steps are dropped so the blocks end at the newest step); leaving
    out block ``j`` gives ``R_(j)`` and ``SE² = (m−1)/m Σ_j (R_(j) − mean R)²``.
    Contiguous blocks keep serial correlation between nearby steps inside a block.

    Args:
        numerator: per-step values (e.g. ``tr Σ`` estimates), 1-D.
        denominator: per-step values (e.g. ``|G|^2`` estimates), same length.
        n_blocks: number of blocks ``m`` (at most the series length, at least 2).

    Returns:
        The estimate and its standard error; both nan when the summed denominator of the
        window (or of a leave-one-out sample) is not positive.

    Raises:
        ValueError: arrays of different lengths, fewer than 2 steps, or ``n_blocks < 2``.
    """
    num, den = np.asarray(numerator, float).ravel(), np.asarray(denominator, float).ravel()
    if num.shape != den.shape:
        raise ValueError(f"numerator and denominator differ in length: {num.size} vs {den.size}")
    if num.size < 2:
        raise ValueError(f"need at least 2 steps for an uncertainty, got {num.size}")
    if n_blocks < 2:
        raise ValueError(f"n_blocks must be >= 2, got {n_blocks}")
    m = min(n_blocks, num.size)
    size = num.size // m
    num, den = num[num.size - m * size:], den[den.size - m * size:]
    block_num, block_den = num.reshape(m, size).sum(1), den.reshape(m, size).sum(1)
    total_num, total_den = block_num.sum(), block_den.sum()
    leave_out_den = total_den - block_den
    if total_den <= 0 or np.any(leave_out_den <= 0):
        return RatioUncertainty(math.nan, math.nan, int(num.size), m, size)
    leave_out = (total_num - block_num) / leave_out_den
    stderr = math.sqrt((m - 1) / m * float(np.sum((leave_out - leave_out.mean()) ** 2)))
    return RatioUncertainty(float(total_num / total_den), stderr, int(num.size), m, size)


class NoiseScaleEMA:
    """Bias-corrected moving averages of ``|G|^2`` and ``tr Σ``; ``B_simple`` from their ratio.

    Two separate exponential moving averages are kept, ``m_t = d·m_{t−1} + (1−d)·x_t``
    (``m_0 = 0``), one of the ``g2`` and one of the ``trace_sigma`` estimates, each
    divided by ``1 − d^t`` (Adam-style debiasing). ``B_simple = tr Σ / |G|^2`` (2.9) is
    the ratio of the two averages: a ratio of noisy per-step numbers is biased, so the
    ratio is never averaged (Appendix A.1).

    Every accepted step is also kept raw (:meth:`history`, :meth:`to_dataframe`) so it
    can be re-analysed, and :meth:`uncertainty` gives a standard error for ``B_simple``.

    Short runs: a constant decay lags ``d/(1−d)`` steps (99 at ``d = 0.99``), so on a run of
    a few hundred steps the averages still hold the large early ``|G|^2`` and ``B_simple``
    comes out far too low. With ``adaptive = k`` the decay at the ``t``-th accepted step is
    ``d_t = min(d, 1 − k/(t+k−1))``: until ``d`` takes over (near ``t = k/(1−d)``) step ``s``
    is weighted ``∝ s(s+1)…(s+k−2) ≈ s^(k−1)`` (``k = 1``: the plain running mean; ``k = 2``:
    ``∝ s``), so the lag stays about ``t/(k+1)`` — a fixed fraction of the run, as suits
    training dynamics that move on a log scale of steps. Debiasing divides by ``1 − Π d_t``
    (``1 − d^t`` for a constant decay; 1 once ``d_1 = 0``).

    Args:
        decay: ``d`` in [0, 1); the averages span about ``(1+d)/(1−d)`` steps.
        adaptive: ``k ≥ 1`` for the step-dependent decay above; None keeps ``d`` constant.

    Attributes:
        count: steps accepted into the averages.
        n_negative_g2: accepted steps whose ``g2`` estimate was negative.
        n_skipped: steps ignored because an estimate was nan or infinite.
    """

    def __init__(self, decay: float = 0.99, adaptive: float | None = None) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if adaptive is not None and not (math.isfinite(adaptive) and adaptive >= 1.0):
            raise ValueError(f"adaptive must be None or a number >= 1 (the k of d_t = 1 - k/(t+k-1)), got {adaptive}")
        self.decay = float(decay)
        self.adaptive = None if adaptive is None else float(adaptive)
        self._decay_product = 1.0
        self.count = 0
        self.n_negative_g2 = 0
        self.n_skipped = 0
        self._m_g2 = 0.0
        self._m_trace = 0.0
        self._n_updates = 0
        self._rows: dict[str, list[float]] = {k: [] for k in ("step", "g2", "trace_sigma", "b_small", "b_big",
                                                               "b_simple_ema")}

    def update(self, estimate: NoiseEstimate) -> None:
        """Fold one step's scalar estimate into both averages (non-finite ones are skipped).

        Args:
            estimate: a :class:`NoiseEstimate` with scalar ``g2`` and ``trace_sigma``.
        """
        g2, trace = float(estimate.g2), float(estimate.trace_sigma)
        self._n_updates += 1
        if not (math.isfinite(g2) and math.isfinite(trace)):
            self.n_skipped += 1
            return
        self.count += 1
        self.n_negative_g2 += g2 < 0
        d = self.step_decay(self.count)
        self._decay_product *= d
        self._m_g2 = d * self._m_g2 + (1 - d) * g2
        self._m_trace = d * self._m_trace + (1 - d) * trace
        for key, value in (("step", self._n_updates - 1), ("g2", g2), ("trace_sigma", trace),
                           ("b_small", estimate.b_small), ("b_big", estimate.b_big), ("b_simple_ema", self.b_simple)):
            self._rows[key].append(float(value))

    def step_decay(self, t: int) -> float:
        """The decay ``d_t`` applied at the ``t``-th accepted step (``t ≥ 1``)."""
        if self.adaptive is None:
            return self.decay
        return min(self.decay, 1.0 - self.adaptive / (t + self.adaptive - 1.0))

    @property
    def effective_steps(self) -> float:
        """Effective number of steps ``(Σ w)² / Σ w²`` behind the averages, with
        ``w_s = (1 − d_s) Π_{u>s} d_u`` the weight of accepted step ``s``."""
        if not self.count:
            return 0.0
        d = np.array([self.step_decay(t) for t in range(1, self.count + 1)])
        later = np.append(np.cumprod(d[::-1])[::-1][1:], 1.0)  # Π_{u>s} d_u
        w = (1.0 - d) * later
        return float(w.sum() ** 2 / (w**2).sum())

    @property
    def _debias(self) -> float:
        return 1.0 - self._decay_product

    @property
    def g2(self) -> float:
        """Debiased moving average of the ``|G|^2`` estimates (nan before any step)."""
        return self._m_g2 / self._debias if self.count else math.nan

    @property
    def trace_sigma(self) -> float:
        """Debiased moving average of the ``tr Σ`` estimates (nan before any step)."""
        return self._m_trace / self._debias if self.count else math.nan

    @property
    def b_simple(self) -> float:
        """``B_simple = tr Σ / |G|^2`` (2.9) from the two averages; nan while the ``|G|^2`` average is ≤ 0."""
        g2 = self.g2
        return self.trace_sigma / g2 if self.count and g2 > 0 else math.nan

    def history(self) -> dict[str, np.ndarray]:
        """The accepted steps, raw: arrays ``step`` (update index, gaps at skipped steps),
        ``g2``, ``trace_sigma``, ``b_small``, ``b_big`` and ``b_simple_ema`` (after that step)."""
        return {k: np.asarray(v, dtype=float) for k, v in self._rows.items()}

    def to_dataframe(self) -> "pd.DataFrame":
        """:meth:`history` as a pandas DataFrame, one row per accepted step."""
        import pandas as pd

        return pd.DataFrame(self.history())

    def uncertainty(self, window: int | None = None, n_blocks: int = 20) -> RatioUncertainty:
        """Standard error of ``B_simple`` from the recent raw history (block jackknife).

        The statistic is the plain ratio of means ``Σ tr Σ_t / Σ |G|^2_t`` over the last
        ``window`` steps, which approximates the EMA ratio when the window matches the
        averages' effective length (the default: :attr:`effective_steps`, which is
        ``(1+d)/(1−d)`` for a long run at constant decay). A delete-one-block
        jackknife is used rather than a bootstrap: the ratio of means is a smooth function
        of two means, for which the jackknife is consistent, it is deterministic (no
        random seed) and costs ``n_blocks`` ratios; contiguous blocks absorb the serial
        correlation that slowly drifting weights put between nearby steps.

        Args:
            window: number of most recent steps; default ``round(effective_steps)``.
            n_blocks: jackknife blocks.

        Returns:
            A :class:`RatioUncertainty`.

        Raises:
            ValueError: fewer than 2 accepted steps.
        """
        if window is None:
            window = max(2, round(self.effective_steps))
        rows = self._rows
        return ratio_of_means_jackknife(np.asarray(rows["trace_sigma"][-window:]),
                                        np.asarray(rows["g2"][-window:]), n_blocks)


# --------------------------------------------------------------------------------------
# Sources of the (small, big) pair
# --------------------------------------------------------------------------------------


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


def _row_norms(t: torch.Tensor) -> torch.Tensor:
    """Euclidean norms of the rows of ``t`` (1-D result) — reducing over rows runs in parallel."""
    rows = t.reshape(t.shape[0], -1) if t.dim() >= 2 else t.reshape(1, -1)
    return torch.linalg.vector_norm(rows, dim=1)


def _total_sq_norm(row_norms: list[torch.Tensor]) -> torch.Tensor:
    """Sum of squares, in float64, of the per-row norms of several tensors (0-dim tensor)."""
    device = row_norms[0].device
    flat = torch.cat([r.to(device) for r in row_norms]).to(torch.float64)
    return torch.dot(flat, flat)


class _StepMonitor:
    """What the step-wise monitors share: their counters, hook removal and argument checks."""

    def __init__(self) -> None:
        self.n_steps = 0
        self.n_skipped = 0
        self.n_too_few = 0
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def remove(self) -> None:
        """Remove the hooks; the monitor is unusable afterwards."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

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

        monitor = GradientNoiseMonitor(model.parameters())
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

    Args:
        params: the parameters the optimizer updates (those with ``requires_grad``).

    Attributes:
        n_steps: steps that returned an estimate.
        n_skipped: steps skipped because a gradient norm was nan or infinite.
        n_too_few: steps with fewer than 2 micro-batches (no estimate).
    """

    def __init__(self, params: Iterable[torch.Tensor]) -> None:
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("GradientNoiseMonitor needs at least one parameter with requires_grad=True")
        super().__init__()
        self._pending: list[torch.Tensor | None] = [None] * len(self.params)
        self._repeated = False
        self._handles = [p.register_hook(self._make_hook(i)) for i, p in enumerate(self.params)]
        self.reset()

    def _make_hook(self, index: int) -> Callable[[torch.Tensor], None]:
        def hook(incoming: torch.Tensor) -> None:
            if self._pending[index] is not None:
                self._repeated = True
            self._pending[index] = _row_norms(incoming.detach())
        return hook

    def reset(self) -> None:
        """Forget the current step's micro-batches (e.g. after an unrelated backward)."""
        self._pending = [None] * len(self.params)
        self._repeated = False
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
            ValueError: ``units`` not positive, or ``loss_scale`` not positive.
            RuntimeError: no gradient arrived since the last call, or a parameter
                received two gradients (two backward passes in one micro-batch).
        """
        self._check_micro_batch(units, loss_scale)
        norms = [n for n in self._pending if n is not None]
        repeated = self._repeated
        self._pending = [None] * len(self.params)
        self._repeated = False
        if repeated:
            self.reset()
            raise RuntimeError("a parameter received two gradients since the last after_micro_batch(): call "
                               "after_micro_batch() after every backward(), or reset() after an unrelated backward")
        if not norms:
            raise RuntimeError("no gradient reached the monitored parameters since the last call; "
                               "call after_micro_batch() right after loss.backward()")
        self._micro_sq.append(_total_sq_norm(norms))
        self._units.append(float(units))
        self._scales.append(loss_scale)

    def after_step(self) -> NoiseEstimate | None:
        """This step's estimate, measured on the accumulated ``.grad`` (call before clipping).

        Returns:
            A :class:`NoiseEstimate` in batch units (python floats), or None when the step
            had fewer than 2 micro-batches or a norm was not finite (counted in
            ``n_too_few`` / ``n_skipped``). The per-step record is reset either way.

        Raises:
            ValueError: explicit ``loss_scale`` given for some micro-batches but not others.
        """
        micro_sq, units, scales = self._micro_sq, np.asarray(self._units), self._scales
        self.reset()
        if len(micro_sq) < 2:
            self.n_too_few += 1
            return None
        s = _loss_scales(units, scales)
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
        return two_batch_estimates(small, big, b_small, b_big)


def _loss_scales(units: np.ndarray, scales: list[float | None]) -> np.ndarray:
    """The factors ``s_j`` each micro-batch's mean loss was multiplied by."""
    given = [s is not None for s in scales]
    if all(given):
        return np.asarray(scales, dtype=float)
    if any(given):
        raise ValueError("loss_scale was passed for some micro-batches of the step but not others; "
                         "pass it always or never")
    return units / units.sum()


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
        self._generation = 0  # advanced whenever captured forwards are consumed or given up
        self._handles = [m.register_forward_hook(self._forward_hook) for m in self.layers]
        self.reset()

    @staticmethod
    def unsupported(model: nn.Module) -> str:
        """Why the monitor cannot handle ``model`` ('' when it can)."""
        return _layerwise_unsupported(model, (nn.Linear,)) or _train_mode_batchnorm(model)

    def reset(self) -> None:
        """Forget the current step's micro-batches (gradients of forwards captured before are then ignored)."""
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

    def _forward_hook(self, module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if not (self._capturing and output.requires_grad):
            return
        if module in self._ran:
            self.reset()
            raise RuntimeError(f"{module!r} ran twice in one forward; per-example norms need each Linear layer "
                               "once per forward (use GradientNoiseMonitor)")
        self._ran.add(module)
        a = args[0].detach()
        n = a.shape[0]
        if self._examples and n != self._examples:
            raise RuntimeError(f"Linear layers saw {self._examples} and {n} examples in one forward")
        self._examples = n
        weight, bias = module.weight.requires_grad, module.bias is not None and module.bias.requires_grad
        generation = self._generation

        def record(sq_norm_sum: Callable[[], torch.Tensor]) -> None:
            if self._generation == generation:  # a forward given up since (reset, or an error) is ignored
                self._pending.append(sq_norm_sum())

        if a.dim() == 2:  # one row per example: |g_i|^2 ∝ |δ_i|^2 (|a_i|^2 + 1), a_i's part computed now
            aa = torch.linalg.vector_norm(a, dim=1).square_() if weight else a.new_zeros(n)
            if bias:
                aa.add_(1.0)
            output.register_hook(lambda delta: record(lambda: torch.dot(delta.detach().square().sum(1), aa)))
            return
        a = a.reshape(n, -1, a.shape[-1])
        output.register_hook(lambda delta: record(
            lambda: _linear_sq_norm_sum(delta.detach().reshape(n, -1, delta.shape[-1]), a, weight, bias)))

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

    def after_step(self) -> NoiseEstimate | None:
        """This step's estimate from the per-example norms and the accumulated ``.grad`` (call before clipping).

        Returns:
            A :class:`NoiseEstimate` in batch units, or None when the step had fewer than
            2 examples or a norm was not finite (counted in ``n_too_few`` / ``n_skipped``).
        """
        sums, n, units, scales = self._sums, self._n, self._units, self._scales
        self.reset()
        if not sums or sum(n) < 2:
            self.n_too_few += 1
            return None
        s = _loss_scales(np.asarray(units), scales).tolist()
        s_total, n_total = sum(s), sum(n)
        grads = [p.grad.detach() for p in self.params if p.grad is not None]
        values = torch.stack(list(torch._foreach_norm(grads)) + [t for layers in sums for t in layers]).tolist()
        big = math.fsum(v * v for v in values[:len(grads)]) / s_total**2
        # g_i = (n_j / s_j) δ_iᵀ a_i in micro-batch j; the small norm is the mean of |g_i|^2 over all examples
        layer_sums, small = iter(values[len(grads):]), 0.0
        for layers, n_j, s_j in zip(sums, n, s):
            small += math.fsum(next(layer_sums) for _ in layers) * (n_j / s_j) ** 2
        small /= n_total
        if not (math.isfinite(small) and math.isfinite(big)):
            self.n_skipped += 1
            return None
        b_small = n_total / sum(n_j * n_j / u_j for n_j, u_j in zip(n, units))  # 1 / mean of 1/(units per example)
        b_big = 1.0 / sum((s_j / s_total) ** 2 / u_j for s_j, u_j in zip(s, units))
        self.n_steps += 1
        return two_batch_estimates(small, big, b_small, b_big)


def _linear_sq_norm_sum(d: torch.Tensor, a: torch.Tensor, weight: bool, bias: bool) -> torch.Tensor:
    """``Σ_i |δ_iᵀ a_i|^2 + |Σ_t δ_it|^2`` over the examples of ``d: [n, T, out]``, ``a: [n, T, in]`` (float64).

    Gram matrices or outer products, whichever is cheaper (see :func:`_products_sq_norm_and_sum`).
    """
    total = _products_sq_norm_and_sum(d, a)[0].sum() if weight else d.new_zeros((), dtype=torch.float64)
    if bias:
        total = total + d.sum(1).square().sum().double()
    return total


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
        all_reduce: force (True) or skip (False) the all-reduce; None = when a process
            group is initialised.

    Returns:
        A :class:`NoiseEstimate` (python floats).

    Raises:
        ValueError: ``world_size < 2`` or the errors of :func:`two_batch_estimates`.
    """
    if world_size < 2:
        raise ValueError(f"world_size must be >= 2 for a data-parallel estimate, got {world_size}")
    if all_reduce is None:
        all_reduce = torch.distributed.is_available() and torch.distributed.is_initialized()
    local = torch.as_tensor(local_sq_norm, dtype=torch.float64).detach().clone()
    if all_reduce:
        if isinstance(local_sq_norm, torch.Tensor):
            local = local.to(local_sq_norm.device)
        torch.distributed.all_reduce(local, op=torch.distributed.ReduceOp.SUM)
        local = local / world_size
    big = float(global_sq_norm.detach().double()) if isinstance(global_sq_norm, torch.Tensor) else float(global_sq_norm)
    return two_batch_estimates(float(local), big, local_batch, float(local_batch) * world_size)


# --------------------------------------------------------------------------------------
# Per-example gradients (torch.func)
# --------------------------------------------------------------------------------------


def _split_state(model: nn.Module) -> tuple[ParamDict, ParamDict]:
    """Trainable parameters and everything else (frozen parameters, buffers), detached."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    consts = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    consts.update(dict(model.named_buffers()))
    if not params:
        raise ValueError("the model has no parameters with requires_grad=True")
    return params, consts


def _train_mode_batchnorm(model: nn.Module) -> str:
    """'' or why per-example gradients are undefined: a BatchNorm in train mode couples the examples."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            return (f"module {name or type(module).__name__!r} is a BatchNorm in train mode; per-example "
                    "gradients need model.eval() (running statistics)")
    return ""


def _check_functional(model: nn.Module) -> None:
    """Per-example gradients are undefined with batch statistics: refuse train-mode BatchNorm."""
    reason = _train_mode_batchnorm(model)
    if reason:
        raise ValueError(reason)


def _check_batch(inputs: torch.Tensor, targets: torch.Tensor, chunk_size: int, minimum: int) -> int:
    n = len(inputs)
    if len(targets) != n:
        raise ValueError(f"inputs and targets differ in length: {n} vs {len(targets)}")
    if n < minimum:
        raise ValueError(f"need at least {minimum} examples, got {n}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return n


def _per_example_grad_fn(model: nn.Module, loss_fn: LossFn) -> Callable[..., ParamDict]:
    """``f(params, consts, x_chunk, y_chunk)`` → dict of per-example gradients ``[c, *shape]``."""

    def example_loss(params: ParamDict, consts: ParamDict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (params, consts), (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0))

    return vmap(grad(example_loss), in_dims=(None, None, 0, 0), randomness="different")


def _sq_norms_per_example(grads: ParamDict) -> torch.Tensor:
    """``|g_i|^2`` for each example of a chunk, float64, shape ``[c]``."""
    total = None
    for g in grads.values():
        sq = torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1).to(torch.float64).square()
        total = sq if total is None else total + sq
    return total


def per_example_estimate(
    model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor,
    chunk_size: int = 16, units_per_example: float = 1.0, accumulate_grad: bool = False,
    method: str = "auto",
) -> NoiseEstimate:
    """``|G|^2`` and ``tr Σ`` from per-example gradients of one batch (A.2 with ``B_small = 1``).

    With per-example gradients ``g_i`` and ``ĝ = mean_i g_i``, the small squared norm is
    ``mean_i |g_i|^2`` (unbiased for ``|G|^2 + tr Σ``, i.e. ``|G_1|^2``), the big one
    ``|ĝ|^2``; ``b_small = units_per_example``, ``b_big = n·units_per_example``. The result
    equals the textbook unbiased sample estimates ``tr Σ ≈ Σ|g_i − ĝ|^2/(n−1)`` and
    ``|G|^2 ≈ |ĝ|^2 − tr Σ / n``. Only running sums are kept (``Σ|g_i|^2`` in float64
    and ``Σ g_i``), never all per-example gradients at once.

    Methods:

    * ``"func"``: ``torch.func`` (``functional_call`` + ``vmap(grad)``) over chunks of
      ``chunk_size`` examples; works for any architecture, but materialises
      ``chunk_size × #params`` numbers per chunk and is ~11× a training step on CPU.
    * ``"layerwise"``: one ordinary batched forward/backward; hooks on ``nn.Linear`` and
      ``nn.Conv2d`` (groups = 1, zero padding) capture each layer's input ``a`` and output
      gradient ``δ``, and ``|g_i|^2`` is assembled per layer from ``δ_iᵀ a_i`` (outer
      products, or Gram matrices ``(δδᵀ)⊙(aaᵀ)`` when cheaper), chunked over examples.
      Requires every trainable parameter to belong to such a layer, each layer to run once
      per forward and its parameters to be used only by it; about 1.7–2× a plain step
      of the paper's CNN at batch 128 on CPU (``benchmarks/noise_overhead.py``).
    * ``"auto"`` (default): ``"layerwise"`` when the model qualifies, else ``"func"``.

    Both assume ``loss_fn(outputs, targets)`` is the plain mean over examples of a
    per-example loss (``loss_fn(out[i:i+1], y[i:i+1])``), e.g. ``F.cross_entropy``.
    Buffers are used unchanged (BatchNorm must be in eval mode, else ValueError); dropout
    in train mode draws an independent mask per example, as in an ordinary batch.

    Args:
        model: the network.
        loss_fn: ``loss_fn(outputs, targets)``, a mean-reduced loss such as ``F.cross_entropy``.
        inputs: batch of ``n ≥ 2`` examples along dim 0.
        targets: their targets along dim 0.
        chunk_size: examples per vectorised chunk.
        units_per_example: batch units per example (1 for images; the tokens per
            sequence for a language model whose loss is a mean over tokens).
        accumulate_grad: also add the batch-mean gradient ``ĝ`` to each parameter's
            ``.grad`` (as ``loss.backward()`` would), so a training step can use it
            instead of its own backward.
        method: ``"auto"``, ``"layerwise"`` or ``"func"`` (see above).

    Returns:
        A :class:`NoiseEstimate` (python floats).

    Raises:
        ValueError: fewer than 2 examples, mismatched lengths, bad ``chunk_size`` or
            ``method``, a model ``"layerwise"`` cannot handle, train-mode BatchNorm, or a
            non-finite gradient norm.
    """
    n = _check_batch(inputs, targets, chunk_size, minimum=2)
    _check_functional(model)
    if method not in ("auto", "layerwise", "func"):
        raise ValueError(f"method must be 'auto', 'layerwise' or 'func', got {method!r}")
    reason = _layerwise_unsupported(model)
    if method == "layerwise" and reason:
        raise ValueError(f"method='layerwise' cannot handle this model: {reason}")
    use_layerwise = method == "layerwise" or (method == "auto" and not reason)
    sums = _layerwise_sums if use_layerwise else _func_sums
    sum_sq, mean_grad = sums(model, loss_fn, inputs, targets, chunk_size)
    if accumulate_grad:
        _add_to_grad(model, mean_grad)
    small = float(sum_sq) / n
    big = float(_dict_sq_norm(mean_grad))
    return two_batch_estimates(small, big, units_per_example, n * units_per_example)


def _func_sums(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor,
               chunk_size: int) -> tuple[torch.Tensor, ParamDict]:
    """``(Σ_i |g_i|^2, ĝ)`` with ``torch.func`` per-example gradients, chunk by chunk."""
    params, consts = _split_state(model)
    grad_fn = _per_example_grad_fn(model, loss_fn)
    sum_sq = torch.zeros((), dtype=torch.float64, device=inputs.device)
    sum_grad = {k: torch.zeros_like(v) for k, v in params.items()}
    for x, y in zip(inputs.split(chunk_size), targets.split(chunk_size)):
        grads = grad_fn(params, consts, x, y)
        sum_sq += _sq_norms_per_example(grads).sum()
        for k, g in grads.items():
            sum_grad[k] += g.sum(0)
        del grads
    return sum_sq, {k: v / len(inputs) for k, v in sum_grad.items()}


def _conv_padding(conv: nn.Conv2d) -> tuple[int, int] | None:
    """Explicit symmetric zero padding of a Conv2d, or None when unfold cannot express it."""
    if conv.padding_mode != "zeros" or conv.groups != 1:
        return None
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        return None if any(t % 2 for t in total) else (total[0] // 2, total[1] // 2)
    return tuple(conv.padding)  # type: ignore[return-value]


def _layerwise_unsupported(model: nn.Module, layer_types: tuple[type, ...] = (nn.Linear, nn.Conv2d)) -> str:
    """Why the layerwise per-example norms over ``layer_types`` cannot handle ``model`` ('' when they can)."""
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    owner: dict[int, str] = {}
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        if not isinstance(module, layer_types):
            allowed = " and ".join(t.__name__ for t in layer_types)
            return f"module {name!r} ({type(module).__name__}) has trainable parameters; only {allowed} may"
        if isinstance(module, nn.Conv2d) and _conv_padding(module) is None:
            return f"Conv2d {name!r} has groups > 1, non-zero padding mode or asymmetric 'same' padding"
        for p in own:
            if id(p) in owner:
                return f"a parameter is shared by {owner[id(p)]!r} and {name!r}"
            owner[id(p)] = name
    held = " or ".join(t.__name__ for t in layer_types)
    return "" if set(owner) == trainable else f"some trainable parameters are not held by a {held}"


def _layer_operands(module: nn.Module, a: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(δ, a)`` reshaped to ``[n, T, out]`` and ``[n, T, in]`` so that ``g_i = δ_iᵀ a_i``."""
    n = a.shape[0]
    if isinstance(module, nn.Conv2d):
        return delta.reshape(n, delta.shape[1], -1).transpose(1, 2), _conv_patches(module, a)
    return delta.reshape(n, -1, delta.shape[-1]), a.reshape(n, -1, a.shape[-1])


def _conv_patches(conv: nn.Conv2d, a: torch.Tensor) -> torch.Tensor:
    """im2col of a Conv2d input as a ``[n, P, C·kh·kw]`` view of a ``[n, C·kh·kw, P]`` copy.

    Built from strided windows (``F.unfold`` is far slower on CPU); that memory layout
    copies about 3× faster than ``[n, P, C·kh·kw]``.
    """
    (ph, pw), (kh, kw), (dh, dw), (sh, sw) = _conv_padding(conv), conv.kernel_size, conv.dilation, conv.stride
    padded = torch.nn.functional.pad(a, (pw, pw, ph, ph))
    windows = padded.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)[..., ::dh, ::dw]
    n, c, out_h, out_w = windows.shape[:4]
    return windows.permute(0, 1, 4, 5, 2, 3).reshape(n, c * kh * kw, out_h * out_w).transpose(1, 2)


def _products_sq_norm_and_sum(d: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``|δ_iᵀ a_i|_F^2`` per example (float64) and ``Σ_i δ_iᵀ a_i`` (``[out, in]``).

    Outer products are materialised per example, or, when cheaper, the norms come from
    Gram matrices ``Σ (δ_i δ_iᵀ) ⊙ (a_i a_iᵀ)`` (``T² (out + in) < T·out·in``).
    """
    t, d_out, d_in = a.shape[1], d.shape[2], a.shape[2]
    if t == 1:
        d1, a1 = d[:, 0], a[:, 0]
        sq = d1.square().sum(1).double() * a1.square().sum(1).double()
        return sq, d1.T @ a1
    if t * t * (d_out + d_in) < t * d_out * d_in:
        sq = (torch.bmm(d, d.transpose(1, 2)) * torch.bmm(a, a.transpose(1, 2))).sum((1, 2)).double()
        return sq, d.reshape(-1, d_out).T @ a.reshape(-1, d_in)
    prod = torch.bmm(d.transpose(1, 2), a)
    return torch.linalg.vector_norm(prod.reshape(len(prod), -1), dim=1).double().square(), prod.sum(0)


def _layerwise_sums(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor,
                    chunk_size: int) -> tuple[torch.Tensor, ParamDict]:
    """``(Σ_i |g_i|^2, ĝ)`` from one batched forward/backward with per-layer hooks (see ``method``).

    Autograd is asked only for the gradients ``δ`` of the layers' outputs, never for the
    parameters' (so parameter hooks, e.g. a :class:`GradientNoiseMonitor`, do not fire);
    the weight gradients are assembled here from ``δ`` and the layers' inputs.
    """
    captured: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def forward_hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if module in captured:
            raise ValueError(f"{type(module).__name__} ran twice in one forward; use method='func'")
        captured[module] = (args[0].detach(), output)

    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))
              and any(p.requires_grad for p in m.parameters(recurse=False))]
    handles = [m.register_forward_hook(forward_hook) for m in layers]
    try:
        loss = loss_fn(model(inputs), targets)
    finally:
        for h in handles:
            h.remove()
    modules = list(captured)
    deltas = torch.autograd.grad(loss, [captured[m][1] for m in modules])
    n = len(inputs)
    per_example = torch.zeros(n, dtype=torch.float64, device=inputs.device)
    grads: dict[int, torch.Tensor] = {}
    for module, delta in zip(modules, deltas):
        a = captured[module][0]
        weight_grad = torch.zeros_like(module.weight).reshape(module.weight.shape[0], -1)
        bias_grad = torch.zeros_like(module.bias) if module.bias is not None else None
        for lo in range(0, n, chunk_size):
            d, x = _layer_operands(module, a[lo:lo + chunk_size], delta[lo:lo + chunk_size])
            sq, chunk_grad = _products_sq_norm_and_sum(d, x)
            weight_grad += chunk_grad
            if bias_grad is not None:
                per_bias = d.sum(1)
                sq = sq + torch.linalg.vector_norm(per_bias, dim=1).double().square()
                bias_grad += per_bias.sum(0)
            per_example[lo:lo + chunk_size] += sq
        grads[id(module.weight)] = weight_grad.reshape(module.weight.shape)
        if bias_grad is not None:
            grads[id(module.bias)] = bias_grad
    mean_grad = {k: grads.get(id(p), torch.zeros_like(p)) for k, p in model.named_parameters() if p.requires_grad}
    # δ is the gradient of the batch *mean* loss, so g_i = n · δ_iᵀ a_i
    return per_example.sum() * n * n, mean_grad


def _dict_sq_norm(tensors: ParamDict) -> torch.Tensor:
    return _total_sq_norm([_row_norms(t) for t in tensors.values()])


def _add_to_grad(model: nn.Module, grads: ParamDict) -> None:
    for name, p in model.named_parameters():
        if name in grads:
            g = grads[name].to(p.dtype)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.add_(g)


# --------------------------------------------------------------------------------------
# B_noise with Hessian-vector products
# --------------------------------------------------------------------------------------


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
