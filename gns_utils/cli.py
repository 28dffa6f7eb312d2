"""``gns-utils``: the command line, for people with their own sweep results.

``gns-utils fit FILE.csv`` fits the paper's trade-off S(B) = S_min (1 + B_crit/B) (eq. 2.11) to the
steps a sweep needed at each batch size, per goal, and prints B_crit ± its standard error (2.12),
S_min, E_min and whether the data bound B_crit on both sides (:func:`gns_utils.fit_tradeoff`).

Exit status: 0 when at least one goal has a fitted B_crit, 1 when none has (too few batch sizes, steps
that grow with the batch size), 2 for a file that cannot be read as a sweep (the message says why).
``--json`` and ``--csv`` print the same results in a machine-readable form.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from gns_utils.critical_batch import TradeoffFit, best_runs, fit_tradeoff_by_goal

FIT_HELP = """\
FILE is a CSV file with a header and the columns
  batch_size   the batch size B of a run (any units: examples, tokens, frames; B_crit comes out in them)
  steps        optimizer steps S that run needed to reach the goal (empty or 'nan': not reached)
  goal         optional: the goal (loss, error, return ...) the steps are for; one fit per goal
  lr           optional, ignored: several rows per batch size (e.g. learning rates) may be given;
               the fewest steps at each batch size counts (the best-tuned run, App. A.3)
Every row has as many cells as the header. The output columns: goal; batch sizes (with a finite
step count); B_crit ± s.e. (2.12, in the units of batch_size); S_min (fewest steps, B -> inf);
E_min (fewest examples, B -> 0); bounded (yes: batch sizes on both sides of B_crit; else which bound).
Exit status: 0 if some goal has a fitted B_crit, 1 if none has, 2 if the file cannot be used.
The fit needs at least 3 batch sizes per goal. Goals are fitted in the order they first appear
(list them from the start of training to the end).

Example:
  batch_size,goal,steps
  32,0.5,4100
  64,0.5,2200
  ...
"""


class InputError(SystemExit):
    """A file that cannot be used as a sweep: exit status 2, with a message that says what to do."""


def _fail(message: str) -> None:
    print(f"gns-utils fit: {message}", file=sys.stderr)
    raise InputError(2)


def _read(path: str) -> pd.DataFrame:
    """The sweep table of ``path`` with ``batch_size``, ``steps`` and ``goal`` (SystemExit with the fix)."""
    file = Path(path)
    if file.is_dir():
        _fail(f"{path} is a directory; give the CSV file of the sweep inside it")
    if not file.is_file():
        _fail(f"{path}: no such file")
    try:
        with open(file, newline="") as f:
            rows = list(csv.reader(f))
        ragged = [k for k, r in enumerate(rows[1:], start=2) if r and len(r) != len(rows[0])]
        if ragged:
            _fail(f"row {ragged[0]} of {path} has {len(rows[ragged[0] - 1])} cells but the header has {len(rows[0])} "
                  f"({', '.join(rows[0])}); give every row one cell per column (an empty cell for a goal not reached)")
        table = pd.read_csv(file, index_col=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, csv.Error) as err:
        _fail(f"{path} is not a readable CSV file ({err})")
    if table.empty:
        _fail(f"{path} has a header but no rows; add one row per run (batch_size,steps[,goal])")
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in ("batch_size", "steps") if c not in table.columns]
    if missing:
        _fail(f"{path} has no column {' or '.join(missing)} (found {list(table.columns)}); "
                         "the header needs batch_size,steps and optionally goal (see gns-utils fit --help)")
    for column in ("batch_size", "steps"):
        values = pd.to_numeric(table[column], errors="coerce")
        bad = table[column][values.isna() & table[column].notna() & (table[column].astype(str).str.lower() != "nan")]
        if len(bad):
            _fail(f"column {column} of {path} holds non-numbers, e.g. {bad.iloc[0]!r} "
                             f"(row {int(bad.index[0]) + 2} of the file)")
        table[column] = values
    if (table["batch_size"] <= 0).any() or table["batch_size"].isna().any():
        _fail(f"every batch_size in {path} must be a positive finite number")
    if np.isinf(table["batch_size"]).any():
        _fail(f"every batch_size in {path} must be a positive finite number")
    if np.isinf(table["steps"]).any():
        _fail(f"steps in {path} holds inf; leave the cell empty for a goal not reached")
    if (table["steps"] <= 0).any():
        _fail(f"steps in {path} must be positive (leave a cell empty for a goal not reached)")
    if "goal" not in table.columns:
        table["goal"] = "all"
    table["lr"] = table["lr"] if "lr" in table.columns else np.arange(len(table), dtype=float)
    return table[["batch_size", "lr", "goal", "steps"]]


def fit_table(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, dict[Any, TradeoffFit | None]]:
    """(results per goal, fastest run per goal and batch size, fits) for a table of ``batch_size, lr, goal, steps``."""
    best = best_runs(table)
    with warnings.catch_warnings():  # a bound is said in the table ("bounded by the data")
        warnings.simplefilter("ignore", RuntimeWarning)
        fits = fit_tradeoff_by_goal(best)
    rows = []
    for goal, fit in fits.items():
        n = int(best[(best["goal"] == goal) & best["steps"].notna()]["batch_size"].nunique())
        if fit is None:
            reason = ("too few batch sizes (need 3)" if n < 3 else
                      "no fit: the steps grow with the batch size, which (2.11) cannot describe")
            rows.append({"goal": goal, "batch_sizes": n, "b_crit": math.nan, "b_crit_stderr": math.nan,
                         "s_min": math.nan, "e_min": math.nan, "bounded": reason})
            continue
        bounded = {"none": "yes", "upper": "no: B_crit <= the smallest batch size",
                   "lower": "no: B_crit >= the largest batch size"}[fit.bound]
        rows.append({"goal": goal, "batch_sizes": n, "b_crit": fit.b_crit, "b_crit_stderr": fit.b_crit_stderr,
                     "s_min": fit.s_min, "e_min": fit.e_min, "bounded": bounded})
    return pd.DataFrame(rows), best, fits


def _format(results: pd.DataFrame) -> str:
    def number(x: float) -> str:
        return "–" if not math.isfinite(x) else (f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}")

    lines = [f"{'goal':>10}  {'batch sizes':>11}  {'B_crit ± s.e.':>20}  {'S_min':>10}  {'E_min':>12}  bounded by the data"]
    for r in results.itertuples():
        b_crit = number(r.b_crit) + ("" if not math.isfinite(r.b_crit_stderr) else f" ± {number(r.b_crit_stderr)}")
        lines.append(f"{str(r.goal):>10}  {r.batch_sizes:>11}  {b_crit:>20}  {number(r.s_min):>10}  "
                     f"{number(r.e_min):>12}  {r.bounded}")
    return "\n".join(lines)


def _plot(best: pd.DataFrame, fits: dict[Any, TradeoffFit | None], path: str) -> None:
    """Steps against examples per goal, with each fitted (2.11) hyperbola and ★ at B = B_crit (Fig 7)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise SystemExit("gns-utils fit --plot needs matplotlib: pip install matplotlib "
                         f"(or the experiments extra, pip install 'gns_utils[experiments]'); {err}") from err
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    colours = plt.cm.viridis(np.linspace(0.0, 0.9, max(len(fits), 1)))
    for colour, (goal, fit) in zip(colours, fits.items()):
        points = best[(best["goal"] == goal) & best["steps"].notna()]
        ax.scatter(points["examples"], points["steps"], color=colour, s=18, label=f"goal {goal}")
        if fit is None:
            continue
        b = np.geomspace(points["batch_size"].min() / 4, points["batch_size"].max() * 4, 200)
        ax.plot(fit.examples(b), fit.steps(b), color=colour, lw=1, ls="-" if fit.bound == "none" else "--")
        if fit.bound == "none":
            ax.scatter([2 * fit.e_min], [2 * fit.s_min], marker="*", s=120, color=colour, edgecolor="black", zorder=3)
    ax.set(xscale="log", yscale="log", xlabel="examples E (batch size × steps)", ylabel="steps S",
           title="Pareto fronts and the (2.11) fit (★: B = B_crit)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    base = Path(path)
    base = base.with_suffix("") if base.suffix.lower() in (".png", ".pdf") else base
    base.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".png", ".pdf"):
        fig.savefig(base.with_name(base.name + suffix), dpi=150)
    plt.close(fig)
    print(f"Pareto fronts saved to {base}.png and {base}.pdf")


def _version() -> str:
    try:
        return importlib.metadata.version("gns_utils")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gns-utils", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("fit", help="fit S(B) = S_min (1 + B_crit/B) (2.11) per goal to a sweep's steps",
                              description="Fit the paper's trade-off (2.11) per goal and print B_crit (2.12).",
                              epilog=FIT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    fit.add_argument("file", metavar="FILE.csv", help="the sweep's results (columns below)")
    fit.add_argument("--plot", metavar="FILE", help="also save the Pareto fronts with the fitted curves "
                                                    "(FILE.png and FILE.pdf; needs the experiments extra)")
    output = fit.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the results as JSON (null: no value)")
    output.add_argument("--csv", action="store_true", help="print the results as CSV (empty: no value)")
    args = parser.parse_args(argv)
    try:
        results, best, fits = fit_table(_read(args.file))
    except InputError as err:
        return err.code if isinstance(err.code, int) else 2  # _fail raises InputError(2)
    if args.json:
        records = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
                   for r in results.to_dict(orient="records")]
        print(json.dumps({"file": args.file, "goals": records}, indent=2, default=str))
    elif args.csv:
        print(results.to_csv(index=False), end="")
    else:
        print(_format(results))
    if args.plot:
        _plot(best, fits, args.plot)
    if not np.isfinite(results["b_crit"].to_numpy(float)).any():
        print("gns-utils fit: no goal has a fitted B_crit (see the last column)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
