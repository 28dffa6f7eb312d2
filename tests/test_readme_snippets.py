"""The code for your own training loop, in the README and in docs/library.md, runs as written (on a toy regression)."""

import re

import pytest

import torch
import torch.nn.functional as F
from torch import nn

from gns_utils.experiments.paths import repo_path


def _snippets():
    readme = repo_path("README.md").read_text().split("## Using the library", 1)[1].split("\n## ", 1)[0]
    library = repo_path("docs", "library.md").read_text().split("## Using it on your own model", 1)[1].split("\n## ", 1)[0]
    return [code for section in (readme, library) for code in re.findall(r"```python\n(.*?)```", section, flags=re.S)]


def test_the_plain_loop_snippets_run_and_measure_a_positive_noise_scale(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the TensorBoard snippet writes runs/gns here
    runnable = [s for s in _snippets() if "..." not in s and "DDP(" not in s]
    assert len(runnable) >= 3, "the README's snippet, the accumulation and per-example snippets"
    for code in runnable:
        torch.manual_seed(0)
        x = torch.randn(512, 8)
        y = x @ torch.randn(8, 1) + 0.5 * torch.randn(512, 1)
        model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
        namespace = {"model": model, "loss_fn": F.mse_loss, "opt": torch.optim.SGD(model.parameters(), lr=0.05),
                     "loader": list(zip(x.split(32), y.split(32)))}
        exec(compile(code, "snippet", "exec"), namespace)
        assert namespace["ema"].count > 0 and namespace["ema"].trace_sigma > 0
        if "SummaryWriter" in code:  # the logged series reads back, its last value the EMA's
            from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

            events = EventAccumulator(str(tmp_path / "runs" / "gns"))
            events.Reload()
            logged = events.Scalars("gns/b_simple")
            assert len(logged) == namespace["ema"].count
            assert logged[-1].value == pytest.approx(namespace["ema"].b_simple, rel=1e-6)
            assert {"gns/trace_sigma", "gns/g2"} <= set(events.Tags()["scalars"])
        if "BatchSizeController" in code:  # the batch grew, by more micro-batches, with the learning rate
            history = namespace["control"].history
            assert len(history) >= 2 and history[-1][1] > 32 and history[-1][2] > 0.05
