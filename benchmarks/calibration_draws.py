"""Measured / exact B_crit per goal of the calibration sweeps in two results folders (two draws of seeds).

    python -m gns_utils.experiments.reproduce --profile cpu --jobs 1 --only 00_calibration --seed 1000 \\
        --results-dir replication --reference-dir results
    python benchmarks/calibration_draws.py results replication > benchmarks/calibration_draws.txt

Per synthetic task and goal: B_crit ± its seed-aware s.e. (relative), measured / exact, and whether the 95 %
interval holds the exact value, in each folder; then how far the ratio moved between the two.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd


def draws(root: Path) -> pd.DataFrame:
    rows = []
    for path in sorted(root.glob("*/summary.json")):
        summary = json.loads(path.read_text())
        if summary.get("domain") != "synthetic":
            continue
        for g in summary["goals"]:
            if g.get("b_crit") and g.get("b_crit_exact"):
                rows.append({"task": summary["task"], "goal": g["goal"], "b_crit": g["b_crit"],
                             "rel_se": g["b_crit_stderr"] / g["b_crit"], "ratio": g["b_crit"] / g["b_crit_exact"],
                             "covered": g["ci_low"] <= g["b_crit_exact"] <= g["ci_high"]})
    return pd.DataFrame(rows).set_index(["task", "goal"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    args = parser.parse_args()
    a, b = draws(args.first), draws(args.second)
    table = a.merge(b, left_index=True, right_index=True, suffixes=(f" ({args.first.name})", f" ({args.second.name})"))
    table["ratio moved"] = (table[f"ratio ({args.first.name})"] - table[f"ratio ({args.second.name})"]).abs()
    pd.set_option("display.width", 220)
    print(table.to_string(float_format=lambda v: f"{v:.3g}"))
    print(f"\nrelative s.e. {table.filter(like='rel_se').min().min():.2f}–{table.filter(like='rel_se').max().max():.2f}; "
          f"ratio moved by at most {table['ratio moved'].max():.2f}; intervals hold the exact value at "
          f"{int(table.filter(like='covered').to_numpy().sum())} of {2 * len(table)} goal readings")


if __name__ == "__main__":
    main()
