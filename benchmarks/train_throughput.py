"""Examples per second: the training engine against a plain DataLoader loop, side by side.

Usage: python benchmarks/train_throughput.py [--repeats 5] [--examples 40960]

For each model (a small MLP, the cpu profile's 784-256-10, and the paper's MNIST CNN)
and batch size (32, 1024) on random 28×28 images, it times, for the same number of
examples, interleaved, median of repeats:

* ``engine``: ``gns_utils.experiments.train.train_run`` — tensors on the device, sampling without
  replacement, B_simple measured at every step (per-example norms in the step's one
  backward for the MLP, 2 micro-batches for the CNN: ``train.noise_monitor``),
  evaluations, metrics file;
* ``plain``: the usual ``DataLoader(TensorDataset, shuffle=True)`` loop with plain SGD —
  one forward/backward per step, nothing measured;
* ``same work``: that DataLoader loop doing what the engine does per step (the same
  noise monitor, micro-batches and EMAs), so the ratio isolates the data path;
* ``bound``: the fastest loop with one forward/backward per step — batches gathered
  from in-memory tensors, no DataLoader, nothing measured. No engine that runs the
  model's forward/backward once per step can beat it, so ``bound / plain`` is the
  most any engine can gain over the plain loop on the machine it runs on.

It prints engine/plain, engine/same work and bound/plain; ``benchmarks/README.md`` reports
them against the target engine/plain never below 1×.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from gns_utils.experiments.config import make_experiment
from gns_utils.experiments.models import build_model
from gns_utils.noise import NoiseScaleEMA, PerExampleNormMonitor
from gns_utils.experiments.problems import ClassificationProblem
from gns_utils.experiments.train import noise_monitor, train_run

MODELS = {"mlp": {"in_features": 784, "hidden": [256]}, "paper_cnn": {}}


def baseline(model_name: str, x: torch.Tensor, y: torch.Tensor, batch_size: int, n_examples: int,
             measure_noise: bool = False) -> float:
    """Seconds for a DataLoader + SGD loop over ``n_examples`` examples: plain (one
    forward/backward per step), or with the engine's per-step noise measurement
    (``train.noise_monitor``'s choice, its micro-batches, the two EMAs) when ``measure_noise``."""
    torch.manual_seed(0)
    model = build_model(model_name, **MODELS[model_name])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    if measure_noise:
        monitor, n_micro = noise_monitor(model, "auto", 2)
        ema = NoiseScaleEMA(decay=0.99, adaptive=4)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, drop_last=True)
    seen, start = 0, time.perf_counter()
    while seen < n_examples:
        for xb, yb in loader:
            opt.zero_grad()
            if not measure_noise:
                F.cross_entropy(model(xb), yb).backward()
            elif isinstance(monitor, PerExampleNormMonitor):
                with monitor.capture():
                    loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                monitor.after_micro_batch(len(xb))
                ema.update(monitor.after_step())
            else:
                for xm, ym in zip(xb.chunk(n_micro), yb.chunk(n_micro)):
                    (F.cross_entropy(model(xm), ym) * (len(xm) / len(xb))).backward()
                    monitor.after_micro_batch(len(xm))
                ema.update(monitor.after_step())
            opt.step()
            seen += batch_size
            if seen >= n_examples:
                break
    return time.perf_counter() - start


def bound(model_name: str, x: torch.Tensor, y: torch.Tensor, batch_size: int, n_examples: int) -> float:
    """Seconds for the leanest one-forward/backward loop: in-memory batches, nothing measured."""
    torch.manual_seed(0)
    model = build_model(model_name, **MODELS[model_name])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    seen, start = 0, time.perf_counter()
    while seen < n_examples:
        perm = torch.randperm(len(x))
        for lo in range(0, len(x) - batch_size + 1, batch_size):
            idx = perm[lo:lo + batch_size]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            seen += batch_size
            if seen >= n_examples:
                break
    return time.perf_counter() - start


def engine(model_name: str, problem: ClassificationProblem, batch_size: int, n_examples: int, root: str) -> float:
    """Seconds for one ``train_run`` over ``n_examples`` examples (goal unreachable, few evaluations)."""
    cfg = make_experiment(dict(
        task=f"bench_{model_name}", domain="image", dataset="random", model=model_name, model_kwargs=MODELS[model_name],
        optimizer="sgd", metric="error", goals=[-1.0], batch_sizes=[2, 4, 8], lr_star=0.01, lr_b_star=1.0,
        budget_examples=n_examples, eval_examples=256, evals_per_decade=1, profile="cpu",
    )).run(batch_size, 0.01)
    start = time.perf_counter()
    train_run(problem, cfg, root, progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--examples", type=int, default=40960, help="examples per timed MLP run (CNN: a quarter)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(20000, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (20000,), generator=gen)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.examples} examples per MLP run "
          f"({args.examples // 4} per CNN run), median of {args.repeats}, interleaved")
    print(f"{'model':<10} {'batch':>6} {'engine ex/s':>12} {'plain ex/s':>11} {'ratio':>7} "
          f"{'same work ex/s':>15} {'ratio':>7} {'bound ex/s':>11} {'bound/plain':>12}")
    with tempfile.TemporaryDirectory() as root:
        for model_name in MODELS:
            problem = ClassificationProblem((x, y), model_name, MODELS[model_name], 256, torch.device("cpu"))
            n = args.examples if model_name == "mlp" else args.examples // 4
            for batch_size in (32, 1024):
                times: dict[str, list[float]] = {"engine": [], "plain": [], "same": [], "bound": []}
                for _ in range(args.repeats):
                    times["engine"].append(engine(model_name, problem, batch_size, n, root))
                    times["plain"].append(baseline(model_name, x, y, batch_size, n))
                    times["same"].append(baseline(model_name, x, y, batch_size, n, measure_noise=True))
                    times["bound"].append(bound(model_name, x, y, batch_size, n))
                a, b, c, d = (n / statistics.median(times[k]) for k in ("engine", "plain", "same", "bound"))
                print(f"{model_name:<10} {batch_size:>6} {a:>12.0f} {b:>11.0f} {a / b:>6.2f}x {c:>15.0f} {a / c:>6.2f}x "
                      f"{d:>11.0f} {d / b:>11.2f}x", flush=True)


if __name__ == "__main__":
    main()
