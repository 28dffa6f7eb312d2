"""Closed-form predictions of McCandlish et al. (2018), arXiv:1812.06162.

Symbols (the paper's notation):

* ``B``         batch size; ``ε`` learning rate; ``ΔL`` loss improvement per step.
* ``G``, ``H``, ``Σ``  true gradient, Hessian, per-example gradient covariance.
* ``ε_max = |G|²/(GᵀHG)``, the optimal step with a noiseless gradient (eq. 2.6).
* ``ΔL_max = ½|G|⁴/(GᵀHG)``, the best improvement with a noiseless gradient (eq. 2.7).
* ``B_noise = tr(HΣ)/(GᵀHG)``, the noise scale (eq. 2.8); ``B_simple = tr Σ/|G|²``
  (eq. 2.9) equals it when ``H ∝ I``.
* ``S``, ``E = B·S``  steps and examples to reach a goal; ``S_min``, ``E_min`` their
  minima; ``B_crit = E_min/S_min`` (eq. 2.12).
* ``ℬ(s)``      the noise scale along training, as a function of the full-batch
  ("minimum") step count ``s`` (Appendix D).
* ``ε*``, ``B*``, ``α``  centre of the learning-rate grid search (eq. A.3).
* ``r``         the exchange rate between steps and examples in the adaptive
  schedule (eq. D.3).

Formulas:

* ``ε_opt(B) = ε_max / (1 + B_noise/B)``                             (2.6)
* ``ΔL_opt(B) = ΔL_max / (1 + B_noise/B)``                           (2.7)
* ``S(B) = S_min (1 + B_crit/B)``, ``E(B) = E_min (1 + B/B_crit)``   (2.11)
* ``ε_central(B) = ε* / (1 + B*/B)^α``                               (A.3)
* A run at fixed ``B`` advances ``ds = dS / (1 + ℬ/B)`` full-batch steps per
  ``dS`` of its own steps; averaging ``ℬ`` over training weights every ``ds``
  equally: ``B_avg = ∫ℬ ds / ∫ds``                                     (App. D)
* Adaptive schedule ``B(s) = √(r·ℬ(s))``                               (D.3)
* It traces ``(S/S_min − 1)(E/E_min − 1) = γ``, ``γ = E[√ℬ]²/E[ℬ] ≤ 1`` (D.4, D.5),
  with expectations over ``s``; its balanced point has
  ``S_tot/S_min = E_tot/E_min = 1 + √γ``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import optimize

__all__ = [
    "adaptive_batch_size",
    "adaptive_gain",
    "adaptive_speedup",
    "examples_for_batch",
    "fit_optimal_lr",
    "lr_grid",
    "lr_grid_centre",
    "optimal_improvement",
    "optimal_lr",
    "steps_for_batch",
    "training_average",
]

ArrayLike = float | Sequence[float] | np.ndarray


def _saturating(batch_size: ArrayLike, scale: float, b_noise: float) -> np.ndarray | float:
    """``scale / (1 + b_noise/B)``, the common form of (2.6) and (2.7)."""
    b = np.asarray(batch_size, dtype=float)
    out = scale / (1.0 + b_noise / b)
    return float(out) if out.ndim == 0 else out


def optimal_lr(batch_size: ArrayLike, eps_max: float, b_noise: float) -> np.ndarray | float:
    """Optimal learning rate ``ε_opt(B) = ε_max / (1 + B_noise/B)`` (eq. 2.6).

    Linear in ``B`` (``ε_max·B/B_noise``) for ``B ≪ B_noise``, flat at ``ε_max`` above.

    Args:
        batch_size: ``B`` (scalar or array).
        eps_max: ``ε_max = |G|²/(GᵀHG)``.
        b_noise: ``B_noise``.

    Returns:
        ``ε_opt`` with the shape of ``batch_size`` (a float for a scalar).
    """
    return _saturating(batch_size, eps_max, b_noise)


def optimal_improvement(batch_size: ArrayLike, delta_l_max: float, b_noise: float) -> np.ndarray | float:
    """Best loss improvement per step ``ΔL_opt(B) = ΔL_max / (1 + B_noise/B)`` (eq. 2.7).

    Args:
        batch_size: ``B``.
        delta_l_max: ``ΔL_max = ½|G|⁴/(GᵀHG)``.
        b_noise: ``B_noise``.

    Returns:
        ``ΔL_opt`` with the shape of ``batch_size``.
    """
    return _saturating(batch_size, delta_l_max, b_noise)


def fit_optimal_lr(
    batch_sizes: Sequence[float] | np.ndarray, best_lrs: Sequence[float] | np.ndarray
) -> tuple[float, float]:
    """Fit eq. 2.6 to the best learning rate per batch size (Fig. 5).

    Least squares on ``log ε`` with parameters ``(log ε_max, log B_noise)``; NaN points
    are dropped.

    Args:
        batch_sizes: ``B`` of each point.
        best_lrs: the best (tuned) learning rate at each ``B``.

    Returns:
        ``(eps_max, b_noise)``.

    Raises:
        ValueError: mismatched lengths, fewer than 3 finite points, non-positive values.
    """
    b = np.asarray(batch_sizes, dtype=float).ravel()
    lr = np.asarray(best_lrs, dtype=float).ravel()
    if b.size != lr.size:
        raise ValueError(f"batch_sizes and best_lrs have mismatched lengths {b.size} and {lr.size}")
    keep = np.isfinite(b) & np.isfinite(lr)
    b, lr = b[keep], lr[keep]
    if b.size < 3:
        raise ValueError(f"need at least 3 finite points to fit eq. 2.6, got {b.size}")
    if np.any(b <= 0) or np.any(lr <= 0):
        raise ValueError("batch_sizes and best_lrs must be positive")
    log_b, log_lr = np.log(b), np.log(lr)

    def residuals(theta: np.ndarray) -> np.ndarray:
        return theta[0] - np.logaddexp(0.0, theta[1] - log_b) - log_lr

    best = None
    for log_bn in np.linspace(log_b.min() - 1.0, log_b.max() + 1.0, 5):
        x0 = np.array([np.mean(log_lr + np.logaddexp(0.0, log_bn - log_b)), log_bn])
        res = optimize.least_squares(residuals, x0, bounds=([-np.inf, log_b.min() - 20], [np.inf, log_b.max() + 20]))
        if best is None or res.cost < best.cost:
            best = res
    return float(np.exp(best.x[0])), float(np.exp(best.x[1]))


def steps_for_batch(batch_size: ArrayLike, s_min: float, b_crit: float) -> np.ndarray | float:
    """Steps to a goal at batch ``B``: ``S(B) = S_min (1 + B_crit/B)`` (eq. 2.11).

    Args:
        batch_size: ``B``.
        s_min: ``S_min``.
        b_crit: ``B_crit``.

    Returns:
        ``S`` with the shape of ``batch_size``.
    """
    b = np.asarray(batch_size, dtype=float)
    out = s_min * (1.0 + b_crit / b)
    return float(out) if out.ndim == 0 else out


def examples_for_batch(batch_size: ArrayLike, e_min: float, b_crit: float) -> np.ndarray | float:
    """Examples to a goal at batch ``B``: ``E(B) = E_min (1 + B/B_crit)`` (eq. 2.11).

    Args:
        batch_size: ``B``.
        e_min: ``E_min``.
        b_crit: ``B_crit``.

    Returns:
        ``E`` with the shape of ``batch_size``.
    """
    b = np.asarray(batch_size, dtype=float)
    out = e_min * (1.0 + b / b_crit)
    return float(out) if out.ndim == 0 else out


def lr_grid_centre(batch_size: ArrayLike, eps_star: float, b_star: float, alpha: float = 1.0) -> np.ndarray | float:
    """Centre of the learning-rate search ``ε_central(B) = ε*/(1 + B*/B)^α`` (eq. A.3).

    Args:
        batch_size: ``B``.
        eps_star: ``ε*``, the large-batch learning rate.
        b_star: ``B*``, a guess of the noise scale.
        alpha: ``α``: 1 for SGD / momentum, 0.5–1 for Adam / RMSProp.

    Returns:
        ``ε_central`` with the shape of ``batch_size``.
    """
    b = np.asarray(batch_size, dtype=float)
    out = eps_star / (1.0 + b_star / b) ** alpha
    return float(out) if out.ndim == 0 else out


def lr_grid(
    batch_size: ArrayLike,
    eps_star: float,
    b_star: float,
    alpha: float = 1.0,
    n: int = 5,
    spacing: float = 2.0,
) -> np.ndarray:
    """``n`` learning rates log-spaced by ``spacing`` around ``ε_central(B)`` (eq. A.3).

    The rates are ``ε_central·spacing^(k − (n−1)/2)`` for ``k = 0 … n−1``: symmetric
    about the centre in log space (for even ``n`` the centre falls between the two
    middle rates).

    Args:
        batch_size: ``B`` (scalar or array).
        eps_star, b_star, alpha: see :func:`lr_grid_centre`.
        n: number of rates, ≥ 1.
        spacing: ratio between neighbouring rates, > 1.

    Returns:
        Array of shape ``np.shape(batch_size) + (n,)``, ascending along the last axis.

    Raises:
        ValueError: ``n < 1`` or ``spacing <= 1``.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not spacing > 1.0:
        raise ValueError(f"spacing must be > 1, got {spacing!r}")
    centre = np.asarray(lr_grid_centre(batch_size, eps_star, b_star, alpha), dtype=float)
    factors = float(spacing) ** (np.arange(int(n)) - (int(n) - 1) / 2.0)
    return centre[..., None] * factors


def training_average(
    steps: Sequence[float] | np.ndarray,
    noise_scale: Sequence[float] | np.ndarray,
    batch_size: float,
) -> float:
    """Noise scale averaged over training, weighting each full-batch step equally (App. D).

    A run at fixed batch ``B`` needs ``1 + ℬ/B`` of its steps per full-batch
    ("minimum") step, so ``ds = dS/(1 + ℬ/B)`` and::

        B_avg = ∫ ℬ ds / ∫ ds = ∫ ℬ/(1 + ℬ/B) dS / ∫ 1/(1 + ℬ/B) dS,

    both integrals by the trapezoid rule over the run's own step grid ``S``. This is
    Table 1's "average" noise scale; it down-weights the late, noisy part of training
    that a plain average over ``S`` would over-count.

    Args:
        steps: the run's step numbers ``S`` (any order; sorted here).
        noise_scale: ``ℬ`` at those steps (``B_simple`` or ``B_noise``). Points where
            ``ℬ`` or the step is non-finite or ``ℬ ≤ 0`` (noise of the estimator early
            in training) are dropped and the trapezoid bridges the gap.
        batch_size: the run's batch size ``B`` (> 0).

    Returns:
        ``B_avg``; the single value if only one point remains, NaN if none.

    Raises:
        ValueError: mismatched lengths or a non-positive ``batch_size``.
    """
    s = np.asarray(steps, dtype=float).ravel()
    ns = np.asarray(noise_scale, dtype=float).ravel()
    if s.size != ns.size:
        raise ValueError(f"steps and noise_scale have mismatched lengths {s.size} and {ns.size}")
    if not batch_size > 0:
        raise ValueError(f"batch_size must be positive, got {batch_size!r}")
    keep = np.isfinite(s) & np.isfinite(ns) & (ns > 0)
    s, ns = s[keep], ns[keep]
    if s.size == 0:
        return float("nan")
    if s.size == 1:
        return float(ns[0])
    order = np.argsort(s, kind="mergesort")
    s, ns = s[order], ns[order]
    weight = 1.0 / (1.0 + ns / float(batch_size))  # ds/dS
    denominator = np.trapezoid(weight, s)
    if denominator <= 0:  # all points at one step
        return float(np.average(ns, weights=weight))
    return float(np.trapezoid(ns * weight, s) / denominator)


def adaptive_batch_size(noise_scale: ArrayLike, r: float) -> np.ndarray | float:
    """Optimal adaptive batch size ``B(s) = √(r·ℬ(s))`` (eq. D.3).

    Minimising ``E_tot + r·S_tot`` over the schedule ``B(s)`` gives this rule; a larger
    exchange rate ``r`` (examples per step one is willing to spend) means bigger
    batches and fewer steps.

    Args:
        noise_scale: ``ℬ`` (scalar or array).
        r: the exchange rate ``r > 0``.

    Returns:
        ``B(s)`` with the shape of ``noise_scale``.
    """
    out = np.sqrt(float(r) * np.asarray(noise_scale, dtype=float))
    return float(out) if out.ndim == 0 else out


def adaptive_gain(
    noise_scale_history: Sequence[float] | np.ndarray,
    weights: Sequence[float] | np.ndarray | None = None,
) -> float:
    """``γ = E[√ℬ]² / E[ℬ]`` (eq. D.5), which sets the adaptive-batch tradeoff.

    With ``B(s) = √(r·ℬ(s))`` one gets ``S_tot = S_min(1 + E[√ℬ]/√r)`` and
    ``E_tot = E_min + √r·S_min·E[√ℬ]`` with ``E_min = S_min·E[ℬ]``, hence
    ``(S_tot/S_min − 1)(E_tot/E_min − 1) = γ`` (D.4): the same hyperbola as eq. 2.11
    with 1 replaced by ``γ``. By Cauchy–Schwarz ``γ ≤ 1``, with equality for a
    constant ``ℬ`` (no gain from adapting).

    The expectations are over full-batch steps ``s``. Without ``weights`` the history is
    taken to sample ``s`` uniformly; for a history logged along a fixed-batch run pass
    ``weights = ds = dS/(1 + ℬ/B)`` per point.

    Args:
        noise_scale_history: ``ℬ`` along training; non-finite or non-positive values
            are dropped (with their weights).
        weights: optional non-negative weights per point.

    Returns:
        ``γ`` in ``(0, 1]``; NaN if no valid point remains.
    """
    ns = np.asarray(noise_scale_history, dtype=float).ravel()
    w = np.ones_like(ns) if weights is None else np.asarray(weights, dtype=float).ravel()
    if w.size != ns.size:
        raise ValueError(f"weights and noise_scale_history have mismatched lengths {w.size} and {ns.size}")
    keep = np.isfinite(ns) & (ns > 0) & np.isfinite(w) & (w >= 0)
    ns, w = ns[keep], w[keep]
    if ns.size == 0 or w.sum() <= 0:
        return float("nan")
    return float(np.average(np.sqrt(ns), weights=w) ** 2 / np.average(ns, weights=w))


def adaptive_speedup(gamma: float | np.ndarray) -> float | np.ndarray:
    """``S_tot/S_min = E_tot/E_min = 1 + √γ`` for the adaptive schedule (App. D).

    This is the balanced point of the adaptive tradeoff curve (D.4) — the point where
    the step overhead equals the example overhead. It is the adaptive analogue of
    training at ``B = B_crit`` with a fixed batch, which costs ``2·S_min`` steps and
    ``2·E_min`` examples. So the returned number is an *overhead factor* (≥ 1, ≤ 2),
    not a speed-up ratio: the saving of adaptive over fixed-batch training at the
    balanced point is ``2/(1 + √γ)`` in both steps and examples (e.g. ``γ = 0.85``
    gives 1.92, a 4% saving).

    Args:
        gamma: ``γ`` from :func:`adaptive_gain`, in ``[0, 1]``.

    Returns:
        ``1 + √γ`` (same shape as ``gamma``).
    """
    g = np.asarray(gamma, dtype=float)
    out = 1.0 + np.sqrt(g)
    return float(out) if out.ndim == 0 else out
