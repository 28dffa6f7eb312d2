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

Noisy linear regression, the calibration task where all of the above is exact
(``noisy_linear_*``): ``x ~ N(0, H)``, ``H = diag(λ)``, ``y = xᵀw* + σξ``, loss
``½(xᵀw − y)²``, ``u = w − w*``; the noise scales (2.8, 2.9) in closed form, the App. D
prediction of ``B_crit`` along the steepest-descent path, the exact expected loss of
constant-rate SGD, and the ``B_crit`` a perfectly tuned constant-rate sweep would find.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from gns_utils._lazy import LazyModule

optimize = LazyModule("scipy.optimize")  # imported on first use: ``import gns_utils`` stays light

from gns_utils.critical_batch import fit_tradeoff

__all__ = [
    "adaptive_batch_size",
    "adaptive_gain",
    "adaptive_speedup",
    "examples_for_batch",
    "fit_optimal_lr",
    "lr_grid",
    "lr_grid_centre",
    "NoisyLinearConstantLrBCrit",
    "NoisyLinearPrediction",
    "NoisyLinearScales",
    "NoisyLinearTuned",
    "noisy_linear_b_crit_prediction",
    "noisy_linear_constant_lr_b_crit",
    "noisy_linear_expected_loss",
    "noisy_linear_noise_scales",
    "noisy_linear_stable_lr",
    "noisy_linear_stationary_loss",
    "noisy_linear_steps_to_goal",
    "noisy_linear_tuned_steps",
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
        r: np.ndarray = theta[0] - np.logaddexp(0.0, theta[1] - log_b) - log_lr
        return r

    best = None
    for log_bn in np.linspace(log_b.min() - 1.0, log_b.max() + 1.0, 5):
        x0 = np.array([np.mean(log_lr + np.logaddexp(0.0, log_bn - log_b)), log_bn])
        res = optimize.least_squares(residuals, x0, bounds=([-np.inf, log_b.min() - 20], [np.inf, log_b.max() + 20]))
        if best is None or res.cost < best.cost:
            best = res
    if best is None:  # pragma: no cover - the loop above runs 5 times
        raise RuntimeError("no least-squares fit of eq. 2.6 was run")
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
    grid: np.ndarray = centre[..., None] * factors
    return grid


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


# --------------------------------------------------------------------------- noisy linear regression
# Noisy linear regression (the calibration task)
#
# Data ``x ~ N(0, H)`` with ``H = diag(λ)``, targets ``y = xᵀw* + σξ`` (``ξ ~ N(0, 1)``),
# per-example loss ``½(xᵀw − y)²``. With ``u = w − w*``:
#
# * ``L = ½ uᵀHu + σ²/2``; the floor ``σ²/2`` is reached at ``u = 0``;
# * per-example gradient ``g = x(xᵀu − σξ)``, ``G = Hu``, Hessian ``H``;
# * ``Σ = Huuᵀ H + (uᵀHu + σ²) H`` (Isserlis: ``E[xxᵀ A xxᵀ] = 2HAH + tr(AH) H``),
#
# so every quantity of section 2 is a closed form of ``(λ, u, σ²)``.


@dataclass(frozen=True)
class NoisyLinearScales:
    """Exact noise scales of noisy linear regression at one point ``u = w − w*``.

    Attributes:
        loss: ``L = ½ uᵀHu + σ²/2``.
        g2: ``|G|² = |Hu|²``.
        trace_sigma: ``tr Σ = |Hu|² + (uᵀHu + σ²) tr H``.
        trace_h_sigma: ``tr(HΣ) = uᵀH³u + (uᵀHu + σ²) tr H²``.
        g_h_g: ``GᵀHG = uᵀH³u``.
        b_simple: ``tr Σ / |G|²`` (eq. 2.9).
        b_noise: ``tr(HΣ) / (GᵀHG)`` (eq. 2.8).
    """

    loss: float
    g2: float
    trace_sigma: float
    trace_h_sigma: float
    g_h_g: float
    b_simple: float
    b_noise: float


def _spectrum(eigenvalues: ArrayLike) -> np.ndarray:
    lam = np.asarray(eigenvalues, dtype=float).ravel()
    if lam.size == 0 or not np.all(np.isfinite(lam)) or np.any(lam <= 0):
        raise ValueError("eigenvalues must be a non-empty array of positive finite numbers")
    return lam


def _vector(name: str, value: ArrayLike, size: int) -> np.ndarray:
    vec = np.asarray(value, dtype=float).ravel()
    if vec.size != size or not np.all(np.isfinite(vec)):
        raise ValueError(f"{name} must hold {size} finite numbers (one per eigenvalue), got shape {np.shape(value)}")
    return vec


def _noise_variance(noise_var: float) -> float:
    if not (np.isfinite(noise_var) and noise_var >= 0):
        raise ValueError(f"noise_var must be a finite number >= 0, got {noise_var!r}")
    return float(noise_var)


def noisy_linear_noise_scales(eigenvalues: ArrayLike, u: ArrayLike, noise_var: float) -> NoisyLinearScales:
    """``|G|²``, ``tr Σ``, ``tr(HΣ)``, ``GᵀHG``, B_simple (2.9) and B_noise (2.8), exactly.

    With ``Σ = Huuᵀ H + (uᵀHu + σ²) H`` both noise scales are ``1 +`` a ratio:
    ``B_simple = 1 + (uᵀHu + σ²) tr H / |Hu|²`` and
    ``B_noise = 1 + (uᵀHu + σ²) tr H² / uᵀH³u``. For ``H = λI`` both equal
    ``1 + d + dσ²/(λ|u|²)``.

    Args:
        eigenvalues: ``λ``, the diagonal of ``H`` (``d`` positive numbers).
        u: ``w − w*`` (``d`` numbers; not all zero).
        noise_var: ``σ²`` (≥ 0).

    Returns:
        A :class:`NoisyLinearScales` (python floats).

    Raises:
        ValueError: bad shapes or values, or ``u = 0`` (``G = 0``: the scales are infinite).
    """
    lam = _spectrum(eigenvalues)
    u = _vector("u", u, lam.size)
    var = _noise_variance(noise_var)
    hu = lam * u
    u_h_u = float(u @ hu)
    g2 = float(hu @ hu)
    g_h_g = float(hu @ (lam * hu))
    if g2 == 0.0:
        raise ValueError("u = 0 gives G = 0: the noise scales are infinite there")
    trace_sigma = g2 + (u_h_u + var) * float(lam.sum())
    trace_h_sigma = g_h_g + (u_h_u + var) * float(lam @ lam)
    return NoisyLinearScales(loss=0.5 * u_h_u + 0.5 * var, g2=g2, trace_sigma=trace_sigma,
                             trace_h_sigma=trace_h_sigma, g_h_g=g_h_g, b_simple=trace_sigma / g2,
                             b_noise=trace_h_sigma / g_h_g)


def _check_goals(goals: ArrayLike, floor: float, initial: float) -> np.ndarray:
    g = np.asarray(goals, dtype=float).ravel()
    if g.size == 0 or not np.all(np.isfinite(g)):
        raise ValueError("goals must be a non-empty array of finite loss levels")
    if np.any(g <= floor):
        raise ValueError(f"goals {g[g <= floor].tolist()} are at or below the loss floor σ²/2 = {floor:.6g}, "
                         "which no finite training reaches; choose goals above it")
    if np.any(g >= initial):
        raise ValueError(f"goals {g[g >= initial].tolist()} are at or above the initial loss {initial:.6g}; "
                         "they are reached before training starts")
    return g


@dataclass(frozen=True)
class NoisyLinearPrediction:
    """The App. D prediction of ``S_min``, ``E_min`` and ``B_crit`` per goal.

    Attributes:
        goals: the loss levels, as given.
        s_min: full-batch (line-search) steps to each goal (fractional in the last step).
        e_min: ``Σ_t B_noise,t`` over those steps (the last one weighted by its fraction).
        b_crit: ``E_min / S_min`` (eq. 2.12): ``B_noise`` averaged over full-batch steps.
        loss_path: the losses ``L_0, L_1, …`` along the steepest-descent path.
        b_noise_path: ``B_noise`` at those points.
    """

    goals: np.ndarray
    s_min: np.ndarray
    e_min: np.ndarray
    b_crit: np.ndarray
    loss_path: np.ndarray
    b_noise_path: np.ndarray


def noisy_linear_b_crit_prediction(eigenvalues: ArrayLike, u0: ArrayLike, noise_var: float, goals: ArrayLike,
                                   max_steps: int = 1_000_000) -> NoisyLinearPrediction:
    """The paper's prediction of ``B_crit`` per goal along the steepest-descent path (App. D).

    Full-batch steepest descent with the optimal step ``ε_max = |G|²/(GᵀHG)`` (eq. 2.6 with
    ``B → ∞``; an exact line search on this quadratic) gives the path ``u_0, u_1, …``
    and each of its steps counts as one "minimum" step. At batch ``B`` the same step
    achieves only ``ΔL_max/(1 + B_noise,t/B)`` (eq. 2.7), so it costs ``1 + B_noise,t/B``
    steps of batch ``B``: ``S(B) = Σ_t (1 + B_noise,t/B)``, ``S_min = #steps``,
    ``E(B) = B·S(B) → E_min = Σ_t B_noise,t`` for ``B → 0`` and
    ``B_crit = E_min/S_min`` (eq. 2.12), the step average of ``B_noise``.

    Fractional last step: if the goal lies between ``L_t`` and ``L_{t+1}``, the step
    ``t → t+1`` counts with the fraction ``f = (L_t − goal)/(L_t − L_{t+1})`` of its
    loss decrease, in ``S_min`` and (times ``B_noise,t``) in ``E_min``.

    Args:
        eigenvalues: ``λ``, the diagonal of ``H``.
        u0: the starting point ``w_0 − w*``.
        noise_var: ``σ²``.
        goals: loss levels strictly between the floor ``σ²/2`` and ``L(u0)``.
        max_steps: cap on the steepest-descent steps.

    Returns:
        A :class:`NoisyLinearPrediction`.

    Raises:
        ValueError: a goal at or below the floor ``σ²/2`` or at or above the initial loss;
            a goal not reached within ``max_steps``.
    """
    lam = _spectrum(eigenvalues)
    u = _vector("u0", u0, lam.size).copy()
    var = _noise_variance(noise_var)
    floor = 0.5 * var
    losses = [0.5 * float(u @ (lam * u)) + floor]
    g = _check_goals(goals, floor, losses[0])
    b_noise: list[float] = []
    target = float(g.min())
    trace_h2 = float(lam @ lam)
    while losses[-1] > target:
        if len(b_noise) >= max_steps:
            raise ValueError(f"goal {target:.6g} not reached within max_steps={max_steps} steepest-descent steps")
        grad = lam * u  # G = Hu
        g2 = float(grad @ grad)
        g_h_g = float(grad @ (lam * grad))
        if g_h_g == 0.0:  # u underflowed to 0 above the goal: cannot happen for goals above the floor
            raise ValueError(f"goal {target:.6g} not reached: the gradient vanished at loss {losses[-1]:.6g}")
        b_noise.append(1.0 + (2.0 * (losses[-1] - floor) + var) * trace_h2 / g_h_g)  # eq. 2.8
        u = u - (g2 / g_h_g) * grad  # ε_max, eq. 2.6 (B → ∞)
        losses.append(0.5 * float(u @ (lam * u)) + floor)
    path = np.asarray(losses)
    bn = np.asarray(b_noise)
    cum_e = np.concatenate([[0.0], np.cumsum(bn)])
    s_min, e_min = np.empty(g.size), np.empty(g.size)
    for k, goal in enumerate(g):
        t = int(np.argmax(path <= goal)) - 1  # the step t → t+1 crosses the goal
        frac = (path[t] - goal) / (path[t] - path[t + 1])
        s_min[k] = t + frac
        e_min[k] = cum_e[t] + frac * bn[t]
    return NoisyLinearPrediction(goals=g, s_min=s_min, e_min=e_min, b_crit=e_min / s_min, loss_path=path,
                                 b_noise_path=bn)


def _sgd_coefficients(lam: np.ndarray, batch_size: float, lr: float) -> tuple[np.ndarray, float]:
    """``D_i = (1 − ελ_i)² + (ε²/B)λ_i²`` and ``κ = ε²/B`` of the second-moment recursion."""
    if not (lr > 0 and np.isfinite(lr)):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if not batch_size > 0:
        raise ValueError(f"batch_size must be positive (np.inf for full batch), got {batch_size!r}")
    kappa = lr * lr / float(batch_size)
    return (1.0 - lr * lam) ** 2 + kappa * lam**2, kappa


def noisy_linear_expected_loss(eigenvalues: ArrayLike, u0: ArrayLike, noise_var: float, batch_size: float,
                               lr: float, steps: int) -> np.ndarray:
    """Exact ``E[L_t]``, ``t = 0 … steps``, for constant-rate minibatch SGD on fresh samples.

    One step is ``u' = u − ε ĝ`` with ``ĝ`` the mean of ``B`` independent per-example
    gradients, so ``E[u'u'ᵀ | u] = (I − εH)uuᵀ(I − εH) + (ε²/B) Σ(u)``. With ``H``
    diagonal the diagonal ``m_i = E[u_i²]`` closes on itself::

        m_i' = (1 − ελ_i)² m_i + (ε²/B)(λ_i² m_i + (Σ_j λ_j m_j + σ²) λ_i),
        E[L] = ½ Σ_i λ_i m_i + σ²/2.

    Args:
        eigenvalues: ``λ``, the diagonal of ``H``.
        u0: the (deterministic) start ``w_0 − w*``.
        noise_var: ``σ²``.
        batch_size: ``B`` (``np.inf``: full-batch gradient descent).
        lr: the constant learning rate ``ε``.
        steps: number of steps.

    Returns:
        ``E[L_t]`` for ``t = 0 … steps`` (length ``steps + 1``).
    """
    lam = _spectrum(eigenvalues)
    m = _vector("u0", u0, lam.size) ** 2
    var = _noise_variance(noise_var)
    diag, kappa = _sgd_coefficients(lam, batch_size, lr)
    out = np.empty(int(steps) + 1)
    out[0] = 0.5 * float(lam @ m) + 0.5 * var
    for t in range(1, int(steps) + 1):
        m = diag * m + (kappa * (float(lam @ m) + var)) * lam
        out[t] = 0.5 * float(lam @ m) + 0.5 * var
    return out


def _sgd_floor_product(lam: np.ndarray, batch_size: float, lr: float) -> float:
    """``κ·λᵀ(I − D)⁻¹λ``: the recursion is stable iff ``I − D > 0`` and this is ``< 1``;
    the stationary loss is then ``σ²/(2(1 − κ·λᵀ(I − D)⁻¹λ))``. ``inf`` when ``I − D ≤ 0``."""
    diag, kappa = _sgd_coefficients(lam, batch_size, lr)
    p = 1.0 - diag
    if np.any(p <= 0):
        return float("inf")
    return kappa * float(lam @ (lam / p))


def noisy_linear_stable_lr(eigenvalues: ArrayLike, batch_size: float) -> float:
    """The largest constant rate at which ``E[L_t]`` of SGD at batch ``B`` stays bounded.

    The recursion of :func:`noisy_linear_expected_loss` is ``m' = A m + c`` with
    ``A = D + κλλᵀ`` symmetric and positive semi-definite; its largest eigenvalue is convex
    in ``ε`` and equals 1 at ``ε = 0``, so the stable rates form an interval ``(0, ε_s)``.
    Inside it ``I − D > 0`` and ``κ λᵀ(I − D)⁻¹λ < 1``; ``ε_s`` is found by bisection.
    For ``B → ∞`` it is ``2/λ_max``.

    Args:
        eigenvalues: ``λ``.
        batch_size: ``B`` (``np.inf`` allowed).

    Returns:
        ``ε_s``.
    """
    lam = _spectrum(eigenvalues)
    lo, hi = 0.0, 2.0 / float(lam.max())  # D_max ≥ 1 at ε = 2/λ_max
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if _sgd_floor_product(lam, batch_size, mid) < 1.0:
            lo = mid
        else:
            hi = mid
    return lo


def noisy_linear_stationary_loss(eigenvalues: ArrayLike, noise_var: float, batch_size: float, lr: float) -> float:
    """``lim_t E[L_t]`` of constant-rate SGD: ``σ²/(2(1 − κλᵀ(I − D)⁻¹λ))`` (``inf`` if unstable).

    Setting ``m' = m`` in the recursion of :func:`noisy_linear_expected_loss` gives
    ``m = κ(λᵀm + σ²)(I − D)⁻¹λ``; multiplying by ``λᵀ`` and solving for ``λᵀm`` gives the
    formula. It is the floor ``σ²/2`` raised by the rate's "temperature" ``ε/B``.
    """
    lam = _spectrum(eigenvalues)
    var = _noise_variance(noise_var)
    q = _sgd_floor_product(lam, batch_size, lr)
    return 0.5 * var / (1.0 - q) if q < 1.0 else float("inf")


def _first_crossing(powers: list[np.ndarray], weights: np.ndarray, delta0: np.ndarray, level: float,
                    max_doublings: int = 64) -> float:
    """First ``t`` at which ``e_t = wᵀ Aᵗ δ_0`` falls to ``level`` (``e_0 > level ≥ 0``), interpolated.

    Doubling (``A^(2^k)`` by repeated squaring) finds the first power of two ``T`` with
    ``e_T ≤ level``; binary search on ``(T/2, T]`` then finds the integer step
    ``t + 1`` with ``e_t > level ≥ e_{t+1}`` (exact when ``e`` decreases there), and the
    crossing is placed linearly within that step: ``t + (e_t − level)/(e_t − e_{t+1})``.
    ``powers`` holds ``A, A², A⁴, …`` and is extended in place (shared between goals).
    ``inf`` if not reached within ``2^max_doublings`` steps.
    """
    k_top = 0
    while weights @ (powers[k_top] @ delta0) > level:
        k_top += 1
        if k_top > max_doublings:
            return float("inf")
        if k_top == len(powers):
            powers.append(powers[-1] @ powers[-1])
    # Now e ≤ level at t = 2^k_top, and e > level at 2^(k_top − 1) (or at 0 when k_top = 0).
    if k_top == 0:
        t_lo, v_lo = 0, delta0
    else:
        t_lo, v_lo = 2 ** (k_top - 1), powers[k_top - 1] @ delta0
        for k in range(k_top - 2, -1, -1):
            v = powers[k] @ v_lo
            if weights @ v > level:
                t_lo, v_lo = t_lo + 2**k, v
    e_lo, e_hi = float(weights @ v_lo), float(weights @ (powers[0] @ v_lo))
    return t_lo + (e_lo - level) / (e_lo - e_hi)


def noisy_linear_steps_to_goal(eigenvalues: ArrayLike, u0: ArrayLike, noise_var: float, batch_size: float,
                               lr: float, goals: ArrayLike) -> np.ndarray:
    """Steps for the expected loss of constant-rate SGD to reach each goal.

    The excess ``δ_t = m_t − m_∞`` of the second moments over their stationary values
    (see :func:`noisy_linear_expected_loss`, :func:`noisy_linear_stationary_loss`)
    obeys ``δ_{t+1} = A δ_t`` with ``A = D + κλλᵀ``, and ``E[L_t] = L_∞ + ½ λᵀδ_t``.
    The result is the first integer step ``t + 1`` with ``E[L_{t+1}] ≤ goal``, less the
    fraction of that step's loss decrease not needed:
    ``t + (E[L_t] − goal)/(E[L_t] − E[L_{t+1}])`` (linear within the step, continuous
    in ``ε``). Large ``t`` cost ``O(d³ log t)`` by repeated squaring of ``A``.

    Args:
        eigenvalues: ``λ``.
        u0: the start ``w_0 − w*``.
        noise_var: ``σ²``.
        batch_size: ``B`` (``np.inf``: full batch).
        lr: the constant rate ``ε``.
        goals: loss levels.

    Returns:
        Steps per goal: 0 for a goal at or above the initial loss, ``inf`` for one at or
        below the rate's stationary loss (or any goal when ``ε`` is unstable).
    """
    lam = _spectrum(eigenvalues)
    m0 = _vector("u0", u0, lam.size) ** 2
    var = _noise_variance(noise_var)
    g = np.asarray(goals, dtype=float).ravel()
    out = np.full(g.size, np.inf)
    initial = 0.5 * float(lam @ m0) + 0.5 * var
    out[g >= initial] = 0.0
    if _sgd_floor_product(lam, batch_size, lr) >= 1.0:
        return out
    diag, kappa = _sgd_coefficients(lam, batch_size, lr)
    scaled = kappa * lam / (1.0 - diag)
    t_inf = var * float(lam @ scaled) / (1.0 - float(lam @ scaled))  # λᵀm_∞, see noisy_linear_stationary_loss
    l_inf = 0.5 * (t_inf + var)
    powers = [np.diag(diag) + kappa * np.outer(lam, lam)]  # A
    delta0 = m0 - scaled * (t_inf + var)
    for k, goal in enumerate(g):
        if l_inf < goal < initial:
            out[k] = _first_crossing(powers, 0.5 * lam, delta0, goal - l_inf)
    return out

def _reachable_lr(lam: np.ndarray, noise_var: float, batch_size: float, goal: float, stable: float) -> float:
    """The largest rate whose stationary loss stays below ``goal`` (the floor product
    ``κλᵀ(I − D)⁻¹λ = Σ ελ_i / (B(2 − ελ_i(1 + 1/B)))`` grows with ``ε``)."""
    if noise_var == 0.0:
        return stable
    limit = 1.0 - 0.5 * noise_var / goal
    lo, hi = 0.0, stable
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if _sgd_floor_product(lam, batch_size, mid) < limit:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class NoisyLinearTuned:
    """Steps to each goal of the expected loss under the best constant rate, per batch size.

    Attributes:
        goals: the loss levels (rows).
        batch_sizes: ``B`` (columns).
        steps: ``[goal, B]`` fewest (fractional) steps over constant rates.
        lrs: ``[goal, B]`` the rate that achieves them.
        stable_lrs: ``[B]`` the stability edge ``ε_s(B)``.
    """

    goals: np.ndarray
    batch_sizes: np.ndarray
    steps: np.ndarray
    lrs: np.ndarray
    stable_lrs: np.ndarray


def noisy_linear_tuned_steps(eigenvalues: ArrayLike, u0: ArrayLike, noise_var: float, batch_sizes: ArrayLike,
                             goals: ArrayLike, n_grid: int = 40, lr_range: float = 1e5) -> NoisyLinearTuned:
    """Steps-to-goal minimised over the constant learning rate, per batch size and goal.

    What a learning-rate sweep at every batch size would find with perfectly tuned
    constant rates and no run-to-run fluctuations: for each ``B`` the steps of
    :func:`noisy_linear_steps_to_goal` are evaluated on ``n_grid`` rates log-spaced over
    ``[ε_s/lr_range, ε_s)`` (``ε_s`` from :func:`noisy_linear_stable_lr`), and around the
    best of them ``scipy.optimize.minimize_scalar`` (bounded, on ``log ε``) refines the
    optimum, bounded above by the largest rate whose stationary loss is below the goal.

    Args:
        eigenvalues: ``λ``.
        u0: the start ``w_0 − w*``.
        noise_var: ``σ²``.
        batch_sizes: ``B`` values (``np.inf`` allowed).
        goals: loss levels strictly between ``σ²/2`` and the initial loss.
        n_grid: rates of the coarse grid.
        lr_range: ratio between the top and the bottom of the coarse grid.

    Returns:
        A :class:`NoisyLinearTuned`; a goal no rate in range reaches has ``inf`` steps
        and a NaN rate.
    """
    lam = _spectrum(eigenvalues)
    u = _vector("u0", u0, lam.size)
    var = _noise_variance(noise_var)
    g = _check_goals(goals, 0.5 * var, 0.5 * float(u @ (lam * u)) + 0.5 * var)
    b = np.asarray(batch_sizes, dtype=float).ravel()
    steps = np.full((g.size, b.size), np.inf)
    lrs = np.full((g.size, b.size), np.nan)
    stable = np.array([noisy_linear_stable_lr(lam, bb) for bb in b])
    for j, bb in enumerate(b):
        grid = stable[j] * np.logspace(-np.log10(lr_range), 0.0, int(n_grid))[:-1]
        table = np.array([noisy_linear_steps_to_goal(lam, u, var, bb, lr, g) for lr in grid])  # [lr, goal]
        for k, goal in enumerate(g):
            column = table[:, k]
            if not np.any(np.isfinite(column)):
                continue
            i = int(np.argmin(column))
            top = _reachable_lr(lam, var, bb, goal, stable[j])
            lo = grid[i - 1] if i > 0 else grid[0] / 2.0
            hi = min(grid[i + 1] if i + 1 < grid.size else stable[j], top)

            def log_steps(log_lr: float, goal: float = goal, bb: float = bb) -> float:
                s = noisy_linear_steps_to_goal(lam, u, var, bb, float(np.exp(log_lr)), [goal])[0]
                return float(np.log(s)) if np.isfinite(s) and s > 0 else float("inf")

            res = optimize.minimize_scalar(log_steps, bounds=(np.log(lo), np.log(hi)), method="bounded",
                                           options={"xatol": 1e-5})
            best_s, best_lr = (float(np.exp(res.fun)), float(np.exp(res.x))) if res.fun < np.log(column[i]) \
                else (float(column[i]), float(grid[i]))
            steps[k, j], lrs[k, j] = best_s, best_lr
    return NoisyLinearTuned(goals=g, batch_sizes=b, steps=steps, lrs=lrs, stable_lrs=stable)


@dataclass(frozen=True)
class NoisyLinearConstantLrBCrit:
    """The exact "constant-learning-rate" ``B_crit`` per goal.

    Attributes:
        goals: the loss levels.
        b_crit: ``B_crit`` of the (2.11) fit to the tuned steps over ``batch_sizes``.
        s_min: its ``S_min``.
        e_min: its ``E_min``.
        bound: the fit's flag (``"none"``, ``"lower"``, ``"upper"``; see
            :func:`gns_utils.critical_batch.fit_tradeoff`).
        tuned: the tuned steps and rates the fits used.
    """

    goals: np.ndarray
    b_crit: np.ndarray
    s_min: np.ndarray
    e_min: np.ndarray
    bound: tuple[str, ...]
    tuned: NoisyLinearTuned


def noisy_linear_constant_lr_b_crit(eigenvalues: ArrayLike, u0: ArrayLike, noise_var: float, goals: ArrayLike,
                                    batch_sizes: ArrayLike, **tuning: Any) -> NoisyLinearConstantLrBCrit:
    """``B_crit`` per goal from tuned constant-rate steps, fitted with eq. 2.11.

    The second exact reference next to :func:`noisy_linear_b_crit_prediction`: what an
    infinitely repeated batch-size × learning-rate sweep over ``batch_sizes`` would
    find (steps of the expected loss, :func:`noisy_linear_tuned_steps`), fitted per goal
    by :func:`gns_utils.critical_batch.fit_tradeoff` (log space). The constant-rate
    curve ``S(B)`` is not exactly a hyperbola, so the result depends somewhat on the
    batch sizes, as a real sweep's does.

    Args:
        eigenvalues, u0, noise_var, goals: as in :func:`noisy_linear_tuned_steps`.
        batch_sizes: the sweep's ``B`` values (at least 3, finite).
        **tuning: passed to :func:`noisy_linear_tuned_steps`.

    Returns:
        A :class:`NoisyLinearConstantLrBCrit`; goals with fewer than 3 reachable batch
        sizes get NaN and ``bound="insufficient"``.
    """
    tuned = noisy_linear_tuned_steps(eigenvalues, u0, noise_var, batch_sizes, goals, **tuning)
    n = tuned.goals.size
    b_crit, s_min, e_min = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    bounds = []
    for k in range(n):
        finite = np.isfinite(tuned.steps[k])
        if finite.sum() < 3:
            bounds.append("insufficient")
            continue
        fit = fit_tradeoff(tuned.batch_sizes[finite], tuned.steps[k, finite])
        b_crit[k], s_min[k], e_min[k] = fit.b_crit, fit.s_min, fit.e_min
        bounds.append(fit.bound)
    return NoisyLinearConstantLrBCrit(goals=tuned.goals, b_crit=b_crit, s_min=s_min, e_min=e_min,
                                      bound=tuple(bounds), tuned=tuned)
