"""Plot helpers on small frames (Agg backend) and the cross-task summary."""

from __future__ import annotations

import json
import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from gns_utils.critical_batch import b_crit_by_goal, best_runs, fit_tradeoff_by_goal  # noqa: E402
from gns_utils.experiments import plotting  # noqa: E402
from gns_utils.experiments.summary import (  # noqa: E402
    PAPER_SOURCE,
    TABLE_COLUMNS,
    load_task_summaries,
    paper_table,
    r2_report,
    r_squared_fit,
    r_squared_identity,
    summary_table,
    write_summary,
)

BATCHES = [8, 32, 128, 512, 2048]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _runs() -> pd.DataFrame:
    rows = []
    for goal, b_crit in [(1.0, 30.0), (0.5, 300.0)]:
        for b in BATCHES:
            for lr, factor in [(0.05, 1.3), (0.1, 1.0), (0.2, 1.1)]:
                rows.append(dict(goal=goal, batch_units=b, lr=lr, steps=100 * (1 + b_crit / b) * factor))
    return pd.DataFrame(rows)


def _metrics() -> pd.DataFrame:
    step = np.arange(1, 51)
    return pd.concat([pd.DataFrame(dict(batch_units=b, step=step, examples=b * step, loss=2 * np.exp(-step * b / 500)))
                      for b in BATCHES])


def test_save_figure_writes_png_and_pdf(tmp_path):
    plotting.set_style()
    fig, ax = plt.subplots()
    plotting.plot_training_curves(ax, _metrics(), x="examples", y="loss")
    png, pdf = plotting.save_figure(fig, tmp_path / "sub" / "curves.png")
    assert (png.name, pdf.name) == ("curves.png", "curves.pdf")
    assert png.read_bytes()[:4] == b"\x89PNG" and pdf.read_bytes()[:4] == b"%PDF"


def test_axes_name_the_units_examples_count():
    fig, axes = plt.subplots(1, 3)
    frame = _metrics().assign(batch_units=lambda d: d["batch_units"] * 20, b_simple=50.0)
    plotting.plot_training_curves(axes[0], frame, x="examples", y="loss", hue="batch_units", units="tokens")
    plotting.plot_noise_scale(axes[1], frame, x="examples", units="tokens")
    plotting.plot_pareto_fronts(axes[2], best_runs(_runs(), batch="batch_units"), {})
    assert axes[0].get_xlabel() == axes[1].get_xlabel() == "tokens processed $E$"
    assert axes[0].get_legend().get_title().get_text() == "batch size $B$ (tokens)"
    assert axes[2].get_xlabel() == "examples $E$"  # no units given
    plt.close(fig)


def test_critical_batch_plots_run(tmp_path):
    best = best_runs(_runs(), batch="batch_units")
    fits = fit_tradeoff_by_goal(best, batch="batch_units")
    table = b_crit_by_goal(best, batch="batch_units")
    fig, axes = plt.subplots(2, 3, figsize=(12, 7))
    plotting.plot_training_curves(axes[0, 0], _metrics(), x="step", y="loss")
    plotting.plot_pareto_fronts(axes[0, 1], best, fits)
    noise = pd.DataFrame(dict(loss=[1.2, 1.0, 0.7, 0.5], b_simple=[40.0, 80.0, 200.0, 500.0]))
    plotting.plot_b_crit_by_goal(axes[0, 2], table, noise=noise)
    assert axes[0, 2].xaxis_inverted()  # loss goals decrease: training runs to the right
    plotting.plot_optimal_lr(axes[1, 0], best[best["goal"] == 1.0], eps_max=0.1, b_noise=20.0)
    assert len(axes[1, 0].lines) == 2  # the eq. 2.6 curve and the B_noise line
    plotting.plot_noise_scale(axes[1, 1], noise.assign(width=1), x="loss", hue="width")
    plotting.plot_noise_scale(axes[1, 2], noise.assign(examples=[1e3, 1e4, 1e5, 1e6]), x="examples")
    assert axes[0, 1].get_xscale() == "log" and axes[0, 1].get_yscale() == "log"
    assert len(axes[0, 1].lines) == 2  # one fitted hyperbola per goal
    png, pdf = plotting.save_figure(fig, tmp_path / "critical")
    assert png.exists() and pdf.exists()


def test_plots_accept_run_metrics_and_fit_lr_curve():
    # A run's metrics.csv has b_simple_ema, not b_simple; B_noise comes from b_noise.csv.
    metrics = pd.DataFrame(dict(step=[10, 20, 40, 80], examples=[320, 640, 1280, 2560],
                                error=[0.6, 0.4, 0.2, 0.1], b_simple_ema=[20.0, np.nan, 90.0, 300.0]))
    table = b_crit_by_goal(best_runs(_runs(), batch="batch_units"), batch="batch_units")
    fig, axes = plt.subplots(1, 3)
    plotting.plot_b_crit_by_goal(axes[0], table, noise=metrics, metric="error",
                                 b_noise=pd.DataFrame(dict(goal=[1.0, 0.5], b_noise=[25.0, 250.0])))
    assert axes[0].get_xlabel() == "goal (training error)" and len(axes[0].lines) >= 1
    plotting.plot_noise_scale(axes[1], metrics, x="examples")
    assert len(axes[1].lines[0].get_xdata()) == 3  # NaN point dropped
    lrs = pd.DataFrame(dict(goal=1.0, batch_units=[8, 32, 128, 512], lr=[0.01, 0.035, 0.08, 0.1]))
    plotting.plot_optimal_lr(axes[2], pd.concat([lrs, lrs.assign(goal=2.0, lr=1.0)]), goal=1.0)
    assert len(axes[2].collections[0].get_offsets()) == 4 and len(axes[2].lines) == 2


def test_b_crit_by_goal_plot_draws_bounds():
    table = pd.DataFrame(dict(goal=[1.0, 0.5, 0.2, 0.1], b_crit=[8.0, 100.0, 16384.0, np.nan],
                              ci_low=[np.nan, 80.0, np.nan, np.nan], ci_high=[np.nan, 130.0, np.nan, np.nan],
                              bound=["upper", "none", "lower", "insufficient"]))
    fig, ax = plt.subplots()
    plotting.plot_b_crit_by_goal(ax, table)
    labels = ax.get_legend_handles_labels()[1]
    assert any("upper bound" in s for s in labels) and any("lower bound" in s for s in labels)
    assert len(ax.texts) == 2  # one arrow per bound


def _summary_frame() -> pd.DataFrame:
    measured = pd.DataFrame(dict(task=["mnist1d", "tiny-lm", "bounded"], units=["images", "tokens", "images"],
                                 b_crit=[30.0, 900.0, 4096.0], b_crit_stderr=[5.0, 100.0, np.nan],
                                 b_simple=[60.0, 700.0, 2000.0], b_crit_bound=["none", "none", "lower"],
                                 b_crit_start=[5.0, 100.0, np.nan], b_simple_start=[10.0, 80.0, 300.0]))
    return summary_table(measured, paper_table())


@pytest.mark.parametrize("start", [False, True])
def test_bcrit_vs_bsimple_plot(start, tmp_path):
    fig, ax = plt.subplots(figsize=(6, 6))
    plotting.plot_bcrit_vs_bsimple(ax, _summary_frame(), start=start)
    lo, hi = ax.get_xlim()
    assert lo <= 1.0 and hi >= 1e8 and ax.get_xscale() == "log"
    labels = ax.get_legend_handles_labels()[1] + [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("tokens" in s for s in labels) and any("frames" in s for s in labels)
    texts = [t.get_text() for t in ax.texts]
    assert "MNIST" in texts  # paper tasks: named beside their point
    assert "mnist1d" in labels and "mnist1d" not in texts  # ours: named (display names) in the legend
    fig.canvas.draw()
    assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1  # the legend is outside the data
    boxes = [t.get_window_extent() for t in ax.texts]
    overlaps = [(ax.texts[i].get_text(), ax.texts[j].get_text()) for i in range(len(boxes))
                for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]
    assert not overlaps, overlaps
    assert ("start of training" in ax.get_xlabel()) == start
    plotting.save_figure(fig, tmp_path / f"fig4_{start}")


# --------------------------------------------------------------------------- summary
def test_paper_table_contents():
    paper = paper_table()
    assert len(paper) == 10 and (paper["source"] == PAPER_SOURCE).all()
    row = paper.set_index("task")
    assert row.loc["MNIST", ["b_crit_start", "b_crit", "b_simple_start", "b_simple"]].tolist() == [20, 200, 50, 900]
    assert row.loc["Dota 5v5", "b_crit_kind"] == "lower_bound" and row.loc["Dota 5v5", "b_crit"] == 8e6
    assert np.isnan(row.loc["Dota 5v5", "b_crit_start"])
    assert row.loc["Atari", "b_crit"] == pytest.approx(np.sqrt(400 * 8000), rel=1e-6)
    assert row.loc["Atari", ["b_crit_low", "b_crit_high"]].tolist() == [400, 8000]
    assert set(paper["units"]) == {"images", "tokens", "frames"}


def test_load_task_summaries_skips_malformed(tmp_path):
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "summary.json").write_text(json.dumps(
        dict(task="mnist", units="images", b_crit=40.0, b_crit_stderr=4.0, b_simple=90.0,
             profile="smoke", provenance={"seed": 0}, extra_note="kept")))
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "summary.json").write_text(json.dumps(dict(units="tokens", b_crit=1e3)))
    (tmp_path / "tiny").mkdir()  # b_crit_bound "insufficient" (too few points) is valid
    (tmp_path / "tiny" / "summary.json").write_text(json.dumps(dict(task="tiny", b_crit=None, b_crit_bound="insufficient")))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "summary.json").write_text("{not json")
    with pytest.warns(UserWarning, match="broken"):
        frame = load_task_summaries(tmp_path)
    frame = frame.set_index("task")
    assert sorted(frame.index) == ["lm", "mnist", "tiny"]  # missing task -> folder name
    assert frame.loc["mnist", "b_simple"] == 90.0 and frame.loc["mnist", "extra_note"] == "kept"
    assert np.isnan(frame.loc["lm", "b_simple"]) and np.isnan(frame.loc["lm", "b_noise"])
    assert "provenance" not in frame.columns
    with pytest.warns(UserWarning, match="broken"):
        assert load_task_summaries(tmp_path, profile="smoke")["task"].tolist() == ["mnist"]
    with pytest.raises(FileNotFoundError):
        load_task_summaries(tmp_path / "nope")


def test_r_squared_by_hand():
    x = np.array([1.0, 10.0, 100.0, 1000.0])
    assert r_squared_fit(x, 5 * x**0.5) == pytest.approx(1.0)  # a perfect power law
    assert r_squared_identity(x, x) == pytest.approx(1.0)
    assert r_squared_identity(x, 5 * x**0.5) < 1.0
    # log10 y = [0, 2, 1]: mean 1, SS_tot = 2; log10 x = [0, 1, 2]:
    #   identity SS_res = 0 + 1 + 1 = 2 -> R² = 0;  fit: r = 0.5 -> R² = 0.25.
    x3, y3 = [1.0, 10.0, 100.0], [1.0, 100.0, 10.0]
    assert r_squared_identity(x3, y3) == pytest.approx(0.0)
    assert r_squared_fit(x3, y3) == pytest.approx(0.25)
    # NaNs and non-positive values are dropped; < 3 points -> NaN.
    assert r_squared_fit([1.0, 10.0, np.nan, 100.0, -1.0], [1.0, 100.0, 5.0, 10.0, 3.0]) == pytest.approx(0.25)
    assert np.isnan(r_squared_fit([1.0, 2.0], [1.0, 2.0]))
    assert np.isnan(r_squared_identity([1.0, np.nan, 3.0], [1.0, 2.0, 3.0]))


def test_summary_table_and_r2_report():
    table = _summary_frame()
    assert tuple(table.columns) == TABLE_COLUMNS
    assert set(table["source"]) == {"measured", "paper"}
    mnist1d = table.set_index("task").loc["mnist1d"]
    assert mnist1d["ratio"] == pytest.approx(2.0) and mnist1d["b_crit_kind"] == "value"
    assert table.set_index("task").loc["bounded", "b_crit_kind"] == "lower_bound"
    report = r2_report(table)
    groups = ("ours", "paper", "all", "paper_in_our_span")  # no "traces": the table has none
    assert set(report) == {f"{g}_{stat}" for g in groups for stat in ("fit", "identity", "median_log10", "n")}
    assert np.isnan(report["ours_fit"]) and report["ours_n"] == 2  # only 2 measured values: the bound is left out
    ours = table[(table["source"] == "measured") & (table["b_crit_kind"] == "value")]
    assert report["ours_median_log10"] == pytest.approx(
        np.median(np.abs(np.log10(ours["b_simple"] / ours["b_crit"]))))
    in_span = table[(table["source"] == "paper") & table["b_crit_kind"].isin(["value", "range"])
                                      & table["b_crit"].between(ours["b_crit"].min(), ours["b_crit"].max())]
    assert report["paper_in_our_span_n"] == len(in_span)
    paper_points = paper_table().query("b_crit_kind != 'lower_bound'")
    assert report["paper_fit"] == pytest.approx(r_squared_fit(paper_points["b_simple"], paper_points["b_crit"]))
    assert 0.6 < report["paper_fit"] < 0.9  # the post: B_simple explains ~80% of the variance
    start = summary_table(pd.DataFrame(dict(task=["x"], units=["images"], b_crit_start=[5.0], b_simple_start=[9.0],
                                            b_crit=[50.0], b_simple=[70.0])), start=True).set_index("task")
    assert start.loc["x", "b_crit"] == 5.0 and start.loc["x", "ratio"] == pytest.approx(1.8)
    assert start.loc["Dota 5v5", "b_crit_kind"] == "not_measured" and start.loc["MNIST", "b_crit"] == 20
    assert start.loc["Atari", ["b_crit_low", "b_crit_high"]].tolist() == [100, 1000]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary_table(pd.DataFrame(columns=["task"]), paper_table())


def test_write_summary_round_trip(tmp_path):
    table = _summary_frame()
    path = write_summary(tmp_path / "summary.json", table, r2_report(table), missing=["lm"], profile="smoke")
    data = json.loads(path.read_text())
    assert data["profile"] == "smoke" and data["missing"] == ["lm"] and len(data["tasks"]) == len(table)
    assert data["r2"]["ours_fit"] is None and data["r2"]["paper_fit"] == pytest.approx(r2_report(table)["paper_fit"])


def test_readme_table_gives_b_crit_in_sequences_and_segments_beside_tokens_and_frames():
    from gns_utils.experiments.tables import _in_examples

    lm = {"domain": "language", "b_crit": 8400.0, "reference_run": {"batch_units": 10240.0, "batch_examples": 512}}
    assert _in_examples(lm) == "; 420 sequences"  # 20 tokens per sequence
    rl = {"domain": "rl", "b_crit": 99.0, "b_crit_bound": "upper",
          "reference_run": {"batch_units": 640.0, "batch_examples": 128}}
    assert _in_examples(rl) == "; < 20 segments"  # 5 frames per segment, the bound kept
    assert _in_examples({"domain": "image", "b_crit": 260.0,
                         "reference_run": {"batch_units": 256.0, "batch_examples": 256}}) == ""
    assert _in_examples({"domain": "language", "b_crit": None, "reference_run": {}}) == ""


def test_b_crit_against_loss_draws_the_fit_kaplan_and_a_sequence_axis(tmp_path):
    from types import SimpleNamespace

    from gns_utils.experiments import figures
    from gns_utils.experiments.profiles import experiment_configs

    cfg = experiment_configs("language", "smoke")[0]
    goals = [dict(goal=g, b_crit=1e7 * g ** -6.0, b_crit_stderr=50.0, bound="none") for g in (5.0, 4.5, 4.0, 3.8)]
    res = SimpleNamespace(cfg=cfg, summary={"goals": [dict(goal=6.0, b_crit=80.0, bound="upper"), *goals]},
                          figure_dir=tmp_path)
    fig = figures.b_crit_against_loss(res)
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert any("slope −6.0" in label for label in labels) and any("Kaplan" in label for label in labels)
    assert ax.get_xscale() == "log" and ax.xaxis_inverted()
    assert "sequences" in fig.axes[0].child_axes[0].get_ylabel()
    assert (tmp_path / "b_crit_against_loss.png").exists() and (tmp_path / "b_crit_against_loss.pdf").exists()
    plt.close(fig)
    empty = SimpleNamespace(cfg=cfg, summary={"goals": [dict(goal=6.0, b_crit=80.0, bound="upper")]},
                            figure_dir=tmp_path / "empty")
    plt.close(figures.b_crit_against_loss(empty))  # every goal a bound: drawn, not raised


def test_legend_entries_keep_short_numbers_and_spell_out_millions():
    from gns_utils.experiments.plotting import _fmt

    assert [_fmt(v) for v in (16384, 0.3, 524288.0, 2**20, np.int64(2**23), "goal")] == \
        ["16384", "0.3", "524288", "1,048,576", "8,388,608", "goal"]
