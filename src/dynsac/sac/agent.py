"""The SAC update: networks, optimizers and one gradient step, with no host sync.

Metrics come back as detached 0-d tensors; reading them (`.item()`) is left to the logger, at
logging time, so the update never waits on the device.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dynsac.context.dynamics_map import DynamicsMap
from dynsac.nn import fusable, set_grads
from dynsac.safety.guards import guard_context
from dynsac.sac import by_hand, losses
from dynsac.sac.networks import CriticEnsemble, GaussianPolicy, with_context
from dynsac.sac.optim import LeanAdam
from dynsac.sac.replay import Batch


def context_statistics(context: Tensor) -> dict[str, Tensor]:
    context = context.detach()
    return {"context/mean": context.mean(), "context/std": context.std(), "context/abs_max": context.abs().max()}


def _detached(tensor: Tensor | None) -> Tensor | None:
    return None if tensor is None else tensor.detach()


def clipped_grad_norm(parameters: Iterable[nn.Parameter], max_norm: float | None) -> tuple[Tensor, bool, bool]:
    """Global L2 norm of the gradients before clipping, whether it is finite, and whether its
    float32 computation overflowed; then, if it is finite, clip them in place to `max_norm`.
    One host sync (two when float32 overflows).

    The norm is first computed fused in float32; only if that is not finite is it recomputed with
    float64 accumulation (5-10x slower on CPU), because a float32 sum of squares overflows to Inf
    once the norm passes ~1.8e19 even when every gradient entry is finite. A finite float32 norm
    also proves every squared entry finite, which is what lets the trainer skip the full state
    scan after such a step (Adam's second moments cannot overflow).
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(()), True, False
    if len(grads) == 1:  # log-alpha's: no per-tensor norms to combine
        total = torch.linalg.vector_norm(grads[0])
    else:
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    finite = math.isfinite(total.item())
    widened = not finite
    if widened:
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float64)))
        finite = math.isfinite(total.item())
    if finite and max_norm is not None:
        scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(grads, scale.to(grads[0].dtype))
    return total, finite, widened


class SACAgent(nn.Module):
    """Policy, twin critics with Polyak targets, entropy coefficient, and their optimizers."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        *,
        actor_hidden_sizes: Sequence[int] = (256, 256),
        critic_hidden_sizes: Sequence[int] = (256, 256),
        context_dim: int = 0,
        action_low: Any = None,
        action_high: Any = None,
        actor_lr: float = 3e-4,
        critic_lr: float = 3e-4,
        alpha_lr: float = 3e-4,
        gamma: float = 0.99,
        tau: float = 0.005,
        alpha: float | str = "auto",
        init_alpha: float = 1.0,
        target_entropy: float | str = "auto",
        max_grad_norm: float | None = None,
        log_std_min: float = -5.0,
        log_std_max: float = 2.0,
        dynamics_map: DynamicsMap | None = None,
        dynamics_map_lr: float = 1e-3,
        critic_gradient_to_map: bool = False,
        detach_policy_context: bool = True,
        critic_layer_norm: bool = False,
        huber_delta: float | None = None,
        policy_delay: int = 1,
        bf16: bool = False,
        compile_update: bool = False,
    ) -> None:
        super().__init__()
        self.policy_delay, self.bf16 = policy_delay, bf16
        # torch.compile of the hand-derived update's arithmetic (`dynsac.sac.by_hand`).
        self.compile_update = compile_update
        self.num_critic_updates = 0
        self.gamma, self.tau, self.max_grad_norm = gamma, tau, max_grad_norm
        self.policy = GaussianPolicy(
            obs_dim, action_dim, actor_hidden_sizes, context_dim, action_low, action_high, log_std_min, log_std_max
        )
        self.critic = CriticEnsemble(obs_dim, action_dim, critic_hidden_sizes, context_dim, layer_norm=critic_layer_norm)
        self.huber_delta = huber_delta
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.auto_alpha = alpha == "auto"
        start_alpha = init_alpha if self.auto_alpha else float(alpha)
        self.log_alpha = nn.Parameter(torch.tensor(float(start_alpha)).log(), requires_grad=self.auto_alpha)
        self.target_entropy = -float(action_dim) if target_entropy == "auto" else float(target_entropy)
        # Fused Adam (one kernel per step: ~4x faster than foreach on CPU) with a lean step().
        self.actor_optimizer = LeanAdam(self.policy.parameters(), lr=actor_lr)
        self.critic_optimizer = LeanAdam(self.critic.parameters(), lr=critic_lr)
        self.alpha_optimizer = LeanAdam([self.log_alpha], lr=alpha_lr)
        self.dynamics_map = dynamics_map
        # The hand-derived update where it applies (`by_hand_applies`); False: always autograd.
        self.by_hand = True
        self.skip_nonfinite_gradients = True
        self.skipped_steps = 0  # optimizer steps refused because their gradient was non-finite
        # Steps after which the state may hold NaN/Inf: a non-finite gradient (skipped or, with
        # skipping off, applied) or one whose float32 norm overflowed. The trainer scans the whole
        # state when this moves; a step with a finite float32 norm cannot create NaN/Inf.
        self.suspect_steps = 0
        self.context_bound = float("inf")
        # Context rows replaced by zeros for being non-finite or beyond context_bound (on the device).
        self.register_buffer("context_fallbacks", torch.zeros((), dtype=torch.int64), persistent=False)
        self.critic_gradient_to_map, self.detach_policy_context = critic_gradient_to_map, detach_policy_context
        self.map_optimizer = (
            LeanAdam(dynamics_map.parameters(), lr=dynamics_map_lr) if dynamics_map is not None else None
        )

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        named = {"actor": self.actor_optimizer, "critic": self.critic_optimizer, "alpha": self.alpha_optimizer}
        if self.map_optimizer is not None:
            named["dynamics_map"] = self.map_optimizer
        return named

    @torch.no_grad()
    def acting_context(self, env_context: Any = None, window: Any = None, mask: Any = None) -> Tensor | None:
        """Context (1, C) for acting in one env: the env's own vector, or the encoded window."""
        device = self.log_alpha.device
        if self.dynamics_map is not None:
            window_t = torch.as_tensor(window, device=device).unsqueeze(0)
            return self.dynamics_map.encode(window_t, torch.as_tensor(mask, device=device).unsqueeze(0))
        if env_context is not None:
            return torch.as_tensor(env_context, device=device).unsqueeze(0)
        return None

    def update(self, batch: Batch) -> dict[str, Tensor]:
        """One SAC gradient step on `batch` (order as in Stable-Baselines3: alpha, critics, actor),
        plus the dynamics map's prediction step when the context is learned."""
        metrics: dict[str, Tensor] = {}
        by_hand = self.by_hand_applies(batch.obs)
        context, next_context = batch.context, batch.next_context
        if self.dynamics_map is not None:
            context, next_context = self._learn_context(batch, metrics, by_hand)
        if context is not None:
            metrics.update(context_statistics(context))
            # s and s' in one pass: the same rows replaced, half the ops.
            both, bad_rows = guard_context(torch.cat([context, next_context]), self.context_bound)
            context, next_context = both[:len(context)], both[len(context):]
            self.context_fallbacks += bad_rows
        update_policy = self.num_critic_updates % self.policy_delay == 0
        self.num_critic_updates += 1
        # The policy's noise for s (when the actor updates) and for s', in one draw that both paths
        # split the same way: the same numbers on every device (on CUDA, two draws of B rows are
        # not one draw of 2B).
        rows = batch.obs.shape[0] * (2 if update_policy else 1)
        noise = torch.randn(rows, self.policy.action_dim, dtype=self.log_alpha.dtype, device=batch.obs.device)
        if by_hand:
            q_pred, q_target, loss_critic, alpha = self._update_by_hand(
                batch, _detached(context), _detached(next_context), update_policy, noise, metrics
            )
        else:
            q_pred, q_target, loss_critic, alpha = self._update_with_autograd(
                batch, context, next_context, update_policy, noise, metrics
            )
        if self.map_optimizer is not None:
            # Last: the critic and actor losses may have added their gradients to the encoder's.
            metrics["dynamics_map/grad_norm"] = self._apply_gradients(self.map_optimizer)
        self.update_targets()
        metrics.update(losses.q_statistics(q_pred, q_target))
        metrics.update(critic_loss=loss_critic.detach(), alpha=alpha)
        return metrics

    def by_hand_applies(self, obs: Tensor) -> bool:
        """Whether `update` takes the hand-derived path: the plain ReLU networks in float32 (no
        bf16, no critic LayerNorm, no forward hooks, which it would bypass), and no loss gradient
        into the context."""
        if not (self.by_hand and self.policy.net.fused and self.critic.fused) or self.bf16:
            return False
        if self.critic.layer_norm or self.critic.trace is not None:
            return False
        if self.dynamics_map is not None and not (
            self.detach_policy_context and not self.critic_gradient_to_map and self.dynamics_map.by_hand_applies(obs)
        ):
            return False
        policy_weight = self.policy.net.linear_parameters()[0][0]
        modules = [self.policy, self.critic, self.critic_target, *self.policy.net._modules.values()]
        critic_weight = self.critic.layer_parameters()[0][0]
        return fusable(obs, policy_weight, modules) and critic_weight.dtype == policy_weight.dtype

    def _update_with_autograd(
        self, batch: Batch, context: Tensor | None, next_context: Tensor | None, update_policy: bool,
        noise: Tensor, metrics: dict[str, Tensor],
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The reference update: losses differentiated by autograd. Returns q_pred, q_target, the
        critic loss and alpha. `noise`: the policy's draws for s (first B rows, when the actor
        updates), then for s'."""
        batch_size = batch.obs.shape[0]
        policy_context = context.detach() if context is not None and self.detach_policy_context else context
        critic_context = context if self.critic_gradient_to_map else _detached(context)
        next_context = _detached(next_context)
        if update_policy:
            with self._autocast():
                action_pi, log_prob_pi, log_std = self.policy.sample_with_log_std(
                    batch.obs, policy_context, noise[:batch_size]
                )
            log_prob_pi = log_prob_pi.to(self.log_alpha.dtype)
            metrics.update(losses.sample_statistics(
                action_pi, log_prob_pi, log_std, self.policy.log_std_min, self.policy.log_std_max
            ))
            if self.auto_alpha:
                loss_alpha = losses.alpha_loss(self.log_alpha, log_prob_pi, self.target_entropy)
                metrics["alpha_loss"] = loss_alpha.detach()
                metrics["alpha_grad_norm"] = self._step(self.alpha_optimizer, loss_alpha)
        alpha = self.log_alpha.detach().exp()

        with torch.no_grad(), self._autocast():
            next_action, next_log_prob = self.policy.sample(batch.next_obs, next_context, noise[-batch_size:])
            next_q = self.critic_target(batch.next_obs, next_action, next_context)
        q_target = losses.soft_q_target(
            batch.reward, batch.terminated, next_q.to(alpha.dtype), next_log_prob.to(alpha.dtype), alpha, self.gamma
        )
        with self._autocast():
            q_pred = self.critic(batch.obs, batch.action, critic_context)
        q_pred = q_pred.to(alpha.dtype)
        loss_critic = losses.critic_loss(q_pred, q_target, self.huber_delta)
        metrics["q_grad_norm"] = self._step(self.critic_optimizer, loss_critic)
        self._clip_metric("q", metrics)

        if update_policy:
            with self._autocast():
                q_pi = self.critic(batch.obs, action_pi, policy_context, detach_params=True)
            loss_actor = losses.actor_loss(q_pi.to(alpha.dtype), log_prob_pi, alpha)
            metrics["policy_grad_norm"] = self._step(self.actor_optimizer, loss_actor)
            metrics["actor_loss"] = loss_actor.detach()
            self._clip_metric("policy", metrics)
        return q_pred, q_target, loss_critic, alpha

    @torch.no_grad()
    def _update_by_hand(
        self, batch: Batch, context: Tensor | None, next_context: Tensor | None, update_policy: bool,
        noise: Tensor, metrics: dict[str, Tensor],
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """`_update_with_autograd` with each loss's gradient written out (`dynsac.sac.by_hand`):
        the same math and random draws without autograd's graph: 1.4x the updates/s at [64, 64]
        batch 256 on CPU. The context arrives detached: no gradient flows into it on this path."""
        steps = self._by_hand_steps()
        policy_weights, policy_biases = self.policy.net.linear_parameters()
        critic_weights, critic_biases = self.critic.layer_parameters()
        log_std_min, log_std_max = self.policy.log_std_min, self.policy.log_std_max
        sample = steps.sample_policy(
            with_context(batch.obs, context) if update_policy else None, with_context(batch.next_obs, next_context),
            noise, policy_weights, policy_biases, log_std_min, log_std_max, self.log_alpha, self.target_entropy,
            self.auto_alpha,
        )
        metrics.update(sample.metrics)
        if sample.alpha_grad is not None:
            metrics["alpha_loss"], self.log_alpha.grad = sample.alpha_loss, sample.alpha_grad
            metrics["alpha_grad_norm"] = self._apply_gradients(self.alpha_optimizer)

        target_weights, target_biases = self.critic_target.layer_parameters()
        alpha, loss_critic, q_pred, q_target, weight_grads, bias_grads = steps.critic_gradients(
            batch.obs, batch.action, context, batch.reward, batch.terminated, batch.next_obs, sample.next_action,
            next_context, sample.next_log_prob, self.log_alpha, self.gamma, self.huber_delta, critic_weights,
            critic_biases, target_weights, target_biases,
        )
        set_grads(critic_weights + critic_biases, weight_grads + bias_grads)
        metrics["q_grad_norm"] = self._apply_gradients(self.critic_optimizer)
        self._clip_metric("q", metrics)

        if update_policy:  # with the critics just updated, as in the autograd path
            metrics["actor_loss"], weight_grads, bias_grads = steps.actor_gradients(
                batch.obs, context, sample.action_pi, sample.log_prob_pi, sample.saved, alpha, critic_weights,
                critic_biases, policy_weights, log_std_min, log_std_max,
            )
            set_grads(policy_weights + policy_biases, weight_grads + bias_grads)
            metrics["policy_grad_norm"] = self._apply_gradients(self.actor_optimizer)
            self._clip_metric("policy", metrics)
        return q_pred, q_target, loss_critic, alpha

    def _by_hand_steps(self) -> Any:
        """The functions of `dynsac.sac.by_hand`, through `torch.compile` with `compile_update`."""
        return by_hand.compiled() if self.compile_update else by_hand

    def _clip_metric(self, name: str, metrics: dict[str, Tensor]) -> None:
        if self.max_grad_norm is not None:
            metrics[f"{name}_grad_clipped"] = (metrics[f"{name}_grad_norm"] >= self.max_grad_norm).double()

    def _autocast(self):
        """bfloat16 autocast for the forward passes when `bf16` is on; a no-op otherwise."""
        return torch.autocast(self.log_alpha.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _learn_context(self, batch: Batch, metrics: dict[str, Tensor], by_hand: bool) -> tuple[Tensor, Tensor]:
        """Encode the windows and backpropagate the prediction loss into the encoder (its optimizer
        steps at the end of the update). The next windows only feed the TD target: encoded without
        autograd, so the backward pass covers B rows, not 2B."""
        if by_hand:
            context, next_context, map_metrics = self.dynamics_map.learn_by_hand(
                batch.window, batch.window_mask, batch.next_window, batch.next_window_mask, batch.obs, batch.action,
                batch.next_obs, compiled=self.compile_update,
            )
        else:
            with torch.no_grad():
                next_context = self.dynamics_map.encode(batch.next_window, batch.next_window_mask)
            context = self.dynamics_map.encode(batch.window, batch.window_mask)
            loss, map_metrics = self.dynamics_map.prediction_loss(batch.obs, batch.action, batch.next_obs, context)
            self.map_optimizer.zero_grad(set_to_none=True)
            shared_graph = self.critic_gradient_to_map or not self.detach_policy_context
            loss.backward(retain_graph=shared_graph)
        metrics.update({f"dynamics_map/{name}": value for name, value in map_metrics.items()})
        return context, next_context

    def _step(self, optimizer: LeanAdam, loss: Tensor) -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss.backward(retain_graph=self.critic_gradient_to_map and not self.detach_policy_context)
        return self._apply_gradients(optimizer)

    def _apply_gradients(self, optimizer: LeanAdam) -> Tensor:
        """Clip the gradients of `optimizer`'s parameters and take its step, unless they are
        non-finite; returns their norm before clipping."""
        groups = optimizer.param_groups
        parameters = groups[0]["params"] if len(groups) == 1 else [p for group in groups for p in group["params"]]
        norm, finite, widened = clipped_grad_norm(parameters, self.max_grad_norm)
        if widened:  # (a Module attribute write costs ~5 us: only when it changes)
            self.suspect_steps += 1
        # A non-finite gradient is never applied: Adam would spread it into every weight and its
        # moment estimates. (One host sync per optimizer step; negligible on CPU.)
        if self.skip_nonfinite_gradients and not finite:
            optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            return norm
        optimizer.fast_step()
        return norm

    @torch.no_grad()
    def update_targets(self) -> None:
        torch._foreach_lerp_(self.critic_target.flat_parameters(), self.critic.flat_parameters(), self.tau)

    def set_learning_rates(self, actor: float, critic: float, alpha: float, dynamics_map: float | None = None) -> None:
        for optimizer, lr in zip(self.optimizers.values(), (actor, critic, alpha, dynamics_map)):
            for group in optimizer.param_groups:
                group["lr"] = lr

    def scale_learning_rates(self, factor: float) -> None:
        for optimizer in self.optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] *= factor

    def learning_rates(self) -> dict[str, float]:
        return {name: optimizer.param_groups[0]["lr"] for name, optimizer in self.optimizers.items()}

    def full_state_dict(self) -> dict[str, Any]:
        """Networks, targets, log-alpha and optimizer states."""
        return {
            "modules": self.state_dict(),
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
        }

    def load_full_state_dict(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["modules"])
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
