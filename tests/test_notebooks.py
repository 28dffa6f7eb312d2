"""Every notebook runs under papermill at smoke size; the tests check the files it wrote."""

import json
import math

import papermill as pm
import pytest

from gns_utils.experiments.paths import repo_path
from gns_utils.experiments.summary import GOAL_PREDICTORS

pytestmark = pytest.mark.notebook

DOMAIN_TASKS = {
    "00_calibration": ["smoke_noisy_linear", "smoke_noisy_linear_near_floor"],
    "01_image_classification": ["smoke_image"],
    "02_language_model": ["smoke_lm"],
    "03_autoencoder": ["smoke_autoencoder", "smoke_vae"],
    "04_reinforcement_learning": ["smoke_cartpole_a2c"],
}
TASK_FIELDS = ["task", "domain", "dataset", "model", "optimizer", "units", "b_crit", "b_crit_stderr",
               "b_crit_start", "b_simple", "b_simple_start", "b_noise", "goals", "profile", "provenance"]


def _resolved_or_none(value):
    """A noise-scale estimate as the summaries store it: ``None`` where its sampled |G|² was <= 0 (at smoke
    size that happens by chance, and on some machines and not others), else a positive finite number."""
    return value is None or (isinstance(value, (int, float)) and math.isfinite(value) and value > 0)


def _execute(name, results, **params):
    out = results / f"{name}.ipynb"
    pm.execute_notebook(str(repo_path("notebooks", f"{name}.ipynb")), str(out),
                        parameters={"profile": "smoke", "results_dir": str(results), "progress": False, **params},
                        cwd=str(repo_path("notebooks")), progress_bar=False)
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return tmp_path_factory.mktemp("results")


@pytest.mark.parametrize("name", list(DOMAIN_TASKS))
def test_domain_notebook_at_smoke_size(name, results):
    executed = _execute(name, results)
    assert executed.exists()
    for task in DOMAIN_TASKS[name]:
        summary = json.loads((results / task / "summary.json").read_text())
        assert set(TASK_FIELDS) <= set(summary), set(TASK_FIELDS) - set(summary)
        assert summary["task"] == task and summary["profile"] == "smoke"
        assert summary["units"] == {"00": "examples", "02": "tokens", "04": "frames"}.get(name[:2], "images")
        assert _resolved_or_none(summary["b_simple"])
        assert len(summary["goals"]) == 2
        assert all(_resolved_or_none(g["b_simple_local_median"]) and g["b_simple_local_n_runs"] >= 1
                   for g in summary["goals"])
        figures = {p.name for p in (results / task / "figures").iterdir()}
        for fig in ("training_curves", "pareto_fronts", "b_crit_by_goal", "b_simple_over_training"):
            assert {f"{fig}.png", f"{fig}.pdf"} <= figures, (task, sorted(figures))
        runs = list((results / task / "runs").iterdir())
        assert len(runs) >= 6 and all((r / "summary.json").exists() for r in runs)
    if name.startswith("02"):
        assert (results / "smoke_lm_widths" / "figures" / "widths_b_simple.png").exists()
    if name.startswith("00"):
        goals = json.loads((results / "smoke_noisy_linear" / "summary.json").read_text())["goals"]
        assert all(g["b_crit_predicted"] > 0 and g["b_crit_exact"] > 0 for g in goals)
        assert all(_resolved_or_none(g["b_noise"]) and "b_noise" in g for g in goals)  # measured at each goal
        runs = [json.loads((r / "summary.json").read_text())["config"] for r in (results / "smoke_noisy_linear" / "runs").iterdir()]
        rates = {}  # sweep runs (not the B_noise re-run): every seed trained the main seed's rates, refined ones included
        for cfg in (c for c in runs if not c["b_noise_examples"]):
            rates.setdefault(cfg["seed"], set()).add((cfg["batch_size"], cfg["lr"]))
        assert len(rates) == 2 and rates[0] == rates[1] and len(rates[0]) > 2 * 3  # 2 rates × 3 batch sizes + midpoints
    if name.startswith("04"):  # the reference run measured B_simple from segments and from shuffled frames
        goals = json.loads((results / "smoke_cartpole_a2c" / "summary.json").read_text())["goals"]
        assert all("b_simple_checkpoint" in g and _resolved_or_none(g["b_simple_checkpoint"]) for g in goals)
        runs = [json.loads((r / "summary.json").read_text()) for r in (results / "smoke_cartpole_a2c" / "runs").iterdir()]
        assert all(r["batch_units"] == 5 * r["config"]["batch_size"] for r in runs)
    if name.startswith("01"):
        assert (results / "smoke_image" / "figures" / "optimal_lr.png").exists()


def test_noise_dynamics_notebook_at_smoke_size(results):
    _execute("05_noise_dynamics", results)  # after 01 in this module: the adaptive runs read its smoke sweep back
    summary = json.loads((results / "noise_dynamics" / "dynamics.json").read_text())
    assert summary["profile"] == "smoke"
    assert [t["task"] for t in summary["temperature"]] == ["smoke_image", "smoke_lm"]
    for task in summary["temperature"]:
        assert len(task["rises"]) == 5 and task["rises"][0]["run"] == "unchanged"
        assert (results / "noise_dynamics" / task["task"] / "temperature.csv").exists()
        assert (results / "noise_dynamics" / "figures" / f"temperature_{task['task']}.pdf").exists()
    adaptive = summary["adaptive"]
    assert adaptive["task"] == "smoke_image" and adaptive["r"] > 0 and adaptive["comparison"]
    assert all(row["steps"] > 0 and 0 < row["gamma_predicted"] <= 1 for row in adaptive["comparison"])
    assert (results / "noise_dynamics" / "figures" / "adaptive_smoke_image.png").exists()
    assert not (results / "noise_dynamics" / "summary.json").exists()  # not a task: 99_summary must not read it


def test_local_critical_batch_notebook_at_smoke_size(results):
    _execute("06_local_critical_batch", results)  # after 01 in this module: it branches from the smoke sweep's run
    folder = results / "local_critical_batch"
    summary = json.loads((folder / "local_cbs.json").read_text())
    assert summary["profile"] == "smoke"
    calibration = json.loads((folder / "calibration.json").read_text())["local"]
    assert len(calibration) == 3 and all(row["b_crit_exact"] > 0 and row["floor"] > 0 for row in calibration)
    # seeded numpy (no torch): the measured local B_crit against the closed form at every checkpoint
    assert all(0.8 <= row["b_crit"] / row["b_crit_exact"] <= 1.25 for row in calibration), calibration
    assert summary["calibration"]["covered"] >= 2
    [task] = summary["tasks"]
    assert task["task"] == "smoke_image" and task["n_checkpoints"] == 1
    stored = json.loads((folder / "smoke_image.json").read_text())
    assert {row["rates"] for row in stored["local"]} == {"grid", "law"}
    assert {row["fraction"] for row in stored["local"]} == {0.05, 0.1} and {row["tolerance"] for row in stored["local"]} == {0.2, 0.5}
    assert {row["batch_size"] for row in stored["steps"]} == {4, 8, 16, 32}
    for name in ("local_b_crit_calibration", "local_b_crit_smoke_image", "local_cbs_sensitivity_smoke_image"):
        assert (folder / "figures" / f"{name}.png").exists() and (folder / "figures" / f"{name}.pdf").exists()
    assert not (folder / "summary.json").exists()  # not a task: 99_summary must not read it


def test_summary_notebook_reads_files_only(results):
    _execute("99_summary", results)
    summary = json.loads((results / "summary.json").read_text())
    groups = {"ours", "paper", "traces", "all"} | ({"paper_in_our_span"} if "paper_in_our_span_n" in summary["r2"] else set())
    assert set(summary["r2"]) == {f"{g}_{stat}" for g in groups for stat in ("fit", "identity", "median_log10", "n")}
    assert summary["trace_goals"]["n_workloads"] >= 4  # the shipped third-party traces, at any profile
    measured = [t for t in summary["tasks"] if t["source"] == "measured"]
    paper = [t for t in summary["tasks"] if t["source"] == "paper"]
    assert {t["task"] for t in measured} == {t for ts in DOMAIN_TASKS.values() for t in ts} - set(DOMAIN_TASKS["00_calibration"])
    assert len(paper) >= 9
    assert summary["r2"]["paper_fit"] is not None and 0 < summary["r2"]["paper_fit"] <= 1
    assert (results / "figures" / "b_crit_vs_b_simple.png").exists()
    assert (results / "figures" / "b_crit_vs_b_simple_start.pdf").exists()
    assert (results / "figures" / "b_crit_vs_b_simple_by_goal.png").exists()
    assert set(summary["r2_by_goal"]) == set(GOAL_PREDICTORS)
    assert "measured_over_predicted_median" in summary["calibration"]  # the synthetic task scored vs exact
    points = summary["goal_points"]
    assert points and all(p["b_crit"] > 0 and _resolved_or_none(p["b_simple_local_median"]) for p in points)


def test_stepping_through_again_changes_no_file_and_draws_inline_without_a_backend_set(results, monkeypatch):
    """What ``make lab`` gives: no MPLBACKEND, so the kernel draws inline; re-running a notebook on the runs
    already there trains nothing and rewrites no result (the checkout stays clean)."""
    import hashlib

    def digest():
        return {p.relative_to(results).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in results.rglob("*") if p.is_file() and p.suffix != ".ipynb"}

    before = digest()
    assert any(name.endswith("summary.json") for name in before)
    monkeypatch.delenv("MPLBACKEND", raising=False)
    for name in ("00_calibration", "06_local_critical_batch", "99_summary"):
        executed = json.loads(_execute(name, results).read_text())
        images = [o for c in executed["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
                  if "image/png" in o.get("data", {})]
        assert images, f"{name}: no figure drawn inline"
    changed = sorted(k for k in set(before) | set(digest()) if before.get(k) != digest().get(k))
    assert not changed, changed


def test_bad_parameter_fails_before_training(tmp_path):
    with pytest.raises(pm.PapermillExecutionError, match="powers of two"):
        _execute("01_image_classification", tmp_path, batch_sizes=[8, 12, 16])
    assert not (tmp_path / "smoke_image" / "runs").exists()
