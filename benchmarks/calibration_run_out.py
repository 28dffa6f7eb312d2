"""Does a longer run-out past the last goal change the calibration task's last-goal B_crit?

A run trains on past its last goal to :data:`gns_utils.critical_batch.RUN_OUT` × the step where it reached it
(``e^(h/2)`` = 1.25, ``h`` the local reading's half-width), so that the centred reading of that goal has
points on both sides. This script trains the cpu calibration sweep (3 seeds, the committed settings) with
another factor into its own folder; ``benchmarks/calibration_residual.py`` then reads it like the committed
sweep. With ``e^h`` = 1.57, the whole right half of the window, a crossing is never read from a one-sided
window in a run that completed.

Usage: ``python benchmarks/calibration_run_out.py OUT_DIR [FACTOR]`` (default ``e^h``), then
``python benchmarks/calibration_residual.py OUT_DIR`` (output kept in ``benchmarks/calibration_run_out.txt``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import gns_utils.experiments.train as train
from gns_utils.critical_batch import LOCAL_HALF_WIDTH
from gns_utils.experiments.pipeline import run_experiment
from gns_utils.experiments.profiles import experiment_configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="a results folder of its own (runs there are resumed, not retrained)")
    parser.add_argument("factor", nargs="?", type=float, default=float(np.exp(LOCAL_HALF_WIDTH)),
                        help="the run-out: a run ends at this factor × the step where it reached its last goal")
    args = parser.parse_args()
    if not args.factor >= 1.0:
        parser.error(f"factor must be >= 1, got {args.factor}")
    train.RUN_OUT = args.factor  # the trainer reads it at each logged step
    cfg = experiment_configs("synthetic", "cpu")[0]
    start = time.perf_counter()
    run_experiment(cfg, args.out_dir, progress=True)
    print(f"calibration sweep with run-out {args.factor:.3f} in {args.out_dir} [{time.perf_counter() - start:.0f} s]")


if __name__ == "__main__":
    main()
