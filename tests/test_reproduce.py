"""`make reproduce` trains anew: the reference goes aside, outputs are deleted, an interrupted run resumes,
and the end compares with the reference."""

import json
import subprocess
from pathlib import Path

import pytest

from gns_utils.experiments import reproduce
from gns_utils.experiments.store import write_json_atomic

NOTEBOOKS = ["01_image_classification", "99_summary"]


def _task_summary(b_crit, se, b_simple, units="images"):
    return {"task": "t", "units": units, "b_crit": b_crit, "b_crit_stderr": se, "b_simple": b_simple}


def _old_results(root):
    """A committed-looking results folder of the smoke image task."""
    write_json_atomic(root / "smoke_image" / "summary.json", _task_summary(14.0, 7.0, 34.0))
    write_json_atomic(root / "smoke_image" / "runs" / "old" / "summary.json", {"status": "complete"})
    write_json_atomic(root / "summary.json", {"r2": {"ours_fit": 0.5}})
    (root / "01_image_classification.ipynb").write_text("{}")
    (root / "reproduction.md").write_text("the last reproduction")
    (root / "README.md").write_text("schema")


def test_fresh_start_puts_the_reference_aside_and_deletes_the_outputs(tmp_path):
    _old_results(tmp_path)
    state = reproduce.start_or_resume(tmp_path, "smoke", NOTEBOOKS)
    assert state["resumed"] == 0 and state["profile"] == "smoke"
    assert not (tmp_path / "smoke_image").exists() and not (tmp_path / "summary.json").exists()
    assert not (tmp_path / "01_image_classification.ipynb").exists()
    assert not (tmp_path / "reproduction.md").exists()  # nothing describes an old reproduction while one runs
    assert (tmp_path / "README.md").exists()  # not an output of the notebooks
    reference = tmp_path / reproduce.STATE_DIR / "reference"
    assert json.loads((reference / "smoke_image" / "summary.json").read_text())["b_crit"] == 14.0
    assert (reference / "summary.json").exists()
    assert (tmp_path / reproduce.STATE_DIR / "state.json").exists()


def test_an_interrupted_reproduction_resumes_and_keeps_its_runs(tmp_path):
    _old_results(tmp_path)
    reproduce.start_or_resume(tmp_path, "smoke", NOTEBOOKS)
    write_json_atomic(tmp_path / "smoke_image" / "runs" / "new" / "summary.json", {"status": "complete"})
    state = reproduce.start_or_resume(tmp_path, "smoke", NOTEBOOKS)  # the same command again
    assert state["resumed"] == 1
    assert (tmp_path / "smoke_image" / "runs" / "new" / "summary.json").exists()
    reference = tmp_path / reproduce.STATE_DIR / "reference" / "smoke_image" / "summary.json"
    assert json.loads(reference.read_text())["b_crit"] == 14.0  # still the committed one
    with pytest.raises(SystemExit, match="in progress"):
        reproduce.start_or_resume(tmp_path, "cpu", NOTEBOOKS)


def test_an_exhaustive_baseline_is_not_resumed_as_a_default_reproduction(tmp_path):
    """Resuming with the other ``--exhaustive`` setting would mix the two engines' runs in one record."""
    _old_results(tmp_path)
    state = reproduce.start_or_resume(tmp_path, "smoke", NOTEBOOKS, exhaustive=True)
    assert state["exhaustive"] is True
    with pytest.raises(SystemExit, match="--exhaustive"):
        reproduce.start_or_resume(tmp_path, "smoke", NOTEBOOKS)
    assert reproduce.start_or_resume(tmp_path, "smoke", NOTEBOOKS, exhaustive=True)["resumed"] == 1
    other = tmp_path / "other"
    other.mkdir()
    reproduce.start_or_resume(other, "smoke", NOTEBOOKS)
    with pytest.raises(SystemExit, match="in progress"):
        reproduce.start_or_resume(other, "smoke", NOTEBOOKS, exhaustive=True)


@pytest.mark.parametrize("new, agrees, identical", [
    (_task_summary(14.0, 7.0, 34.0), True, True),
    (_task_summary(30.0, 7.0, 34.0), True, False),    # 16 apart, combined s.e. 9.9: 1.6 s.e.
    (_task_summary(45.0, 7.0, 34.0), False, False),   # 3.1 s.e.
    (_task_summary(14.0, 7.0, 45.0), False, False),   # B_simple 1.32× the reference
])
def test_comparison_verdict(tmp_path, new, agrees, identical):
    write_json_atomic(tmp_path / "ref" / "t" / "summary.json", _task_summary(14.0, 7.0, 34.0))
    write_json_atomic(tmp_path / "new" / "t" / "summary.json", new)
    result = reproduce.compare(tmp_path / "ref", tmp_path / "new", ["t"])
    assert (result["agrees"], result["identical"]) == (agrees, identical)
    text = reproduce.comparison_markdown(result, "header")
    assert ("AGREES" in text) == agrees and ("DOES NOT AGREE" in text) == (not agrees)


def test_a_bound_agrees_only_when_equal(tmp_path):
    write_json_atomic(tmp_path / "ref" / "t" / "summary.json", _task_summary(8.0, None, 0.6))
    write_json_atomic(tmp_path / "new" / "t" / "summary.json", _task_summary(8.0, None, 0.6))
    assert reproduce.compare(tmp_path / "ref", tmp_path / "new", ["t"])["agrees"]
    write_json_atomic(tmp_path / "new" / "t" / "summary.json", _task_summary(9.0, None, 0.6))
    assert not reproduce.compare(tmp_path / "ref", tmp_path / "new", ["t"])["agrees"]


def test_a_hardest_goal_fitted_on_one_side_only_is_compared_at_the_hardest_common_goal(tmp_path):
    def goal(g, b_crit, se, bound="none"):
        return {"goal": g, "b_crit": b_crit, "b_crit_stderr": se, "bound": bound}

    config = {"goals": [50.0, 100.0, 200.0]}
    ref = {**_task_summary(130.0, 40.0, 30.0), "b_crit_goal": 200.0, "config": config,
           "goals": [goal(50.0, 80.0, 20.0), goal(100.0, 100.0, 30.0), goal(200.0, 130.0, 40.0)]}
    new = {**_task_summary(110.0, 35.0, 31.0), "b_crit_goal": 100.0, "config": config,
           "goals": [goal(50.0, 70.0, 20.0), goal(100.0, 110.0, 35.0), goal(200.0, None, None, "insufficient")]}
    write_json_atomic(tmp_path / "ref" / "t" / "summary.json", ref)
    write_json_atomic(tmp_path / "new" / "t" / "summary.json", new)
    row = reproduce.compare(tmp_path / "ref", tmp_path / "new", ["t"])["tasks"][0]
    assert (row["b_crit"], row["b_crit_reference"], row["b_crit_goal_reference"]) == (110.0, 100.0, 100.0)
    assert row["b_crit_z"] == pytest.approx(10.0 / (35.0 ** 2 + 30.0 ** 2) ** 0.5)
    assert "the hardest that both fitted" in reproduce.comparison_markdown(
        reproduce.compare(tmp_path / "ref", tmp_path / "new", ["t"]), "h")


def test_a_comparison_names_the_code_files_changed_since_the_reference_was_made(tmp_path, monkeypatch):
    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                              capture_output=True, text=True).stdout.strip()

    repo = tmp_path / "repo"
    (repo / "gns_utils").mkdir(parents=True)
    git("init", "-q")
    commits = []
    for path, text in [("gns_utils/fit.py", "a"), ("README.md", "docs"), ("gns_utils/fit.py", "b")]:
        (repo / path).write_text(text)
        git("add", "-A")
        git("commit", "-q", "-m", path)
        commits.append(git("rev-parse", "HEAD"))
    monkeypatch.setattr(reproduce, "repo_root", lambda: repo)
    assert reproduce.code_changed([commits[0]], [commits[1]]) == []        # only the README changed
    assert reproduce.code_changed([commits[0]], [commits[2]]) == ["gns_utils/fit.py"]
    assert reproduce.code_changed(["0" * 40], [commits[2]]) is None        # a commit git does not hold
    for side, commit in (("ref", commits[0]), ("new", commits[2])):
        write_json_atomic(tmp_path / side / "t" / "summary.json",
                          {**_task_summary(14.0, 7.0, 34.0), "provenance": {"git_commit": commit}})
    result = reproduce.compare(tmp_path / "ref", tmp_path / "new", ["t"])
    assert result["reference_commits"] == [commits[0]] and result["code_changed"] == ["gns_utils/fit.py"]
    assert "The code changed since the reference was made" in reproduce.comparison_markdown(result, "h")


@pytest.mark.parametrize("new_seed, kind", [(0, "determinism check"), (1000, "replication")])
def test_a_comparison_at_other_seeds_is_a_replication(tmp_path, new_seed, kind):
    def summary(seed):
        return {**_task_summary(14.0, 7.0, 34.0), "config": {"seed": seed, "seeds": [seed + 1, seed + 2]}}

    write_json_atomic(tmp_path / "ref" / "t" / "summary.json", summary(0))
    write_json_atomic(tmp_path / "new" / "t" / "summary.json", summary(new_seed))
    result = reproduce.compare(tmp_path / "ref", tmp_path / "new", ["t"])
    assert result["kind"] == kind and result["tasks"][0]["seeds"] == [new_seed, new_seed + 1, new_seed + 2]
    text = reproduce.comparison_markdown(result, "header")
    assert ("A replication" in text) == (kind == "replication") and ("A determinism check" in text) == (new_seed == 0)


@pytest.mark.notebook
def test_replicate_trains_at_new_seeds_into_its_own_folder_against_the_committed_one(tmp_path):
    _old_results(tmp_path / "results")
    assert reproduce.main(["--profile", "smoke", "--only", "01_image_classification", "--seed", "1000",
                           "--results-dir", str(tmp_path / "replication"), "--reference-dir", str(tmp_path / "results"),
                           "--jobs", "1"]) == 0
    comparison = json.loads((tmp_path / "replication" / "reproduction.json").read_text())
    (row,) = comparison["tasks"]
    assert row["seeds"] == [1000, 1001] and row["b_crit_reference"] == 14.0  # smoke preset: seed 0 repeats at 1
    assert comparison["kind"] == "replication" and (tmp_path / "results" / "smoke_image" / "runs" / "old").exists()
    assert "A replication" in (tmp_path / "replication" / "reproduction.md").read_text()


@pytest.mark.notebook
def test_reproduce_trains_every_run_and_compares(tmp_path, capsys):
    _old_results(tmp_path)
    assert reproduce.main(["--profile", "smoke", "--only", "01_image_classification",
                           "--results-dir", str(tmp_path), "--jobs", "1"]) == 0
    assert not (tmp_path / "smoke_image" / "runs" / "old").exists()
    comparison = json.loads((tmp_path / "reproduction.json").read_text())
    assert comparison["n_runs"] >= 6 and comparison["n_runs_from_before"] == 0
    (row,) = comparison["tasks"]
    assert row["task"] == "smoke_image" and row["b_crit_reference"] == 14.0 and row["b_crit"] > 0
    assert not (tmp_path / reproduce.STATE_DIR).exists()  # finished: no reproduction in progress
    assert "Verdict" in capsys.readouterr().out and (tmp_path / "reproduction.md").exists()


def test_a_notebook_that_reads_another_starts_after_it(tmp_path, monkeypatch):
    """05_noise_dynamics reads the image sweep: it is submitted only once 01 has finished."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    events, lock = [], threading.Lock()

    def fake_run(name, profile, results_dir, exhaustive=False, seed=0):
        with lock:
            events.append(("start", name))
        time.sleep({"01_image_classification": 0.3}.get(name, 0.05))
        with lock:
            events.append(("end", name))
        return {"status": "ok", "wall_time_s": 0.0}

    monkeypatch.setattr(reproduce, "ProcessPoolExecutor", ThreadPoolExecutor)
    monkeypatch.setattr(reproduce, "run_notebook", fake_run)
    assert reproduce.main(["--profile", "smoke", "--only", "01_image_classification", "03_autoencoder",
                           "05_noise_dynamics", "--results-dir", str(tmp_path), "--jobs", "2"]) == 0
    assert events.index(("start", "05_noise_dynamics")) > events.index(("end", "01_image_classification"))
    assert events.index(("start", "03_autoencoder")) < events.index(("end", "01_image_classification"))


def test_exhaustive_baseline_passes_only_the_parameters_a_notebook_declares(monkeypatch, tmp_path):
    """``--exhaustive``: exhaustive=True and goal_source='subset' where declared, nothing a notebook lacks."""
    calls = {}

    def fake_execute(source, output, parameters, **kwargs):
        calls[Path(source).stem] = parameters

    monkeypatch.setattr(reproduce.pm, "execute_notebook", fake_execute)
    for name in ("01_image_classification", "04_reinforcement_learning", "05_noise_dynamics", "99_summary"):
        entry = reproduce.run_notebook(name, "smoke", str(tmp_path), exhaustive=True)
        assert entry["status"] == "ok" and entry["cpu_time_s"] >= 0
    assert calls["01_image_classification"]["exhaustive"] is True
    assert calls["01_image_classification"]["goal_source"] == "subset"
    assert calls["05_noise_dynamics"]["exhaustive"] is True and calls["05_noise_dynamics"]["goal_source"] == "subset"
    assert calls["04_reinforcement_learning"]["exhaustive"] is True
    assert "goal_source" not in calls["04_reinforcement_learning"]  # its goals come from episodes
    assert "exhaustive" not in calls["99_summary"]
    reproduce.run_notebook("01_image_classification", "smoke", str(tmp_path))
    assert "exhaustive" not in calls["01_image_classification"]


def test_b_simple_is_judged_pooled_over_runs_where_both_sides_have_it(tmp_path):
    """One run's B_simple moves with its trajectory; the value pooled over every run is what must agree."""
    ref = {**_task_summary(14.0, 7.0, 34.0), "b_simple_pooled": 40.0}
    write_json_atomic(tmp_path / "ref" / "t" / "summary.json", ref)
    write_json_atomic(tmp_path / "new" / "t" / "summary.json", {**_task_summary(14.0, 7.0, 100.0), "b_simple_pooled": 44.0})
    result = reproduce.compare(tmp_path / "ref", tmp_path / "new", ["t"])
    row = result["tasks"][0]
    assert result["agrees"] and row["b_simple_judged"] == "b_simple_pooled" and row["b_simple_factor"] == 1.1
    write_json_atomic(tmp_path / "new" / "t" / "summary.json", {**_task_summary(14.0, 7.0, 34.0), "b_simple_pooled": 80.0})
    assert not reproduce.compare(tmp_path / "ref", tmp_path / "new", ["t"])["agrees"]
    write_json_atomic(tmp_path / "new" / "t" / "summary.json", _task_summary(14.0, 7.0, 100.0))  # no pooled value
    row = reproduce.compare(tmp_path / "ref", tmp_path / "new", ["t"])["tasks"][0]
    assert row["b_simple_judged"] == "b_simple" and not row["agrees"]
    assert "pooled over runs" in reproduce.comparison_markdown(reproduce.compare(tmp_path / "ref", tmp_path / "new", ["t"]), "h")


def test_a_replication_completed_notebook_by_notebook_compares_the_tasks_of_earlier_calls(tmp_path):
    from gns_utils.experiments.profiles import task_names

    lm = task_names("language", "smoke")
    for task in ["smoke_image", *lm]:
        write_json_atomic(tmp_path / "replication" / task / "summary.json", _task_summary(14.0, 7.0, 34.0))
    earlier = reproduce.earlier_tasks(tmp_path / "replication", tmp_path / "results", "smoke",
                                      ["01_image_classification"])
    assert earlier == [("02_language_model", t) for t in lm]  # the image task is this call's own
    # reproducing into the reference's own folder: the other summaries are the reference itself, never compared
    assert reproduce.earlier_tasks(tmp_path / "results", tmp_path / "results", "smoke", ["01_image_classification"]) == []


def test_recompare_judges_a_finished_reproduction_again_and_keeps_its_header(tmp_path):
    write_json_atomic(tmp_path / "ref" / "t" / "summary.json", _task_summary(14.0, 7.0, 34.0))
    write_json_atomic(tmp_path / "new" / "t" / "summary.json", _task_summary(15.0, 7.0, 34.0))
    assert reproduce.recompare(tmp_path / "new", tmp_path / "ref") == 1  # nothing finished there yet
    record = {**reproduce.compare(tmp_path / "ref", tmp_path / "new", ["t"]), "n_runs": 7, "profile": "cpu"}
    write_json_atomic(tmp_path / "new" / "reproduction.json", record)
    (tmp_path / "new" / "reproduction.md").write_text(reproduce.comparison_markdown(record, "Profile `cpu`, 7 runs."))
    write_json_atomic(tmp_path / "new" / "t" / "summary.json", _task_summary(60.0, 7.0, 34.0))  # summary redone
    assert reproduce.recompare(tmp_path / "new", tmp_path / "ref") == 0
    again = json.loads((tmp_path / "new" / "reproduction.json").read_text())
    assert again["n_runs"] == 7 and not again["agrees"] and again["tasks"][0]["b_crit"] == 60.0
    text = (tmp_path / "new" / "reproduction.md").read_text()
    assert "Profile `cpu`, 7 runs." in text and "redone from the same task summaries" in text and "DOES NOT AGREE" in text


def test_a_released_notebook_goes_ahead_of_shorter_ones_queued_from_the_start():
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    durations = {"01_image_classification": 0.5, "03_autoencoder": 0.2, "02_language_model": 0.2,
                 "06_local_critical_batch": 0.1, "00_calibration": 0.3, "04_reinforcement_learning": 0.1,
                 "05_noise_dynamics": 0.1}
    started, running, peak, lock = {}, [0], [0], threading.Lock()
    t0 = time.perf_counter()

    def run(name, *args):
        with lock:
            started[name] = time.perf_counter() - t0
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(durations[name])
        with lock:
            running[0] -= 1
        return {"status": "ok"}

    ended = []
    domain = [n for n in reproduce.NOTEBOOKS if n in durations]
    with ThreadPoolExecutor(max_workers=2) as pool:
        reproduce.run_in_order(domain, 2, pool, lambda name, entry: ended.append(name), run=run)
    assert sorted(ended) == sorted(durations) and peak[0] == 2
    # notebook 06 reads 01's sweeps: it waits for 01, then starts before 04, which was ready from the start
    assert started["06_local_critical_batch"] >= durations["01_image_classification"]
    assert started["06_local_critical_batch"] < started["04_reinforcement_learning"]
    assert started["05_noise_dynamics"] >= durations["01_image_classification"]


def test_the_readme_line_on_a_replication_names_the_tasks_it_does_not_cover(tmp_path):
    from gns_utils.experiments.store import write_json_atomic
    from gns_utils.experiments.tables import tables

    row = {"b_crit": 100.0, "b_crit_stderr": 10.0, "b_crit_z": 0.3, "b_simple_factor": 1.1, "identical": True}
    write_json_atomic(tmp_path / "reproduction.json", {
        "profile": "cpu", "kind": "determinism check", "total_wall_time_s": 600.0, "n_runs": 10,
        "n_runs_from_before": 0, "identical": True, "agrees": True, "code_changed": [],
        "tasks": [{"task": "noisy_linear_regression", "agrees": True, **row},
                  {"task": "noisy_linear_regression_near_floor", "agrees": None}]})
    write_json_atomic(tmp_path / "reproduce_log.json", {"notebooks": {"00_calibration": {"wall_time_s": 600.0}}})
    write_json_atomic(tmp_path / "replication.json", {
        "notebooks": ["00_calibration"], "criteria": "B_crit within 2 combined standard errors",
        "tasks": [{"task": "noisy_linear_regression", "agrees": True, "seeds": [1000, 1001], **row}]})
    text = tables(tmp_path)
    assert "agrees with these results on 1 of 1 tasks" in text
    assert "it does not cover Noisy linear regression near its floor (SGD)" in text
    write_json_atomic(tmp_path / "reproduction.json", {**json.loads((tmp_path / "reproduction.json").read_text()),
                                                       "tasks": [{"task": "noisy_linear_regression", **row}]})
    assert "does not cover" not in tables(tmp_path)
