"""Run under torchrun by tests/test_distributed.py: DDP noise estimates on fixed per-rank batches.

Writes ``<out>/rank<r>.json`` with, per case, the estimate of :class:`DataParallelNoiseMonitor`
(``ddp``) and, on rank 0, the single-process estimate of the same per-rank batches treated as the
micro-batches of one step (``reference``, :class:`GradientNoiseMonitor` with DDP's equal weights).

Teardown (``--teardown``): ``collect`` (default) waits for every rank, drops the DDP models and their
hooks and collects them (a DDP model sits in reference cycles, so ``del`` alone does not free it), then
destroys the process group; ``barrier`` does the same without the collection, ``plain`` destroys the group
at once. A DDP model still alive when the interpreter exits, after its group was destroyed, can end the
process with "terminate called without an active exception" (SIGABRT) after its work is done
(``benchmarks/ddp_teardown.py`` launches each teardown many times and counts the failures).
"""

import contextlib
import gc
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from gns_utils.noise import GradientNoiseMonitor
from gns_utils.noise import DataParallelNoiseMonitor

CASES = {  # name: (examples on rank 0, on rank 1, micro-batches per rank)
    "plain": (8, 8, 1),
    "accumulation": (8, 8, 2),
    "unequal": (6, 10, 2),
}


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1)).double()


def _data(n, rank):
    gen = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    return x, x.sum(1, keepdim=True) + torch.randn(n, 1, generator=gen, dtype=torch.float64)


def main(out: Path, teardown: str = "collect") -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {}
    for name, (n0, n1, k) in CASES.items():
        model = DDP(_net())
        monitor = DataParallelNoiseMonitor(model)
        x, y = _data((n0, n1)[rank], rank)
        n = len(x)
        model.zero_grad()
        chunks = list(zip(x.chunk(k), y.chunk(k)))
        for j, (xb, yb) in enumerate(chunks):
            sync = contextlib.nullcontext() if j == len(chunks) - 1 else model.no_sync()
            with sync:
                (F.mse_loss(model(xb), yb) * len(xb) / n).backward()
            monitor.after_micro_batch(len(xb))
        est = monitor.after_step()
        results[name] = {"ddp": [est.g2, est.trace_sigma, est.b_small, est.b_big]}
        if rank == 0:  # the same per-rank batches as the micro-batches of one step, weighted 1/W as DDP does
            net = _net()
            reference = GradientNoiseMonitor(net.parameters())
            for r in range(world):
                xr, yr = _data((n0, n1)[r], r)
                (F.mse_loss(net(xr), yr) / world).backward()
                reference.after_micro_batch(len(xr), loss_scale=1.0 / world)
            ref = reference.after_step()
            results[name]["reference"] = [ref.g2, ref.trace_sigma, ref.b_small, ref.b_big]
    model = DDP(_net())  # every=2: steps 0 and 2 measured, step 1 plain DDP (None), the gradients unchanged
    monitor = DataParallelNoiseMonitor(model, every=2)
    x, y = _data(8, rank)
    results["every"] = []
    for step in range(3):
        model.zero_grad()
        F.mse_loss(model(x), y).backward()
        monitor.after_micro_batch(len(x))
        est = monitor.after_step()
        results["every"].append(None if est is None else [est.g2, est.trace_sigma, est.b_small, est.b_big])
        if step == 1:
            results["every_grad"] = [float(p.grad.square().sum()) for p in model.parameters()]
    (out / f"rank{rank}.json").write_text(json.dumps(results))
    if teardown in ("barrier", "collect"):
        dist.barrier()  # no rank closes its connections while another still works
        del model, monitor  # the DDP reducers and their communication hooks go before the group they use
        if teardown == "collect":
            gc.collect()  # a DDP model sits in reference cycles: only a collection frees it now
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), *(arg.removeprefix("--teardown=") for arg in sys.argv[2:3]))
