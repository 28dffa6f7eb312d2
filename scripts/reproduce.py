"""Execute the notebooks with papermill at one profile; executed copies go to results/.

Usage: python scripts/reproduce.py [--profile cpu|smoke|paper] [--only NAME ...] [--results-dir DIR]

Every domain notebook runs in turn; one that fails is reported with its error and the
others still run; the summary notebook runs last and marks missing tasks. Progress
per notebook and the total wall time are printed and written to
``<results-dir>/reproduce_log.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import papermill as pm

from gns_utils.paths import repo_path
from gns_utils.results import provenance, write_json_atomic

NOTEBOOKS = ["01_image_classification", "02_language_model", "03_autoencoder", "99_summary"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", choices=["smoke", "cpu", "paper"])
    parser.add_argument("--only", nargs="*", choices=NOTEBOOKS, help="run only these notebooks")
    parser.add_argument("--results-dir", default="results", help="results root (relative to the repository)")
    args = parser.parse_args(argv)

    notebooks = args.only or NOTEBOOKS
    missing = [n for n in notebooks if not repo_path("notebooks", f"{n}.ipynb").exists()]
    for name in missing:
        print(f"[reproduce] notebooks/{name}.ipynb does not exist yet: skipped")
    notebooks = [n for n in notebooks if n not in missing]
    results = repo_path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    log = {"profile": args.profile, "notebooks": {}, "provenance": provenance()}
    start = time.perf_counter()
    for i, name in enumerate(notebooks, 1):
        print(f"[reproduce] ({i}/{len(notebooks)}) {name} at profile={args.profile} ...", flush=True)
        t0 = time.perf_counter()
        entry: dict = {"output": str(Path(args.results_dir) / f"{name}.ipynb")}
        try:
            pm.execute_notebook(
                str(repo_path("notebooks", f"{name}.ipynb")), str(results / f"{name}.ipynb"),
                parameters={"profile": args.profile, "results_dir": args.results_dir},
                cwd=str(repo_path("notebooks")), progress_bar=False, log_output=False,
            )
            entry["status"] = "ok"
        except Exception as err:  # noqa: BLE001 — report and go on with the other notebooks
            entry["status"] = "failed"
            entry["error"] = f"{type(err).__name__}: {str(err)[-2000:]}"
            print(f"[reproduce] {name} FAILED: {entry['error']}", file=sys.stderr, flush=True)
        entry["wall_time_s"] = round(time.perf_counter() - t0, 1)
        log["notebooks"][name] = entry
        print(f"[reproduce] {name}: {entry['status']} in {entry['wall_time_s'] / 60:.1f} min", flush=True)
        log["total_wall_time_s"] = round(time.perf_counter() - start, 1)
        write_json_atomic(results / "reproduce_log.json", log)
    failed = [n for n, e in log["notebooks"].items() if e["status"] != "ok"]
    print(f"[reproduce] done in {log.get('total_wall_time_s', 0) / 60:.1f} min; "
          f"{len(notebooks) - len(failed)} ok, {len(failed)} failed {failed if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
