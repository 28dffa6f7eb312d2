"""Reinforcement learning: synchronous advantage actor-critic (A2C), the paper's Atari row.

One update of A2C uses ``n`` parallel environments × ``k`` steps (the paper: k = 5), so its
batch is B = n·k **frames**. A sweep's ``batch_size`` counts environments; B, B_crit and
B_simple are in frames (``units_per_example = k``), as in Table 1.

* Environments come from the ecosystem: gymnasium's vector environments
  (:func:`make_vector_env`: the numpy-vectorised ``CartPole-v1`` and other classic-control
  tasks) and, for ``ALE/<Game>-v5`` ids, ``ale_py``'s vectorised Atari environments with the
  standard preprocessing (frame skip 4 with max-pooling, 84×84 grey, 4 stacked frames, up to
  30 no-op starts); episode returns are recorded by gymnasium's ``RecordEpisodeStatistics``.
* :class:`Rollouts` is a run's experience stream: its own environments, acting with its own
  model; each :meth:`Rollouts.draw` plays ``k`` steps and returns the update's frames with
  their k-step bootstrapped returns.
* :class:`RLProblem` is the problem the sweep trains (:mod:`gns_utils.experiments.problems`):
  the A2C loss per frame (policy gradient with the advantage R − V(s), an entropy bonus and a
  squared-error value loss), averaged over the batch's frames; the goal metric is the mean
  return of the last ``window`` episodes (``goal_source="episodes"``).

Frames within a rollout are correlated (one environment's k consecutive frames share a
trajectory), so they are not independent samples; the environments are. A batch therefore
keeps one row per environment ([n, k, ...]) and the loss is a mean of per-environment losses,
so the per-example gradient norms of the update's one backward
(:class:`gns_utils.noise.PerExampleNormMonitor`, MLP policies) are those of whole environment
segments, and B_simple comes out in frames (k frames per segment). The checkpoint measurement
(:func:`gns_utils.experiments.train.checkpoint`) reports B_simple on the same frames from groups
of whole segments (``b_simple_checkpoint``) and from groups of shuffled frames
(``b_simple_frames``, as if frames were independent): their ratio says how much the correlation
matters. The value loss, whose gradient is large and consistent while the value estimates lag
the improving returns, can dominate the noise scale of the whole loss, so the policy network's
own noise scale is measured too: at every step (:meth:`RLProblem.noise_parts`, columns
``*_policy_*`` of ``metrics.csv``) and at each checkpoint (``b_simple_policy``).
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any, Mapping

import gymnasium as gym
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from gns_utils.experiments.models import build_model

#: The paper's Atari games (Table 1).
ATARI_GAMES = ("Alien", "BeamRider", "Breakout", "Pong", "Qbert", "Seaquest", "SpaceInvaders")
#: Steps every measurement environment plays before its frames are used, so they come from the
#: policy's own state distribution rather than from fresh episode starts.
MEASUREMENT_WARMUP = 200

Batch = tuple[torch.Tensor, ...]


def make_vector_env(env_id: str, num_envs: int) -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``env_id`` as one vector environment that records episode returns.

    ``ALE/<Game>-v5``: ``ale_py.vector_env.AtariVectorEnv`` (standard preprocessing, raw rewards:
    clipping is the learner's); any other id: gymnasium's own vectorised implementation where the
    environment has one (CartPole), else a synchronous vector of single environments. Every
    environment resets automatically on the step after its episode ends.

    Raises:
        ValueError: an unknown environment id (the message lists how to find valid ones).
    """
    if env_id.startswith("ALE/"):
        from ale_py.vector_env import AtariVectorEnv

        name = env_id[len("ALE/"):].split("-")[0]
        game = re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()  # "SpaceInvaders" -> "space_invaders"
        env = AtariVectorEnv(game, num_envs, reward_clipping=False, num_threads=min(num_envs, 4))
    else:
        try:
            spec = gym.spec(env_id)
        except gym.error.Error as err:
            raise ValueError(f"unknown environment {env_id!r} ({err}); see gymnasium.pprint_registry() for "
                             "the installed ids, or 'ALE/<Game>-v5' for Atari") from err
        mode = "vector_entry_point" if spec.vector_entry_point is not None else "sync"
        env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=mode)
    return gym.wrappers.vector.RecordEpisodeStatistics(env, buffer_length=1)


class Rollouts:
    """A run's experience: ``num_envs`` environments acting with ``model``, ``steps`` at a time.

    Args:
        problem: the :class:`RLProblem` (environment id, k, γ, reward clipping, return window).
        model: the run's actor-critic; actions are sampled from its policy.
        num_envs: parallel environments n (B = n · k frames).
        seed: seeds the environments and the action sampling.
    """

    epoch = 0  # passes over a dataset: none here (metrics.csv keeps the column)

    def __init__(self, problem: "RLProblem", model: nn.Module, num_envs: int, seed: int) -> None:
        self.problem, self.model, self.num_envs = problem, model, num_envs
        self.env = make_vector_env(problem.env_id, num_envs)
        self.obs, _ = self.env.reset(seed=seed)
        self.just_ended = np.zeros(num_envs, dtype=bool)
        self.generator = torch.Generator(device=problem.device).manual_seed(seed)
        self.recent: deque[float] = deque(maxlen=problem.window)
        self.episodes = 0

    def mean_return(self) -> float:
        """Mean return of the last ``window`` episodes (NaN before the first one ended)."""
        return float(np.mean(self.recent)) if self.recent else float("nan")

    def _tensor(self, obs: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(obs, device=self.problem.device)

    @torch.no_grad()
    def play(self, steps: int) -> Batch:
        """Play ``steps`` steps in every environment; the update's frames, one row per environment.

        Returns ``(observations [n, k, ...], actions [n, k], returns [n, k], valid [n, k])``. A step that
        only resets an environment whose episode ended on the step before (gymnasium's next-step
        autoreset) is not valid (weight 0 in the loss). Returns are k-step bootstrapped:
        R_t = r_t + γ R_{t+1}, cut at a terminal state, from V(final observation) at a time-limit
        truncation, and from V(s_{t+k}) after the last step.
        """
        p, device = self.problem, self.problem.device
        obs, actions, rewards, nonterminal, valid, cut_values = [], [], [], [], [], []
        for _ in range(steps):
            x = self._tensor(self.obs)
            logits, _ = self.model(x)
            action = torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=self.generator).squeeze(1)
            next_obs, reward, terminated, truncated, info = self.env.step(action.cpu().numpy())
            ok = ~self.just_ended
            ended = (terminated | truncated) & ok
            if "_episode" in info:
                for i in np.flatnonzero(info["_episode"]):
                    self.recent.append(float(info["episode"]["r"][i]))
                    self.episodes += 1
            cut = np.zeros(self.num_envs, dtype=np.float32)  # the value a truncated episode bootstraps from
            if (truncated & ~terminated & ok).any():
                cut = np.where(truncated & ~terminated & ok, self.model(self._tensor(next_obs))[1].float().cpu().numpy(),
                               0.0).astype(np.float32)
            obs.append(x)
            actions.append(action)
            rewards.append(np.sign(reward) if p.clip_rewards else reward)
            nonterminal.append(~ended)
            valid.append(ok)
            cut_values.append(cut)
            self.just_ended = terminated | truncated
            self.obs = next_obs
        bootstrap = self.model(self._tensor(self.obs))[1].float().cpu().numpy()
        returns = np.zeros((steps, self.num_envs), dtype=np.float32)
        running = bootstrap
        for t in reversed(range(steps)):
            running = rewards[t] + p.gamma * np.where(nonterminal[t], running, cut_values[t])
            returns[t] = running
        return (torch.stack(obs, 1), torch.stack(actions, 1), torch.as_tensor(returns.T.copy(), device=device),
                torch.as_tensor(np.stack(valid, 1), dtype=torch.float32, device=device))

    def draw(self) -> Batch:
        """The next update's frames: ``k`` steps of every environment."""
        return self.play(self.problem.rollout_steps)

    def close(self) -> None:
        self.env.close()


class RLProblem:
    """A2C on a vector environment, as the sweep trains it (see the module docstring).

    Args:
        env_id: gymnasium id (``"CartPole-v1"``) or ``"ALE/<Game>-v5"``.
        model / model_kwargs: the network (``actor_critic``); observation shape and action
            count are filled in from the environment.
        rollout_steps: k, steps per environment per update (B = environments × k frames).
        gamma: discount γ.
        entropy_coef / value_coef: weights of the entropy bonus and the value loss.
        clip_rewards: train on sign(reward) (Atari); returns are reported unclipped.
        window: episodes behind the mean return (the goal metric).
    """

    on_policy = True  # the measurement batches are played by the model being measured

    def __init__(self, env_id: str, model: str, model_kwargs: Mapping[str, Any], device: torch.device,
                 rollout_steps: int = 5, gamma: float = 0.99, entropy_coef: float = 0.01, value_coef: float = 0.5,
                 clip_rewards: bool = False, window: int = 20) -> None:
        self.env_id, self.device = env_id, device
        self.rollout_steps, self.gamma = int(rollout_steps), float(gamma)
        self.entropy_coef, self.value_coef = float(entropy_coef), float(value_coef)
        self.clip_rewards, self.window = bool(clip_rewards), int(window)
        probe = make_vector_env(env_id, 1)
        space = probe.single_action_space
        probe.close()
        if not isinstance(space, gym.spaces.Discrete):
            raise ValueError(f"{env_id} has action space {space}; the A2C learner here needs discrete actions")
        self.obs_shape = tuple(int(d) for d in probe.single_observation_space.shape)
        self.model_name = model
        self.model_kwargs = {"obs_shape": list(self.obs_shape), "n_actions": int(space.n), **dict(model_kwargs)}
        self.units_per_example = self.rollout_steps
        self.n_train = 2**62  # experience is unlimited

    def build_model(self, model: str | None = None, model_kwargs: Mapping[str, Any] | None = None) -> nn.Module:
        kwargs = {**self.model_kwargs, **dict(model_kwargs or {})}
        return build_model(model or self.model_name, **kwargs).to(self.device)

    def stream(self, model: nn.Module, num_envs: int, seed: int) -> Rollouts:
        """A run's experience stream (:class:`Rollouts`)."""
        return Rollouts(self, model, num_envs, seed)

    def units(self, batch: Batch) -> int:
        """Frames in ``batch``: environments × k (the unit of B here)."""
        return int(batch[0].shape[0]) * self.rollout_steps

    def _per_frame(self, model: nn.Module, batch: Batch, value_coef: float) -> torch.Tensor:
        obs, actions, returns, valid = batch
        logits, values = model(obs)
        logp = F.log_softmax(logits.float(), -1)
        advantage = (returns - values.float()).detach()
        policy = -logp.gather(-1, actions[..., None]).squeeze(-1) * advantage
        entropy = -(logp.exp() * logp).sum(-1)
        loss = policy - self.entropy_coef * entropy
        if value_coef:
            loss = loss + value_coef * (returns - values.float()).pow(2)
        return loss * valid

    def loss(self, model: nn.Module, batch: Batch, metrics: dict[str, float] | None = None) -> torch.Tensor:
        """A2C loss: −log π(a|s) (R − V(s)) − c_H H(π(·|s)) + c_V (R − V(s))² per frame, the advantage held
        constant, summed over an environment's valid frames and divided by k (a mean over frames), then
        averaged over environments: a mean of per-environment losses, so per-example gradient norms are
        those of whole environment segments (independent, unlike the frames within one)."""
        return self._per_frame(model, batch, self.value_coef).sum(1).mean() / self.rollout_steps

    def policy_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The policy's part of :meth:`loss` (no value term): its gradient is the policy network's alone."""
        return self._per_frame(model, batch, 0.0).sum(1).mean() / self.rollout_steps

    def noise_parts(self, model: nn.Module) -> dict[str, nn.Module]:
        """Parts of the network whose noise scale is measured on their own at every step: the policy
        network of an MLP actor-critic (its gradient is that of the policy's part of the loss alone)."""
        return {"policy": model.policy} if getattr(model, "arch", None) == "mlp" else {}

    def shuffle_frames(self, batch: Batch, generator: torch.Generator) -> Batch:
        """The same frames with the environment segments broken up: frames permuted across rows."""
        n, k = batch[1].shape
        order = torch.randperm(n * k, generator=generator).to(self.device)
        return tuple(t.reshape(n * k, *t.shape[2:]).index_select(0, order).reshape(t.shape) for t in batch)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Nothing to evaluate before the first update: the goal metric comes from the run's episodes."""
        return {"loss": float("nan"), "return": float("nan")}

    def measurement_batch(self, n: int, index: int = 0, model: nn.Module | None = None) -> Batch:
        """``n`` environment segments (``n · k`` frames, environment-major: each environment's ``k`` frames
        together) played by ``model`` in environments apart from the runs', after :data:`MEASUREMENT_WARMUP`
        steps; ``index`` seeds them."""
        if model is None:
            raise ValueError("the measurement frames of a reinforcement-learning problem are played by a model: "
                             "pass model=")
        stream = Rollouts(self, model, n, seed=10_000 + index)
        stream.play(MEASUREMENT_WARMUP)
        batch = stream.draw()
        stream.close()
        return batch

    def hessian_batch(self, n: int, index: int = 0) -> None:
        """None: the A2C loss depends on the data the policy itself collects (no fixed Hessian batch)."""
        return None


def noise_by_goal(summary: Mapping[str, Any]) -> pd.DataFrame:
    """B_crit per goal beside the noise scales of an RL task, all in frames (from its ``summary.json``).

    ``b_simple_local_median`` / ``b_simple_policy_local_median``: B_simple of the whole loss / of the
    policy network alone, summed around the step where each batch size's fastest run reached the goal
    (median over batch sizes; per environment segment); ``b_simple_segments`` / ``b_simple_frames``:
    the reference run's checkpoint, on the same frames grouped by whole environment segments / shuffled
    (as if frames were independent), and their ratio; ``b_simple_policy_checkpoint``: the policy's part
    of the loss at the checkpoint.
    """
    goals = pd.DataFrame(summary["goals"])
    renames = {"b_simple_checkpoint": "b_simple_segments", "b_simple_policy": "b_simple_policy_checkpoint"}
    goals = goals.rename(columns=renames)
    if {"b_simple_frames", "b_simple_segments"} <= set(goals):
        goals["frames_over_segments"] = goals["b_simple_frames"] / goals["b_simple_segments"]
    columns = ["goal", "b_crit", "b_crit_stderr", "b_simple_local_median", "b_simple_policy_local_median",
               "b_simple_segments", "b_simple_frames", "frames_over_segments", "b_simple_policy_checkpoint"]
    return goals.filter(columns)


def make_rl_problem(cfg: Any, device: torch.device) -> RLProblem:
    """The :class:`RLProblem` of a config (``dataset`` is the environment id, ``data_kwargs`` the learner's settings)."""
    return RLProblem(cfg.dataset, cfg.model, cfg.model_kwargs, device, **dict(cfg.data_kwargs))


__all__ = ["ATARI_GAMES", "RLProblem", "Rollouts", "noise_by_goal", "make_rl_problem", "make_vector_env"]
