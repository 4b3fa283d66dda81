"""Finite-value guards of the inputs and the acting path (the context guard, which the SAC update
applies too, is `dynsac.context.guard`)."""

from __future__ import annotations

import math

import numpy as np
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from dynsac.sac.networks import GaussianPolicy


def sanitize_observation(obs: np.ndarray) -> tuple[np.ndarray, int]:
    """Replace non-finite entries by zeros; returns the clean array and how many were replaced."""
    finite = np.isfinite(obs)
    if finite.all():
        return obs, 0
    return np.where(finite, obs, 0.0).astype(obs.dtype, copy=False), int((~finite).sum())


def sanitize_reward(reward: float) -> tuple[float, bool]:
    """A non-finite reward becomes 0; returns the reward and whether it was replaced."""
    return (reward, False) if math.isfinite(reward) else (0.0, True)


def nonfinite_rows(tensor: Tensor) -> list[int]:
    """Batch rows (first dim) of `tensor` holding NaN/Inf."""
    return torch.nonzero(~torch.isfinite(tensor.reshape(tensor.shape[0], -1)).all(dim=1)).flatten().tolist()


@torch.no_grad()
def trace_policy_nonfinite(policy: "GaussianPolicy", obs: Tensor, context: Tensor | None) -> str:
    """Name the first tensor on the policy's forward path (observation, context, each layer's
    output, mu, log_std) that holds NaN/Inf, with its batch rows. Run only after a non-finite
    action was seen, so the acting path itself pays for one `isfinite` on the action alone."""
    steps: list[tuple[str, Tensor]] = [("observation", obs)]
    if context is not None:
        steps.append(("context", context))
    hidden = obs if context is None else torch.cat([obs, context], dim=-1)
    for index, layer in enumerate(policy.net):
        hidden = layer(hidden)
        if isinstance(layer, nn.Linear):  # a copy: the in-place ReLU after it would turn -Inf into 0
            steps.append((f"policy.net.{index} (Linear) output", hidden.clone()))
    mu, log_std = policy(obs, context)
    steps += [("mu", mu), ("log_std", log_std)]
    for name, tensor in steps:
        rows = nonfinite_rows(tensor)
        if rows:
            return (f"{name} is non-finite in batch rows {rows[:8]} ({int(tensor.isnan().sum())} NaN, "
                    f"{int(tensor.isinf().sum())} Inf)")
    return "every tensor on the policy's path is finite (the non-finite value arose in sampling)"
