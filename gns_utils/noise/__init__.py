"""Estimators of the gradient noise scale: ``|G|^2``, ``tr Σ``, ``B_simple`` and ``B_noise``.

Symbols (McCandlish et al. 2018, section 2 and Appendix A):

* ``g_i``       the gradient of example ``i``'s loss; ``G = E_i g_i`` the true gradient.
* ``Σ``         per-example gradient covariance ``E_i (g_i − G)(g_i − G)ᵀ`` (2.2); a batch of
  ``B`` examples has mean gradient ``G_B`` with covariance ``Σ / B`` (2.3).
* ``H``         the Hessian of the loss.
* ``B_simple``  ``tr Σ / |G|^2`` (2.9);  ``B_noise``  ``tr(HΣ) / (GᵀHG)`` (2.8).

Modules, by what they hold:

* :mod:`~gns_utils.noise.estimate`     the A.2 estimates from squared norms at two batch sizes.
* :mod:`~gns_utils.noise.ema`          their moving averages, B_simple as a ratio of averages, its error,
  and B_simple in a window around a matched point of training.
* :mod:`~gns_utils.noise.monitors`     step-wise sources inside a training loop (micro-batches,
  per-example norms in the step's backward).
* :mod:`~gns_utils.noise.distributed`  the data-parallel source for DDP (a communication hook).
* :mod:`~gns_utils.noise.per_example`  per-example gradients of one batch (torch.func or per layer).
* :mod:`~gns_utils.noise.hessian`      B_noise with Hessian-vector products, and over repeats.
* :mod:`~gns_utils.noise.checkpoint`   B_simple at a checkpoint from micro-batch gradients, in any
  (e.g. Adam's) metric, for any model.
"""

from gns_utils.noise.checkpoint import (
    CheckpointNoiseScale,
    adam_preconditioner,
    checkpoint_noise_scale,
)
from gns_utils.noise.distributed import DataParallelNoiseMonitor
from gns_utils.noise.ema import (
    NoiseScaleEMA,
    RatioUncertainty,
    WindowedNoiseScale,
    ratio_of_means_jackknife,
    windowed_b_simple,
)
from gns_utils.noise.estimate import (
    NoiseEstimate,
    data_parallel_estimate,
    two_batch_estimates,
)
from gns_utils.noise.hessian import (
    CombinedHessianNoiseScale,
    HessianNoiseScale,
    combine_hessian_noise_scales,
    hessian_noise_scale,
)
from gns_utils.noise.monitors import (
    GradientNoiseMonitor,
    NoiseSource,
    PerExampleNormMonitor,
)
from gns_utils.noise.per_example import per_example_estimate

__all__ = [
    "CheckpointNoiseScale",
    "CombinedHessianNoiseScale",
    "DataParallelNoiseMonitor",
    "GradientNoiseMonitor",
    "HessianNoiseScale",
    "NoiseEstimate",
    "NoiseScaleEMA",
    "NoiseSource",
    "PerExampleNormMonitor",
    "RatioUncertainty",
    "adam_preconditioner",
    "checkpoint_noise_scale",
    "combine_hessian_noise_scales",
    "data_parallel_estimate",
    "hessian_noise_scale",
    "per_example_estimate",
    "ratio_of_means_jackknife",
    "two_batch_estimates",
    "WindowedNoiseScale",
    "windowed_b_simple",
]
