"""Stopping losing learning rates early: the rules on exact curves, a late flip, a real sweep, the stored runs."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gns_utils.critical_batch import best_runs
from gns_utils.experiments.compute import (closeness, compute_table, replay_stopping, sweep_runs,
                                           unneeded_by_closeness)
from gns_utils.experiments.config import make_experiment
from gns_utils.experiments.problems import make_problem
from gns_utils.experiments.profiles import presets
from gns_utils.experiments.stopping import Curve, can_still_win, replay
from gns_utils.experiments.sweep import run_sweep

RESULTS = Path(__file__).resolve().parents[1] / "results"
GOALS = (0.5, 0.3, 0.1)
STEPS = np.arange(1, 401, dtype=float)


def _curve(values, status=None):
    return Curve(steps=list(STEPS[: len(values)]), values=list(values), status=status)


def test_exact_rule_stops_a_run_only_once_every_goal_it_has_not_reached_is_lost():
    fast = np.exp(-STEPS / 40)  # reaches 0.5, 0.3, 0.1 at steps ≈ 28, 48, 92
    slow = np.exp(-STEPS / 80)  # twice as slow everywhere
    # at step 60 the fast run has reached 0.5 and 0.3 but not 0.1: the slow run could still win 0.1
    assert can_still_win(_curve(slow[:60]), [_curve(fast[:60])], GOALS)
    # once the fast run reached 0.1 (step 92) the slow run, not there yet, has lost every goal left
    assert not can_still_win(_curve(slow[:95]), [_curve(fast[:95])], GOALS)
    # a run that has reached every goal is not stopped by the rules: it runs out past its last goal
    # (RUN_OUT) and ends itself, so that the last goal's centred reading has points on both sides
    assert can_still_win(_curve(fast[:200]), [], GOALS)
    # the rival's curve counts only up to the member's own step (lockstep, replay and resume agree)
    assert can_still_win(_curve(slow[:60]), [_curve(fast)], GOALS)


def test_late_flip_keeps_the_slow_starter_that_wins_the_last_goal_and_the_margin_rule_can_drop_it():
    # a large rate: fast, then stuck on a noise floor at 0.15; a rate half as large: half as fast, floor 0.02
    large = 0.15 + 0.85 * np.exp(-STEPS / 20)
    small = 0.02 + 0.98 * np.exp(-STEPS / 40)
    curves = [(STEPS, large, "budget_exhausted"), (STEPS, small, "budget_exhausted")]
    stops = replay(curves, GOALS)
    winner_last = _curve(small).steps_to(GOALS[-1])[0]
    assert np.isfinite(winner_last) and stops[1] >= winner_last  # the small rate kept until it won 0.1
    assert stops[0] < STEPS[-1]  # the large rate stopped once the small one reached 0.1 first
    # the predictive margin rule sees the small rate 2x behind early on and would have dropped the winner
    assert replay(curves, GOALS, margin=1.5)[1] < winner_last


def _rate(values, lr, status=None):
    curve = _curve(values, status)
    curve.lr = lr
    return curve


def test_outpaced_rule_stops_a_larger_rate_once_a_smaller_one_beat_it_to_a_goal_by_the_factor():
    from gns_utils.experiments.stopping import OUTPACED_MIN_STEP

    small = np.exp(-STEPS / 100)  # reaches 0.5 at step ≈ 70, past OUTPACED_MIN_STEP
    large = np.exp(-STEPS / 160)  # a larger rate, 1.6x slower to every level
    reach = _curve(small).steps_to(0.5)[0]
    assert reach >= OUTPACED_MIN_STEP
    t = int(np.ceil(1.5 * reach)) + 1  # the large rate has not reached 0.5 yet, 1.5x the small one's steps
    assert not np.isfinite(_curve(large[:t]).steps_to(0.5)[0])
    own, rival = _rate(large[:t], lr=0.2), _rate(small[:t], lr=0.1)
    assert can_still_win(own, [rival], GOALS)  # the exact rule alone keeps it: 0.3 and 0.1 are still open
    assert not can_still_win(own, [rival], GOALS, outpaced=1.5)
    # beaten by less than the factor so far: kept
    early = int(np.floor(1.4 * reach))
    assert can_still_win(_rate(large[:early], lr=0.2), [_rate(small[:early], lr=0.1)], GOALS, outpaced=1.5)
    # the rule never stops the smaller rate, nor counts a smaller rate that diverged
    assert can_still_win(_rate(large[:t], lr=0.05), [_rate(small[:t], lr=0.1)], GOALS, outpaced=1.5)
    assert can_still_win(own, [_rate(small[:t], lr=0.1, status="diverged")], GOALS, outpaced=1.5)


def test_outpaced_rule_ignores_goals_a_smaller_rate_reached_within_the_first_steps():
    # Adam-like start: the smaller rate is ahead at first (0.5 at step ≈ 10), the larger catches up by 0.3
    small = np.exp(-STEPS / 14)
    large = np.where(STEPS < 20, np.exp(-STEPS / 60), np.exp(-(STEPS - 20) / 8 - 20 / 60))
    assert _curve(small).steps_to(0.5)[0] < 20
    assert can_still_win(_rate(large[:18], lr=0.2), [_rate(small[:18], lr=0.1)], (0.5, 0.3, 0.01), outpaced=1.5)


def test_outpaced_rule_keeps_a_late_flip_towards_the_smaller_rate_and_drops_one_towards_the_larger():
    # towards the smaller rate (SGD's noise floor): the smaller rate is never stopped by the rule
    large = 0.15 + 0.85 * np.exp(-STEPS / 20)
    small = 0.02 + 0.98 * np.exp(-STEPS / 40)
    stops = replay([(STEPS, large, "budget_exhausted"), (STEPS, small, "budget_exhausted")], GOALS,
                   outpaced=1.5, lrs=[0.2, 0.1])
    assert stops[1] >= _curve(small).steps_to(GOALS[-1])[0]
    # the rule's assumption broken: a larger rate, behind by 2x at 0.5, then overtaking, is dropped
    slow_start = np.where(STEPS < 150, np.exp(-STEPS / 200), np.exp(-150 / 200 - (STEPS - 150) / 20))
    steady = np.exp(-STEPS / 100)
    stops = replay([(STEPS, slow_start, "budget_exhausted"), (STEPS, steady, "budget_exhausted")], GOALS,
                   outpaced=1.5, lrs=[0.2, 0.1])
    assert _curve(slow_start).steps_to(GOALS[-1])[0] < _curve(steady).steps_to(GOALS[-1])[0]  # it wins 0.1
    assert stops[0] < _curve(slow_start).steps_to(GOALS[-1])[0]  # yet the rule stopped it first


def test_margin_rule_ignores_a_rival_that_diverged():
    fast = np.exp(-STEPS / 20)
    slow = np.exp(-STEPS / 80)
    assert not can_still_win(_curve(slow[:100]), [_curve(fast[:100])], (0.5, 0.001), margin=2.0)
    assert can_still_win(_curve(slow[:100]), [_curve(fast[:100], status="diverged")], (0.5, 0.001), margin=2.0)


def test_sweep_with_a_late_flip_keeps_the_best_runs_of_an_exhaustive_sweep(tmp_path):
    # noisy linear regression: large rates reach the easy goals first, small ones the goal near the floor
    preset = presets("synthetic", "smoke")[0]
    preset.update(lr_star=1.5, lr_b_star=64.0, goals=[0.7, 0.56, 0.51], batch_sizes=[8, 16, 32], lr_grid_size=3,
                  lr_grid_spacing=2.0, max_widen=0, budget_examples=20_000, seeds=[])
    cfg = make_experiment(preset)
    problem = make_problem(cfg)
    table = run_sweep(cfg, tmp_path / "stopped", problem=problem, progress=False)
    full = run_sweep(make_experiment({**preset, "exhaustive": True}), tmp_path / "full", problem=problem,
                     progress=False)
    best = best_runs(table, batch="batch_units")
    flips = best.groupby("batch_units")["lr"].nunique()
    assert (flips > 1).any(), best  # the ranking of rates does flip between goals
    columns = ["goal", "batch_units", "lr", "steps"]
    pd.testing.assert_frame_equal(best[columns], best_runs(full, batch="batch_units")[columns])
    assert (table.drop_duplicates("run_id")["status"] == "pruned").any()


def _committed_tasks():
    if not (RESULTS / "summary.json").exists():
        return []
    return [p.parent.name for p in sorted(RESULTS.glob("*/experiment.json"))]


@pytest.mark.parametrize("task", _committed_tasks())
def test_replaying_the_stopping_rule_on_the_committed_runs_keeps_every_best_run(task):
    replayed = replay_stopping(RESULTS, task)
    assert replayed["kept_every_best"], replayed["dropped"]
    table = compute_table(RESULTS, [task])
    assert replayed["examples_trained"] <= table["examples_trained"].iloc[0] + 1e-6
    unneeded = unneeded_by_closeness(sweep_runs(RESULTS, task))
    assert unneeded.sum() == pytest.approx(1 - table["share_needed"].iloc[0])
    assert json.loads((RESULTS / task / "experiment.json").read_text())["task"] == task


@pytest.mark.skipif("fashion_mnist_mlp_sgd" not in _committed_tasks(), reason="no committed SGD sweep")
def test_a_predictive_margin_replayed_drops_fastest_runs_and_says_how_far_b_crit_moves():
    goals = json.loads((RESULTS / "fashion_mnist_mlp_sgd" / "experiment.json").read_text())["goals"]
    exact = replay_stopping(RESULTS, "fashion_mnist_mlp_sgd")
    assert exact["b_crit_shift"] == {str(g): 0.0 for g in goals}
    margin = replay_stopping(RESULTS, "fashion_mnist_mlp_sgd", margin=1.5)
    assert margin["dropped"] and set(margin["b_crit_shift"]) == {str(g) for g in goals}
    shifts = [z for z in margin["b_crit_shift"].values() if z is not None]
    assert shifts and any(abs(z) > 0.1 for z in shifts)  # refitted without the runs it cut short


def test_runs_trained_side_by_side_match_runs_trained_alone(tmp_path):
    # the synthetic problem draws fresh examples: each run must own its stream, or lockstep would interleave them
    from gns_utils.experiments.sweep import train_group
    from gns_utils.experiments.train import train_run

    preset = presets("synthetic", "smoke")[0]
    preset.update(goals=[0.7, 0.6], budget_examples=2_000, seeds=[], exhaustive=True)
    exp = make_experiment(preset)
    problem = make_problem(exp)
    cfgs = [exp.run(8, lr) for lr in (0.05, 0.1)]
    together = train_group(problem, cfgs, tmp_path / "group", exp.goals, exhaustive=True, progress=False)
    for cfg, summary in zip(cfgs, together):
        alone = train_run(problem, cfg, tmp_path / "alone", progress=False)
        assert summary["steps_to_goal"] == alone["steps_to_goal"] and summary["n_steps"] == alone["n_steps"]


@pytest.mark.parametrize("task", _committed_tasks())
def test_the_outpaced_rule_replayed_on_the_committed_runs_moves_no_b_crit_by_a_standard_error(task):
    replayed = replay_stopping(RESULTS, task, outpaced=1.5)
    shifts = [abs(z) for z in replayed["b_crit_shift"].values() if z is not None]
    assert max(shifts, default=0.0) < 1.0, (replayed["dropped"], replayed["b_crit_shift"])
    assert replayed["examples_trained"] <= replay_stopping(RESULTS, task)["examples_trained"] + 1e-6


def _summary(run_id, lr, steps_to_goal, n_steps, batch=10):
    return {"run_id": run_id, "status": "pruned", "batch_units": batch, "n_steps": n_steps,
            "config": {"batch_size": batch, "lr": lr, "seed": 0, "task": "t"}, "steps_to_goal": steps_to_goal}


def test_unneeded_examples_split_by_closeness_to_the_fastest_run():
    runs = [
        _summary("a", 0.1, {"1": 10.0, "2": 40.0}, 40),    # fastest at goal 1 (needs 10 steps), trained 40
        _summary("b", 0.05, {"1": 12.0, "2": 36.0}, 40),   # fastest at the last goal 2: needs 36 × RUN_OUT = 45, has 40
        _summary("c", 0.2, {"1": 10.5, "2": None}, 30),    # never fastest, 5 % behind at goal 1
        _summary("d", 0.4, {"1": 13.0, "2": None}, 20),    # 30 % behind
        _summary("e", 0.01, {"1": None, "2": None}, 40),   # no goal
    ]
    frame = closeness(runs).set_index("run_id")
    np.testing.assert_allclose(frame["closeness"], [1.0, 1.0, 1.05, 1.3, np.inf])
    np.testing.assert_allclose(frame["examples_needed"], [100, 400, 0, 0, 0])
    shares = unneeded_by_closeness(runs)
    total = (40 + 40 + 30 + 20 + 40) * 10
    expected = {"fastest at a goal": (300 + 0) / total, "within 10 %": 300 / total, "10–25 %": 0.0,
                "25–50 %": 200 / total, "further or no goal": 400 / total}
    assert list(shares.index) == list(expected)
    np.testing.assert_allclose(shares.to_numpy(), list(expected.values()))
    assert shares.sum() == pytest.approx(1 - 500 / total)  # everything but the share the fits need
