"""Replay buffer: preallocated tensors, uniform sampling by index.

Terminated and truncated are stored apart (only termination stops bootstrapping), and each
transition keeps its episode id, so that the K transitions before a sampled one in the same
episode can be gathered by index arithmetic instead of storing a copy of the window per transition.
The same arithmetic finds the transitions after it for n-step returns, so the buffer stores
1-step transitions whatever `n_step` is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dynsac.context.window import transition_features, window_indices


@dataclass
class Batch:
    """A sampled minibatch; rewards are already scaled, actions are in [-1, 1].

    `context`/`next_context` hold the env's context (source `env`); `window`/`next_window` the
    history windows (B, K, F) before s and before s' with their masks (source `learned`).

    With n-step returns (`discount` set), s' is the state the TD target bootstraps from, m <= n steps
    after s: `reward` is the discounted sum of the m rewards, `terminated` the m-th transition's,
    `discount` gamma^m per row, and `step_next_obs` the state one step after s (what the dynamics
    map predicts). With `discount` None the batch is 1-step and `step_next_obs` is `next_obs`.
    """

    obs: Tensor
    action: Tensor
    reward: Tensor
    next_obs: Tensor
    terminated: Tensor
    index: Tensor
    context: Tensor | None = None
    next_context: Tensor | None = None
    window: Tensor | None = None
    window_mask: Tensor | None = None
    next_window: Tensor | None = None
    next_window_mask: Tensor | None = None
    discount: Tensor | None = None
    step_next_obs: Tensor | None = None
    return_slots: Tensor | None = None  # n-step: (B, n) buffer slots whose rewards were summed (repeats pad)

    @property
    def transition_next_obs(self) -> Tensor:
        """The state one step after s (the dynamics map's target), whether or not the batch is n-step."""
        return self.next_obs if self.step_next_obs is None else self.step_next_obs


class ReplayBuffer:
    """Circular buffer of transitions. With `num_envs` > 1, each step stores one transition per env,
    always in env order, which is what lets `windows` find an env's previous transitions."""

    def __init__(
        self,
        capacity: int,
        obs_dim: int,
        action_dim: int,
        device: torch.device | str = "cpu",
        context_dim: int = 0,
        num_envs: int = 1,
    ) -> None:
        self.num_envs = num_envs
        self.capacity, self.obs_dim, self.action_dim, self.context_dim = capacity, obs_dim, action_dim, context_dim
        self.device = torch.device(device)
        make = lambda *shape, dtype=torch.float32: torch.zeros(shape, dtype=dtype, device=self.device)  # noqa: E731
        self.obs = make(capacity, obs_dim)
        self.action = make(capacity, action_dim)
        self.reward = make(capacity)
        self.next_obs = make(capacity, obs_dim)
        self.terminated = make(capacity)
        self.truncated = make(capacity, dtype=torch.bool)
        self.episode_id = make(capacity, dtype=torch.int64)
        self._fields = ["obs", "action", "reward", "next_obs", "terminated", "truncated", "episode_id"]
        if context_dim:
            self.context = make(capacity, context_dim)
            self.next_context = make(capacity, context_dim)
            self._fields += ["context", "next_context"]
        self.position = 0  # next slot to write
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: float,
        next_obs: np.ndarray,
        terminated: bool,
        truncated: bool,
        episode_id: int,
        context: np.ndarray | None = None,
        next_context: np.ndarray | None = None,
    ) -> None:
        slot = self.position
        views = self._host_views()
        if views is not None:
            self._add_on_host(views, slot, obs, action, reward, next_obs, terminated, truncated, episode_id, context,
                              next_context)
            self.position = (slot + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)
            return
        if self.context_dim:
            self.context[slot] = torch.as_tensor(context, dtype=torch.float32)
            self.next_context[slot] = torch.as_tensor(next_context, dtype=torch.float32)
        self.obs[slot] = torch.as_tensor(obs, dtype=torch.float32)
        self.action[slot] = torch.as_tensor(action, dtype=torch.float32)
        # Through a float32 tensor: a finite reward beyond float32's range is stored as Inf (which the
        # safety layer then sees and repairs) instead of failing the assignment.
        self.reward[slot] = torch.tensor(reward, dtype=torch.float32)
        self.next_obs[slot] = torch.as_tensor(next_obs, dtype=torch.float32)
        self.terminated[slot] = float(terminated)
        self.truncated[slot] = bool(truncated)
        self.episode_id[slot] = int(episode_id)
        self.position = (slot + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def _host_views(self) -> dict[str, np.ndarray] | None:
        """NumPy arrays sharing the fields' memory, on the CPU (None elsewhere): a transition
        written through them costs ~3 us instead of ~25 us for seven tensor assignments."""
        if self.device.type != "cpu":
            return None
        views = self.__dict__.get("_views")
        if views is None:
            views = self.__dict__["_views"] = {name: getattr(self, name).numpy() for name in self._fields}
        return views

    def _add_on_host(self, views: dict[str, np.ndarray], slot: int, obs: Any, action: Any, reward: float,
                     next_obs: Any, terminated: bool, truncated: bool, episode_id: int, context: Any,
                     next_context: Any) -> None:
        # A finite value beyond float32's range is stored as Inf, as the tensor path's cast does
        # (the safety layer then sees and repairs it), without NumPy's overflow warning.
        with np.errstate(over="ignore", invalid="ignore"):
            if self.context_dim:
                views["context"][slot] = context
                views["next_context"][slot] = next_context
            views["obs"][slot] = obs
            views["action"][slot] = action
            views["reward"][slot] = reward
            views["next_obs"][slot] = next_obs
        views["terminated"][slot] = float(terminated)
        views["truncated"][slot] = bool(truncated)
        views["episode_id"][slot] = int(episode_id)

    def __getstate__(self) -> dict[str, Any]:  # a copy makes its own views of its own tensors
        state = self.__dict__.copy()
        state.pop("_views", None)
        return state

    def sample(
        self, batch_size: int, history_length: int = 0, generator: torch.Generator | None = None,
        n_step: int = 1, gamma: float = 0.99,
    ) -> Batch:
        """Uniform sample with replacement (no host sync: indices are drawn on the buffer's device).

        With `history_length` K > 0 the batch carries the K-transition windows before s and s'. With
        `n_step` > 1 it bootstraps from up to n steps ahead (see `Batch`), discounted by `gamma`."""
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        index = torch.randint(0, self.size, (batch_size,), device=self.device, generator=generator)
        batch = Batch(
            obs=self.obs[index],
            action=self.action[index],
            reward=self.reward[index],
            next_obs=self.next_obs[index],
            terminated=self.terminated[index],
            index=index,
        )
        last = index
        if n_step > 1:
            last, batch.reward, batch.discount, batch.return_slots = self.n_step_returns(index, n_step, gamma)
            batch.step_next_obs, batch.next_obs, batch.terminated = batch.next_obs, self.next_obs[last], self.terminated[last]
        if self.context_dim:
            batch.context, batch.next_context = self.context[index], self.next_context[last]
        if history_length:
            window, mask = self.windows(index, history_length)
            batch.window, batch.window_mask = window[:, :-1], mask[:, :-1]
            if n_step > 1:
                window, mask = self.windows(last, history_length)
            batch.next_window, batch.next_window_mask = window[:, 1:], mask[:, 1:]
        return batch

    def n_step_returns(self, index: Tensor, n_step: int, gamma: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """For the transitions at `index`: the slot of the last of the next n transitions of the same
        env and episode that are stored (stopping after a terminated or truncated one), the rewards
        up to it discounted by `gamma`, gamma^m (m the number of transitions summed, 1 to n), and the
        slots summed (B, n), the last repeated where m < n."""
        offsets = torch.arange(n_step, device=index.device) * self.num_envs
        slots = (index.unsqueeze(1) + offsets) % self.capacity  # (B, n), the first is index itself
        newer = (self.position - 1 - index) % self.capacity  # transitions stored after index
        follows = (offsets <= newer.unsqueeze(1)) & (self.episode_id[slots] == self.episode_id[index].unsqueeze(1))
        ended = self.terminated[slots].bool() | self.truncated[slots]
        # A transition counts if it follows and none before it in the window ended its episode.
        before_ended = torch.cumsum(ended.to(torch.int64), dim=1) - ended.to(torch.int64)
        counted = torch.cumprod((follows & (before_ended == 0)).to(torch.int64), dim=1).bool()
        steps = counted.sum(dim=1)  # >= 1: index itself always counts
        powers = gamma ** torch.arange(n_step, device=index.device, dtype=self.reward.dtype)
        rewards = self.reward[slots]
        # where, not a product: a non-finite reward outside the window must not leak in as 0 * Inf.
        returns = torch.where(counted, rewards * powers, torch.zeros_like(rewards)).sum(dim=1)
        last = slots.gather(1, (steps - 1).unsqueeze(1)).squeeze(1)
        summed = torch.where(counted, slots, last.unsqueeze(1))
        return last, returns, gamma ** steps.to(self.reward.dtype), summed

    def windows(self, index: Tensor, history_length: int) -> tuple[Tensor, Tensor]:
        """Features (B, K+1, F) and mask (B, K+1) of the transitions ending at `index`, oldest first:
        [:, :-1] is the window before s, [:, 1:] the window before s'."""
        slots, valid = window_indices(
            index, history_length + 1, self.episode_id, self.position, self.size, self.capacity, include_self=True,
            stride=self.num_envs,
        )
        features = transition_features(self.obs[slots], self.action[slots], self.next_obs[slots])
        return features, valid.to(features.dtype)

    def nbytes(self) -> int:
        return sum(getattr(self, name).element_size() * getattr(self, name).nelement() for name in self._fields)

    def state_dict(self) -> dict[str, Any]:
        """Only the filled part is saved, so a checkpoint's size follows the data, not the capacity."""
        state: dict[str, Any] = {name: getattr(self, name)[: self.size].cpu().clone() for name in self._fields}
        state.update(capacity=self.capacity, position=self.position, size=self.size)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a saved buffer. With the same capacity the layout is kept exactly (bit-exact
        resume); with another capacity the newest transitions are kept in chronological order."""
        size, saved_capacity = int(state["size"]), int(state["capacity"])
        for name in self._fields:
            if name not in state:
                raise ValueError(f"replay buffer in checkpoint has no '{name}' field (saved with another context.source?)")
            stored, target = state[name], getattr(self, name)
            if stored.shape[0] != size or tuple(stored.shape[1:]) != tuple(target.shape[1:]):
                raise ValueError(
                    f"replay buffer field '{name}' has shape {tuple(stored.shape)}, "
                    f"expected ({size}, {', '.join(map(str, target.shape[1:]))})"
                )
        same_layout = saved_capacity == self.capacity
        oldest = int(state["position"]) if size == saved_capacity else 0
        keep = min(size, self.capacity)
        for name in self._fields:
            stored = state[name]
            if not same_layout:
                stored = torch.roll(stored, -oldest, dims=0)[size - keep :]
            getattr(self, name)[:keep] = stored.to(self.device, getattr(self, name).dtype)
        self.size = keep
        self.position = int(state["position"]) if same_layout else keep % self.capacity
