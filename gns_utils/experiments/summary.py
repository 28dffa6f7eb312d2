"""Cross-task summary: measured B_crit and B_simple against the paper's Table 1 (Fig. 4).

The library side of the final summary notebook. It only reads files; nothing is
re-trained. Symbols: ``B_crit = E_min/S_min`` (eq. 2.12), the critical batch size;
``B_simple = tr Σ/|G|²`` (eq. 2.9), the simple noise scale, "averaged over training"
as in Appendix D. The paper's prediction is ``B_crit ≈ B_simple`` up to a task-dependent
factor; its post reports that ``B_simple`` explains about 80% of the variance (R²) of
``log B_crit`` across tasks.

``paper_table1.csv`` (next to this module) is Table 1 of McCandlish et al. 2018,
arXiv:1812.06162, one row per task (lines starting with ``#`` are comments):

* ``task, units`` (images, tokens or frames), ``model, optimizer``.
* ``b_crit_start, b_crit, b_simple_start, b_simple``: start of training / average or
  end of the run.
* ``b_crit_start_kind, b_crit_kind``: ``"value"``, ``"lower_bound"`` (Dota 5v5:
  ``B_crit > 8·10⁶``, stored as 8e6), ``"range"`` (Atari: the spread over 7 games) or
  ``"not_measured"`` (Dota 5v5 at the start; the value is NaN).
* ``*_low, *_high``: the ends of a range (Atari: B_crit 100–1000 / 400–8000,
  B_simple 100–1000 / 1000–20000); the point value of a range is its geometric mean.
  Empty (NaN) for other tasks.
* ``source``: "McCandlish et al. 2018, arXiv:1812.06162, Table 1".

R² conventions (:func:`r2_report`): points are ``(x, y) = (B_simple, B_crit)`` in
``log10``; bounds (lower or upper) are left out, ranges enter at their geometric mean.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from gns_utils.experiments.profiles import PRESETS, display_name, presets
from gns_utils.experiments.store import provenance, write_json_if_changed

__all__ = [
    "PAPER_SOURCE",
    "PAPER_TABLE_PATH",
    "SUMMARY_FIELDS",
    "TABLE_COLUMNS",
    "GOAL_PREDICTORS",
    "NOT_POOLED",
    "UNRESOLVED_REL_SE",
    "goal_points",
    "goal_report",
    "is_resolved",
    "predictor_resolved",
    "ratio_interval",
    "resolved_goals",
    "slope_groups",
    "task_slopes",
    "calibration_report",
    "load_task_summaries",
    "paper_table",
    "profile_tasks",
    "median_abs_log10_ratio",
    "r2_report",
    "resolved_trace_goals",
    "span_markdown",
    "trace_goal_report",
    "trace_table",
    "r_squared_fit",
    "r_squared_identity",
    "summary_table",
    "verdict_markdown",
    "write_summary",
]

PAPER_SOURCE = "McCandlish et al. 2018, arXiv:1812.06162, Table 1"
PAPER_TABLE_PATH = Path(__file__).resolve().parent / "paper_table1.csv"

#: Fields read from each ``<results_dir>/<task>/summary.json`` (missing → NaN / None).
SUMMARY_FIELDS: tuple[str, ...] = (
    "task", "domain", "dataset", "model", "optimizer", "units", "profile", "status",
    "b_crit", "b_crit_stderr", "b_crit_bound", "b_crit_start", "b_crit_start_stderr",
    "b_crit_start_bound", "b_simple", "b_simple_start", "b_noise",
)
_NUMERIC_FIELDS = frozenset(
    {"b_crit", "b_crit_stderr", "b_crit_start", "b_crit_start_stderr", "b_simple", "b_simple_start", "b_noise"}
)
_BOUND_KIND = {"none": "value", "lower": "lower_bound", "upper": "upper_bound", "insufficient": "not_measured"}

#: Columns of :func:`summary_table` (the first seven are the core; the rest carry
#: start-of-training values, bounds and ranges for plotting).
TABLE_COLUMNS: tuple[str, ...] = (
    "task", "units", "b_crit", "b_crit_stderr", "b_simple", "ratio", "source",
    "b_crit_kind", "b_crit_low", "b_crit_high", "b_simple_low", "b_simple_high",
    "b_crit_start", "b_crit_start_stderr", "b_simple_start", "b_crit_start_kind",
    "b_crit_start_low", "b_crit_start_high", "b_simple_start_low", "b_simple_start_high", "pooled",
)
_POINT_KINDS = ("value", "range")

#: A value whose standard error is at least this fraction of it is *unresolved*: listed, counted and drawn
#: apart, but left out of medians, slopes and R².
UNRESOLVED_REL_SE = 0.5
#: Tasks drawn and tabled but not pooled as independent tasks: variants of another task (same network and
#: data), mapped to the task they vary.
NOT_POOLED: dict[str, str] = {"fashion_mnist_mlp_adam_beta2_099": "fashion_mnist_mlp_adam"}


def is_resolved(value: Any, stderr: Any) -> np.ndarray:
    """``value > 0`` and its standard error (NaN/None: unknown, taken as resolved) below
    :data:`UNRESOLVED_REL_SE` × ``value``; elementwise."""
    v = pd.to_numeric(pd.Series(np.atleast_1d(value)), errors="coerce").to_numpy(float)
    se = pd.to_numeric(pd.Series(np.atleast_1d(stderr)), errors="coerce").to_numpy(float)
    with np.errstate(invalid="ignore"):
        return (v > 0) & ~(se >= UNRESOLVED_REL_SE * v)


# --------------------------------------------------------------------------- inputs
def paper_table(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """The paper's Table 1 as a DataFrame (see the module docstring for the columns).

    Args:
        path: alternative CSV; default :data:`PAPER_TABLE_PATH`.

    Returns:
        One row per task, in the paper's order.
    """
    return pd.read_csv(path or PAPER_TABLE_PATH, comment="#")


def _parse_summary(data: Any, folder: str) -> dict[str, Any]:
    """One row from a parsed ``summary.json``; raises ValueError if malformed."""
    if not isinstance(data, dict):
        raise ValueError("top level is not a JSON object")
    row: dict[str, Any] = {k: v for k, v in data.items() if v is None or isinstance(v, (str, int, float, bool))}
    for name in SUMMARY_FIELDS:
        row.setdefault(name, None)
    if row["task"] is None:
        row["task"] = folder
    for name in _NUMERIC_FIELDS:
        value = row[name]
        if value is None:
            row[name] = math.nan
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"field {name!r} is not a number: {value!r}")
        else:
            row[name] = float(value)
    for name in ("b_crit_bound", "b_crit_start_bound"):
        if row[name] is None:
            row[name] = "none"
        elif row[name] not in _BOUND_KIND:
            raise ValueError(f"field {name!r} must be one of {sorted(_BOUND_KIND)}, got {row[name]!r}")
    return row


def load_task_summaries(results_dir: str | os.PathLike, profile: str | None = None) -> pd.DataFrame:
    """Every ``<results_dir>/<task>/summary.json`` as one row (Table 1 of this replication).

    Reads the fields in :data:`SUMMARY_FIELDS` (missing numeric fields become NaN,
    missing text fields None, a missing ``task`` the folder name, a missing
    ``b_crit_bound`` "none"; ``b_crit_bound`` may be "none", "lower", "upper" or
    "insufficient") plus any other top-level scalar field; nested objects (config,
    provenance, per-goal lists) are skipped. Adds ``path``.

    Args:
        results_dir: folder holding one sub-folder per task.
        profile: keep only summaries whose ``profile`` field equals this (None = all).

    Returns:
        One row per readable summary, sorted by folder name. A file that is not valid
        JSON, not an object, or has a non-numeric number field is skipped with a
        ``UserWarning`` naming it.

    Raises:
        FileNotFoundError: ``results_dir`` does not exist.
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"results folder {root} does not exist")
    rows = []
    for path in sorted(root.glob("*/summary.json")):
        try:
            row = _parse_summary(json.loads(path.read_text()), path.parent.name)
        except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
            warnings.warn(f"skipping malformed task summary {path}: {err}", UserWarning, stacklevel=2)
            continue
        row["path"] = str(path)
        if profile is None or row.get("profile") == profile:
            rows.append(row)
    frame = pd.DataFrame(rows)
    for name in (*SUMMARY_FIELDS, "path"):
        if name not in frame.columns:
            frame[name] = np.nan if name in _NUMERIC_FIELDS else None
    first = [*SUMMARY_FIELDS, "path"]
    return frame[first + [c for c in frame.columns if c not in first]]


# --------------------------------------------------------------------------- R²
def _log_pairs(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xa = np.asarray(x, dtype=float).ravel()
    ya = np.asarray(y, dtype=float).ravel()
    if xa.size != ya.size:
        raise ValueError(f"x and y have mismatched lengths {xa.size} and {ya.size}")
    with np.errstate(divide="ignore", invalid="ignore"):
        lx, ly = np.log10(xa), np.log10(ya)
    keep = np.isfinite(lx) & np.isfinite(ly)
    return lx[keep], ly[keep]


def r_squared_fit(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """R² of the least-squares line of ``log10 y`` on ``log10 x``.

    ``1 − SS_res/SS_tot`` with the fitted slope and intercept (``scipy.stats.linregress``
    ``rvalue²``): how much of the variance of ``log B_crit`` a power law in
    ``B_simple`` explains.

    Args:
        x, y: raw (positive) values; logs are taken inside; NaN and non-positive pairs
            are dropped.

    Returns:
        R² in [0, 1]; NaN with fewer than 3 points or no spread.
    """
    lx, ly = _log_pairs(x, y)
    if lx.size < 3 or np.ptp(lx) == 0 or np.ptp(ly) == 0:
        return float("nan")
    return float(stats.linregress(lx, ly).rvalue ** 2)


def r_squared_identity(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """R² of the prediction ``y = x`` in log space (no fitted parameters).

    ``1 − Σ(log y − log x)² / Σ(log y − mean log y)²``; can be negative when ``x``
    predicts ``y`` worse than the mean.

    Args:
        x, y: raw (positive) values; NaN and non-positive pairs are dropped.

    Returns:
        R² (≤ 1); NaN with fewer than 3 points or no spread in ``y``.
    """
    lx, ly = _log_pairs(x, y)
    if lx.size < 3:
        return float("nan")
    ss_tot = float(np.sum((ly - ly.mean()) ** 2))
    if ss_tot == 0:
        return float("nan")
    return 1.0 - float(np.sum((ly - lx) ** 2)) / ss_tot


# --------------------------------------------------------------------------- table
def _measured_rows(measured: pd.DataFrame) -> pd.DataFrame:
    m = measured.copy()
    for name in SUMMARY_FIELDS:
        if name not in m.columns:
            m[name] = np.nan if name in _NUMERIC_FIELDS else None
    out = pd.DataFrame({
        "task": m["task"], "units": m["units"], "b_crit": m["b_crit"].astype(float),
        "b_crit_stderr": m["b_crit_stderr"].astype(float), "b_simple": m["b_simple"].astype(float),
        "source": "measured",
        "b_crit_kind": m["b_crit_bound"].fillna("none").map(_BOUND_KIND),
        "b_crit_start": m["b_crit_start"].astype(float),
        "b_crit_start_stderr": m["b_crit_start_stderr"].astype(float),
        "b_simple_start": m["b_simple_start"].astype(float),
        "b_crit_start_kind": m["b_crit_start_bound"].fillna("none").map(_BOUND_KIND),
    })
    for prefix in ("b_crit", "b_crit_start"):
        value = out[prefix].to_numpy(float)
        unresolved = (out[f"{prefix}_kind"] == "value") & ~is_resolved(value, out[f"{prefix}_stderr"].to_numpy(float))
        out.loc[unresolved & (value > 0), f"{prefix}_kind"] = "unresolved"
        out.loc[out[prefix].isna(), f"{prefix}_kind"] = "not_measured"
    out["pooled"] = ~out["task"].isin(list(NOT_POOLED))
    return out


def _paper_rows(paper: pd.DataFrame) -> pd.DataFrame:
    out = paper.copy()
    out["source"] = "paper"
    out["pooled"] = True
    out["b_crit_stderr"] = np.nan
    out["b_crit_start_stderr"] = np.nan
    return out


def resolved_trace_goals(results: pd.DataFrame) -> np.ndarray:
    """Which rows of :func:`gns_utils.experiments.traces.trace_results` hold a fitted, resolved B_crit (not a bound,
    s.e. below :data:`UNRESOLVED_REL_SE` × the value): the one rule behind the traces' table, statistics and figures."""
    return ((results["bound"] == "none").to_numpy() & is_resolved(results["b_crit"], results["b_crit_stderr"]))


def trace_table(results: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per third-party workload (AdaptDL / Pollux traces, :mod:`gns_utils.experiments.traces`) for Fig. 4.

    Each workload is represented by its hardest resolved goal (a fitted B_crit whose s.e. is below
    :data:`UNRESOLVED_REL_SE` × the value), against ``B_simple`` read where the smallest-batch run reaches that
    goal; a workload with none is drawn at its hardest goal as a bound (``lower_bound``: B_crit beyond its
    largest batch size) or as unresolved. ``source`` is "traces"; every row is pooled.

    Args:
        results: :func:`gns_utils.experiments.traces.trace_results` output (default: computed from the
            shipped traces).
    """
    if results is None:
        from gns_utils.experiments.traces import trace_results

        results = trace_results()
    rows = []
    for workload, group in results.groupby("workload", sort=False):
        group = group.sort_values("target_index")
        fitted = group[resolved_trace_goals(group)]
        if len(fitted):
            row, kind = fitted.iloc[-1], "value"
        else:
            row = group.iloc[-1]
            kind = {"lower": "lower_bound", "upper": "upper_bound"}.get(row["bound"], "unresolved")
            if row["bound"] == "none" or not np.isfinite(row["b_crit"]):
                kind = "unresolved" if np.isfinite(row["b_crit"]) else "not_measured"
        rows.append({"task": row["display_name"], "units": row["units"], "b_crit": float(row["b_crit"]),
                     "b_crit_stderr": float(row["b_crit_stderr"]) if kind == "value" else np.nan,
                     "b_simple": float(row["noise_scale"]), "source": "traces", "b_crit_kind": kind,
                     "b_simple_low": float(row["noise_scale_low"]), "b_simple_high": float(row["noise_scale_high"]),
                     "pooled": True})
    out = pd.DataFrame(rows)
    for name in TABLE_COLUMNS:
        if name not in out.columns:
            out[name] = np.nan
    out["ratio"] = out["b_simple"] / out["b_crit"]
    return out[list(TABLE_COLUMNS)]


def summary_table(measured: pd.DataFrame, paper: pd.DataFrame | None = None, start: bool = False,
                  traces: pd.DataFrame | None = None) -> pd.DataFrame:
    """Measured and paper tasks in one tidy frame (the data of Fig. 4).

    Args:
        measured: :func:`load_task_summaries` output.
        paper: :func:`paper_table` output (default: loaded).
        start: if True, the core columns (``b_crit``, ``b_crit_stderr``, ``b_simple``,
            ``b_crit_kind`` and the range ends) hold the start-of-training values
            (``*_start``), so :func:`r2_report` and the Fig. 4 plot use them unchanged.
        traces: :func:`trace_table` rows to add (third-party workloads; left out when ``start``).

    Returns:
        Columns :data:`TABLE_COLUMNS`: ``task, units, b_crit, b_crit_stderr, b_simple,
        ratio`` (``b_simple/b_crit``), ``source`` ("measured" | "paper" | "traces"), then the kind
        of each ``B_crit`` ("value" | "lower_bound" | "upper_bound" | "range" |
        "not_measured" | "unresolved", measured bounds from ``b_crit_bound``, unresolved where the
        s.e. is ≥ :data:`UNRESOLVED_REL_SE` × the value), range ends, the start-of-training values and
        ``pooled`` (False for the :data:`NOT_POOLED` variants). Measured rows first.
    """
    paper = paper_table() if paper is None else paper
    parts = [_measured_rows(measured), _paper_rows(paper)]
    if traces is not None and not start and len(traces):
        parts.append(traces)
    table = pd.concat(parts, ignore_index=True)
    for name in TABLE_COLUMNS:
        if name not in table.columns:
            table[name] = np.nan
    if start:
        for quantity in ("b_crit", "b_simple"):
            for rest in ("", "_stderr", "_kind", "_low", "_high"):
                if f"{quantity}{rest}" in TABLE_COLUMNS:
                    table[f"{quantity}{rest}"] = table[f"{quantity}_start{rest}"]
    table["ratio"] = table["b_simple"] / table["b_crit"]
    return table[list(TABLE_COLUMNS)].reset_index(drop=True)


def median_abs_log10_ratio(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """The median of |log10(x / y)| over positive pairs (NaN when there are none): how far ``B_simple`` typically
    is from ``B_crit``, in decades."""
    lx, ly = _log_pairs(x, y)
    return float(np.median(np.abs(lx - ly))) if lx.size else float("nan")


def r2_report(table: pd.DataFrame) -> dict[str, float]:
    """R² of ``B_crit`` against ``B_simple`` (log10) for our tasks, the paper's, the third-party traces' and all.

    Only pooled rows whose ``b_crit_kind`` is "value" or "range" count (ranges at their
    geometric mean); bounds, unresolved values and the :data:`NOT_POOLED` variants are left out.

    Args:
        table: :func:`summary_table` output.

    Returns:
        For each group ``ours``, ``paper``, ``traces`` (when the table has them), ``all`` and
        ``paper_in_our_span`` (the paper's tasks whose B_crit lies within the range of ours: the like-for-like
        comparison): ``<group>_fit`` (:func:`r_squared_fit`), ``<group>_identity``
        (:func:`r_squared_identity`), ``<group>_median_log10`` (:func:`median_abs_log10_ratio`) and
        ``<group>_n``; NaN where fewer than 3 points remain.
    """
    points = table[table["b_crit_kind"].isin(_POINT_KINDS)]
    if "pooled" in points:
        points = points[points["pooled"].fillna(True).astype(bool)]
    ours = points[points["source"] == "measured"]
    paper = points[points["source"] == "paper"]
    subsets = {"ours": ours, "paper": paper}
    if (table["source"] == "traces").any():
        subsets["traces"] = points[points["source"] == "traces"]
    subsets["all"] = points
    if len(ours):
        low, high = ours["b_crit"].min(), ours["b_crit"].max()
        subsets["paper_in_our_span"] = paper[(paper["b_crit"] >= low) & (paper["b_crit"] <= high)]
    report: dict[str, float] = {}
    for name, rows in subsets.items():
        report[f"{name}_fit"] = r_squared_fit(rows["b_simple"], rows["b_crit"])
        report[f"{name}_identity"] = r_squared_identity(rows["b_simple"], rows["b_crit"])
        report[f"{name}_median_log10"] = median_abs_log10_ratio(rows["b_simple"], rows["b_crit"])
        report[f"{name}_n"] = float(len(_log_pairs(rows["b_simple"], rows["b_crit"])[0]))
    return report


def trace_goal_report(results: pd.DataFrame) -> dict[str, float]:
    """The third-party traces goal by goal: R² (free fit, y = x) and median |log10 ratio| of every resolved goal's
    B_crit against ``B_simple`` where the smallest-batch run reaches it (:func:`gns_utils.experiments.traces.trace_results`
    rows; bounds and unresolved fits left out), with the counts."""
    ok = results[resolved_trace_goals(results)]
    return {"fit": r_squared_fit(ok["noise_scale"], ok["b_crit"]),
            "identity": r_squared_identity(ok["noise_scale"], ok["b_crit"]),
            "median_log10": median_abs_log10_ratio(ok["noise_scale"], ok["b_crit"]),
            "n_points": float(len(ok)), "n_workloads": float(ok["workload"].nunique()),
            "n_left_out": float(len(results) - len(ok))}


# --------------------------------------------------------------------------- matched points
#: Per-goal predictors of B_crit(goal): column of :func:`goal_points` → what it is.
GOAL_PREDICTORS = {
    "b_simple_local_median": "B_simple at the goal, median over the best runs of all batch sizes",
    "b_simple_local_small_b": "B_simple at the goal on the best run at the smallest batch size",
    "b_simple_app_d": "B_simple averaged over training up to the goal (App. D), reference run",
    "b_simple_checkpoint": "B_simple at the goal's checkpoint from independent micro-batches, reference run",
    "b_noise": "B_noise (2.8) at the goal's checkpoint, Hessian-vector products, reference run",
    "b_simple_preconditioned": "B_simple of Adam's preconditioned gradient at the goal's checkpoint",
}


#: Per-goal spreads / standard errors of the predictors, carried into :func:`goal_points`.
_SPREADS = ("b_simple_local_log10_spread", "b_noise_stderr", "b_simple_checkpoint_stderr",
            "b_simple_preconditioned_stderr")
#: The calibration task's exact answers per goal: the App. D prediction (the average of the exact
#: B_noise over the full-batch path) and the constant-learning-rate B_crit of the exact expected loss.
_EXACT = ("b_crit_predicted", "b_crit_exact")


def calibration_report(points: pd.DataFrame) -> dict[str, float]:
    """How well the pipeline recovers the exact answers on the synthetic task: the ratios
    ``B_crit(measured) / B_crit_predicted`` and ``/ B_crit_exact`` (median, min, max) over its goals, and
    at how many goals the 95 % interval covers the exact value (``n_exact_covered``); beside them the paper's
    A.3 reading of the same runs against the exact B_crit (``fastest_ema_over_exact_min`` / ``_max``), and the
    span of the exact B_crit over those goals (``exact_min``, ``exact_max``, ``exact_decades``). Every synthetic
    sweep's goals count (the calibration problem is swept twice, far from and near its loss floor)."""
    synthetic = points[points["synthetic"].astype(bool)] if "synthetic" in points else points.iloc[:0]
    out: dict[str, float] = {"n_points": int(len(synthetic))}
    for column in _EXACT:
        ok = synthetic[(synthetic[column].astype(float) > 0) & (synthetic["b_crit"] > 0)]
        ratio = (ok["b_crit"] / ok[column].astype(float)).to_numpy(float)
        for name, fn in (("median", np.median), ("min", np.min), ("max", np.max)):
            out[f"measured_over_{column.removeprefix('b_crit_')}_{name}"] = float(fn(ratio)) if ratio.size else math.nan
    if "b_crit_fastest_ema" in synthetic:  # the paper's A.3 reading of the same runs: the method before
        ok = synthetic[(synthetic["b_crit_exact"].astype(float) > 0) & (synthetic["b_crit_fastest_ema"] > 0)]
        ratio = (ok["b_crit_fastest_ema"] / ok["b_crit_exact"].astype(float)).to_numpy(float)
        out["fastest_ema_over_exact_min"] = float(ratio.min()) if ratio.size else math.nan
        out["fastest_ema_over_exact_max"] = float(ratio.max()) if ratio.size else math.nan
    if {"ci_low", "ci_high"} <= set(synthetic.columns):
        exact = synthetic["b_crit_exact"].astype(float)
        out["n_exact_covered"] = int(((synthetic["ci_low"] <= exact) & (exact <= synthetic["ci_high"])).sum())
    exact = synthetic["b_crit_exact"].astype(float) if "b_crit_exact" in synthetic else pd.Series(dtype=float)
    exact = exact[(exact > 0) & (synthetic["b_crit"].astype(float) > 0)] if len(exact) else exact
    if len(exact):  # the span of B_crit the calibration checks the measurement over
        out["exact_min"], out["exact_max"] = float(exact.min()), float(exact.max())
        out["exact_decades"] = float(np.log10(exact.max() / exact.min()))
    return out


def goal_points(measured: pd.DataFrame) -> pd.DataFrame:
    """Every goal of every measured task as one point: B_crit(goal) and the noise scales matched to it.

    Args:
        measured: :func:`load_task_summaries` output (its ``path`` column names each summary).

    Returns:
        One row per (task, goal) whose (2.11) fit is a value (not a bound): ``task, units, goal,
        goal_index`` (0 = first goal), ``b_crit, b_crit_stderr`` (seed-aware where the task has seeds),
        ``b_crit_fit_stderr, b_crit_seed_stderr, n_seeds, ci_low, ci_high`` (its 95 % interval),
        ``b_crit_fastest_ema`` (the paper's A.3 reading of the same runs),
        ``b_crit_resolved`` (:func:`is_resolved`), ``pooled`` (False for :data:`NOT_POOLED` variants and
        the synthetic task), the :data:`GOAL_PREDICTORS` columns and their spreads / standard errors
        (NaN where a summary has none).
    """
    extra = ("b_crit_fit_stderr", "b_crit_seed_stderr", "n_seeds", "ci_low", "ci_high", "b_crit_fastest_ema")
    rows = []
    for task in measured.itertuples():
        data = json.loads(Path(task.path).read_text())
        for k, goal in enumerate(data.get("goals", [])):
            if goal.get("bound") != "none" or goal.get("b_crit") is None:
                continue
            synthetic = data.get("domain") == "synthetic"
            rows.append({"task": task.task, "units": task.units, "goal": goal["goal"], "goal_index": k,
                         "b_crit": goal["b_crit"], "b_crit_stderr": goal.get("b_crit_stderr"),
                         **{c: goal.get(c) for c in extra},
                         "b_crit_smoothing_systematic": goal.get("b_crit_smoothing_systematic"),
                         "b_crit_seed_rel_std": goal.get("b_crit_seed_rel_std"),
                         "synthetic": synthetic, "pooled": not synthetic and task.task not in NOT_POOLED,
                         **{c: goal.get(c) for c in (*GOAL_PREDICTORS, *_SPREADS, *_EXACT)}})
    columns = ["task", "units", "goal", "goal_index", "b_crit", "b_crit_stderr", *extra,
               "b_crit_smoothing_systematic", "b_crit_seed_rel_std", "synthetic", "pooled",
               *GOAL_PREDICTORS, *_SPREADS, *_EXACT]
    frame = pd.DataFrame(rows, columns=columns)
    numeric = [c for c in columns if c not in ("task", "units", "synthetic", "pooled")]
    frame[numeric] = frame[numeric].apply(pd.to_numeric, errors="coerce")
    frame["b_crit_resolved"] = is_resolved(frame["b_crit"], frame["b_crit_stderr"]) if len(frame) else []
    return frame


def predictor_resolved(points: pd.DataFrame, predictor: str) -> np.ndarray:
    """Where ``predictor`` is positive and, if it has a standard error column, resolved (:func:`is_resolved`)."""
    se = points[f"{predictor}_stderr"] if f"{predictor}_stderr" in points else np.full(len(points), np.nan)
    return is_resolved(points[predictor], se) if len(points) else np.zeros(0, bool)


def resolved_goals(points: pd.DataFrame, predictor: str) -> np.ndarray:
    """Where both ``B_crit`` and ``predictor`` are positive and resolved (:func:`is_resolved`)."""
    if not len(points):
        return np.zeros(0, bool)
    return predictor_resolved(points, predictor) & is_resolved(points["b_crit"], points["b_crit_stderr"])


def slope_groups(slopes: pd.DataFrame) -> dict[str, list[str]]:
    """The pooled tasks by their within-task slope (:func:`task_slopes`): ``follow`` (within 2 s.e. of 1),
    ``steeper``, ``flatter`` (beyond 2 s.e.), among slopes with s.e. < 0.5, and ``loose`` (s.e. ≥ 0.5 or none)."""
    pooled = slopes[slopes["pooled"].astype(bool)]
    se = pd.to_numeric(pooled["slope_stderr"], errors="coerce")
    determined = pooled[se < 0.5]
    low = determined["slope"] - 2 * determined["slope_stderr"]
    high = determined["slope"] + 2 * determined["slope_stderr"]
    return {"follow": list(determined[(low <= 1) & (1 <= high)]["task"]), "steeper": list(determined[low > 1]["task"]),
            "flatter": list(determined[high < 1]["task"]), "loose": list(pooled[~(se < 0.5)]["task"])}


def ratio_interval(points: pd.DataFrame, predictor: str) -> tuple[np.ndarray, np.ndarray]:
    """95 % interval of ``predictor / B_crit`` per point: the predictor over B_crit's interval (``ci_low``,
    ``ci_high``; ± 1.96 s.e. where missing), widened by the predictor's own relative s.e. (1.96×, in log)."""
    b, p = points["b_crit"].to_numpy(float), points[predictor].to_numpy(float)
    se = points["b_crit_stderr"].to_numpy(float)
    low = points["ci_low"].to_numpy(float) if "ci_low" in points else np.full(len(points), np.nan)
    high = points["ci_high"].to_numpy(float) if "ci_high" in points else np.full(len(points), np.nan)
    low = np.where(np.isfinite(low) & (low > 0), low, np.maximum(b - 1.96 * se, 1e-3 * b))
    high = np.where(np.isfinite(high), high, b + 1.96 * se)
    own = points[f"{predictor}_stderr"].to_numpy(float) / p if f"{predictor}_stderr" in points else np.zeros(len(points))
    widen = np.exp(1.96 * np.nan_to_num(own, nan=0.0))
    return p / high / widen, p / low * widen


def _pool_stats(x: pd.Series, y: pd.Series) -> dict[str, float]:
    ratio = (x / y).to_numpy(float)
    return {"fit": r_squared_fit(x, y), "identity": r_squared_identity(x, y),
            "median_abs_log10_ratio": float(np.median(np.abs(np.log10(ratio)))) if ratio.size else math.nan,
            "n_points": int(ratio.size)}


def goal_report(points: pd.DataFrame) -> dict[str, dict[str, float]]:
    """For each per-goal predictor, over the pooled real tasks' resolved goals: R² (free fit and y = x, log10)
    and the factor ``predictor / B_crit`` (median, min, max, median |log10|) over every goal, the same for
    one point per task (its last resolved goal: ``task_*``), how many ratios differ from 1 beyond their
    95 % interval (:func:`ratio_interval`), and how many goals were left out as unresolved.

    The synthetic calibration task and the :data:`NOT_POOLED` variants are left out; a goal is left out as
    unresolved where B_crit or the predictor has a standard error ≥ :data:`UNRESOLVED_REL_SE` × its value.

    Returns:
        ``{predictor: {"fit", "identity", "ratio_median", "ratio_min", "ratio_max", "median_abs_log10_ratio",
        "n_points", "n_tasks", "n_unresolved", "n_differ_from_one", "task_fit", "task_identity",
        "task_median_abs_log10_ratio"}}``.
    """
    report = {}
    if "pooled" in points:
        points = points[points["pooled"].astype(bool)]
    elif "synthetic" in points:
        points = points[~points["synthetic"].astype(bool)]
    for column in GOAL_PREDICTORS:
        present = points[(points[column] > 0) & (points["b_crit"] > 0)]
        keep = resolved_goals(present, column)
        ok = present[keep]
        ratio = (ok[column] / ok["b_crit"]).to_numpy(float)
        low, high = ratio_interval(ok, column) if len(ok) else (np.zeros(0), np.zeros(0))
        last = ok.sort_values("goal_index").groupby("task").tail(1)
        task = _pool_stats(last[column], last["b_crit"])
        report[column] = {**_pool_stats(ok[column], ok["b_crit"]),
                          "ratio_median": float(np.median(ratio)) if ratio.size else math.nan,
                          "ratio_min": float(ratio.min()) if ratio.size else math.nan,
                          "ratio_max": float(ratio.max()) if ratio.size else math.nan,
                          "n_tasks": int(ok["task"].nunique()), "n_unresolved": int((~keep).sum()),
                          "n_differ_from_one": int(((low > 1) | (high < 1)).sum()),
                          "task_fit": task["fit"], "task_identity": task["identity"],
                          "task_median_abs_log10_ratio": task["median_abs_log10_ratio"]}
    return report


def task_slopes(points: pd.DataFrame, predictor: str = "b_simple_local_median") -> pd.DataFrame:
    """Within each real task, how B_crit(goal) follows the predictor from goal to goal.

    Over the task's resolved goals: the slope of ``log B_crit`` on ``log predictor`` (least squares,
    :func:`scipy.stats.linregress`) with its standard error (1 means B_crit grows as the predictor does;
    NaN with fewer than 3 goals), the range of ``predictor / B_crit``, and how many of those ratios lie
    above / below 1 beyond their 95 % interval (:func:`ratio_interval`).

    Returns:
        One row per task: ``task, pooled, n_goals, n_unresolved, slope, slope_stderr, ratio_min, ratio_max,
        n_above_one, n_below_one``.
    """
    rows = []
    real = points[~points["synthetic"].astype(bool)] if "synthetic" in points else points
    for task, group in real.groupby("task", sort=False):
        present = group[(group[predictor] > 0) & (group["b_crit"] > 0)]
        keep = resolved_goals(present, predictor)
        ok = present[keep]
        x, y = np.log10(ok[predictor].to_numpy(float)), np.log10(ok["b_crit"].to_numpy(float))
        slope = stats.linregress(x, y) if len(ok) >= 3 and np.ptp(x) > 0 else None
        low, high = ratio_interval(ok, predictor) if len(ok) else (np.zeros(0), np.zeros(0))
        ratio = 10.0 ** (x - y)
        rows.append({"task": task, "pooled": task not in NOT_POOLED, "n_goals": int(len(ok)),
                     "n_unresolved": int((~keep).sum()),
                     "slope": float(slope.slope) if slope else math.nan,
                     "slope_stderr": float(slope.stderr) if slope else math.nan,
                     "ratio_min": float(ratio.min()) if ratio.size else math.nan,
                     "ratio_max": float(ratio.max()) if ratio.size else math.nan,
                     "n_above_one": int((low > 1).sum()), "n_below_one": int((high < 1).sum())})
    return pd.DataFrame(rows, columns=["task", "pooled", "n_goals", "n_unresolved", "slope", "slope_stderr",
                                       "ratio_min", "ratio_max", "n_above_one", "n_below_one"])


# --------------------------------------------------------------------------- text
def _range(values: Sequence[float]) -> str:
    values = [v for v in values if np.isfinite(v)]
    return f"{min(values):.2f}–{max(values):.2f}" if values else "–"


#: The groups of :func:`r2_report` in the verdict's span table: key → name.
SPAN_GROUPS = {"ours": "ours (independent tasks)", "paper": "paper (Table 1)",
               "paper_in_our_span": "paper, tasks within our B_crit range", "traces": "AdaptDL / Pollux traces",
               "all": "all together"}


def span_markdown(r2: dict[str, Any]) -> str:
    """Fig. 4's statistics over the span, one row per group of :func:`r2_report` (:data:`SPAN_GROUPS`): points, R²
    of a free fit and of y = x, and the median |log10(B_simple / B_crit)| (decades)."""
    def cell(value: Any, digits: int = 2) -> str:
        return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"

    lines = ["| points | n | R², free fit | R², y = x | median abs. log10(B_simple / B_crit) |", "|---|---|---|---|---|"]
    for key, name in SPAN_GROUPS.items():
        if f"{key}_n" in r2 and r2[f"{key}_n"] is not None:
            lines.append(f"| {name} | {int(r2[f'{key}_n'])} | {cell(r2.get(f'{key}_fit'))} | "
                         f"{cell(r2.get(f'{key}_identity'))} | {cell(r2.get(f'{key}_median_log10'))} |")
    return "\n".join(lines)


def verdict_markdown(table: pd.DataFrame, r2: dict[str, float], by_goal: dict[str, dict[str, float]],
                     slopes: pd.DataFrame, calibration: dict[str, float],
                     predictor: str = "b_simple_local_median", traces: dict[str, float] | None = None) -> str:
    """The summary notebook's verdict, in words, computed from the statistics of this module.

    Per task: the range of ``predictor / B_crit`` over its resolved goals, how many differ from 1 beyond
    their 95 % interval, and the within-task slope of log B_crit on log predictor (± s.e.); then the pooled
    statistics per goal and per task, the unresolved goals left out, and the calibration task's recovery; with
    ``traces`` (:func:`trace_goal_report`), the third-party workloads goal by goal; and Fig. 4's statistics over
    the span (:func:`span_markdown`).
    """
    lines = ["| task | goals | B_simple / B_crit | above 1 / below 1 beyond error | slope of log B_crit on "
             "log B_simple ± s.e. |", "|---|---|---|---|---|"]
    for row in slopes.itertuples():
        slope = f"{row.slope:.2f} ± {row.slope_stderr:.2f}" if np.isfinite(row.slope) else "– (< 3 goals)"
        note = " (shown, not pooled)" if not row.pooled else ""
        lines.append(f"| {display_name(row.task)}{note} | {row.n_goals} (+{row.n_unresolved} unresolved) | "
                     f"{_range([row.ratio_min, row.ratio_max])} | {row.n_above_one} / {row.n_below_one} | {slope} |")
    g = by_goal[predictor]
    pooled = table[(table["source"] == "measured") & table["pooled"].astype(bool)]
    groups = {k: [display_name(t) for t in v] for k, v in slope_groups(slopes).items()}
    follow, steeper, flatter, loose = (groups[k] for k in ("follow", "steeper", "flatter", "loose"))
    consistent = [display_name(r.task) for r in slopes.itertuples() if r.pooled and r.n_goals and r.n_above_one + r.n_below_one == 0]
    text = [
        "\n".join(lines), "",
        f"**Goal by goal** ({g['n_points']} resolved goals of {g['n_tasks']} independent tasks; "
        f"{g['n_unresolved']} goal{'' if g['n_unresolved'] == 1 else 's'} left out as unresolved, s.e. ≥ {UNRESOLVED_REL_SE:g} × the value): "
        f"B_simple / B_crit spans {_range([g['ratio_min'], g['ratio_max']])} (median {g['ratio_median']:.2f}, "
        f"median |log10| {g['median_abs_log10_ratio']:.2f}); {g['n_differ_from_one']} of the {g['n_points']} ratios "
        f"differ from 1 beyond their 95 % interval. R² of y = x {g['identity']:.2f} (free fit {g['fit']:.2f}); "
        f"with one point per task (its last resolved goal) {g['task_identity']:.2f} (free fit {g['task_fit']:.2f}).",
        "",
        f"**Within tasks**, B_crit grows as B_simple does (slope within 2 s.e. of 1) on: "
        f"{', '.join(follow) if follow else 'none'}; faster than B_simple on: {', '.join(steeper) if steeper else 'none'}; "
        f"slower on: {', '.join(flatter) if flatter else 'none'}; slope not determined (s.e. ≥ 0.5): "
        f"{', '.join(loose) if loose else 'none'}. **Tasks where B_simple = B_crit within the error at every "
        f"resolved goal**: {', '.join(consistent) if consistent else 'none'}.",
        "",
        f"**Whole runs** (Table 1's convention, {len(pooled)} independent tasks): R² of y = x {r2['ours_identity']:.2f} "
        f"(free fit {r2['ours_fit']:.2f}); the paper's tasks {r2['paper_identity']:.2f} ({r2['paper_fit']:.2f}).",
    ]
    if traces and traces.get("n_points"):
        text += ["", f"**Third-party traces** (AdaptDL / Pollux, learning rates by AdaptDL's scaling rule, not tuned per "
                 f"batch size): {int(traces['n_points'])} resolved goals of {int(traces['n_workloads'])} workloads "
                 f"({int(traces['n_left_out'])} goals left out as bounds or unresolved); B_simple where the goal is "
                 f"reached against B_crit: R² of y = x {traces['identity']:.2f} (free fit {traces['fit']:.2f}), median "
                 f"|log10(B_simple / B_crit)| {traces['median_log10']:.2f}."]
    if "ours_n" in r2:
        text += ["", "**Fig. 4 over the span** (one point per task; bounds and unresolved values left out):", "",
                 span_markdown(r2)]
    if calibration.get("n_points"):
        covered = calibration.get("n_exact_covered")
        text += ["", f"**Calibration** (noisy linear regression, exact answer known): measured / exact B_crit "
                 f"{calibration['measured_over_exact_min']:.2f}–{calibration['measured_over_exact_max']:.2f} over "
                 f"{calibration['n_points']} goals"
                 + (f" whose exact B_crit spans {calibration['exact_decades']:.1f} decades "
                    f"({calibration['exact_min']:,.0f} → {calibration['exact_max']:,.0f} examples)" if calibration.get("exact_decades") else "")
                 + (f"; the 95 % interval covers the exact value at {covered} of them." if covered is not None else ".")
                 + (f" The paper's A.3 reading of the same runs (fastest run of one seed, causal EMA): "
                    f"{calibration['fastest_ema_over_exact_min']:.2f}–{calibration['fastest_ema_over_exact_max']:.2f}."
                    if calibration.get("fastest_ema_over_exact_min") is not None
                    and np.isfinite(calibration["fastest_ema_over_exact_min"]) else "")]
    return "\n".join(text)


# --------------------------------------------------------------------------- outputs
def profile_tasks(profile: str) -> list[str]:
    """Names of the tasks every notebook runs at ``profile`` (from :mod:`gns_utils.experiments.profiles`).

    Args:
        profile: "smoke", "cpu" or "paper".

    Returns:
        Task names over all domains, in preset order.
    """
    return [p["task"] for domain in PRESETS for p in presets(domain, profile)]


def _finite(value: float | int) -> float | int | None:
    """JSON-ready: counts stay integers, non-finite values become None."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    return float(value) if np.isfinite(value) else None


def write_summary(
    path: str | os.PathLike,
    table: pd.DataFrame,
    r2: dict[str, float],
    missing: Sequence[str] = (),
    profile: str | None = None,
    points: pd.DataFrame | None = None,
    by_goal: dict[str, dict[str, float]] | None = None,
    calibration: dict[str, float] | None = None,
    slopes: pd.DataFrame | None = None,
    traces: pd.DataFrame | None = None,
    trace_goals: dict[str, float] | None = None,
) -> Path:
    """Write the cross-task summary (``tasks``, ``r2``, ``missing``, ``profile``) atomically.

    Args:
        path: destination, e.g. ``results/summary.json``.
        table: :func:`summary_table` output (NaN becomes ``null``).
        r2: :func:`r2_report` output.
        missing: expected tasks without a summary.
        profile: the profile the summaries came from.
        points: :func:`goal_points` output (written as ``goal_points``).
        by_goal: :func:`goal_report` output (written as ``r2_by_goal``).
        calibration: :func:`calibration_report` output (written as ``calibration``).
        slopes: :func:`task_slopes` output (written as ``task_slopes``).
        traces: :func:`gns_utils.experiments.traces.trace_results` output (written as ``trace_points``).
        trace_goals: :func:`trace_goal_report` output (written as ``trace_goals``).

    Returns:
        The path written.
    """
    records = json.loads(table.to_json(orient="records"))
    data = {"profile": profile, "paper_source": PAPER_SOURCE, "tasks": records,
            "r2": {k: (None if not np.isfinite(v) else float(v)) for k, v in r2.items()},
            "missing": list(missing), "provenance": provenance()}
    if points is not None:
        data["goal_points"] = json.loads(points.to_json(orient="records"))
    if by_goal is not None:
        data["r2_by_goal"] = {k: {m: _finite(v) for m, v in r.items()} for k, r in by_goal.items()}
    if slopes is not None:
        data["task_slopes"] = json.loads(slopes.to_json(orient="records"))
    if calibration is not None:
        data["calibration"] = {k: _finite(v) for k, v in calibration.items()}
    if traces is not None:
        data["trace_points"] = json.loads(traces.to_json(orient="records"))
    if trace_goals is not None:
        data["trace_goals"] = {k: _finite(v) for k, v in trace_goals.items()}
    return Path(write_json_if_changed(path, data))
