"""The hand-derived SAC update's arithmetic, as three pure functions (tensors in, tensors out).

`SACAgent._update_by_hand` runs them in order with the optimizer steps in between:

1. `sample_policy`: the policy on s and s' in one pass (only s' when the actor does not update),
   the alpha loss and its gradient, and the sample's metrics.
2. `critic_gradients`: the TD target from the target critics, the critic loss and the gradients
   of the critics' weights (with alpha after its step).
3. `actor_gradients`: the actor loss through the just-updated critics and the gradients of the
   policy's weights.

Being pure, they are what `training.compile` hands to `torch.compile`: the optimizer steps and
their finite-gradient checks (host syncs) stay outside, between them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from types import SimpleNamespace
from typing import NamedTuple

import torch
from torch import Tensor

from dynsac.nn import compiled_or_eager, ensemble_backward, ensemble_forward, relu_mlp_backward, relu_mlp_forward
from dynsac.sac import losses
from dynsac.sac.networks import critic_input, soft_clamp, tanh_gaussian, tanh_gaussian_backward
from dynsac.sac.value import ValueHead

class PolicySample(NamedTuple):
    """`sample_policy`'s result. The `_pi` fields are None when the actor does not update."""

    next_action: Tensor
    next_log_prob: Tensor
    action_pi: Tensor | None
    log_prob_pi: Tensor | None
    saved: tuple | None  # what `actor_gradients` needs for the policy's backward pass
    alpha_loss: Tensor | None
    alpha_grad: Tensor | None
    metrics: dict[str, Tensor]


def _policy_forward(
    policy_input: Tensor, noise: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor], low: float, high: float,
) -> tuple[Tensor, Tensor, Tensor, list[Tensor], Tensor, Tensor]:
    """`GaussianPolicy.sample_with_log_std` through `relu_mlp_forward`, also returning what the
    backward pass needs: (action, log_prob, log_std, layer inputs, std, raw log-std)."""
    output, inputs = relu_mlp_forward(policy_input, weights, biases)
    mu, raw_log_std = output.chunk(2, dim=-1)
    log_std = soft_clamp(raw_log_std, low, high)
    action, log_prob, std = tanh_gaussian(mu, log_std, noise)
    return action, log_prob, log_std, inputs, std, raw_log_std


def sample_policy(
    policy_input: Tensor | None, next_policy_input: Tensor, noise: Tensor, weights: Sequence[Tensor],
    biases: Sequence[Tensor], log_std_min: float, log_std_max: float, log_alpha: Tensor, target_entropy: float,
    auto_alpha: bool,
) -> PolicySample:
    """Actions for s' (the TD target) and, with `policy_input` (the actor updates), for s, in one
    pass: s and s' rows share the policy's weights, and only the s rows go through its backward.
    `noise` holds the standard normal draws, s rows first."""
    if policy_input is None:
        next_action, next_log_prob, *_ = _policy_forward(next_policy_input, noise, weights, biases, log_std_min,
                                                         log_std_max)
        return PolicySample(next_action, next_log_prob, None, None, None, None, None, {})
    batch_size = policy_input.shape[0]
    both = torch.cat([policy_input, next_policy_input])
    action, log_prob, log_std, inputs, std, raw_log_std = _policy_forward(
        both, noise, weights, biases, log_std_min, log_std_max
    )
    action_pi, log_prob_pi = action[:batch_size], log_prob[:batch_size]
    saved = ([layer_input[:batch_size] for layer_input in inputs], noise[:batch_size], std[:batch_size],
             raw_log_std[:batch_size])
    metrics = losses.sample_statistics(action_pi, log_prob_pi, log_std[:batch_size], log_std_min, log_std_max)
    alpha_loss = alpha_grad = None
    if auto_alpha:
        alpha_loss, alpha_grad = losses.alpha_loss_and_grad(log_alpha, log_prob_pi, target_entropy)
    return PolicySample(action[batch_size:], log_prob[batch_size:], action_pi, log_prob_pi, saved, alpha_loss,
                        alpha_grad, metrics)


def critic_gradients(
    obs: Tensor, action: Tensor, context: Tensor | None, reward: Tensor, terminated: Tensor, next_obs: Tensor,
    next_action: Tensor, next_context: Tensor | None, next_log_prob: Tensor, log_alpha: Tensor,
    gamma: float | Tensor, head: ValueHead, weights: Sequence[Tensor], biases: Sequence[Tensor], target_weights: Sequence[Tensor],
    target_biases: Sequence[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor, list[Tensor], list[Tensor]]:
    """(alpha, critic loss, q_pred (E, B), q_target (B,), weight gradients, bias gradients);
    `head` reads the critics' outputs (`dynsac.sac.value`)."""
    alpha = log_alpha.exp()
    next_output = ensemble_forward(critic_input(next_obs, next_action, next_context), target_weights, target_biases)[0]
    q_target = losses.soft_q_target(reward, terminated, head.value(next_output), next_log_prob, alpha, gamma)
    output, inputs = ensemble_forward(critic_input(obs, action, context), weights, biases)
    loss, grad_output, q_pred = head.loss_and_grad(output, q_target)
    _, weight_grads, bias_grads = ensemble_backward(grad_output, inputs, weights)
    return alpha, loss, q_pred, q_target, weight_grads, bias_grads


def actor_gradients(
    obs: Tensor, context: Tensor | None, action_pi: Tensor, log_prob_pi: Tensor, saved: tuple, alpha: Tensor,
    critic_weights: Sequence[Tensor], critic_biases: Sequence[Tensor], policy_weights: Sequence[Tensor],
    log_std_min: float, log_std_max: float, head: ValueHead,
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """(actor loss, policy weight gradients, policy bias gradients), through the critics without
    their weight gradients."""
    policy_inputs, noise, std, raw_log_std = saved
    output, q_inputs = ensemble_forward(critic_input(obs, action_pi, context), critic_weights, critic_biases)
    q_pi, value_backward = head.value_and_backward(output)
    loss, grad_q_pi, grad_log_prob = losses.actor_loss_and_grads(q_pi, log_prob_pi, alpha)
    grad_q_input, _, _ = ensemble_backward(
        value_backward(grad_q_pi), q_inputs, critic_weights, param_grads=False, input_grad=True
    )
    obs_dim = obs.shape[-1]
    grad_action = grad_q_input[:, obs_dim:obs_dim + action_pi.shape[-1]]
    grad_policy_out = tanh_gaussian_backward(
        grad_action, grad_log_prob, action_pi, noise, std, raw_log_std, log_std_min, log_std_max
    )
    _, weight_grads, bias_grads = relu_mlp_backward(grad_policy_out, policy_inputs, policy_weights)
    return loss, weight_grads, bias_grads


@functools.cache
def compiled() -> SimpleNamespace:
    """The three functions through `torch.compile` (built once per process; each compiles on its
    first call, and again for a new shape, dtype or device). Static shapes: a run's batch size
    does not change."""
    return SimpleNamespace(**{fn.__name__: compiled_or_eager(fn) for fn in (sample_policy, critic_gradients,
                                                                             actor_gradients)})
