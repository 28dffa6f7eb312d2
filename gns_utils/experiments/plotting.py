"""Figures of McCandlish et al. (2018); every helper draws on a given ``ax``.

Symbols: ``B`` batch size; ``S`` steps and ``E = B·S`` examples to a goal;
``S_min``, ``E_min``, ``B_crit = E_min/S_min`` (eq. 2.11, 2.12);
``B_simple = tr Σ/|G|²`` (eq. 2.9); ``ε_opt(B) = ε_max/(1 + B_noise/B)`` (eq. 2.6).

Call :func:`set_style` once (notebooks do it in their first compute cell), draw with the
helpers, and write each figure with :func:`save_figure` (PNG and PDF).

* :func:`plot_training_curves`   a metric against steps or examples per batch size (Fig. 6).
* :func:`plot_pareto_fronts`     steps against examples per goal with eq. 2.11 fits (Fig. 7 left).
* :func:`plot_b_crit_by_goal`    B_crit per goal, optionally B_simple, over training (Fig. 7 right).
* :func:`plot_optimal_lr`        best learning rate against batch size with eq. 2.6 (Fig. 5 left).
* :func:`plot_noise_scale`       B_simple against loss, examples or steps (Fig. 8).
* :func:`plot_bcrit_vs_bsimple`  B_crit against B_simple, one point per task (Fig. 4).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.colors import Colormap
from matplotlib.figure import Figure

from gns_utils.critical_batch import TradeoffFit
from gns_utils.experiments.profiles import DISPLAY_NAMES, display_name
from gns_utils.experiments.summary import is_resolved, resolved_goals, resolved_trace_goals
from gns_utils.theory import fit_optimal_lr, optimal_lr

__all__ = [
    "plot_b_crit_by_goal",
    "plot_bcrit_vs_bsimple",
    "plot_bcrit_vs_bsimple_by_goal",
    "plot_noise_scale",
    "plot_optimal_lr",
    "plot_pareto_fronts",
    "plot_training_curves",
    "save_figure",
    "set_style",
]

SEQUENTIAL_CMAP = "viridis"  # ordered hues (batch size, goal)
#: Colours of the points that are not ours: the paper's Table 1 (grey) and third-party traces (black); ours take
#: :func:`task_colour`.
SOURCE_COLOURS = {"measured": "C0", "paper": "grey", "traces": "black"}
#: Markers of the third-party traces (AdaptDL / Pollux) in Fig. 4, one per workload in order of appearance
#: (black, hollow, named in the legend).
TRACE_MARKERS = ("D", "P", "X", "*", "h", "p", "v", "<")
UNIT_MARKERS = {"images": "o", "tokens": "s", "frames": "^"}
AXIS_LABELS = {
    "step": "optimizer steps $S$",
    "examples": "examples $E$",
    "loss": "training loss",
    "b_simple": r"$B_\mathrm{simple}$",
    "b_crit": r"$B_\mathrm{crit}$",
    "batch_examples": "batch size $B$ (examples)",
    "batch_units": "batch size $B$ (units)",
    "error": "training error",
    "lr": r"learning rate $\epsilon$",
}
_STYLE_SET = False


def task_colour(task: str, fallback: int = 0) -> Any:
    """One colour per task, the same in every figure (tab10 without its grey, which marks the paper's points, then
    the dark shades of tab20b);
    tasks without a display name take the ``fallback``-th colour."""
    palette = [c for k, c in enumerate(plt.get_cmap("tab10").colors) if k != 7] + list(plt.get_cmap("tab20b").colors[::4])
    names = list(DISPLAY_NAMES)
    return palette[(names.index(task) if task in names else fallback) % len(palette)]


def set_style(force: bool = False) -> None:
    """Apply the project's one plot style (seaborn "whitegrid", "notebook" context).

    Idempotent: only the first call (or ``force=True``) changes matplotlib's rcParams.
    """
    global _STYLE_SET
    if _STYLE_SET and not force:
        return
    sns.set_theme(context="notebook", style="whitegrid", palette="deep")
    plt.rcParams.update({"figure.dpi": 100, "savefig.bbox": "tight", "legend.fontsize": "small"})
    _STYLE_SET = True


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 150) -> tuple[Path, Path]:
    """Write ``<path>.png`` (``dpi``) and ``<path>.pdf``, creating folders; the same figure gives the same bytes.

    Args:
        fig: the figure.
        path: destination without suffix (a ``.png`` / ``.pdf`` suffix is dropped).
        dpi: resolution of the PNG.

    Returns:
        ``(png_path, pdf_path)``.
    """
    base = Path(path)
    if base.suffix.lower() in (".png", ".pdf"):
        base = base.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    png, pdf = base.with_name(base.name + ".png"), base.with_name(base.name + ".pdf")
    # no creation date: redrawing the same figure gives the same bytes, so looking leaves the tree clean
    fig.savefig(png, dpi=dpi, bbox_inches="tight")
    fig.savefig(pdf, bbox_inches="tight", metadata={"CreationDate": None})
    return png, pdf


def _label(name: str, units: str | None = None) -> str:
    """Axis label of a column; ``units`` ("images", "tokens" ...) names what ``examples`` and ``batch_units`` count."""
    if units and name == "examples":
        return f"{units} processed $E$"
    if units and name == "batch_units":
        return f"batch size $B$ ({units})"
    return AXIS_LABELS.get(name, name.replace("_", " "))


def _ordered_colours(values: Sequence[Any], cmap: str | Colormap = SEQUENTIAL_CMAP) -> dict[Any, Any]:
    """One colour per value, in the given order, from a sequential colormap."""
    colormap = plt.get_cmap(cmap) if isinstance(cmap, str) else cmap
    n = len(values)
    return {v: colormap(0.9 * k / max(n - 1, 1)) for k, v in enumerate(values)}


def _noise_column(frame: pd.DataFrame, column: str) -> str:
    """``column``, or the run metrics' ``b_simple_ema`` when ``b_simple`` is asked for but absent."""
    if column not in frame.columns and column == "b_simple" and "b_simple_ema" in frame.columns:
        return "b_simple_ema"
    return column


def _fmt(value: Any) -> str:
    """A legend entry: ``:g`` (16384, 0.3), but whole numbers from a million on with separators (1,048,576), not
    in ``:g``'s exponent form."""
    if not isinstance(value, (int, float, np.integer, np.floating)):
        return str(value)
    return f"{int(value):,}" if abs(value) >= 1e6 and float(value).is_integer() else f"{value:g}"


# --------------------------------------------------------------------------- training
def plot_training_curves(
    ax: Axes,
    metrics: pd.DataFrame,
    x: str = "step",
    y: str = "loss",
    hue: str = "batch_units",
    logy: bool = False,
    units: str | None = None,
) -> Axes:
    """A metric against steps or examples, one line per ``hue`` value (Fig. 6).

    Args:
        ax: target axes.
        metrics: tidy frame with columns ``x``, ``y`` and ``hue`` (e.g. ``batch_units``,
            ``step``, ``examples``, ``loss``), one row per logged point.
        x: "step" or "examples" (log scale; non-positive values are not drawn).
        y: the metric column.
        hue: one line per value, coloured in sorted order.
        logy: log scale on y as well.
        units: what ``examples`` and ``batch_units`` count ("images", "tokens"), for the labels.

    Returns:
        ``ax``.
    """
    levels = sorted(metrics[hue].dropna().unique())
    colours = _ordered_colours(levels)
    for level in levels:
        part = metrics[metrics[hue] == level].sort_values(x)
        part = part[part[x] > 0]
        ax.plot(part[x], part[y], color=colours[level], label=_fmt(level), lw=1.2)
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(_label(x, units))
    ax.set_ylabel(_label(y))
    if levels:
        ax.legend(title=_label(hue, units), ncols=2 if len(levels) > 6 else 1)
    return ax


# --------------------------------------------------------------------------- B_crit
def plot_pareto_fronts(
    ax: Axes,
    best: pd.DataFrame,
    fits: Mapping[Any, TradeoffFit | None],
    extend: float = 4.0,
    units: str | None = None,
) -> Axes:
    """Steps against examples per goal with the fitted eq. 2.11 hyperbolas (Fig. 7 left).

    Each goal gets one colour: its measured ``(E, S)`` points, the curve
    ``(E(B), S(B))`` of its :class:`~gns_utils.critical_batch.TradeoffFit` over the
    tested batch sizes widened by ``extend`` each way, and a star at
    ``(2·E_min, 2·S_min)``, the point ``B = B_crit``. A fit flagged as a bound is drawn
    dashed and without a star.

    Args:
        ax: target axes.
        best: :func:`~gns_utils.critical_batch.best_runs` output (``goal``,
            ``batch_units``, ``steps``, ``examples``).
        fits: ``{goal: TradeoffFit or None}``, e.g. from
            :func:`~gns_utils.critical_batch.fit_tradeoff_by_goal`.
        extend: factor by which the curve extends beyond the tested batch sizes.
        units: what ``examples`` counts ("images", "tokens"), for the x label.

    Returns:
        ``ax``.
    """
    goals = list(pd.unique(best["goal"]))
    colours = _ordered_colours(goals)
    for goal in goals:
        pts = best[(best["goal"] == goal) & best["steps"].notna()]
        colour = colours[goal]
        ax.scatter(pts["examples"], pts["steps"], color=colour, s=18, zorder=3, label=f"goal {_fmt(goal)}")
        fit = fits.get(goal)
        if fit is None or pts.empty:
            continue
        b = np.geomspace(pts["batch_units"].min() / extend, pts["batch_units"].max() * extend, 200)
        bounded = fit.bound != "none"
        ax.plot(fit.examples(b), fit.steps(b), color=colour, lw=1.0, ls="--" if bounded else "-")
        if not bounded:
            ax.scatter([2 * fit.e_min], [2 * fit.s_min], marker="*", s=90, color=colour,
                       edgecolor="black", linewidth=0.5, zorder=4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(_label("examples", units))
    ax.set_ylabel(_label("step"))
    if goals:
        ax.legend(title=r"$\star$: $B=B_\mathrm{crit}$", ncols=2 if len(goals) > 5 else 1)
    return ax


def plot_b_crit_by_goal(
    ax: Axes,
    table: pd.DataFrame,
    noise: pd.DataFrame | None = None,
    noise_x: str | None = None,
    noise_y: str = "b_simple",
    invert_x: bool | None = None,
    goal_label: str | None = None,
    b_noise: pd.DataFrame | None = None,
    metric: str | None = None,
    matched: pd.DataFrame | None = None,
    goal_floor: float | None = None,
) -> Axes:
    """``B_crit`` per goal with error bars and bound markers, optionally ``B_simple`` (Fig. 7 right).

    Error bars span ``ci_low``–``ci_high``. Rows with ``bound == "upper"`` are drawn
    as downward triangles with a downward arrow (``B_crit ≤`` the value), ``"lower"``
    as upward triangles with an upward arrow; ``"insufficient"`` rows are skipped.

    Args:
        ax: target axes.
        table: :func:`~gns_utils.critical_batch.b_crit_by_goal` output, goals in
            training order.
        noise: optional frame of the noise scale over training (e.g. a run's
            ``metrics.csv``), drawn as a line of ``noise_y`` against ``noise_x``.
        noise_x: goal-like column of ``noise``; default ``metric``, else "loss".
        noise_y: noise-scale column; "b_simple" falls back to ``b_simple_ema``.
        invert_x: invert the x axis; default (None) inverts when the goals decrease
            along the table (loss or error goals), so training runs left to right.
        goal_label: x-axis label; default "goal (training <metric>)".
        b_noise: optional frame with columns ``goal`` and ``b_noise`` (B_noise of
            eq. 2.8 measured at the goal checkpoints), drawn as crosses.
        metric: name of the goal metric ("loss", "error" ...), for the defaults above.
        matched: optional per-goal matched B_simple (:func:`gns_utils.experiments.report.matched_by_goal`:
            ``goal``, ``b_simple_local_median``, ``_min``, ``_max``), drawn as diamonds with range bars.
        goal_floor: the metric's floor (e.g. the noise floor σ²/2 of noisy linear regression): goals spaced
            geometrically towards it are then drawn as ``goal − floor`` on a log axis.

    Returns:
        ``ax``.
    """
    if goal_floor is not None:  # every goal-like x as its distance to the floor, on a log axis
        def shift(frame: pd.DataFrame | None, column: str = "goal") -> pd.DataFrame | None:
            if frame is None or frame.empty or column not in frame:
                return frame
            return frame.assign(**{column: frame[column] - goal_floor})

        table, b_noise, matched = shift(table), shift(b_noise), shift(matched)
        noise = shift(noise, noise_x or metric or "loss")
        goal_label = goal_label or f"goal: {metric or 'loss'} above its floor {goal_floor:g}"
    ok = table[table["bound"] != "insufficient"]
    fitted = ok[ok["bound"] == "none"]
    yerr = np.vstack([fitted["b_crit"] - fitted["ci_low"], fitted["ci_high"] - fitted["b_crit"]])
    ax.errorbar(fitted["goal"], fitted["b_crit"], yerr=np.where(np.isfinite(yerr), yerr, 0.0), fmt="o",
                color="C0", capsize=3, label=r"$B_\mathrm{crit}$ (eq. 2.11 fit)")
    for kind, marker, sign, text in (("upper", "v", -1, "upper bound"), ("lower", "^", 1, "lower bound")):
        rows = ok[ok["bound"] == kind]
        if rows.empty:
            continue
        ax.scatter(rows["goal"], rows["b_crit"], marker=marker, color="C0", s=50, label=rf"$B_\mathrm{{crit}}$ {text}")
        for g, v in zip(rows["goal"], rows["b_crit"]):
            ax.annotate("", xy=(g, v * 3.0**sign), xytext=(g, v),
                        arrowprops=dict(arrowstyle="->", color="C0", lw=1.0))
    noise_x = noise_x or metric or "loss"
    if noise is not None and not noise.empty:
        y_col = _noise_column(noise, noise_y)
        line = noise[[noise_x, y_col]].dropna()
        line = line[line[y_col] > 0].sort_values(noise_x)
        ax.plot(line[noise_x], line[y_col], color="C3", lw=1.2, label=_label("b_simple") + " (reference run, EMA)")
    if matched is not None and not matched.empty:
        pts = matched.dropna(subset=["b_simple_local_median"])
        yerr = np.vstack([pts["b_simple_local_median"] - pts["b_simple_local_min"],
                          pts["b_simple_local_max"] - pts["b_simple_local_median"]])
        ax.errorbar(pts["goal"], pts["b_simple_local_median"], yerr=yerr, fmt="D", color="C1", capsize=3, ms=5,
                    label=_label("b_simple") + " at the goal (median over B, range)")
    checkpoint_series = (("b_noise", "x", "C2", r"$B_\mathrm{noise}$ (eq. 2.8) at the goal"),
                         ("b_simple_preconditioned", "P", "C4", _label("b_simple") + " in Adam's metric at the goal"))
    unresolved = []  # (goal, value, colour): s.e. >= half the value, drawn at the axis edge, not scaling it
    for column, marker, colour, text in checkpoint_series:
        if b_noise is None or b_noise.empty or not {"goal", column} <= set(b_noise.columns):
            continue
        pts = b_noise[b_noise[column] > 0]
        se = pts[f"{column}_stderr"] if f"{column}_stderr" in pts else pd.Series(np.nan, index=pts.index)
        good = is_resolved(pts[column], se)
        unresolved += [(g, v, colour) for g, v in zip(pts["goal"][~good], pts[column][~good])]
        pts, se = pts[good], se[good]
        ax.errorbar(pts["goal"], pts[column], yerr=se.fillna(0).to_numpy(float), fmt=marker, color=colour, ms=7,
                    capsize=2, zorder=3, label=text)
    for column, style, text in (("b_crit_predicted", "--", r"exact prediction: mean $B_\mathrm{noise}$ (App. D)"),
                                ("b_crit_exact", ":", r"exact $B_\mathrm{crit}$ of the expected loss")):
        if column in table and table[column].notna().any():
            ax.plot(table["goal"], table[column], color="black", ls=style, lw=1.2, label=text)
    ax.set_yscale("log")
    if unresolved:  # an arrow at the top or bottom edge towards each value the axis leaves out
        low, high = ax.get_ylim()
        for g, v, colour in unresolved:
            edge = high if v > high else low if v < low else None
            if edge is None:
                ax.scatter([g], [v], marker="o", facecolor="none", edgecolor=colour, s=30, zorder=3)
                continue
            ax.annotate("", xy=(g, edge), xytext=(g, edge / 2.5 if v > high else edge * 2.5),
                        arrowprops=dict(arrowstyle="->", color=colour, lw=1.0))
        ax.set_ylim(low, high)
        ax.scatter([], [], marker="o", facecolor="none", edgecolor="grey", label="unresolved (s.e. ≥ half the value)")
    goals = pd.to_numeric(table["goal"], errors="coerce").dropna().to_numpy()
    if invert_x is None:
        invert_x = goals.size >= 2 and goals[-1] < goals[0]
    if goal_floor is not None:
        ax.set_xscale("log")
    if invert_x and not ax.xaxis_inverted():
        ax.invert_xaxis()
    ax.set_xlabel(goal_label or f"goal (training {metric or 'loss'})")
    ax.set_ylabel("batch size")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize="small")  # off the data
    return ax


def plot_optimal_lr(
    ax: Axes,
    best_lr_frame: pd.DataFrame,
    eps_max: float | None = None,
    b_noise: float | None = None,
    goal: Any = None,
    units: str | None = None,
) -> Axes:
    """Best learning rate against batch size with ``ε_opt(B)`` of eq. 2.6 (Fig. 5 left).

    Args:
        ax: target axes.
        best_lr_frame: columns ``batch_units``, ``lr`` (e.g. :func:`best_runs` output);
            an optional ``lr_on_edge`` column draws edge points hollow.
        units: what ``batch_units`` counts ("images", "tokens"), for the x label.
        eps_max: ``ε_max`` of the curve; with ``b_noise``, None fits both to the
            points by :func:`~gns_utils.theory.fit_optimal_lr` (no curve if fewer than
            3 points).
        b_noise: ``B_noise`` of the curve; marked by a dotted vertical line.
        goal: keep only rows of this goal (needs a ``goal`` column); None keeps all.

    Returns:
        ``ax``.
    """
    frame = best_lr_frame if goal is None else best_lr_frame[best_lr_frame["goal"] == goal]
    frame = frame.dropna(subset=["batch_units", "lr"])
    if eps_max is None or b_noise is None:
        if len(frame) < 3:
            eps_max = b_noise = None
        else:
            eps_max, b_noise = fit_optimal_lr(frame["batch_units"], frame["lr"])
    edge = frame["lr_on_edge"].astype(bool) if "lr_on_edge" in frame else pd.Series(False, index=frame.index)
    ax.scatter(frame.loc[~edge, "batch_units"], frame.loc[~edge, "lr"], color="C0", zorder=3, label="best rate")
    if edge.any():
        ax.scatter(frame.loc[edge, "batch_units"], frame.loc[edge, "lr"], facecolor="none", edgecolor="C0",
                   zorder=3, label="best rate (grid edge)")
    if eps_max is not None and b_noise is not None:
        lo = min(frame["batch_units"].min(), b_noise) / 2 if not frame.empty else b_noise / 100
        hi = max(frame["batch_units"].max(), b_noise) * 2 if not frame.empty else b_noise * 100
        b = np.geomspace(lo, hi, 200)
        ax.plot(b, optimal_lr(b, eps_max, b_noise), color="C3",
                label=rf"eq. 2.6: $\epsilon_\max$={eps_max:.3g}, $B_\mathrm{{noise}}$={b_noise:.3g}")
        ax.axvline(b_noise, color="C3", ls=":", lw=1.0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(_label("batch_units", units))
    ax.set_ylabel(_label("lr"))
    ax.legend()
    return ax


def plot_noise_scale(
    ax: Axes,
    frame: pd.DataFrame,
    x: str = "loss",
    y: str = "b_simple",
    hue: str | None = None,
    invert_x: bool | None = None,
    units: str | None = None,
) -> Axes:
    """``B_simple`` against loss, examples or steps (Fig. 8), log y.

    Args:
        ax: target axes.
        frame: tidy frame with columns ``x``, ``y`` (and ``hue``).
        x: "loss" (linear, inverted by default so training runs left to right),
            "examples" or "step" (log scale).
        y: the noise-scale column ("b_simple" falls back to a run's ``b_simple_ema``).
        hue: optional column, one line per value (e.g. model width or batch size).
        invert_x: override the default inversion.
        units: what ``examples`` counts ("images", "tokens"), for the x label.

    Returns:
        ``ax``.
    """
    y = _noise_column(frame, y)
    data = frame[[c for c in (x, y, hue) if c is not None]].dropna(subset=[x, y])
    data = data[data[y] > 0]
    if hue is None:
        line = data.sort_values(x)
        ax.plot(line[x], line[y], color="C0", lw=1.2, label=_label("b_simple" if y == "b_simple_ema" else y))
    else:
        levels = sorted(data[hue].dropna().unique())
        colours = _ordered_colours(levels)
        for level in levels:
            part = data[data[hue] == level].sort_values(x)
            ax.plot(part[x], part[y], color=colours[level], lw=1.2, label=_fmt(level))
        ax.legend(title=_label(hue))
    ax.set_yscale("log")
    if x in ("examples", "step"):
        ax.set_xscale("log")
    if (x == "loss" if invert_x is None else invert_x) and not ax.xaxis_inverted():
        ax.invert_xaxis()
    ax.set_xlabel(_label(x, units))
    ax.set_ylabel(_label("b_simple" if y == "b_simple_ema" else y))
    return ax


# --------------------------------------------------------------------------- summary
def _task_columns(start: bool) -> dict[str, str]:
    suffix = "_start" if start else ""
    return {
        "x": f"b_simple{suffix}", "y": f"b_crit{suffix}", "kind": f"b_crit{suffix}_kind",
        "stderr": f"b_crit{suffix}_stderr", "y_low": f"b_crit{suffix}_low", "y_high": f"b_crit{suffix}_high",
        "x_low": f"b_simple{suffix}_low", "x_high": f"b_simple{suffix}_high",
    }


def _draw_task(ax: Axes, row: pd.Series, cols: dict[str, str], colour: Any, marker: str) -> None:
    """One task of Fig. 4: point, error bar, range bars or bound arrow (labels: :func:`place_labels`)."""
    x, y = float(row[cols["x"]]), float(row[cols["y"]])
    kind = row.get(cols["kind"], "value")
    filled = row["source"] == "measured" and kind != "unresolved"  # unresolved: s.e. ≥ half the value
    face = colour if filled else "none"
    ax.scatter([x], [y], marker=marker, s=45, facecolor=face, edgecolor=colour, linewidth=1.3, zorder=3)
    if kind == "range":
        xerr = [[x - row.get(cols["x_low"], x)], [row.get(cols["x_high"], x) - x]]
        yerr = [[y - row.get(cols["y_low"], y)], [row.get(cols["y_high"], y) - y]]
        ax.errorbar([x], [y], xerr=np.nan_to_num(xerr), yerr=np.nan_to_num(yerr), fmt="none",
                    ecolor=colour, elinewidth=2.5, alpha=0.5, capsize=0)
    elif kind in ("lower_bound", "upper_bound"):
        factor = 4.0 if kind == "lower_bound" else 0.25
        ax.annotate("", xy=(x, y * factor), xytext=(x, y), arrowprops=dict(arrowstyle="->", color=colour, lw=1.3))
    stderr = row.get(cols["stderr"], np.nan)
    if kind == "value" and pd.notna(stderr) and stderr > 0:
        low = min(float(stderr), 0.9 * y)  # keep the bar positive on log axes
        ax.errorbar([x], [y], yerr=[[low], [float(stderr)]], fmt="none", ecolor=colour, capsize=3)


def plot_bcrit_vs_bsimple(ax: Axes, tasks: pd.DataFrame, start: bool = False) -> Axes:
    """``B_crit`` against ``B_simple``, one point per task, measured vs paper (Fig. 4).

    Colour = source (filled = measured, hollow = paper), marker = units
    (images ○, tokens □, frames △). Error bars from ``b_crit_stderr``; lower bounds
    as upward arrows (upper bounds downward); ranges (Atari) as translucent bars in
    both directions; the line ``y = x``; log-log axes covering at least 1e0–1e8.

    Args:
        ax: target axes.
        tasks: :func:`~gns_utils.experiments.summary.summary_table` output.
        start: plot the start-of-training columns (``*_start``) instead of the
            averaged / end-of-run ones.

    Returns:
        ``ax``.
    """
    cols = _task_columns(start)
    rows = tasks[pd.to_numeric(tasks[cols["x"]], errors="coerce").gt(0)
                 & pd.to_numeric(tasks[cols["y"]], errors="coerce").gt(0)]
    ours: dict[str, tuple[Any, str]] = {}
    paper_labels: list[tuple[str, float, float]] = []
    trace_markers: dict[str, str] = {}
    for k, (_, row) in enumerate(rows.iterrows()):
        marker = UNIT_MARKERS.get(row["units"], "D")
        if row["source"] == "measured":
            colour = task_colour(str(row["task"]), k)
            ours[str(row["task"])] = (colour, marker)
        elif row["source"] == "traces":
            colour = SOURCE_COLOURS["traces"]
            marker = trace_markers.setdefault(str(row["task"]), TRACE_MARKERS[len(trace_markers) % len(TRACE_MARKERS)])
        else:
            colour = SOURCE_COLOURS.get(row["source"], "C2")
            paper_labels.append((str(row["task"]), float(row[cols["x"]]), float(row[cols["y"]])))
        _draw_task(ax, row, cols, colour, marker)
    values = np.concatenate([rows[cols["x"]].to_numpy(float), rows[cols["y"]].to_numpy(float)]) if len(rows) else []
    lo = min(1.0, float(np.min(values)) / 3) if len(values) else 1.0
    hi = max(1e8, float(np.max(values)) * 10) if len(values) else 1e8
    ax.plot([lo, hi], [lo, hi], color="grey", ls="--", lw=1.0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal", adjustable="box")
    when = "start of training" if start else "averaged over training"
    ax.set_xlabel(rf"$B_\mathrm{{simple}}$ ({when})")
    ax.set_ylabel(r"$B_\mathrm{crit}$")
    handles = [plt.Line2D([], [], color="grey", ls="--", label="$y = x$")]
    handles += [plt.Line2D([], [], ls="", marker=marker, color=colour, label=display_name(task))
                for task, (colour, marker) in ours.items()]
    if paper_labels:
        handles.append(plt.Line2D([], [], ls="", marker="o", color=SOURCE_COLOURS["paper"], markerfacecolor="none",
                                  label="paper (Table 1), named beside each point"))
    if trace_markers:
        handles.append(plt.Line2D([], [], ls="", label="AdaptDL / Pollux traces (third party; B_simple where\n"
                                  "the goal is reached, rates by AdaptDL's scaling rule):"))
        handles += [plt.Line2D([], [], ls="", marker=marker, color=SOURCE_COLOURS["traces"], markerfacecolor="none",
                               label=f"  {name}") for name, marker in trace_markers.items()]
    own = rows[rows["source"] != "traces"]
    handles += [plt.Line2D([], [], ls="", marker=UNIT_MARKERS.get(units, "D"), color="black",
                           markerfacecolor="none", label=f"batch in {units}")
                for units in pd.unique(own["units"].dropna())]
    if (rows[cols["kind"]] == "unresolved").any():
        handles.append(plt.Line2D([], [], ls="", marker="o", color="grey", markerfacecolor="none",
                                  label="ours, unresolved (s.e. ≥ half the value)"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="x-small", borderaxespad=0)
    obstacles = list(zip(rows[cols["x"]].astype(float), rows[cols["y"]].astype(float)))
    place_labels(ax, paper_labels, obstacles=obstacles)
    return ax


def place_labels(ax: Axes, labels: Sequence[tuple[str, float, float]], fontsize: str = "x-small",
                 obstacles: Sequence[tuple[float, float]] = ()) -> list[Any]:
    """Name points without overlap: each label goes to the first position around its point, nearest first (8
    directions at 3 distances), whose box lies inside the axes and meets no label placed before it, no labelled
    point and none of the ``obstacles`` (other drawn points, data coordinates); greedy, in the order given. Where
    every position clashes, the one overlapping least, joined to its point by a leader line.

    Args:
        ax: the axes (its limits and scales set).
        labels: ``(text, x, y)`` in data coordinates.
        fontsize: the labels' font size.
        obstacles: further points (data coordinates) no label may cover.

    Returns:
        The text artists.
    """
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    directions = [(1, 0.6, "left", "bottom"), (1, -0.6, "left", "top"), (-1, 0.6, "right", "bottom"),
                  (-1, -0.6, "right", "top"), (0, 1.5, "center", "bottom"), (0, -1.5, "center", "top"),
                  (2, 0, "left", "center"), (-2, 0, "right", "center")]
    offsets = [(dx * r, dy * r, ha, va) for r in (6.0, 16.0, 28.0) for dx, dy, ha, va in directions]
    frame = ax.get_window_extent(renderer)
    spots = [(x, y) for _, x, y in labels] + [tuple(p) for p in obstacles]
    points = ax.transData.transform(spots) if spots else np.zeros((0, 2))
    placed: list[Any] = []
    texts = []

    def overlap(box: Any) -> float:
        area = 0.0
        for other in placed:
            w = min(box.x1, other.x1) - max(box.x0, other.x0)
            h = min(box.y1, other.y1) - max(box.y0, other.y0)
            area += max(w, 0.0) * max(h, 0.0)
        area += 50.0 * sum(box.contains(px, py) for px, py in points)
        outside = max(frame.x0 - box.x0, 0) + max(box.x1 - frame.x1, 0) + max(frame.y0 - box.y0, 0) + max(
            box.y1 - frame.y1, 0)
        return area + 100.0 * outside

    for text, x, y in labels:
        best, best_cost, best_offset = None, np.inf, offsets[0]
        for dx, dy, ha, va in offsets:
            artist = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                                 fontsize=fontsize, color="black")
            cost = overlap(artist.get_window_extent(renderer).expanded(1.05, 1.1))
            artist.remove()
            if cost < best_cost:
                best_cost, best_offset = cost, (dx, dy, ha, va)
            if cost == 0:
                break
        dx, dy, ha, va = best_offset
        leader = dict(arrowprops=dict(arrowstyle="-", color="grey", lw=0.6)) if abs(dx) + abs(dy) > 20 else {}
        best = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                           fontsize=fontsize, color="black", **leader)
        placed.append(best.get_window_extent(renderer))
        texts.append(best)
    return texts


def plot_bcrit_vs_bsimple_by_goal(ax: Axes, points: pd.DataFrame, paper: pd.DataFrame | None = None,
                                  x: str = "b_simple_local_median", traces: pd.DataFrame | None = None) -> Axes:
    """``B_crit(goal)`` against the noise scale matched to that goal: each task a trajectory (Fig. 4, per goal).

    Args:
        ax: target axes.
        points: :func:`~gns_utils.experiments.summary.goal_points` output.
        paper: optional :func:`~gns_utils.experiments.summary.summary_table` rows of the paper, drawn hollow
            (their averaged values) for orientation.
        x: the predictor column.
        traces: optional :func:`gns_utils.experiments.traces.trace_results` rows (third-party workloads): each
            workload's resolved goals as a black trajectory against ``noise_scale``, one marker per workload
            (:data:`TRACE_MARKERS`), named in the legend.

    Returns:
        ``ax``.
    """
    present = points[(points[x] > 0) & (points["b_crit"] > 0)]
    resolved = resolved_goals(present, x)
    ok, unresolved = present[resolved], present[~resolved]
    colours = {task: task_colour(task, k) for k, task in enumerate(pd.unique(present["task"]))}
    for task, group in unresolved.groupby("task", sort=False):  # drawn hollow, at the edge if off the axes
        ax.scatter(group[x], group["b_crit"], facecolor="none", edgecolor=colours[task],
                   marker=UNIT_MARKERS.get(group["units"].iloc[0], "D"), s=30, zorder=2)
    for task, group in ok.groupby("task", sort=False):
        group = group.sort_values("goal_index")
        marker = UNIT_MARKERS.get(group["units"].iloc[0], "D")
        synthetic = "synthetic" in group and bool(group["synthetic"].astype(bool).any())
        name = display_name(task)
        ax.plot(group[x], group["b_crit"], color=colours[task], lw=1.0, marker=marker, ms=5,
                label=f"{name} (synthetic, exact theory)" if synthetic else name)
        ax.scatter(group[x].iloc[-1:], group["b_crit"].iloc[-1:], color=colours[task], marker=marker, s=60,
                   edgecolor="black", zorder=3)
        se = group["b_crit_stderr"].fillna(0).clip(upper=0.9 * group["b_crit"])
        ax.errorbar(group[x], group["b_crit"], yerr=[se, group["b_crit_stderr"].fillna(0)], fmt="none",
                    ecolor=colours[task], capsize=2, lw=0.8)
    rows = (paper[(paper["b_simple"] > 0) & (paper["b_crit"] > 0)] if paper is not None
            else pd.DataFrame(columns=["b_simple", "b_crit", "units"]))
    for row in rows.itertuples():
        ax.scatter([row.b_simple], [row.b_crit], marker=UNIT_MARKERS.get(row.units, "D"), facecolor="none",
                   edgecolor="grey", s=40)
    fitted = traces.iloc[:0] if traces is None else traces[
        resolved_trace_goals(traces) & (traces["noise_scale"] > 0).to_numpy()]
    for k, (_, group) in enumerate(fitted.groupby("workload", sort=False)):
        group = group.sort_values("target_index")
        ax.plot(group["noise_scale"], group["b_crit"], color=SOURCE_COLOURS["traces"], lw=0.8, ls=":",
                marker=TRACE_MARKERS[k % len(TRACE_MARKERS)], ms=5, markerfacecolor="none",
                label=f"{group['display_name'].iloc[0]} (AdaptDL / Pollux trace)")
        ax.errorbar(group["noise_scale"], group["b_crit"], yerr=group["b_crit_stderr"], fmt="none",
                    ecolor=SOURCE_COLOURS["traces"], capsize=2, lw=0.6)
    values = np.concatenate([ok[x].to_numpy(float), ok["b_crit"].to_numpy(float),
                             rows["b_simple"].to_numpy(float), rows["b_crit"].to_numpy(float),
                             fitted["noise_scale"].to_numpy(float), fitted["b_crit"].to_numpy(float)])
    values = values if values.size else np.array([1.0])
    lo, hi = min(1.0, float(values.min()) / 3), max(1e5, float(values.max()) * 3)
    ax.plot([lo, hi], [lo, hi], color="grey", ls="--", lw=1.0, label="$y = x$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(r"$B_\mathrm{simple}$ where the goal is reached")
    ax.set_ylabel(r"$B_\mathrm{crit}$ of the goal")
    if len(unresolved):
        ax.scatter([], [], facecolor="none", edgecolor="grey", s=30, label="unresolved (s.e. ≥ half the value)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="x-small", borderaxespad=0,
              title="last goal: outlined; grey: paper (Table 1, averaged)", title_fontsize="x-small")
    return ax
