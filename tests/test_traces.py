"""The AdaptDL / Pollux traces: AdaptDL's noise statistics against a known G and Σ, steps to a goal,
the goal rule, and the (2.11) fits on the shipped copies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import gns_utils
from gns_utils.experiments import traces

# --------------------------------------------------------------------------- AdaptDL's estimator, as written
SMOOTHING = 0.999  # AdaScale._smoothing


def adaptdl_step(grads: np.ndarray, replicas: int, accum: int, init_batch: int,
                 pinv: np.ndarray | float = 1.0) -> tuple[float, float, float]:
    """One step of AdaptDL's statistics (``adaptdl/torch/adascale.py``, osdi21-artifact branch).

    ``grads``: the ``B`` per-example gradients of the step, ``(B, d)``, split into ``replicas × accum``
    micro-batches of ``atomic = B/(replicas·accum)`` examples (replica r, accumulation step a).
    ``pinv``: Adam's ``√v̂ + ε`` (1 for SGD); AdaptDL divides every gradient by it before squaring.
    """
    b, d = grads.shape
    count = replicas * accum
    atomic = b // count
    micro = (grads / pinv).reshape(count, atomic, d).mean(axis=1)  # each backward pass's local gradient
    # _backward_hook: _local_sqr += |grad/pinv|², all-reduced (summed) over replicas; then "/ count"
    local_sqr = float((micro**2).sum()) / count
    # _final_callback: param.grad (averaged over replicas by DDP, "div_(self._accum_count)") → |ḡ/pinv|²
    total_sqr = float((micro.mean(axis=0) ** 2).sum())
    # parallel.py: batch_scale = current_local_bsz * num_replicas / dataloader.batch_size
    batch_scale = atomic * replicas / init_batch
    scale = batch_scale * accum  # "scale = self._batch_scale * self._accum_count"
    grad_sqr = (count * total_sqr - local_sqr) / (count - 1)
    grad_var = (local_sqr - total_sqr) * scale / (count - 1)
    return grad_sqr, grad_var, scale


def adaptdl_run(rng, g_true, sigma_diag, batch, replicas, accum, init_batch, steps, pinv=1.0):
    """Raw per-step (grad_sqr, grad_var) and AdaptDL's bias-corrected EMA states (``_update_avg``)."""
    raw = np.empty((steps, 2))
    ema = np.empty((steps, 2))
    biased, unbias = np.zeros(2), 0.0
    for t in range(steps):
        grads = g_true + np.sqrt(sigma_diag) * rng.standard_normal((batch, g_true.size))
        sqr, var, scale = adaptdl_step(grads, replicas, accum, init_batch, pinv)
        raw[t] = sqr, var
        theta = SMOOTHING**scale
        biased = theta * biased + (1.0 - theta) * raw[t]
        unbias = theta * unbias + (1.0 - theta)
        ema[t] = biased / unbias
    return raw, ema


def ratio_stderr(x: np.ndarray) -> float:
    """Relative standard error of mean(x[:,1]) / mean(x[:,0]) over i.i.d. rows (delta method)."""
    m = x.mean(axis=0)
    c = np.cov(x.T) / x.shape[0]
    return float(np.sqrt(c[1, 1] / m[1] ** 2 + c[0, 0] / m[0] ** 2 - 2 * c[0, 1] / (m[0] * m[1])))


# Known answer: d = 32, G and a diagonal Σ with tr Σ / |G|² = 40 (per example).
D = 32
_G = np.linspace(0.5, 1.5, D) / np.sqrt(np.sum(np.linspace(0.5, 1.5, D) ** 2))  # |G|² = 1
_SIGMA = 40.0 * np.linspace(0.2, 1.8, D) / np.sum(np.linspace(0.2, 1.8, D))     # tr Σ = 40
B0 = 8


@pytest.mark.parametrize(("batch", "replicas", "accum"), [
    (64, 4, 2),   # several replicas and accumulation: scale = 8
    (32, 1, 4),   # one replica, TARGET_BATCH_SIZE forces accumulation: scale = 4
    (8, 2, 1),    # the initial batch size itself: scale = 1
])
def test_adaptdl_statistics_give_per_example_noise_scale(batch, replicas, accum):
    """grad_sqr → |G|², grad_var → tr Σ/B0, so noise_scale(…, B0) recovers tr Σ/|G|² at every B."""
    rng = np.random.default_rng(batch + 10 * replicas + accum)
    raw, ema = adaptdl_run(rng, _G, _SIGMA, batch, replicas, accum, B0, steps=6000)
    truth = float(_SIGMA.sum() / (_G @ _G))
    rel_se = ratio_stderr(raw)
    assert rel_se < 0.05  # the check below can tell a factor B/B0 apart
    got = traces.noise_scale(raw[:, 0].mean(), raw[:, 1].mean(), B0)
    assert abs(got / truth - 1) < 4 * rel_se
    # the EMA'd states the traces hold (a unit-gain linear filter of the same i.i.d. values; its mean has
    # at most ~1.5x the raw standard error at 6,000 steps of a <= 1,000-step memory)
    got_ema = traces.noise_scale(ema[:, 0].mean(), ema[:, 1].mean(), B0)
    assert abs(got_ema / truth - 1) < 6 * rel_se
    # and the components separately: |G|² and tr Σ / B0 (not tr Σ / B)
    np.testing.assert_allclose(raw[:, 0].mean(), _G @ _G, rtol=6 * rel_se)
    np.testing.assert_allclose(raw[:, 1].mean(), _SIGMA.sum() / B0, rtol=6 * rel_se)
    if batch != B0:  # reading grad_var as tr Σ / B (normalising by the run's own B) is detectably wrong
        naive = traces.noise_scale(raw[:, 0].mean(), raw[:, 1].mean(), batch)
        assert abs(naive / truth - 1) > 10 * rel_se


def test_adaptdl_preconditioned_statistics_give_noise_scale_in_adam_metric():
    """With Adam, gradients are divided by √v̂ + ε: the value is tr(PΣP)/|PG|², P = diag(1/pinv)."""
    rng = np.random.default_rng(7)
    sigma = _SIGMA[::-1]  # noise where the gradient is small, and the preconditioner amplifies it
    pinv = np.linspace(0.3, 3.0, D)
    raw, _ = adaptdl_run(rng, _G, sigma, 64, 8, 1, B0, steps=6000, pinv=pinv)
    truth = float(np.sum(sigma / pinv**2) / np.sum((_G / pinv) ** 2))  # about 150
    plain = float(sigma.sum() / (_G @ _G))  # 40
    rel_se = ratio_stderr(raw)
    got = traces.noise_scale(raw[:, 0].mean(), raw[:, 1].mean(), B0)
    assert abs(got / truth - 1) < 4 * rel_se
    assert abs(truth / plain - 1) > 10 * rel_se  # the two metrics differ here, so the check means something


def test_noise_scale_unresolved_gradient_is_nan():
    np.testing.assert_array_equal(np.isnan(traces.noise_scale([1.0, 0.0, -1.0], [2.0, 2.0, 2.0], 4)),
                                  [False, True, True])
    assert traces.noise_scale(0.5, 2.0, 10) == pytest.approx(40.0)


# --------------------------------------------------------------------------- steps to a goal
def synthetic_trace(metrics: dict[int, list[float]], steps: dict[int, list[float]]) -> pd.DataFrame:
    rows = []
    for b, m in metrics.items():
        for k, (s, v) in enumerate(zip(steps[b], m)):
            rows.append(dict(batch_size=b, epoch=k + 1, steps=float(s), progress=float(s), metric=v,
                             grad_sqr=1.0, grad_var=float(b)))
    return pd.DataFrame(rows)


def test_steps_to_targets_rising_metric_interpolates_exactly():
    trace = synthetic_trace({4: [0.2, 0.5, 0.4, 0.8]}, {4: [100, 200, 300, 400]})
    got = traces.steps_to_targets(trace, np.array([0.35, 0.5, 0.6, 0.9]), "above")
    np.testing.assert_allclose(got["steps"], [150.0, 200.0, 350.0, np.nan])
    np.testing.assert_allclose(got["examples"], [600.0, 800.0, 1400.0, np.nan])
    assert got["row"].tolist() == [1, 1, 3, -1]


def test_steps_to_targets_falling_metric_interpolates_exactly():
    trace = synthetic_trace({2: [90.0, 60.0, 70.0, 30.0], 8: [80.0, 40.0, 35.0, 20.0]},
                            {2: [100, 200, 300, 400], 8: [10, 30, 40, 50]})
    got = traces.steps_to_targets(trace, np.array([75.0, 60.0, 50.0]), "below")
    assert got["batch_size"].tolist() == [2, 8] * 3
    np.testing.assert_allclose(got["steps"], [150.0, 12.5, 200.0, 20.0, 350.0, 25.0])
    assert got["row"].tolist() == [1, 1, 1, 1, 3, 1]


def test_target_levels_rule_on_synthetic_trace():
    # first-epoch metrics 0.2 / 0.3 -> lo = 0.3; best metrics 0.8 / 0.7 -> hi = 0.7
    trace = synthetic_trace({4: [0.2, 0.5, 0.8], 8: [0.3, 0.7, 0.6]}, {4: [10, 20, 30], 8: [5, 10, 15]})
    levels = traces.target_levels(trace, "above", n=4)
    np.testing.assert_allclose(levels, [0.4, 0.5, 0.6, 0.7])
    assert levels[-1] == 0.7  # exactly the worst best value: reached only just
    falling = synthetic_trace({4: [9.0, 5.0, 2.0], 8: [8.0, 3.0, 4.0]}, {4: [10, 20, 30], 8: [5, 10, 15]})
    np.testing.assert_allclose(traces.target_levels(falling, "below", n=5), [7.0, 6.0, 5.0, 4.0, 3.0])
    with pytest.raises(ValueError, match="no goal range"):
        traces.target_levels(synthetic_trace({4: [0.5, 0.4]}, {4: [1, 2]}), "above")


# --------------------------------------------------------------------------- the shipped traces
def test_module_reads_the_shipped_copies():
    package = Path(gns_utils.__file__).resolve().parent
    assert traces.TRACES_DIR.is_relative_to(package)
    for name in traces.WORKLOADS:
        files = traces.trace_files(name)
        assert len(files) >= 6
        assert all(p.resolve().is_relative_to(package) for p in files.values())
    assert (traces.TRACES_DIR / "LICENSE").read_text().lstrip().startswith("Apache License")
    notice = (traces.TRACES_DIR / "NOTICE.md").read_text()
    assert "c793c7089bd307462686339d29707925c461f9a9" in notice and "osdi21-artifact" in notice


@pytest.mark.parametrize("name", list(traces.WORKLOADS))
def test_workload_table_agrees_with_the_data(name):
    spec = traces.WORKLOADS[name]
    trace = traces.load_trace(name)
    assert list(trace.columns[:7]) == ["batch_size", "epoch", "steps", "progress", "metric", "grad_sqr", "grad_var"]
    assert traces.infer_direction(trace) == spec.direction
    # B0 (AdaptDL's normalisation of grad_var) is the smallest traced B: the AdaScale gain
    # r = (var + sqr)/(var/s + sqr) is 1 at every step only at scale s = B/B0 = 1 (progress counts the
    # steps, up to the first one) and above 1 for every larger B
    b0 = traces.init_batch_size(name)
    runs = dict(tuple(trace.groupby("batch_size")))
    assert (runs[b0]["progress"] - runs[b0]["steps"]).between(0, 1).all()
    assert all((runs[b]["progress"] > runs[b]["steps"] + 1).all() for b in runs if b > b0)
    assert spec.preconditioned == (spec.optimizer == "Adam") == (spec.lr_rule == "square-root")


@pytest.mark.parametrize("name", list(traces.WORKLOADS))
def test_every_batch_size_reaches_every_goal(name):
    spec = traces.WORKLOADS[name]
    trace = traces.load_trace(name)
    levels = traces.target_levels(trace, spec.direction)
    assert levels.size == traces.N_TARGETS
    steps = traces.steps_to_targets(trace, levels, spec.direction)
    assert np.isfinite(steps["steps"]).all() and (steps["steps"] > 0).all()
    assert (steps["row"] >= 1).all()  # never at the first epoch end, so every S is interpolated
    best = trace.groupby("batch_size")["metric"].agg("max" if spec.higher_is_better else "min")
    assert levels[-1] in set(best)  # the last goal is some run's best: reached only just


@pytest.fixture(scope="module")
def results() -> pd.DataFrame:
    return traces.trace_results()


def test_trace_results_are_complete_and_positive(results):
    assert list(results.columns) == list(traces.RESULT_COLUMNS)
    assert len(results) == len(traces.WORKLOADS) * traces.N_TARGETS
    for col in ("b_crit", "s_min", "e_min", "noise_scale", "noise_scale_low", "noise_scale_high"):
        assert np.isfinite(results[col]).all() and (results[col] > 0).all(), col
    assert set(results["bound"]) <= {"none", "lower", "upper"}
    fitted = results[results["bound"] == "none"]
    assert np.isfinite(fitted["b_crit_stderr"]).all() and (fitted["b_crit_stderr"] > 0).all()
    assert (fitted["b_crit"].between(fitted["batch_size_min"], fitted["batch_size_max"])).all()
    assert (results["noise_scale_low"] <= results["noise_scale"]).all()
    assert (results["noise_scale"] <= results["noise_scale_high"]).all()
    assert fitted["workload"].nunique() >= 4
    counts = {name: len(traces.batch_sizes(name)) for name in traces.WORKLOADS}
    assert (results["n_batch_sizes"] == results["workload"].map(counts)).all()


def test_format_table_has_a_row_per_goal(results):
    text = traces.format_table(results)
    assert len(text.splitlines()) == 2 + len(results)
    assert all(spec.display_name in text for spec in traces.WORKLOADS.values())
    assert text.count("| lower |") == (results["bound"] == "lower").sum()


def test_the_trace_table_puts_each_workload_on_fig4_at_its_hardest_resolved_goal():
    from gns_utils.experiments.summary import TABLE_COLUMNS, is_resolved, r2_report, summary_table, trace_goal_report, trace_table
    from gns_utils.experiments.traces import trace_results

    results = trace_results()
    table = trace_table(results)
    assert tuple(table.columns) == TABLE_COLUMNS and set(table["source"]) == {"traces"}
    assert len(table) == results["workload"].nunique()
    for row in table.itertuples():
        group = results[results["display_name"] == row.task]
        fitted = group[(group["bound"] == "none") & is_resolved(group["b_crit"], group["b_crit_stderr"])]
        if row.b_crit_kind == "value":  # the hardest resolved goal, its B_simple where the B0 run reaches it
            hardest = fitted.sort_values("target_index").iloc[-1]
            assert row.b_crit == hardest["b_crit"] and row.b_simple == hardest["noise_scale"]
        else:
            assert fitted.empty
    assert (table["b_crit_kind"] == "value").sum() >= 4
    both = summary_table(pd.DataFrame(dict(task=["x"], units=["images"], b_crit=[50.0], b_simple=[70.0])),
                         traces=table)
    report = r2_report(both)
    assert report["traces_n"] == (table["b_crit_kind"] == "value").sum()
    assert report["all_n"] == report["ours_n"] + report["paper_n"] + report["traces_n"]
    goals = trace_goal_report(results)
    assert goals["n_points"] + goals["n_left_out"] == len(results) and goals["n_workloads"] >= 4


def test_fig4_names_each_trace_workload_in_the_legend_with_its_own_marker():
    import matplotlib.pyplot as plt

    from gns_utils.experiments import plotting
    from gns_utils.experiments.summary import summary_table, trace_table
    from gns_utils.experiments.traces import trace_results

    results = trace_results()
    table = summary_table(pd.DataFrame(dict(task=["x"], units=["images"], b_crit=[50.0], b_simple=[70.0])),
                          traces=trace_table(results))
    fig, ax = plt.subplots(figsize=(6, 6))
    plotting.plot_bcrit_vs_bsimple(ax, table)
    legend = [t.get_text().strip() for t in ax.get_legend().get_texts()]
    names = list(pd.unique(results["display_name"]))
    assert all(name in legend for name in names)
    assert not set(names) & {t.get_text() for t in ax.texts}  # named in the legend, not beside the points
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 6))
    points = pd.DataFrame(dict(task=["x", "x"], units=["images"] * 2, goal_index=[0, 1], b_simple_local_median=[10.0, 20.0],
                               b_crit=[12.0, 30.0], b_crit_stderr=[1.0, 2.0]))
    plotting.plot_bcrit_vs_bsimple_by_goal(ax, points, traces=results)
    labels = ax.get_legend_handles_labels()[1]
    fitted = results[(results["bound"] == "none") & (results["b_crit_stderr"] < 0.5 * results["b_crit"])]
    assert sum("AdaptDL" in label for label in labels) == fitted["workload"].nunique() >= 4
    plt.close(fig)
