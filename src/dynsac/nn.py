"""Small neural-network building blocks shared by the context and SAC layers."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def mlp(in_dim: int, hidden_sizes: Sequence[int], out_dim: int) -> nn.Sequential:
    """Linear/ReLU stack; no activation after the last layer. The ReLUs work in place on the
    Linear outputs (which nothing else keeps: Linear's backward needs only its input)."""
    layers: list[nn.Module] = []
    for size in hidden_sizes:
        layers += [nn.Linear(in_dim, size), nn.ReLU(inplace=True)]
        in_dim = size
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)
