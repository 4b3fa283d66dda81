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
(`safety.reward_normalization`), so |Q| <= `reward_bound / (1 - gamma)` (`training.critic_reward_bound`);
targets beyond it are clipped to the end atoms.
"""

from __future__ import annotations

import math
from typing import Callable, Protocol

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

    def loss_and_grad(self, output: Tensor, q_target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """For the hand-derived update: `loss`, its gradient with respect to `output` (E, B, bins)
        and `value(output)`, sharing their intermediate results."""

    def value_and_backward(self, output: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """`value(output)` and the function mapping a gradient with respect to it (E, B) to one
        with respect to `output` (E, B, bins)."""


class ScalarValue:
    """The classic head: the critic outputs Q itself."""

    bins = 1

    def __init__(self, huber_delta: float | None = None) -> None:
        self.huber_delta = huber_delta

    def value(self, output: Tensor) -> Tensor:
        return output.squeeze(-1) if output.dim() == 3 else output  # (E, B, 1) from the hand-written passes

    def loss(self, output: Tensor, q_target: Tensor) -> Tensor:
        return losses.critic_loss(output, q_target, self.huber_delta)

    def loss_and_grad(self, output: Tensor, q_target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q_pred = self.value(output)
        loss, grad = losses.critic_loss_and_grad(q_pred, q_target, self.huber_delta)
        return loss, grad.unsqueeze(-1), q_pred

    def value_and_backward(self, output: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        return self.value(output), lambda grad_q: grad_q.unsqueeze(-1)


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
        self._constants: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}

    def _constant(self, name: str, like: Tensor) -> Tensor:
        """`self._make(name)` on `like`'s device and dtype, made once per device and dtype."""
        if torch.compiler.is_compiling():
            # A constant inside the compiled graph; filling the cache while tracing would fail the
            # cache's guard on the next call and compile the function a second time.
            return self._make(name, like)
        key = (name, like.device, like.dtype)
        if key not in self._constants:
            self._constants[key] = self._make(name, like)
        return self._constants[key]

    def _make(self, name: str, like: Tensor) -> Tensor:
        atoms = torch.linspace(-self.z_max, self.z_max, self.bins, dtype=like.dtype, device=like.device)
        if name == "atoms":
            return atoms
        # "edges": the atoms' interval edges in units of sqrt(2) Gaussian widths, erf's argument.
        edges = torch.cat([atoms - 0.5 * self.spacing, atoms[-1:] + 0.5 * self.spacing])
        return edges * self._erf_scale

    @property
    def _erf_scale(self) -> float:
        return 1.0 / (math.sqrt(2.0) * self.sigma_ratio * self.spacing)

    def atoms(self, like: Tensor) -> Tensor:
        """The atoms' positions in symlog space (bins,), on `like`'s device and dtype (cached)."""
        return self._constant("atoms", like)

    def value(self, output: Tensor) -> Tensor:
        probabilities = torch.softmax(output, dim=-1)
        return symexp(probabilities @ self.atoms(output))

    def target_probabilities(self, q_target: Tensor) -> Tensor:
        """The TD targets (B,) projected onto the atoms: (B, bins), each row summing to 1 (NaN for a
        non-finite target); finite targets beyond the support land on its end atoms."""
        z = symlog(q_target).clamp(-self.z_max, self.z_max)
        # A non-finite target stays non-finite (clipping would hide it): its loss and gradient are
        # then non-finite too, so the safety layer skips the step and finds the transition.
        z = torch.where(torch.isfinite(q_target), z, torch.full_like(z, float("nan"))).unsqueeze(-1)
        if self.kind == "two_hot":
            return (1.0 - (z - self.atoms(q_target)).abs() / self.spacing).clamp(min=0.0)
        # The Gaussian's CDF at the edges is (1 + erf) / 2; the 1 and the 1/2 cancel in the
        # intervals' masses and in their normalisation over the support.
        cdf = torch.erf(self._constant("edges", q_target) - z * self._erf_scale)
        mass = cdf[..., 1:] - cdf[..., :-1]
        return mass / (cdf[..., -1:] - cdf[..., :1])

    def loss(self, output: Tensor, q_target: Tensor) -> Tensor:
        target = self.target_probabilities(q_target.detach()).unsqueeze(0)
        cross_entropy = -(target * torch.log_softmax(output, dim=-1)).sum(-1)
        return cross_entropy.mean(dim=1).sum()

    def loss_and_grad(self, output: Tensor, q_target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Cross-entropy's gradient in the logits is (softmax - target) / B. One softmax serves
        the loss, the gradient and Q: with targets summing to 1 the cross-entropy is
        logsumexp(logits) - target . logits, and logsumexp = max logit - log(max probability)."""
        target = self.target_probabilities(q_target).unsqueeze(0)
        probabilities = torch.softmax(output, dim=-1)
        log_normaliser = output.amax(dim=-1) - probabilities.amax(dim=-1).log()
        loss = (log_normaliser - (target * output).sum(-1)).mean(dim=1).sum()
        grad = (probabilities - target) * (1.0 / output.shape[1])
        return loss, grad, symexp(probabilities @ self.atoms(output))

    def value_and_backward(self, output: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """With m = softmax . atoms and Q = symexp(m): dQ/dlogit_i = exp(|m|) p_i (atom_i - m)."""
        probabilities = torch.softmax(output, dim=-1)
        atoms = self.atoms(output)
        mean = probabilities @ atoms

        def backward(grad_q: Tensor) -> Tensor:
            return (grad_q * mean.abs().exp()).unsqueeze(-1) * probabilities * (atoms - mean.unsqueeze(-1))

        return symexp(mean), backward


def value_bound(gamma: float, reward_bound: float = 100.0) -> float:
    """|Q| the support must cover for rewards within +-`reward_bound` (normalised units)."""
    return reward_bound / (1.0 - gamma) if gamma < 1.0 else reward_bound * 1000.0
