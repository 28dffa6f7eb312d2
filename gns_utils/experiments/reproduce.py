"""``make reproduce``: train every run of a profile anew, then compare with the committed reference.

Usage::

    python -m gns_utils.experiments.reproduce [--profile cpu|smoke|paper] [--only NOTEBOOK ...]
                                              [--jobs N] [--results-dir results]

A reproduction never replays committed results:

1. **Fresh start** (no reproduction in progress in ``<results_dir>``): the reference — the task
   summaries of the ``results/`` the checkout's commit holds (``git``; the files on disk when the
   folder is not tracked) — is copied to ``<results_dir>/.reproduction/reference/``, and every
   output of the notebooks to run (their task folders with all run folders, executed copies,
   figures) is deleted, with the record of the last reproduction (:data:`RECORD_FILES`). The marker ``<results_dir>/.reproduction/state.json`` records the profile,
   the notebooks, the start time and the commit.
2. The notebooks run through papermill, ``--jobs`` domain notebooks at a time (each kernel
   single-threaded), longest first; one that reads another's sweeps (:data:`AFTER`) starts when that
   one ends (:func:`run_in_order`); then ``99_summary``. Every run is trained now.
3. **Interrupted?** Run the same command again: the marker says a reproduction is in progress, so
   the runs it finished are kept (the sweeps resume) and only the rest is trained.
4. **At the end** the new task summaries are compared with the reference: per task B_crit (± s.e.),
   B_simple and their ratio, and the difference in standard errors; the verdict is printed and
   written to ``<results_dir>/reproduction.json`` and ``reproduction.md``. Every run folder is
   checked to have been trained after the reproduction started. The marker is removed.

A notebook that fails is reported and the others still run; the marker then stays, so the next
call resumes. ``<results_dir>/reproduce_log.json`` keeps the wall time of every notebook and of
the whole reproduction (over all calls that made it), and their CPU time (user + system, the kernels
included), which other work on the machine inflates less than the wall time.

``--seed K`` trains every sweep at main seed ``K`` (its repeats move with it): with the committed seed (0)
the comparison is a **determinism check** (identical results are expected, but only on the same hardware
and library versions); at other seeds it is a **replication**, judged by the seed-aware standard errors.
``make replicate`` runs one at seed :data:`REPLICATION_SEED` into ``replication/`` (ignored by git),
against the committed ``results/`` (``--reference-dir``).

``--exhaustive`` is the baseline the engine is timed against: every domain notebook that has the
parameters runs with ``exhaustive=True`` (every learning rate trained to the end) and
``goal_source="subset"`` (the goal metric evaluated on a fixed training subset at every logged step).
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import papermill as pm

from gns_utils.experiments.config import PROFILES
from gns_utils.experiments.paths import repo_path, repo_root
from gns_utils.experiments.profiles import NOTEBOOK_DOMAINS, task_names
from gns_utils.experiments.store import load_run_summaries, provenance, read_json, write_json_atomic

SUMMARY_NOTEBOOK = "99_summary"
#: Longest first (at cpu), so that two workers finish together; the summary runs last, alone.
NOTEBOOKS = ["01_image_classification", "03_autoencoder", "02_language_model", "06_local_critical_batch",
             "00_calibration", "04_reinforcement_learning", "05_noise_dynamics", SUMMARY_NOTEBOOK]
#: Notebooks that read another's results start when it has finished (at once when it is not part of the run).
AFTER = {"05_noise_dynamics": "01_image_classification", "06_local_critical_batch": "01_image_classification"}
#: B_crit agrees when the two fits differ by at most this many combined standard errors.
AGREE_STDERRS = 2.0
#: B_simple (no standard error is stored) agrees when the two values are within this factor.
AGREE_FACTOR = 1.25
STATE_DIR = ".reproduction"
#: The baseline's notebook parameters (``--exhaustive``), passed to the notebooks that declare them.
EXHAUSTIVE_PARAMETERS = {"exhaustive": True, "goal_source": "subset"}
#: The record of a reproduction, written at its end (and by each notebook, the log).
RECORD_FILES = ("reproduction.json", "reproduction.md", "reproduce_log.json")
#: ``make replicate``'s main seed: far from the committed seeds (0 and its repeats 1, 2), so that every run differs.
REPLICATION_SEED = 1000


def outputs(results_dir: Path, notebook: str, profile: str) -> list[Path]:
    """What a notebook writes under ``results_dir`` at ``profile`` (deleted on a fresh start)."""
    paths = [results_dir / f"{notebook}.ipynb"]
    if notebook == SUMMARY_NOTEBOOK:
        return paths + [results_dir / "summary.json", results_dir / "figures"]
    return paths + [results_dir / task for task in task_names(NOTEBOOK_DOMAINS[notebook], profile)]


def _is_summary(rel: str) -> bool:
    """``summary.json`` or ``<task>/summary.json``, relative to the results folder."""
    return rel == "summary.json" or (rel.count("/") == 1 and rel.endswith("/summary.json"))


def _reference_files(results_dir: Path) -> dict[str, bytes]:
    """The committed task summaries and cross-task summary: ``{relative path: content}``.

    From ``git`` at ``HEAD`` when ``results_dir`` is tracked in the repository; else the
    files on disk.
    """
    try:
        rel_dir = results_dir.resolve().relative_to(repo_root().resolve()).as_posix()
        listed = subprocess.run(["git", "ls-tree", "-r", "--name-only", "HEAD", "--", rel_dir], cwd=repo_root(),
                                capture_output=True, text=True, timeout=60, check=True).stdout.split()
        files = {}
        for path in listed:
            rel = path[len(rel_dir) + 1:]
            if _is_summary(rel):
                files[rel] = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=repo_root(), capture_output=True,
                                            timeout=60, check=True).stdout
        if files:
            return files
    except (ValueError, OSError, subprocess.SubprocessError):
        pass
    return {p.relative_to(results_dir).as_posix(): p.read_bytes()
            for p in [results_dir / "summary.json", *results_dir.glob("*/summary.json")]
            if p.is_file() and _is_summary(p.relative_to(results_dir).as_posix())}


def start_or_resume(results_dir: Path, profile: str, notebooks: list[str], exhaustive: bool = False,
                    seed: int = 0, reference_dir: Path | None = None) -> dict[str, Any]:
    """Begin a fresh reproduction (reference aside, outputs deleted) or resume the one in progress.

    Returns:
        The state (``profile``, ``notebooks``, ``exhaustive``, ``started``, ``resumed``, ``git_commit``,
        ``elapsed_s``).

    Raises:
        SystemExit: a reproduction of another profile, set of notebooks or ``--exhaustive`` setting is in
            progress here (resuming it with other settings would mix two kinds of runs in one record).
    """
    state_dir = results_dir / STATE_DIR
    state = read_json(state_dir / "state.json")
    if state is not None:
        running = bool(state.get("exhaustive", False))
        if (state["profile"] != profile or sorted(state["notebooks"]) != sorted(notebooks) or running != exhaustive
                or state.get("seed", 0) != seed):
            flag = " --exhaustive" if running else ""
            raise SystemExit(
                f"a reproduction of profile {state['profile']!r}{flag} at seed {state.get('seed', 0)} "
                f"({', '.join(state['notebooks'])}) is in "
                f"progress in {results_dir}; finish it by running that command again, or delete {state_dir} to "
                "start over")
        state["resumed"] += 1
        print(f"[reproduce] resuming the reproduction started {state['started']} (finished runs are kept)", flush=True)
        return state
    if state_dir.exists():
        shutil.rmtree(state_dir)
    reference = state_dir / "reference"
    for rel, content in _reference_files(reference_dir or results_dir).items():
        (reference / rel).parent.mkdir(parents=True, exist_ok=True)
        (reference / rel).write_bytes(content)
    removed = 0
    # the record of the last reproduction goes too: while this one runs, nothing may describe an old one
    record = [results_dir / name for name in RECORD_FILES] if set(notebooks) - {SUMMARY_NOTEBOOK} else []
    for path in record + [p for notebook in notebooks for p in outputs(results_dir, notebook, profile)]:
        if path.is_dir():
            shutil.rmtree(path)
            removed += 1
        elif path.exists():
            path.unlink()
            removed += 1
    state = {"profile": profile, "notebooks": notebooks, "exhaustive": exhaustive, "seed": seed, "resumed": 0,
             "elapsed_s": 0.0,
             "started": provenance()["timestamp"], "git_commit": provenance()["git_commit"]}
    write_json_atomic(state_dir / "state.json", state)
    n_ref = len([p for p in reference.rglob("summary.json")]) if reference.exists() else 0
    print(f"[reproduce] fresh start: {n_ref} reference summaries kept aside in {reference}; {removed} previous "
          f"outputs deleted{', so every run is trained now' if record else ''}", flush=True)
    return state


def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children (the notebook kernels)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_notebook(name: str, profile: str, results_dir: str, exhaustive: bool = False, seed: int = 0) -> dict[str, Any]:
    """Execute one notebook with papermill; return its status, error, wall time and CPU time.

    ``exhaustive``: pass :data:`EXHAUSTIVE_PARAMETERS` (those the notebook declares); ``seed``: the
    domain notebooks' main seed (their repeats move with it)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the kernel: one thread per notebook
    print(f"[reproduce] {name} at profile={profile} started", flush=True)
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    entry: dict[str, Any] = {"output": str(Path(results_dir) / f"{name}.ipynb")}
    source = str(repo_path("notebooks", f"{name}.ipynb"))
    parameters = {"profile": profile, "results_dir": results_dir}
    if name != SUMMARY_NOTEBOOK:
        parameters["progress"] = False
        if seed:
            parameters["seed"] = seed
    if exhaustive:
        declared = pm.inspect_notebook(source)
        parameters.update({k: v for k, v in EXHAUSTIVE_PARAMETERS.items() if k in declared})
    try:
        pm.execute_notebook(source, str(repo_path(results_dir) / f"{name}.ipynb"),
                            parameters=parameters, cwd=str(repo_path("notebooks")), progress_bar=False,
                            log_output=False)
        entry["status"] = "ok"
    except Exception as err:  # noqa: BLE001 — report and go on with the other notebooks
        entry["status"] = "failed"
        entry["error"] = f"{type(err).__name__}: {str(err)[-2000:]}"
        print(f"[reproduce] {name} FAILED: {entry['error']}", file=sys.stderr, flush=True)
    entry["wall_time_s"] = round(time.perf_counter() - t0, 1)
    entry["cpu_time_s"] = round(_cpu_seconds() - cpu0, 1)
    print(f"[reproduce] {name}: {entry['status']} in {entry['wall_time_s'] / 60:.1f} min", flush=True)
    return entry


def run_in_order(domain: list[str], jobs: int, pool: Any, finished: Any, *args: Any, run: Any = None) -> None:
    """Run the ``domain`` notebooks on ``pool``, ``jobs`` at a time, in :data:`NOTEBOOKS` order (longest first).

    A notebook of :data:`AFTER` waits until the one it reads has finished, then goes ahead of the shorter
    notebooks still queued (notebooks are submitted only when a worker is free, so a released one is not
    stuck behind a queue filled at the start). ``finished(name, entry)`` is called as each one ends;
    ``run(name, *args)`` (default :func:`run_notebook`) executes one.
    """
    run = run or run_notebook
    waiting = [n for n in domain if AFTER.get(n) in domain]
    ready = [n for n in domain if n not in waiting]
    futures: dict[Any, str] = {}

    def fill() -> None:
        ready.sort(key=lambda n: NOTEBOOKS.index(n) if n in NOTEBOOKS else len(NOTEBOOKS))
        while ready and len(futures) < max(1, jobs):
            name = ready.pop(0)
            futures[pool.submit(run, name, *args)] = name

    fill()
    while futures:
        done = next(as_completed(futures))
        name = futures.pop(done)
        finished(name, done.result())
        released = [n for n in waiting if AFTER[n] == name]
        for n in released:
            waiting.remove(n)
        ready.extend(released)
        fill()


def _z(new: float | None, new_se: float | None, ref: float | None, ref_se: float | None) -> float | None:
    """``(new − ref) / sqrt(se_new² + se_ref²)``; None when something is missing."""
    if None in (new, ref, new_se, ref_se):
        return None
    combined = math.hypot(new_se, ref_se)
    return (new - ref) / combined if combined > 0 else (0.0 if new == ref else math.inf)


def compare(reference_dir: Path, results_dir: Path, tasks: list[str]) -> dict[str, Any]:
    """Each task's new B_crit, B_simple and ratio against the reference's, with a verdict.

    Returns:
        ``{"tasks": [...], "r2": {...}, "agrees": bool, "identical": bool, "criteria": str}``;
        per task ``b_crit``, ``b_crit_stderr``, ``b_simple``, ``ratio`` new and reference,
        ``b_crit_z`` (difference in combined standard errors), ``b_simple_factor`` (new / reference, of the
        B_simple pooled over runs where both summaries have it, else of the reference run's: ``b_simple_judged``)
        and ``agrees`` (None when the reference has no such task).
    """
    rows = []
    ref_commits: set[str] = set()
    new_commits: set[str] = set()
    for task in tasks:
        new = read_json(results_dir / task / "summary.json")
        ref = read_json(reference_dir / task / "summary.json")
        for commits, summary in ((ref_commits, ref), (new_commits, new)):
            if commit := _commit_of(summary):
                commits.add(commit)
        if new is None:
            rows.append({"task": task, "agrees": False, "note": "no new summary (the notebook failed)"})
            continue
        row: dict[str, Any] = {"task": task, "units": new.get("units"), "seeds": _seeds(new),
                               "seeds_reference": _seeds(ref) if ref else None}
        for key in ("b_crit", "b_crit_stderr", "b_simple", "b_crit_goal"):
            row[key], row[f"{key}_reference"] = new.get(key), (ref or {}).get(key)
        if ref is not None:
            _at_common_goal(row, new, ref)
        for side in ("", "_reference"):
            b_crit, b_simple = row[f"b_crit{side}"], row[f"b_simple{side}"]
            row[f"ratio{side}"] = b_simple / b_crit if b_crit and b_simple else None
        if ref is None:
            rows.append({**row, "agrees": None, "note": "not in the reference"})
            continue
        row["b_crit_z"] = _z(row["b_crit"], row["b_crit_stderr"], row["b_crit_reference"],
                             row["b_crit_stderr_reference"])
        # the B_simple pooled over runs where both sides have it: one run's value moves with its trajectory
        judged = "b_simple_pooled" if new.get("b_simple_pooled") and ref.get("b_simple_pooled") else "b_simple"
        row["b_simple_judged"] = judged
        row["b_simple_pooled"], row["b_simple_pooled_reference"] = new.get("b_simple_pooled"), ref.get("b_simple_pooled")
        row["b_simple_factor"] = (new[judged] / ref[judged] if new.get(judged) and ref.get(judged) else None)
        row["identical"] = all(_close(row[k], row[f"{k}_reference"]) for k in ("b_crit", "b_crit_stderr", "b_simple"))
        if row["b_crit_z"] is None:  # a bound (no s.e.) must match exactly
            b_crit_agrees = _close(row["b_crit"], row["b_crit_reference"])
        else:
            b_crit_agrees = abs(row["b_crit_z"]) <= AGREE_STDERRS
        row["agrees"] = bool(b_crit_agrees and row["b_simple_factor"] is not None
                             and 1 / AGREE_FACTOR <= row["b_simple_factor"] <= AGREE_FACTOR)
        rows.append(row)
    new_r2 = (read_json(results_dir / "summary.json") or {}).get("r2", {})
    ref_r2 = (read_json(reference_dir / "summary.json") or {}).get("r2", {})
    compared = [r for r in rows if r.get("agrees") is not None]
    replication = any(not set(r["seeds"]) <= set(r["seeds_reference"] or []) for r in compared)  # a seed is new
    return {
        "kind": "replication" if replication else "determinism check",
        "tasks": rows,
        "r2": {k: {"new": new_r2.get(k), "reference": ref_r2.get(k)} for k in sorted(set(new_r2) | set(ref_r2))},
        "agrees": bool(compared) and all(r["agrees"] for r in compared),
        "identical": bool(compared) and all(r.get("identical") for r in compared),
        "criteria": (f"B_crit within {AGREE_STDERRS:g} combined standard errors of the reference, and B_simple "
                     f"(pooled over runs where both have it) within a factor {AGREE_FACTOR:g}"),
        "reference_commits": sorted(ref_commits),
        "code_changed": code_changed(sorted(ref_commits), sorted(new_commits)),
    }


#: The folders whose changes can move a result (the training and analysis code, the notebooks, the pinned
#: library versions); a change elsewhere (tests, docs, README) cannot.
CODE_PATHS = ("gns_utils", "notebooks", "requirements.lock", "pyproject.toml")


def _commit_of(summary: dict[str, Any] | None) -> str | None:
    """The commit that made a task summary (its provenance), None when it does not say."""
    return ((summary or {}).get("provenance") or {}).get("git_commit")


def code_changed(reference_commits: list[str], new_commits: list[str]) -> list[str] | None:
    """The files under :data:`CODE_PATHS` that differ between the commits that made the reference and those that
    made the new results (``git diff --name-only``); ``[]`` when none does, None when git cannot tell (no
    repository, or a commit it does not hold)."""
    if not reference_commits or not new_commits:
        return None
    changed: set[str] = set()
    for ref in reference_commits:
        for new in new_commits:
            if ref == new:
                continue
            try:
                out = subprocess.run(["git", "diff", "--name-only", ref, new, "--", *CODE_PATHS], cwd=repo_root(),
                                     capture_output=True, text=True, check=True).stdout
            except (OSError, subprocess.CalledProcessError):
                return None
            changed.update(line for line in out.splitlines() if line)
    return sorted(changed)


def _fitted_goals(summary: dict[str, Any]) -> dict[float, dict[str, Any]]:
    """A summary's per-goal rows whose goal the sweep could fit (not ``"insufficient"``), by goal."""
    return {float(g["goal"]): g for g in summary.get("goals", []) if g.get("bound") != "insufficient"}


def _at_common_goal(row: dict[str, Any], new: dict[str, Any], ref: dict[str, Any]) -> None:
    """Compare B_crit at one goal: when the two summaries' task-level B_crit come from different goals (one side
    reached its hardest goal at too few batch sizes to fit it), both sides' values are taken at the hardest goal
    that both fitted, so like is compared with like."""
    if _close(row["b_crit_goal"], row["b_crit_goal_reference"]):
        return
    new_goals, ref_goals = _fitted_goals(new), _fitted_goals(ref)
    order = [float(g) for g in new.get("config", {}).get("goals", [])] or list(new_goals)
    common = [g for g in order if g in new_goals and g in ref_goals]
    if not common:
        return
    goal = common[-1]
    for side, goals in (("", new_goals), ("_reference", ref_goals)):
        row[f"b_crit{side}"] = goals[goal].get("b_crit")
        row[f"b_crit_stderr{side}"] = goals[goal].get("b_crit_stderr")
        row[f"b_crit_goal{side}"] = goal
    row["note"] = f"compared at the goal {goal:g}, the hardest that both fitted"


def _seeds(summary: dict[str, Any]) -> list[int]:
    """The seeds a task summary's sweeps trained (its main seed and its repeats)."""
    config = summary.get("config", {})
    return [int(config.get("seed", 0)), *[int(x) for x in config.get("seeds", [])]]


def _close(a: float | None, b: float | None, rel: float = 1e-6) -> bool:
    return a is None and b is None or (a is not None and b is not None and math.isclose(a, b, rel_tol=rel))


def _fmt(value: float | None, digits: str = ",.0f") -> str:
    return "–" if value is None else format(value, digits)


def comparison_markdown(comparison: dict[str, Any], header: str) -> str:
    """The comparison as a markdown report with a plain verdict."""
    lines = [f"# Reproduction against the committed reference\n\n{header}\n",
             "| task (units) | B_crit new ± s.e. | B_crit reference ± s.e. | difference (s.e.) "
             "| B_simple new | B_simple reference | B_simple pooled over runs new, reference "
             "| B_simple / B_crit new, reference | agrees |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in comparison["tasks"]:
        if "b_crit" not in r:
            lines.append(f"| {r['task']} | – | – | – | – | – | – | – | no ({r['note']}) |")
            continue
        z = "–" if r.get("b_crit_z") is None else f"{r['b_crit_z']:+.2f}"
        verdict = {True: "yes", False: "**no**", None: r.get("note", "–")}[r["agrees"]]
        if r["agrees"] is not None and r.get("note"):
            verdict += f" ({r['note']})"
        lines.append(f"| {r['task']} ({r['units']}) | {_fmt(r['b_crit'])} ± {_fmt(r['b_crit_stderr'])} "
                     f"| {_fmt(r['b_crit_reference'])} ± {_fmt(r['b_crit_stderr_reference'])} | {z} "
                     f"| {_fmt(r['b_simple'], ',.1f')} | {_fmt(r['b_simple_reference'], ',.1f')} "
                     f"| {_fmt(r.get('b_simple_pooled'), ',.1f')}, {_fmt(r.get('b_simple_pooled_reference'), ',.1f')} "
                     f"| {_fmt(r['ratio'], '.2f')}, {_fmt(r['ratio_reference'], '.2f')} | {verdict} |")
    if comparison["r2"]:
        lines += ["", "| R² (log10 B_crit on log10 B_simple) | new | reference |", "|---|---|---|"]
        lines += [f"| {k} | {_fmt(v['new'], '.2f')} | {_fmt(v['reference'], '.2f')} |" for k, v in comparison["r2"].items()]
    kind = comparison.get("kind", "determinism check")
    if kind == "replication":
        lines.insert(1, "**A replication**: the runs were trained at other seeds than the reference's, so agreement "
                        "is judged by the seed-aware standard errors of B_crit (which include the spread between "
                        "seeds); it says whether another person's run would agree.\n")
    else:
        lines.insert(1, "**A determinism check**: the runs were trained at the reference's seeds, so they should be "
                        "identical; that holds only on the same hardware and library versions (float rounding "
                        "differs between machines and the trajectories part). It says nothing about another seed: "
                        "`make replicate` trains at new seeds.\n")
    changed = comparison.get("code_changed")
    if changed:
        refs = ", ".join(f"`{c[:12]}`" for c in comparison.get("reference_commits", []))
        lines.insert(2, f"**The code changed since the reference was made** (at {refs}): {len(changed)} file(s) "
                        f"under {', '.join(CODE_PATHS)} differ ({', '.join(changed[:6])}"
                        f"{', …' if len(changed) > 6 else ''}), so a difference may come from that change rather "
                        "than from rounding or seeds.\n")
    if not any(r.get("agrees") is not None for r in comparison["tasks"]):
        verdict = "Nothing to compare: the reference holds none of these tasks."
    elif comparison["identical"]:
        verdict = "The reproduction AGREES with the reference: every B_crit, its standard error and B_simple are identical to float rounding."
    elif comparison["agrees"]:
        verdict = f"The reproduction AGREES with the reference ({comparison['criteria']}), though not identically."
    else:
        verdict = f"The reproduction DOES NOT AGREE with the reference on every task ({comparison['criteria']})."
    return "\n".join(lines + ["", f"**Verdict.** {verdict}", ""])


def earlier_tasks(results_dir: Path, reference_dir: Path, profile: str, domain: list[str]) -> list[tuple[str, str]]:
    """``(notebook, task)`` of the profile's tasks this call did not train whose summaries another call left in
    ``results_dir``, when that folder is not the reference's (a replication completed notebook by notebook);
    none when the two folders are one (there, such summaries are the reference itself)."""
    if results_dir.resolve() == reference_dir.resolve():
        return []
    return [(n, t) for n in NOTEBOOKS if n != SUMMARY_NOTEBOOK and n not in domain
            for t in task_names(NOTEBOOK_DOMAINS[n], profile) if (results_dir / t / "summary.json").exists()]


def _summary_commit(results_dir: Path, task: str) -> str:
    commit = _commit_of(read_json(results_dir / task / "summary.json"))
    return f"`{commit[:12]}`" if commit else "unknown"


def _runs_before(results_dir: Path, tasks: list[str], started: str) -> tuple[int, int]:
    """(runs in the task folders, runs among them stamped before ``started``: replayed, not trained)."""
    total = before = 0
    for task in tasks:
        for summary in load_run_summaries(results_dir, task):
            total += 1
            before += summary.get("provenance", {}).get("timestamp", "") < started
    return total, before


def recompare(results_dir: Path, reference_dir: Path) -> int:
    """Judge a finished reproduction again, from the task summaries now in ``results_dir``, against those in
    ``reference_dir``; the record's metadata (profile, commit, runs, time) and header are kept, and a line says
    when the comparison was redone and at which commit.

    Returns:
        0, or 1 when ``results_dir`` holds no finished reproduction (no ``reproduction.json``).
    """
    record = read_json(results_dir / "reproduction.json")
    if record is None:
        print(f"[reproduce] {results_dir} holds no finished reproduction (no reproduction.json) to compare again",
              file=sys.stderr)
        return 1
    tasks = [r["task"] for r in record["tasks"]]
    comparison = compare(reference_dir, results_dir, tasks)
    kept = {k: v for k, v in record.items() if k not in comparison}
    commit = provenance().get("git_commit") or "unknown"
    comparison.update(kept, recompared_at_commit=commit)
    old = (results_dir / "reproduction.md").read_text().split("\n\n")
    header = next((block for block in old if block.startswith("Profile `")), "")
    header += (f" The comparison was redone from the same task summaries at commit `{commit[:12]}` "
               "(`python -m gns_utils.experiments.reproduce --recompare`).")
    report = comparison_markdown(comparison, header)
    write_json_atomic(results_dir / "reproduction.json", comparison)
    (results_dir / "reproduction.md").write_text(report)
    print(report, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", choices=PROFILES)
    parser.add_argument("--only", nargs="*", choices=NOTEBOOKS, help="run only these notebooks")
    parser.add_argument("--results-dir", default="results", help="results root (relative to the repository)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="domain notebooks run at once")
    parser.add_argument("--seed", type=int, default=0,
                        help="main seed of every sweep (repeats move with it); other than the reference's: a "
                             f"replication (make replicate uses {REPLICATION_SEED})")
    parser.add_argument("--reference-dir", default=None,
                        help="the committed results compared with (relative to the repository; default: --results-dir)")
    parser.add_argument("--exhaustive", action="store_true",
                        help="the baseline: every rate trained to the end, the goal metric on a fixed subset")
    parser.add_argument("--recompare", action="store_true",
                        help="train nothing: judge the finished reproduction in --results-dir against --reference-dir "
                             "again from its task summaries (after the comparison itself changed); its record's "
                             "header is kept")
    args = parser.parse_args(argv)
    if args.recompare:
        return recompare(repo_path(args.results_dir), repo_path(args.reference_dir or args.results_dir))

    notebooks = [n for n in NOTEBOOKS if n in (args.only or NOTEBOOKS)]
    results = repo_path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    reference_dir = args.reference_dir or args.results_dir
    state = start_or_resume(results, args.profile, notebooks, args.exhaustive, args.seed, repo_path(reference_dir))
    start = time.perf_counter()
    log_path = results / "reproduce_log.json"
    old_log = read_json(log_path) if state["resumed"] else None
    log = {"profile": args.profile, "jobs": args.jobs, "exhaustive": args.exhaustive, "notebooks": dict((old_log or {}).get("notebooks", {})),
           "started": state["started"], "resumed": state["resumed"], "provenance": provenance()}
    domain = [n for n in notebooks if n != SUMMARY_NOTEBOOK]

    def finished(name: str, entry: dict[str, Any]) -> None:
        log["notebooks"][name] = entry
        write_json_atomic(log_path, log)

    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        run_in_order(domain, args.jobs, pool, finished, args.profile, args.results_dir, args.exhaustive, args.seed)
    if SUMMARY_NOTEBOOK in notebooks:
        log["notebooks"][SUMMARY_NOTEBOOK] = run_notebook(SUMMARY_NOTEBOOK, args.profile, args.results_dir, args.exhaustive)
    state["elapsed_s"] += time.perf_counter() - start
    log["total_wall_time_s"] = round(state["elapsed_s"], 1)
    log["total_cpu_time_s"] = round(sum(e.get("cpu_time_s", 0.0) for e in log["notebooks"].values()), 1)
    if domain:  # the summary alone keeps the log of the last reproduction
        write_json_atomic(log_path, log)
    failed = [n for n in notebooks if log["notebooks"][n]["status"] != "ok"]
    if failed:
        write_json_atomic(results / STATE_DIR / "state.json", state)
        print(f"[reproduce] {len(failed)} notebook(s) failed: {failed}. The reproduction is NOT finished; "
              "run the same command again to resume it (finished runs are kept).", flush=True)
        return 1

    if not domain:  # the summary alone trains nothing: the record of the last reproduction stays as it is
        shutil.rmtree(results / STATE_DIR)
        print("[reproduce] 99_summary redrawn from the task summaries (nothing trained, nothing to compare)")
        return 0
    tasks = [t for n in domain for t in task_names(NOTEBOOK_DOMAINS[n], args.profile)]
    measured = [t for t in tasks if (results / t / "summary.json").exists()]
    earlier = earlier_tasks(results, repo_path(reference_dir), args.profile, domain)
    comparison = compare(results / STATE_DIR / "reference", results, measured + [t for _, t in earlier])
    n_runs, n_before = _runs_before(results, tasks, state["started"])
    comparison.update(profile=args.profile, notebooks=notebooks, started=state["started"],
                      earlier_notebooks=sorted({n for n, _ in earlier}),
                      git_commit=state["git_commit"], total_wall_time_s=log["total_wall_time_s"],
                      n_runs=n_runs, n_runs_from_before=n_before, provenance=provenance())
    header = (f"Profile `{args.profile}`{' (exhaustive baseline)' if args.exhaustive else ''}, started {state['started']} at commit "
              f"`{(state['git_commit'] or 'unknown')[:12]}`; {n_runs} runs, {n_runs - n_before} of them trained by this "
              f"reproduction ({n_before} from before it started); {log['total_wall_time_s'] / 60:.1f} min in all "
              f"({log['total_cpu_time_s'] / 60:.1f} CPU-min). "
              f"Main seed {args.seed}. Reference: the task summaries in `{reference_dir}/` when it started."
              + (f" The tasks of {', '.join(sorted({n for n, _ in earlier}))} were not trained by this call: their "
                 f"summaries in `{args.results_dir}/` come from an earlier one at the same seeds (commit "
                 f"{', '.join(sorted({_summary_commit(results, t) for _, t in earlier}))}) and are compared as they "
                 "stand." if earlier else ""))
    report = comparison_markdown(comparison, header)
    write_json_atomic(results / "reproduction.json", comparison)
    (results / "reproduction.md").write_text(report)
    shutil.rmtree(results / STATE_DIR)
    print(report, flush=True)
    print(f"[reproduce] finished in {log['total_wall_time_s'] / 60:.1f} min; comparison written to "
          f"{results / 'reproduction.md'}", flush=True)
    return 0 if n_before == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
