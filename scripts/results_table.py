"""Print the README's results table (markdown) from the committed task summaries.

Usage: python scripts/results_table.py [--results-dir results]

Every number comes from ``results/<task>/summary.json`` (written by the notebook named in
the table) and ``results/summary.json`` (99_summary); nothing is typed by hand.
"""

from __future__ import annotations

import argparse
import json

from gns_utils.paths import repo_path

NOTEBOOK = {"image": "01_image_classification", "language": "02_language_model", "autoencoder": "03_autoencoder"}


def _fmt(value: float | None, bound: str | None = None) -> str:
    if value is None:
        return "–"
    text = f"{value:,.0f}" if value >= 10 else f"{value:.2g}"
    return {"lower": "> ", "upper": "< "}.get(bound or "none", "") + text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results-dir", default="results")
    args = parser.parse_args()
    root = repo_path(args.results_dir)
    print("| task (units) | B_crit start | B_crit full run ± s.e. | B_simple start | B_simple (App. D avg) "
          "| B_noise | B_simple / B_crit | made by |")
    print("|---|---|---|---|---|---|---|---|")
    for path in sorted(root.glob("*/summary.json")):
        s = json.loads(path.read_text())
        if s.get("profile") is None or "domain" not in s:
            continue
        ratio = s["b_simple"] / s["b_crit"] if s.get("b_simple") and s.get("b_crit") else None
        err = f" ± {s['b_crit_stderr']:,.0f}" if s.get("b_crit_stderr") else ""
        print(f"| {s['task']} ({s['units']}) | {_fmt(s.get('b_crit_start'), s.get('b_crit_start_bound'))} "
              f"| {_fmt(s.get('b_crit'), s.get('b_crit_bound'))}{err} | {_fmt(s.get('b_simple_start'))} "
              f"| {_fmt(s.get('b_simple'))} | {_fmt(s.get('b_noise'))} | {ratio:.2f} | "
              f"`notebooks/{NOTEBOOK[s['domain']]}.ipynb` ({s['profile']}) |" if ratio is not None else
              f"| {s['task']} | – | – | – | – | – | – | `notebooks/{NOTEBOOK[s['domain']]}.ipynb` |")
    summary = root / "summary.json"
    if summary.exists():
        r2 = json.loads(summary.read_text())["r2"]
        print("\nR² of log10 B_crit on log10 B_simple (`notebooks/99_summary.ipynb`):\n")
        print("| tasks | free linear fit | y = x |")
        print("|---|---|---|")
        for key, name in (("ours", "ours (measured here)"), ("paper", "paper (Table 1)"), ("all", "both")):
            fit, ident = r2.get(f"{key}_fit"), r2.get(f"{key}_identity")
            print(f"| {name} | {'–' if fit is None else f'{fit:.2f}'} | {'–' if ident is None else f'{ident:.2f}'} |")
    log = root / "reproduce_log.json"
    if log.exists():
        data = json.loads(log.read_text())
        parts = ", ".join(f"{k} {v['wall_time_s'] / 60:.1f} min ({v['status']})" for k, v in data["notebooks"].items())
        print(f"\n`make reproduce` (profile {data['profile']}, {data.get('jobs', 1)} notebooks at a time): "
              f"{data['total_wall_time_s'] / 60:.1f} min in all; {parts}.")


if __name__ == "__main__":
    main()
