"""Growing the batch size during training from the measured noise scale (App. D).

The paper's best schedule is ``B(s) = √(r·ℬ(s))`` (D.3, D.6): minimising ``E_tot + r·S_tot``
over schedules, where ``ℬ`` is the noise scale at the current point of training and ``r`` the
exchange rate between steps and examples. ``r = E_min/S_min = B_crit`` (from a fixed-batch sweep,
:func:`gns_utils.fit_tradeoff`) is the balanced choice: it gives ``S_tot/S_min = E_tot/E_min =
1 + √γ`` with ``γ = E[√ℬ]²/E[ℬ] ≤ 1`` (D.5, footnote 17), against 2 for a fixed batch at
``B_crit`` (:func:`gns_utils.adaptive_gain`, :func:`gns_utils.adaptive_speedup`).

:class:`BatchSizeController` turns the rule into decisions a training loop can follow: allowed
sizes ``B_0·ratio^k`` (powers of two by default, or any integer ratio, so that a larger batch is
more micro-batches of gradient accumulation), a hysteresis on the predicted gain, a minimum
interval between changes, and a learning-rate rule applied at each change. Usage, with gradient
accumulation (a larger batch is more micro-batches of 16 examples; ``micro`` yields them)::

    monitor, ema = GradientNoiseMonitor(model), NoiseScaleEMA(decay=0.99, adaptive=4)
    control = BatchSizeController(r=fit.b_crit, batch_size=32, lr=0.05, micro_batch_size=16, min_interval=200)
    for step in range(steps):
        opt.zero_grad()
        for _ in range(control.micro_batches):
            xb, yb = next(micro)
            (loss_fn(model(xb), yb) / control.micro_batches).backward()
            monitor.after_micro_batch(len(xb))
        if (estimate := monitor.after_step()) is not None:
            ema.update(estimate)
        opt.step()
        if ema.count and control.update(ema.b_simple, step):
            for group in opt.param_groups:
                group["lr"] = control.lr
"""

from __future__ import annotations

import math
from typing import Any, Callable

__all__ = ["BatchSizeController"]

LR_EXPONENTS = {"linear": 1.0, "sqrt": 0.5, "none": 0.0}


class BatchSizeController:
    """The batch size ``B(s) = √(r·B_simple(s))`` (D.6) as a schedule of discrete, infrequent changes.

    At each :meth:`update` the controller compares the cost per full-batch step of training
    (App. D: a step at batch ``B`` with noise scale ``ℬ`` is worth ``1/(1 + ℬ/B)`` full-batch
    steps, so ``E + r·S`` per full-batch step is ``c(B) = (B + ℬ)(1 + r/B)``, minimal at
    ``B = √(r·ℬ)``) of the current batch with that of every allowed size, and moves to the best
    one when

    * it lowers ``c`` by at least the fraction ``hysteresis`` (noise in ``B_simple`` then does
      not make the batch size flicker between neighbours), and
    * ``min_interval`` steps have passed since the last change.

    With ``decrease=False`` (default) the batch size only grows, as the noise scale usually does.

    Learning rate at a change from ``B`` to ``B'``: ``lr_rule="linear"`` multiplies it by
    ``B'/B`` (SGD well below ``B_noise``, where (2.6) is linear), ``"sqrt"`` by ``√(B'/B)``
    (a common rule for Adam), ``"none"`` keeps it, and a callable ``f(B) → lr`` sets it (e.g. the
    fitted ``ε_opt(B) = ε_max/(1 + B_noise/B)`` (2.6), :func:`gns_utils.optimal_lr`).

    Args:
        r: the exchange rate ``r > 0`` in batch units (``E_min/S_min = B_crit`` of a fixed-batch sweep
            for the balanced schedule; larger: bigger batches, fewer steps).
        batch_size: the initial batch size ``B_0`` (batch units: examples, tokens, frames).
        lr: the learning rate at ``B_0``.
        ratio: integer ``≥ 2``; allowed sizes are ``B_0·ratio^k``.
        min_batch_size, max_batch_size: limits on the allowed sizes (default: ``B_0`` when
            ``decrease`` is False, else 1; no maximum).
        hysteresis: smallest relative reduction of ``c(B)`` worth a change, in ``[0, 1)``.
        min_interval: fewest steps between two changes (and before the first).
        lr_rule: ``"linear"``, ``"sqrt"``, ``"none"`` or a callable ``f(B) → lr``.
        decrease: allow the batch size to shrink.
        micro_batch_size: batch units per micro-batch of gradient accumulation; the batch size is
            then ``micro_batches × micro_batch_size`` (``B_0`` must be a multiple of it).

    Attributes:
        batch_size: the current batch size.
        lr: the current learning rate.
        target: the last ``√(r·B_simple)`` seen (nan before the first update).
        history: ``(step, batch_size, lr)`` of every change, the initial one first.
    """

    def __init__(self, r: float, batch_size: int, lr: float, *, ratio: int = 2, min_batch_size: int | None = None,
                 max_batch_size: int | None = None, hysteresis: float = 0.02, min_interval: int = 100,
                 lr_rule: str | Callable[[int], float] = "linear", decrease: bool = False,
                 micro_batch_size: int | None = None) -> None:
        if not (isinstance(r, (int, float)) and math.isfinite(r) and r > 0):
            raise ValueError(f"r must be a positive number (B_crit = E_min/S_min of a sweep), got {r!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"lr must be positive, got {lr!r}")
        if isinstance(ratio, bool) or not isinstance(ratio, int) or ratio < 2:
            raise ValueError(f"ratio must be an integer >= 2 (2: powers of two), got {ratio!r}")
        if not 0 <= hysteresis < 1:
            raise ValueError(f"hysteresis must be in [0, 1), got {hysteresis!r}")
        if isinstance(min_interval, bool) or not isinstance(min_interval, int) or min_interval < 0:
            raise ValueError(f"min_interval must be a non-negative integer, got {min_interval!r}")
        if not callable(lr_rule) and lr_rule not in LR_EXPONENTS:
            raise ValueError(f"lr_rule must be one of {sorted(LR_EXPONENTS)} or a callable f(B) -> lr, got {lr_rule!r}")
        if micro_batch_size is not None and (micro_batch_size < 1 or batch_size % micro_batch_size):
            raise ValueError(f"batch_size {batch_size} must be a multiple of micro_batch_size {micro_batch_size}")
        self.r, self.ratio, self.hysteresis, self.min_interval = float(r), ratio, float(hysteresis), min_interval
        self.lr_rule, self.decrease, self.micro_batch_size = lr_rule, decrease, micro_batch_size
        self.min_batch_size = min_batch_size if min_batch_size is not None else (1 if decrease else batch_size)
        self.max_batch_size = max_batch_size
        self._base = batch_size
        self.batch_size, self.lr = batch_size, float(lr)
        self.target = math.nan
        self._last_change = 0
        self.history: list[tuple[int, int, float]] = [(0, batch_size, float(lr))]

    @property
    def micro_batches(self) -> int:
        """Micro-batches per step (1 without ``micro_batch_size``)."""
        return 1 if self.micro_batch_size is None else self.batch_size // self.micro_batch_size

    def allowed(self, up_to: float) -> list[int]:
        """The allowed batch sizes ``B_0·ratio^k`` within the limits (whole numbers of micro-batches), up to the
        first one ``≥ up_to``."""
        b = self._base
        while (b % self.ratio == 0 and b // self.ratio >= self.min_batch_size
               and (self.micro_batch_size is None or (b // self.ratio) % self.micro_batch_size == 0)):
            b //= self.ratio  # the smallest allowed size (a whole number of micro-batches)
        sizes = []
        while self.max_batch_size is None or b <= self.max_batch_size:
            if b >= self.min_batch_size:
                sizes.append(b)
            if b >= up_to:
                break
            b *= self.ratio
        return sizes

    def cost(self, batch_size: float, b_simple: float) -> float:
        """``E + r·S`` per full-batch step at batch ``B`` with noise scale ``ℬ``: ``(B + ℬ)(1 + r/B)`` (App. D)."""
        return (batch_size + b_simple) * (1.0 + self.r / batch_size)

    def update(self, b_simple: float, step: int) -> bool:
        """Take the latest ``B_simple`` (e.g. :attr:`NoiseScaleEMA.b_simple`) at ``step``; True if the batch changed.

        Then read :attr:`batch_size`, :attr:`lr` and :attr:`micro_batches`. A non-finite or
        non-positive ``b_simple`` (too early in training) changes nothing.
        """
        if not (math.isfinite(b_simple) and b_simple > 0):
            return False
        self.target = math.sqrt(self.r * b_simple)
        if step - self._last_change < self.min_interval:
            return False
        candidates = [b for b in self.allowed(max(self.target, self.batch_size))
                      if self.decrease or b > self.batch_size]
        if not candidates:
            return False
        best = min(candidates, key=lambda b: self.cost(b, b_simple))
        current = self.cost(self.batch_size, b_simple)
        if best == self.batch_size or self.cost(best, b_simple) > current * (1.0 - self.hysteresis):
            return False
        self.lr = self._new_lr(best)
        self.batch_size, self._last_change = best, step
        self.history.append((step, best, self.lr))
        return True

    def _new_lr(self, batch_size: int) -> float:
        if callable(self.lr_rule):
            return float(self.lr_rule(batch_size))
        factor: float = (batch_size / self.batch_size) ** LR_EXPONENTS[self.lr_rule]  # a positive base: a float
        return self.lr * factor

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers and lists (loads under ``torch.load(..., weights_only=True)``)."""
        return {"batch_size": self.batch_size, "lr": self.lr, "target": self.target,
                "last_change": self._last_change, "history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (the constructor's settings must be the same)."""
        self.batch_size, self.lr, self.target = int(state["batch_size"]), float(state["lr"]), float(state["target"])
        self._last_change = int(state["last_change"])
        self.history = [(int(s), int(b), float(lr)) for s, b, lr in state["history"]]
