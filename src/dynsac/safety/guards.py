"""Finite-value guards."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def sanitize_observation(obs: np.ndarray) -> tuple[np.ndarray, int]:
    """Replace non-finite entries by zeros; returns the clean array and how many were replaced."""
    finite = np.isfinite(obs)
    if finite.all():
        return obs, 0
    return np.where(finite, obs, 0.0).astype(obs.dtype, copy=False), int((~finite).sum())


def sanitize_reward(reward: float) -> tuple[float, bool]:
    """A non-finite reward becomes 0; returns the reward and whether it was replaced."""
    return (reward, False) if math.isfinite(reward) else (0.0, True)


def guard_context(context: Tensor, bound: float) -> tuple[Tensor, Tensor]:
    """Rows of `context` (B, C) holding NaN/Inf or entries beyond +-`bound` fall back to zeros.

    Returns the guarded context and the number of rows replaced, as a 0-d tensor (no host sync).
    """
    bad = ~(torch.isfinite(context) & (context.abs() <= bound)).all(dim=-1, keepdim=True)
    return torch.where(bad, torch.zeros_like(context), context), bad.sum()
