"""Finite-value guards."""

from __future__ import annotations

import math

import numpy as np


def sanitize_observation(obs: np.ndarray) -> tuple[np.ndarray, int]:
    """Replace non-finite entries by zeros; returns the clean array and how many were replaced."""
    finite = np.isfinite(obs)
    if finite.all():
        return obs, 0
    return np.where(finite, obs, 0.0).astype(obs.dtype, copy=False), int((~finite).sum())


def sanitize_reward(reward: float) -> tuple[float, bool]:
    """A non-finite reward becomes 0; returns the reward and whether it was replaced."""
    return (reward, False) if math.isfinite(reward) else (0.0, True)
