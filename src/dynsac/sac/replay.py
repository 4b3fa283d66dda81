"""Replay buffer: preallocated tensors, uniform sampling by index.

Terminated and truncated are stored apart (only termination stops bootstrapping), and each
transition keeps its episode id, so that the K transitions before a sampled one in the same
episode can be gathered by index arithmetic instead of storing a copy of the window per transition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor


@dataclass
class Batch:
    """A sampled minibatch; rewards are already scaled, actions are in [-1, 1]."""

    obs: Tensor
    action: Tensor
    reward: Tensor
    next_obs: Tensor
    terminated: Tensor
    index: Tensor


class ReplayBuffer:
    """Circular buffer of single-env transitions."""

    _FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "truncated", "episode_id")

    def __init__(self, capacity: int, obs_dim: int, action_dim: int, device: torch.device | str = "cpu") -> None:
        self.capacity, self.obs_dim, self.action_dim = capacity, obs_dim, action_dim
        self.device = torch.device(device)
        make = lambda *shape, dtype=torch.float32: torch.zeros(shape, dtype=dtype, device=self.device)  # noqa: E731
        self.obs = make(capacity, obs_dim)
        self.action = make(capacity, action_dim)
        self.reward = make(capacity)
        self.next_obs = make(capacity, obs_dim)
        self.terminated = make(capacity)
        self.truncated = make(capacity, dtype=torch.bool)
        self.episode_id = make(capacity, dtype=torch.int64)
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
    ) -> None:
        slot = self.position
        self.obs[slot] = torch.as_tensor(obs, dtype=torch.float32)
        self.action[slot] = torch.as_tensor(action, dtype=torch.float32)
        self.reward[slot] = float(reward)
        self.next_obs[slot] = torch.as_tensor(next_obs, dtype=torch.float32)
        self.terminated[slot] = float(terminated)
        self.truncated[slot] = bool(truncated)
        self.episode_id[slot] = int(episode_id)
        self.position = (slot + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        """Uniform sample with replacement (no host sync: indices are drawn on the buffer's device)."""
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        index = torch.randint(0, self.size, (batch_size,), device=self.device, generator=generator)
        return Batch(
            obs=self.obs[index],
            action=self.action[index],
            reward=self.reward[index],
            next_obs=self.next_obs[index],
            terminated=self.terminated[index],
            index=index,
        )

    def nbytes(self) -> int:
        return sum(getattr(self, name).element_size() * getattr(self, name).nelement() for name in self._FIELDS)

    def state_dict(self) -> dict[str, Any]:
        """Only the filled part is saved, so a checkpoint's size follows the data, not the capacity."""
        state: dict[str, Any] = {name: getattr(self, name)[: self.size].cpu().clone() for name in self._FIELDS}
        state.update(capacity=self.capacity, position=self.position, size=self.size)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a saved buffer. With the same capacity the layout is kept exactly (bit-exact
        resume); with another capacity the newest transitions are kept in chronological order."""
        size, saved_capacity = int(state["size"]), int(state["capacity"])
        for name in self._FIELDS:
            stored, target = state[name], getattr(self, name)
            if stored.shape[0] != size or tuple(stored.shape[1:]) != tuple(target.shape[1:]):
                raise ValueError(
                    f"replay buffer field '{name}' has shape {tuple(stored.shape)}, "
                    f"expected ({size}, {', '.join(map(str, target.shape[1:]))})"
                )
        same_layout = saved_capacity == self.capacity
        oldest = int(state["position"]) if size == saved_capacity else 0
        keep = min(size, self.capacity)
        for name in self._FIELDS:
            stored = state[name]
            if not same_layout:
                stored = torch.roll(stored, -oldest, dims=0)[size - keep :]
            getattr(self, name)[:keep] = stored.to(self.device, getattr(self, name).dtype)
        self.size = keep
        self.position = int(state["position"]) if same_layout else keep % self.capacity
