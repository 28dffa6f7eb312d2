"""The README's results tables (markdown) from the committed task summaries.

Usage: python -m gns_utils.experiments.tables [--results-dir results] [--readme README.md]

The README gets a compact block (the task table, R², the verdict of ``99_summary`` and the last
reproduction); every other derived number goes to ``<results_dir>/KEY_NUMBERS.md`` (written with
``--readme``).

Every number comes from ``results/<task>/summary.json`` (written by the notebook named in
the table), ``results/summary.json`` (99_summary), ``results/reproduction.json`` and
``results/reproduce_log.json`` (the reproduction, :mod:`gns_utils.experiments.reproduce`);
nothing is typed by hand. Prints the tables; with ``--readme`` also writes them into that
file between the ``<!-- results:start -->`` and ``<!-- results:end -->`` markers
(``make reproduce`` does this for README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json

import numpy as np
import pandas as pd

from gns_utils.critical_batch import best_runs
from gns_utils.experiments.paths import repo_path
from gns_utils.experiments.pipeline import width_study_verdict
from gns_utils.experiments.profiles import BRANCHING_DIR, DYNAMICS_DIR, NOTEBOOK_DOMAINS, WIDTHS_SUFFIX, display_name
from gns_utils.experiments.report import loss_slope_verdict
from gns_utils.experiments.compute import compute_table, counted_total, sweep_runs
from gns_utils.experiments.store import load_metrics, load_run_summaries, load_run_summary, run_dir
from gns_utils.experiments.summary import (
    is_resolved,
    ratio_interval,
    resolved_trace_goals,
    slope_groups,
    verdict_markdown,
)
from gns_utils.experiments.sweep import runs_table
from gns_utils.theory import fit_optimal_lr

START, END = "<!-- results:start -->", "<!-- results:end -->"
HEADLINE_START, HEADLINE_END = "<!-- headline:start -->", "<!-- headline:end -->"
#: The generated file of every derived number (in the results folder).
KEY_NUMBERS = "KEY_NUMBERS.md"
NOTEBOOK = {domain: notebook for notebook, domain in NOTEBOOK_DOMAINS.items()}


def _fmt(value: float | None, bound: str | None = None) -> str:
    if value is None:
        return "–"
    text = f"{value:,.0f}" if value >= 10 else f"{value:.2g}"
    return {"lower": "> ", "upper": "< "}.get(bound or "none", "") + text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--readme", default=None, help="also write the tables into this file, between the markers")
    args = parser.parse_args()
    text_tables = tables(repo_path(args.results_dir))
    print(text_tables, end="")
    if args.readme:
        readme = repo_path(args.readme)
        text = readme.read_text()
        if START not in text or END not in text:
            raise SystemExit(f"{readme}: markers {START} ... {END} not found; add them where the tables belong")
        note = "<!-- written by `python -m gns_utils.experiments.tables --readme README.md` (run by `make reproduce`) -->\n"
        text = _replace_block(text, START, END, note + text_tables)
        if HEADLINE_START in text and HEADLINE_END in text:
            text = _replace_block(text, HEADLINE_START, HEADLINE_END, note + headline(repo_path(args.results_dir)))
        readme.write_text(text)
        key = repo_path(args.results_dir) / KEY_NUMBERS
        key.write_text(key_numbers_markdown(repo_path(args.results_dir)))
        print(f"[results_table] wrote the tables into {readme} and the key numbers into {key}")


def _replace_block(text: str, start: str, end: str, content: str) -> str:
    head, rest = text.split(start, 1)
    return f"{head}{start}\n{content}{end}{rest.split(end, 1)[1]}"


def headline(root) -> str:
    """The README's three-line verdict, from ``summary.json`` (``99_summary``)."""
    data = json.loads((root / "summary.json").read_text())
    g = data["r2_by_goal"]["b_simple_local_median"]
    groups = slope_groups(pd.DataFrame(data.get("task_slopes", []), columns=["task", "pooled", "slope", "slope_stderr"]))
    follow, steeper = ([display_name(t) for t in groups[k]] for k in ("follow", "steeper"))
    lines = [f"* **Goal by goal**, B_simple / B_crit spans {g['ratio_min']:.2f}–{g['ratio_max']:.2f} (median "
             f"{g['ratio_median']:.2f}) over {g['n_points']} resolved goals of {g['n_tasks']} independent tasks; "
             f"{g['n_differ_from_one']} of them differ from 1 beyond their 95 % interval; R² of y = x {g['identity']:.2f}.",
             f"* **Within a task**, B_crit grows as B_simple does on {', '.join(follow) or 'no task'}; faster on "
             f"{', '.join(steeper) or 'no task'}."]
    cal = data.get("calibration") or {}
    if cal.get("n_points"):
        covered = cal.get("n_exact_covered")
        lines.append(f"* **Where the answer is known** (noisy linear regression), the measured B_crit is "
                     f"{cal['measured_over_exact_min']:.2f}–{cal['measured_over_exact_max']:.2f} of the exact one over "
                     f"{cal['n_points']} goals" + (f", its 95 % interval covering it at {covered}" if covered is not None else "")
                     + (f"; exact B_crit {cal['exact_min']:,.0f} → {cal['exact_max']:,.0f} examples "
                        f"({cal['exact_decades']:.1f} decades)." if cal.get("exact_decades") else "."))
    return "\n".join(lines) + "\n"


#: What one example of a batch is, where a task counts B in smaller units.
EXAMPLE_NAMES = {"language": "sequences", "rl": "segments"}


def _in_examples(summary: dict) -> str:
    """``"; 420 sequences"``: the last goal's B_crit in independent examples (sequences of a language model,
    rollout segments of an actor-critic), where the task counts B in smaller units (tokens, frames); else ``""``."""
    ref = summary.get("reference_run") or {}
    name = EXAMPLE_NAMES.get(summary.get("domain", ""))
    if not (name and summary.get("b_crit") and ref.get("batch_units") and ref.get("batch_examples")):
        return ""
    per_example = float(ref["batch_units"]) / float(ref["batch_examples"])
    return f"; {_fmt(summary['b_crit'] / per_example, summary.get('b_crit_bound'))} {name}"


def tables(root) -> str:
    """:func:`print_tables` as a string (what goes between the README's markers)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_tables(root)
    return out.getvalue()


def print_tables(root) -> None:
    """Print the README's block: the task table, R², the verdict and the last reproduction, as markdown."""
    print("| task | B in | B_crit, last goal ± s.e. (seeds) | B_crit, first goal | B_simple (App. D average) "
          "| B_simple / B_crit | B_simple pooled over runs (per-seed range) | notebook |")
    print("|---|---|---|---|---|---|---|---|")
    for path in sorted(root.glob("*/summary.json")):
        s = json.loads(path.read_text())
        if s.get("profile") is None or "domain" not in s:
            continue
        ratio = s["b_simple"] / s["b_crit"] if s.get("b_simple") and s.get("b_crit") else None
        err = f" ± {s['b_crit_stderr']:,.0f}" if s.get("b_crit_stderr") else ""
        seeds = 1 + len(s.get("config", {}).get("seeds", []))
        print(f"| {display_name(s['task'])} | {s['units']} | {_fmt(s.get('b_crit'), s.get('b_crit_bound'))}{err} ({seeds})"
              f"{_in_examples(s)} "
              f"| {_fmt(s.get('b_crit_start'), s.get('b_crit_start_bound'))} | {_fmt(s.get('b_simple'))} "
              f"| {'–' if ratio is None else f'{ratio:.2f}'} | {_pooled(s)} | `{NOTEBOOK[s['domain']]}` |")
    summary_path = root / "summary.json"
    if summary_path.exists():
        data = json.loads(summary_path.read_text())
        if data.get("trace_points"):
            print("\n" + trace_markdown(pd.DataFrame(data["trace_points"])))
        if "task_slopes" in data:
            print("\nGoal by goal, B_simple summed where each goal is reached against B_crit(goal) (`99_summary`):\n")
            print(summary_verdict(data))
    local = branching_markdown(root)
    if local:
        print("\n" + local.rstrip("\n"))
    comparison = root / "reproduction.json"
    compared: list[dict] = []  # the tasks the last reproduction compared
    if comparison.exists():
        data = json.loads(comparison.read_text())
        compared = data["tasks"]
        minutes = data["total_wall_time_s"] / 60
        rows = [r for r in data["tasks"] if r.get("agrees") is not None]
        same = [r for r in rows if r.get("identical")]
        off = [display_name(r["task"]) for r in rows if not r["agrees"]]
        verdict = ("is identical to float rounding" if data["identical"] else "agrees" if data["agrees"]
                   else f"does NOT agree on {', '.join(off)}")
        if not data["identical"] and same:
            verdict += f" ({len(same)} of its {len(rows)} tasks identical to float rounding)"
        kind = data.get("kind", "determinism check")
        print(f"\nThe last `make reproduce` (profile {data['profile']}, a {kind}) trained "
              f"{data['n_runs'] - data['n_runs_from_before']} of its {data['n_runs']} runs anew in {minutes:.1f} min "
              f"({_notebook_times(root)}); against the results committed before it"
              + (f" (made by earlier code: {len(data['code_changed'])} code file(s) changed since)"
                 if data.get("code_changed") else "")
              + f", it {verdict} "
              "(`results/reproduction.md`).")
    replication = root / "replication.json"
    if replication.exists():
        data = json.loads(replication.read_text())
        rows = [r for r in data["tasks"] if r.get("agrees") is not None]
        agreeing = [display_name(r["task"]) for r in rows if r["agrees"]]
        differing = [f"{display_name(r['task'])} (B_crit {r['b_crit_z']:+.1f} s.e., pooled B_simple ×{r['b_simple_factor']:.2f})"
                     if r.get("b_crit_z") is not None and r.get("b_simple_factor")
                     else f"{display_name(r['task'])} (the replication fitted no B_crit at its hardest goal)"
                     if r.get("b_crit") is None else display_name(r["task"])
                     for r in rows if not r["agrees"]]
        seeds = sorted({s for r in rows for s in r.get("seeds", [])})
        earlier = data.get("earlier_notebooks") or []
        replicated = {r["task"] for r in data["tasks"]}
        unreplicated = [display_name(r["task"]) for r in compared if r["task"] not in replicated]
        print(f"\nThe last replication (`make replicate`: seeds {', '.join(map(str, seeds))}; notebooks "
              f"{', '.join(sorted(data.get('notebooks', [])))}"
              + (f", with {', '.join(earlier)} from an earlier call into the same folder" if earlier else "")
              + f") agrees with these results on {len(agreeing)} of "
              f"{len(rows)} tasks ({data['criteria']})"
              + (f"; it differs on {', '.join(differing)}" if differing else "")
              + (f"; it does not cover {', '.join(unreplicated)}" if unreplicated else "") + " (`results/replication.md`).")
    print(f"\nEvery other number derived from these files: [`results/{KEY_NUMBERS}`](results/{KEY_NUMBERS}).")


def branching_markdown(root) -> str:
    """Notebook 06's comparison, one row per checkpoint (``local_critical_batch/local_cbs.json``), after a line on
    the calibration; empty when the notebook has not run."""
    path = root / BRANCHING_DIR / "local_cbs.json"
    if not path.exists():
        return ""
    data = json.loads(path.read_text())
    cal = data.get("calibration")
    lines = ["Local critical batch by branching (`06_local_critical_batch`, after Merrill et al. 2025)"
             + (f"; on the calibration task it measures {cal['ratio_min']:.2f}–{cal['ratio_max']:.2f} of the exact "
                f"local B_crit (interval holds it at {cal['covered']} of {cal['n']} checkpoints)" if cal else "")
             + ":\n",
             "| task | goal | local B_crit ± s.e. | sweep B_crit(goal) ± s.e. | local / sweep (s.e.) "
             "| tolerance CBS (τ = 0.2) | B_simple there | B_noise there |", "|---|---|---|---|---|---|---|---|"]
    for t in data["tasks"]:
        for r in t["comparison"]:
            def num(key: str, se: str | None = None) -> str:
                value = r.get(key)
                if value is None or not np.isfinite(value):
                    return "–"
                err = r.get(se) if se else None
                return f"{value:,.0f}" + (f" ± {err:,.0f}" if err is not None and np.isfinite(err) else "")
            ratio = r.get("local_over_sweep")
            z = r.get("local_over_sweep_z")
            ratio_text = "–" if ratio is None or not np.isfinite(ratio) else f"{ratio:.2f} ({z:+.1f})"
            lines.append(f"| {display_name(t['task'])} | {r['goal']:g} | {num('local_b_crit', 'local_b_crit_stderr')} "
                         f"| {num('sweep_b_crit', 'sweep_b_crit_stderr')} | {ratio_text} | {num('tolerance_cbs')} "
                         f"| {num('b_simple')} | {num('b_noise')} |")
    return "\n".join(lines) + "\n\n" + _branching_verdict(data) + "\n"


def _branching_verdict(data: dict) -> str:
    """What the three measurements agree and disagree on, from the comparison's numbers."""
    rows = [r for t in data["tasks"] for r in t["comparison"] if r.get("local_b_crit") is not None
            and np.isfinite(r["local_b_crit"]) and r.get("local_over_sweep") is not None
            and np.isfinite(r["local_over_sweep"])]
    if not rows:
        return "No checkpoint gave a local B_crit to compare with the sweep's."
    above = sum(r["local_over_sweep_z"] > 2 for r in rows)
    below = sum(r["local_over_sweep_z"] < -2 for r in rows)
    ratios = [r["local_over_sweep"] for r in rows]
    simple = [r["b_simple_over_local"] for r in rows if r.get("b_simple_over_local") is not None
              and np.isfinite(r["b_simple_over_local"])]
    edges = sum(t.get("n_rate_edge", 0) for t in data["tasks"])
    text = (f"**Verdict.** Local B_crit / sweep B_crit(goal): {min(ratios):.1f}–{max(ratios):.1f}×, above beyond "
            f"2 s.e. at {above} of {len(rows)} checkpoints, below at {below}. ")
    if simple:
        text += f"B_simple / local B_crit: {min(simple):.2f}–{max(simple):.2f}. "
    if above > len(rows) / 2:
        text += ("Measured locally the critical batch is larger, and B_simple further below it, as Merrill et al. "
                 "found on OLMo; the paper's B_simple ≈ B_crit concerns whole runs. ")
    elif below > len(rows) / 2:
        text += "Measured locally the critical batch is smaller, unlike Merrill et al.'s finding. "
    else:
        text += "The local and whole-run critical batches do not differ consistently. "
    for task, study in (data.get("sensitivity") or {}).items():
        tau = min(x["tolerance"] for x in study) if study else None
        rows_ = sorted((r for r in study if r["tolerance"] == tau and r.get("b_crit") is not None
                        and np.isfinite(r["b_crit"])), key=lambda r: r["fraction"])
        if len(rows_) >= 2:
            text += (f"It depends on Δ ({display_name(task)}, goal {rows_[0]['goal']:g}): "
                     + ", ".join(f"{r['b_crit']:,.0f} ± {r['b_crit_stderr']:,.0f}" for r in rows_)
                     + " at Δ = " + ", ".join(format(r["fraction"], "g") for r in rows_) + " × loss. ")
    if edges:
        text += (f"At {edges} (B, checkpoint) pairs the fastest rate was an end of the widened grid (S(B) an upper "
                 "bound).")
    return text


def _branching_lines(root) -> list[str]:
    """Notebook 06's verdict (:func:`gns_utils.experiments.branching_runs.verdict_lines`)."""
    from gns_utils.experiments.branching_runs import verdict_lines

    path = root / BRANCHING_DIR / "local_cbs.json"
    return verdict_lines(json.loads(path.read_text())) if path.exists() else []


def trace_markdown(points: pd.DataFrame) -> str:
    """The third-party workloads of Fig. 4 (``trace_points`` of ``summary.json``), one row each, with their caveats:
    B_crit at the hardest resolved goal (or the bound), B_simple where the smallest batch size's run reaches it."""
    lines = ["Third-party traces on Fig. 4 (AdaptDL / Pollux, OSDI 2021; `gns_utils/experiments/adaptdl_traces/`). Their "
             "learning rates follow AdaptDL's scaling rule from a rate tuned at the smallest batch size, not a tuned "
             "grid, and the schedules decay; Adam workloads' statistics are in Adam's preconditioned metric.\n",
             "| workload | optimizer, rate rule | batch sizes | goals resolved | B_crit, hardest resolved goal ± s.e. "
             "| B_simple there | B_simple / B_crit |", "|---|---|---|---|---|---|---|"]
    for workload, group in points.groupby("workload", sort=False):
        group = group.sort_values("target_index")
        ok = group[resolved_trace_goals(group)]
        row = ok.iloc[-1] if len(ok) else group.iloc[-1]
        pre = ", preconditioned" if row["preconditioned"] else ""
        if len(ok):
            value = f"{row['b_crit']:,.0f} ± {row['b_crit_stderr']:,.0f}"
            ratio = f"{row['noise_scale'] / row['b_crit']:.2f}"
        else:
            value = f"≥ {row['b_crit']:,.0f} (bound)" if row["bound"] == "lower" else "unresolved"
            ratio = "–"
        lines.append(f"| {row['display_name']} | {row['optimizer']}{pre}, {row['lr_rule']} | "
                     f"{int(row['batch_size_min']):,}–{int(row['batch_size_max']):,} {row['units']} | "
                     f"{len(ok)} of {len(group)} | {value} | {row['noise_scale']:,.0f} | {ratio} |")
    return "\n".join(lines)


def _pooled(s: dict) -> str:
    """A task's B_simple pooled over its runs (:func:`gns_utils.experiments.pipeline.pooled_b_simple`) with the
    range of its per-seed medians."""
    if not s.get("b_simple_pooled"):
        return "–"
    low, high = s.get("b_simple_pooled_seed_min"), s.get("b_simple_pooled_seed_max")
    span = f" ({_fmt(low)}–{_fmt(high)})" if low and high and high > low * 1.0005 else ""
    return f"{_fmt(s['b_simple_pooled'])}{span}"


def summary_verdict(data: dict) -> str:
    """:func:`gns_utils.experiments.summary.verdict_markdown` from a written ``summary.json``."""
    table = pd.DataFrame(data["tasks"])
    slopes = pd.DataFrame(data["task_slopes"])
    return verdict_markdown(table, data["r2"], data["r2_by_goal"], slopes, data.get("calibration") or {},
                            traces=data.get("trace_goals"))


def key_numbers_markdown(root) -> str:
    """``KEY_NUMBERS.md``: every derived number of :func:`key_numbers`, one bullet each."""
    lines = key_numbers(root)
    return ("# Key numbers\n\n<!-- written by `python -m gns_utils.experiments.tables --readme README.md` "
            "(run by `make reproduce`) from the files in this folder; do not edit -->\n\n"
            + "\n".join(f"* {line}" for line in lines) + "\n")


def _notebook_times(root) -> str:
    """Each notebook's wall time in the last reproduction (``reproduce_log.json``)."""
    log = json.loads((root / "reproduce_log.json").read_text())
    return ", ".join(f"{k} {v['wall_time_s'] / 60:.1f} min" for k, v in log["notebooks"].items())


def _matched_lines(root, tasks: list[dict]) -> list[str]:
    """The goal-by-goal comparison's key numbers (see :func:`key_numbers`)."""
    lines, spreads = [], []
    for s in tasks:
        goals = [g for g in s["goals"] if g["bound"] == "none" and g.get("b_simple_local_median")]
        ratios = [g["b_simple_local_median"] / g["b_crit"] for g in goals]
        if goals:  # each ratio's 95 % interval, from B_crit's seed-aware interval (summary.ratio_interval)
            frame = pd.DataFrame(goals)
            for column in ("ci_low", "ci_high", "b_crit_stderr"):
                frame[column] = pd.to_numeric(frame.get(column), errors="coerce")
            low, high = ratio_interval(frame, "b_simple_local_median")
            intervals = ", ".join(f"{r:.2f} [{lo:.2f}, {hi:.2f}]" for r, lo, hi in zip(ratios, low, high))
            lines.append(f"{s['task']}: B_simple where each goal is reached / B_crit(goal) with its 95 % interval: "
                         f"{intervals} (first goal → last).")
        spreads += [g["b_simple_local_log10_spread"] for g in goals if g.get("b_simple_local_log10_spread") is not None]
        averaged = s["b_simple"] / s["b_crit_step_average"] if s.get("b_crit_step_average") else float("nan")
        lines.append(f"{s['task']}: B_simple where each goal is reached / B_crit(goal) = "
                     f"{', '.join(f'{r:.2f}' for r in ratios)} (first goal → last); averaged over training "
                     f"(App. D B_simple {s['b_simple']:,.0f} / A.3 step-averaged B_crit {s['b_crit_step_average']:,.0f}) "
                     f"{averaged:.2f}.")
    if spreads:
        lines.append(f"Appendix C check: across the best runs of different batch sizes, B_simple at a goal has a spread "
                     f"(std of log10) of {min(spreads):.2f}–{max(spreads):.2f}, median {np.median(spreads):.2f} "
                     f"(a factor {10 ** np.median(spreads):.2f}).")
    summary = root / "summary.json"
    by_goal = json.loads(summary.read_text()).get("r2_by_goal", {}) if summary.exists() else {}
    if "b_simple_local_median" in by_goal:
        r = by_goal["b_simple_local_median"]
        lines.append(f"Pooled over the {r['n_points']:.0f} fitted goals of all tasks, B_simple at the goal (median over "
                     f"batch sizes) against B_crit(goal): R² {r['fit']:.2f} (free fit), {r['identity']:.2f} (y = x); "
                     f"B_simple / B_crit median {r['ratio_median']:.2f}, range {r['ratio_min']:.2f}–{r['ratio_max']:.2f}.")
    return lines


def _calibration_lines(s: dict) -> list[str]:
    """The synthetic task: measured B_crit per goal against the two exact answers, and its seed spread."""
    goals = [g for g in s["goals"] if g.get("b_crit") and g.get("b_crit_predicted")]
    if not goals:
        return []
    cells = ", ".join(f"{g['b_crit']:,.0f}{'' if g['bound'] == 'none' else ' (bound)'} / {g['b_crit_predicted']:,.0f}"
                      f" / {g['b_crit_exact']:,.0f}" for g in goals)
    spread = [g["b_crit_seed_rel_std"] for g in goals if g.get("b_crit_seed_rel_std") is not None]
    seeds = (f" Seed-to-seed spread of B_crit (relative std over {1 + len(s['config'].get('seeds', []))} seeds): "
             f"{min(spread):.0%}–{max(spread):.0%}." if spread else "")
    fitted = [g for g in goals if g["bound"] == "none" and g.get("b_crit_stderr")]
    rel = [g["b_crit_stderr"] / g["b_crit"] for g in fitted]
    means = [g["b_crit_seed_mean"] / g["b_crit_predicted"] for g in goals if g.get("b_crit_seed_mean")]
    exact = [g["b_crit_exact"] / g["b_crit"] for g in goals if g.get("b_crit_exact")]
    local = [g["b_simple_local_median"] / g["b_crit"] for g in goals if g.get("b_simple_local_median")]
    extra = []
    if rel:
        extra.append(f"the fit's relative standard error {min(rel):.0%}–{max(rel):.0%}")
    if means:
        extra.append(f"geometric mean over seeds / predicted {min(means):.2f}–{max(means):.2f}")
    if exact:
        extra.append(f"exact / measured {min(exact):.2f}–{max(exact):.2f}")
    if local:
        extra.append(f"B_simple at the goal / B_crit {min(local):.1f}–{max(local):.1f}")
    return [f"Calibration ({s['task']}, synthetic, exact theory): B_crit measured / predicted by App. D (mean "
            f"B_noise on the full-batch path) / exact for tuned constant-rate SGD, per goal: {cells}.{seeds}"
            + (f" Per goal: {'; '.join(extra)}." if extra else "")]


#: The per-goal predictors whose ratio to B_crit :func:`_predictor_by_task_lines` lists per task.
_TASK_PREDICTORS = ("b_simple_local_median", "b_simple_checkpoint", "b_noise", "b_simple_preconditioned")


def _predictor_by_task_lines(tasks: list[dict]) -> list[str]:
    """Per task, each predictor / B_crit over the fitted goals: median (min–max)."""
    lines = []
    for s in tasks:
        cells = []
        for name in _TASK_PREDICTORS:
            ratios = [g[name] / g["b_crit"] for g in s["goals"]
                      if g["bound"] == "none" and g.get("b_crit") and (g.get(name) or 0) > 0]
            if ratios:
                cells.append(f"{name} {np.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})")
        if cells:
            lines.append(f"{s['task']}, predictor / B_crit over its fitted goals, median (range): {', '.join(cells)}.")
    return lines


def _fair_test_lines(root, tasks: list[dict]) -> list[str]:
    """Smoothing systematic, run length at B_crit, the per-predictor R² and the Adam β2 comparison."""
    lines = []
    systematic = [g["b_crit_smoothing_systematic"] for s in tasks for g in s["goals"]
                  if g.get("b_crit_smoothing_systematic") is not None and g["bound"] == "none"]
    if systematic:
        lines.append(f"Smoothing the goal metric (A.3) against not smoothing it moves B_crit by a median "
                     f"{np.median(systematic):.0%} (max {max(systematic):.0%}) over the fitted goals of all tasks.")
    steps = []
    for s in tasks:
        ref = s["reference_run"]
        goal = s["goals"][-1]
        run = load_run_summary(run_dir(root, s["task"], ref["run_id"]), expected_run_id=ref["run_id"])
        n = run["steps_to_goal"].get(str(float(goal["goal"]))) if run else None
        if n:
            steps.append(f"{n:,.0f} ({s['task']}, B = {ref['batch_units']:,.0f})")
    if steps:
        lines.append("Steps the reference run (the best-tuned run nearest B_crit) needs for the last goal: "
                     + ", ".join(steps) + ".")
    summary = root / "summary.json"
    by_goal = json.loads(summary.read_text()).get("r2_by_goal", {}) if summary.exists() else {}
    for name, r in by_goal.items():
        if r.get("n_points"):
            lines.append(f"Predictor {name} over {r['n_points']:.0f} goals: R² {r['fit']:.2f} (free fit), "
                         f"{r['identity']:.2f} (y = x); ratio to B_crit median {r['ratio_median']:.2f} "
                         f"({r['ratio_min']:.2f}–{r['ratio_max']:.2f}).")
    by_name = {s["task"]: s for s in tasks}
    for s in tasks:
        base = by_name.get(s["task"].replace("_beta2_099", "")) if s["task"].endswith("_beta2_099") else None
        if base is None:
            continue
        pairs = {g["goal"]: g for g in base["goals"]}
        cells = ", ".join(f"{g['goal']:g}: {pairs[g['goal']]['b_crit']:,.0f} → {g['b_crit']:,.0f}"
                          for g in s["goals"] if g["goal"] in pairs and g.get("b_crit") and pairs[g["goal"]].get("b_crit"))
        lines.append(f"Adam β2 0.999 → 0.99 ({base['task']}), B_crit per goal: {cells}.")
    return lines


def _rl_lines(s: dict) -> list[str]:
    """A reinforcement-learning task: the policy network's own B_simple against B_crit, per-frame against
    per-segment B_simple at the checkpoints, and the seed spread (:mod:`gns_utils.experiments.rl`)."""
    goals = [g for g in s["goals"] if g.get("bound") == "none" and g.get("b_crit")]
    ratio = [g["b_simple_policy_local_median"] / g["b_crit"] for g in goals if g.get("b_simple_policy_local_median")]
    frames = [g["b_simple_frames"] / g["b_simple_checkpoint"] for g in goals
              if g.get("b_simple_frames") and g.get("b_simple_checkpoint")]
    spread = [g["b_crit_seed_rel_std"] for g in goals if g.get("b_crit_seed_rel_std") is not None]
    fit = [g["b_crit_stderr"] / g["b_crit"] for g in goals if g.get("b_crit_stderr")]
    out = []
    if ratio:
        b_crits = ", ".join(f"{g['b_crit']:,.0f}" for g in goals)
        out.append(f"{s['task']} (frames): B_crit per goal {b_crits}; the "
                   f"policy network's own B_simple where each goal is reached / B_crit(goal) = "
                   f"{', '.join(f'{r:.1f}' for r in ratio)} (the whole loss's: see its line above).")
    if frames:
        out.append(f"{s['task']}: B_simple from groups of shuffled frames / from groups of whole environment segments, "
                   f"same frames, at the reference run's goals: {', '.join(f'{r:.2f}' for r in frames)} "
                   f"(median {np.median(frames):.2f}).")
    if spread and fit:
        out.append(f"{s['task']}: seed-to-seed spread of B_crit {100 * min(spread):.0f}–{100 * max(spread):.0f} % "
                   f"over {max(g.get('n_seeds') or 0 for g in goals)} seeds, against a fit standard error of "
                   f"{100 * min(fit):.0f}–{100 * max(fit):.0f} %.")
    return out


def _compute_lines(root, task_names: list[str]) -> list[str]:
    """Where the sweeps' compute went (:func:`gns_utils.experiments.compute.compute_table`)."""
    table = compute_table(root, [t for t in task_names if (root / t / "experiment.json").exists()])
    if table.empty:
        return []
    stopped = sum(sum(r["status"] == "pruned" for r in sweep_runs(root, t)) for t in table["task"])
    cells = ", ".join(f"{r.task} {r.examples_all_seeds / 1e6:,.2f} M ({100 * r.share_needed_all_seeds:.0f} %; "
                      f"main seed's grid {100 * r.share_needed:.0f} %"
                      + ("; drawn as sufficient statistics, at no cost per example" if r.statistics else "") + ")"
                      for r in table.itertuples())
    n_counted, examples, share = counted_total(table)
    if n_counted:
        cells += (f"; over the {n_counted} tasks{' not drawn as sums' if n_counted < len(table) else ''}"
                  f": {examples / 1e6:,.1f} M examples, of which the fits use {100 * share:.1f} %")
    return [f"Sweep compute, every seed: examples trained (share the seed-averaged (2.11) fits use) {cells}; evaluation "
            f"{100 * table['eval_share'].min():.1f}–{100 * table['eval_share'].max():.1f} % of the compute; "
            f"{stopped} of {int(table['runs'].sum())} runs stopped once they could no longer be the fastest."]


def _dynamics_lines(root) -> list[str]:
    """Notebook 05: B_simple's rise when the temperature is cut (Fig 15) and the adaptive batch size against the
    fixed-batch sweep (Fig 16), from ``noise_dynamics/dynamics.json`` (:mod:`gns_utils.experiments.dynamics`)."""
    path = root / DYNAMICS_DIR / "dynamics.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    out = []
    for t in data["temperature"]:
        cut = [r for r in t["rises"] if r["temperature_factor"] < 1]
        same = [r for r in t["rises"] if r["run"] != "unchanged" and r["temperature_factor"] == 1]
        out.append(f"Fig 15, {t['task']} ({t['optimizer']}, B = {t['batch_size']}, lr {t['lr']:.3g}; T cut {t['k']:g}× "
                   f"on steps {t['start']:,}–{t['end']:,}): B_simple in the window's second half / the unchanged run's "
                   + ", ".join(f"{r['run']} ×{r['rise_in_window']:.2f}" for r in cut + same)
                   + "; after the window " + ", ".join(f"×{r['rise_after']:.2f}" for r in cut + same) + ".")
    a = data.get("adaptive")
    if a:
        rows = a["comparison"]
        sizes = sorted({b for seed in a["batch_sizes"].values() for b in seed})
        out.append(f"Fig 16, {a['task']} (r = E_min/S_min = {a['r']:,.0f}; {len(a['batch_sizes'])} seeds; batch sizes "
                   f"used {', '.join(str(b) for b in sizes)}): per goal " + "; ".join(
                       f"{r['goal']:g}: γ {r['gamma_predicted']:.2f} (1 + √γ = {r['overhead_predicted']:.2f}), measured "
                       f"S/S_min {r['steps_over_s_min']:.2f}, E/E_min {r['examples_over_e_min']:.2f}, "
                       f"(S/S_min − 1)(E/E_min − 1) {r['tradeoff_measured']:.2f}, saving against the fixed-batch "
                       f"front {r['step_saving']:.2f}× in steps and {r['examples_saving']:.2f}× in examples "
                       f"(predicted {r['saving_predicted']:.2f}× in both)" for r in rows) + ".")
    return out


def _growth(s: dict) -> str:
    """B_crit's growth from the first goal to the last: "≥" where a bound makes the factor a lower bound (the
    first goal's B_crit an upper bound, or the last one's a lower bound), "≤" the other way, "?" when they clash."""
    sides = {{"upper": "≥", "lower": "≤"}.get(s.get("b_crit_start_bound") or "none"),
             {"lower": "≥", "upper": "≤"}.get(s.get("b_crit_bound") or "none")} - {None}
    if len(sides) > 1:
        return "×?"
    return f"{''.join(sides)}{' ' if sides else ''}×{s['b_crit'] / s['b_crit_start']:.2g}"


def key_numbers(root) -> list[str]:
    """The derived numbers the README's discussion quotes, one markdown line each.

    B_crit's relative standard error and growth (first goal → last) per task, its span over
    the tasks, the range of B_simple / B_crit, B_noise of the (2.6) fit to the best learning
    rates at the last goal (image tasks; as in each task's ``figures/optimal_lr``), and the
    Fig 8 width study's verdict (:func:`gns_utils.experiments.pipeline.width_study_verdict`), and the
    matched comparison: per task the range over goals of B_simple where the goal is reached / B_crit(goal),
    the spread of that B_simple over batch sizes (the Appendix C check), both quantities averaged over
    training (App. D for B_simple, A.3 for B_crit), and the pooled per-goal R² of ``summary.json``.
    """
    summaries = [json.loads(p.read_text()) for p in sorted(root.glob("*/summary.json"))]
    tasks = [s for s in summaries if s.get("profile") and "domain" in s and s.get("b_crit")
             and s.get("b_crit_bound") == "none" and s["domain"] != "synthetic"]
    if not tasks:
        return []
    lines = [line for s in summaries if s.get("domain") == "synthetic" for line in _calibration_lines(s)]
    rel = [s["b_crit_stderr"] / s["b_crit"] for s in tasks if s.get("b_crit_stderr")]
    growth = ", ".join(f"{_growth(s)} ({s['task']})" for s in tasks if s.get("b_crit_start"))
    lines.append(f"B_crit at the last goal has a relative standard error of {100 * min(rel):.0f}–{100 * max(rel):.0f} %; "
                 f"from the first goal to the last it grows {growth} (≥: the first goal's B_crit is an upper bound, "
                 "so the growth is a lower bound).")
    b_crits = [s["b_crit"] for s in tasks]
    ratios = [s["b_simple"] / s["b_crit"] for s in tasks if s.get("b_simple")]
    lines.append(f"B_crit spans {np.log10(max(b_crits) / min(b_crits)):.1f} decades over the tasks "
                 f"({min(b_crits):,.0f} → {max(b_crits):,.0f}); B_simple / B_crit ranges {min(ratios):.2f}–{max(ratios):.2f}.")
    fitted = [(g["b_crit"], s["task"], g["goal"]) for s in tasks for g in s.get("goals", [])
              if g.get("bound") == "none" and is_resolved(g.get("b_crit"), g.get("b_crit_stderr"))[0]]
    if fitted:
        low, high = min(fitted), max(fitted)
        lines.append(f"Goal by goal, the fitted B_crit of these tasks spans {np.log10(high[0] / low[0]):.2f} decades: "
                     f"{low[0]:,.1f} ({low[1]}, goal {low[2]:g}) → {high[0]:,.0f} ({high[1]}, goal {high[2]:g}).")
    lines += _matched_lines(root, tasks)
    lines += _fair_test_lines(root, tasks)
    lines += _predictor_by_task_lines(tasks)
    lines += [line for s in tasks if s["domain"] == "rl" for line in _rl_lines(s)]
    lines += [f"{s['task']}: " + loss_slope_verdict(s["goals"], s["units"], s["config"]["data_kwargs"].get("seq_len"))
              .replace("**", "") for s in tasks if s["units"] == "tokens"]
    points, spans, edges, optimal_lr_lines = [], [], 0, []
    for s in tasks:
        runs = load_run_summaries(root, s["task"])
        sweep = [r for r in runs if not r["config"].get("b_noise_examples")  # the reference re-run measures B_noise
                 and r["config"].get("seed") == s["config"]["seed"]]  # repeats at other seeds share the folder
        best = best_runs(runs_table(sweep), batch="batch_units")
        last = best[np.isclose(best["goal"], s["b_crit_goal"])].dropna(subset=["steps"])
        points.append(len(last))
        spans.append(np.log2(last["batch_units"].max() / last["batch_units"].min()))
        edges += int(last["lr_on_edge"].sum())
        if s["domain"] == "image" and len(last) >= 3:
            _, b_noise = fit_optimal_lr(last["batch_units"], last["lr"])
            hessian = f"{s['b_noise']:,.0f}" if s.get("b_noise") else "–"
            optimal_lr_lines.append(f"{s['task']}: B_simple {s['b_simple']:,.0f}, Hessian B_noise (2.8) {hessian}, "
                                    f"B_noise of the (2.6) fit to the best learning rates {b_noise:,.0f}; "
                                    f"B_crit {s['b_crit']:,.0f}.")
    lines.append(f"The last-goal fits use {min(points)}–{max(points)} batch sizes spanning "
                 f"2^{min(spans):.0f}–2^{max(spans):.0f}; best learning rates on the edge of their grid: {edges}.")
    lines += optimal_lr_lines
    lines += _compute_lines(root, [s["task"] for s in summaries if s.get("profile") and "domain" in s])
    lines += _dynamics_lines(root)
    lines += _branching_lines(root)
    for s in tasks:
        study = s["task"] + WIDTHS_SUFFIX
        runs = load_run_summaries(root, study)
        frame = load_metrics(root, study)
        if runs and not frame.empty:
            hidden = {r["run_id"]: r["config"]["model_kwargs"].get("hidden") for r in runs}
            frame["hidden"] = frame["run_id"].map(hidden)
            verdict = width_study_verdict(frame)
            lines.append(f"Fig 8 width study (LSTM widths {', '.join(str(h) for h in sorted(set(hidden.values())))}): "
                         f"spread of log10 B_simple across widths {verdict['spread_vs_loss']:.2f} at equal loss vs "
                         f"{verdict['spread_vs_tokens']:.2f} at equal tokens ({'held' if verdict['held'] else 'did not hold'}).")
    return lines


if __name__ == "__main__":
    main()
