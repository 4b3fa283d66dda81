"""Gradient backends: how the SAC update's gradients are computed.

`SACAgent.update` runs the update's stages once, in one order (learn the context, sample the
policy, alpha step, critic step, actor step, map step, targets); at each stage a backend writes
the gradients into the parameters' `.grad` and the agent clips and applies them. Two backends:

- `AutogradBackend`: the losses differentiated by autograd on the modules. The reference, and
  the one that runs the critics' LayerNorm and dropout, CrossQ, SimBa, ensembles other than a
  twin pair, gradients into the learned context, forward hooks and forensics' per-layer tracing
  (under `training.precision: bf16`, with bf16 autocast).
- `ByHandBackend`: each loss's gradient written out (`dynsac.sac.by_hand`,
  `dynamics_map.prediction_gradients`), optionally through `torch.compile`: the same math and
  random draws without autograd's graph (1.4x the updates/s at [64, 64] batch 256 on CPU). With
  bf16 products (`bf16_devices`) it hands the passes bfloat16 copies of the weights.

`choose_backend` picks one when the agent is configured, and says why; the float64 parity tests
hold the two to the same numbers. `bf16_devices` then says where the products run in bf16.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import torch
from torch import Tensor

from dynsac.nn import set_grads
from dynsac.sac import by_hand, losses
from dynsac.sac.networks import with_context

if TYPE_CHECKING:
    from dynsac.sac.agent import SACAgent
    from dynsac.sac.replay import Batch


class Sample(NamedTuple):
    """The policy's actions for s' (the TD target) and, when the actor updates, for s."""

    next_action: Tensor
    next_log_prob: Tensor
    action_pi: Tensor | None
    log_prob_pi: Tensor | None
    saved: Any  # what the backend's actor stage needs (by hand: the policy's layer inputs)
    alpha_loss: Tensor | None  # set when the actor updates and alpha is learned; its gradient is in .grad


class CriticResult(NamedTuple):
    alpha: Tensor  # exp(log_alpha) after the alpha step
    loss: Tensor
    q_pred: Tensor
    q_target: Tensor


class GradientBackend(Protocol):
    name: str

    def learn_context(self, agent: SACAgent, batch: Batch) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Contexts of s and s', with the prediction loss's gradients in the map's `.grad`."""

    def sample(self, agent: SACAgent, batch: Batch, context: Tensor | None, next_context: Tensor | None,
               update_policy: bool, noise: Tensor, metrics: dict[str, Tensor]) -> Sample:
        """Policy samples; with the actor updating and alpha learned, log-alpha's gradient."""

    def critic_gradients(self, agent: SACAgent, batch: Batch, context: Tensor | None,
                         next_context: Tensor | None, sample: Sample) -> CriticResult:
        """TD target, critic loss and the critics' gradients."""

    def actor_gradients(self, agent: SACAgent, batch: Batch, context: Tensor | None, sample: Sample,
                        alpha: Tensor) -> Tensor:
        """Actor loss through the just-updated critics, and the policy's gradients."""


def _detached(tensor: Tensor | None) -> Tensor | None:
    return None if tensor is None else tensor.detach()


class AutogradBackend:
    name = "autograd"

    def learn_context(self, agent: SACAgent, batch: Batch) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        # The next windows only feed the TD target: encoded without autograd (backward over B rows, not 2B).
        dynamics_map = agent.dynamics_map
        with torch.no_grad():
            next_context = dynamics_map.encode(batch.next_window, batch.next_window_mask)
        context = dynamics_map.encode(batch.window, batch.window_mask)
        loss, metrics = dynamics_map.prediction_loss(batch.obs, batch.action, batch.transition_next_obs, context)
        agent.map_optimizer.zero_grad(set_to_none=True)
        loss.backward(retain_graph=agent.critic_gradient_to_map or not agent.detach_policy_context)
        return context, next_context, metrics

    def sample(self, agent: SACAgent, batch: Batch, context: Tensor | None, next_context: Tensor | None,
               update_policy: bool, noise: Tensor, metrics: dict[str, Tensor]) -> Sample:
        batch_size, policy = batch.obs.shape[0], agent.policy
        action_pi = log_prob_pi = loss_alpha = None
        if update_policy:
            with agent.autocast():
                action_pi, log_prob_pi, log_std = policy.sample_with_log_std(
                    batch.obs, _policy_context(agent, context), noise[:batch_size]
                )
            log_prob_pi = log_prob_pi.to(agent.log_alpha.dtype)
            metrics.update(losses.sample_statistics(action_pi, log_prob_pi, log_std, policy.log_std_min,
                                                    policy.log_std_max))
            if agent.auto_alpha:
                loss_alpha = losses.alpha_loss(agent.log_alpha, log_prob_pi, agent.target_entropy)
                _backward(agent, agent.alpha_optimizer, loss_alpha)
        with torch.no_grad(), agent.autocast():
            next_action, next_log_prob = policy.sample(batch.next_obs, _detached(next_context), noise[-batch_size:])
        return Sample(next_action, next_log_prob, action_pi, log_prob_pi, None, _detached(loss_alpha))

    def critic_gradients(self, agent: SACAgent, batch: Batch, context: Tensor | None,
                         next_context: Tensor | None, sample: Sample) -> CriticResult:
        alpha, head = agent.log_alpha.detach().exp(), agent.value_head
        critic_context = context if agent.critic_gradient_to_map else _detached(context)
        output, next_output = _critic_outputs(agent, batch, critic_context, next_context, sample)
        next_q = agent.target_critics(head.value(next_output.to(alpha.dtype)))
        q_target = losses.soft_q_target(batch.reward, batch.terminated, next_q, sample.next_log_prob.to(alpha.dtype),
                                        alpha, _discount(agent, batch))
        output = output.to(alpha.dtype)
        loss = head.loss(output, q_target)
        _backward(agent, agent.critic_optimizer, loss)
        with torch.no_grad():
            q_pred = head.value(output)
        return CriticResult(alpha, loss, q_pred, q_target)

    def actor_gradients(self, agent: SACAgent, batch: Batch, context: Tensor | None, sample: Sample,
                        alpha: Tensor) -> Tensor:
        with agent.autocast():  # CrossQ: the critics' running statistics, as at evaluation
            output = agent.critic(batch.obs, sample.action_pi, _policy_context(agent, context), detach_params=True,
                                  batch_statistics=False)
        q_pi = agent.value_head.value(output.to(alpha.dtype))
        loss = losses.actor_loss(q_pi, sample.log_prob_pi, alpha, agent.actor_reduction)
        _backward(agent, agent.actor_optimizer, loss)
        return loss.detach()


def _critic_outputs(agent: SACAgent, batch: Batch, context: Tensor | None, next_context: Tensor | None,
                    sample: Sample) -> tuple[Tensor, Tensor]:
    """The critics' outputs for (s, a), and for (s', a') without gradient: from the target critics,
    or (CrossQ) from the critics themselves, both in one batch so that they share its statistics."""
    next_context = _detached(next_context)
    if agent.critic_target is not None:
        with torch.no_grad(), agent.autocast():
            next_output = agent.critic_target(batch.next_obs, sample.next_action, next_context)
        with agent.autocast():
            return agent.critic(batch.obs, batch.action, context), next_output
    joint_context = None if context is None else torch.cat([context, next_context])
    with agent.autocast():
        joint = agent.critic(torch.cat([batch.obs, batch.next_obs]), torch.cat([batch.action, sample.next_action]),
                             joint_context)
    output, next_output = joint.split(batch.obs.shape[0], dim=1)
    return output, next_output.detach()


def _discount(agent: SACAgent, batch: Batch) -> float | Tensor:
    """gamma, or gamma^m per row for an n-step batch."""
    return agent.settings.gamma if batch.discount is None else batch.discount


def _policy_context(agent: SACAgent, context: Tensor | None) -> Tensor | None:
    return context.detach() if context is not None and agent.detach_policy_context else context


def _backward(agent: SACAgent, optimizer: torch.optim.Optimizer, loss: Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward(retain_graph=agent.critic_gradient_to_map and not agent.detach_policy_context)


class ByHandBackend:
    """The hand-derived gradients; `compiled`: their arithmetic through `torch.compile`."""

    def __init__(self, compiled: bool = False) -> None:
        self.compiled = compiled
        self.name = "by-hand, compiled" if compiled else "by-hand"

    def _steps(self) -> Any:
        return by_hand.compiled() if self.compiled else by_hand

    @torch.no_grad()
    def learn_context(self, agent: SACAgent, batch: Batch) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        return agent.dynamics_map.learn_by_hand(
            batch.window, batch.window_mask, batch.next_window, batch.next_window_mask, batch.obs, batch.action,
            batch.transition_next_obs, compiled=self.compiled,
        )

    @torch.no_grad()
    def sample(self, agent: SACAgent, batch: Batch, context: Tensor | None, next_context: Tensor | None,
               update_policy: bool, noise: Tensor, metrics: dict[str, Tensor]) -> Sample:
        policy = agent.policy
        weights, biases = _compute_copies(agent, *policy.net.linear_parameters())
        result = self._steps().sample_policy(
            with_context(_normalized(agent, batch.obs), _detached(context)) if update_policy else None,
            with_context(_normalized(agent, batch.next_obs), _detached(next_context)), noise, weights, biases,
            policy.log_std_min, policy.log_std_max, agent.log_alpha, agent.target_entropy, agent.auto_alpha,
        )
        metrics.update(result.metrics)
        if result.alpha_grad is not None:
            agent.log_alpha.grad = result.alpha_grad
        return Sample(result.next_action, result.next_log_prob, result.action_pi, result.log_prob_pi, result.saved,
                      result.alpha_loss)

    @torch.no_grad()
    def critic_gradients(self, agent: SACAgent, batch: Batch, context: Tensor | None,
                         next_context: Tensor | None, sample: Sample) -> CriticResult:
        weights, biases = agent.critic.layer_parameters()
        target_weights, target_biases = _compute_copies(agent, *agent.critic_target.layer_parameters())
        alpha, loss, q_pred, q_target, weight_grads, bias_grads = self._steps().critic_gradients(
            _normalized(agent, batch.obs), batch.action, _detached(context), batch.reward, batch.terminated,
            _normalized(agent, batch.next_obs),
            sample.next_action, _detached(next_context), sample.next_log_prob, agent.log_alpha, _discount(agent, batch),
            agent.value_head, *_compute_copies(agent, weights, biases), target_weights, target_biases,
        )
        set_grads(weights + biases, weight_grads + bias_grads)
        return CriticResult(alpha, loss, q_pred, q_target)

    @torch.no_grad()
    def actor_gradients(self, agent: SACAgent, batch: Batch, context: Tensor | None, sample: Sample,
                        alpha: Tensor) -> Tensor:
        policy = agent.policy
        critic_weights, critic_biases = _compute_copies(agent, *agent.critic.layer_parameters())
        policy_weights, policy_biases = policy.net.linear_parameters()
        loss, weight_grads, bias_grads = self._steps().actor_gradients(
            _normalized(agent, batch.obs), _detached(context), sample.action_pi, sample.log_prob_pi, sample.saved,
            alpha, critic_weights, critic_biases, _compute_copies(agent, policy_weights, [])[0], policy.log_std_min,
            policy.log_std_max,
            agent.value_head,
        )
        set_grads(policy_weights + policy_biases, weight_grads + bias_grads)
        return loss


def _compute_copies(agent: SACAgent, weights: list[Tensor], biases: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """The weights the products run with: bfloat16 copies where `agent.bf16_devices` holds their
    device (the passes then multiply in bf16 and return float32), else the parameters themselves."""
    if weights[0].device.type not in agent.bf16_devices:
        return weights, biases
    return [w.to(torch.bfloat16) for w in weights], [b.to(torch.bfloat16) for b in biases]


def _normalized(agent: SACAgent, obs: Tensor) -> Tensor:
    """The observations as the networks see them (`training.obs_normalization`: every network's
    normaliser holds the same statistics)."""
    return obs if agent.obs_statistics is None else agent.policy.obs_normalizer(obs)


AUTOGRAD = AutogradBackend()


def by_hand_obstacle(agent: SACAgent) -> str | None:
    """Why the hand-derived gradients cannot compute `agent`'s update (None: they can)."""
    if agent.critic.layer_norm:
        return "critic LayerNorm is on"
    if agent.policy.network == "simba":
        return "the networks are SimBa's"
    if agent.crossq:
        return "the critics are CrossQ's (batch renormalisation, no target network)"
    if agent.critic.dropout:
        return "critic dropout is on"
    if agent.critic.num_critics != 2 or agent.actor_reduction != "min":
        return "the critic ensemble is not a twin pair"
    if agent.dynamics_map is not None and (agent.critic_gradient_to_map or not agent.detach_policy_context):
        return "loss gradients flow into the learned context"
    return None


# `training.precision: auto` multiplies in bf16 from this width on. On a CPU with AVX512-BF16, 1
# thread, batch 256, the by-hand update takes 0.68x its float32 time at [256, 256] (0.86x on 2
# threads), 0.90x at [128, 128], and 1.19x at [64, 64], where the casts cost more than the products
# save (docs/benchmarks.md, "bf16 products on the CPU").
AUTO_BF16_WIDTH = 256


def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), so that bf16 products
    run at about twice float32's rate instead of being emulated."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def bf16_devices(agent: SACAgent, precision: str) -> tuple[frozenset[str], str]:
    """Where the update's products run in bfloat16 for `training.precision` `precision`, and a
    note for the backend's description ("" for float32 everywhere).

    "bf16": everywhere (bf16 copies of the weights on the by-hand path, autocast on autograd's).
    "auto": on the CPU, with the by-hand backend, when the CPU multiplies bf16 natively and every
    hidden layer of the policy and critics has at least `AUTO_BF16_WIDTH` units; float32 otherwise.
    "fp32": nowhere.
    """
    if precision == "bf16":
        return frozenset({"cpu", "cuda"}), "; bf16 products"
    if precision == "fp32":
        return frozenset(), ""
    if precision != "auto":
        raise ValueError(f"precision {precision!r}: expected 'auto', 'fp32' or 'bf16'")
    if not isinstance(agent.backend, ByHandBackend) or not native_bf16():
        return frozenset(), ""
    policy_weights = agent.policy.net.linear_parameters()[0]
    widths = [w.shape[0] for w in policy_weights[:-1]] + [w.shape[-1] for w in agent.critic.layer_parameters()[0][:-1]]
    if min(widths) < AUTO_BF16_WIDTH:
        return frozenset(), ""
    return frozenset({"cpu"}), f"; bf16 products on the CPU (precision auto: native bf16, layers >= {AUTO_BF16_WIDTH})"


def choose_backend(agent: SACAgent, requested: str = "auto") -> tuple[GradientBackend, str]:
    """The backend for `agent`'s settings and the reason, e.g. ("autograd", "critic LayerNorm is on").

    `requested`: "auto" (by hand where it applies), "autograd" or "by_hand" (refused with the
    obstacle where it does not apply).
    """
    obstacle = by_hand_obstacle(agent)
    if requested == "autograd":
        return AUTOGRAD, "requested"
    if requested == "by_hand" and obstacle is not None:
        raise ValueError(f"the hand-derived update does not apply to this agent: {obstacle}")
    if requested not in ("auto", "by_hand"):
        raise ValueError(f"gradient backend {requested!r}: expected 'auto', 'autograd' or 'by_hand'")
    if obstacle is not None:
        return AUTOGRAD, obstacle
    compiled = agent.settings.compile_update
    reason = "training.compile is on" if compiled else "plain ReLU networks in float32/float64"
    return ByHandBackend(compiled), reason
