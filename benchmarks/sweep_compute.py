"""Where a sweep's compute goes, and what stopping losing learning rates early saves.

Usage: python benchmarks/sweep_compute.py RESULTS [BASELINE] [--replay [--margins 2 3] [--outpaced 1.5]] [--tasks ...]

For each task of the results folder RESULTS (and of BASELINE, e.g. a ``make reproduce`` of the
same profile run with ``exhaustive=True`` and ``goal_source="subset"``), counted from the run files
(:func:`gns_utils.experiments.compute.compute_table`): the sweep's runs, the examples trained, the
share of them the (2.11) fits need, the examples forwarded to evaluate the goal metric and the
evaluation's share of the compute; with a baseline, RESULTS' trained + evaluated work as a fraction of
the baseline's, and each task's B_crit against the baseline's (the difference in the baseline's
standard errors, and in the two fits' combined standard errors). ``--replay`` replays the stopping rule on BASELINE's stored curves
(:func:`gns_utils.experiments.compute.replay_stopping`): does it keep every fastest run, what share
would the fits then need, and how far would B_crit move (per goal, in standard errors of the fit);
``--margins`` and ``--outpaced`` replay the predictive rules (``stop_margin``, ``stop_outpaced``) too.
``--closeness`` splits RESULTS' examples that the fits do not need by how close their run came to the
fastest of its batch size (:func:`gns_utils.experiments.compute.unneeded_by_closeness`). The ``make
reproduce`` wall and CPU times, from each folder's ``reproduce_log.json``, close the report.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from gns_utils.experiments.compute import (FORWARD_COST, compute_table, counted_total, replay_stopping, sweep_runs,
                                          unneeded_by_closeness)
from gns_utils.experiments.reproduce import compare


def _tasks(root: Path) -> list[str]:
    return [p.parent.name for p in sorted(root.glob("*/experiment.json")) if not p.parent.name.endswith("_widths")]


def _work(table: pd.DataFrame) -> pd.Series:
    return (table["examples_trained"] + FORWARD_COST * table["examples_evaluated"]).set_axis(table["task"])


def _wall(root: Path) -> str:
    log = root / "reproduce_log.json"
    if not log.exists():
        return "no reproduce_log.json"
    data = json.loads(log.read_text())
    notebooks = ", ".join(f"{name} {n['wall_time_s'] / 60:.1f}" for name, n in data.get("notebooks", {}).items()
                          if "wall_time_s" in n)
    cpu = data.get("total_cpu_time_s")
    cpu = f", {cpu / 60:.1f} CPU-min" if cpu is not None else ""
    return (f"make reproduce{' --exhaustive' if data.get('exhaustive') else ''} "
            f"{data.get('total_wall_time_s', float('nan')) / 60:.1f} min wall{cpu}; notebooks (min): {notebooks}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path)
    parser.add_argument("baseline", type=Path, nargs="?")
    parser.add_argument("--replay", action="store_true", help="replay the stopping rule on the baseline's curves")
    parser.add_argument("--margins", type=float, nargs="*", default=[],
                        help="also replay the predictive margin rule with these margins (stop_margin)")
    parser.add_argument("--outpaced", type=float, nargs="*", default=[],
                        help="also replay the outpaced rule with these factors (stop_outpaced)")
    parser.add_argument("--closeness", action="store_true",
                        help="split the examples the fits do not need by their run's closeness to the fastest")
    parser.add_argument("--tasks", nargs="*", default=None,
                        help="only these tasks (default: every task of RESULTS; of BASELINE, those it shares)")
    args = parser.parse_args()
    pd.set_option("display.width", 200)
    tasks = args.tasks or _tasks(args.results)
    if args.baseline is not None and args.tasks is None:
        tasks = [t for t in tasks if t in _tasks(args.baseline)]
    new = compute_table(args.results, tasks)
    print(f"== {args.results} ({_wall(args.results)})")
    print(new.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    n_counted, examples, share = counted_total(new)  # batches drawn as sufficient statistics cost nothing per example
    print(f"over all tasks and seeds{' but ' + ', '.join(new.loc[new['statistics'], 'task']) if n_counted < len(new) else ''}"
          f": {examples / 1e6:.1f} M examples trained, share the fits use {share:.3f}")
    if args.closeness:
        print("\nexamples the fits do not need, as shares of all examples trained, by their run's closeness "
              "to the fastest run of its batch size (steps to its best goal over the fastest's):")
        frame = pd.DataFrame({task: unneeded_by_closeness(sweep_runs(args.results, task)) for task in tasks}).T
        print(frame.to_string(float_format=lambda v: f"{v:.3f}"))
    if args.baseline is None:
        return
    old = compute_table(args.baseline, tasks)
    print(f"\n== baseline {args.baseline} ({_wall(args.baseline)})")
    print(old.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    ratio = (_work(new) / _work(old)).dropna()
    print("\nwork (examples trained + evaluated forward passes / 3) against the baseline, per task:")
    print(ratio.to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"all tasks: {_work(new).sum() / _work(old).reindex(_work(new).index).sum():.3f}")
    print("\nB_crit (each task's summary) against the baseline's:")
    for row in compare(args.baseline, args.results, list(old["task"]))["tasks"]:
        new_se, base_se = row.get("b_crit_stderr"), row.get("b_crit_stderr_reference")
        if row.get("b_crit_z") is None or not (new_se and base_se):
            print(f"  {row['task']}: no fitted B_crit with a standard error on both sides")
            continue
        diff = row["b_crit"] - row["b_crit_reference"]
        print(f"  {row['task']}: {row['b_crit']:,.0f} ± {new_se:,.0f} against {row['b_crit_reference']:,.0f} ± "
              f"{base_se:,.0f}: {diff / base_se:+.2f} baseline s.e., {row['b_crit_z']:+.2f} combined s.e.")
    if args.replay:
        print("\nthe stopping rule replayed on the baseline's stored curves:")
        rules = [("exact", {})] + [(f"exact + margin {m:g}", {"margin": m}) for m in args.margins] + [
            (f"exact + outpaced {o:g}", {"outpaced": o}) for o in args.outpaced]
        for name, rule in rules:
            print(f" rule: {name}")
            for task in old["task"]:
                r = replay_stopping(args.baseline, task, **rule)
                dropped = ", ".join(f"B={b} lr={lr:.3g} stopped at {stop:.0f} of {need:.0f}"
                                    for b, lr, stop, need in r["dropped"])
                shifts = [z for z in r["b_crit_shift"].values() if z is not None]
                print(f"  {task}: kept every fastest run: {r['kept_every_best']}; share the fits need "
                      f"{r['share_needed']:.3f}; examples trained {r['examples_trained'] / 1e6:.2f} M; "
                      f"B_crit per goal moved by at most {max(map(abs, shifts), default=0.0):.2f} s.e. "
                      f"({len(shifts)} fitted goals)"
                      + (f"; dropped {len(r['dropped'])}: {dropped}" if dropped else ""))


if __name__ == "__main__":
    main()
