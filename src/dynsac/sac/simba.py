"""SimBa networks (Lee et al., ICLR 2025): a linear embedding, residual pre-LayerNorm blocks
(x + W2 relu(W1 LayerNorm(x))), a final LayerNorm and a linear head.

Each block's inner layer is 4x its width. Paired with `training.obs_normalization` (the running
observation statistics SimBa normalises its inputs with), this is `training.network: simba`; the
widths come from the hidden sizes, one block per entry, all equal.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from dynsac.sac.networks import ObservationNormalizer, critic_input

EXPANSION = 4  # a block's inner width over its width


def block_width(hidden_sizes: Sequence[int]) -> int:
    if len(set(hidden_sizes)) != 1:
        raise ValueError(f"SimBa networks need equal hidden sizes (one residual block each), got {list(hidden_sizes)}")
    return int(hidden_sizes[0])


class ResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.inner = nn.Linear(width, EXPANSION * width)
        self.outer = nn.Linear(EXPANSION * width, width)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.outer(torch.relu(self.inner(self.norm(x))))


class SimbaMLP(nn.Sequential):
    """in -> Linear -> residual blocks -> LayerNorm -> Linear -> out (the policy's network)."""

    def __init__(self, in_dim: int, hidden_sizes: Sequence[int], out_dim: int) -> None:
        width = block_width(hidden_sizes)
        super().__init__(nn.Linear(in_dim, width), *(ResidualBlock(width) for _ in hidden_sizes),
                         nn.LayerNorm(width), nn.Linear(width, out_dim))


def _stacked(num: int, fan_in: int, fan_out: int) -> tuple[nn.Parameter, nn.Parameter]:
    """Weights (num, fan_in, fan_out) and biases (num, 1, fan_out) with nn.Linear's default init."""
    bound = 1.0 / math.sqrt(fan_in)
    return (nn.Parameter(torch.empty(num, fan_in, fan_out).uniform_(-bound, bound)),
            nn.Parameter(torch.empty(num, 1, fan_out).uniform_(-bound, bound)))


class SimbaCriticEnsemble(nn.Module):
    """`num_critics` SimBa Q networks, their layers stacked (E, in, out) as `CriticEnsemble`'s, with
    the same interface: Q-values (E, B), or (E, B, num_outputs) logits for a categorical head."""

    layer_norm, dropout, batch_renorms, fused = False, 0.0, (), False

    def __init__(self, obs_dim: int, action_dim: int, hidden_sizes: Sequence[int] = (256, 256), context_dim: int = 0,
                 num_critics: int = 2, num_outputs: int = 1) -> None:
        super().__init__()
        width = block_width(hidden_sizes)
        self.num_critics, self.num_outputs, self.width = num_critics, num_outputs, width
        self.trace: Callable[[str, Tensor], None] | None = None
        self.obs_normalizer: ObservationNormalizer | None = None
        self.embed_weight, self.embed_bias = _stacked(num_critics, obs_dim + action_dim + context_dim, width)
        self.blocks = nn.ParameterList()
        for _ in hidden_sizes:
            inner_weight, inner_bias = _stacked(num_critics, width, EXPANSION * width)
            outer_weight, outer_bias = _stacked(num_critics, EXPANSION * width, width)
            self.blocks.extend([nn.Parameter(torch.ones(num_critics, 1, width)),
                                nn.Parameter(torch.zeros(num_critics, 1, width)),
                                inner_weight, inner_bias, outer_weight, outer_bias])
        self.norm_weight = nn.Parameter(torch.ones(num_critics, 1, width))
        self.norm_bias = nn.Parameter(torch.zeros(num_critics, 1, width))
        self.head_weight, self.head_bias = _stacked(num_critics, width, num_outputs)

    def flat_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def layer_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        raise NotImplementedError("SimBa critics have no hand-derived update (the autograd backend runs them)")

    def _norm(self, x: Tensor, gain: Tensor, offset: Tensor) -> Tensor:
        return nn.functional.layer_norm(x, x.shape[-1:]) * gain + offset

    def forward(self, obs: Tensor, action: Tensor, context: Tensor | None = None, detach_params: bool = False,
                batch_statistics: bool = True) -> Tensor:
        """Q-values (E, B) (`batch_statistics` is unused: SimBa has no batch statistics)."""
        if self.obs_normalizer is not None:
            obs = self.obs_normalizer(obs)
        def use(param: nn.Parameter) -> Tensor:
            return param.detach() if detach_params else param

        blocks = [use(param) for param in self.blocks]
        embed_weight, embed_bias = use(self.embed_weight), use(self.embed_bias)
        norm_weight, norm_bias = use(self.norm_weight), use(self.norm_bias)
        head_weight, head_bias = use(self.head_weight), use(self.head_bias)
        hidden = torch.matmul(critic_input(obs, action, context), embed_weight) + embed_bias
        for index in range(0, len(blocks), 6):
            gain, offset, inner_weight, inner_bias, outer_weight, outer_bias = blocks[index:index + 6]
            inner = torch.relu(torch.baddbmm(inner_bias, self._norm(hidden, gain, offset), inner_weight))
            hidden = hidden + torch.baddbmm(outer_bias, inner, outer_weight)
            if self.trace is not None:
                self.trace(f"block {index // 6}", hidden)
        output = torch.baddbmm(head_bias, self._norm(hidden, norm_weight, norm_bias), head_weight)
        return output.squeeze(-1)
