"""Execute the notebooks with papermill at one profile; executed copies go to results/.

Usage: python scripts/reproduce.py [--profile cpu|smoke|paper] [--only NAME ...] [--jobs N] [--results-dir DIR]

The domain notebooks run ``--jobs`` at a time (default: one per CPU core, each kernel
single-threaded: the models are small, and more threads than free cores makes PyTorch's
CPU kernels many times slower); one that fails is reported with its error and the others
still run; the summary notebook runs last and marks missing tasks. Progress per notebook
and the total wall time are printed and written to ``<results-dir>/reproduce_log.json``
(``--only`` updates its notebooks' entries there and keeps the last full run's total).
On a GPU machine use ``--jobs 1``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import papermill as pm

from gns_utils.paths import repo_path
from gns_utils.results import provenance, write_json_atomic

# Longest first, so two workers finish together.
NOTEBOOKS = ["02_language_model", "01_image_classification", "03_autoencoder", "99_summary"]


def run_notebook(name: str, profile: str, results_dir: str) -> dict:
    """Execute one notebook with papermill; return its status, error and wall time."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the kernel: one thread per notebook
    print(f"[reproduce] {name} at profile={profile} started", flush=True)
    t0 = time.perf_counter()
    entry: dict = {"output": str(Path(results_dir) / f"{name}.ipynb")}
    try:
        pm.execute_notebook(
            str(repo_path("notebooks", f"{name}.ipynb")), str(repo_path(results_dir) / f"{name}.ipynb"),
            parameters={"profile": profile, "results_dir": results_dir},
            cwd=str(repo_path("notebooks")), progress_bar=False, log_output=False,
        )
        entry["status"] = "ok"
    except Exception as err:  # noqa: BLE001 — report and go on with the other notebooks
        entry["status"] = "failed"
        entry["error"] = f"{type(err).__name__}: {str(err)[-2000:]}"
        print(f"[reproduce] {name} FAILED: {entry['error']}", file=sys.stderr, flush=True)
    entry["wall_time_s"] = round(time.perf_counter() - t0, 1)
    print(f"[reproduce] {name}: {entry['status']} in {entry['wall_time_s'] / 60:.1f} min", flush=True)
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", choices=["smoke", "cpu", "paper"])
    parser.add_argument("--only", nargs="*", choices=NOTEBOOKS, help="run only these notebooks")
    parser.add_argument("--results-dir", default="results", help="results root (relative to the repository)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="domain notebooks run at once")
    args = parser.parse_args(argv)

    notebooks = args.only or NOTEBOOKS
    missing = [n for n in notebooks if not repo_path("notebooks", f"{n}.ipynb").exists()]
    for name in missing:
        print(f"[reproduce] notebooks/{name}.ipynb does not exist yet: skipped")
    notebooks = [n for n in notebooks if n not in missing]
    results = repo_path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    log = {"profile": args.profile, "jobs": args.jobs, "notebooks": {}, "provenance": provenance()}
    previous = results / "reproduce_log.json"
    if args.only and previous.exists():
        # A partial run updates its notebooks' entries; the full run's total wall time stays, marked.
        old = json.loads(previous.read_text())
        if old.get("profile") == args.profile:
            log = {**old, "notebooks": dict(old.get("notebooks", {})),
                   "rerun_alone": sorted(set(old.get("rerun_alone", [])) | set(notebooks))}
    start = time.perf_counter()
    domain = [n for n in notebooks if n != "99_summary"]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {pool.submit(run_notebook, name, args.profile, args.results_dir): name for name in domain}
        for future in as_completed(futures):
            log["notebooks"][futures[future]] = future.result()
            if not args.only:
                log["total_wall_time_s"] = round(time.perf_counter() - start, 1)
            write_json_atomic(results / "reproduce_log.json", log)
    if "99_summary" in notebooks:
        log["notebooks"]["99_summary"] = run_notebook("99_summary", args.profile, args.results_dir)
    elapsed = round(time.perf_counter() - start, 1)
    if not args.only:
        log["total_wall_time_s"] = elapsed
    write_json_atomic(results / "reproduce_log.json", log)
    failed = [n for n in notebooks if log["notebooks"][n]["status"] != "ok"]
    print(f"[reproduce] done in {elapsed / 60:.1f} min; "
          f"{len(notebooks) - len(failed)} ok, {len(failed)} failed {failed if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
