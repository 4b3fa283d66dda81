"""Acting: the training envs, one `act()` for training and evaluation, and what guards them.

`Rollout` owns the env slots (each env with its observation, episode bookkeeping and dynamics-map
history), the input sanitising (non-finite observations and rewards become 0, counted), the
acting guards (an unusable context falls back to zeros; a non-finite action never reaches an env)
and the action rescale from [-1, 1] to the env's bounds, written once. Evaluation runs episodes
through the same `act()`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dynsac.config import Config
from dynsac.context import ContextTracker, split_observation
from dynsac.context.guard import guard_context
from dynsac.envs.factory import EnvError, EnvFactory, make_env
from dynsac.envs.state import capture_env_state, restore_env_state
from dynsac.events import EventReporter, first_few_then_rarely
from dynsac.safety import sanitize_observation, sanitize_reward
from dynsac.safety.guards import trace_policy_nonfinite
from dynsac.sac import SACAgent

# (obs, action, reward, next_obs, terminated, truncated, episode_id, env_context, next_env_context)
Store = Callable[..., None]


@dataclass
class EnvSlot:
    """One training env and where its current episode stands."""

    env: Any
    tracker: ContextTracker
    obs: np.ndarray
    episode_id: int
    episode_return: float = 0.0
    episode_length: int = 0


@dataclass
class EvalResult:
    """Deterministic-policy episode returns; `optimal_returns` where the env knows its optimum."""

    returns: list[float]
    lengths: list[int]
    optimal_returns: list[float] | None = None

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))

    @property
    def optimal_mean(self) -> float | None:
        return None if self.optimal_returns is None else float(np.mean(self.optimal_returns))

    @property
    def optimality_ratio(self) -> float | None:
        """Optimal return / agent return, for negative-cost envs: 1.0 is optimal, 0.5 twice the cost."""
        if self.optimal_returns is None:
            return None
        return float(np.sum(self.optimal_returns) / np.sum(self.returns))


def evaluate_episodes(env: Any, episodes: int, seed: int, run_episode: Callable[[Any, int], tuple[float, int]]
                      ) -> EvalResult:
    """`episodes` episodes of `run_episode(env, seed_i)`, episode i from seed `seed + 1_000_000 + i`
    (the eval seeds of training, `dynsac eval` and exported controllers alike), with the optimum
    where the env knows it."""
    returns, lengths, optimal = [], [], []
    knows_optimum = hasattr(env.unwrapped, "optimal_return")
    for episode in range(episodes):
        episode_seed = seed + 1_000_000 + episode
        total, length = run_episode(env, episode_seed)
        returns.append(total)
        lengths.append(length)
        if knows_optimum:
            optimal.append(float(env.unwrapped.optimal_return(seed=episode_seed)))
    return EvalResult(returns, lengths, optimal if knows_optimum else None)


@dataclass
class ActingCounters:
    sanitized_values: int = 0  # non-finite observation entries and rewards replaced by 0
    context_fallbacks: int = 0  # acting contexts replaced by zeros
    nonfinite_actions: int = 0  # policy outputs replaced before they reached an env
    finished_returns: list[float] = field(default_factory=list)  # episodes ended since the last log
    finished_lengths: list[int] = field(default_factory=list)


def make_training_envs(config: Config, env_fn: EnvFactory | None = None
                       ) -> tuple[list[Any], list[tuple[np.ndarray, np.ndarray | None]]]:
    """`training.num_envs` envs, seeded `seed + i`, and their first (observation, env context)."""
    env_cfg, seed = config.env, config.training.seed
    envs = [make_env(env_cfg.id, env_cfg.kwargs, env_cfg.max_episode_steps, env_fn)
            for _ in range(config.training.num_envs)]
    first = []
    for index, env in enumerate(envs):
        env.action_space.seed(seed + index)
        first.append(split_observation(*env.reset(seed=seed + index)))
    return envs, first


class Rollout:
    """The training envs of `config` and the agent's acting on them."""

    def __init__(self, config: Config, agent: SACAgent, device: torch.device, events: EventReporter,
                 warmup_rng: np.random.Generator, env_fn: EnvFactory | None = None) -> None:
        self.config, self.agent, self.device, self.events = config, agent, device, events
        self.warmup_rng, self.env_fn = warmup_rng, env_fn
        self.counters = ActingCounters()
        self.slots: list[EnvSlot] = []
        self.next_episode_id = 0
        self.eval_env = None
        policy = agent.policy
        self._action_center = policy.action_center.cpu().numpy()
        self._action_half_range = policy.action_half_range.cpu().numpy()
        self.step = 0  # the env step messages refer to (kept by the trainer)

    # ----------------------------------------------------------------- envs
    def make_env(self, eval_env: bool = False, env_kwargs: dict[str, Any] | None = None) -> Any:
        env_cfg = self.config.env
        kwargs = {**env_cfg.kwargs, **(env_cfg.eval_kwargs if eval_env else {}), **(env_kwargs or {})}
        try:
            return make_env(env_cfg.id, kwargs, env_cfg.max_episode_steps, self.env_fn)
        except EnvError as err:
            if not (eval_env and env_cfg.eval_kwargs):
                raise
            raise EnvError(f"env.eval_kwargs = {env_cfg.eval_kwargs!r} (over env.kwargs) do not build the evaluation "
                           f"env: {err}") from None

    def check_eval_env(self) -> None:
        """Build the evaluation env now, so that bad `env.eval_kwargs` fail before training, not at the
        first evaluation."""
        if self.eval_env is None and self.config.env.eval_kwargs:
            self.eval_env = self.make_env(eval_env=True)

    def start(self, envs: list[Any], first: list[tuple[np.ndarray, np.ndarray | None]]) -> None:
        """Take the training envs and their first (observation, env context)."""
        self.slots = [EnvSlot(env, self.new_tracker(env_context), self.sanitize(obs), episode_id)
                      for episode_id, (env, (obs, env_context)) in enumerate(zip(envs, first))]
        self.next_episode_id = len(self.slots)

    def new_tracker(self, env_context: np.ndarray | None = None) -> ContextTracker:
        context = self.config.context
        tracker = ContextTracker(context.source, context.history_length, self.agent.policy.obs_dim,
                                 self.agent.policy.action_dim, self.config.env.id)
        tracker.reset(env_context)
        return tracker

    def to_env_action(self, action: np.ndarray) -> np.ndarray:
        """[-1, 1] actions to the env's bounds."""
        return self._action_center + action * self._action_half_range

    # ----------------------------------------------------------------- acting
    def act(self, obs: np.ndarray, trackers: list[ContextTracker], deterministic: bool = False) -> np.ndarray:
        """Actions (N, A) in [-1, 1] for observations (N, obs_dim), one context tracker per row:
        sampled, or the mode with `deterministic`. Never non-finite."""
        obs_tensor = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        contexts = [self._acting_context(tracker) for tracker in trackers]
        context = None if contexts[0] is None else torch.cat(contexts)
        policy = self.agent.policy
        with torch.no_grad():
            action = policy.deterministic(obs_tensor, context) if deterministic else policy.sample_action(obs_tensor, context)
        return self._guard_action(action.cpu().numpy(), obs_tensor, context)

    def _acting_context(self, tracker: ContextTracker) -> Tensor | None:
        window = tracker.window
        if window is None:
            env_context = tracker.env_context
            context = self.agent.acting_context(env_context=None if env_context is None else env_context[None])
        else:
            context = self.agent.acting_context(window=window.features[None], mask=window.mask[None])
        if context is None:
            return None
        bound = self.config.safety.context_bound
        guarded, replaced = guard_context(context, bound)
        if bool(replaced):
            self.counters.context_fallbacks += 1
            count = self.counters.context_fallbacks
            finite = context[torch.isfinite(context)]
            largest = f"{finite.abs().max().item():.3g}" if finite.numel() else "none"
            message = (f"step {self.step}: context for acting is not usable (NaN {int(context.isnan().sum())}, "
                       f"Inf {int(context.isinf().sum())}, largest finite |entry| {largest}, bound "
                       f"{bound:g}); acting with a zero context ({count} so far)")
            if first_few_then_rarely(count):
                self.events.report(self.step, "context_fallback", message)
        return guarded

    def _guard_action(self, actions: np.ndarray, obs: Tensor, context: Tensor | None) -> np.ndarray:
        """Each row of `actions` with a non-finite entry is replaced by a uniformly random action,
        counted, and the first non-finite tensor on the policy's path is named."""
        bad_rows = ~np.isfinite(actions).all(axis=1)
        if not bad_rows.any():
            return actions
        self.counters.nonfinite_actions += int(bad_rows.sum())
        count = self.counters.nonfinite_actions
        if first_few_then_rarely(count):
            origin = trace_policy_nonfinite(self.agent.policy, obs, context)
            message = (f"step {self.step}: the policy's action is non-finite ({origin}); acting uniformly at random "
                       f"instead ({count} so far)")
            self.events.report(self.step, "nonfinite_action", message)
        actions = actions.copy()
        actions[bad_rows] = self.warmup_rng.uniform(-1.0, 1.0, (int(bad_rows.sum()), actions.shape[1]))
        return actions

    def collect(self, warmup: bool, store: Store) -> list[dict[str, Any]]:
        """Act once in every env (uniformly random in `warmup`, else one batched policy forward),
        hand each transition to `store` in env order, handle episode ends. Returns one result
        (reward, done, info, and episode_return at an episode's end) per env."""
        if warmup:
            actions = self.warmup_rng.uniform(-1.0, 1.0, (len(self.slots), self._action_center.shape[0]))
            actions = actions.astype(np.float32)
        else:
            actions = self.act(np.stack([slot.obs for slot in self.slots]), [slot.tracker for slot in self.slots])
        return [self._step_env(slot, action, store) for slot, action in zip(self.slots, actions)]

    def _step_env(self, slot: EnvSlot, action: np.ndarray, store: Store) -> dict[str, Any]:
        raw_next_obs, reward, terminated, truncated, info = slot.env.step(self.to_env_action(action))
        next_obs, next_env_context = split_observation(raw_next_obs, info)
        next_obs = self.sanitize(next_obs)
        reward = self.sanitize_reward(float(reward))
        store(slot.obs, action, reward, next_obs, terminated, truncated, slot.episode_id, slot.tracker.env_context,
              next_env_context)
        slot.tracker.record(slot.obs, action, next_obs, next_env_context)
        self.step += 1
        slot.episode_return += float(reward)
        slot.episode_length += 1
        done = bool(terminated or truncated)
        result = {"reward": float(reward), "done": done, "info": info}
        if done:
            result["episode_return"] = slot.episode_return
            self.counters.finished_returns.append(slot.episode_return)
            self.counters.finished_lengths.append(slot.episode_length)
            self._new_episode(slot)
            return result
        slot.obs = next_obs
        return result

    def _new_episode(self, slot: EnvSlot) -> None:
        slot.episode_id, self.next_episode_id = self.next_episode_id, self.next_episode_id + 1
        slot.episode_return, slot.episode_length = 0.0, 0
        obs, env_context = split_observation(*slot.env.reset())
        slot.obs = self.sanitize(obs)
        slot.tracker.reset(env_context)

    def pop_finished(self) -> tuple[list[float], list[int]]:
        """Returns and lengths of the episodes finished since the last call."""
        counters = self.counters
        finished = counters.finished_returns, counters.finished_lengths
        counters.finished_returns, counters.finished_lengths = [], []
        return finished

    # ----------------------------------------------------------------- input sanitising
    def sanitize(self, obs: Any, count: bool = True) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float32)
        if not self.config.safety.sanitize_inputs:
            return obs
        obs, replaced = sanitize_observation(obs)
        if replaced and count:
            self.counters.sanitized_values += replaced
            message = f"step {self.step}: observation had {replaced} non-finite value(s); replaced by 0"
            self.events.report(self.step, "sanitized_observation", message, count=replaced)
        return obs

    def sanitize_reward(self, reward: float) -> float:
        if not self.config.safety.sanitize_inputs:
            return reward
        clean, replaced = sanitize_reward(reward)
        if replaced:
            self.counters.sanitized_values += 1
            self.events.report(self.step, "sanitized_reward", f"step {self.step}: reward {reward} is not finite; "
                                                              "replaced by 0")
        return clean

    # ----------------------------------------------------------------- evaluation
    def evaluate(self, episodes: int, env_kwargs: dict[str, Any] | None = None) -> EvalResult:
        """Deterministic-policy returns on a separate env; episode i always uses the same seed,
        so evaluations are comparable along a run and consume none of the training randomness."""
        if env_kwargs is not None:
            env = self.make_env(eval_env=False, env_kwargs=env_kwargs)
        else:
            if self.eval_env is None:
                self.eval_env = self.make_env(eval_env=True)
            env = self.eval_env
        result = evaluate_episodes(env, episodes, self.config.training.seed, self.run_episode)
        if env is not self.eval_env:
            env.close()
        return result

    def run_episode(self, env: Any, seed: int) -> tuple[float, int]:
        """One deterministic-policy episode from `env.reset(seed=seed)`: (return, length)."""
        obs, env_context = split_observation(*env.reset(seed=seed))
        obs = self.sanitize(obs, count=False)
        tracker = self.new_tracker(env_context)
        total, length, done = 0.0, 0, False
        while not done:
            action = self.act(obs[None], [tracker], deterministic=True)[0]
            raw_obs, reward, terminated, truncated, info = env.step(self.to_env_action(action))
            next_obs, env_context = split_observation(raw_obs, info)
            next_obs = self.sanitize(next_obs, count=False)
            tracker.record(obs, action, next_obs, env_context)
            obs = next_obs
            total += float(reward)
            length += 1
            done = terminated or truncated
        return total, length

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        counters = self.counters
        return {
            "next_episode_id": self.next_episode_id,
            "envs": [
                {
                    "state": capture_env_state(slot.env),
                    "obs": slot.obs.tolist(),
                    "episode_id": slot.episode_id,
                    "episode_return": slot.episode_return,
                    "episode_length": slot.episode_length,
                    "context": slot.tracker.state_dict(),
                }
                for slot in self.slots
            ],
            "sanitized_values": counters.sanitized_values,
            "context_fallbacks": counters.context_fallbacks,
            "nonfinite_actions": counters.nonfinite_actions,
        }

    def load_state_dict(self, state: dict[str, Any], source: str = "<checkpoint>") -> None:
        self.next_episode_id = state["next_episode_id"]
        self.counters.sanitized_values = state["sanitized_values"]
        self.counters.context_fallbacks = state["context_fallbacks"]
        self.counters.nonfinite_actions = state["nonfinite_actions"]
        for slot, env_state in zip(self.slots, state["envs"]):
            self._restore_env(slot, env_state, source)

    def _restore_env(self, slot: EnvSlot, env_state: dict[str, Any], source: str) -> None:
        slot.episode_id = env_state["episode_id"]
        try:
            restore_env_state(slot.env, env_state["state"])
        except Exception as err:  # an env we cannot restore mid-episode: start a new episode instead
            self.events.say(f"warning: {source}: env state not restorable ({err}); starting a new episode")
            obs, env_context = split_observation(*slot.env.reset())
            slot.obs = self.sanitize(obs)
            slot.tracker.reset(env_context)
            slot.episode_id, self.next_episode_id = self.next_episode_id, self.next_episode_id + 1
            return
        slot.obs = np.asarray(env_state["obs"], dtype=np.float32)
        slot.tracker.load_state_dict(env_state["context"])
        slot.episode_return = env_state["episode_return"]
        slot.episode_length = env_state["episode_length"]
