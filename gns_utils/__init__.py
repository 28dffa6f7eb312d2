"""gns_utils: the gradient noise scale and the critical batch size, for your own training.

A replication of McCandlish, Kaplan, Amodei et al., "An Empirical Model of Large-Batch
Training" (arXiv:1812.06162, 2018), and the library that measures its quantities.

Symbols used throughout the package (the paper's notation):

* ``G``         true (full-data) gradient of the loss; ``|G|^2`` its squared norm.
* ``Σ``         per-example gradient covariance; ``tr Σ`` its trace (eq. 2.2, 2.3).
* ``H``         Hessian of the loss.
* ``B_simple``  ``tr Σ / |G|^2``, the simple noise scale (eq. 2.9).
* ``B_noise``   ``tr(HΣ) / (GᵀHG)``, the Hessian-weighted noise scale (eq. 2.8).
* ``S_min``, ``E_min``  fewest optimizer steps / examples that reach a goal.
* ``B_crit``    ``E_min / S_min``, the critical batch size (eq. 2.12).

The library (this namespace; it needs torch, numpy, scipy and pandas only):

* :mod:`gns_utils.noise`           estimators of ``|G|^2``, ``tr Σ``, B_simple (A.1, A.2) and B_noise (2.8).
* :mod:`gns_utils.critical_batch`  steps-to-target and the (2.11) fit giving B_crit with errors.
* :mod:`gns_utils.theory`          the paper's closed forms (2.6, 2.7, 2.11, A.3, App. D).
* :mod:`gns_utils.batch_size`      :class:`BatchSizeController`, a batch size grown with B_simple (D.6).

The experiments harness that reproduces the paper (data, models, sweeps, the run store,
figures) is :mod:`gns_utils.experiments`; it imports the library, never the reverse.
"""

from gns_utils import noise
from gns_utils.batch_size import BatchSizeController
from gns_utils.critical_batch import (TradeoffFit, b_crit_by_goal, best_runs, fit_tradeoff, fit_tradeoff_by_goal,
                                      steps_to_target)
from gns_utils.noise import (CheckpointNoiseScale, CombinedHessianNoiseScale, DataParallelNoiseMonitor,
                             GradientNoiseMonitor, HessianNoiseScale,
                             NoiseEstimate, NoiseScaleEMA, NoiseSource, PerExampleNormMonitor, RatioUncertainty,
                             WindowedNoiseScale, adam_preconditioner, checkpoint_noise_scale,
                             combine_hessian_noise_scales, data_parallel_estimate, hessian_noise_scale,
                             per_example_estimate, ratio_of_means_jackknife, two_batch_estimates, windowed_b_simple)
from gns_utils.theory import (adaptive_batch_size, adaptive_gain, adaptive_speedup, examples_for_batch,
                              fit_optimal_lr, lr_grid, lr_grid_centre, optimal_improvement, optimal_lr,
                              steps_for_batch, training_average)

__all__ = sorted([*noise.__all__, "BatchSizeController", "TradeoffFit", "b_crit_by_goal", "best_runs", "fit_tradeoff",
                  "fit_tradeoff_by_goal", "steps_to_target", "adaptive_batch_size", "adaptive_gain",
                  "adaptive_speedup", "examples_for_batch", "fit_optimal_lr", "lr_grid", "lr_grid_centre",
                  "optimal_improvement", "optimal_lr", "steps_for_batch", "training_average"])
__version__ = "0.2.0"
