"""How often a 2-process DDP job fails at exit, with and without an orderly teardown.

Launches ``tests/ddp_worker.py`` (DDP with :class:`gns_utils.noise.DataParallelNoiseMonitor`, gloo, two CPU
processes) ``--launches`` times with each teardown and counts the launches that did not end with exit
status 0 on both ranks, with the signal or message of each failure:

* ``plain``: each rank calls ``dist.destroy_process_group()`` as soon as it has written its results;
* ``barrier``: ``dist.barrier()``, ``del`` the DDP model and the monitor, then ``dist.destroy_process_group()``;
* ``collect``: the same with ``gc.collect()`` before the group is destroyed (what ``docs/library.md``
  recommends): a DDP model sits in reference cycles, so ``del`` alone leaves it alive until the interpreter
  exits, after its process group is gone.

Usage::

    python benchmarks/ddp_teardown.py [--launches 20]
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def launch(teardown: str) -> tuple[int, str]:
    """One torchrun launch of the worker: (exit status, the last line of its output that names an error)."""
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               str(ROOT / "tests" / "ddp_worker.py"), out, f"--teardown={teardown}"],
                              capture_output=True, text=True, timeout=300, cwd=ROOT)
        written = len(list(Path(out).glob("rank*.json")))
    lines = [line for line in (proc.stdout + proc.stderr).splitlines()
             if any(word in line for word in ("Error", "error", "Signal", "signal", "abort", "terminate"))]
    return proc.returncode, f"{written} of 2 results written; " + (lines[-1].strip()[:160] if lines else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", type=int, default=20)
    args = parser.parse_args()
    for teardown in ("plain", "barrier", "collect"):
        failures = collections.Counter()
        for _ in range(args.launches):
            status, message = launch(teardown)
            if status != 0:
                failures[f"exit {status}: {message}"] += 1
        print(f"{teardown}: {sum(failures.values())} of {args.launches} launches failed")
        for message, count in failures.most_common():
            print(f"  {count} x {message}")


if __name__ == "__main__":
    main()
