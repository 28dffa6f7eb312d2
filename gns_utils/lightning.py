"""B_simple in a Lightning training: :class:`NoiseScaleCallback` (``pip install "gns_utils[lightning]"``).

The callback measures ``|G|^2`` and ``tr Σ`` from the micro-batches of gradient accumulation
(``Trainer(accumulate_grad_batches=k)``, ``k ≥ 2``; A.1, A.2) with a
:class:`gns_utils.noise.GradientNoiseMonitor` whose big norm is taken inside the gradient hooks, so
Lightning's own order (unscale, then ``on_before_optimizer_step``, then clipping) does not matter; a
mixed-precision grad scaler's factor is divided out. It logs, through ``pl_module.log`` and so to
whatever logger the trainer uses (TensorBoard, W&B, MLflow, CSV):

* ``gns/g2``, ``gns/trace_sigma``: the moving averages of the two estimates (per batch unit);
* ``gns/b_simple``: B_simple = tr Σ / |G|² (2.9) from those averages, and ``gns/b_simple_stderr``.

Its state (the moving averages) is saved in Lightning checkpoints and restored on resume.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

try:
    from lightning.pytorch import Callback
except ImportError as err:  # the core library does not need Lightning
    raise ImportError("gns_utils.lightning needs Lightning: pip install 'gns_utils[lightning]' "
                      "(or pip install lightning)") from err

from gns_utils.noise import GradientNoiseMonitor, NoiseScaleEMA


def first_dimension(batch: Any) -> int:
    """Examples in a batch: the leading size of its first tensor (tuple / list / dict / tensor)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, dict):
        return first_dimension(next(iter(batch.values())))
    if isinstance(batch, (list, tuple)) and batch:
        return first_dimension(batch[0])
    raise TypeError(f"cannot count the examples of a batch of type {type(batch).__name__}: pass units=")


class NoiseScaleCallback(Callback):
    """Log the gradient noise scale B_simple of a Lightning training (see the module docstring).

    Args:
        units: ``units(batch)`` → the batch units of a micro-batch (examples, or tokens for a language
            model); default: the leading size of the batch's first tensor.
        decay, adaptive: the moving averages' settings (:class:`gns_utils.noise.NoiseScaleEMA`).
        prefix: the logged names' prefix.
    """

    def __init__(self, units: Callable[[Any], float] | None = None, decay: float = 0.99, adaptive: float | None = 4.0,
                 prefix: str = "gns/") -> None:
        self.units = units or first_dimension
        self.prefix = prefix
        self.ema = NoiseScaleEMA(decay=decay, adaptive=adaptive)
        self.monitor: GradientNoiseMonitor | None = None
        self._batch_units = 0.0

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.accumulate_grad_batches < 2:
            raise ValueError("NoiseScaleCallback measures the noise from the micro-batches of gradient accumulation: "
                             "use Trainer(accumulate_grad_batches=k) with k >= 2 (the effective batch is k "
                             "micro-batches)")
        if not pl_module.automatic_optimization:
            raise ValueError("NoiseScaleCallback needs Lightning's automatic optimization")
        self.monitor = GradientNoiseMonitor(pl_module, big_norm="hooks")

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is not None:
            self.monitor.remove()

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._batch_units = float(self.units(batch))

    def _active_monitor(self) -> GradientNoiseMonitor:
        if self.monitor is None:
            raise RuntimeError("NoiseScaleCallback got a training step before on_fit_start")
        return self.monitor

    def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        scale = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0
        # Lightning divides each micro-batch's loss by accumulate_grad_batches
        self._active_monitor().after_micro_batch(self._batch_units, loss_scale=scale / trainer.accumulate_grad_batches)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        estimate = self._active_monitor().after_step()
        if estimate is None:
            return
        self.ema.update(estimate)
        values = {"g2": self.ema.g2, "trace_sigma": self.ema.trace_sigma, "b_simple": self.ema.b_simple}
        if self.ema.count >= 2:
            values["b_simple_stderr"] = self.ema.uncertainty().stderr
        pl_module.log_dict({self.prefix + k: float(v) for k, v in values.items()}, on_step=True, on_epoch=False)

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.ema.load_state_dict(state_dict["ema"])


__all__ = ["NoiseScaleCallback", "first_dimension"]
