"""The controller as one self-contained torch module: sanitising, context (the env's, or the
learned map's encoder over a raw history window), policy mode, tanh, fallback and action rescale.

This is what `dynsac export` traces into a `.pt2` (torch.export) or an `.onnx` graph, and what a
checkpoint's `Controller` runs eagerly: the three backends compute the same function.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from dynsac.context.dynamics_map import DynamicsMap, encoder_input
from dynsac.context.guard import guard_context
from dynsac.sac.networks import GaussianPolicy

OUTPUT_NAMES = ("action", "action_normalized", "nonfinite")


def _layer_by_layer(module: nn.Module) -> nn.Module:
    """A copy whose MLPs run as plain Linear/ReLU layers (what the exporters trace)."""
    module = copy.deepcopy(module).eval().requires_grad_(False)
    for sub in module.modules():
        if hasattr(sub, "fused"):
            sub.fused = False
    return module


class ControllerModule(nn.Module):
    """obs (N, obs_dim) [+ context (N, C) | + window (N, K, F), mask (N, K)] ->
    (action in env units (N, A), action in [-1, 1] (N, A), nonfinite (N,) bool).

    A non-finite observation entry is replaced by 0; a context row that is non-finite or beyond
    `context_bound` falls back to zeros; a non-finite action becomes the zero action in normalised
    units (the middle of the env's action range) and is flagged in `nonfinite`. One subclass per
    context source, each with a fixed signature (what the exporters need): `controller_module`
    builds the right one.
    """

    input_names: tuple[str, ...] = ("obs",)

    def __init__(self, policy: GaussianPolicy, context_bound: float) -> None:
        super().__init__()
        self.context_bound = float(context_bound)
        self.policy = _layer_by_layer(policy)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.act(obs, None)

    def context_of(self, **inputs: Tensor) -> Tensor | None:
        """The (guarded) context the policy sees for these inputs (None without one)."""
        return None

    def act(self, obs: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        obs = _finite_or_zero(obs)
        mu, _ = self.policy(obs, context)
        action = torch.tanh(mu)
        nonfinite = ~torch.isfinite(action).all(dim=-1)
        action = torch.where(nonfinite.unsqueeze(-1), torch.zeros_like(action), action)
        return self.policy.action_center + action * self.policy.action_half_range, action, nonfinite


class EnvContextController(ControllerModule):
    input_names = ("obs", "context")

    def forward(self, obs: Tensor, context: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.act(obs, self.context_of(context=context))

    def context_of(self, context: Tensor, **_: Tensor) -> Tensor:
        return guard_context(context, self.context_bound)[0]


class LearnedContextController(ControllerModule):
    """The learned map's encoder runs inside: its input is the raw window of the last K transitions
    (s, a, s' - s), oldest first, zero-padded in front with mask 0 while the episode is younger."""

    input_names = ("obs", "window", "mask")

    def __init__(self, policy: GaussianPolicy, context_bound: float, dynamics_map: DynamicsMap) -> None:
        super().__init__(policy, context_bound)
        self.encoder = _layer_by_layer(dynamics_map.encoder)
        self.bounded = dynamics_map.bounded
        mean, std = dynamics_map.normalizer.statistics(torch.float32, torch.device("cpu"))
        self.register_buffer("feature_mean", mean.clone())
        self.register_buffer("feature_std", std.clone())

    def forward(self, obs: Tensor, window: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.act(obs, self.context_of(window=window, mask=mask))

    def context_of(self, window: Tensor, mask: Tensor, **_: Tensor) -> Tensor:
        context = self.encoder(encoder_input(_finite_or_zero(window), mask, self.feature_mean, self.feature_std))
        return guard_context(torch.tanh(context) if self.bounded else context, self.context_bound)[0]


def _finite_or_zero(values: Tensor) -> Tensor:
    return torch.where(torch.isfinite(values), values, torch.zeros_like(values))


def controller_module(policy: GaussianPolicy, context_source: str, dynamics_map: DynamicsMap | None,
                      context_bound: float) -> ControllerModule:
    """The controller module for `context_source` ("none", "env" or "learned")."""
    if context_source == "learned":
        return LearnedContextController(policy, context_bound, dynamics_map).eval()
    if context_source == "env":
        return EnvContextController(policy, context_bound).eval()
    return ControllerModule(policy, context_bound).eval()
