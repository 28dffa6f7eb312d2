"""A sweep's grid trained by the ``stacked`` engine against the ``sequential`` one, end to end.

One learning-rate grid of the ``cpu`` profile's Fashion-MNIST MLP (784-256-10, Adam) at each batch size
given, trained for a fixed number of steps through :func:`gns_utils.experiments.sweep.train_group` —
run folders, ``metrics.csv``, goal bookkeeping and all — once with ``engine="sequential"`` (each rate its
own model, stepped in turn; the noise from per-example norms in the step's one backward, as the sweep
measures MLPs) and once with ``engine="stacked"`` (the grid as one batched model,
:mod:`gns_utils.experiments.members`; the noise from two micro-batches, A.2). The two alternate, repeat
by repeat; the median wall time of each is printed with the ratio sequential / stacked (> 1: stacking is
faster). Runs on CUDA when available (``--device``), else on the CPU; needs the Fashion-MNIST files
(``make data``).

Usage::

    python benchmarks/stacked_engine.py [--batch-sizes 32 256] [--members 4] [--steps 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from gns_utils.experiments.config import make_experiment
from gns_utils.experiments.problems import make_problem
from gns_utils.experiments.profiles import presets
from gns_utils.experiments.sweep import train_group


def _grid_time(problem, cfg, batch_size: int, members: int, steps: int, engine: str) -> float:
    lrs = [1e-3 * 1.5 ** i for i in range(members)]
    runs = [cfg.run(batch_size, lr, engine=engine, budget_examples=batch_size * steps, goals=(0.01,)) for lr in lrs]
    with tempfile.TemporaryDirectory() as folder:
        if problem.device.type == "cuda":
            torch.cuda.synchronize(problem.device)
        start = time.perf_counter()
        summaries = train_group(problem, runs, folder, (0.01,), exhaustive=True, progress=False)
        if problem.device.type == "cuda":
            torch.cuda.synchronize(problem.device)
        elapsed = time.perf_counter() - start
    assert all(s["n_steps"] == steps for s in summaries), [s["status"] for s in summaries]
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[32, 256])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    preset = next(p for p in presets("image", "cpu") if p["task"] == "fashion_mnist_mlp_adam")
    cfg = make_experiment({**preset, "device": args.device, "evals_per_decade": 30})
    problem = make_problem(cfg)
    device = problem.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"fashion_mnist_mlp_adam grid of {args.members} rates, {args.steps} steps each, through train_group; "
          f"{name}; torch {torch.__version__}; median of {args.repeats}")
    print(f"{'B':>6} {'sequential s':>13} {'stacked s':>10} {'seq/stacked':>12}")
    for batch_size in args.batch_sizes:
        times: dict[str, list[float]] = {"sequential": [], "stacked": []}
        _grid_time(problem, cfg, batch_size, args.members, 5, "stacked")  # warm-up
        for _ in range(args.repeats):
            for engine in times:
                times[engine].append(_grid_time(problem, cfg, batch_size, args.members, args.steps, engine))
        seq, stacked = (statistics.median(times[e]) for e in ("sequential", "stacked"))
        print(f"{batch_size:>6} {seq:>13.2f} {stacked:>10.2f} {seq / stacked:>12.2f}")


if __name__ == "__main__":
    main()
