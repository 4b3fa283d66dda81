"""What a critic's output means: one Q-value, or a categorical distribution over a value support.

A critic ensemble outputs (E, B, bins) numbers per (s, a); a value head turns them into Q-values
(E, B) and scores them against a TD target (B,). Two heads:

- `ScalarValue` (bins = 1): the output is Q; the loss is the squared (or Huber) TD error.
- `CategoricalValue` (`hl_gauss` or `two_hot`): the output is logits over `bins` atoms spaced
  evenly in symlog space, symlog(x) = sign(x) log(1 + |x|). The TD target is projected onto the
  atoms (HL-Gauss: the mass of a Gaussian of width `sigma_ratio` atom spacings around the target
  that falls in each atom's interval; two-hot: the two neighbouring atoms, linearly) and the loss
  is the cross-entropy. Q is symexp of the distribution's mean in symlog space: monotone in the
  logits and equal to the target when the prediction matches the projected target, so the actor
  maximises it as it would a scalar Q.

Why a symlog support: its atoms resolve values near 0 in absolute terms and large ones in relative
terms, so the same support covers every task without a per-task value range, and the loss weighs a
state's error relative to its value instead of by its square (a quadratic cost's states far from the
origin no longer drown those near it).

The support's half-width comes from gamma: rewards are normalised to about unit scale
(`safety.reward_normalization`), so |Q| <= `reward_bound / (1 - gamma)`; targets beyond it are
clipped to the end atoms.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

from dynsac.sac import losses


def symlog(x: Tensor) -> Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: Tensor) -> Tensor:
    return torch.sign(x) * torch.expm1(x.abs())


class ValueHead(Protocol):
    bins: int

    def value(self, output: Tensor) -> Tensor:
        """Q-values (E, B) from the critics' output (E, B) or (E, B, bins)."""

    def loss(self, output: Tensor, q_target: Tensor) -> Tensor:
        """Critic loss, summed over critics and averaged over the batch."""

    def loss_and_grad(self, output: Tensor, q_target: Tensor) -> tuple[Tensor, Tensor]:
        """`loss` and its gradient with respect to `output` (E, B, bins), for the hand-derived update."""

    def value_backward(self, output: Tensor, grad_q: Tensor) -> Tensor:
        """The gradient with respect to `output` (E, B, bins) from that of `value(output)` (E, B)."""


class ScalarValue:
    """The classic head: the critic outputs Q itself."""

    bins = 1

    def __init__(self, huber_delta: float | None = None) -> None:
        self.huber_delta = huber_delta

    def value(self, output: Tensor) -> Tensor:
        return output.squeeze(-1) if output.dim() == 3 else output  # (E, B, 1) from the hand-written passes

    def loss(self, output: Tensor, q_target: Tensor) -> Tensor:
        return losses.critic_loss(output, q_target, self.huber_delta)

    def loss_and_grad(self, output: Tensor, q_target: Tensor) -> tuple[Tensor, Tensor]:
        loss, grad = losses.critic_loss_and_grad(output.squeeze(-1), q_target, self.huber_delta)
        return loss, grad.unsqueeze(-1)

    def value_backward(self, output: Tensor, grad_q: Tensor) -> Tensor:
        return grad_q.unsqueeze(-1)


class CategoricalValue:
    """Logits over `bins` atoms evenly spaced in symlog space on [-symlog(bound), symlog(bound)]."""

    KINDS = ("hl_gauss", "two_hot")

    def __init__(self, kind: str = "hl_gauss", bins: int = 101, bound: float = 1e4, sigma_ratio: float = 0.75) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"categorical critic {kind!r}: expected one of {', '.join(self.KINDS)}")
        if bins < 3 or not bound > 0:
            raise ValueError(f"categorical critic needs at least 3 bins and a positive bound, got {bins}, {bound}")
        self.kind, self.bins, self.bound, self.sigma_ratio = kind, int(bins), float(bound), float(sigma_ratio)
        self.z_max = math.log1p(self.bound)
        self.spacing = 2.0 * self.z_max / (self.bins - 1)
        self._atoms: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def atoms(self, like: Tensor) -> Tensor:
        """The atoms' positions in symlog space (bins,), on `like`'s device and dtype (cached)."""
        make = lambda: torch.linspace(-self.z_max, self.z_max, self.bins, dtype=like.dtype, device=like.device)  # noqa: E731
        if torch.compiler.is_compiling():
            # A constant inside the compiled graph; filling the cache while tracing would fail the
            # cache's guard on the next call and compile the function a second time.
            return make()
        key = (like.device, like.dtype)
        if key not in self._atoms:
            self._atoms[key] = make()
        return self._atoms[key]

    def value(self, output: Tensor) -> Tensor:
        probabilities = torch.softmax(output, dim=-1)
        return symexp(probabilities @ self.atoms(output))

    def target_probabilities(self, q_target: Tensor) -> Tensor:
        """The TD targets (B,) projected onto the atoms: (B, bins), each row summing to 1 (NaN for a
        non-finite target); finite targets beyond the support land on its end atoms."""
        atoms = self.atoms(q_target)
        z = symlog(q_target).clamp(-self.z_max, self.z_max)
        # A non-finite target stays non-finite (clipping would hide it): its loss and gradient are
        # then non-finite too, so the safety layer skips the step and finds the transition.
        z = torch.where(torch.isfinite(q_target), z, torch.full_like(z, float("nan"))).unsqueeze(-1)
        if self.kind == "two_hot":
            return (1.0 - (z - atoms).abs() / self.spacing).clamp(min=0.0)
        edges = torch.cat([atoms - 0.5 * self.spacing, atoms[-1:] + 0.5 * self.spacing])
        cdf = torch.special.ndtr((edges - z) / (self.sigma_ratio * self.spacing))
        mass = cdf[..., 1:] - cdf[..., :-1]
        return mass / (cdf[..., -1:] - cdf[..., :1])

    def loss(self, output: Tensor, q_target: Tensor) -> Tensor:
        target = self.target_probabilities(q_target.detach()).unsqueeze(0)
        cross_entropy = -(target * torch.log_softmax(output, dim=-1)).sum(-1)
        return cross_entropy.mean(dim=1).sum()

    def loss_and_grad(self, output: Tensor, q_target: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-entropy's gradient in the logits: (softmax - target) / B."""
        target = self.target_probabilities(q_target).unsqueeze(0)
        log_probabilities = torch.log_softmax(output, dim=-1)
        loss = -(target * log_probabilities).sum(-1).mean(dim=1).sum()
        return loss, (log_probabilities.exp() - target) / output.shape[1]

    def value_backward(self, output: Tensor, grad_q: Tensor) -> Tensor:
        """With m = softmax . atoms and Q = symexp(m): dQ/dlogit_i = exp(|m|) p_i (atom_i - m)."""
        probabilities = torch.softmax(output, dim=-1)
        mean = probabilities @ self.atoms(output)
        return (grad_q * mean.abs().exp()).unsqueeze(-1) * probabilities * (self.atoms(output) - mean.unsqueeze(-1))


def value_bound(gamma: float, reward_bound: float = 100.0) -> float:
    """|Q| the support must cover for rewards within +-`reward_bound` (normalised units)."""
    return reward_bound / (1.0 - gamma) if gamma < 1.0 else reward_bound * 1000.0
