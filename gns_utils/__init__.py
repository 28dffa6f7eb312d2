"""gns_utils: the gradient noise scale and the critical batch size.

A replication of McCandlish, Kaplan, Amodei et al., "An Empirical Model of
Large-Batch Training" (arXiv:1812.06162, 2018).

Symbols used throughout the package (the paper's notation):

* ``G``         true (full-data) gradient of the loss; ``|G|^2`` its squared norm.
* ``Σ``         per-example gradient covariance; ``tr Σ`` its trace (eq. 2.2, 2.3).
* ``H``         Hessian of the loss.
* ``B_simple``  ``tr Σ / |G|^2``, the simple noise scale (eq. 2.9).
* ``B_noise``   ``tr(HΣ) / (GᵀHG)``, the Hessian-weighted noise scale (eq. 2.8).
* ``S_min``, ``E_min``  fewest optimizer steps / examples that reach a goal.
* ``B_crit``    ``E_min / S_min``, the critical batch size (eq. 2.12).

Modules:

* :mod:`gns_utils.noise_scale`    estimators of ``|G|^2``, ``tr Σ``, B_simple, B_noise.
* :mod:`gns_utils.critical_batch` steps-to-target and the (2.11) fit giving B_crit.
* :mod:`gns_utils.theory`         the paper's closed-form predictions (2.6, 2.7, 2.11, App. D).
* :mod:`gns_utils.data`           dataset loaders (offline first).
* :mod:`gns_utils.models`         the paper's networks, scaled by parameters.
* :mod:`gns_utils.config`         frozen run / sweep configurations.
* :mod:`gns_utils.train`          one training run at one (batch size, learning rate).
* :mod:`gns_utils.sweep`          batch-size × learning-rate sweeps, resumable.
* :mod:`gns_utils.results`        the on-disk results store and provenance.
* :mod:`gns_utils.plotting`       figures; every helper takes an ``ax``.
"""

from gns_utils.paths import repo_path
from gns_utils.seed import set_seed

__all__ = ["repo_path", "set_seed"]
__version__ = "0.1.0"
