"""Third-party training traces (AdaptDL / Pollux, OSDI 2021) as B_crit and B_simple points (Fig. 4).

Six workloads, each trained by the Pollux authors at 6-8 fixed total batch sizes ``B`` on GPU
clusters; one row per epoch with the validation metric and AdaptDL's gradient statistics. The files
ship in ``adaptdl_traces/`` next to this module, unchanged (``NOTICE.md`` there says from where;
Apache-2.0). From them this module computes, per workload and goal, the two quantities of
McCandlish et al. (2018) that Fig. 4 compares:

* ``S``, ``E = B·S``  optimizer steps and examples a run at batch ``B`` needs to reach a goal.
* ``B_crit = E_min/S_min`` (eq. 2.12) from the fit of ``S(B) = S_min (1 + B_crit/B)`` (eq. 2.11)
  with the project's own :func:`gns_utils.critical_batch.fit_tradeoff`.
* ``B_simple = tr Σ / |G|²`` (eq. 2.9), ``G`` the true gradient and ``Σ`` the per-example gradient
  covariance, read from AdaptDL's statistics (below).

Columns of a trace (``validation-<B>.csv``; one row per epoch)
-------------------------------------------------------------
* ``progress``: AdaScale's scale-invariant step count, ``Σ_t r_t`` with the gain
  ``r_t = (var + sqr)/(var/s + sqr)`` at scale ``s = B/B0`` (``r = 1`` at ``B = B0``, so at the
  smallest batch size ``progress`` equals ``iteration`` within one step). An *epoch* ends when ``progress`` passes another
  ``N/B0`` (dataset size over the initial batch size ``B0``), so a run at larger ``B`` sees the data
  more than once per "epoch" (AdaptDL ``adaptdl/torch/data.py``, osdi21-artifact branch).
* ``iteration``: optimizer steps so far (this module's ``steps``).
* ``metric``: the workload's validation metric at the end of the epoch.
* ``grad_sqr``, ``grad_var``: AdaptDL's running (EMA) estimates of ``|G|²`` and of ``tr Σ / B0``
  during the epoch, in the optimizer's metric (see "Normalisation").

Normalisation: what ``grad_sqr`` and ``grad_var`` estimate
--------------------------------------------------------
AdaptDL (``adaptdl/torch/adascale.py`` on the osdi21-artifact branch; the same formulas in
``gradient_noise_scale.py`` later) takes each step's ``count = replicas × accumulation steps``
micro-batch gradients ``g_i`` (``b = B/count`` examples each) and their mean ``ḡ`` (the batch
gradient), and with ``local = mean_i |g_i|²``, ``total = |ḡ|²`` and ``scale = B/B0``
(``batch_scale = local_bsz·replicas/B0`` times ``accum_count``) forms::

    grad_sqr = (count·total − local) / (count − 1)          E = |G|²
    grad_var = (local − total)·scale / (count − 1)          E = tr Σ · scale / B = tr Σ / B0

(from ``E|g_b|² = |G|² + tr Σ/b``), each smoothed by its own bias-corrected EMA with decay
``0.999^scale`` (0.997 for YOLOv3 and DeepSpeech2). So ``grad_var`` is the gradient variance of a
batch of the *initial* size ``B0`` whatever ``B`` the run used, and

    B_simple = tr Σ / |G|² = B0 · grad_var / grad_sqr                       (eq. 2.9)

which is exactly Pollux's "PGNS = grad_var / grad_sqr × init_batch_size" (``simulator/goodput.py``),
with ``B0`` = the smallest traced batch size (``simulator/applications.py``: ``init_batch_size or
min(self.validation)``; the traces agree: ``progress`` equals ``iteration`` only at that ``B``).
The traces were taken at a fixed ``B`` (``TARGET_BATCH_SIZE`` in ``adaptdl/torch/data.py``), which
forces at least one accumulation step on a single replica, so ``count ≥ 2`` always: the unbiased
estimator above, never AdaptDL's differenced one for ``count = 1``.
``tests/test_traces.py`` re-implements these formulas on synthetic per-example gradients with a
known ``G`` and ``Σ`` and checks that :func:`noise_scale` recovers ``tr Σ/|G|²``.

For Adam-trained workloads AdaptDL divides every gradient elementwise by ``√v̂ + ε`` (Adam's
bias-corrected second-moment estimate; from Adam's sixth step on) before squaring, so their ``B_simple`` is the noise scale in
Adam's preconditioned metric, ``tr(PΣP)/|PG|²`` with ``P = diag(1/(√v̂ + ε))`` (the paper's
remark that with Adam the relevant noise lives in the preconditioned metric).

Learning rates: not tuned per batch size
----------------------------------------
Each trace uses AdaptDL's scaling rule from a rate tuned at ``B0``: AdaScale
(``lr = r·lr0``, ``r`` the gain above) for SGD, ``lr = √(B/B0)·lr0`` for Adam
(``AdaScale.step``: ``factor = scale ** 0.5 if self._is_adam else (var + sqr) / (var / scale + sqr)``),
and the workload's own schedule runs on progress-epochs (CIFAR-10: ×0.0133 exponentially over 100;
ImageNet: ÷10 every 30; YOLOv3: 2 warm-up epochs then cosine; DeepSpeech2: ÷1.02 per epoch; BERT:
linear warm-up and decay; NeuMF: ×0.2 at epochs 4, 7, 10). So a ``B_crit`` here is the critical
batch size *of that rule*, not of the paper's per-batch-size tuned constant rates (App. A.3);
expect it no larger than a tuned one. And a decaying rate lowers the temperature ``ε/B``, which by
App. C raises ``B_simple`` late in training (e.g. CIFAR-10's last goal).

Where the noise scale is read
-----------------------------
The paper sets ``B_crit`` of a goal beside the noise scale *where that goal is reached*, measured
on a well-tuned run at small ``B``. Here that run is the one at ``B0``: its rate was tuned by the
benchmark's authors, and every other run is scaled from it. ``noise_scale`` is its ``B_simple`` in
the epoch during which it reaches the goal; ``noise_scale_low/high`` are the smallest and largest
``B_simple`` over all batch sizes, each read in the epoch where that run reaches the goal. Under
AdaScale larger batches train at a lower temperature (``ε/B``) and, as App. C predicts, show a
larger noise scale, so the range is mostly systematic, not a statistical error.

What the SGD points test: under AdaScale a run at ``B`` takes ``dS = dP·B0(ℬ + B)/(B(ℬ + B0))``
steps per unit of ``progress`` ``dP`` (``1/r``), which sums to ``S_min (1 + B_crit/B)`` (eq. 2.11)
with ``B_crit`` a ``dP/(ℬ + B0)``-weighted average of ``ℬ`` (App. D's average) *if* every run reached
the goal at the same progress with the same ``ℬ``. So these points test AdaScale's scale invariance
(is the metric at equal progress the same at every ``B``?) as much as the paper's relation. That
average is not tabled: the first epoch's statistics in the traces are dominated by the start-up
transient (``grad_sqr`` 5 to 10⁶ times its later values), and the average weights small-``ℬ`` epochs
most.

Goals (:func:`target_levels`), fixed before looking at any fit
-------------------------------------------------------------
:data:`N_TARGETS` levels evenly spaced in the metric from ``lo`` (exclusive), the best value any run
has at its first epoch end, to ``hi`` (inclusive), the worst over runs of each run's best value:
every run reaches every level, the last only just, and none before its first epoch end (whose
steps would only be an upper bound). Steps to a level are linearly interpolated between the two
epoch ends around the first crossing of the raw (unsmoothed) metric (:func:`steps_to_targets`).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from gns_utils.critical_batch import fit_tradeoff, steps_to_target

__all__ = [
    "N_TARGETS",
    "RESULT_COLUMNS",
    "TRACES_DIR",
    "WORKLOADS",
    "Workload",
    "batch_sizes",
    "crossing_rows",
    "format_table",
    "infer_direction",
    "init_batch_size",
    "load_trace",
    "noise_scale",
    "noise_scale_at_targets",
    "steps_to_targets",
    "target_levels",
    "trace_files",
    "trace_results",
    "workload_results",
]

#: The shipped copies of the traces (``<workload>/validation-<B>.csv``), with ``LICENSE`` and ``NOTICE.md``.
TRACES_DIR: Path = Path(__file__).resolve().parent / "adaptdl_traces"

#: Number of goals per workload (:func:`target_levels`). Fixed in advance, not tuned.
N_TARGETS: int = 5

Direction = Literal["above", "below"]


@dataclass(frozen=True)
class Workload:
    """What a trace is: model, data, metric and optimizer (from the AdaptDL benchmark sources).

    Attributes:
        name: folder name of the trace (``cifar10`` …).
        display_name: name for readers, ``Model (data)``.
        metric: the validation metric in the ``metric`` column, with its units.
        higher_is_better: True for accuracy / F1 / hit rate, False for loss / WER
            (checked against the data by :func:`infer_direction` in the tests).
        optimizer: ``"SGD"`` (with momentum) or ``"Adam"`` (Adam / AdamW).
        lr_rule: AdaptDL's batch-size scaling of the learning rate: ``"AdaScale"`` (SGD) or
            ``"square-root"`` (Adam).
        preconditioned: True when AdaptDL measured ``grad_sqr`` / ``grad_var`` on gradients divided
            by Adam's ``√v̂ + ε`` (its ``_is_adam`` branch: optimizer class ``Adam`` or ``AdamW``).
        units: what one example of ``B`` is.
        source: the training script in petuum/adaptdl (``benchmark/models/…``) this was read from.
    """

    name: str
    display_name: str
    metric: str
    higher_is_better: bool
    optimizer: str
    lr_rule: str
    preconditioned: bool
    units: str
    source: str

    @property
    def direction(self) -> Direction:
        """``"above"`` when a goal is reached from below (higher is better), else ``"below"``."""
        return "above" if self.higher_is_better else "below"


#: The six workloads. Optimizers, metrics and ``B0`` from the AdaptDL benchmark scripts
#: (osdi21-artifact branch, commit de25dcc9 as stored); ``B0`` (the scripts' default or job-file batch
#: size) equals the smallest traced batch size for all six. "better" is the metric's direction, checked
#: against the data (the sign of last − first epoch) by ``tests/test_traces.py``.
#:
#: ============  ==========================  ===========================  ======  =====  ===========  =====
#: name          display name                metric                       better  optim  lr rule      prec.
#: ============  ==========================  ===========================  ======  =====  ===========  =====
#: cifar10       ResNet-18 (CIFAR-10)        validation accuracy          higher  SGD    AdaScale     no
#: imagenet      ResNet-50 (ImageNet)        validation top-1 accuracy    higher  SGD    AdaScale     no
#: yolov3        YOLOv3 (PASCAL VOC)         validation loss              lower   SGD    AdaScale     no
#: deepspeech2   DeepSpeech2 (CMU-ARCTIC)    validation WER (%)           lower   SGD    AdaScale     no
#: bert          BERT-base (SQuAD v1.1)      validation F1 (%)            higher  Adam   square-root  yes
#: ncf           NeuMF (MovieLens-1M)        validation hit rate HR@10    higher  Adam   square-root  yes
#: ============  ==========================  ===========================  ======  =====  ===========  =====
WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("cifar10", "ResNet-18 (CIFAR-10)", "validation accuracy", True, "SGD", "AdaScale", False,
                 "images", "benchmark/models/cifar10/main.py: optim.SGD(lr=0.08, momentum=0.9, weight_decay=5e-4), B0 = --bs 128"),
        Workload("imagenet", "ResNet-50 (ImageNet)", "validation top-1 accuracy", True, "SGD", "AdaScale", False,
                 "images", "benchmark/models/imagenet/main.py: torch.optim.SGD(momentum=0.9, weight_decay=1e-4); "
                 "adaptdljob.yaml: --arch=resnet50 --batch-size=200 --lr=0.08"),
        Workload("yolov3", "YOLOv3 (PASCAL VOC)", "validation loss", False, "SGD", "AdaScale", False,
                 "images", "benchmark/models/yolov3/train.py: optim.SGD(lr=1e-4, momentum=0.9, weight_decay=5e-4), B0 = 8; "
                 "the traced metric is valid()'s loss (mAP is computed only after training)"),
        Workload("deepspeech2", "DeepSpeech2 (CMU-ARCTIC)", "validation WER (%)", False, "SGD", "AdaScale", False,
                 "utterances", "benchmark/models/deepspeech2/train.py: torch.optim.SGD; adaptdljob.yaml: --lr=0.12 "
                 "--momentum=0.95 --batch-size=20, voxforge_cmu_us_* manifests"),
        Workload("bert", "BERT-base (SQuAD v1.1)", "validation F1 (%)", True, "Adam", "square-root", True,
                 "sequences", "benchmark/models/bert/run_squad.py: transformers AdamW; adaptdljob.yaml: bert-base-uncased, "
                 "--learning_rate=3e-5 --per_gpu_train_batch_size=12, SQuAD v1.1"),
        Workload("ncf", "NeuMF (MovieLens-1M)", "validation hit rate HR@10", True, "Adam", "square-root", True,
                 "user-item pairs", "benchmark/models/ncf/main.py: optim.Adam(lr=1e-3) as config.model = 'NeuMF-end' "
                 "(ml-1m), B0 = --batch_size 256"),
    )
}


# --------------------------------------------------------------------------- reading
def trace_files(workload: str, traces_dir: str | Path | None = None) -> dict[int, Path]:
    """The ``validation-<B>.csv`` files of a workload, by batch size ``B`` (ascending).

    Args:
        workload: a key of :data:`WORKLOADS`.
        traces_dir: folder holding ``<workload>/``; default :data:`TRACES_DIR` (the shipped copies).

    Raises:
        KeyError: unknown workload.
        FileNotFoundError: no trace files found.
    """
    if workload not in WORKLOADS:
        raise KeyError(f"unknown workload {workload!r}; choose one of {sorted(WORKLOADS)}")
    folder = Path(traces_dir) if traces_dir is not None else TRACES_DIR
    files = {}
    for path in (folder / workload).glob("validation-*.csv"):
        match = re.fullmatch(r"validation-(\d+)\.csv", path.name)
        if match:
            files[int(match.group(1))] = path
    if not files:
        raise FileNotFoundError(f"no validation-*.csv files for {workload!r} in {folder / workload}")
    return dict(sorted(files.items()))


def batch_sizes(workload: str, traces_dir: str | Path | None = None) -> list[int]:
    """The traced total batch sizes ``B`` of a workload, ascending."""
    return list(trace_files(workload, traces_dir))


def init_batch_size(workload: str, traces_dir: str | Path | None = None) -> int:
    """``B0``: the batch size AdaptDL's ``grad_var`` is normalised to (the smallest traced ``B``)."""
    return min(trace_files(workload, traces_dir))


def load_trace(workload: str, traces_dir: str | Path | None = None) -> pd.DataFrame:
    """A workload's traces as one tidy frame.

    Returns:
        One row per (batch size, epoch): ``batch_size`` (B), ``epoch`` (epochs completed, from 1),
        ``steps`` (optimizer steps so far, the file's ``iteration``), ``progress``, ``metric``,
        ``grad_sqr``, ``grad_var``; sorted by batch size then epoch.
    """
    frames = []
    for b, path in trace_files(workload, traces_dir).items():
        raw = pd.read_csv(path)
        frames.append(pd.DataFrame({
            "batch_size": b,
            "epoch": np.arange(1, len(raw) + 1),
            "steps": raw["iteration"].astype(float),
            "progress": raw["progress"].astype(float),
            "metric": raw["metric"].astype(float),
            "grad_sqr": raw["grad_sqr"].astype(float),
            "grad_var": raw["grad_var"].astype(float),
        }))
    return pd.concat(frames, ignore_index=True)


def infer_direction(trace: pd.DataFrame) -> Direction:
    """Whether the metric rises (``"above"``) or falls (``"below"``) in training, from the data.

    The sign of ``last − first`` epoch's metric, by majority over batch sizes.
    """
    change = trace.groupby("batch_size")["metric"].agg(lambda m: m.iloc[-1] - m.iloc[0])
    return "above" if (change > 0).sum() > (change < 0).sum() else "below"


# --------------------------------------------------------------------------- noise scale
def noise_scale(grad_sqr: float | np.ndarray, grad_var: float | np.ndarray,
                init_batch_size: float) -> float | np.ndarray:
    """``B_simple = tr Σ/|G|² = B0 · grad_var / grad_sqr`` (eq. 2.9) from AdaptDL's statistics.

    ``grad_sqr`` estimates ``|G|²`` and ``grad_var`` estimates ``tr Σ / B0`` (the module docstring
    derives both from AdaptDL's estimator), so the per-example noise scale is their ratio times
    ``B0``, in the units of the batch size. NaN where ``grad_sqr ≤ 0`` (an unresolved ``|G|²``).

    Args:
        grad_sqr: AdaptDL's ``|G|²`` estimate(s).
        grad_var: AdaptDL's ``tr Σ / B0`` estimate(s).
        init_batch_size: ``B0``, the batch size ``grad_var`` refers to.
    """
    sqr = np.asarray(grad_sqr, dtype=float)
    var = np.asarray(grad_var, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(sqr > 0, float(init_batch_size) * var / sqr, np.nan)
    return float(out) if out.ndim == 0 else out


# --------------------------------------------------------------------------- goals and steps
def target_levels(trace: pd.DataFrame, direction: Direction, n: int = N_TARGETS) -> np.ndarray:
    """The goals of a workload: ``n`` levels evenly spaced in ``(lo, hi]`` (module docstring).

    ``lo`` is the best metric any run has at its first epoch end, ``hi`` the worst over runs of each
    run's best metric. Every run therefore crosses every level after its first epoch end, and the run
    whose best is ``hi`` reaches the last level exactly (``hi`` is returned unrounded).

    Args:
        trace: :func:`load_trace` output.
        direction: ``"above"`` (higher is better) or ``"below"``.
        n: number of levels.

    Raises:
        ValueError: ``n < 1``, a bad direction, or no room between ``lo`` and ``hi``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n!r}")
    if direction not in ("above", "below"):
        raise ValueError(f"direction must be 'above' or 'below', got {direction!r}")
    runs = trace.sort_values(["batch_size", "epoch"]).groupby("batch_size")["metric"]
    first = runs.first()
    if direction == "above":
        lo, hi = float(first.max()), float(runs.max().min())
    else:
        lo, hi = float(first.min()), float(runs.min().max())
    if not (hi > lo if direction == "above" else hi < lo):
        raise ValueError(f"no goal range: best first-epoch metric {lo:g}, worst best metric {hi:g}")
    return np.linspace(lo, hi, n + 1)[1:]


def crossing_rows(metric: np.ndarray, targets: np.ndarray, direction: Direction) -> np.ndarray:
    """Index of the first epoch whose metric reaches each target (``-1`` when never reached).

    The epoch *during* which the target is crossed: its gradient statistics are the ones in force
    where the goal is reached.
    """
    m = np.asarray(metric, dtype=float)
    t = np.atleast_1d(np.asarray(targets, dtype=float))
    reached = m[None, :] >= t[:, None] if direction == "above" else m[None, :] <= t[:, None]
    return np.where(reached.any(axis=1), reached.argmax(axis=1), -1)


def steps_to_targets(trace: pd.DataFrame, targets: np.ndarray, direction: Direction) -> pd.DataFrame:
    """Steps ``S`` to each target per batch size, linearly interpolated between epoch ends.

    Uses :func:`gns_utils.critical_batch.steps_to_target` without smoothing (``smoothing=0``): the
    crossing is interpolated between the last epoch end that had not reached the target and the first
    that has; a target already met at the first epoch end gives that epoch's steps (an upper bound;
    :func:`target_levels` never asks for one); NaN when never reached.

    Returns:
        One row per (target, batch size): ``target_index`` (from 1), ``target``, ``batch_size``,
        ``steps``, ``examples`` (``B·S``), ``row`` (:func:`crossing_rows`; -1 when not reached).
    """
    t = np.atleast_1d(np.asarray(targets, dtype=float))
    rows = []
    for b, run in trace.sort_values(["batch_size", "epoch"]).groupby("batch_size"):
        s = steps_to_target(run["steps"].to_numpy(), run["metric"].to_numpy(), t, smoothing=0.0,
                            direction=direction)
        r = crossing_rows(run["metric"].to_numpy(), t, direction)
        for k in range(t.size):
            rows.append(dict(target_index=k + 1, target=t[k], batch_size=int(b), steps=float(s[k]),
                             examples=float(b) * float(s[k]), row=int(r[k])))
    return pd.DataFrame(rows).sort_values(["target_index", "batch_size"], ignore_index=True)


def noise_scale_at_targets(trace: pd.DataFrame, steps: pd.DataFrame, init_batch: int) -> pd.DataFrame:
    """``B_simple`` (eq. 2.9) of every run in the epoch where it reaches each target.

    Args:
        trace: :func:`load_trace` output.
        steps: :func:`steps_to_targets` output for the same trace.
        init_batch: ``B0``.

    Returns:
        ``steps`` with a ``noise_scale`` column (NaN where the target is not reached).
    """
    out = steps.copy()
    values = []
    runs = {b: run.sort_values("epoch") for b, run in trace.groupby("batch_size")}
    for b, row in zip(out["batch_size"], out["row"]):
        if row < 0:
            values.append(np.nan)
            continue
        epoch = runs[b].iloc[row]
        values.append(noise_scale(epoch["grad_sqr"], epoch["grad_var"], init_batch))
    out["noise_scale"] = values
    return out


# --------------------------------------------------------------------------- results
#: Columns of :func:`trace_results`.
RESULT_COLUMNS: tuple[str, ...] = (
    "workload", "display_name", "metric", "higher_is_better", "target_index", "target",
    "b_crit", "b_crit_stderr", "bound", "s_min", "e_min", "r2",
    "noise_scale", "noise_scale_low", "noise_scale_high", "noise_scale_epoch",
    "optimizer", "lr_rule", "preconditioned", "units",
    "n_batch_sizes", "batch_size_min", "batch_size_max", "init_batch_size",
)


def workload_results(workload: str, n_targets: int = N_TARGETS,
                     traces_dir: str | Path | None = None) -> pd.DataFrame:
    """One row per goal of one workload: the (2.11) fit and the noise scale there.

    ``b_crit``, ``b_crit_stderr``, ``s_min``, ``e_min``, ``r2`` and ``bound`` come from
    :func:`gns_utils.critical_batch.fit_tradeoff` on ``(B, S)`` (``bound`` ``"lower"``: ``B_crit`` ≥
    the largest batch size, given as ``b_crit``; ``"upper"``: ≤ the smallest; ``"failed"``: the steps
    contradict (2.11)). Noise-scale columns as in the module docstring.

    Returns:
        A frame with :data:`RESULT_COLUMNS`.
    """
    spec = WORKLOADS[workload]
    trace = load_trace(workload, traces_dir)
    b0 = init_batch_size(workload, traces_dir)
    targets = target_levels(trace, spec.direction, n_targets)
    points = noise_scale_at_targets(trace, steps_to_targets(trace, targets, spec.direction), b0)
    rows = []
    for k, group in points.groupby("target_index"):
        ok = group[np.isfinite(group["steps"])]
        fit_cols = dict(b_crit=np.nan, b_crit_stderr=np.nan, bound="failed", s_min=np.nan, e_min=np.nan, r2=np.nan)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # bounds are reported in the `bound` column
                fit = fit_tradeoff(ok["batch_size"], ok["steps"])
            fit_cols = dict(b_crit=fit.b_crit, b_crit_stderr=fit.b_crit_stderr, bound=fit.bound,
                            s_min=fit.s_min, e_min=fit.e_min, r2=fit.r2)
        except ValueError:
            pass
        ref = ok[ok["batch_size"] == b0]
        ns = ok["noise_scale"].to_numpy(dtype=float)
        rows.append(dict(
            workload=workload, display_name=spec.display_name, metric=spec.metric,
            higher_is_better=spec.higher_is_better, target_index=int(k), target=float(group["target"].iloc[0]),
            **fit_cols,
            noise_scale=float(ref["noise_scale"].iloc[0]) if len(ref) else np.nan,
            noise_scale_low=float(np.nanmin(ns)) if np.isfinite(ns).any() else np.nan,
            noise_scale_high=float(np.nanmax(ns)) if np.isfinite(ns).any() else np.nan,
            noise_scale_epoch=int(ref["row"].iloc[0]) + 1 if len(ref) else -1,
            optimizer=spec.optimizer, lr_rule=spec.lr_rule, preconditioned=spec.preconditioned, units=spec.units,
            n_batch_sizes=int(len(ok)), batch_size_min=int(ok["batch_size"].min()),
            batch_size_max=int(ok["batch_size"].max()), init_batch_size=int(b0),
        ))
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def trace_results(workloads: list[str] | None = None, n_targets: int = N_TARGETS,
                  traces_dir: str | Path | None = None) -> pd.DataFrame:
    """:func:`workload_results` for several workloads (default: all of :data:`WORKLOADS`), stacked."""
    names = list(WORKLOADS) if workloads is None else list(workloads)
    return pd.concat([workload_results(w, n_targets, traces_dir) for w in names], ignore_index=True)


def _sig(x: float, digits: int = 3) -> str:
    if not np.isfinite(x):
        return "–"
    return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:,.0f}"


def format_table(results: pd.DataFrame) -> str:
    """A Markdown table of :func:`trace_results`: B_crit ± s.e., bound, noise scales."""
    lines = ["| workload | goal | B_crit ± s.e. | bound | B_simple at goal, B0 run [low – high over B] | optimizer |",
             "|---|---|---|---|---|---|"]
    for r in results.itertuples(index=False):
        bc = _sig(r.b_crit) + ("" if not np.isfinite(r.b_crit_stderr) else f" ± {_sig(r.b_crit_stderr, 2)}")
        if r.bound == "lower":
            bc = f"≥ {_sig(r.b_crit)}"
        elif r.bound == "upper":
            bc = f"≤ {_sig(r.b_crit)}"
        goal = f"{r.metric} {'≥' if r.higher_is_better else '≤'} {r.target:.4g}"
        ns = f"{_sig(r.noise_scale)} [{_sig(r.noise_scale_low)} – {_sig(r.noise_scale_high)}]"
        opt = f"{r.optimizer}{' (precond.)' if r.preconditioned else ''}, {r.lr_rule}"
        lines.append(f"| {r.display_name} | {goal} | {bc} | {r.bound} | {ns} | {opt} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m gns_utils.experiments.traces
    print(format_table(trace_results()))
