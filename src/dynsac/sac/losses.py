"""SAC losses as small pure functions: tensors in, loss (and what it is built from) out.

Shapes: B = batch, E = critics in the ensemble. Q-values are (E, B).
"""

from __future__ import annotations

import torch
from torch import Tensor


def soft_q_target(
    reward: Tensor,
    terminated: Tensor,
    next_q: Tensor,
    next_log_prob: Tensor,
    alpha: Tensor,
    gamma: float | Tensor,
) -> Tensor:
    """r + gamma * (1 - terminated) * (min_E Q_target(s', a') - alpha * log pi(a'|s')).

    Only termination stops bootstrapping; a time-limit truncation is stored as not terminated, so
    the target bootstraps through it. `gamma` may be per row (B,): gamma^m for n-step returns.
    """
    soft_value = next_q.min(dim=0).values - alpha * next_log_prob
    return reward + gamma * (1.0 - terminated) * soft_value


def critic_loss(q_pred: Tensor, q_target: Tensor, huber_delta: float | None = None) -> Tensor:
    """Sum over critics of half the mean squared TD error (Stable-Baselines3's convention), or with
    `huber_delta` the mean Huber loss (equal to it for errors below delta, linear beyond)."""
    error = q_pred - q_target.unsqueeze(0)
    if huber_delta is None:
        return 0.5 * error.square().mean(dim=1).sum()
    return torch.nn.functional.huber_loss(error, torch.zeros_like(error), delta=huber_delta, reduction="none").mean(dim=1).sum()


def critic_loss_and_grad(q_pred: Tensor, q_target: Tensor, huber_delta: float | None = None) -> tuple[Tensor, Tensor]:
    """`critic_loss` and its gradient with respect to q_pred, (E, B), from one TD error: the error
    over B, clipped to +-delta/B with `huber_delta`."""
    error = q_pred - q_target.unsqueeze(0)
    batch = q_pred.shape[1]
    if huber_delta is None:
        return 0.5 * error.square().mean(dim=1).sum(), error / batch
    clipped = error.clamp(-huber_delta, huber_delta)
    # Huber: 0.5 e^2 for |e| <= delta, delta (|e| - delta / 2) beyond; both are clipped * (e - clipped / 2).
    return (clipped * (error - 0.5 * clipped)).mean(dim=1).sum(), clipped / batch


def actor_loss(q_pi: Tensor, log_prob: Tensor, alpha: Tensor, reduction: str = "min") -> Tensor:
    """E[alpha * log pi(a|s) - min_E Q(s, a)] with a ~ pi(.|s) reparameterised (`reduction`
    "mean": the critics' mean instead of their min, as REDQ's actor)."""
    q = q_pi.min(dim=0).values if reduction == "min" else q_pi.mean(dim=0)
    return (alpha * log_prob - q).mean()


def actor_loss_and_grads(q_pi: Tensor, log_prob: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """`actor_loss`, its gradient with respect to q_pi, (E, B) (-1/B on the smallest critic of each
    sample, where min's gradient goes), and with respect to log_prob, (B,)."""
    batch = log_prob.shape[0]
    smallest = q_pi.min(dim=0)
    loss = (alpha * log_prob - smallest.values).mean()
    grad_q = torch.zeros_like(q_pi).scatter_(0, smallest.indices.unsqueeze(0), -1.0 / batch)
    return loss, grad_q, (alpha / batch).expand_as(log_prob)


def alpha_loss(log_alpha: Tensor, log_prob: Tensor, target_entropy: float) -> Tensor:
    """Pushes the policy's entropy (-log pi) towards `target_entropy` by tuning log-alpha."""
    return -(log_alpha * (log_prob.detach() + target_entropy)).mean()


def alpha_loss_and_grad(log_alpha: Tensor, log_prob: Tensor, target_entropy: float) -> tuple[Tensor, Tensor]:
    """`alpha_loss` and its gradient with respect to log-alpha (the loss is log-alpha times it)."""
    grad = -(log_prob.detach() + target_entropy).mean()
    return log_alpha.detach() * grad, grad


SATURATED_ACTION = 0.999  # |tanh(u)| beyond this (|u| > 3.8): the gradient through tanh is < 0.2% of its peak


def log_std_statistics(log_std: Tensor, low: float, high: float, margin: float = 0.05) -> dict[str, Tensor]:
    """Mean log-std and the fraction of entries pinned within `margin` of a bound."""
    pinned = (log_std >= high - margin) | (log_std <= low + margin)
    return {"log_std_mean": log_std.mean(), "log_std_at_bound": pinned.double().mean()}


def sample_statistics(action: Tensor, log_prob: Tensor, log_std: Tensor, low: float, high: float) -> dict[str, Tensor]:
    """Detached entropy estimate, fraction of saturated actions and log-std statistics of a sample."""
    action, log_prob, log_std = action.detach(), log_prob.detach(), log_std.detach()
    return {
        "entropy": -log_prob.mean(),
        "action_saturated": (action.abs() > SATURATED_ACTION).double().mean(),
        **log_std_statistics(log_std, low, high),
    }


def q_statistics(q_pred: Tensor, q_target: Tensor) -> dict[str, Tensor]:
    """Detached summary statistics of predicted and target Q-values."""
    q_pred, q_target = q_pred.detach(), q_target.detach()
    if q_pred.numel() > 1:
        q_std, q_mean = torch.std_mean(q_pred)
    else:
        q_std, q_mean = torch.zeros((), device=q_pred.device), q_pred.mean()
    return {"q_mean": q_mean, "q_std": q_std, "q_max_abs": q_pred.abs().max(), "q_target_mean": q_target.mean()}
