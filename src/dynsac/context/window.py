"""Transition-history windows: what the dynamics-map encoder reads.

A window holds the last K transitions (s, a, s' - s) of the current episode, oldest first, with
zero padding and mask 0 in front while the episode is younger than K steps. Acting keeps one
`HistoryWindow` per environment; learning rebuilds the same windows from the replay buffer by index
(`window_indices`), so no per-transition copy of a window is ever stored.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def transition_features(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
    """(s, a, s' - s) along the last dimension."""
    return torch.cat([obs, action, next_obs - obs], dim=-1)


def feature_dim(obs_dim: int, action_dim: int) -> int:
    return 2 * obs_dim + action_dim


class HistoryWindow:
    """The last K transitions of one environment's current episode, for acting."""

    def __init__(self, length: int, obs_dim: int, action_dim: int) -> None:
        self.length, self.obs_dim = length, obs_dim
        self.features = np.zeros((length, feature_dim(obs_dim, action_dim)), dtype=np.float32)
        self.mask = np.zeros(length, dtype=np.float32)

    def reset(self) -> None:
        self.features[:] = 0.0
        self.mask[:] = 0.0

    def push(self, obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray) -> None:
        self.features[:-1], self.mask[:-1] = self.features[1:].copy(), self.mask[1:].copy()
        self.features[-1] = np.concatenate([obs, action, next_obs - obs])
        self.mask[-1] = 1.0

    def state_dict(self) -> dict[str, list]:
        return {"features": self.features.tolist(), "mask": self.mask.tolist()}

    def load_state_dict(self, state: dict[str, list]) -> None:
        self.features[:] = np.asarray(state["features"], dtype=np.float32)
        self.mask[:] = np.asarray(state["mask"], dtype=np.float32)


def window_indices(
    index: Tensor, length: int, episode_id: Tensor, position: int, size: int, capacity: int, include_self: bool,
    stride: int = 1,
) -> tuple[Tensor, Tensor]:
    """Buffer slots of the K transitions before `index` (or ending at it, with `include_self`) in the
    same episode, and their validity mask. Slots are (B, K), oldest first.

    `stride` envs store one transition each per step, always in the same order, so the j-th previous
    transition of the same env sits at slot index - j * stride (mod capacity). It is valid if it is
    still in the buffer (not older than the oldest retained transition) and belongs to the same episode.
    """
    shift = 0 if include_self else 1
    offsets = torch.arange(length - 1 + shift, shift - 1, -1, device=index.device) * stride  # oldest first
    slots = (index.unsqueeze(1) - offsets) % capacity
    oldest = position if size == capacity else 0
    age_of_index = (index - oldest) % capacity  # how many transitions are retained before index
    valid = (offsets <= age_of_index.unsqueeze(1)) & (episode_id[slots] == episode_id[index].unsqueeze(1))
    return slots, valid
