"""Overhead of the data-parallel noise source against plain DDP, as a ratio in one run.

Two CPU processes (gloo, one thread each) train the paper's MNIST CNN (``PaperCNN``, batch 64
per rank) with ``DistributedDataParallel``; steps alternate between two identical models, one
with :class:`gns_utils.noise.distributed.DataParallelNoiseMonitor` measuring every step (its
communication hook and one extra all-reduce of two numbers per step), one measuring every 4th step
(``every=4``), and one with DDP's default all-reduce. Prints the median step time of each and the
ratios to plain DDP (target ≤ 1.02).

Usage::

    python -m torch.distributed.run --standalone --nproc_per_node=2 benchmarks/ddp_overhead.py [--steps 60]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from gns_utils.experiments.models import PaperCNN
from gns_utils.noise import DataParallelNoiseMonitor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    models = {}
    for name, every in (("plain", None), ("every step", 1), ("every 4th step", 4)):
        torch.manual_seed(0)
        model = DDP(PaperCNN())
        monitor = DataParallelNoiseMonitor(model, every=every) if every else None
        models[name] = (model, torch.optim.SGD(model.parameters(), lr=0.01), monitor)
    gen = torch.Generator().manual_seed(rank)
    x, y = torch.randn(args.batch, 1, 28, 28, generator=gen), torch.randint(0, 10, (args.batch,), generator=gen)
    times: dict[str, list[float]] = {name: [] for name in models}
    for step in range(args.steps + 5):
        for name in (list(models) if step % 2 else list(models)[::-1]):
            model, opt, monitor = models[name]
            dist.barrier()
            start = time.perf_counter()
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            if monitor is not None:
                monitor.after_micro_batch(args.batch)
                monitor.after_step()
            opt.step()
            if step >= 5:  # warm-up
                times[name].append(time.perf_counter() - start)
    if rank == 0:
        plain = statistics.median(times["plain"])
        print(f"PaperCNN, batch {args.batch} per rank, 2 ranks (gloo, 1 thread each), median of {args.steps} steps:")
        print(f"  plain DDP {plain * 1e3:.2f} ms")
        for name in ("every step", "every 4th step"):
            t = statistics.median(times[name])
            print(f"  DDP + DataParallelNoiseMonitor measuring {name}: {t * 1e3:.2f} ms, ratio {t / plain:.3f} "
                  "(target <= 1.02)")
    dist.barrier()  # an orderly teardown: every rank done, the DDP models and hooks freed, then the group
    models.clear()
    gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
