"""Many learning-rate members per device: K members as one batched model against K runs one after the other.

The paper's MNIST CNN (``PaperCNN``, 28×28×1, train mode with dropout) at batch 32, two micro-batches
per step with the A.2 noise estimate, plain SGD, for K = 1, 4, 16 members:

* ``sequential``  K models, each step as the training engine takes it: two accumulated micro-batches,
  :class:`gns_utils.noise.GradientNoiseMonitor`, ``torch.optim.SGD``;
* ``stacked``     :class:`gns_utils.experiments.members.StackedMembers`: one vmapped forward/backward
  per micro-batch for all K members, per-member estimates and update.

The two are interleaved, repeat by repeat; the median time per step of each is printed with the
throughput in member-examples per second (K × 32 / step time) and the ratio sequential / stacked
(> 1: the batched model is faster). Runs on CUDA when available (``--device``), else on the CPU.

Usage::

    python benchmarks/members_throughput.py [--members 1 4 16] [--repeats 20] [--threads 2] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from gns_utils.experiments.members import StackedMembers
from gns_utils.experiments.models import PaperCNN
from gns_utils.noise import GradientNoiseMonitor

BATCH = 32
N_MICRO = 2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sequential_step(models, optimizers, monitors, x, y) -> None:
    for model, opt, monitor in zip(models, optimizers, monitors):
        opt.zero_grad(set_to_none=True)
        for xm, ym in zip(x.chunk(N_MICRO), y.chunk(N_MICRO)):
            (F.cross_entropy(model(xm), ym) / N_MICRO).backward()
            monitor.after_micro_batch(len(xm))
        monitor.after_step()
        opt.step()


def measure(k: int, repeats: int, device: torch.device) -> dict[str, float]:
    torch.manual_seed(0)
    base = PaperCNN(in_channels=1, n_classes=10, image_size=28).to(device).train()
    lrs = [1e-3 * 1.4 ** i for i in range(k)]
    models = [PaperCNN(in_channels=1, n_classes=10, image_size=28).to(device).train() for _ in range(k)]
    for m in models:
        m.load_state_dict(base.state_dict())
    optimizers = [torch.optim.SGD(m.parameters(), lr=lr, foreach=True) for m, lr in zip(models, lrs)]
    monitors = [GradientNoiseMonitor(m) for m in models]
    stacked = StackedMembers(base, lrs, F.cross_entropy, n_micro=N_MICRO)
    x = torch.randn(BATCH, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (BATCH,), device=device)
    times: dict[str, list[float]] = {"sequential": [], "stacked": []}
    steps = {"sequential": lambda: sequential_step(models, optimizers, monitors, x, y),
             "stacked": lambda: stacked.step(x, y)}
    for name in steps:  # warm-up
        steps[name]()
    _sync(device)
    for _ in range(repeats):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, nargs="*", default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"PaperCNN, batch {BATCH}, {N_MICRO} micro-batches + A.2 estimate, SGD; {name}; torch {torch.__version__}; "
          f"median of {args.repeats} steps")
    print(f"{'K':>3} {'sequential ms':>14} {'stacked ms':>11} {'seq. ex/s':>10} {'stacked ex/s':>13} {'seq/stacked':>12}")
    for k in args.members:
        t = measure(k, args.repeats, device)
        print(f"{k:>3} {t['sequential'] * 1e3:>14.1f} {t['stacked'] * 1e3:>11.1f} {k * BATCH / t['sequential']:>10.0f} "
              f"{k * BATCH / t['stacked']:>13.0f} {t['sequential'] / t['stacked']:>12.2f}")


if __name__ == "__main__":
    main()
