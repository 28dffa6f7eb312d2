"""The notebooks' figures: one call draws one figure of a task and saves it (PNG + PDF).

Each function takes what :func:`gns_utils.experiments.pipeline.run_experiment` returned for a
task (a :class:`~gns_utils.experiments.pipeline.TaskResult`), draws with the ``ax``-level
helpers of :mod:`gns_utils.experiments.plotting`, writes ``<task>/figures/<name>.png|pdf``
with :func:`~gns_utils.experiments.plotting.save_figure`, and returns the figure (a notebook
shows it). Symbols as in the paper: ``B`` batch size, ``S`` steps, ``E = B·S`` examples,
``B_crit = E_min/S_min`` (2.12), ``B_simple = tr Σ/|G|²`` (2.9), ``ε_opt(B)`` (2.6).

* :func:`training_curves`       Fig 6: the goal metric per batch size against steps and examples.
* :func:`pareto_fronts`         Fig 7 left: steps against examples per goal with the (2.11) fits.
* :func:`b_crit_by_goal`        Fig 7 right: B_crit per goal beside B_simple (and B_noise).
* :func:`b_crit_against_loss`   language models: B_crit per goal against the loss, beside Kaplan et al.'s slope.
* :func:`optimal_lr`            Fig 5 left: the best learning rate against B with the (2.6) curve.
* :func:`noise_over_training`   B_simple of the reference run against loss and examples.
* :func:`width_study`           Fig 8: B_simple of several widths against loss and tokens.
* :func:`b_crit_vs_b_simple`    Fig 4: B_crit against B_simple, one point per task.
* :func:`b_crit_vs_b_simple_by_goal`  Fig 4 per goal: B_crit(goal) against B_simple where it is reached.
* :func:`temperature`           Fig 15: B_simple over training when the temperature is cut (App. C).
* :func:`adaptive_batch`        Fig 16: adaptive-batch runs on the fixed-batch Pareto fronts (App. D).
* :func:`local_critical_batch`  notebook 06: the local B_crit by branching beside the sweep's and the noise scales.
* :func:`local_critical_batch_calibration`  the same on noisy linear regression, against the exact answer.
* :func:`local_cbs_sensitivity` the local B_crit against Δ and the tolerance CBS against τ.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from gns_utils.experiments import plotting
from gns_utils.experiments.branching_runs import BranchResult
from gns_utils.experiments.dynamics import AdaptiveResult, TemperatureResult
from gns_utils.experiments.pipeline import TaskResult
from gns_utils.experiments.profiles import display_name
from gns_utils.experiments import report
from gns_utils.experiments.report import matched_by_goal
from gns_utils.experiments.summary import GOAL_PREDICTORS

__all__ = ["adaptive_batch", "calibration_span", "local_cbs_sensitivity", "local_critical_batch", "local_critical_batch_calibration",
           "temperature", "b_crit_against_loss", "b_crit_by_goal", "b_crit_vs_b_simple", "b_crit_vs_b_simple_by_goal",
           "noise_over_training", "optimal_lr", "pareto_fronts", "training_curves", "width_study"]


def _save(fig: Figure, res: TaskResult, name: str, title: str) -> Figure:
    fig.suptitle(f"{display_name(res.cfg.task)}: {title}")
    plotting.save_figure(fig, res.figure_dir / name)
    return fig


def training_curves(res: TaskResult) -> Figure:
    """Fig 6: the goal metric of the best-tuned run at each B, against steps S and examples E."""
    plotting.set_style()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    curves, floor = res.curves, None
    if res.cfg.domain == "synthetic":  # the loss above its floor σ²/2, on a log axis: near the floor is where B matters
        floor = 0.5 * res.cfg.data_kwargs.get("noise_var", 1.0)
        curves = curves.assign(**{res.cfg.metric: curves[res.cfg.metric] - floor})
    for ax, x in zip(axes, ("step", "examples")):
        plotting.plot_training_curves(ax, curves, x=x, y=res.cfg.metric, hue="batch_units", units=res.cfg.units,
                                      logy=floor is not None)
        if floor is not None:
            ax.set_ylabel(f"training {res.cfg.metric} above its floor {floor:g}")
    if floor is not None:  # on a log axis the curves fill the corners: one legend, outside
        legend = axes[0].get_legend()
        handles, labels = axes[0].get_legend_handles_labels()
        title = legend.get_title().get_text() if legend else None
        for ax in axes:
            if ax.get_legend():
                ax.get_legend().remove()
        axes[1].legend(handles, labels, title=title, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, res, "training_curves", f"training {res.cfg.metric} per batch size (best learning rate)")


def pareto_fronts(res: TaskResult) -> Figure:
    """Fig 7 left: S against E per goal, with the fitted (2.11) hyperbolas; ★ marks B = B_crit."""
    plotting.set_style()
    fig, ax = plt.subplots(figsize=(6, 5))
    plotting.plot_pareto_fronts(ax, res.best, res.fits, units=res.cfg.units)
    return _save(fig, res, "pareto_fronts", "Pareto fronts")


def b_crit_by_goal(res: TaskResult) -> Figure:
    """Fig 7 right: B_crit per goal (± s.e.) beside B_simple measured where each goal is reached (median and
    range over the best runs of all batch sizes), the reference run's B_simple EMA, and B_noise where measured."""
    plotting.set_style()
    fig, ax = plt.subplots(figsize=(9.5, 5))
    floor = 0.5 * res.cfg.data_kwargs.get("noise_var", 1.0) if res.cfg.domain == "synthetic" else None  # σ²/2
    plotting.plot_b_crit_by_goal(ax, res.by_goal, noise=res.noise, b_noise=res.b_noise, metric=res.cfg.metric,
                                 matched=matched_by_goal(res.matched), goal_floor=floor)
    ax.set_ylabel(f"batch size ({res.cfg.units})")
    return _save(fig, res, "b_crit_by_goal", "B_crit and B_simple over training")


def b_crit_against_loss(res: TaskResult) -> Figure:
    """B_crit per goal (± seed-aware s.e.) against the goal loss on log-log axes, with the least-squares line
    and, through the same centre, a line of Kaplan et al.'s slope −1/α_B (shape only; see
    :func:`gns_utils.experiments.report.b_crit_loss_slope`); the right axis counts sequences."""
    plotting.set_style()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    goals = pd.DataFrame(res.summary["goals"]).reindex(columns=["goal", "b_crit", "b_crit_stderr", "bound"])
    fitted = goals[(goals["bound"] == "none") & (goals["b_crit"] > 0)]
    colour = plotting.task_colour(res.cfg.task)
    _errorbar(ax, fitted["goal"], fitted["b_crit"], se=fitted["b_crit_stderr"], color=colour, marker="o",
              label="B_crit(goal) ± s.e. (seed-aware)")
    s = report.b_crit_loss_slope(res.summary["goals"])
    if np.isfinite(s["slope"]):
        loss = np.geomspace(s["loss_low"], s["loss_high"], 50)
        ok = fitted[~(fitted["b_crit_stderr"] >= 0.5 * fitted["b_crit"])]
        centre_x, centre_y = np.exp(np.log(ok["goal"]).mean()), np.exp(np.log(ok["b_crit"]).mean())
        ax.plot(loss, centre_y * (loss / centre_x) ** s["slope"], color=colour,
                label=f"least squares: slope {s['slope']:.1f} ± {s['slope_stderr']:.1f}".replace("-", "−"))
        ax.plot(loss, centre_y * (loss / centre_x) ** s["kaplan_slope"], color="0.4", ls="--",
                label=f"Kaplan et al. 2020: slope −1/{report.KAPLAN_ALPHA_B} = {s['kaplan_slope']:.1f} (shape only)"
                .replace("-", "−"))
    if fitted.empty:  # every goal a bound (e.g. at smoke size): nothing to draw on log axes
        ax.text(0.5, 0.5, "no goal with a fitted B_crit", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(sorted(fitted["goal"]), [f"{g:g}" for g in sorted(fitted["goal"])])
        ax.invert_xaxis()
    ax.set_xlabel(f"goal: training {res.cfg.metric} (nats per token); training proceeds left to right")
    ax.set_ylabel(f"B_crit ({res.cfg.units})")
    length = res.cfg.data_kwargs.get("seq_len")
    if length and res.cfg.units == "tokens" and not fitted.empty:
        right = ax.secondary_yaxis("right", functions=(lambda t: t / length, lambda q: q * length))
        right.set_ylabel(f"B_crit (sequences of {length} tokens)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", frameon=False)
    return _save(fig, res, "b_crit_against_loss", "B_crit against the loss")


def optimal_lr(res: TaskResult) -> Figure:
    """Fig 5 left: the best learning rate at each B (last goal) with the fitted (2.6) ε_max/(1 + B_noise/B)."""
    plotting.set_style()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    plotting.plot_optimal_lr(ax, res.best, goal=res.cfg.goals[-1], units=res.cfg.units)
    return _save(fig, res, "optimal_lr", f"optimal learning rate ({res.cfg.optimizer})")


def noise_over_training(res: TaskResult) -> Figure:
    """B_simple (2.9) of the reference run against the training loss and against examples processed."""
    plotting.set_style()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    plotting.plot_noise_scale(axes[0], res.noise, x="loss")
    plotting.plot_noise_scale(axes[1], res.noise, x="examples", units=res.cfg.units)
    return _save(fig, res, "b_simple_over_training", "B_simple over training (reference run)")


def width_study(frame: pd.DataFrame, figure_dir: str | Path, units: str = "tokens") -> Figure:
    """Fig 8: B_simple of each width (``hidden``) against loss and against tokens processed."""
    plotting.set_style()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    plotting.plot_noise_scale(axes[0], frame, x="loss", hue="hidden")
    plotting.plot_noise_scale(axes[1], frame, x="examples", hue="hidden", units=units)
    fig.suptitle(f"LSTM widths: B_simple ({units}) against loss and against {units} processed")
    plotting.save_figure(fig, Path(figure_dir) / "widths_b_simple")
    return fig


def b_crit_vs_b_simple(table: pd.DataFrame, path: str | Path, title: str, start: bool = False) -> Figure:
    """Fig 4: B_crit against B_simple, our tasks and the paper's, with y = x (a :func:`summary_table`;
    ``start``: its start-of-training version, ``summary_table(..., start=True)``)."""
    plotting.set_style()
    fig, ax = plt.subplots(figsize=(10.0, 6.5))
    plotting.plot_bcrit_vs_bsimple(ax, table, start=start)
    ax.set_title(title)
    plotting.save_figure(fig, path)
    return fig


def b_crit_vs_b_simple_by_goal(points: pd.DataFrame, paper: pd.DataFrame, path: str | Path, title: str,
                               x: str = "b_simple_local_median", traces: pd.DataFrame | None = None) -> Figure:
    """Fig 4 per goal: each task's B_crit(goal) against a noise scale matched to that goal (a trajectory);
    ``x`` names the predictor (a :data:`gns_utils.experiments.summary.GOAL_PREDICTORS` column); ``traces``: the
    third-party workloads goal by goal (:func:`gns_utils.experiments.traces.trace_results`)."""
    plotting.set_style()
    fig, ax = plt.subplots(figsize=(10.0, 6.5))
    plotting.plot_bcrit_vs_bsimple_by_goal(ax, points, paper, x=x, traces=traces)
    ax.set_xlabel(GOAL_PREDICTORS.get(x, x), fontsize="small")
    ax.set_title(title)
    plotting.save_figure(fig, path)
    return fig


def temperature(result: TemperatureResult) -> Figure:
    """Fig 15: B_simple (summed over windows of steps) and the goal metric of every variant, the window shaded."""
    plotting.set_style()
    fig, axes = plt.subplots(2, 1, figsize=(8, 7), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    for name, w in result.windows.items():
        style = {"color": "black", "lw": 1.6} if name == "unchanged" else {"lw": 1.2}
        axes[0].plot(w["step"], w["b_simple"], label=name, **style)
        axes[1].plot(w["step"], w["metric"], **style)
    for ax in axes:
        ax.axvspan(result.settings["start"], result.settings["end"], color="grey", alpha=0.15, lw=0)
    axes[0].set_yscale("log")
    axes[0].set_ylabel(f"B_simple ({result.cfg.units})")
    axes[0].legend(title=f"T = ε/B cut {result.k:g}× on the shaded steps", fontsize=8, title_fontsize=8)
    axes[1].set_ylabel(f"training {result.cfg.metric} (mini-batches)")
    axes[1].set_xlabel("step")
    fig.suptitle(f"{result.task} ({result.cfg.optimizer}, B = {result.settings['batch_size']}, "
                 f"lr = {result.settings['lr']:.3g}): B_simple when the temperature drops")
    plotting.save_figure(fig, Path(result.folder).parent / "figures" / f"temperature_{result.task}")
    return fig


def adaptive_batch(result: AdaptiveResult, sweep: TaskResult) -> Figure:
    """Fig 16: each goal's adaptive runs (diamonds: mean over seeds) on the sweep's fixed-batch fronts and fits;
    right, the batch size the controller chose over training and its target √(r·B_simple) (D.6)."""
    plotting.set_style()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    plotting.plot_pareto_fronts(axes[0], sweep.best, sweep.fits, units=sweep.cfg.units)
    colours = plotting._ordered_colours(list(pd.unique(sweep.best["goal"])))
    means = result.crossings.groupby("goal")[["steps", "examples"]].mean()
    for goal, row in means.iterrows():
        axes[0].scatter([row["examples"]], [row["steps"]], marker="D", s=60, color=colours.get(goal, "black"),
                        edgecolor="black", linewidth=0.8, zorder=5)
    axes[0].scatter([], [], marker="D", color="white", edgecolor="black", label="adaptive B")
    axes[0].legend(fontsize=8)
    for seed, w in result.windows.items():
        line, = axes[1].plot(w["step"], w["batch_size"], drawstyle="steps-post", label=f"B, seed {seed}")
        target = (result.r * w["b_simple_ema"]) ** 0.5
        axes[1].plot(w["step"], target, ls=":", color=line.get_color(), lw=1.0)
    axes[1].plot([], [], ls=":", color="grey", label="√(r·B_simple)")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel(f"batch size ({sweep.cfg.units})")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{result.task}: batch size grown with B_simple (r = {result.r:.0f}) against fixed batch sizes")
    plotting.save_figure(fig, Path(result.folder).parent / "figures" / f"adaptive_{result.task}")
    return fig


_LOCAL_STYLE = {  # one colour per quantity, the same in every figure of notebook 06
    "sweep": dict(color="C0", marker="o", label=r"sweep $B_\mathrm{crit}$(goal) (2.11 over whole runs)"),
    "local": dict(color="C3", marker="s", label=r"local $B_\mathrm{crit}$ by branching (2.11 fit, rate grid)"),
    "law": dict(color="C3", marker="s", mfc="none", label=r"local $B_\mathrm{crit}$, rate law's rate only"),
    "tolerance": dict(color="C1", marker="^", label=r"local CBS, tolerance rule (Merrill et al.)"),
    "b_simple": dict(color="C2", marker="D", label=r"$B_\mathrm{simple}$ at the goal (2.9)"),
    "b_noise": dict(color="C4", marker="X", label=r"$B_\mathrm{noise}$ at the goal (2.8)"),
    "exact": dict(color="black", marker="o", label=r"exact local $B_\mathrm{crit}$ (closed form)"),
}


def _errorbar(ax, x, y, low=None, high=None, se=None, shift=1.0, **style) -> None:
    """Points with error bars on log axes: ``low``–``high`` or ``y ± se`` (clipped above 0); NaN skipped."""
    x, y = np.asarray(x, float) * shift, np.asarray(y, float)
    ok = np.isfinite(y) & (y > 0)
    if se is not None:
        se = np.asarray(se, float)
        low, high = y - np.where(np.isfinite(se), se, 0), y + np.where(np.isfinite(se), se, 0)
    if low is not None:
        low, high = np.asarray(low, float), np.asarray(high, float)
        lo = np.where(np.isfinite(low), np.clip(y - low, 0, None), 0)
        hi = np.where(np.isfinite(high), np.clip(high - y, 0, None), 0)
        lo = np.minimum(lo, 0.95 * y)  # a log axis cannot reach 0
        yerr = np.vstack([lo[ok], hi[ok]])
    else:
        yerr = None
    ax.errorbar(x[ok], y[ok], yerr=yerr, capsize=3, ls="none", ms=7, **style)


def calibration_span(results: dict[str, TaskResult], figure_dir: str | Path) -> Figure:
    """The calibration sweeps together: measured / exact constant-rate B_crit against the exact B_crit (log), per
    goal, with the seed-aware 95 % interval, beside the paper's A.3 reading of the same runs; the band is the
    target :data:`~gns_utils.experiments.report.CALIBRATION_RANGE`."""
    plotting.set_style()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    lo, hi = report.CALIBRATION_RANGE
    ax.axhspan(lo, hi, color="0.9", zorder=0, label=f"target {lo}–{hi}")
    ax.axhline(1.0, color="black", lw=0.8)
    for k, (task, res) in enumerate(results.items()):
        goals = pd.DataFrame(res.summary["goals"]).dropna(subset=["b_crit", "b_crit_exact"])
        exact = goals["b_crit_exact"].astype(float)
        colour = plotting.task_colour(task, k)
        _errorbar(ax, exact, goals["b_crit"] / exact, goals["ci_low"] / exact, goals["ci_high"] / exact,
                  color=colour, marker="o", label=f"{display_name(task)}: measured")
        if "b_crit_fastest_ema" in goals:
            _errorbar(ax, exact, goals["b_crit_fastest_ema"] / exact, shift=1.06, color=colour, marker="o",
                      mfc="none", label="… the paper's A.3 reading (fastest run, EMA)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(0.2, 5.0)  # the ratio; intervals reaching past it are cut at the frame
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks([0.25, 0.5, 1.0, 2.0, 4.0])
    ax.set_xlabel(r"exact constant-rate $B_\mathrm{crit}$ of the goal (examples)")
    ax.set_ylabel(r"measured / exact $B_\mathrm{crit}$")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle("Calibration: measured against exact B_crit, goal by goal")
    plotting.save_figure(fig, Path(figure_dir) / "calibration_span")
    return fig


def local_critical_batch(result: BranchResult) -> Figure:
    """The local B_crit by branching at each checkpoint, beside the sweep's B_crit(goal) and B_simple, B_noise
    measured on the reference run where it reached each goal; the goal axis runs in training order."""
    plotting.set_style()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    sweep = result.sweep_goals[result.sweep_goals["bound"] == "none"]
    _errorbar(ax, sweep["goal"], sweep["b_crit"], sweep["ci_low"], sweep["ci_high"], **_LOCAL_STYLE["sweep"])
    c = result.comparison
    _errorbar(ax, c["goal"], c["local_b_crit"], c["local_ci_low"], c["local_ci_high"], shift=0.985,
              **_LOCAL_STYLE["local"])
    _errorbar(ax, c["goal"], c["local_b_crit_law"], shift=0.97, **_LOCAL_STYLE["law"])
    _errorbar(ax, c["goal"], c["tolerance_cbs"], shift=1.015, **_LOCAL_STYLE["tolerance"])
    goals = result.sweep_goals
    if "b_simple_checkpoint" in goals:
        _errorbar(ax, goals["goal"], goals["b_simple_checkpoint"], se=goals.get("b_simple_checkpoint_stderr"),
                  shift=1.03, **_LOCAL_STYLE["b_simple"])
    if "b_noise" in goals:
        _errorbar(ax, goals["goal"], goals["b_noise"], se=goals.get("b_noise_stderr"), shift=1.045,
                  **_LOCAL_STYLE["b_noise"])
    ax.set_yscale("log")
    if goals["goal"].is_monotonic_decreasing:
        ax.invert_xaxis()
    ax.set_xlabel(f"goal (training {result.metric}); checkpoints at "
                  + ", ".join(f"{g:g}" for g in c["goal"]))
    ax.set_ylabel(f"batch size ({result.units})")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle(f"{display_name(result.task)}: local and sweep critical batch sizes, Δ = "
                 f"{result.settings['fraction']:g} × loss")
    plotting.save_figure(fig, result.figure_dir / f"local_b_crit_{result.task}")
    return fig


def local_critical_batch_calibration(frame: pd.DataFrame, figure_dir: str | Path) -> Figure:
    """Noisy linear regression: the local B_crit by branching against its exact value at each checkpoint, with
    the exact B_simple and B_noise there; x is the checkpoint's loss above the noise floor (log)."""
    plotting.set_style()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    floor = float(frame["floor"].iloc[0])
    x = frame["checkpoint_loss"] - floor
    _errorbar(ax, x, frame["b_crit_exact"], **_LOCAL_STYLE["exact"])
    _errorbar(ax, x, frame["b_crit"], frame["ci_low"], frame["ci_high"], shift=0.96, **_LOCAL_STYLE["local"])
    _errorbar(ax, x, frame["tolerance_cbs"], shift=1.04, **_LOCAL_STYLE["tolerance"])
    _errorbar(ax, x, frame["b_simple"], shift=1.0, **{**_LOCAL_STYLE["b_simple"], "label": r"exact $B_\mathrm{simple}$ (2.9)"})
    _errorbar(ax, x, frame["b_noise"], shift=1.0, **{**_LOCAL_STYLE["b_noise"], "label": r"exact $B_\mathrm{noise}$ (2.8)"})
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.invert_xaxis()
    ax.set_xlabel(f"checkpoint: population loss above its floor {floor:g}")
    ax.set_ylabel("batch size (examples)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle(f"{display_name('noisy_linear_regression')}: local B_crit measured against exact")
    plotting.save_figure(fig, Path(figure_dir) / "local_b_crit_calibration")
    return fig


def local_cbs_sensitivity(result: BranchResult) -> Figure:
    """At the study checkpoint: the local B_crit against Δ (left) and the tolerance CBS against τ per Δ (right,
    with τ·B_crit + (1 + τ)·B_0 of the (2.11) fit dotted)."""
    plotting.set_style()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    study = result.local[np.isclose(result.local["goal"], result.settings["study_goal"])]
    first = study[np.isclose(study["tolerance"], study["tolerance"].min())]
    for label, key, shift in (("grid", "local", 1.0), ("law", "law", 1.03)):
        rows = first[first["rates"] == label]
        low, high = (rows["ci_low"], rows["ci_high"]) if label == "grid" else (None, None)
        _errorbar(axes[0], rows["fraction"], rows["b_crit"], low, high, shift=shift, **_LOCAL_STYLE[key])
        axes[0].plot(rows["fraction"] * shift, rows["b_crit"], color="C3", lw=0.8, ls="-" if label == "grid" else ":")
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    fractions = sorted(first["fraction"].unique())
    axes[0].set_xticks(fractions, [f"{f:g}" for f in fractions])
    axes[0].xaxis.set_minor_formatter(NullFormatter())
    axes[0].set_xlabel("Δ / checkpoint loss")
    axes[0].set_ylabel(f"local B_crit ({result.units})")
    axes[0].legend(fontsize="small")
    grid = study[study["rates"] == "grid"]
    colours = plotting._ordered_colours(sorted(grid["fraction"].unique()))
    b0 = float(min(result.settings["batch_sizes"]))
    for frac, rows in grid.groupby("fraction"):
        rows = rows.sort_values("tolerance")
        axes[1].plot(rows["tolerance"], rows["tolerance_cbs"], marker="^", color=colours[frac], label=f"Δ = {frac:g} × loss")
        b_crit = float(rows["b_crit"].iloc[0])
        if np.isfinite(b_crit):
            axes[1].plot(rows["tolerance"], rows["tolerance"] * b_crit + (1 + rows["tolerance"]) * b0, ls=":",
                         color=colours[frac])
    axes[1].set_xlabel("tolerance τ")
    axes[1].set_ylabel(f"local CBS, tolerance rule ({result.units})")
    axes[1].set_yscale("log")
    axes[1].legend(fontsize="small", title="dotted: τ·B_crit + (1+τ)·B_0", title_fontsize="x-small")
    axes[1].set_xticks(sorted(grid["tolerance"].unique()))
    fig.subplots_adjust(wspace=0.3)
    fig.suptitle(f"{display_name(result.task)}: how the local critical batch moves with Δ and τ "
                 f"(checkpoint at goal {result.settings['study_goal']:g})")
    plotting.save_figure(fig, result.figure_dir / f"local_cbs_sensitivity_{result.task}")
    return fig
