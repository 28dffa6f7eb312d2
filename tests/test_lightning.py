"""The Lightning callback: B_simple logged through the trainer's logger, with gradient accumulation."""

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

lightning = pytest.importorskip("lightning")  # an optional extra: pip install "gns_utils[lightning]"

from gns_utils.lightning import NoiseScaleCallback  # noqa: E402
from gns_utils.noise import GradientNoiseMonitor  # noqa: E402

X = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
Y = X.sum(1, keepdim=True) + torch.randn(64, 1, generator=torch.Generator().manual_seed(1))


class Regression(lightning.pytorch.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _trainer(tmp_path, callback, **kw):
    return lightning.pytorch.Trainer(max_steps=4, accumulate_grad_batches=2, callbacks=[callback],
                                     logger=lightning.pytorch.loggers.CSVLogger(tmp_path), enable_progress_bar=False,
                                     enable_model_summary=False, enable_checkpointing=False, log_every_n_steps=1,
                                     accelerator="cpu", gradient_clip_val=0.5, **kw)


def test_logged_b_simple_is_that_of_the_micro_batches_before_clipping(tmp_path):
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=8)  # no shuffling
    callback = NoiseScaleCallback(decay=0.0, adaptive=None)  # decay 0: the logged values are the last step's
    _trainer(tmp_path, callback).fit(Regression(), loader)
    logged = pd.read_csv(next(tmp_path.rglob("metrics.csv"))).dropna(subset=["gns/g2"]).sort_values("step")
    assert len(logged) == 4 and (logged["gns/trace_sigma"] > 0).all()
    # decay 0: B_simple is the step's tr Σ / |G|², NaN where that |G|² estimate is <= 0 (by chance: B_simple ≈ B)
    resolved = logged["gns/g2"] > 0
    assert logged.loc[~resolved, "gns/b_simple"].isna().all()
    assert logged.loc[resolved, "gns/b_simple"].tolist() == pytest.approx(
        (logged["gns/trace_sigma"] / logged["gns/g2"])[resolved].tolist(), rel=1e-5)

    # the first step by hand: micro-batches 0 and 1 at the initial weights, measured before any clipping
    module = Regression()
    monitor = GradientNoiseMonitor(module.parameters())
    for j in range(2):
        (F.mse_loss(module.net(X[8 * j:8 * j + 8]), Y[8 * j:8 * j + 8]) / 2).backward()
        monitor.after_micro_batch(8, loss_scale=0.5)
    first = monitor.after_step()
    assert callback.ema.count == 4
    assert logged["gns/g2"].iloc[0] == pytest.approx(first.g2, rel=1e-5)
    assert logged["gns/trace_sigma"].iloc[0] == pytest.approx(first.trace_sigma, rel=1e-5)


def test_without_accumulation_the_callback_says_what_to_do(tmp_path):
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=8)
    trainer = lightning.pytorch.Trainer(max_steps=2, callbacks=[NoiseScaleCallback()], logger=False,
                                        enable_progress_bar=False, enable_checkpointing=False, accelerator="cpu")
    with pytest.raises(ValueError, match="accumulate_grad_batches"):
        trainer.fit(Regression(), loader)


def test_the_callback_state_is_saved_and_restored():
    callback = NoiseScaleCallback()
    other = NoiseScaleCallback()
    from gns_utils.noise import NoiseEstimate

    for t in range(5):
        callback.ema.update(NoiseEstimate(g2=1.0 + t, trace_sigma=3.0, b_small=4.0, b_big=8.0))
    other.load_state_dict(callback.state_dict())
    assert other.ema.b_simple == callback.ema.b_simple and other.ema.count == 5
