"""Steps to a goal and the critical batch size B_crit (McCandlish et al. 2018, App. A.2).

Symbols (the paper's notation):

* ``B``       batch size (images, tokens or frames per optimizer step).
* ``S``       optimizer steps a run at batch ``B`` needs to reach a goal (a training
              loss or error level); ``E = B·S`` the examples it processes.
* ``S_min``   fewest steps that reach the goal (the ``B → ∞`` limit).
* ``E_min``   fewest examples that reach the goal (the ``B → 0`` limit).
* ``B_crit``  the critical batch size ``E_min / S_min`` (eq. 2.12).

The steps / examples tradeoff is (eq. 2.11)::

    (S/S_min − 1)(E/E_min − 1) = 1,   i.e.   S(B) = S_min (1 + B_crit/B),
                                             E(B) = E_min (1 + B/B_crit),

so at ``B = B_crit`` a run takes ``2·S_min`` steps and ``2·E_min`` examples.

Pipeline (Appendix A.2, A.3):

1. :func:`steps_to_target` reads the step at which each training curve reaches each goal:
   ``method="local"`` smooths it with a centred local-linear fit (:func:`local_linear`, no lag, for
   analysis after training), ``method="ema"`` with the paper's causal EMA (what a run can compute
   while it trains; it lags, most for short runs).
2. :func:`best_runs` keeps, per goal and batch size, the fastest run of the
   learning-rate grid (the paper's A.3) and flags grids whose best rate lies on an edge;
   :func:`expected_steps` instead averages ``log S`` over seeds at each rate first and keeps the
   rate with the fewest *expected* steps, which is what (2.11) describes.
3. :func:`fit_tradeoff` fits eq. 2.11 in log space, giving ``S_min``, ``E_min`` and
   ``B_crit`` with a standard error and confidence interval (covariance or bootstrap);
   when the batch sizes cannot constrain ``B_crit`` it returns a flagged bound.
4. :func:`fit_tradeoff_by_goal` / :func:`b_crit_by_goal` repeat the fit per goal, so
   one sees ``B_crit`` grow as the loss falls; :func:`seed_aware_b_crit` adds an error bar
   from the spread of per-seed fits.

Why the two choices of steps 1 and 2 matter (measured on noisy linear regression, where the
constant-rate ``B_crit`` is exact; ``benchmarks/estimator_bias.py``): the first crossing of one noisy
curve comes early, most for small batches near the noise floor; the causal EMA lags, most for the
few-step runs of large batches; and the fastest of several noisy runs is a minimum of noisy numbers,
biased low. Together they put the fastest-run ``B_crit`` at 0.5-0.85 of the exact one; the centred
reading with ``log S`` averaged over seeds removes most of it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from gns_utils._lazy import LazyModule

# imported on first use: ``import gns_utils`` stays light (benchmarks/import_time.py)
if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
else:
    pd = LazyModule("pandas")
optimize, signal, stats = LazyModule("scipy.optimize"), LazyModule("scipy.signal"), LazyModule("scipy.stats")

__all__ = [
    "DEFAULT_SMOOTHING",
    "LOCAL_HALF_WIDTH",
    "MAX_LOG_STDERR",
    "RUN_OUT",
    "TradeoffFit",
    "b_crit_by_goal",
    "best_runs",
    "ema",
    "expected_steps",
    "fit_tradeoff",
    "fit_tradeoff_by_goal",
    "local_linear",
    "seed_aware_b_crit",
    "steps_by_seed",
    "steps_to_target",
]

#: Default EMA decay per *logged point* for :func:`steps_to_target`. It is the
#: default of TensorBoard's (also bias-corrected) smoothing slider. For i.i.d.
#: fluctuations it cuts the variance to (1−a)/(1+a) = 1/4 (the standard deviation
#: halves) while the smoothed curve lags the raw one by only a/(1−a) = 1.5 logging
#: intervals. A larger decay (0.9: lag 9 intervals) would bias ``S`` upwards most for
#: the short, large-batch runs and so bias ``B_crit`` downwards.
DEFAULT_SMOOTHING: float = 0.6

#: Half-width of the kernel of :func:`local_linear`, in units of ``ln(1 + step)``: each point is read
#: from the steps ``0.64·t … 1.57·t`` around it (about ±6 logged points at 30 evaluations per decade).
#: Narrower windows leave first crossings of the noise (0.3: fitted B_crit 0.83-1.08 of the exact one on
#: the calibration task); wider ones bend with the curve at the few-step runs of large batches.
LOCAL_HALF_WIDTH: float = 0.45

#: How far past its last goal a run trains, as a multiple of the step at which its smoothed curve reached
#: that goal: half the local reading's window (``e^(h/2)`` = 1.25). A run that stopped at its first crossing
#: of the last goal leaves :func:`local_linear` only the points before it, and the run ends exactly where its
#: noisy curve dipped, so the last goal would be read early (on the calibration task, curves cut there read
#: a fitted B_crit of 0.80-0.82 of the exact one at goals the full curves read at 0.89-0.96; cut at 1.25× the
#: crossing, 0.94-0.97).
RUN_OUT: float = float(np.exp(LOCAL_HALF_WIDTH / 2))

#: Standard error of ``log B_crit`` beyond which the fit "explodes": ``B_crit`` is
#: then unconstrained by the data (one standard error spans a factor of e^2.3 = 10).
MAX_LOG_STDERR: float = float(np.log(10.0))

Bound = Literal["none", "lower", "upper"]


# --------------------------------------------------------------------------- curves
def ema(values: np.ndarray, smoothing: float) -> np.ndarray:
    """Bias-corrected exponential moving average of a series.

    ``m_t = a·m_{t−1} + (1−a)·x_t`` with ``m_0 = 0`` and the Adam-style correction
    ``m̂_t = m_t / (1 − a^t)``, so the first point is not pulled towards zero.

    Args:
        values: the series ``x_1 … x_n``; a non-finite value (a diverged loss) makes
            every later smoothed value non-finite as well.
        smoothing: the decay ``a`` in ``[0, 1)``; ``0`` returns the series unchanged.

    Returns:
        The smoothed series ``m̂``, same length, float.
    """
    a = float(smoothing)
    if not 0.0 <= a < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing!r}")
    x = np.asarray(values, dtype=float)
    if a == 0.0 or x.size == 0:
        return x.copy()
    m = signal.lfilter([1.0 - a], [1.0, -a], x)
    t = np.arange(1, x.size + 1)
    smoothed: np.ndarray = m / (1.0 - a**t)
    return smoothed


def local_linear(steps: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray,
                 half_width: float = LOCAL_HALF_WIDTH) -> np.ndarray:
    """Centred local-linear smoothing of a training curve in ``x = ln(1 + step)``.

    Each point is replaced by the intercept at its own ``x`` of a weighted least-squares line through
    the points within ``half_width`` of it, with tricube weights ``(1 − |Δx/h|³)³``. A line through
    points on both sides has no lag on a curve that is locally straight in log-steps (a causal EMA lags
    by a fixed number of *points*, which is a large fraction of a short run), and averaging ~12 points
    removes most of the noise that makes a single curve cross a goal early. Where fewer than three
    points fall in the window (the first few steps, logged one by one) the value is kept as it is.
    At the end of the curve the window is one-sided (still a line, so still without lag).

    Args:
        steps: logged steps, strictly increasing, ``≥ 0``.
        values: the metric there. A non-finite value (divergence) and every point after it stay
            non-finite and are not used.
        half_width: ``h`` in units of ``ln(1 + step)``.

    Returns:
        The smoothed values, same length.
    """
    if not half_width > 0:
        raise ValueError(f"half_width must be > 0, got {half_width!r}")
    t = np.asarray(steps, dtype=float)
    y = np.asarray(values, dtype=float)
    out = y.copy()
    bad = ~np.isfinite(y)
    n = int(np.argmax(bad)) if bad.any() else y.size
    if bad.any():
        out[n:] = np.nan
    if n < 3:
        return out
    x = np.log1p(t[:n])
    dx = x[None, :] - x[:, None]                      # [i, j] = x_j − x_i
    w = np.clip(1.0 - np.abs(dx / half_width) ** 3, 0.0, None) ** 3
    s0, s1, s2 = w.sum(1), (w * dx).sum(1), (w * dx * dx).sum(1)
    t0, t1 = w @ y[:n], (w * dx) @ y[:n]
    det = s0 * s2 - s1 * s1
    enough = ((w > 0).sum(1) >= 3) & (det > 1e-12 * np.maximum(s0 * s2, 1e-300))
    out[:n] = np.where(enough, (s2 * t0 - s1 * t1) / np.where(enough, det, 1.0), y[:n])
    return out


def _validate_curve(steps: np.ndarray, values: np.ndarray, direction: str) -> None:
    if direction not in ("below", "above"):
        raise ValueError(f"direction must be 'below' or 'above', got {direction!r}")
    if steps.ndim != 1 or values.ndim != 1:
        raise ValueError("steps and values must be one-dimensional")
    if steps.shape != values.shape:
        raise ValueError(f"steps and values must have the same length, got {steps.size} and {values.size}")
    if steps.size == 0:
        raise ValueError("steps and values are empty")
    if not np.all(np.isfinite(steps)):
        raise ValueError("steps must be finite")
    if np.any(np.diff(steps) <= 0):
        raise ValueError("steps must be strictly increasing")


def steps_to_target(
    steps: Sequence[float] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    targets: float | Sequence[float] | np.ndarray,
    smoothing: float = DEFAULT_SMOOTHING,
    direction: Literal["below", "above"] = "below",
    method: Literal["ema", "local"] = "ema",
    half_width: float = LOCAL_HALF_WIDTH,
) -> np.ndarray:
    """First step at which a smoothed training curve reaches each goal (App. A.2).

    ``method="ema"`` (the paper's A.3, and what a run can compute while it trains) smooths with
    :func:`ema` (decay ``smoothing`` per logged point; the default :data:`DEFAULT_SMOOTHING` = 0.6
    halves i.i.d. noise while lagging 1.5 logging intervals). ``method="local"`` smooths with
    :func:`local_linear` (centred, no lag; ``half_width``), the reading to use on finished curves.
    For each target the crossing is linearly interpolated between
    the last logged point that had not reached it and the first one that has; a target
    reached at the first logged point gives ``steps[0]``.

    Args:
        steps: logged step numbers, strictly increasing.
        values: the metric at those steps (training loss, error, score ...). Non-finite
            values (divergence) never count as reaching a goal, nor do later points.
        targets: one goal or several; vectorised.
        smoothing: EMA decay in ``[0, 1)``; ``0`` means no smoothing (``method="ema"`` only).
        direction: ``"below"`` for losses / errors (reach = value ≤ target),
            ``"above"`` for accuracies / scores (reach = value ≥ target).
        method: ``"ema"`` or ``"local"`` (see above).
        half_width: the window of ``method="local"`` (see :func:`local_linear`).

    Returns:
        Float array with one entry per target (shape of ``np.atleast_1d(targets)``):
        the interpolated step, NaN when the smoothed curve never reaches the target.

    Raises:
        ValueError: mismatched lengths, empty or non-increasing steps, a bad
            ``direction`` or ``smoothing``.
    """
    s = np.asarray(steps, dtype=float)
    y_raw = np.asarray(values, dtype=float)
    _validate_curve(s, y_raw, direction)
    t = np.atleast_1d(np.asarray(targets, dtype=float))
    if method == "ema":
        y = ema(y_raw, smoothing)
    elif method == "local":
        y = local_linear(s, y_raw, half_width)
    else:
        raise ValueError(f"method must be 'ema' or 'local', got {method!r}")
    sign = 1.0 if direction == "below" else -1.0
    # Work with "below" only: z = sign·y must fall to sign·target.
    z = sign * y
    bad = ~np.isfinite(z)
    if bad.any():  # divergence: this point and every later one never count
        z[np.argmax(bad) :] = np.inf
    zt = sign * t
    running_min = np.minimum.accumulate(z)
    # running_min is non-increasing, so -running_min is sorted ascending.
    idx = np.searchsorted(-running_min, -zt, side="left")
    out = np.full(t.shape, np.nan)
    reached = (idx < z.size) & np.isfinite(zt)
    i = idx[reached]
    first = i == 0
    res = np.empty(i.shape)
    res[first] = s[0]
    j = i[~first]
    z0, z1 = z[j - 1], z[j]
    frac = (z0 - zt[reached][~first]) / (z0 - z1)
    res[~first] = s[j - 1] + frac * (s[j] - s[j - 1])
    out[reached] = res
    return out.reshape(np.shape(np.atleast_1d(targets)))


# --------------------------------------------------------------------------- best runs


def best_runs(runs: pd.DataFrame, keep_unreached: bool = False, batch: str = "batch_size") -> pd.DataFrame:
    """The fastest run per (goal, batch size) of a learning-rate sweep (App. A.3).

    Args:
        runs: tidy long frame, one row per (run, goal), with columns ``batch_size`` (or ``batch``),
            ``lr``, ``goal``, ``steps`` (steps to the goal, NaN = not reached) and any
            extra columns (``run_id``, ``status`` ...), which are carried along from the
            winning row.
        keep_unreached: if False (default) a (goal, batch size) where no run reached
            the goal is dropped; if True it is kept with NaN ``lr``, ``steps`` and
            ``examples`` (carried columns NaN too).
        batch: the column holding the batch size B, in the units ``examples`` should count
            (e.g. ``"batch_units"``: images, tokens or frames); kept under that name.

    Returns:
        One row per (goal, batch size): ``goal, <batch>, lr, steps, examples``
        (``= B·steps``, i.e. ``E``, in the units of ``batch``), ``n_lr`` (distinct rates tried at that
        batch size, over the whole frame), ``lr_on_edge`` (True when the best rate is
        the smallest or largest rate tried at that batch size, including when only one
        rate was tried: widen the grid), then the carried columns. Goals keep their
        order of first appearance in ``runs`` (list them in training order: the first
        goal is "start of training"); batch sizes ascend within a goal. Ties in
        ``steps`` go to the smaller learning rate.

    Raises:
        ValueError: a required column is missing.
    """
    required = (batch, "lr", "goal", "steps")
    missing = [c for c in required if c not in runs.columns]
    if missing:
        raise ValueError(f"runs is missing required column(s) {missing}; it needs {list(required)}")
    extra = [c for c in runs.columns if c not in required]
    grid = runs.groupby(batch)["lr"].agg(lr_min="min", lr_max="max", n_lr="nunique")
    goal_order = {g: k for k, g in enumerate(pd.unique(runs["goal"]))}

    reached = runs[np.isfinite(runs["steps"].to_numpy(dtype=float))]
    ordered = reached.sort_values(["steps", "lr"], kind="mergesort")
    best = ordered.drop_duplicates(["goal", batch], keep="first")
    if keep_unreached:
        keys = runs[["goal", batch]].drop_duplicates()
        best = keys.merge(best, on=["goal", batch], how="left")
    best = best.assign(_order=best["goal"].map(goal_order)).sort_values(["_order", batch], kind="mergesort")
    best = best.drop(columns="_order").join(grid, on=batch)
    best["examples"] = best[batch] * best["steps"]
    lr = best["lr"]
    best["lr_on_edge"] = lr.notna() & ((lr <= best["lr_min"]) | (lr >= best["lr_max"]))
    best["n_lr"] = best["n_lr"].astype(int)
    columns = ["goal", batch, "lr", "steps", "examples", "n_lr", "lr_on_edge", *extra]
    return best[columns].reset_index(drop=True)


def expected_steps(runs: pd.DataFrame, batch: str = "batch_size", seed: str = "seed") -> pd.DataFrame:
    """Steps of the best constant rate on the *expected* metric, per (goal, batch size).

    (2.11) describes the steps the best-tuned constant rate needs on average. The fastest of several
    noisy runs (:func:`best_runs`) is a minimum of noisy numbers, biased low where runs are noisiest.
    Here ``log S`` is first averaged over the seeds at each (goal, B, rate); among the rates whose every
    seed reached the goal, and which the most seeds trained, the one with the smallest mean wins. With
    one seed this is :func:`best_runs`; with extra seeds trained only at the winning rates of the first
    (the cheap design of :mod:`gns_utils.experiments.sweep`), the winner is read from those seeds too.

    Args:
        runs: tidy frame as for :func:`best_runs`, plus a ``seed`` column (one row per run and goal).
        batch: the column holding the batch size B.
        seed: the column holding the run's seed.

    Returns:
        One row per (goal, B) where some rate qualifies, as :func:`best_runs` (``goal, <batch>, lr,
        steps, examples, n_lr, lr_on_edge`` and the carried columns, taken from the winning rate's run at
        the smallest seed), with ``steps = exp(mean log S)`` over the seeds and two more columns:
        ``n_seeds`` (seeds averaged) and ``log_steps_sd`` (their standard deviation of ``log S``, NaN for
        one seed).

    Raises:
        ValueError: a required column is missing.
    """
    required = (batch, "lr", "goal", "steps", seed)
    missing = [c for c in required if c not in runs.columns]
    if missing:
        raise ValueError(f"runs is missing required column(s) {missing}; it needs {list(required)}")
    frame = runs.assign(_log=np.log(runs["steps"].astype(float)))
    keys = ["goal", batch, "lr"]
    cells = frame.groupby(keys, sort=False).agg(
        _n=(seed, "nunique"), _mean=("_log", "mean"), _sd=("_log", "std"),
        _reached=("_log", lambda v: bool(np.isfinite(v.to_numpy(float)).all())))
    cells = cells.reset_index()
    cells = cells[cells["_reached"]]
    most = cells.groupby(["goal", batch])["_n"].transform("max")
    cells = cells[cells["_n"] == most].sort_values(["_mean", "lr"], kind="mergesort")
    winners = cells.drop_duplicates(["goal", batch], keep="first")
    first = frame.sort_values(seed, kind="mergesort").drop_duplicates(keys, keep="first")
    carried = first.drop(columns=["steps", "_log"]).merge(winners, on=keys)
    carried["steps"] = np.exp(carried["_mean"])
    carried = carried.rename(columns={"_n": "n_seeds", "_sd": "log_steps_sd"})
    table = best_runs(carried.drop(columns=["_mean", "_reached"]), batch=batch)
    grid = runs.groupby(batch)["lr"].agg(lr_min="min", lr_max="max", n_lr="nunique")  # the whole grid's edges
    table = table.drop(columns=["n_lr"]).join(grid, on=batch)
    table["n_lr"] = table["n_lr"].astype(int)
    table["lr_on_edge"] = (table["lr"] <= table["lr_min"]) | (table["lr"] >= table["lr_max"])
    table = table.drop(columns=["lr_min", "lr_max"])
    goal_order = {g: k for k, g in enumerate(pd.unique(runs["goal"]))}
    table = table.assign(_o=table["goal"].map(goal_order)).sort_values(["_o", batch], kind="mergesort")
    columns = ["goal", batch, "lr", "steps", "examples", "n_lr", "lr_on_edge", "n_seeds", "log_steps_sd"]
    rest = [c for c in table.columns if c not in columns and c != "_o" and c != seed]
    return table[[*columns, seed, *rest]].reset_index(drop=True)


def steps_by_seed(runs: pd.DataFrame, best: pd.DataFrame, batch: str = "batch_size",
                  seed: str = "seed") -> pd.DataFrame:
    """Each seed's steps at the rate :func:`expected_steps` chose, per (goal, B): the points of the
    per-seed fits behind :func:`seed_aware_b_crit`.

    Returns:
        Columns ``goal, <batch>, seed, steps`` (NaN where that seed did not reach the goal).
    """
    chosen = best[["goal", batch, "lr"]]
    out = runs.merge(chosen, on=["goal", batch, "lr"])[["goal", batch, seed, "steps"]]
    return out.sort_values(["goal", seed, batch], kind="mergesort").reset_index(drop=True)


def seed_aware_b_crit(best: pd.DataFrame, by_seed: pd.DataFrame, batch: str = "batch_size",
                      seed: str = "seed", confidence: float = 0.95) -> pd.DataFrame:
    """B_crit per goal with an error bar that includes the seed-to-seed spread.

    The estimate is the (2.11) fit to the seed-averaged steps (:func:`expected_steps`). Its fit-only
    standard error treats the batch sizes as independent points; runs of one seed share their start
    and example stream, so their errors are correlated and that error is too small. Here (2.11) is also
    fitted to each seed's steps at the same rates; the seed standard error of ``log B_crit`` is the
    standard deviation of those fits over ``√n`` (the pooled estimate is close to their mean). The
    reported standard error is the larger of the two, and the interval is
    ``exp(log B_crit ± t_{n−1}·se)`` (``t`` with ``n − 1`` degrees of freedom, ``n`` seeds whose fit is
    resolved; the normal quantile of the fit when fewer than 2).

    Args:
        best: :func:`expected_steps` output.
        by_seed: :func:`steps_by_seed` output.
        batch, seed: column names.
        confidence: level of the interval.

    Returns:
        One row per goal: ``goal, b_crit, b_crit_stderr`` (the larger one), ``b_crit_fit_stderr``,
        ``b_crit_seed_stderr``, ``ci_low, ci_high, n_seeds`` (resolved per-seed fits), ``b_crit_seeds``
        (list of the per-seed B_crit, NaN for a bound) and ``seeds`` (their seeds), ``s_min, e_min, n_points, bound, r2, n_lr_edge``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        pooled = b_crit_by_goal(best, batch=batch, confidence=confidence)
        per_seed = {}
        for sd, group in by_seed.groupby(seed, sort=True):
            frame = b_crit_by_goal(group.assign(lr=np.nan), batch=batch, confidence=confidence)
            per_seed[sd] = frame.set_index("goal")
    rows = []
    for _, row in pooled.iterrows():
        goal = row["goal"]
        values = [float(f.loc[goal, "b_crit"]) if goal in f.index and f.loc[goal, "bound"] == "none" else np.nan
                  for f in per_seed.values()]
        logs = np.log(np.asarray([v for v in values if np.isfinite(v)]))
        fit_log_se = row["b_crit_stderr"] / row["b_crit"] if row["bound"] == "none" else np.nan
        seed_log_se = float(logs.std(ddof=1) / np.sqrt(logs.size)) if logs.size >= 2 else np.nan
        log_se = np.nanmax([fit_log_se, seed_log_se]) if np.isfinite([fit_log_se, seed_log_se]).any() else np.nan
        if row["bound"] != "none" or not np.isfinite(log_se):
            ci = (np.nan, np.nan)
        else:
            dof = logs.size - 1 if logs.size >= 2 else int(row["n_points"]) - 2
            q = float(stats.t.ppf(0.5 + confidence / 2, dof))
            ci = (float(row["b_crit"] * np.exp(-q * log_se)), float(row["b_crit"] * np.exp(q * log_se)))
        rows.append({**row.to_dict(), "b_crit_stderr": float(row["b_crit"] * log_se) if row["bound"] == "none"
                     else np.nan, "b_crit_fit_stderr": row["b_crit_stderr"],
                     "b_crit_seed_stderr": float(row["b_crit"] * seed_log_se) if row["bound"] == "none" else np.nan,
                     "ci_low": ci[0], "ci_high": ci[1], "n_seeds": int(logs.size), "b_crit_seeds": values,
                     "seeds": [int(k) for k in per_seed]})
    columns = ["goal", "b_crit", "b_crit_stderr", "b_crit_fit_stderr", "b_crit_seed_stderr", "ci_low", "ci_high",
               "n_seeds", "b_crit_seeds", "seeds", "s_min", "e_min", "n_points", "bound", "r2", "n_lr_edge"]
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------- the fit
@dataclass(frozen=True, eq=False)
class TradeoffFit:
    """Result of fitting eq. 2.11, ``S(B) = S_min (1 + B_crit/B)``, for one goal.

    Attributes:
        s_min: ``S_min``, fewest steps (an upper bound on it when ``bound == "lower"``).
        e_min: ``E_min``, fewest examples; ``b_crit == e_min / s_min`` exactly.
        b_crit: ``B_crit`` (eq. 2.12). If ``bound == "upper"`` it is the smallest batch
            size tested and ``B_crit ≤ b_crit``; if ``"lower"`` the largest batch size
            tested and ``B_crit ≥ b_crit``.
        b_crit_stderr: standard error of ``B_crit`` (delta method on ``log B_crit``, or
            the bootstrap SD); NaN for a bound.
        ci_low, ci_high: confidence interval for ``B_crit`` (t-distribution on
            ``log B_crit``, hence asymmetric; or bootstrap percentiles); NaN for a bound.
        confidence: the level of the interval.
        log_b_crit_stderr: standard error of ``log B_crit`` from the covariance.
        b_crit_fit: the unflagged least-squares ``B_crit`` (a diagnostic only: not an
            estimate when ``bound != "none"``).
        residuals: ``log S − log S_fit`` at each point used (natural log).
        r2: ``1 − SS_res/SS_tot`` of ``log S``.
        rmse: root-mean-square of the log residuals.
        n_points: points used (finite, after dropping NaN).
        bound: ``"none"``, ``"lower"`` (linear regime, ``B_crit`` above the range) or
            ``"upper"`` (saturated, ``B_crit`` below the range).
        method: ``"covariance"``, ``"bootstrap"``, or ``"none"`` for a bound.
        n_bootstrap: successful bootstrap refits (0 for the covariance method).
        batch_sizes, steps_data: the points used.
    """

    s_min: float
    e_min: float
    b_crit: float
    b_crit_stderr: float
    ci_low: float
    ci_high: float
    confidence: float
    log_b_crit_stderr: float
    b_crit_fit: float
    residuals: np.ndarray = field(repr=False)
    r2: float
    rmse: float
    n_points: int
    bound: Bound
    method: str
    n_bootstrap: int
    batch_sizes: np.ndarray = field(repr=False)
    steps_data: np.ndarray = field(repr=False)

    def steps(self, batch_size: float | np.ndarray) -> float | np.ndarray:
        """``S(B) = S_min (1 + B_crit/B)`` (eq. 2.11)."""
        b = np.asarray(batch_size, dtype=float)
        return self.s_min * (1.0 + self.b_crit / b)

    def examples(self, batch_size: float | np.ndarray) -> float | np.ndarray:
        """``E(B) = B·S(B) = E_min (1 + B/B_crit)`` (eq. 2.11)."""
        b = np.asarray(batch_size, dtype=float)
        return self.e_min * (1.0 + b / self.b_crit)


def _clean_points(batch_sizes: Any, steps: Any) -> tuple[np.ndarray, np.ndarray]:
    b = np.asarray(batch_sizes, dtype=float).ravel()
    s = np.asarray(steps, dtype=float).ravel()
    if b.size != s.size:
        raise ValueError(f"batch_sizes and steps have mismatched lengths {b.size} and {s.size}")
    keep = ~(np.isnan(b) | np.isnan(s))
    b, s = b[keep], s[keep]
    if np.any(~np.isfinite(b)) or np.any(~np.isfinite(s)):
        raise ValueError("batch_sizes and steps must be finite (NaN points are dropped, inf is an error)")
    if np.any(b <= 0) or np.any(s <= 0):
        raise ValueError("batch_sizes and steps must be positive")
    if b.size < 3:
        raise ValueError(f"need at least 3 finite points to fit eq. 2.11, got {b.size}")
    if np.unique(b).size < 2:
        raise ValueError("need at least 2 distinct batch sizes to fit eq. 2.11")
    return b, s


def _model_log_steps(theta: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``log S = log S_min + log(1 + B_crit/B)`` with ``theta = (log S_min, log B_crit)``."""
    log_steps: np.ndarray = theta[0] + np.logaddexp(0.0, theta[1] - np.log(b))
    return log_steps


def _jacobian(theta: np.ndarray, b: np.ndarray) -> np.ndarray:
    d_logbc = 1.0 / (1.0 + np.exp(np.log(b) - theta[1]))  # B_crit / (B + B_crit)
    return np.column_stack([np.ones_like(b), d_logbc])


def _least_squares(b: np.ndarray, s: np.ndarray, starts: Sequence[float] | None = None) -> np.ndarray:
    """Least-squares ``(log S_min, log B_crit)``, best of several starting ``log B_crit``.

    ``log B_crit`` is kept within ±20 of the tested ``log B`` range so that a run-away
    fit (saturated or linear data) stops; :func:`_decide_bound` then flags it.
    """
    log_b, log_s = np.log(b), np.log(s)
    lo, hi = log_b.min() - 20.0, log_b.max() + 20.0
    start_values = np.linspace(log_b.min() - 1.0, log_b.max() + 1.0, 5) if starts is None else np.asarray(starts)
    best: np.ndarray | None = None
    best_cost = np.inf
    for lbc in np.clip(start_values, lo, hi):
        ls0 = np.mean(log_s - np.logaddexp(0.0, lbc - log_b))
        res = optimize.least_squares(
            lambda th: _model_log_steps(th, b) - log_s,
            x0=np.array([ls0, lbc]),
            jac=lambda th: _jacobian(th, b),
            bounds=([-np.inf, lo], [np.inf, hi]),
            method="trf",
            x_scale=1.0,
        )
        if res.cost < best_cost:
            best, best_cost = res.x, res.cost
    if best is None:
        raise ValueError("the least-squares fit of eq. 2.11 gave no finite cost from any starting point")
    return best


def _log_b_crit_stderr(theta: np.ndarray, b: np.ndarray, resid: np.ndarray) -> float:
    """Standard error of ``log B_crit`` from ``s² (JᵀJ)⁻¹`` (dof = n − 2)."""
    dof = b.size - 2
    if dof <= 0:
        return float("nan")
    jac = _jacobian(theta, b)
    s2 = float(resid @ resid) / dof
    jtj = jac.T @ jac
    if np.linalg.cond(jtj) > 1e12:
        return float("inf")
    cov = s2 * np.linalg.inv(jtj)
    return float(np.sqrt(max(cov[1, 1], 0.0)))


def _decide_bound(b_crit: float, log_se: float, b: np.ndarray, max_log_stderr: float) -> Bound:
    """Flag B_crit outside the tested range, or with an exploded error, as a bound."""
    b_lo, b_hi = float(b.min()), float(b.max())
    if b_crit < b_lo:
        return "upper"
    if b_crit > b_hi:
        return "lower"
    if not np.isfinite(log_se) or log_se > max_log_stderr:
        # Unconstrained inside the range: the nearer edge (in log B) says which regime.
        return "upper" if np.log(b_crit) < 0.5 * (np.log(b_lo) + np.log(b_hi)) else "lower"
    return "none"


def _bootstrap(
    b: np.ndarray, s: np.ndarray, n_boot: int, seed: int, confidence: float, log_b_crit: float
) -> tuple[float, float, float, int]:
    """Percentile CI and SD of B_crit over resampled points (with replacement).

    Each refit starts from the full-data ``log B_crit`` (the profiled objective is
    smooth and single-welled in practice). Resamples with fewer than 2 distinct batch
    sizes are skipped.
    """
    rng = np.random.default_rng(seed)
    starts = [log_b_crit]
    estimates = []
    for _ in range(n_boot):
        idx = rng.integers(0, b.size, b.size)
        if np.unique(b[idx]).size < 2:
            continue
        estimates.append(np.exp(_least_squares(b[idx], s[idx], starts)[1]))
    est = np.asarray(estimates)
    if est.size < 2:
        return float("nan"), float("nan"), float("nan"), int(est.size)
    alpha = 1.0 - confidence
    low, high = np.quantile(est, [alpha / 2, 1 - alpha / 2])
    return float(np.std(est, ddof=1)), float(low), float(high), int(est.size)


def fit_tradeoff(
    batch_sizes: Sequence[float] | np.ndarray,
    steps: Sequence[float] | np.ndarray,
    bootstrap: int = 0,
    seed: int = 0,
    confidence: float = 0.95,
    max_log_stderr: float = MAX_LOG_STDERR,
) -> TradeoffFit:
    """Fit ``S(B) = S_min (1 + B_crit/B)`` (eq. 2.11, 2.12) in log space.

    Least squares on ``log S`` with parameters ``(log S_min, log B_crit)``, so both stay
    positive; ``E_min = S_min·B_crit`` and ``B_crit = E_min/S_min`` (eq. 2.12).

    Uncertainty: by default from the fit's covariance ``s²(JᵀJ)⁻¹``: the delta method
    gives ``stderr(B_crit) = B_crit·stderr(log B_crit)`` and the interval is
    ``exp(log B_crit ± t_{n−2}·stderr(log B_crit))`` (asymmetric). With
    ``bootstrap > 0`` the points are resampled with replacement that many times and
    refitted: stderr = bootstrap SD, interval = percentiles. Prefer the default: on simulated sweeps
    of 9 batch sizes with log-normal noise the covariance interval covers the true B_crit 94.8–95.0 %
    of the time at nominal 95 %, the bootstrap percentile interval only 88.8 % (resampling so few points
    understates the spread; ``benchmarks/fit_coverage.py``, output in ``benchmarks/fit_coverage.txt``).

    Bounds: if the fitted ``B_crit`` is below the smallest batch size (all points
    saturated, ``S`` flat in ``B``) the result has ``bound="upper"`` and ``b_crit`` =
    the **smallest** batch size; if above the largest (all points in the linear regime,
    ``E`` flat) ``bound="lower"`` and ``b_crit`` = the **largest** batch size. The same
    happens when ``B_crit`` falls inside the range but ``stderr(log B_crit)`` exceeds
    ``max_log_stderr`` (or is infinite), choosing the edge nearer in ``log B``. A
    warning is emitted, the stderr and interval are NaN, and ``S_min``/``E_min`` keep
    ``b_crit = e_min/s_min``: for "upper" ``s_min`` is fitted (well constrained) and
    ``e_min = s_min·b_crit``; for "lower" ``e_min`` (the constrained product) is fitted
    and ``s_min = e_min/b_crit``.

    Args:
        batch_sizes: ``B`` of each point.
        steps: ``S`` to the goal at each ``B``; NaN points (goal not reached) dropped.
        bootstrap: number of bootstrap resamples; 0 uses the covariance.
        seed: seed of the bootstrap generator.
        confidence: level of the interval, in (0, 1).
        max_log_stderr: see "Bounds" above (default ``log 10``).

    Returns:
        A :class:`TradeoffFit`.

    Raises:
        ValueError: mismatched lengths, fewer than 3 finite points, fewer than 2
            distinct batch sizes, non-positive or infinite values, bad ``confidence``, or steps
            that clearly grow with the batch size (a log-log slope more than :data:`INCREASING_T`
            standard errors above 0), which (2.11) cannot describe.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be >= 0, got {bootstrap!r}")
    b, s = _clean_points(batch_sizes, steps)
    theta = _least_squares(b, s)
    resid = np.log(s) - _model_log_steps(theta, b)
    log_se = _log_b_crit_stderr(theta, b, resid)
    b_fit = float(np.exp(theta[1]))
    s_min = float(np.exp(theta[0]))
    ss_tot = float(np.sum((np.log(s) - np.log(s).mean()) ** 2))
    r2 = 1.0 - float(resid @ resid) / ss_tot if ss_tot > 0 else float("nan")
    rmse = float(np.sqrt(np.mean(resid**2)))
    bound = _decide_bound(b_fit, log_se, b, max_log_stderr)

    common = dict(
        confidence=confidence, log_b_crit_stderr=log_se, b_crit_fit=b_fit, residuals=resid,
        r2=r2, rmse=rmse, n_points=int(b.size), batch_sizes=b, steps_data=s,
    )
    if bound == "upper":
        _refuse_increasing_steps(b, s)
    if bound != "none":
        edge = float(b.min()) if bound == "upper" else float(b.max())
        if bound == "upper":
            s_bound, e_bound = s_min, s_min * edge
        else:
            e_bound = s_min * b_fit
            s_bound = e_bound / edge
        kind = "saturated: B_crit <= smallest batch" if bound == "upper" else "linear regime: B_crit >= largest batch"
        warnings.warn(
            f"B_crit is not constrained by batch sizes {b.min():g}..{b.max():g} ({kind} = {edge:g}; "
            f"least-squares value {b_fit:.3g}, stderr(log B_crit) {log_se:.3g}); returning a bound",
            RuntimeWarning,
            stacklevel=2,
        )
        return TradeoffFit(
            s_min=s_bound, e_min=e_bound, b_crit=edge, b_crit_stderr=float("nan"),
            ci_low=float("nan"), ci_high=float("nan"), bound=bound, method="none", n_bootstrap=0, **common,
        )

    if bootstrap > 0:
        stderr, ci_low, ci_high, n_ok = _bootstrap(b, s, bootstrap, seed, confidence, float(theta[1]))
        method = "bootstrap"
    else:
        tq = stats.t.ppf(0.5 + confidence / 2, b.size - 2)
        stderr = b_fit * log_se
        ci_low, ci_high = float(np.exp(theta[1] - tq * log_se)), float(np.exp(theta[1] + tq * log_se))
        method, n_ok = "covariance", 0
    return TradeoffFit(
        s_min=s_min, e_min=s_min * b_fit, b_crit=b_fit, b_crit_stderr=float(stderr),
        ci_low=ci_low, ci_high=ci_high, bound="none", method=method, n_bootstrap=n_ok, **common,
    )


#: Steps that grow with the batch size by more than this many standard errors of the log-log slope are
#: rejected as contradicting (2.11) (S(B) never increases), instead of being reported as saturated.
INCREASING_T = 3.0


def _refuse_increasing_steps(b: np.ndarray, s: np.ndarray) -> None:
    """Raise when log S clearly grows with log B: no S_min, B_crit fits (2.11), and "saturated" would mislead."""
    if b.size < 3 or np.unique(b).size < 3:
        return
    fit = stats.linregress(np.log(b), np.log(s))
    if fit.slope > 0 and (fit.stderr == 0 or fit.slope / fit.stderr > INCREASING_T):
        raise ValueError(
            f"steps grow with the batch size (log-log slope {fit.slope:.2f} ± {fit.stderr:.2f}) over batch sizes "
            f"{b.min():g}..{b.max():g}: (2.11) has S(B) non-increasing, so these points cannot be fitted; check "
            "that the steps are those of the best-tuned run at each batch size, to the same goal")


# --------------------------------------------------------------------------- per goal
_TABLE_COLUMNS = [
    "goal", "b_crit", "b_crit_stderr", "ci_low", "ci_high", "s_min", "e_min",
    "n_points", "bound", "r2", "n_lr_edge",
]


def fit_tradeoff_by_goal(
    best: pd.DataFrame, bootstrap: int = 0, seed: int = 0, confidence: float = 0.95, batch: str = "batch_size"
) -> dict[Any, TradeoffFit | None]:
    """:func:`fit_tradeoff` for each goal of a :func:`best_runs` frame.

    Args:
        best: output of :func:`best_runs` (columns ``goal``, ``<batch>``, ``steps``).
        bootstrap, seed, confidence: passed to :func:`fit_tradeoff` (same seed per goal).
        batch: the column holding the batch size B (its units are those of B_crit).

    Returns:
        ``{goal: TradeoffFit}`` in the frame's goal order; ``None`` for a goal with fewer
        than 3 finite points or fewer than 2 distinct batch sizes, or whose steps grow with the
        batch size (a warning says so).
    """
    fits: dict[Any, TradeoffFit | None] = {}
    for goal, group in best.groupby("goal", sort=False):
        ok = group[np.isfinite(group["steps"].to_numpy(dtype=float))]
        if len(ok) < 3 or ok[batch].nunique() < 2:
            fits[goal] = None
            continue
        try:
            fits[goal] = fit_tradeoff(ok[batch], ok["steps"], bootstrap=bootstrap, seed=seed, confidence=confidence)
        except ValueError as err:  # data that contradict (2.11): no fit for this goal, said once
            warnings.warn(f"goal {goal}: {err}", RuntimeWarning, stacklevel=2)
            fits[goal] = None
    return fits


def b_crit_by_goal(
    best: pd.DataFrame, bootstrap: int = 0, seed: int = 0, confidence: float = 0.95, batch: str = "batch_size",
    fits: dict[Any, TradeoffFit | None] | None = None,
) -> pd.DataFrame:
    """``B_crit`` per goal: how the critical batch size grows as training proceeds.

    The first goal (in the order of ``best``) is "start of training", the last the
    "full run" (Table 1's two columns).

    Args:
        best: output of :func:`best_runs`.
        bootstrap, seed, confidence: passed to :func:`fit_tradeoff`.
        batch: the column holding the batch size B.
        fits: :func:`fit_tradeoff_by_goal` of ``best`` when already computed (not refitted).

    Returns:
        One row per goal: ``goal, b_crit, b_crit_stderr, ci_low, ci_high, s_min, e_min,
        n_points, bound, r2, n_lr_edge`` (batch sizes whose best rate was on the grid
        edge, if ``best`` has ``lr_on_edge``). Goals with too few points get NaN values
        and ``bound="insufficient"``; bound warnings of the fits propagate.
    """
    if fits is None:
        fits = fit_tradeoff_by_goal(best, bootstrap=bootstrap, seed=seed, confidence=confidence, batch=batch)
    rows = []
    for goal, fit in fits.items():
        group = best[best["goal"] == goal]
        finite = np.isfinite(group["steps"].to_numpy(dtype=float))
        n_edge = int(group.loc[finite, "lr_on_edge"].sum()) if "lr_on_edge" in group else 0
        if fit is None:
            rows.append(dict(goal=goal, b_crit=np.nan, b_crit_stderr=np.nan, ci_low=np.nan, ci_high=np.nan,
                             s_min=np.nan, e_min=np.nan, n_points=int(finite.sum()), bound="insufficient",
                             r2=np.nan, n_lr_edge=n_edge))
            continue
        rows.append(dict(goal=goal, b_crit=fit.b_crit, b_crit_stderr=fit.b_crit_stderr, ci_low=fit.ci_low,
                         ci_high=fit.ci_high, s_min=fit.s_min, e_min=fit.e_min, n_points=fit.n_points,
                         bound=fit.bound, r2=fit.r2, n_lr_edge=n_edge))
    return pd.DataFrame(rows, columns=_TABLE_COLUMNS)
