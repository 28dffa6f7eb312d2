"""The local critical batch size, measured by branching from checkpoints (Merrill et al. 2025).

The paper fits S(B) = S_min (1 + B_crit/B) (eq. 2.11) to whole training runs, one sweep of batch sizes
and learning rates per goal, and reads B_crit = E_min/S_min (2.12). Merrill et al. ("Critical Batch Size
Revisited", arXiv:2505.23971) measure a *local* critical batch size instead: from a checkpoint of one
run, continuations at a ladder of batch sizes, each with its own learning rate, run until the loss has
fallen by a small Δ; their local CBS is the largest batch size whose continuation needs at most
``(1 + τ)`` times the examples of the smallest batch size's.

Both readings of the same continuations are computed here:

* :func:`tolerance_cbs`, the tolerance rule, interpolated in log B between the ladder's batch sizes;
* the (2.11) fit to the continuations' steps (:func:`gns_utils.critical_batch.fit_tradeoff`): the local
  B_crit.

Under (2.11) they are tied. With E(B) = E_min (1 + B/B_crit),
``E(B)/E(B_0) = (1 + B/B_crit)/(1 + B_0/B_crit) ≤ 1 + τ  ⇔  B ≤ τ·B_crit + (1 + τ)·B_0``
(:func:`tolerance_cbs_from_b_crit`): the tolerance rule reads τ·B_crit plus a term set by the smallest
batch size of the ladder, not B_crit itself. A local CBS compared with B_simple has to carry that factor.

**How a continuation's steps are read.** A continuation is short, and over a small Δ the loss of one
run fluctuates by as much as Δ at small B: a single run reaches the target early by a fluctuation (the
first passage of a noisy curve), so steps read run by run, even averaged in log over many runs, are
biased low at small B and B_crit comes out low. The continuations of each (B, ε) are therefore averaged
first, loss against step over the replicates, and the crossing of that mean curve is read
(:func:`mean_curve_steps`): it estimates the crossing of the *expected* loss, which is what (2.11)
describes. Its error bar is a bootstrap over the replicates (the whole reading, rate choice included,
repeated on resampled replicates). It leaves out the rate grid's offset and the small bias of a mean over
finitely many replicates, so it covers less often than its nominal level (`benchmarks/branching_calibration.py`
measures how often).

On noisy linear regression (the calibration task) the answer is exact: the expected loss of
constant-rate SGD started at a checkpoint's weights has a closed form
(:func:`gns_utils.theory.noisy_linear_constant_lr_b_crit` with ``u0`` the checkpoint), so the local B_crit
the branching should find is known; :func:`calibration_branching` measures it on simulated continuations
(:func:`gns_utils.experiments.synthetic.simulate_sgd_losses`, numpy, apart from the trainer) and sets the
two side by side.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from gns_utils.critical_batch import fit_tradeoff, steps_to_target
from gns_utils.experiments.synthetic import simulate_sgd_losses
from gns_utils.experiments.train import eval_schedule
from gns_utils.theory import noisy_linear_constant_lr_b_crit, noisy_linear_noise_scales, noisy_linear_stable_lr

__all__ = ["best_rate_steps", "calibration_branching", "calibration_checkpoints", "mean_curve_steps",
           "read_local_b_crit", "tolerance_cbs", "tolerance_cbs_from_b_crit"]


def tolerance_cbs(batch_sizes: Any, examples: Any, tolerance: float) -> float:
    """Merrill et al.'s local critical batch size: the largest B whose examples to the target stay within
    ``(1 + tolerance)`` of the smallest batch size's.

    ``E(B)/E(B_0)`` is interpolated linearly in log B between neighbouring batch sizes, so the answer is not
    tied to the ladder's points; the first crossing of ``1 + tolerance`` counts.

    Args:
        batch_sizes: the ladder, ascending (B_0 first).
        examples: E(B) = B·S(B) to the target at each batch size (NaN / inf: not reached).
        tolerance: τ > 0.

    Returns:
        The local CBS; the largest batch size when no crossing occurs (a lower bound), NaN when B_0 did not
        reach the target.

    Raises:
        ValueError: ``tolerance <= 0``, or fewer than two batch sizes, or batch sizes not increasing.
    """
    b = np.asarray(batch_sizes, float)
    e = np.asarray(examples, float)
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance}")
    if b.size < 2 or np.any(np.diff(b) <= 0):
        raise ValueError("batch_sizes must hold at least two increasing values")
    if not np.isfinite(e[0]) or e[0] <= 0:
        return float("nan")
    ratio = np.where(np.isfinite(e), e / e[0], np.inf)
    limit = 1.0 + tolerance
    for k in range(1, b.size):
        if ratio[k] > limit:
            if not np.isfinite(ratio[k]):
                return float(b[k - 1])
            f = (limit - ratio[k - 1]) / (ratio[k] - ratio[k - 1])
            return float(np.exp(np.log(b[k - 1]) + f * (np.log(b[k]) - np.log(b[k - 1]))))
    return float(b[-1])


def tolerance_cbs_from_b_crit(b_crit: float, smallest_batch: float, tolerance: float) -> float:
    """The tolerance rule's answer when S(B) follows (2.11) exactly: ``τ·B_crit + (1 + τ)·B_0``."""
    return float(tolerance * b_crit + (1.0 + tolerance) * smallest_batch)


def mean_curve_steps(schedule: Any, losses: Any, target: float) -> np.ndarray:
    """Steps to ``target`` of the replicate-averaged loss curve of each rate.

    Args:
        schedule: the logged steps, ``[T]``.
        losses: ``[replicates, rates, T]`` (``inf`` once a replicate diverged; NaN after the continuations of a
            rate stopped, every replicate at the same point).
        target: the loss to reach.

    Returns:
        ``[rates]``: the crossing of the mean curve read by the centred local-linear smoothing
        (:func:`gns_utils.critical_batch.steps_to_target`, ``method="local"``); NaN where the mean never reaches
        the target within the logged steps, or where any replicate diverged (the expected loss is then unbounded).
    """
    loss = np.asarray(losses, float)
    out = np.full(loss.shape[1], np.nan)
    for k in range(loss.shape[1]):
        if np.isinf(loss[:, k]).any():
            continue
        out[k] = steps_to_target(schedule, loss[:, k].mean(axis=0), [target], direction="below", method="local")[0]
    return out


def best_rate_steps(rates: Any, steps: Any) -> float:
    """Steps of the best constant rate, between the rates of a grid: the minimum of the parabola in
    ``(log ε, log S)`` through the fastest rate and its two neighbours, where both reached the target and the
    parabola opens upwards; else the fastest rate's steps (NaN when no rate reached it).

    A grid's fastest rate misses the optimum by up to half a spacing and so overstates S; the parabola's
    minimum does not (to second order in the spacing). It needs every rate read to the end, as
    continuations from a checkpoint are (a sweep's pruned rates are not).
    """
    x = np.log(np.asarray(rates, float))
    y = np.log(np.asarray(steps, float))
    if not np.isfinite(y).any():
        return float("nan")
    k = int(np.nanargmin(y))
    if 0 < k < len(y) - 1 and np.isfinite(y[k - 1]) and np.isfinite(y[k + 1]):
        a, b, c = np.polyfit(x[k - 1:k + 2], y[k - 1:k + 2], 2)
        if a > 0:
            return float(np.exp(min(c - b * b / (4 * a), y[k])))
    return float(np.exp(y[k]))


def calibration_checkpoints(eigenvalues: Any, u0: Any, noise_var: float, batch_size: int, lr: float, losses: Any,
                            rng: np.random.Generator, max_steps: int = 100_000) -> list[tuple[float, np.ndarray]]:
    """Checkpoints of one SGD run on noisy linear regression: its weights ``u = w − w*`` at the first step where
    its population loss is at or below each level of ``losses`` (as a real run's checkpoints at its goals).

    Returns:
        ``(loss at the checkpoint, u)`` per level, in the order of ``losses`` (descending).

    Raises:
        RuntimeError: the run did not reach a level within ``max_steps``.
    """
    lam = np.asarray(eigenvalues, float)
    sq = np.sqrt(lam)
    u = np.asarray(u0, float).copy()
    sigma = float(np.sqrt(noise_var))
    out = []
    levels = list(np.asarray(losses, float))
    for _ in range(max_steps + 1):
        loss = 0.5 * float(u @ (lam * u)) + 0.5 * noise_var
        while levels and loss <= levels[0]:
            out.append((loss, u.copy()))
            levels.pop(0)
        if not levels:
            return out
        x = rng.standard_normal((batch_size, lam.size)) * sq
        residual = x @ u - sigma * rng.standard_normal(batch_size)
        u = u - lr * (x.T @ residual) / batch_size
    raise RuntimeError(f"the run did not reach the loss {levels[0]} in {max_steps} steps")


def _fit(batch_sizes: np.ndarray, steps: np.ndarray) -> float:
    ok = np.isfinite(steps)
    if ok.sum() < 3:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fit = fit_tradeoff(batch_sizes[ok], steps[ok])
    return float(fit.b_crit) if fit.bound == "none" else float("nan")


def calibration_branching(eigenvalues: Any, u0: Any, noise_var: float, checkpoint_losses: Any, fraction: float,
                          batch_sizes: Any, replicates: int, rng: np.random.Generator, tolerance: float = 0.2,
                          reference_batch: int = 32, reference_lr: float | None = None, spacing: float = 2 ** 0.25,
                          n_rates: int = 5, evals_per_decade: int = 30, n_boot: int = 200,
                          confidence: float = 0.95) -> pd.DataFrame:
    """The local critical batch size of noisy linear regression at several checkpoints: exact and measured.

    A reference run (batch ``reference_batch``, rate ``reference_lr``, default half the rate that is stable
    at that batch size) is checkpointed where its loss first reaches each of ``checkpoint_losses``
    (:func:`calibration_checkpoints`). From each checkpoint ``u_c`` (loss ``L_c``) the target is
    ``L_c − Δ`` with ``Δ = fraction × (L_c − σ²/2)``, a set share of the reducible loss. At every batch size
    of the ladder, ``n_rates`` rates ``spacing`` apart around the exact best rate (at a random offset of up to
    half a spacing; unstable rates dropped) each run ``replicates`` continuations; S(B) is read from the
    rates' mean-curve crossings (:func:`mean_curve_steps`) between the grid's rates (:func:`best_rate_steps`),
    and (2.11) is fitted to it. The interval
    is the bootstrap percentile interval over resampled replicates (``n_boot`` resamples).

    The exact answer at the same checkpoint: the (2.11) fit to the tuned steps of the expected loss from
    ``u_c`` (:func:`gns_utils.theory.noisy_linear_constant_lr_b_crit`), and its tolerance CBS.

    Returns:
        One row per checkpoint: ``checkpoint_loss, target, b_crit_exact, b_crit`` (measured),
        ``b_crit_stderr`` (bootstrap standard deviation), ``ci_low, ci_high, covered`` (the interval holds the
        exact value), ``s_min`` (measured, steps), ``tolerance_cbs_exact, tolerance_cbs`` (measured) and
        ``tolerance_cbs_from_fit`` (:func:`tolerance_cbs_from_b_crit` of the measured B_crit), ``e_min``, and the
        exact ``b_simple`` and ``b_noise`` (2.8, 2.9) at the checkpoint (:func:`gns_utils.theory.noisy_linear_noise_scales`).

    Raises:
        ValueError: ``fraction`` outside (0, 1), fewer than 3 batch sizes or fewer than 2 replicates.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    b = np.asarray(batch_sizes, float)
    if b.size < 3 or replicates < 2:
        raise ValueError("calibration_branching needs at least 3 batch sizes and 2 replicates")
    lam = np.asarray(eigenvalues, float)
    lr = reference_lr if reference_lr is not None else 0.5 * noisy_linear_stable_lr(lam, reference_batch)
    floor = 0.5 * float(noise_var)
    rows = []
    for loss_c, u_c in calibration_checkpoints(lam, u0, noise_var, reference_batch, lr, checkpoint_losses, rng):
        target = loss_c - fraction * (loss_c - floor)
        exact = noisy_linear_constant_lr_b_crit(lam, u_c, noise_var, [target], b)
        tuned = exact.tuned
        runs = []  # per batch size: (schedule, rates, losses [replicates, rates, T])
        for j, batch in enumerate(b):
            rates = tuned.lrs[0, j] * spacing ** (np.arange(n_rates) - (n_rates - 1) / 2 + rng.uniform(-0.5, 0.5))
            rates = rates[rates < tuned.stable_lrs[j]]
            schedule = eval_schedule(int(max(3.0 * tuned.steps[0, j], 10)), evals_per_decade)
            runs.append((schedule, rates, simulate_sgd_losses(lam, u_c, noise_var, int(batch), rates, replicates,
                                                              schedule, rng)))

        read = read_local_b_crit(b, runs, target, replicates, rng, tolerance, n_boot, confidence)
        b_exact = float(exact.b_crit[0])
        scales = noisy_linear_noise_scales(lam, u_c, noise_var)
        rows.append({
            "checkpoint_loss": loss_c, "target": target, "b_crit_exact": b_exact,
            **{k: v for k, v in read.items() if k != "steps"},
            "covered": bool(read["ci_low"] <= b_exact <= read["ci_high"]),
            "tolerance_cbs_exact": tolerance_cbs(b, b * tuned.steps[0], tolerance),
            "b_simple": float(scales.b_simple), "b_noise": float(scales.b_noise),
        })
    return pd.DataFrame(rows)


def read_local_b_crit(batch_sizes: Any, runs: list[tuple[Any, Any, Any]], target: float, replicates: int,
                      rng: np.random.Generator, tolerance: float = 0.2, n_boot: int = 200,
                      confidence: float = 0.95) -> dict[str, Any]:
    """The local critical batch size from one checkpoint's continuations.

    Args:
        batch_sizes: the ladder, ascending.
        runs: per batch size ``(schedule [T], rates [R], losses [replicates, R, T])``.
        target: the loss the continuations must reach.
        replicates: continuations per (B, ε).
        rng: draws the bootstrap resamples.
        tolerance: τ of the tolerance rule.
        n_boot: bootstrap resamples (replicates drawn with replacement at every batch size, the whole reading
            repeated on each).
        confidence: of the percentile interval.

    Returns:
        ``b_crit`` (the (2.11) fit to S(B), NaN when it is only a bound), ``b_crit_stderr`` (bootstrap standard
        deviation), ``ci_low, ci_high``, ``s_min`` (fewest steps), ``e_min`` (fewest examples), ``steps``
        (S(B), NaN where the target was not reached), ``n_rate_edge`` (batch sizes whose fastest rate is at an
        end of a grid of several: S(B) there is an upper bound), ``tolerance_cbs`` (:func:`tolerance_cbs` of E(B)) and
        ``tolerance_cbs_from_fit`` (:func:`tolerance_cbs_from_b_crit` of the fitted B_crit).
    """
    b = np.asarray(batch_sizes, float)

    edges = 0

    def read(pick: np.ndarray | None) -> np.ndarray:
        nonlocal edges
        steps = np.full(b.size, np.nan)
        for j, (schedule, rates, losses) in enumerate(runs):
            chosen = np.asarray(losses, float) if pick is None else np.asarray(losses, float)[pick]
            by_rate = mean_curve_steps(schedule, chosen, target)
            steps[j] = best_rate_steps(rates, by_rate)
            if pick is None and len(rates) > 1 and np.isfinite(by_rate).any():
                edges += int(np.nanargmin(by_rate) in (0, len(rates) - 1))
        return steps

    steps = read(None)
    b_crit = _fit(b, steps)
    boot = np.array([_fit(b, read(rng.integers(0, replicates, replicates))) for _ in range(n_boot)])
    boot = boot[np.isfinite(boot)]
    tail = 50.0 * (1.0 - confidence)
    low, high = (np.percentile(boot, [tail, 100.0 - tail]) if boot.size >= 10 else (np.nan, np.nan))
    reached = np.isfinite(steps)
    return {
        "b_crit": b_crit, "b_crit_stderr": float(np.std(boot, ddof=1)) if boot.size >= 10 else np.nan,
        "ci_low": float(low), "ci_high": float(high),
        "s_min": float(np.nanmin(steps)) if reached.any() else np.nan,
        "e_min": float(np.nanmin(b * steps)) if reached.any() else np.nan,
        "steps": steps, "n_rate_edge": edges,
        "tolerance_cbs": tolerance_cbs(b, b * steps, tolerance),
        "tolerance_cbs_from_fit": tolerance_cbs_from_b_crit(b_crit, float(b[0]), tolerance),
    }
