"""Noisy linear regression: the calibration task, where every quantity of the theory is exact.

Data ``x ~ N(0, H)`` with ``H = diag(λ)``, ``λ_i = i^(−power)`` (so ``λ_1 = 1``), targets
``y = xᵀw* + σξ`` with ``ξ ~ N(0, 1)`` and ``w*_i ~ N(0, 1)`` drawn once from a data seed;
per-example loss ``½(xᵀw − y)²``; model ``ŷ = wᵀx`` (a bias-free ``nn.Linear(d, 1)``)
started at ``w = 0``. With ``u = w − w*``: ``L = ½ uᵀHu + σ²/2``, ``G = Hu`` and
``Σ = Huuᵀ H + (uᵀHu + σ²) H``, so ``|G|²``, ``tr Σ``, B_simple (2.9), B_noise (2.8), the
App. D prediction of B_crit and the exact expected loss of SGD come from
:mod:`gns_utils.theory` (the "noisy linear regression" section).

The examples are an infinite stream: every batch is fresh, so there are no epochs and no
over-fitting, and the training loss is the population loss, evaluated exactly from the
weights.

The loss of a batch of ``n`` examples, ``(1/2n) Σ (xᵀw − y)²``, depends on the examples only
through ``Σ xxᵀ``, ``Σ xy`` and ``Σ y²``. With ``statistics=True`` the training stream draws
these sums directly, from their exact joint distribution (:func:`sufficient_statistics`:
Bartlett's decomposition of the Wishart ``Σ xxᵀ``), at a cost independent of ``n``; the batch's
loss and gradient are then the same random variables as with ``n`` drawn examples. That makes
batches of millions of examples cheap, which the calibration's goals nearest the floor need
(B_crit up to ~10⁵·⁶). The batch holds one set of sums per micro-batch, so B_simple is measured
from micro-batches (``noise_method="micro_batch"``): per-example gradients do not exist there.

The defaults (:data:`DEFAULTS`: ``d = 16``, ``λ_i = 1/i``, ``σ² = 1``, data seed 6) start at
``L = 3.522`` (floor 0.5) with ``B_noise = 7.3``, ``B_simple = 9.6``. The goals 0.63, 0.55,
0.523, 0.507, 0.502, 0.5006 then have the App. D prediction ``B_crit ≈ 20, 47, 101, 302,
966, 2921`` and the tuned constant-rate ``B_crit ≈ 37, 74, 142, 427, 1455, 5007`` (batch
sizes 8 … 16384), with ``E_min ≤ 9·10⁴`` examples. ``B_noise`` at ``w = 0`` depends mostly on
``w*_1`` (the top direction): data seed 6 gives a typical draw (``w*_1 = 1.05``; seed 0 has
``w*_1 = 0.13`` and ``B_noise = 79``).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn

from gns_utils.experiments.models import build_model
from gns_utils.theory import (
    NoisyLinearConstantLrBCrit,
    NoisyLinearPrediction,
    NoisyLinearScales,
    noisy_linear_b_crit_prediction,
    noisy_linear_constant_lr_b_crit,
    noisy_linear_noise_scales,
    noisy_linear_steps_to_goal,
    noisy_linear_tuned_steps,
)

Batch = tuple[torch.Tensor, torch.Tensor]

#: Defaults of the calibration task (``data_kwargs``); see :class:`NoisyLinearProblem`.
DEFAULTS: dict[str, Any] = {"dim": 16, "power": 1.0, "noise_var": 1.0, "data_seed": 6}
#: Nominal training-set size: the trainer's sampler draws (unused) permutations of this many indices.
NOMINAL_EXAMPLES = 2**20
#: Offset of the seed of the batches :meth:`NoisyLinearProblem.hessian_batch` draws (apart from the training stream).
HESSIAN_SEED_OFFSET = 7919
#: Groups of at most this many examples × ``dim`` are drawn example by example even with ``statistics=True``
#: (Bartlett's decomposition needs ``n ≥ dim``; below a few times ``dim`` drawing the examples is as cheap).
EXPLICIT_FACTOR = 4


def half_squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over examples of ``½(ŷ − y)²`` (outputs ``[n, 1]`` or ``[n]``, targets ``[n]``)."""
    return 0.5 * (outputs.reshape(targets.shape) - targets).square().mean()


def sufficient_statistics(rng: np.random.Generator, scale: np.ndarray, w_star: np.ndarray, sigma: float,
                          n: int) -> tuple[np.ndarray, np.ndarray, float]:
    """``(Σ xxᵀ, Σ xy, Σ y²)`` over ``n`` fresh examples ``x = D z``, ``z ~ N(0, I)``, ``y = xᵀw* + σξ``.

    Drawn from their exact joint distribution without the examples (float64): with ``Z`` the ``n × d``
    matrix of the ``z``, ``ZᵀZ = AAᵀ`` in distribution with ``A`` lower-triangular,
    ``A_ii = √χ²(n − i)`` (``i = 0 … d−1``) and ``A_ij ~ N(0, 1)`` below the diagonal (Bartlett);
    given ``Z``, ``Zᵀξ ~ N(0, ZᵀZ)`` is ``Ag`` with ``g ~ N(0, I_d)``, and ``ξᵀξ`` splits into its part
    in the span of ``Z``, ``(Zᵀξ)ᵀ(ZᵀZ)⁻¹Zᵀξ = gᵀg``, and an independent ``χ²(n − d)``. So
    ``Σ xxᵀ = DAAᵀD``, ``Σ xy = (Σ xxᵀ)w* + σDAg`` and
    ``Σ y² = w*ᵀ(Σ xxᵀ)w* + 2σw*ᵀDAg + σ²(gᵀg + χ²(n − d))``. Groups of at most
    ``EXPLICIT_FACTOR · d`` examples are drawn example by example instead.

    Args:
        rng: the generator.
        scale: ``D``'s diagonal, ``√λ``.
        w_star: ``w*``.
        sigma: ``σ``.
        n: examples.
    """
    d = scale.size
    if n <= EXPLICIT_FACTOR * d:
        x = rng.standard_normal((n, d)) * scale
        y = x @ w_star + sigma * rng.standard_normal(n)
        return x.T @ x, x.T @ y, float(y @ y)
    a = np.tril(rng.standard_normal((d, d)), -1)
    a[np.diag_indices(d)] = np.sqrt(rng.chisquare(n - np.arange(d)))
    da = scale[:, None] * a
    g = rng.standard_normal(d)
    sxx = da @ da.T
    noise = da @ g
    syy = float(w_star @ sxx @ w_star + 2.0 * sigma * (w_star @ noise)
                + sigma**2 * (g @ g + rng.chisquare(n - d)))  # n > EXPLICIT_FACTOR · d here
    return sxx, sxx @ w_star + sigma * noise, syy


def power_law_spectrum(dim: int, power: float) -> np.ndarray:
    """``λ_i = i^(−power)``, ``i = 1 … dim`` (``λ_1 = 1``; ``power = 0`` is isotropic)."""
    return np.arange(1, dim + 1, dtype=float) ** (-float(power))


class NoisyLinearProblem:
    """Noisy linear regression as a problem of :mod:`gns_utils.experiments.problems`.

    Batch units are examples. :meth:`batch` ignores the index values it gets and draws
    ``len(idx)`` fresh examples from the problem's own generator; :meth:`build_model`
    (called at the start of every run) restarts that generator at ``seed``, so a run's
    examples depend on the seed only, not on which runs came before it in a sweep.
    Training batches (:meth:`sample`, :meth:`batch`) are the examples ``(x [n, d], y [n])``, or
    with ``statistics`` their sums ``(Σxxᵀ [k, d, d], Σxy [k, d], Σy² [k], n [k])`` over ``k = groups``
    equal parts (:func:`sufficient_statistics`); :meth:`loss` takes either. The batches of the
    measurements (:meth:`measurement_batch`, :meth:`hessian_batch`) are always examples.

    Args:
        dim: ``d``, the input dimension.
        power: the spectrum ``λ_i = i^(−power)``.
        noise_var: ``σ²``, the label-noise variance (the loss floor is ``σ²/2``).
        data_seed: seed of ``w* ~ N(0, I)``.
        seed: seed of the example stream.
        model: registry name of the model (``"linear"``).
        model_kwargs: keyword arguments over ``in_features = dim``.
        device: where the examples and the model live.
        n_train: the nominal number of examples reported to the trainer's sampler.
        statistics: draw training batches as sufficient statistics (any batch size at the cost of one).
        groups: with ``statistics``, the parts of each batch (the trainer's micro-batches, ``n_micro``).

    Attributes:
        eigenvalues: ``λ`` (numpy, float64), the diagonal of ``H``.
        w_star: ``w*`` (numpy, float64).
        noise_var: ``σ²``.
        u0: ``w_0 − w* = −w*``.
    """

    units_per_example = 1

    def __init__(self, dim: int = DEFAULTS["dim"], power: float = DEFAULTS["power"],
                 noise_var: float = DEFAULTS["noise_var"], data_seed: int = DEFAULTS["data_seed"], seed: int = 0,
                 model: str = "linear", model_kwargs: Mapping[str, Any] | None = None,
                 device: torch.device | str = "cpu", n_train: int = NOMINAL_EXAMPLES, statistics: bool = False,
                 groups: int = 2) -> None:
        if int(dim) != dim or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if not (np.isfinite(power) and power >= 0):
            raise ValueError(f"power must be a finite number >= 0, got {power!r}")
        if not (np.isfinite(noise_var) and noise_var >= 0):
            raise ValueError(f"noise_var must be a finite number >= 0, got {noise_var!r}")
        if not 1 <= n_train <= 2**20:
            raise ValueError(f"n_train must be in [1, 2**20] (the sampler permutes it every epoch), got {n_train}")
        if int(groups) != groups or groups < 1:
            raise ValueError(f"groups must be a positive integer, got {groups!r}")
        self.device = torch.device(device)
        self.dim = int(dim)
        self.power = float(power)
        self.noise_var = float(noise_var)
        self.data_seed = int(data_seed)
        self.seed = int(seed)
        self.n_train = int(n_train)
        self.statistics = bool(statistics)
        self.groups = int(groups)
        self.model_name = model
        self.model_kwargs = dict(model_kwargs or {})
        self.eigenvalues = power_law_spectrum(self.dim, self.power)
        self.w_star = np.random.default_rng(self.data_seed).standard_normal(self.dim)
        self.u0 = -self.w_star
        self._scale = torch.tensor(np.sqrt(self.eigenvalues), dtype=torch.float32, device=self.device)
        self._eye = torch.eye(self.dim, dtype=torch.float32, device=self.device)  # model(I) reads w (loss of sums)
        self._w_star = torch.tensor(self.w_star, dtype=torch.float32, device=self.device)
        self._gen = torch.Generator(device=self.device).manual_seed(self.seed)

    # ----------------------------------------------------------------- problem interface
    def build_model(self, model: str | None = None, model_kwargs: Mapping[str, Any] | None = None) -> nn.Module:
        """A bias-free ``nn.Linear(d, 1)`` at ``w = 0`` (float32, on the device); restarts the example stream."""
        self._gen.manual_seed(self.seed)
        kwargs = {"in_features": self.dim, **self.model_kwargs, **dict(model_kwargs or {})}
        return build_model(model or self.model_name, **kwargs).to(self.device)

    def restart_stream(self, seed: int) -> None:
        """Start the example stream at ``seed``: the trainer calls this with each run's seed, so runs at
        different seeds of one sweep (the seed-to-seed spread) see different examples."""
        self._gen.manual_seed(int(seed))

    def examples(self, n: int, generator: torch.Generator | None = None) -> Batch:
        """``n`` fresh examples ``(x [n, d], y [n])`` from ``generator`` (default: the stream)."""
        gen = self._gen if generator is None else generator
        x = torch.randn(n, self.dim, generator=gen, device=self.device) * self._scale
        noise = torch.randn(n, generator=gen, device=self.device)
        return x, x @ self._w_star + float(np.sqrt(self.noise_var)) * noise

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        """A training batch of ``n`` fresh examples from ``generator`` (default: the stream): the examples
        (:meth:`examples`) or, with ``statistics``, their sufficient statistics in ``groups`` parts."""
        if not self.statistics:
            return self.examples(n, generator)
        gen = self._gen if generator is None else generator
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device)))
        sizes = [m for m in (n // self.groups + (j < n % self.groups) for j in range(self.groups)) if m > 0]
        scale, sigma = np.sqrt(self.eigenvalues), float(np.sqrt(self.noise_var))
        sxx, sxy, syy = zip(*(sufficient_statistics(rng, scale, self.w_star, sigma, m) for m in sizes))
        return tuple(torch.as_tensor(np.array(a), dtype=torch.float64, device=self.device)
                     for a in (sxx, sxy, syy, sizes))

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """A training batch of ``len(idx)`` fresh examples (the index values are ignored: the stream is infinite)."""
        return self.sample(len(idx))

    def units(self, batch: tuple[torch.Tensor, ...]) -> int:
        return int(batch[3].sum()) if len(batch) == 4 else len(batch[0])

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Mean of ``½(xᵀw − y)²`` over the batch's examples, from the examples or from their sums
        (``(1/2n)(wᵀ(Σxxᵀ)w − 2wᵀΣxy + Σy²)``, in float64; ``w`` is read as ``model(I)``, which also
        works for the functional models of a stacked grid)."""
        if len(batch) == 2:
            x, y = batch
            return half_squared_error(model(x), y)
        sxx, sxy, syy, n = batch
        w = model(self._eye).reshape(-1).to(torch.float64)
        total = 0.5 * (torch.einsum("i,kij,j->", w, sxx, w) - 2.0 * (sxy.sum(0) @ w) + syy.sum())
        return (total / n.sum()).to(self._scale.dtype)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """The exact population loss ``½ Σ_i λ_i (w_i − w*_i)² + σ²/2`` of the model's weights."""
        u = self.weights(model) - self.w_star
        return {"loss": float(0.5 * (self.eigenvalues * u) @ u + 0.5 * self.noise_var)}

    def measurement_batch(self, n: int, index: int = 0) -> Batch:
        """``n`` examples from fixed generators apart from the training stream, one per ``index`` (so
        different indices give independent batches, as the checkpoint measurements need)."""
        gen = torch.Generator(device=self.device).manual_seed(self.seed + HESSIAN_SEED_OFFSET + 1000 * int(index))
        return self.examples(n, gen)

    def hessian_batch(self, n: int, index: int = 0) -> tuple[Callable, torch.Tensor, torch.Tensor]:
        """:meth:`measurement_batch` ``index`` with the loss, for the Hessian B_noise (2.8)."""
        x, y = self.measurement_batch(n, index)
        return half_squared_error, x, y

    # ----------------------------------------------------------------- exact quantities
    def weights(self, model: nn.Module) -> np.ndarray:
        """The model's ``w`` as a float64 numpy vector."""
        params = list(model.parameters())
        if len(params) != 1 or params[0].numel() != self.dim:
            raise ValueError("expected a bias-free linear model with exactly dim weights")
        return params[0].detach().to("cpu", torch.float64).numpy().ravel()

    @property
    def initial_loss(self) -> float:
        """``L(w = 0) = ½ w*ᵀHw* + σ²/2``."""
        return float(0.5 * (self.eigenvalues * self.w_star) @ self.w_star + 0.5 * self.noise_var)

    @property
    def loss_floor(self) -> float:
        """``σ²/2``, the loss at ``w = w*``."""
        return 0.5 * self.noise_var

    def noise_scales(self, model: nn.Module | None = None) -> NoisyLinearScales:
        """Exact ``|G|²``, ``tr Σ``, B_simple and B_noise at the model's weights (default: at ``w = 0``)."""
        u = self.u0 if model is None else self.weights(model) - self.w_star
        return noisy_linear_noise_scales(self.eigenvalues, u, self.noise_var)

    def exact_prediction(self, goals: Any) -> NoisyLinearPrediction:
        """The App. D prediction of ``S_min``, ``E_min`` and ``B_crit`` per goal (see
        :func:`gns_utils.theory.noisy_linear_b_crit_prediction`)."""
        return noisy_linear_b_crit_prediction(self.eigenvalues, self.u0, self.noise_var, goals)

    def exact_constant_lr_b_crit(self, goals: Any, batch_sizes: Any, **tuning: Any) -> NoisyLinearConstantLrBCrit:
        """``B_crit`` per goal of perfectly tuned constant-rate SGD over ``batch_sizes`` (see
        :func:`gns_utils.theory.noisy_linear_constant_lr_b_crit`)."""
        return noisy_linear_constant_lr_b_crit(self.eigenvalues, self.u0, self.noise_var, goals, batch_sizes,
                                               **tuning)


def simulate_sgd_losses(eigenvalues: np.ndarray, u0: np.ndarray, noise_var: float, batch_size: int,
                        lrs: Any, replicates: int, log_steps: Any, rng: np.random.Generator) -> np.ndarray:
    """Population loss of constant-rate minibatch SGD on noisy linear regression, simulated in numpy.

    An implementation apart from the torch trainer, many runs at once, for studies that need hundreds
    of seeds (``benchmarks/estimator_bias.py``, the tests of the B_crit estimators). Each replicate draws
    fresh examples ``x ~ N(0, H)``, ``y = xᵀw* + σξ`` every step; the rates of one replicate share its
    examples, as the runs of one seed of a sweep do. The loss is exact from the weights,
    ``½ uᵀHu + σ²/2``.

    Args:
        eigenvalues: ``λ``, the diagonal of ``H``.
        u0: the start ``w_0 − w*``.
        noise_var: ``σ²``.
        batch_size: ``B``.
        lrs: the constant rates ``ε`` (one run per rate and replicate).
        replicates: independent replicates (seeds).
        log_steps: steps (ascending, ``≥ 0``) at which the loss is recorded.
        rng: the generator.

    Returns:
        ``[replicates, len(lrs), len(log_steps)]`` losses (``inf`` once a run diverges).
    """
    lam = np.asarray(eigenvalues, float)
    sq = np.sqrt(lam)
    rates = np.asarray(lrs, float)[None, :, None]
    steps = np.asarray(log_steps, int)
    u = np.tile(np.asarray(u0, float), (replicates, rates.shape[1], 1))
    out = np.full((replicates, rates.shape[1], steps.size), np.inf)
    sigma = float(np.sqrt(noise_var))
    j = 0
    for t in range(int(steps[-1]) + 1):
        if t > 0:
            x = rng.standard_normal((replicates, batch_size, lam.size)) * sq
            xi = rng.standard_normal((replicates, batch_size))
            residual = np.einsum("rbd,rld->rlb", x, u) - sigma * xi[:, None, :]
            with np.errstate(over="ignore", invalid="ignore"):
                u = u - rates * np.einsum("rbd,rlb->rld", x, residual) / batch_size
        while j < steps.size and steps[j] == t:
            with np.errstate(over="ignore", invalid="ignore"):
                loss = 0.5 * (u * u * lam).sum(-1) + 0.5 * noise_var
            out[:, :, j] = np.where(np.isfinite(loss), loss, np.inf)
            j += 1
    return out


def simulate_calibration_sweeps(eigenvalues: np.ndarray, u0: np.ndarray, noise_var: float, goals: Any,
                                batch_sizes: Any, evals_per_decade: int, replicates: int, spacing: float,
                                n_rates: int, rng: np.random.Generator) -> pd.DataFrame:
    """Simulated rate sweeps of noisy linear regression, every run read three ways at every goal.

    Per batch size, ``n_rates`` rates ``spacing`` apart around the exact optimum (the geometric mean of
    the goals' best constant rates, at a random offset of up to half a spacing; unstable rates dropped),
    ``replicates`` seeds each (:func:`simulate_sgd_losses`), logged on the trainer's schedule up to twice
    the slowest run's expected steps. Steps to each goal: the raw first crossing (``raw``), the causal
    EMA of App. A.3 (``ema``) and the centred local-linear reading (``local``), beside the exact
    steps of the expected loss at that rate (``expected``, :func:`gns_utils.theory.noisy_linear_steps_to_goal`).
    Two more read each goal as if it were the sweep's last, from the curve cut where a run would end:
    ``local_stopped`` at the first logged point past the EMA crossing (a run that stops on reaching its
    last goal), ``local_run_out`` at the first logged point past :data:`gns_utils.critical_batch.RUN_OUT`
    × that crossing (what the trainer does).

    Returns:
        one row per (batch_size, lr, seed, goal) with columns ``raw``, ``ema``, ``local``, ``local_stopped``,
        ``local_run_out``, ``expected``.
    """
    from gns_utils.critical_batch import RUN_OUT, steps_to_target
    from gns_utils.experiments.train import eval_schedule

    goals = np.asarray(goals, float)
    tuned = noisy_linear_tuned_steps(eigenvalues, u0, noise_var, batch_sizes, goals)
    rows = []
    for j, b in enumerate(np.asarray(batch_sizes, float)):
        centre = float(np.exp(np.nanmean(np.log(tuned.lrs[:, j]))))
        lrs = centre * spacing ** (np.arange(n_rates) - (n_rates - 1) / 2 + rng.uniform(-0.5, 0.5))
        lrs = lrs[lrs < tuned.stable_lrs[j]]
        expected = np.array([noisy_linear_steps_to_goal(eigenvalues, u0, noise_var, b, lr, goals) for lr in lrs])
        longest = np.nanmax(np.where(np.isfinite(expected), expected, np.nan))
        schedule = eval_schedule(int(min(2.0 * longest + 2, 1e6 / b)), evals_per_decade)
        losses = simulate_sgd_losses(eigenvalues, u0, noise_var, int(b), lrs, replicates, schedule, rng)
        for r in range(replicates):
            for k, lr in enumerate(lrs):
                curve = losses[r, k]
                readings = {"raw": steps_to_target(schedule, curve, goals, smoothing=0.0),
                            "ema": steps_to_target(schedule, curve, goals),
                            "local": steps_to_target(schedule, curve, goals, method="local")}
                for name, factor in (("local_stopped", 1.0), ("local_run_out", RUN_OUT)):
                    ends = np.searchsorted(schedule, factor * readings["ema"]) + 1  # NaN (not reached): the whole curve
                    readings[name] = np.array([steps_to_target(schedule[:n], curve[:n], [goal], method="local")[0]
                                               for n, goal in zip(ends, goals)])
                for g, goal in enumerate(goals):
                    rows.append({"batch_size": b, "lr": lr, "seed": r, "goal": goal, "expected": expected[k, g],
                                 **{name: steps[g] for name, steps in readings.items()}})
    return pd.DataFrame(rows)
