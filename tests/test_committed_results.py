"""The committed results/ of the last `make reproduce`: complete, in the documented schema, and
the README's tables are exactly what `python -m gns_utils.experiments.tables` prints from them (no hand
edits), and the run was a reproduction (every run trained anew) compared with the reference before it."""

import json
import re

import pytest

from gns_utils.experiments import tables as module
from gns_utils.experiments.paths import repo_path
from gns_utils.experiments.profiles import presets
from gns_utils.experiments.summary import GOAL_PREDICTORS

RESULTS = repo_path("results")
R2_KEYS = {f"{group}_{stat}" for group in ("ours", "paper", "traces", "all", "paper_in_our_span")
           for stat in ("fit", "identity", "median_log10", "n")}
TASK_FIELDS = {"task", "domain", "dataset", "model", "optimizer", "units", "b_crit", "b_crit_stderr",
               "b_crit_start", "b_simple", "b_simple_start", "b_noise", "goals", "profile", "provenance"}


def _profile() -> str | None:
    path = RESULTS / "summary.json"
    return json.loads(path.read_text()).get("profile") if path.exists() else None


# results/ holds the committed cpu run; a local `make reproduce PROFILE=...` replaces it and skips these.
pytestmark = pytest.mark.skipif(_profile() != "cpu", reason="results/ does not hold a cpu-profile run")


def _cpu_tasks() -> list[str]:
    return [p["task"] for domain in ("image", "language", "autoencoder", "rl") for p in presets(domain, "cpu")]


def test_cross_task_summary_has_every_cpu_task_and_the_r2_of_every_group():
    data = json.loads((RESULTS / "summary.json").read_text())
    assert set(data["r2"]) == R2_KEYS and all(isinstance(v, float) for v in data["r2"].values())
    measured = {t["task"] for t in data["tasks"] if t["source"] == "measured"}
    assert measured == set(_cpu_tasks()) and len(measured) >= 5
    assert {t["source"] for t in data["tasks"]} == {"measured", "paper", "traces"}
    assert data["missing"] == []
    assert data["trace_goals"]["n_workloads"] >= 4 and len(data["trace_points"]) >= 4


@pytest.mark.parametrize("task", _cpu_tasks())
def test_task_summary_fields_and_fit_quality(task):
    summary = json.loads((RESULTS / task / "summary.json").read_text())
    assert TASK_FIELDS <= set(summary) and summary["profile"] == "cpu"
    assert summary["b_crit_bound"] == "none"
    if summary["b_crit_stderr"] >= 0.5 * summary["b_crit"]:  # unresolved: reported as such, never pooled
        rows = json.loads((RESULTS / "summary.json").read_text())["tasks"]
        assert [r["b_crit_kind"] for r in rows if r["task"] == task] == ["unresolved"]
    assert summary["b_simple"] > 0 and summary["b_crit_start"] < summary["b_crit"]
    assert summary["units"] == {"language": "tokens", "rl": "frames"}.get(summary["domain"], "images")
    for name in ("figures/pareto_fronts.png", "figures/b_crit_by_goal.png", "experiment.json"):
        assert (RESULTS / task / name).exists(), name


def test_readme_tables_are_the_scripts_output():
    readme = repo_path("README.md").read_text()
    block = readme.split(module.START, 1)[1].split(module.END, 1)[0]
    assert module.tables(RESULTS) in block, "README tables are stale: run `python -m gns_utils.experiments.tables --readme README.md`"


def test_key_numbers_match_the_task_summaries():
    # recomputed here from the task summaries, independently of gns_utils.experiments.tables
    text = "\n".join(module.key_numbers(RESULTS))
    tasks = [json.loads((RESULTS / t / "summary.json").read_text()) for t in _cpu_tasks()]
    ratios = [s["b_simple"] / s["b_crit"] for s in tasks]
    assert f"ranges {min(ratios):.2f}–{max(ratios):.2f}" in text
    b_crit = [s["b_crit"] for s in tasks]
    assert f"({min(b_crit):,.0f} → {max(b_crit):,.0f})" in text
    rel = [s["b_crit_stderr"] / s["b_crit"] for s in tasks]
    assert f"{100 * min(rel):.0f}–{100 * max(rel):.0f} %" in text
    for s in tasks:
        assert f"×{s['b_crit'] / s['b_crit_start']:.2g} ({s['task']})" in text


def test_committed_run_is_a_reproduction_compared_with_its_reference():
    comparison = json.loads((RESULTS / "reproduction.json").read_text())
    assert comparison["profile"] == "cpu" and comparison["n_runs_from_before"] == 0 and comparison["n_runs"] > 100
    assert {row["task"] for row in comparison["tasks"]} >= set(_cpu_tasks())
    for task in _cpu_tasks():  # the comparison holds the numbers of the committed task summaries
        summary = json.loads((RESULTS / task / "summary.json").read_text())
        (row,) = [r for r in comparison["tasks"] if r["task"] == task]
        assert row["b_crit"] == summary["b_crit"] and row["b_simple"] == summary["b_simple"]
    assert not (RESULTS / ".reproduction").exists()


def test_every_goal_carries_its_systematics_and_each_noise_scale_is_scored():
    data = json.loads((RESULTS / "summary.json").read_text())
    real = [p for p in data["goal_points"] if not p["synthetic"]]
    assert {p["task"] for p in real} == set(_cpu_tasks())
    assert all(p["b_crit_smoothing_systematic"] is not None and p["b_crit_stderr"] is not None for p in real)
    scored = {name for name, r in data["r2_by_goal"].items() if r["n_points"]}
    assert scored == set(GOAL_PREDICTORS), set(GOAL_PREDICTORS) - scored
    for task in _cpu_tasks():  # Adam tasks: the noise scale of Adam's update direction measured at every goal
        summary = json.loads((RESULTS / task / "summary.json").read_text())
        if summary["optimizer"] == "adam":
            values = [g["b_simple_preconditioned"] for g in summary["goals"]]  # None: |PG|² estimate ≤ 0
            assert sum(v is not None and v > 0 for v in values) >= 0.75 * len(values), (task, values)


def test_calibration_task_is_scored_against_its_exact_b_crit():
    summary = json.loads((RESULTS / "noisy_linear_regression" / "summary.json").read_text())
    assert summary["domain"] == "synthetic" and summary["profile"] == "cpu" and len(summary["config"]["seeds"]) >= 2
    goals = summary["goals"]
    assert all(g["b_crit_predicted"] > 0 and g["b_crit_exact"] > 0 for g in goals)
    assert goals[-1]["b_crit_predicted"] / goals[0]["b_crit_predicted"] > 100  # two decades of B_crit
    assert any(g.get("b_crit_seed_rel_std") is not None for g in goals)  # the rerun spread
    calibration = json.loads((RESULTS / "summary.json").read_text())["calibration"]
    assert calibration["n_points"] >= 3 and calibration["measured_over_exact_median"] > 0
    near = json.loads((RESULTS / "noisy_linear_regression_near_floor" / "summary.json").read_text())
    assert near["domain"] == "synthetic" and near["config"]["data_kwargs"]["statistics"]
    assert calibration["n_points"] == len(goals) + len(near["goals"])  # both sweeps are scored
    assert calibration["exact_decades"] >= 4  # the measurement is checked over four decades of B_crit


def test_noise_dynamics_results_are_complete_and_quoted_by_the_key_numbers():
    data = json.loads((RESULTS / "noise_dynamics" / "dynamics.json").read_text())
    assert data["profile"] == "cpu"
    assert [t["task"] for t in data["temperature"]] == ["fashion_mnist_mlp_sgd", "prose_lstm_adam"]
    for t in data["temperature"]:
        assert [r["run"] for r in t["rises"]][0] == "unchanged" and len(t["rises"]) == 5
        assert all(r["rise_in_window"] > 0 for r in t["rises"])
        assert (RESULTS / "noise_dynamics" / "figures" / f"temperature_{t['task']}.png").exists()
    adaptive = data["adaptive"]
    assert adaptive["task"] == "fashion_mnist_mlp_sgd" and len(adaptive["batch_sizes"]) == 3
    assert len(adaptive["comparison"]) >= 4 and all(0 < r["gamma_predicted"] <= 1 for r in adaptive["comparison"])
    assert (RESULTS / "noise_dynamics" / "figures" / "adaptive_fashion_mnist_mlp_sgd.pdf").exists()
    text = "\n".join(module.key_numbers(RESULTS))
    first = data["temperature"][0]["rises"][1]
    assert f"{first['run']} ×{first['rise_in_window']:.2f}" in text
    last = adaptive["comparison"][-1]
    assert f"{last['step_saving']:.2f}× in steps and {last['examples_saving']:.2f}× in examples" in text


def test_readme_prose_stays_within_1600_words():
    """The front page stays readable: its prose, the generated blocks included, without code blocks and tables."""
    text = re.sub(r"```.*?```", "", repo_path("README.md").read_text(), flags=re.S)
    prose = [line for line in text.splitlines() if not line.lstrip().startswith("|")]
    assert len(" ".join(prose).split()) <= 1600


def test_local_critical_batch_results_are_complete_and_in_the_readme():
    data = json.loads((RESULTS / "local_critical_batch" / "local_cbs.json").read_text())
    assert data["profile"] == "cpu"
    calibration = data["calibration"]  # each checkpoint against its closed-form local B_crit
    assert calibration["n"] == 4 and calibration["covered"] >= 3 and 0.85 <= calibration["ratio_min"] <= calibration["ratio_max"] <= 1.15
    assert [t["task"] for t in data["tasks"]] == ["fashion_mnist_mlp_sgd", "fashion_mnist_mlp_adam"]
    assert all(t["n_checkpoints"] >= 2 and len(t["comparison"]) == t["n_checkpoints"] for t in data["tasks"])
    assert module.branching_markdown(RESULTS) in repo_path("README.md").read_text()
    for name in ("local_b_crit_calibration", "local_b_crit_fashion_mnist_mlp_sgd", "local_b_crit_fashion_mnist_mlp_adam",
                 "local_cbs_sensitivity_fashion_mnist_mlp_sgd"):
        for suffix in (".png", ".pdf"):
            assert (RESULTS / "local_critical_batch" / "figures" / f"{name}{suffix}").exists(), name
    log = json.loads((RESULTS / "reproduce_log.json").read_text())
    assert log["notebooks"]["06_local_critical_batch"]["wall_time_s"] <= 15 * 60  # within make reproduce's budget
