"""B_simple in a Hugging Face ``Trainer``: :class:`NoiseScaleCallback` (``pip install "gns_utils[hf]"``).

The callback measures ``|G|^2`` and ``tr Σ`` from the micro-batches of gradient accumulation
(``TrainingArguments(gradient_accumulation_steps=k)``, ``k ≥ 2``; A.1, A.2) with a
:class:`gns_utils.noise.GradientNoiseMonitor` whose big norm is taken inside the gradient hooks: the
Trainer clips the gradients before its last callback of a step, and the hooks have measured by then.
It adds to the Trainer's logs, and so to every logger of ``report_to`` (TensorBoard, W&B, MLflow ...) and
to ``trainer.state.log_history``:

* ``gns/g2``, ``gns/trace_sigma``: the moving averages of the two estimates (per batch unit);
* ``gns/b_simple``: B_simple = tr Σ / |G|² (2.9) from those averages, and ``gns/b_simple_stderr``.

Attach it with :meth:`NoiseScaleCallback.attach` (it must run before the reporting callbacks see the
logs)::

    trainer = Trainer(model, args, train_dataset=data)
    NoiseScaleCallback(units="tokens").attach(trainer)
    trainer.train()

Units: ``"examples"`` (sequences) or ``"tokens"``, counted from each micro-batch's forward. Tokens are
those that carry loss when the forward gets ``labels``: the labels other than ``-100``, less each
sequence's first for a causal language model (its loss predicts token t+1 from tokens ≤ t); without
labels, the attention mask's ones, else every input id. The micro-batches' weights are taken proportional to their
units, which is what the Trainer does with a loss normalised by the tokens in the batch, and what
equal micro-batches give with its default division by ``k``. With fp16 and a grad scaler the two
estimates carry the scale squared; B_simple, their ratio, does not.

Loss normalisation: a causal language model's loss is a mean over the tokens that carry a label (for
each sequence all but the first), and the Trainer divides the summed loss by ``num_items_in_batch``
counted from the labels. If that count includes tokens that carry no loss (the first of every
sequence), each micro-batch gradient is scaled by the same factor ``c < 1`` (predicted / counted
tokens), so ``|G|^2`` and ``tr Σ`` both come out ``c²`` times too small and B_simple, their ratio, is
unaffected. With ``units="tokens"`` and labels, B_simple is in predicted tokens.

Resuming: the moving averages are saved with every checkpoint (in ``trainer_state.json``, as the
Trainer's ``ExportableState`` callbacks are) and restored when ``trainer.train(resume_from_checkpoint=...)``
resumes from one, so a resumed run ends with the averages of the uninterrupted run.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

try:
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState
except ImportError as err:  # the core library does not need transformers
    raise ImportError("gns_utils.huggingface needs transformers: pip install 'gns_utils[hf]' "
                      "(or pip install transformers)") from err

from gns_utils.noise import GradientNoiseMonitor, NoiseScaleEMA


def is_causal_lm(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a Hugging Face causal language model (its loss shifts the labels by one): its
    ``loss_type`` is ``"ForCausalLM"`` or its class is one of the auto causal-LM classes (``GPT2LMHeadModel``
    has no ``loss_type`` of its own)."""
    if getattr(model, "loss_type", None) == "ForCausalLM":
        return True
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return type(model).__name__ in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def loss_tokens(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> float:
    """The tokens of one forward that carry loss: the labels other than ``-100`` (Hugging Face's ignore
    index), less each sequence's first label for a causal language model (:func:`is_causal_lm`: its labels
    are shifted by one inside the loss); without labels, the attention mask's ones, else every input id."""
    if isinstance(labels, torch.Tensor):
        carrying = labels != -100
        if is_causal_lm(model):
            carrying = carrying[..., 1:]
        return float(carrying.sum())
    if isinstance(attention_mask, torch.Tensor):
        return float(attention_mask.sum())
    return float(input_ids.numel())


class NoiseScaleCallback(TrainerCallback, ExportableState):
    """Log the gradient noise scale B_simple of a ``transformers.Trainer`` run (see the module docstring).

    Args:
        units: ``"examples"`` or ``"tokens"``: what a batch unit is (B_simple comes out in it).
        decay, adaptive: the moving averages' settings (:class:`gns_utils.noise.NoiseScaleEMA`).
        prefix: the logged names' prefix.
    """

    def __init__(self, units: str = "examples", decay: float = 0.99, adaptive: float | None = 4.0,
                 prefix: str = "gns/") -> None:
        if units not in ("examples", "tokens"):
            raise ValueError(f"units must be 'examples' or 'tokens', got {units!r}")
        self.unit, self.prefix = units, prefix
        self._settings = {"units": units, "decay": decay, "adaptive": adaptive, "prefix": prefix}
        self.ema = NoiseScaleEMA(decay=decay, adaptive=adaptive)
        self.monitor: GradientNoiseMonitor | None = None
        self._units: float | None = None
        self._handle: Any = None

    def attach(self, trainer: Any) -> "NoiseScaleCallback":
        """Add the callback to ``trainer`` ahead of its reporting callbacks (so they log its numbers)."""
        trainer.callback_handler.callbacks.insert(0, self)
        return self

    def _count(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not module.training:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if not isinstance(ids, torch.Tensor):
            raise TypeError("NoiseScaleCallback counts units from the model's input_ids; this model got none")
        if self.unit == "examples":
            self._units = float(ids.shape[0])
        else:
            self._units = loss_tokens(module, ids, kwargs.get("attention_mask"), kwargs.get("labels"))

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if args.gradient_accumulation_steps < 2:
            raise ValueError("NoiseScaleCallback measures the noise from the micro-batches of gradient accumulation: "
                             "use TrainingArguments(gradient_accumulation_steps=k) with k >= 2 (and the per-device "
                             "batch size divided by k for the same effective batch)")
        self.monitor = GradientNoiseMonitor(model, big_norm="hooks")
        self._handle = model.register_forward_pre_hook(self._count, with_kwargs=True)
        if state.global_step > 0:  # resumed from a checkpoint: its trainer_state.json holds our averages
            saved = (state.stateful_callbacks or {}).get(type(self).__name__)
            saved = saved[0] if isinstance(saved, list) and saved else saved
            restored = (saved or {}).get("attributes", {}).get("_saved")
            if restored and restored.get("ema"):
                self.load_state_dict(restored)
            else:
                warnings.warn(f"NoiseScaleCallback: training resumes at step {state.global_step} but the checkpoint "
                              "holds no noise-scale state (saved by an older version, or without this callback): "
                              "the moving averages start anew", RuntimeWarning, stacklevel=2)

    def _active_monitor(self) -> GradientNoiseMonitor:
        if self.monitor is None:
            raise RuntimeError("NoiseScaleCallback got a training step before on_train_begin")
        return self.monitor

    def _micro_batch(self) -> None:
        if self._units is None:
            raise RuntimeError("NoiseScaleCallback saw a backward without a training forward of the model")
        self._active_monitor().after_micro_batch(self._units)
        self._units = None

    def on_substep_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._micro_batch()

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._micro_batch()  # the step's last micro-batch (already clipped: the hooks measured before)
        estimate = self._active_monitor().after_step()
        if estimate is not None:
            self.ema.update(estimate)

    def values(self) -> dict[str, float]:
        """The current logged numbers (empty before the first estimate)."""
        if not self.ema.count:
            return {}
        out = {"g2": self.ema.g2, "trace_sigma": self.ema.trace_sigma, "b_simple": self.ema.b_simple}
        if self.ema.count >= 2:
            out["b_simple_stderr"] = self.ema.uncertainty().stderr
        return {self.prefix + k: float(v) for k, v in out.items()}

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> None:
        values = self.values()
        if logs is None or not values or "loss" not in logs:  # training logs only
            return
        logs.update(values)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)  # the Trainer keeps its history before the callbacks run

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
        if self.monitor is not None:
            self.monitor.remove()

    def state_dict(self) -> dict[str, Any]:
        """The moving averages and the monitor's counters (plain numbers and lists)."""
        return {"ema": self.ema.state_dict(),
                "monitor": self.monitor.state_dict() if self.monitor is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.ema.load_state_dict(state["ema"])
        if self.monitor is not None and state.get("monitor"):
            self.monitor.load_state_dict(state["monitor"])

    def state(self) -> dict[str, Any]:
        """The Trainer's ``ExportableState``: written into each checkpoint's ``trainer_state.json``."""
        return {"args": dict(self._settings), "attributes": {"_saved": self.state_dict()}}


__all__ = ["NoiseScaleCallback"]
