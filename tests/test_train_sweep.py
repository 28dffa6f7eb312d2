"""The training and sweep engine on a tiny synthetic problem (seconds on a CPU)."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from gns_utils.experiments import sweep as sweep_module
from gns_utils.experiments.config import ConfigError, make_experiment
from gns_utils.critical_batch import RUN_OUT, b_crit_by_goal, best_runs
from gns_utils.experiments.problems import ClassificationProblem
from gns_utils.experiments.store import load_metrics, load_run_summary, run_dir
from gns_utils.experiments.sweep import run_sweep
from gns_utils.experiments.train import eval_schedule, steps_to_goals_both_sources, train_run

BASE = dict(
    task="tiny", domain="image", dataset="synthetic", model="mlp", model_kwargs={"hidden": [16]},
    optimizer="sgd", metric="error", goals=[0.3, 0.15], batch_sizes=[4, 16, 64], lr_star=0.4, lr_b_star=16.0,
    lr_grid_size=2, max_widen=1, budget_examples=6000, eval_examples=256, evals_per_decade=12, profile="smoke",
)


@pytest.fixture(scope="module")
def problem(tiny_problem):
    return tiny_problem


def _resolved_or_none(b_simple):
    """A run's final B_simple: None where the moving average of its sampled |G|^2 is <= 0, which can happen by chance
    (B_simple is 10-200 here against B = 16: up to half of the steps' |G|^2 estimates are negative), else positive."""
    return b_simple is None or (math.isfinite(b_simple) and b_simple > 0)


def test_eval_schedule_is_log_spaced_and_ends_at_budget():
    steps = eval_schedule(1000, 10)
    assert steps[0] == 0 and steps[-1] == 1000 and np.all(np.diff(steps) > 0)
    ratios = steps[-6:][1:] / steps[-6:][:-1]
    assert np.allclose(ratios, 10 ** 0.1, rtol=0.05)


def test_one_run_writes_config_metrics_summary(problem, tmp_path):
    cfg = make_experiment(BASE).run(16, 0.2)
    summary = train_run(problem, cfg, tmp_path, progress=False)
    folder = run_dir(tmp_path, "tiny", cfg.run_id)
    assert json.loads((folder / "config.json").read_text())["run_id"] == cfg.run_id
    assert load_run_summary(folder, cfg.run_id)["status"] == summary["status"] == "complete"
    metrics = pd.read_csv(folder / "metrics.csv")
    assert metrics["error"].iloc[-1] <= 0.15 < metrics["error"].iloc[0]
    assert summary["steps_to_goal"]["0.3"] <= summary["steps_to_goal"]["0.15"] <= summary["n_steps"]
    assert summary["noise_steps"] == summary["n_steps"] and _resolved_or_none(summary["b_simple_final"])
    for key in ("git_commit", "git_dirty", "python", "torch", "numpy", "device", "seed"):
        assert key in summary["provenance"]
    assert summary["wall_time_s"] > 0


def test_a_run_trains_the_model_size_its_config_names(problem, tmp_path):
    # one loaded problem, runs of several widths (the Fig 8 study): each run builds its own size
    exp = make_experiment(BASE)
    sizes = {}
    for hidden in ([8], [32]):
        cfg = exp.run(16, 0.2, model_kwargs={"hidden": hidden}, budget_examples=800)
        sizes[hidden[0]] = train_run(problem, cfg, tmp_path, progress=False)["n_parameters"]
    # MLP 8 → hidden → 4 (weights + biases)
    assert sizes == {8: 8 * 8 + 8 + 8 * 4 + 4, 32: 8 * 32 + 32 + 32 * 4 + 4}


def test_same_config_and_seed_give_identical_metrics(problem, tmp_path):
    cfg = make_experiment(BASE).run(4, 0.1, budget_examples=800)
    train_run(problem, cfg, tmp_path / "a", progress=False)
    train_run(problem, cfg, tmp_path / "b", progress=False)
    a = pd.read_csv(run_dir(tmp_path / "a", "tiny", cfg.run_id) / "metrics.csv").drop(columns="wall_time_s")
    b = pd.read_csv(run_dir(tmp_path / "b", "tiny", cfg.run_id) / "metrics.csv").drop(columns="wall_time_s")
    pd.testing.assert_frame_equal(a, b)
    other = make_experiment({**BASE, "seed": 1}).run(4, 0.1, budget_examples=800)
    train_run(problem, other, tmp_path / "c", progress=False)
    c = pd.read_csv(run_dir(tmp_path / "c", "tiny", other.run_id) / "metrics.csv").drop(columns="wall_time_s")
    assert not a["loss"].equals(c["loss"])


def test_divergence_is_recorded_not_raised(problem, tmp_path):
    cfg = make_experiment(BASE).run(16, 1e4)
    summary = train_run(problem, cfg, tmp_path, progress=False)
    assert summary["status"] == "diverged"
    assert all(v is None for v in summary["steps_to_goal"].values())


def test_small_sweep_feeds_the_tradeoff_fit(problem, tmp_path):
    table = run_sweep(make_experiment(BASE), tmp_path, problem=problem, progress=False)
    assert set(table["batch_examples"]) == {4, 16, 64}
    assert table["trained"].all() and set(table["batch_units"]) == {4, 16, 64}  # images: units = examples
    best = best_runs(table, batch="batch_units")
    assert set(best["goal"]) == {0.3, 0.15}
    fits = b_crit_by_goal(best, batch="batch_units")
    assert len(fits) == 2 and np.isfinite(fits["b_crit"]).any()
    assert (load_metrics(tmp_path, "tiny")["run_id"].nunique()) == table["run_id"].nunique()


def test_sweep_widens_the_grid_when_the_best_rate_is_on_the_edge(problem, tmp_path):
    cfg = make_experiment({**BASE, "lr_star": 0.01, "batch_sizes": [16, 32, 64], "max_widen": 2})
    table = run_sweep(cfg, tmp_path, problem=problem, progress=False)
    per_batch = table.groupby("batch_examples")["lr"].nunique()
    assert (per_batch > 2).all(), per_batch  # rates far too small: the grid grows upwards


def test_interrupted_sweep_resumes_only_missing_runs(problem, tmp_path, monkeypatch):
    cfg = make_experiment({**BASE, "max_widen": 0})
    real = sweep_module.Run.advance
    calls = {"n": 0}

    def interrupt_later(self):
        calls["n"] += 1
        if calls["n"] == 40:  # the first batch size's pair has finished, the second is mid-way
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(sweep_module.Run, "advance", interrupt_later)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg, tmp_path, problem=problem, progress=False)
    finished = {d.name for d in (tmp_path / "tiny" / "runs").iterdir()
                if (load_run_summary(d) or {}).get("status") is not None}
    assert 1 <= len(finished) < 6

    monkeypatch.setattr(sweep_module.Run, "advance", real)
    table = run_sweep(cfg, tmp_path, problem=problem, progress=False)
    assert table["run_id"].nunique() == 6
    trained = table.drop_duplicates("run_id").set_index("run_id")["trained"]
    assert set(trained[~trained].index) == finished  # finished runs reused, the rest trained anew

    # resuming gives the runs an uninterrupted sweep gives
    clean = run_sweep(cfg, tmp_path / "clean", problem=problem, progress=False)
    columns = ["run_id", "status", "goal", "steps"]
    pd.testing.assert_frame_equal(table[columns].sort_values(["run_id", "goal"]).reset_index(drop=True),
                                  clean[columns].sort_values(["run_id", "goal"]).reset_index(drop=True))

    # a truncated summary and a deleted folder are both redone; nothing else is
    ids = sorted(table["run_id"].unique())
    (run_dir(tmp_path, "tiny", ids[0]) / "summary.json").write_text('{"status": "compl')
    import shutil
    shutil.rmtree(run_dir(tmp_path, "tiny", ids[1]))
    again = run_sweep(cfg, tmp_path, problem=problem, progress=False).drop_duplicates("run_id")
    assert sorted(again.loc[again["trained"], "run_id"]) == ids[:2]


def test_failed_run_is_recorded_and_the_sweep_goes_on(problem, tmp_path, monkeypatch):
    cfg = make_experiment({**BASE, "max_widen": 0})
    real = sweep_module.Run.advance

    def fail_at_batch_16(self):
        if self.cfg.batch_size == 16 and self.step > 5:
            raise RuntimeError("simulated out-of-memory")
        return real(self)

    monkeypatch.setattr(sweep_module.Run, "advance", fail_at_batch_16)
    table = run_sweep(cfg, tmp_path, problem=problem, progress=False)
    statuses = table.drop_duplicates("run_id").set_index("batch_examples")["status"]
    assert (statuses.loc[16] == "failed").all() and (statuses.loc[64] != "failed").all()
    summary = load_run_summary(run_dir(tmp_path, "tiny", table[table.batch_examples == 16].run_id.iloc[0]))
    assert "simulated out-of-memory" in summary["error"]


def test_budget_exhausted_when_goals_are_out_of_reach(problem, tmp_path):
    cfg = make_experiment({**BASE, "goals": [0.3, 0.0]}).run(64, 0.4, budget_examples=640)
    summary = train_run(problem, cfg, tmp_path, progress=False)
    assert summary["status"] == "budget_exhausted"
    assert summary["n_steps"] == 10 and summary["steps_to_goal"]["0.0"] is None


def test_goal_met_before_training_fails_clearly(problem, tmp_path):
    from gns_utils.experiments.config import ConfigError

    cfg = make_experiment({**BASE, "goals": [0.99, 0.15], "max_widen": 0})
    with pytest.raises(ConfigError, match=r"already met before training"):
        run_sweep(cfg, tmp_path, problem=problem, progress=False)
    runs = list((tmp_path / "tiny" / "runs").iterdir())
    assert runs and not any((run / "summary.json").exists() for run in runs)  # refused before any training step


def test_losing_rates_stop_early_and_the_best_runs_match_an_exhaustive_sweep(problem, tmp_path):
    base = {**BASE, "batch_sizes": [4, 8, 16], "lr_grid_size": 3, "lr_grid_spacing": 8.0, "max_widen": 0}
    table = run_sweep(make_experiment(base), tmp_path / "a", problem=problem, progress=False)
    full = run_sweep(make_experiment({**base, "exhaustive": True}), tmp_path / "b", problem=problem, progress=False)
    runs = table.drop_duplicates("run_id")
    pruned = runs[runs["status"] == "pruned"]
    assert len(pruned) >= 1  # the smallest rates (8x and 64x below the centre) are hopeless
    for _, run in pruned.iterrows():  # stopped only once each goal it had not reached was lost
        n_steps = load_run_summary(run_dir(tmp_path / "a", "tiny", run["run_id"]))["n_steps"]
        mine = table[table.run_id == run.run_id]
        for goal in mine.loc[mine["steps"].isna(), "goal"]:
            rivals = table[(table.batch_examples == run.batch_examples) & (table.goal == goal)]["steps"]
            assert rivals.min() <= n_steps
    columns = ["goal", "batch_units", "lr", "steps"]
    pd.testing.assert_frame_equal(best_runs(table, batch="batch_units")[columns],
                                  best_runs(full, batch="batch_units")[columns])
    examples = {name: sum(load_run_summary(run_dir(tmp_path / name, "tiny", r))["n_examples"]
                          for r in t["run_id"].unique()) for name, t in (("a", table), ("b", full))}
    assert examples["a"] < examples["b"]


def test_noise_method_per_example_for_linear_nets_micro_batches_otherwise(problem, tmp_path):
    exp = make_experiment(BASE)
    runs = {m: train_run(problem, exp.run(16, 0.2, noise_method=m, budget_examples=1600, goals=(-1.0,)), tmp_path,
                         progress=False) for m in ("auto", "micro_batch")}
    assert runs["auto"]["noise_method"] == "per_example" and runs["micro_batch"]["noise_method"] == "micro_batch"
    for summary in runs.values():
        assert summary["noise_steps"] == summary["n_steps"] == 100 and _resolved_or_none(summary["b_simple_final"])
    # one backward of 16 or two of 8: the same training up to float rounding, both estimators unbiased
    a, b = (load_metrics(tmp_path, "tiny", [s["run_id"]]) for s in runs.values())
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-4)


def test_both_noise_methods_measure_the_same_b_simple_at_fixed_weights(problem, tmp_path):
    # At a learning rate too small to move the weights, every step measures the same B_simple; the
    # ratio of the summed tr Σ and |G|^2 estimates over 400 steps has a standard error of ~2 % (per-example
    # norms) and ~6 % (two micro-batches), so a factor-2 slip in either method's wiring fails this.
    exp = make_experiment(BASE)
    values = {}
    for method in ("auto", "micro_batch"):
        summary = train_run(problem, exp.run(16, 1e-6, noise_method=method, budget_examples=6400, goals=(-1.0,)),
                            tmp_path, progress=False)
        log = load_metrics(tmp_path, "tiny", [summary["run_id"]])
        n = log["noise_steps"].fillna(0)
        values[method] = (log["trace_sigma_mean"].fillna(0) * n).sum() / (log["g2_mean"].fillna(0) * n).sum()
    assert values["auto"] == pytest.approx(values["micro_batch"], rel=0.2)

    gen = torch.Generator().manual_seed(0)
    images = ClassificationProblem((torch.rand(64, 1, 8, 8, generator=gen), torch.randint(0, 2, (64,), generator=gen)),
                                   "paper_cnn", {"in_channels": 1, "image_size": 8, "n_classes": 2,
                                                 "channels": (2, 2), "hidden": 4}, 32, torch.device("cpu"))
    cnn = make_experiment({**BASE, "task": "cnn", "model": "paper_cnn", "model_kwargs": {}, "batch_sizes": [4, 8, 16],
                           "goals": [0.4], "budget_examples": 64})
    assert train_run(images, cnn.run(8, 0.1), tmp_path, progress=False)["noise_method"] == "micro_batch"
    with pytest.raises(ConfigError, match="noise_method='per_example' cannot measure model 'paper_cnn'.*Conv2d"):
        run_sweep(make_experiment({**cnn.to_dict(), "noise_method": "per_example"}), tmp_path, images, progress=False)
    assert not (tmp_path / "cnn" / "experiment.json").exists()  # refused before the sweep wrote anything


def test_provenance_dirty_flag_ignores_the_results_folder(tmp_path, monkeypatch):
    import subprocess

    from gns_utils.experiments import store as results

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "out.json").write_text("{}\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(results, "repo_root", lambda: tmp_path)
    assert results.git_state()["git_dirty"] is False
    (tmp_path / "results" / "out.json").unlink()  # make reproduce rewriting its outputs
    assert results.git_state()["git_dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert results.git_state()["git_dirty"] is True


def _summary(lr, steps, status="complete"):
    return {"config": {"lr": lr}, "status": status,
            "steps_to_goal": {str(float(g)): s for g, s in zip((0.3, 0.15), steps)}}


def test_grid_widens_on_every_side_where_any_goal_is_best_at_the_edge():
    from gns_utils.experiments.sweep import sides_to_widen

    goals = (0.3, 0.15)
    middle_best = [_summary(0.1, [50, 200]), _summary(0.2, [40, 150]), _summary(0.4, [45, 180])]
    assert sides_to_widen(middle_best, goals) == []
    # first goal fine in the middle, the last goal fastest at the largest rate: widen upwards
    late_edge = [_summary(0.1, [50, 200]), _summary(0.2, [40, 150]), _summary(0.4, [45, 120])]
    assert sides_to_widen(late_edge, goals) == ["high"]
    both = [_summary(0.1, [30, 200]), _summary(0.2, [40, 150]), _summary(0.4, [45, 120])]
    assert sides_to_widen(both, goals) == ["high", "low"]
    # holes: nothing reached a goal
    diverged = [_summary(lr, [None, None], "diverged") for lr in (0.1, 0.2)]
    assert sides_to_widen(diverged, goals) == ["low"]
    too_slow = [_summary(lr, [None, None], "budget_exhausted") for lr in (0.1, 0.2)]
    assert sides_to_widen(too_slow, goals) == ["high"]
    mixed = [_summary(0.1, [None, None], "budget_exhausted"), _summary(0.2, [None, None], "diverged")]
    assert sides_to_widen(mixed, goals) == []


def test_grid_centre_follows_the_rates_found_at_smaller_batch_sizes():
    from gns_utils.experiments.sweep import predicted_lr
    from gns_utils.theory import lr_grid_centre

    cfg = make_experiment(BASE)
    assert predicted_lr(cfg, 16, {}) == pytest.approx(lr_grid_centre(16, 0.4, 16.0, 1.0))
    # one rate found: moved along the preset law
    law = lr_grid_centre(32, 0.4, 16.0, 1.0) / lr_grid_centre(16, 0.4, 16.0, 1.0)
    assert predicted_lr(cfg, 32, {16: 0.05}) == pytest.approx(0.05 * law)
    # a power law through the last three: ε ∝ B^0.5 → ×√2 per doubling
    assert predicted_lr(cfg, 64, {8: 0.1, 16: 0.1 * 2 ** 0.5, 32: 0.2}) == pytest.approx(0.2 * 2 ** 0.5)
    # slopes are clipped to [0, 1]: a rate that fell is held, one that grew faster than B grows like B
    assert predicted_lr(cfg, 64, {16: 0.3, 32: 0.1}) == pytest.approx(0.1)
    assert predicted_lr(cfg, 64, {16: 0.01, 32: 0.1}) == pytest.approx(0.2)


def test_sweep_with_every_rate_diverging_widens_downwards_until_one_trains(problem, tmp_path):
    cfg = make_experiment({**BASE, "batch_sizes": [4, 8, 16], "lr_star": 3000.0, "lr_grid_spacing": 8.0,
                           "max_widen": 6})
    table = run_sweep(cfg, tmp_path, problem=problem, progress=False)
    runs = table.drop_duplicates("run_id")
    at_4 = runs[runs["batch_examples"] == 4]
    assert (at_4["status"] == "diverged").any() and table[table.batch_examples == 4]["steps"].notna().any()


def test_run_stops_once_it_has_run_out_past_the_smoothed_metric_reaching_every_goal(problem, tmp_path):
    summary = train_run(problem, make_experiment(BASE).run(16, 0.2), tmp_path, progress=False)
    raw, smooth = summary["steps_to_goal_raw"]["0.15"], summary["steps_to_goal"]["0.15"]
    assert summary["status"] == "complete" and raw is not None and smooth is not None and smooth >= raw
    log = load_metrics(tmp_path, "tiny", [summary["run_id"]])
    # the first logged point at or past RUN_OUT × the step where the last goal was reached
    assert log["metric_step"].iloc[-1] >= RUN_OUT * smooth > log["metric_step"].iloc[-2]


def test_goal_metric_from_the_steps_batches_matches_the_evaluated_subset(problem, tmp_path):
    exp = make_experiment({**BASE, "goals": [0.3, 0.2], "eval_examples": 1024})
    free, evaluated = (train_run(problem, exp.run(16, 0.1, goal_source=source), tmp_path, progress=False)
                       for source in ("batches", "subset"))
    assert free["eval_examples_forwarded"] == 1024 and evaluated["n_evaluations"] > 10
    for goal in ("0.3", "0.2"):  # the same training: goals within a few logged points of each other
        assert free["steps_to_goal"][goal] == pytest.approx(evaluated["steps_to_goal"][goal], rel=0.35)
    log = load_metrics(tmp_path, "tiny", [free["run_id"]])
    later = log[log["step"] > 0]
    np.testing.assert_allclose(later["error"], later["train_error"])  # the mini-batch means, logged
    assert (later["metric_step"] < later["step"]).all()  # placed at the mean step of the weights they saw


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_subset_run_gives_the_steps_to_goal_the_same_training_logs_with_the_mini_batch_source(
        tiny_problem, tmp_path, optimizer):
    preset = dict(task="tiny", domain="image", dataset="synthetic", model="mlp", model_kwargs={"hidden": [16]},
                  optimizer=optimizer, metric="error", goals=[0.3, 0.15], batch_sizes=[4, 16, 64], lr_star=0.4,
                  lr_b_star=16.0, budget_examples=6000, eval_examples=256, evals_per_decade=12, profile="smoke")
    cfg = make_experiment(preset)
    lr = 0.3 if optimizer == "sgd" else 0.01
    batches = train_run(tiny_problem, cfg.run(16, lr, goal_source="batches"), tmp_path, progress=False)
    assert batches["status"] == "complete"
    subset_cfg = cfg.run(16, lr, goal_source="subset", goals=(0.3, 0.15, 0.0))  # trains on to its budget
    train_run(tiny_problem, subset_cfg, tmp_path, progress=False)
    metrics = pd.read_csv(run_dir(tmp_path, "tiny", subset_cfg.run_id) / "metrics.csv")
    both = steps_to_goals_both_sources(metrics, "error", (0.3, 0.15))
    np.testing.assert_allclose(both["batches"], [batches["steps_to_goal"][g] for g in ("0.3", "0.15")], rtol=1e-12)
    assert np.isfinite(both["subset"]).all() and not np.allclose(both["subset"], both["batches"])


def test_selected_points_name_the_hardest_goal_each_rate_won():
    from gns_utils.experiments.pipeline import selected_points

    rows = []  # B = 16: rate 0.4 wins the easy goal, 0.2 the hard one; B = 32: 0.4 wins both
    for batch, lr, steps in ((16, 0.4, (10, 90)), (16, 0.2, (14, 60)), (32, 0.4, (6, 40)), (32, 0.2, (9, 50))):
        for goal, s in zip((0.3, 0.15), steps):
            rows.append({"run_id": f"{batch}-{lr}", "batch_units": batch, "batch_examples": batch, "lr": lr,
                         "seed": 0, "goal": goal, "steps": float(s)})
    assert selected_points(pd.DataFrame(rows)) == [(16, 0.2, 0.15), (16, 0.4, 0.3), (32, 0.4, 0.15)]


def test_a_repeat_trains_only_up_to_the_last_goal_its_rate_was_selected_for(problem, tmp_path):
    cfg = make_experiment({**BASE, "seed": 1})
    table = sweep_module.run_selected(cfg, [(16, 0.2, 0.3), (16, 0.4)], tmp_path, problem=problem, progress=False)
    short, full = (table[table["lr"] == lr] for lr in (0.2, 0.4))
    assert sorted(short["goal"]) == [0.3] and sorted(full["goal"]) == [0.15, 0.3]
    assert short["status"].iloc[0] == "complete"
    summary = load_run_summary(run_dir(tmp_path, "tiny", short["run_id"].iloc[0]), short["run_id"].iloc[0])
    assert summary["config"]["goals"] == [0.3]
    with pytest.raises(ConfigError, match="not one of the experiment's goals"):
        sweep_module.run_selected(cfg, [(16, 0.2, 0.25)], tmp_path, problem=problem, progress=False)


def test_grid_repeats_train_the_main_sweeps_rates_at_every_batch_size(problem, tmp_path):
    from gns_utils.experiments.pipeline import main_rates

    main = run_sweep(make_experiment(BASE), tmp_path, problem=problem, progress=False)
    rates = main_rates(main)
    assert sorted(rates) == [4, 16, 64] and all(len(r) >= 2 for r in rates.values())
    repeat = run_sweep(make_experiment({**BASE, "seed": 1}), tmp_path, problem=problem, progress=False, record=False,
                       rates=rates)
    assert main_rates(repeat) == rates  # the same rates, none predicted or widened anew
    assert set(repeat["seed"]) == {1}
    only = run_sweep(make_experiment({**BASE, "seed": 1}), tmp_path, problem=problem, progress=False, record=False,
                     rates={16: rates[16]})
    assert main_rates(only) == {16: rates[16]} and not only["trained"].any()  # reused from the store


def test_refined_lrs_are_the_midpoints_around_each_goals_fastest_rate():
    def summary(lr, steps):
        return {"config": {"lr": lr}, "steps_to_goal": {"0.3": steps[0], "0.15": steps[1]}}

    runs = [summary(0.1, (30, 200)), summary(0.2, (20, 150)), summary(0.4, (10, None))]
    spacing = 2 ** 0.5  # 0.4 wins the easy goal, 0.2 the hard one
    expected = sorted({sweep_module.portable_lr(x) for x in (0.2 / spacing, 0.2 * spacing, 0.4 / spacing, 0.4 * spacing)})
    assert sweep_module.refined_lrs(runs, (0.3, 0.15), spacing) == expected
    cfg = make_experiment({**BASE, "lr_grid_spacing": 4.0, "lr_refine": 2})
    assert sweep_module.refine_spacings(cfg) == pytest.approx([2.0, 2 ** 0.5])
    with pytest.raises(ConfigError, match="lr_refine"):
        make_experiment({**BASE, "lr_refine": -1})


def test_a_refined_sweep_adds_the_midpoints_and_keeps_the_grid(problem, tmp_path):
    from gns_utils.experiments.pipeline import main_rates

    plain = main_rates(run_sweep(make_experiment(BASE), tmp_path, problem=problem, progress=False))
    refined = main_rates(run_sweep(make_experiment({**BASE, "lr_refine": 1}), tmp_path, problem=problem,
                                   progress=False))
    step = math.log(BASE.get("lr_grid_spacing", 2.0))
    first = min(plain)
    assert set(plain[first]) < set(refined[first])  # the grid's runs reused from the store, midpoints added
    for batch, lrs in refined.items():  # later grids may centre elsewhere: the best rates found moved
        gaps = np.diff(np.log(lrs))
        assert np.isclose(gaps.min(), step / 2, rtol=1e-3), f"no midpoint at B={batch}: {lrs}"
        assert all(np.isclose(g, step / 2, rtol=1e-3) or np.isclose(g, step, rtol=1e-3) for g in gaps)


def test_pooled_b_simple_is_the_median_over_runs_that_reached_the_last_goal(tmp_path):
    from gns_utils.experiments.pipeline import pooled_b_simple

    cfg = make_experiment(BASE)
    rows = []
    for run_id, seed, value, last in (("a", 0, 10.0, 50.0), ("b", 1, 30.0, 60.0), ("c", 1, 20.0, 70.0),
                                      ("d", 0, 1000.0, np.nan)):  # d never reached the last goal: left out
        folder = run_dir(tmp_path, "tiny", run_id)
        folder.mkdir(parents=True)
        pd.DataFrame({"step": [0, 10, 20, 40], "b_simple_ema": [np.nan, value, value, value]}).to_csv(
            folder / "metrics.csv", index=False)
        for goal, steps in ((0.3, 5.0), (0.15, last)):
            rows.append({"run_id": run_id, "seed": seed, "batch_units": 16, "goal": goal, "steps": steps})
    pooled = pooled_b_simple(pd.DataFrame(rows), tmp_path, cfg)
    # a constant noise scale averages to itself (App. D); seed 0 has 10, seed 1 the median of 30 and 20
    assert pooled == pytest.approx({"b_simple_pooled": 20.0, "b_simple_pooled_seed_min": 10.0,
                                    "b_simple_pooled_seed_max": 25.0, "b_simple_pooled_n_runs": 3})
