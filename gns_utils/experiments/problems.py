"""What is trained: data on the device, a model factory, the loss and the goal metric.

A *problem* bundles everything a run needs that does not change between batch sizes
and learning rates, so a sweep loads its dataset once. Each problem knows its batch
units: images for classifiers and autoencoders, tokens for language models (the
paper's units for B, B_crit and B_simple).

Every problem implements:

* ``n_train``              examples (sequences for language models) to sample from.
* ``units_per_example``    1, or the sequence length for language models.
* ``build_model(model, model_kwargs)``  a fresh model on the device: the run's model and
                           keyword arguments over the data-derived ones (input size, vocabulary).
* ``batch(idx)``           the examples with indices ``idx`` (a device tensor).
* ``loss(model, batch)``   mean loss per unit (image or token), a scalar tensor; classifiers
                           take a ``metrics`` dict too and put the batch's error rate in it.
* ``evaluate(model)``      ``{"loss": ..., "error": ...}`` on a fixed training subset.
* ``measurement_batch(n, index)``  ``n`` examples of a fixed block, disjoint from other indices
                           (the checkpoint noise measurements; apart from the training stream).
* ``hessian_batch(n, index)``  ``(loss_fn, inputs, targets)`` for the Hessian B_noise, or None.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from gns_utils.experiments.data import load_images
from gns_utils.experiments.models import build_model
from gns_utils.experiments.synthetic import NoisyLinearProblem
from gns_utils.experiments.text import load_sequences

Batch = tuple[torch.Tensor, ...]


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → CUDA when present, else CPU; otherwise the named device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but torch sees no CUDA device; use device='cpu' or 'auto'")
    return torch.device(device)


def _fixed_subset(n: int, size: int, seed: int = 1234) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[: min(size, n)]


class _Problem:
    """Shared mechanics: tensors on the device, a fixed evaluation subset, chunked eval."""

    units_per_example = 1
    eval_chunk = 2048

    def __init__(self, tensors: Batch, model: str, model_kwargs: Mapping[str, Any], eval_examples: int,
                 device: torch.device) -> None:
        self.device = device
        self.tensors = tuple(t.to(device) for t in tensors)
        self.n_train = len(self.tensors[0])
        self.model_name = model
        self.model_kwargs = dict(model_kwargs)
        self.eval_idx = _fixed_subset(self.n_train, eval_examples).to(device)

    def build_model(self, model: str | None = None, model_kwargs: Mapping[str, Any] | None = None) -> nn.Module:
        """A fresh model: ``model`` (default: the problem's) with ``model_kwargs`` over the
        problem's keyword arguments, so one loaded problem serves runs of several sizes."""
        kwargs = {**self.model_kwargs, **dict(model_kwargs or {})}
        return build_model(model or self.model_name, **kwargs).to(self.device)

    def batch(self, idx: torch.Tensor) -> Batch:
        return tuple(t.index_select(0, idx) for t in self.tensors)  # ≈ 3× faster than t[idx] on CPU

    def units(self, batch: Batch) -> int:
        return len(batch[0]) * self.units_per_example

    def subset(self, n: int, index: int) -> torch.Tensor:
        """Block ``index`` of ``n`` training examples from a fixed random permutation: blocks with
        different indices are disjoint (the independent batches of the checkpoint measurements)."""
        if (index + 1) * n > self.n_train:
            raise ValueError(f"block {index} of {n} examples exceeds the {self.n_train} training examples; "
                             "lower b_noise_examples")
        if getattr(self, "_measure_perm", None) is None:
            self._measure_perm = _fixed_subset(self.n_train, self.n_train, seed=4321).to(self.device)
        return self._measure_perm[index * n:(index + 1) * n]

    def measurement_batch(self, n: int, index: int = 0) -> Batch:
        """The examples of block ``index`` (:meth:`subset`), for the checkpoint measurements."""
        return self.batch(self.subset(n, index))

    def hessian_batch(self, n: int, index: int = 0) -> tuple[Callable, torch.Tensor, torch.Tensor] | None:
        """``(loss_fn, inputs, targets)`` on block ``index`` (:meth:`subset`) for the Hessian B_noise
        (2.8), or None where Hessian-vector products do not run (stochastic or recurrent models)."""
        return None

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Mean loss (and error where defined) on the fixed training subset, eval mode."""
        was_training = model.training
        model.eval()
        totals: dict[str, float] = {}
        count = 0
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(0)  # stochastic models (VAE) evaluate on fixed noise
            for chunk in self.eval_idx.split(self.eval_chunk):
                batch = self.batch(chunk)
                for key, value in self._eval_sums(model, batch).items():
                    totals[key] = totals.get(key, 0.0) + float(value)
                count += len(chunk)
        model.train(was_training)
        return {k: v / (count * (self.units_per_example if k != "error" else 1)) for k, v in totals.items()}

    def _eval_sums(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class ClassificationProblem(_Problem):
    """Image classification; loss = cross-entropy, error = 1 − accuracy."""

    def loss(self, model: nn.Module, batch: Batch, metrics: dict[str, float] | None = None) -> torch.Tensor:
        """Mean cross-entropy; with a ``metrics`` dict, its ``"error"`` is set to the batch's error rate."""
        loss, terms = self.loss_terms(model, batch)
        if metrics is not None:
            metrics["error"] = float(terms["error"])
        return loss

    def loss_terms(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean cross-entropy and ``{"error": the batch's error rate}`` as tensors (``torch.func``-safe)."""
        x, y = batch
        logits = model(x)
        return F.cross_entropy(logits, y), {"error": (logits.detach().argmax(1) != y).float().mean()}

    def _eval_sums(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        x, y = batch
        logits = model(x)
        return {"loss": F.cross_entropy(logits, y, reduction="sum"), "error": (logits.argmax(1) != y).sum()}

    def hessian_batch(self, n: int, index: int = 0) -> tuple[Callable, torch.Tensor, torch.Tensor]:
        idx = self.subset(n, index)
        return F.cross_entropy, self.tensors[0][idx], self.tensors[1][idx]


class LanguageModelProblem(_Problem):
    """Next-token prediction on sequences [n, L+1]; batch units are tokens (L per sequence)."""

    eval_chunk = 256

    def __init__(self, sequences: torch.Tensor, model: str, model_kwargs: Mapping[str, Any],
                 eval_examples: int, device: torch.device) -> None:
        super().__init__((sequences,), model, model_kwargs, eval_examples, device)
        self.units_per_example = sequences.shape[1] - 1

    def _logits(self, model: nn.Module, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(seq[:, :-1])
        return logits.reshape(-1, logits.shape[-1]), seq[:, 1:].reshape(-1)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(*self._logits(model, batch[0]))

    def _eval_sums(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        return {"loss": F.cross_entropy(*self._logits(model, batch[0]), reduction="sum")}


class AutoencoderProblem(_Problem):
    """Autoencoder / VAE on images in [0, 1].

    Loss per image: Bernoulli reconstruction negative log-likelihood summed over pixels
    (binary cross-entropy with logits), plus the KL term for a VAE (negative ELBO, nats).
    """

    def _per_image(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        logits, mu, logvar = model(x)
        nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
        if mu is None:
            return nll
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)
        return nll + kl

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self._per_image(model, batch[0]).mean()

    def hessian_batch(self, n: int, index: int = 0) -> tuple[Callable, torch.Tensor, torch.Tensor] | None:
        """The plain autoencoder's (deterministic) loss; None for a VAE, whose loss samples its latents."""
        if self.model_name == "vae":
            return None
        x = self.tensors[0][self.subset(n, index)]
        return _reconstruction_nll, x, x

    def _eval_sums(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        return {"loss": self._per_image(model, batch[0]).sum()}


def _reconstruction_nll(outputs: tuple[torch.Tensor, Any, Any], targets: torch.Tensor) -> torch.Tensor:
    """Mean over images of the Bernoulli reconstruction NLL (nats per image) of a plain autoencoder."""
    logits = outputs[0]
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").flatten(1).sum(1).mean()


def make_problem(cfg: Any, device: torch.device | str | None = None) -> _Problem:
    """Load the data named by an experiment / run config and wrap it as a problem.

    Raises:
        gns_utils.experiments.data.DatasetNotFoundError: the dataset is not on this machine (the
            message says where it looked and the command that gets it).
    """
    device = resolve_device(device or cfg.device) if not isinstance(device, torch.device) else device
    if cfg.domain == "synthetic":
        if cfg.dataset != "noisy_linear":
            raise ValueError(f"unknown synthetic dataset {cfg.dataset!r}; the synthetic domain has 'noisy_linear'")
        return NoisyLinearProblem(**dict(cfg.data_kwargs), seed=cfg.seed, model=cfg.model,
                                  model_kwargs=cfg.model_kwargs, device=device, groups=getattr(cfg, "n_micro", 2))
    if cfg.domain == "rl":
        from gns_utils.experiments.rl import make_rl_problem  # gymnasium is only needed here

        return make_rl_problem(cfg, device)
    kw = dict(cfg.data_kwargs)
    if cfg.domain == "language":
        sequences = load_sequences(cfg.dataset, **kw)
        model_kwargs = {"vocab_size": int(sequences.max()) + 1, **cfg.model_kwargs}
        if "vocab_size" in kw:
            model_kwargs["vocab_size"] = max(int(kw["vocab_size"]), model_kwargs["vocab_size"])
        return LanguageModelProblem(sequences, cfg.model, model_kwargs, cfg.eval_examples, device)
    images = load_images(cfg.dataset, **kw)
    if cfg.domain == "image":
        model_kwargs = dict(cfg.model_kwargs)
        if cfg.model == "mlp":
            model_kwargs.setdefault("in_features", int(images.x[0].numel()))
        elif cfg.model in ("paper_cnn",):
            model_kwargs.setdefault("in_channels", images.x.shape[1])
            model_kwargs.setdefault("image_size", images.x.shape[-1])
        elif cfg.model == "resnet32":
            model_kwargs.setdefault("in_channels", images.x.shape[1])
        return ClassificationProblem((images.x, images.y), cfg.model, model_kwargs, cfg.eval_examples, device)
    if cfg.domain == "autoencoder":
        model_kwargs = {"in_channels": images.x.shape[1], "image_size": images.x.shape[-1], **cfg.model_kwargs}
        return AutoencoderProblem((images.x,), cfg.model, model_kwargs, cfg.eval_examples, device)
    raise ValueError(f"unknown domain {cfg.domain!r}")
