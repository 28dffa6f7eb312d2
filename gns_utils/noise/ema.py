"""Moving averages of the A.2 estimates, ``B_simple = tr Σ / |G|^2`` (2.9), and its uncertainty.

Per step the ``|G|^2`` and ``tr Σ`` estimates are noisy (the ``|G|^2`` one is often negative
when ``B ≪ B_simple``); :class:`NoiseScaleEMA` keeps two separate moving averages and reports
``B_simple`` as the ratio of the averages, never an average of ratios (Appendix A.1).
:func:`ratio_of_means_jackknife` gives the standard error of such a ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gns_utils.noise.estimate import NoiseEstimate

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["NoiseScaleEMA", "RatioUncertainty", "WindowedNoiseScale", "ratio_of_means_jackknife", "windowed_b_simple"]


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

    Checkpoints: :meth:`state_dict` holds plain numbers and lists only (``torch.save`` it with the
    model; it loads under ``torch.load(..., weights_only=True)``), and :meth:`load_state_dict`
    continues the same series, so a resumed training reports the B_simple an unbroken one would.

    Args:
        decay: ``d`` in [0, 1); the averages span about ``(1+d)/(1−d)`` steps.
        adaptive: ``k ≥ 1`` for the step-dependent decay above; None keeps ``d`` constant.
        max_history: raw steps kept for :meth:`history` and :meth:`uncertainty` (the most recent
            ones; about 100 bytes each); None keeps every step. The averages never need them.

    Attributes:
        count: steps accepted into the averages.
        n_negative_g2: accepted steps whose ``g2`` estimate was negative.
        n_skipped: steps ignored because an estimate was nan or infinite.
    """

    def __init__(self, decay: float = 0.99, adaptive: float | None = None, max_history: int | None = 100_000) -> None:
        if max_history is not None and (isinstance(max_history, bool) or not isinstance(max_history, int)
                                        or max_history < 2):
            raise ValueError(f"max_history must be None or an integer >= 2, got {max_history!r}")
        self.max_history = max_history
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
        if estimate is None:
            raise TypeError("NoiseScaleEMA.update() got None: a monitor's after_step() returns None for a step "
                            "without an estimate (fewer than 2 micro-batches, a non-finite norm); skip those steps: "
                            "`if (est := monitor.after_step()) is not None: ema.update(est)`")
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
        if self.max_history is not None and len(self._rows["step"]) > 2 * self.max_history:  # trim now and then
            for rows in self._rows.values():
                del rows[: len(rows) - self.max_history]

    _STATE = ("decay", "adaptive", "max_history", "_decay_product", "count", "n_negative_g2", "n_skipped", "_m_g2",
              "_m_trace", "_n_updates")

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the series: plain numbers and lists (``weights_only``-loadable)."""
        state = {name.lstrip("_"): getattr(self, name) for name in self._STATE}
        state["rows"] = {k: list(v) for k, v in self._rows.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the series saved by :meth:`state_dict` (the settings come from the state)."""
        missing = [name for name in (*(n.lstrip("_") for n in self._STATE), "rows") if name not in state]
        if missing:
            raise ValueError(f"not a NoiseScaleEMA state: missing {missing}")
        for name in self._STATE:
            setattr(self, name, state[name.lstrip("_")])
        self._rows = {k: [float(x) for x in v] for k, v in state["rows"].items()}

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
        """The accepted steps, raw (at least the last ``max_history``): arrays ``step`` (update index, gaps
        at skipped steps), ``g2``, ``trace_sigma``, ``b_small``, ``b_big`` and ``b_simple_ema`` (after that step)."""
        keep = len(self._rows["step"]) if self.max_history is None else self.max_history
        return {k: np.asarray(v[-keep:], dtype=float) for k, v in self._rows.items()}

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


@dataclass(frozen=True)
class WindowedNoiseScale:
    """``B_simple`` from the per-step estimates in a window of steps around one point of training.

    Attributes:
        estimate: ``Σ tr Σ_t / Σ |G|^2_t`` over the window (a ratio of sums, never an EMA).
        stderr: delete-one-interval jackknife standard error (nan with fewer than 2 intervals).
        n_estimates: per-step estimates in the window.
        step_low, step_high: the window's first and last logged step.
    """

    estimate: float
    stderr: float
    n_estimates: int
    step_low: float
    step_high: float


def windowed_b_simple(steps: np.ndarray, g2_sums: np.ndarray, trace_sums: np.ndarray, counts: np.ndarray,
                      at_step: float, factor: float = 1.5, min_estimates: int = 20) -> WindowedNoiseScale:
    """``B_simple = tr Σ / |G|^2`` (2.9) measured where training is at ``at_step`` (a matched point).

    The inputs are a run's log: at each logged step ``S_k``, the sums of the per-step A.2 estimates
    of ``|G|^2`` and ``tr Σ`` over the interval ``(S_{k−1}, S_k]`` and how many steps they hold.
    The window is the logged intervals whose end lies in ``[at_step / f, at_step · f]``; ``f``
    starts at ``factor`` and grows by ``factor`` until the window holds ``min_estimates`` per-step
    estimates (or the whole log). A window symmetric in log-steps suits training that moves on a
    log scale of steps, and unlike the EMA it does not lag: it is centred on ``at_step``.

    Args:
        steps: logged steps ``S_k`` (increasing).
        g2_sums: ``Σ |G|^2_t`` over each interval.
        trace_sums: ``Σ tr Σ_t`` over each interval.
        counts: per-step estimates in each interval (0 where none).
        at_step: the matched point, e.g. the step at which a goal is reached (> 0).
        factor: half-width of the window as a factor on ``at_step`` (> 1).
        min_estimates: fewest per-step estimates the window must hold.

    Returns:
        A :class:`WindowedNoiseScale`; ``estimate`` is nan when the window's ``|G|^2`` sum is ≤ 0.

    Raises:
        ValueError: arrays of different lengths, ``at_step ≤ 0``, ``factor ≤ 1`` or no estimates at all.
    """
    s, g2, tr, n = (np.asarray(a, dtype=float).ravel() for a in (steps, g2_sums, trace_sums, counts))
    if not (s.size == g2.size == tr.size == n.size):
        raise ValueError(f"steps, g2_sums, trace_sums and counts differ in length: {s.size}, {g2.size}, {tr.size}, "
                         f"{n.size}")
    if not (at_step > 0 and factor > 1):
        raise ValueError(f"need at_step > 0 and factor > 1, got at_step={at_step}, factor={factor}")
    ok = (n > 0) & np.isfinite(g2) & np.isfinite(tr) & np.isfinite(s)
    s, g2, tr, n = s[ok], g2[ok], tr[ok], n[ok]
    if not n.size:
        raise ValueError("the log holds no per-step noise estimates")
    f = factor
    while True:
        inside = (s >= at_step / f) & (s <= at_step * f)
        if n[inside].sum() >= min_estimates or inside.all():
            break
        f *= factor
    g2, tr, s_in = g2[inside], tr[inside], s[inside]
    if not s_in.size:  # at_step beyond the log on a coarse grid: the nearest interval
        nearest = int(np.argmin(np.abs(np.log(s) - np.log(at_step))))
        g2, tr, s_in, inside = g2[[nearest]], tr[[nearest]], s[[nearest]], np.arange(s.size) == nearest
    estimate = float(tr.sum() / g2.sum()) if g2.sum() > 0 else math.nan
    stderr = ratio_of_means_jackknife(tr, g2, n_blocks=len(tr)).stderr if len(tr) >= 2 else math.nan
    return WindowedNoiseScale(estimate, float(stderr), int(n[inside].sum()), float(s_in.min()), float(s_in.max()))
