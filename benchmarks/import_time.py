"""What ``import gns_utils`` costs on top of ``import torch`` (fresh interpreters, median of repeats).

Usage: ``python benchmarks/import_time.py [--repeats 7]``. Each repeat starts two fresh Python processes,
one importing torch, one importing torch and then gns_utils, and times the second import inside the
process; pandas and scipy load on first use (``gns_utils._lazy``). Target: at most 0.3 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

CODE = ("import time; t0 = time.perf_counter(); import torch; t1 = time.perf_counter(); import gns_utils; "
        "t2 = time.perf_counter(); print(t1 - t0, t2 - t1)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch_s, extra_s = [], []
    for _ in range(args.repeats):
        a, b = map(float, subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                                         check=True).stdout.split())
        torch_s.append(a)
        extra_s.append(b)
    print(f"import torch: {statistics.median(torch_s):.2f} s; import gns_utils after it: "
          f"{statistics.median(extra_s):.3f} s (median of {args.repeats}; target <= 0.3 s)")


if __name__ == "__main__":
    main()
