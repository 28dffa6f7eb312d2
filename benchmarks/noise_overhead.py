"""Overhead of measuring the gradient noise scale, as ratios against plain training steps.

Times one SGD step of the paper's MNIST CNN (``PaperCNN``, 28×28×1, batch 128, train
mode with dropout) on CPU with 2 threads, for these variants, interleaved in one process:

* ``plain``        one forward/backward on the batch, ``optimizer.step()``.
* ``accum``        plain accumulation of 4 micro-batches of 32.
* ``accum+monitor`` the same with :class:`gns_utils.noise_scale.GradientNoiseMonitor`.
* ``per_example[layerwise]`` / ``per_example[func]``
  :func:`gns_utils.noise_scale.per_example_estimate` with that ``method`` and
  ``accumulate_grad=True`` (its mean gradient replaces the backward), ``optimizer.step()``.

Prints the median time of each and the ratios ``accum+monitor / accum`` (target ≤ 1.02)
and ``per_example[layerwise] / plain`` (target ≤ 2).

Usage::

    python benchmarks/noise_overhead.py [--repeats 30] [--threads 2] [--chunk 32]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from gns_utils.models import PaperCNN
from gns_utils.noise_scale import GradientNoiseMonitor, per_example_estimate

BATCH = 128
N_MICRO = 4


def make_steps(chunk: int) -> dict[str, Callable[[], None]]:
    """One closure per variant, each doing one full optimizer step on fixed random data."""
    torch.manual_seed(0)
    model = PaperCNN(in_channels=1, n_classes=10, image_size=28).train()
    twin = PaperCNN(in_channels=1, n_classes=10, image_size=28).train()  # same weights, monitored
    twin.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=1e-3)
    monitor = GradientNoiseMonitor(twin.parameters())
    x = torch.randn(BATCH, 1, 28, 28)
    y = torch.randint(0, 10, (BATCH,))
    micro = list(zip(x.chunk(N_MICRO), y.chunk(N_MICRO)))

    def plain() -> None:
        opt.zero_grad(set_to_none=False)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def accum() -> None:
        opt.zero_grad(set_to_none=False)
        for xb, yb in micro:
            (F.cross_entropy(model(xb), yb) * (len(xb) / BATCH)).backward()
        opt.step()

    def accum_monitor() -> None:
        twin_opt.zero_grad(set_to_none=False)
        for xb, yb in micro:
            (F.cross_entropy(twin(xb), yb) * (len(xb) / BATCH)).backward()
            monitor.after_micro_batch(len(xb))
        monitor.after_step()
        twin_opt.step()

    def per_example(method: str) -> Callable[[], None]:
        def step() -> None:
            opt.zero_grad(set_to_none=False)
            per_example_estimate(model, F.cross_entropy, x, y, chunk_size=chunk, accumulate_grad=True, method=method)
            opt.step()
        return step

    return {"plain": plain, "accum": accum, "accum+monitor": accum_monitor,
            "per_example[layerwise]": per_example("layerwise"), "per_example[func]": per_example("func")}


def run(repeats: int, chunk: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds per step of each variant, variants interleaved within each repeat."""
    steps = make_steps(chunk)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(warmup + repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            elapsed = time.perf_counter() - start
            if r >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed steps per variant")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--chunk", type=int, default=32, help="chunk_size of per_example_estimate")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    medians = run(args.repeats, args.chunk)
    print(f"PaperCNN, batch {BATCH}, {N_MICRO} micro-batches, CPU, {args.threads} threads, "
          f"{args.repeats} repeats (median ms per optimizer step)")
    for name, seconds in medians.items():
        print(f"  {name:24s} {seconds * 1e3:8.2f}")
    ratios = {
        "accum+monitor / accum": (medians["accum+monitor"] / medians["accum"], "target <= 1.02"),
        "per_example[layerwise] / plain": (medians["per_example[layerwise]"] / medians["plain"], "target <= 2"),
        "per_example[func] / plain": (medians["per_example[func]"] / medians["plain"], "general fallback"),
        "accum / plain": (medians["accum"] / medians["plain"], "cost of 4 micro-batches"),
    }
    for name, (ratio, note) in ratios.items():
        print(f"ratio {name:32s} {ratio:6.3f}  ({note})")


if __name__ == "__main__":
    main()
