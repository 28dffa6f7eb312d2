"""Overhead of measuring the gradient noise scale, as ratios against plain training steps.

Times one SGD step of the paper's MNIST CNN (``PaperCNN``, 28×28×1, batch 128, train
mode with dropout) on CPU with 2 threads, for these variants, all in one process:

* ``plain``        one forward/backward on the batch, ``optimizer.step()``.
* ``accum``        plain accumulation of 4 micro-batches of 32.
* ``accum+monitor`` the same with :class:`gns_utils.noise.GradientNoiseMonitor`.
* ``per_example[layerwise]`` / ``per_example[func]``
  :func:`gns_utils.noise.per_example_estimate` with that ``method`` and
  ``accumulate_grad=True`` (its mean gradient replaces the backward), ``optimizer.step()``.

Each variant is interleaved with its baseline (``accum`` or ``plain``) in its own phase
(the per-example variants allocate large buffers that would slow whichever step follows).
Prints the median time of each and the ratios ``accum+monitor / accum`` (target ≤ 1.02)
and ``per_example[layerwise] / plain`` (target ≤ 2).

Then, for the cpu profile's MLP (784-256-10) at batch 32 and 1024, what the training
engine does per step against a plain step: ``micro2+monitor`` (two micro-batches and
:class:`~gns_utils.noise.GradientNoiseMonitor`) and ``per_example_monitor`` (one
forward/backward with :class:`~gns_utils.noise.PerExampleNormMonitor`).

Usage::

    python benchmarks/noise_overhead.py [--repeats 40] [--threads 2] [--chunk 16]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from gns_utils.experiments.models import MLP, PaperCNN
from gns_utils.noise import GradientNoiseMonitor, PerExampleNormMonitor, per_example_estimate

BATCH = 128
N_MICRO = 4


class Variant:
    """A timed ``step`` with untimed ``setup`` / ``teardown`` around it."""

    def __init__(self, step: Callable[[], None], setup: Callable[[], None] = lambda: None,
                 teardown: Callable[[], None] = lambda: None) -> None:
        self.step, self.setup, self.teardown = step, setup, teardown


def make_variants(chunk: int) -> dict[str, Variant]:
    """One variant per measurement, all on the same model and fixed random data."""
    torch.manual_seed(0)
    model = PaperCNN(in_channels=1, n_classes=10, image_size=28).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(BATCH, 1, 28, 28)
    y = torch.randint(0, 10, (BATCH,))
    micro = list(zip(x.chunk(N_MICRO), y.chunk(N_MICRO)))
    state: dict[str, GradientNoiseMonitor] = {}

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
        monitor = state["monitor"]
        opt.zero_grad(set_to_none=False)
        for xb, yb in micro:
            (F.cross_entropy(model(xb), yb) * (len(xb) / BATCH)).backward()
            monitor.after_micro_batch(len(xb))
        monitor.after_step()
        opt.step()

    def attach() -> None:
        state["monitor"] = GradientNoiseMonitor(model.parameters())

    def detach() -> None:
        state.pop("monitor").remove()

    def per_example(method: str) -> Callable[[], None]:
        def step() -> None:
            opt.zero_grad(set_to_none=False)
            per_example_estimate(model, F.cross_entropy, x, y, chunk_size=chunk, accumulate_grad=True, method=method)
            opt.step()
        return step

    return {
        "plain": Variant(plain),
        "accum": Variant(accum),
        "accum+monitor": Variant(accum_monitor, attach, detach),
        "per_example[layerwise]": Variant(per_example("layerwise")),
        "per_example[func]": Variant(per_example("func")),
    }


def make_mlp_variants(batch: int) -> dict[str, Variant]:
    """The engine's per-step noise measurements on the cpu profile's MLP, and a plain step."""
    torch.manual_seed(0)
    model = MLP(in_features=784, hidden=[256], n_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    halves = list(zip(x.chunk(2), y.chunk(2)))
    micro, per_example = GradientNoiseMonitor(model.parameters()), PerExampleNormMonitor(model)

    def plain() -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        micro.reset()
        opt.step()

    def micro2() -> None:
        opt.zero_grad()
        for xb, yb in halves:
            (F.cross_entropy(model(xb), yb) * 0.5).backward()
            micro.after_micro_batch(len(xb))
        micro.after_step()
        opt.step()

    def in_backward() -> None:
        opt.zero_grad()
        with per_example.capture():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        micro.reset()
        per_example.after_micro_batch(batch)
        per_example.after_step()
        opt.step()

    return {"plain": Variant(plain), "micro2+monitor": Variant(micro2), "per_example_monitor": Variant(in_backward)}


def run(names: list[str], repeats: int, chunk: int, inner: int = 2, warmup: int = 3,
        variants: dict[str, Variant] | None = None) -> dict[str, float]:
    """Median seconds per step of each named variant (default: the CNN's, :func:`make_variants`).

    Variants are interleaved (order reversed every other repeat); each sample times
    ``inner`` consecutive steps.
    """
    variants = variants or make_variants(chunk)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            variant = variants[name]
            variant.setup()
            start = time.perf_counter()
            for _ in range(inner):
                variant.step()
            elapsed = (time.perf_counter() - start) / inner
            variant.teardown()
            if r >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40, help="timed samples per variant (2 steps each)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--chunk", type=int, default=16, help="chunk_size of per_example_estimate")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # each variant is interleaved with its own baseline, in separate phases: the per-example
    # variants allocate large buffers that would otherwise slow whichever step follows them
    phases = [("accum", "accum+monitor", args.repeats, 2, "target <= 1.02"),
              ("plain", "per_example[layerwise]", args.repeats, 2, "target <= 2"),
              ("plain", "per_example[func]", max(5, args.repeats // 4), 1, "general fallback")]
    print(f"PaperCNN, batch {BATCH}, {N_MICRO} micro-batches, CPU, {args.threads} threads "
          f"(median ms per optimizer step)")
    lines = []
    for base, variant, repeats, inner, note in phases:
        medians = run([base, variant], repeats, args.chunk, inner=inner)
        print(f"  {variant:24s} {medians[variant] * 1e3:8.2f}   {base} alongside {medians[base] * 1e3:8.2f}"
              f"   ({repeats} samples of {inner} steps)")
        lines.append(f"ratio {variant + ' / ' + base:32s} {medians[variant] / medians[base]:6.3f}  ({note})")
    print("\n".join(lines))
    print("MLP 784-256-10 (the cpu profile's), per-step noise measurement of the training engine (median ms per step)")
    for batch, inner in ((32, 20), (1024, 2)):
        names = ["plain", "micro2+monitor", "per_example_monitor"]
        medians = run(names, args.repeats, args.chunk, inner=inner, variants=make_mlp_variants(batch))
        print(f"  batch {batch:5d}: " + "   ".join(f"{n} {medians[n] * 1e3:7.3f}" for n in names)
              + f"   ratios to plain: micro2+monitor {medians['micro2+monitor'] / medians['plain']:.2f}, "
              f"per_example_monitor {medians['per_example_monitor'] / medians['plain']:.2f}")


if __name__ == "__main__":
    main()
