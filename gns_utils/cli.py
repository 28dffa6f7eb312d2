"""``gns-utils``: the command line, for people with their own sweep results.

``gns-utils fit FILE.csv`` fits the paper's trade-off S(B) = S_min (1 + B_crit/B) (eq. 2.11) to the
steps a sweep needed at each batch size, per goal, and prints B_crit ± its standard error (2.12),
S_min, E_min and whether the data bound B_crit on both sides (:func:`gns_utils.fit_tradeoff`).
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from gns_utils.critical_batch import best_runs, fit_tradeoff_by_goal

FIT_HELP = """\
FILE is a CSV file with a header and the columns
  batch_size   the batch size B of a run (any units: examples, tokens, frames; B_crit comes out in them)
  steps        optimizer steps S that run needed to reach the goal (empty or 'nan': not reached)
  goal         optional: the goal (loss, error, return ...) the steps are for; one fit per goal
  lr           optional, ignored: several rows per batch size (e.g. learning rates) may be given;
               the fewest steps at each batch size counts (the best-tuned run, App. A.3)
The fit needs at least 3 batch sizes per goal. Goals are fitted in the order they first appear
(list them from the start of training to the end).

Example:
  batch_size,goal,steps
  32,0.5,4100
  64,0.5,2200
  ...
"""


def _read(path: str) -> pd.DataFrame:
    """The sweep table of ``path`` with ``batch_size``, ``steps`` and ``goal`` (SystemExit with the fix)."""
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"gns-utils fit: {path}: no such file")
    try:
        table = pd.read_csv(file)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise SystemExit(f"gns-utils fit: {path} is not a readable CSV file ({err})") from err
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in ("batch_size", "steps") if c not in table.columns]
    if missing:
        raise SystemExit(f"gns-utils fit: {path} has no column {' or '.join(missing)} (found {list(table.columns)}); "
                         "the header needs batch_size,steps and optionally goal (see gns-utils fit --help)")
    for column in ("batch_size", "steps"):
        values = pd.to_numeric(table[column], errors="coerce")
        bad = table[column][values.isna() & table[column].notna() & (table[column].astype(str).str.lower() != "nan")]
        if len(bad):
            raise SystemExit(f"gns-utils fit: column {column} of {path} holds non-numbers, e.g. {bad.iloc[0]!r} "
                             f"(row {int(bad.index[0]) + 2} of the file)")
        table[column] = values
    if (table["batch_size"] <= 0).any() or table["batch_size"].isna().any():
        raise SystemExit(f"gns-utils fit: every batch_size in {path} must be a positive number")
    if (table["steps"] <= 0).any():
        raise SystemExit(f"gns-utils fit: steps in {path} must be positive (leave a cell empty for a goal not reached)")
    if "goal" not in table.columns:
        table["goal"] = "all"
    table["lr"] = table["lr"] if "lr" in table.columns else np.arange(len(table), dtype=float)
    return table[["batch_size", "lr", "goal", "steps"]]


def fit_table(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
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


def _plot(best: pd.DataFrame, fits: dict, path: str) -> None:
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gns-utils", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("fit", help="fit S(B) = S_min (1 + B_crit/B) (2.11) per goal to a sweep's steps",
                              description="Fit the paper's trade-off (2.11) per goal and print B_crit (2.12).",
                              epilog=FIT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    fit.add_argument("file", metavar="FILE.csv", help="the sweep's results (columns below)")
    fit.add_argument("--plot", metavar="FILE", help="also save the Pareto fronts with the fitted curves "
                                                    "(FILE.png and FILE.pdf; needs the experiments extra)")
    args = parser.parse_args(argv)
    results, best, fits = fit_table(_read(args.file))
    print(_format(results))
    if args.plot:
        _plot(best, fits, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
