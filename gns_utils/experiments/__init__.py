"""The experiments harness: everything that reproduces the paper's measurements.

It imports the library (:mod:`gns_utils.noise`, :mod:`gns_utils.critical_batch`,
:mod:`gns_utils.theory`); the library never imports it. Install its dependencies with
``pip install -e ".[experiments]"`` (``make`` does).

From data to the paper's Fig 4, in the order a notebook uses them:

* :mod:`~gns_utils.experiments.paths`      repository, data and results folders.
* :mod:`~gns_utils.experiments.data`       image datasets as in-memory tensors (offline first).
* :mod:`~gns_utils.experiments.text`       text corpora, tokenizers, token sequences.
* :mod:`~gns_utils.experiments.prepare`    ``make data``: installs / unpacks the offline datasets.
* :mod:`~gns_utils.experiments.models`     the paper's networks, scaled by parameters.
* :mod:`~gns_utils.experiments.problems`   data on the device + loss + goal metric, per domain.
* :mod:`~gns_utils.experiments.rl`         A2C on vector environments: rollouts, the loss, frames as units.
* :mod:`~gns_utils.experiments.profiles`   the ``smoke`` / ``cpu`` / ``paper`` presets of every task.
* :mod:`~gns_utils.experiments.config`     frozen, validated experiment and run configurations.
* :mod:`~gns_utils.experiments.train`      one run at one (batch size, learning rate).
* :mod:`~gns_utils.experiments.sweep`      the batch-size × learning-rate sweep, resumable.
* :mod:`~gns_utils.experiments.store`      the on-disk run store: folders, atomic JSON, provenance.
* :mod:`~gns_utils.experiments.report`     from a sweep to a task's B_crit, B_simple, B_noise.
* :mod:`~gns_utils.experiments.pipeline`   one call per task for the notebooks; the Fig 8 width study.
* :mod:`~gns_utils.experiments.plotting`   figure helpers that draw on an ``ax``; ``save_figure``.
* :mod:`~gns_utils.experiments.figures`    one call per figure of a task: draw and save.
* :mod:`~gns_utils.experiments.summary`    the cross-task summary (Fig 4, R²).
* :mod:`~gns_utils.experiments.reproduce`  ``make reproduce``: every notebook, then the comparison
  with the committed reference.
* :mod:`~gns_utils.experiments.tables`     the README's results tables from ``results/``.
"""
