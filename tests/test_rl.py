"""Reinforcement learning (A2C): returns, the per-frame noise scale, the learner, the goal metric, Atari."""

import math

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from gns_utils.experiments import rl
from gns_utils.experiments.config import ConfigError, make_experiment
from gns_utils.experiments.problems import make_problem
from gns_utils.experiments.profiles import presets
from gns_utils.experiments.stopping import Curve, can_still_win
from gns_utils.experiments.train import train_run
from gns_utils.noise import PerExampleNormMonitor, per_example_estimate

GAMMA = 0.9


class CountdownEnv(gym.vector.VectorEnv):
    """Deterministic episodes: environment i ends after ``lengths[i]`` steps, each with reward 1;
    it terminates (or, with ``truncate``, is truncated) and resets on the next step (next-step autoreset).
    The observation is the step count within the episode."""

    def __init__(self, lengths, truncate=False):
        self.num_envs = len(lengths)
        self.lengths = np.asarray(lengths)
        self.truncate = truncate
        self.single_observation_space = gym.spaces.Box(0, 100, (1,), np.float32)
        self.single_action_space = gym.spaces.Discrete(2)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)
        self.metadata = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}

    def reset(self, seed=None, options=None):
        self.t = np.zeros(self.num_envs, int)
        self.prev_done = np.zeros(self.num_envs, bool)
        return self.t[:, None].astype(np.float32), {}

    def step(self, actions):
        reward = np.ones(self.num_envs, np.float32)
        self.t = self.t + 1
        done = self.t >= self.lengths
        reward[self.prev_done] = 0.0
        self.t[self.prev_done] = 0
        done[self.prev_done] = False
        self.prev_done = done
        terminated, truncated = (np.zeros_like(done), done) if self.truncate else (done, np.zeros_like(done))
        return self.t[:, None].astype(np.float32), reward, terminated, truncated, {}


class ConstantValue(nn.Module):
    """A uniform policy over 2 actions and the value V(s) = c, with a parameter so it trains."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.bias = nn.Parameter(torch.zeros(2))

    def forward(self, obs):
        n = len(obs)
        return self.bias.expand(n, 2), torch.full((n,), float(self.c))


def _problem(monkeypatch, env):
    monkeypatch.setattr(rl, "make_vector_env", lambda env_id, n: gym.wrappers.vector.RecordEpisodeStatistics(env))
    problem = rl.RLProblem.__new__(rl.RLProblem)
    problem.env_id, problem.device, problem.rollout_steps, problem.gamma = "countdown", torch.device("cpu"), 5, GAMMA
    problem.entropy_coef, problem.value_coef, problem.clip_rewards, problem.window = 0.01, 0.5, False, 10
    return problem


@pytest.mark.parametrize("truncate", [False, True])
def test_k_step_returns_cut_at_episode_ends_and_mask_the_reset_step(monkeypatch, truncate):
    c = 2.0
    problem = _problem(monkeypatch, CountdownEnv([3, 10], truncate=truncate))
    stream = rl.Rollouts(problem, ConstantValue(c), 2, seed=0)
    obs, actions, returns, valid = stream.play(5)
    assert obs.shape == (2, 5, 1) and actions.shape == returns.shape == valid.shape == (2, 5)  # one row per env
    # env 0: steps 1-3 of an episode that ends at step 3, step 4 only resets, step 5 is step 1 of the next
    end = GAMMA * c if truncate else 0.0  # truncation bootstraps from V(final observation); termination does not
    r3 = 1 + end
    r2 = 1 + GAMMA * r3
    r1 = 1 + GAMMA * r2
    r5 = 1 + GAMMA * c
    # env 1: five steps of a long episode, bootstrapped from V(s_6) = c
    long = [sum(GAMMA**j for j in range(5 - t)) + GAMMA ** (5 - t) * c for t in range(5)]
    np.testing.assert_array_equal(valid.numpy(), [[1, 1, 1, 0, 1], [1, 1, 1, 1, 1]])
    np.testing.assert_allclose(returns[0, [0, 1, 2, 4]].numpy(), [r1, r2, r3, r5], rtol=1e-6)
    np.testing.assert_allclose(returns[1].numpy(), long, rtol=1e-6)
    np.testing.assert_array_equal(obs[0, :, 0].numpy(), [0, 1, 2, 3, 0])  # the reset step sees the final state
    assert stream.episodes == 1 and stream.mean_return() == 3.0


def _hooks(problem, model, batch, module):
    """The per-example monitor's estimate on ``module`` for one training backward of the A2C loss."""
    monitor = PerExampleNormMonitor(module)
    model.zero_grad()
    with monitor.capture():
        loss = problem.loss(model, batch)
    loss.backward()
    monitor.after_micro_batch(problem.units(batch))
    estimate = monitor.after_step()
    monitor.remove()
    return estimate


def _func(problem, model, batch, loss_fn):
    """torch.func's per-sample-gradient estimate for ``loss_fn``, one sample per environment segment."""
    targets = torch.stack([batch[1].float(), batch[2], batch[3]], -1)

    def segment_loss(outputs, packed):  # the same loss, with (action, return, valid) packed as targets
        return loss_fn(lambda _: outputs, (None, packed[..., 0].long(), packed[..., 1], packed[..., 2]))

    return per_example_estimate(model, segment_loss, batch[0], targets, units_per_example=problem.rollout_steps,
                                method="func")


@pytest.mark.parametrize("which", ["loss", "policy"])
def test_segment_noise_of_the_a2c_loss_matches_torch_func_per_sample_gradients(which):
    """The monitor's per-segment norms (hooks, one backward) against torch.func's per-sample gradients, for the
    whole loss and for the policy network alone (its own monitor, as trained, against the policy's loss)."""
    cfg = make_experiment(presets("rl", "smoke")[0])
    problem = make_problem(cfg, "cpu")
    torch.manual_seed(0)
    model = problem.build_model()
    batch = problem.stream(model, 16, seed=3).play(40)[:4]  # long segments: episodes end and reset inside
    batch = tuple(t[:, -5:] for t in batch)
    assert (batch[3] == 0).any(), "the test batch should hold a reset step"
    if which == "loss":
        hooks, func = _hooks(problem, model, batch, model), _func(problem, model, batch, problem.loss)
    else:  # the policy tower's monitor sees the whole loss's backward; its gradient is the policy loss's
        hooks = _hooks(problem, model, batch, problem.noise_parts(model)["policy"])
        func = _func(problem, model, batch, problem.policy_loss)
    assert hooks.b_small == func.b_small == 5 and hooks.b_big == func.b_big == 80  # frames
    assert float(hooks.g2) == pytest.approx(float(func.g2), rel=1e-4, abs=1e-7)
    assert float(hooks.trace_sigma) == pytest.approx(float(func.trace_sigma), rel=1e-4)


def test_the_learner_reaches_the_documented_return_on_cartpole(tmp_path):
    """Regression: at seed 0, 8 environments (40 frames per update) and RMSProp at 2e-3, the mean return
    of the last 20 episodes reaches 200 within 20,000 frames."""
    cfg = make_experiment(presets("rl", "cpu")[0], {"goals": [50.0, 100.0, 200.0], "budget_examples": 4000,
                                                    "seeds": []})
    problem = make_problem(cfg, "cpu")
    summary = train_run(problem, cfg.run(8, 2e-3), tmp_path, progress=False)
    assert summary["status"] == "complete" and summary["batch_units"] == 40
    frames = summary["steps_to_goal"]["200.0"] * summary["batch_units"]
    assert frames <= 20_000, frames
    b_simple = summary["b_simple_final"]  # None where the moving average of the sampled |G|^2 is <= 0 (by chance)
    assert summary["noise_method"] == "per_example" and (b_simple is None or math.isfinite(b_simple) and b_simple > 0)
    metrics = pd.read_csv(tmp_path / cfg.task / "runs" / summary["run_id"] / "metrics.csv")
    assert metrics["noise_steps_policy"].sum() == summary["n_steps"]  # the policy's own noise at every step
    assert metrics["return"].dropna().iloc[-1] >= 200


def test_return_goals_are_reached_upwards():
    curve = Curve(steps=[1.0, 2.0, 3.0, 4.0], values=[10.0, 30.0, 60.0, 90.0], direction="above")
    steps = curve.steps_to([20.0, 200.0])
    assert 1.0 < steps[0] < 3.0 and math.isinf(steps[1])
    slow = Curve(steps=[1.0, 2.0, 3.0, 4.0], values=[5.0, 6.0, 7.0, 8.0], direction="above")
    assert not can_still_win(slow, [curve], [20.0, 50.0])  # both goals were reached sooner by the rival
    assert can_still_win(slow, [curve], [20.0, 100.0])


def test_rl_configs_are_checked_before_any_environment_is_made():
    preset = presets("rl", "cpu")[0]
    with pytest.raises(ConfigError, match="goals must increase"):
        make_experiment(preset, {"goals": [200.0, 100.0]})
    with pytest.raises(ConfigError, match="only it, has metric='return'"):
        make_experiment(preset, {"metric": "loss"})
    with pytest.raises(ConfigError, match="arch must be"):
        make_experiment(preset, {"model_kwargs": {"arch": "conv"}})
    with pytest.raises(ValueError, match="unknown environment"):
        rl.make_vector_env("NoSuchEnv-v0", 2)


def test_atari_runs_on_the_real_roms_for_a_few_hundred_frames(tmp_path):
    """The paper profile starts: ale-py's Pong (its ROM ships with it), standard preprocessing, the CNN
    actor-critic, noise from micro-batches, clipping after the measurement."""
    preset = next(p for p in presets("rl", "paper") if p["dataset"] == "ALE/Pong-v5")
    cfg = make_experiment(preset, {"budget_examples": 80, "batch_sizes": [2, 4, 8], "device": "cpu"})
    problem = make_problem(cfg, "cpu")
    assert problem.obs_shape == (4, 84, 84) and problem.clip_rewards
    summary = train_run(problem, cfg.run(4, 7e-4), tmp_path, progress=False)
    assert summary["status"] == "budget_exhausted" and summary["n_steps"] == 20  # 20 updates × 20 frames
    assert summary["batch_units"] == 20 and summary["noise_method"] == "micro_batch" and summary["noise_steps"] == 20
