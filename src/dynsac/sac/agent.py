"""The SAC update: networks, optimizers and one gradient step, written once.

How its gradients are computed is the agent's gradient backend (`dynsac.sac.backends`), chosen
when its settings are applied (`configure`).

Metrics come back as detached 0-d tensors; reading them (`.item()`) is left to the logger, at
logging time, so the update never waits on the device.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dynsac.context.dynamics_map import DynamicsMap, RunningNormalizer
from dynsac.context.guard import guard_context
from dynsac.sac import losses
from dynsac.sac.backends import GradientBackend, bf16_devices, choose_backend
from dynsac.sac.networks import CriticEnsemble, GaussianPolicy, ObservationNormalizer
from dynsac.sac.optim import LeanAdam
from dynsac.sac.replay import Batch
from dynsac.sac.simba import SimbaCriticEnsemble
from dynsac.sac.value import ScalarValue, ValueHead


def context_statistics(context: Tensor) -> dict[str, Tensor]:
    context = context.detach()
    return {"context/mean": context.mean(), "context/std": context.std(), "context/abs_max": context.abs().max()}


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
    value = total.item()
    widened = not math.isfinite(value)
    if widened:
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float64)))
        value = total.item()
    finite = math.isfinite(value)
    # Well inside the limit the scale below is exactly 1 and the multiply a no-op: skipped (~5 ops
    # and a pass over the gradients per optimizer step); near the limit it is computed as always.
    if finite and max_norm is not None and value * (1.0 + 1e-4) + 1e-6 >= max_norm:
        scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(grads, scale.to(grads[0].dtype))
    return total, finite, widened


def make_critic(obs_dim: int, action_dim: int, hidden_sizes: Sequence[int], context_dim: int, *, network: str,
                num_critics: int, layer_norm: bool, outputs: int, dropout: float,
                batch_renorm: bool) -> CriticEnsemble | SimbaCriticEnsemble:
    """The critic ensemble of these options (`network` "simba": `SimbaCriticEnsemble`)."""
    if network == "simba":
        return SimbaCriticEnsemble(obs_dim, action_dim, hidden_sizes, context_dim, num_critics, outputs)
    return CriticEnsemble(obs_dim, action_dim, hidden_sizes, context_dim, num_critics, layer_norm, outputs, dropout,
                          batch_renorm)


@dataclass(frozen=True)
class UpdateSettings:
    """What may change between runs of one agent: the tunables a resume can override.

    `SACAgent.configure` applies them all at once (learning rates, loss options, guards) and
    chooses the gradient backend for them; construction and resume both go through it.
    """

    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    dynamics_map_lr: float = 1e-3
    gamma: float = 0.99
    tau: float = 0.005
    max_grad_norm: float | None = None
    huber_delta: float | None = None  # None: squared-error critic loss
    policy_delay: int = 1
    precision: str = "fp32"  # "fp32", "bf16" or "auto" (`dynsac.sac.backends.bf16_devices`)
    compile_update: bool = False  # torch.compile of the hand-derived update's arithmetic
    adam_beta1: float = 0.9  # Adam's first-moment decay (CrossQ uses 0.5)
    skip_nonfinite_gradients: bool = True  # a non-finite gradient is never applied
    context_bound: float = float("inf")  # context rows beyond +-bound (or non-finite) fall back to zeros
    backend: str = "auto"  # "auto", "autograd" or "by_hand"
    weight_decay: float = 0.0  # AdamW's decoupled decay of the actor's and critics' weights
    critic_subset: int | None = None  # REDQ: the TD target's min over this many critics drawn at random; None: all


class SACAgent(nn.Module):
    """Policy, critic ensemble with Polyak targets, entropy coefficient, and their optimizers.

    The structure is fixed at construction: sizes, context, alpha mode, and the critic options
    (`num_critics`, `critic_layer_norm`, `critic_dropout`, `value_head` (`dynsac.sac.value`; None:
    a scalar Q), `obs_normalization`, `crossq` (no target network), `network` ("mlp" or "simba")).
    `settings` (`UpdateSettings`) holds the tunables, applied by `configure`.
    """

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
        alpha: float | str = "auto",
        init_alpha: float = 1.0,
        target_entropy: float | str = "auto",
        log_std_min: float = -5.0,
        log_std_max: float = 2.0,
        dynamics_map: DynamicsMap | None = None,
        critic_gradient_to_map: bool = False,
        detach_policy_context: bool = True,
        critic_layer_norm: bool = False,
        num_critics: int = 2,
        critic_dropout: float = 0.0,
        value_head: ValueHead | None = None,
        obs_normalization: bool = False,
        crossq: bool = False,
        network: str = "mlp",
        settings: UpdateSettings | None = None,
        **tunables: Any,
    ) -> None:
        """`tunables`: `UpdateSettings` fields, as a shorthand for `settings=UpdateSettings(...)`."""
        super().__init__()
        settings = replace(settings or UpdateSettings(), **tunables)
        self.num_critic_updates = 0
        self.policy = GaussianPolicy(
            obs_dim, action_dim, actor_hidden_sizes, context_dim, action_low, action_high, log_std_min, log_std_max,
            network,
        )
        self.value_head = value_head or ScalarValue(settings.huber_delta)
        self.critic = make_critic(obs_dim, action_dim, critic_hidden_sizes, context_dim, network=network,
                                  num_critics=num_critics, layer_norm=critic_layer_norm, outputs=self.value_head.bins,
                                  dropout=critic_dropout, batch_renorm=crossq)
        # Running observation statistics, and the normalising first layer of every network (option).
        self.obs_statistics = RunningNormalizer(obs_dim, epsilon=1e-8) if obs_normalization else None
        if obs_normalization:
            self.policy.obs_normalizer = ObservationNormalizer(obs_dim)
            self.critic.obs_normalizer = ObservationNormalizer(obs_dim)
        # CrossQ has no target network: s' goes through the critics with s, in one batch.
        self.crossq = crossq
        self.critic_target = None if crossq else copy.deepcopy(self.critic).requires_grad_(False)
        self.auto_alpha = alpha == "auto"
        start_alpha = init_alpha if self.auto_alpha else float(alpha)
        self.log_alpha = nn.Parameter(torch.tensor(float(start_alpha)).log(), requires_grad=self.auto_alpha)
        self.target_entropy = -float(action_dim) if target_entropy == "auto" else float(target_entropy)
        # Fused Adam (one kernel per step: ~4x faster than foreach on CPU) with a lean step().
        self.actor_optimizer = LeanAdam(self.policy.parameters(), lr=settings.actor_lr)
        self.critic_optimizer = LeanAdam(self.critic.parameters(), lr=settings.critic_lr)
        self.alpha_optimizer = LeanAdam([self.log_alpha], lr=settings.alpha_lr)
        self.dynamics_map = dynamics_map
        self.critic_gradient_to_map, self.detach_policy_context = critic_gradient_to_map, detach_policy_context
        self.map_optimizer = (
            LeanAdam(dynamics_map.parameters(), lr=settings.dynamics_map_lr) if dynamics_map is not None else None
        )
        self.skipped_steps = 0  # optimizer steps refused because their gradient was non-finite
        # Steps after which the state may hold NaN/Inf: a non-finite gradient (skipped or, with
        # skipping off, applied) or one whose float32 norm overflowed. The supervisor scans the
        # whole state when this moves; a step with a finite float32 norm cannot create NaN/Inf.
        self.suspect_steps = 0
        # Context rows replaced by zeros for being non-finite or beyond context_bound (on the device).
        self.register_buffer("context_fallbacks", torch.zeros((), dtype=torch.int64), persistent=False)
        self.configure(settings)

    def configure(self, settings: UpdateSettings) -> str:
        """Apply `settings` (learning rates included) and choose the gradient backend for them.
        Returns the backend's description with its reason, e.g. "autograd (critic LayerNorm is on)"."""
        subset = settings.critic_subset
        if subset is not None and not 1 <= subset <= self.critic.num_critics:
            raise ValueError(f"critic_subset {subset}: expected 1 to the number of critics ({self.critic.num_critics})")
        self.settings = settings
        if self.value_head.bins == 1:
            self.value_head = ScalarValue(settings.huber_delta)
        self.set_learning_rates(settings.actor_lr, settings.critic_lr, settings.alpha_lr, settings.dynamics_map_lr)
        for optimizer in (self.actor_optimizer, self.critic_optimizer):
            for group in optimizer.param_groups:
                group["weight_decay"], group["decoupled_weight_decay"] = settings.weight_decay, True
        for optimizer in self.optimizers.values():
            for group in optimizer.param_groups:
                group["betas"] = (settings.adam_beta1, group["betas"][1])
        self.backend, reason = choose_backend(self, settings.backend)
        self.bf16_devices, precision = bf16_devices(self, settings.precision)
        self.backend_description = f"{self.backend.name} ({reason}{precision})"
        return self.backend_description

    def use_backend(self, name: str) -> str:
        """Compute the gradients with backend `name` ("auto", "autograd", "by_hand") from now on
        (forward hooks on the networks, for instance, need "autograd")."""
        return self.configure(replace(self.settings, backend=name))

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        named = {"actor": self.actor_optimizer, "critic": self.critic_optimizer, "alpha": self.alpha_optimizer}
        if self.map_optimizer is not None:
            named["dynamics_map"] = self.map_optimizer
        return named

    @torch.no_grad()
    def observe(self, obs: Tensor | np.ndarray, action: Tensor | np.ndarray, next_obs: Tensor | np.ndarray) -> None:
        """A collected transition (rows of N envs): the learned map's feature statistics and,
        with observation normalisation, the running statistics every network normalises with.
        NumPy arrays only where the agent lives on the CPU."""
        if self.dynamics_map is not None:
            self.dynamics_map.observe(obs, action, next_obs)
        if self.obs_statistics is not None:
            stats = self.obs_statistics
            stats.update(obs)
            # Until there is a spread (two observations), the identity; decided on the device, so
            # acting never waits on it.
            spread = stats.count >= 2
            shift = torch.where(spread, stats.mean, torch.zeros_like(stats.mean))
            scale = torch.where(spread, stats.std.reciprocal(), torch.ones_like(stats.mean))
            for network in filter(None, (self.policy, self.critic, self.critic_target)):
                network.obs_normalizer.shift.copy_(shift)
                network.obs_normalizer.scale.copy_(scale)

    @torch.no_grad()
    def acting_context(self, env_context: Any = None, window: Any = None, mask: Any = None) -> Tensor | None:
        """Context (N, C) for acting: the envs' own vectors (N, C), or the encoded windows (N, K, F)."""
        device = self.log_alpha.device
        if self.dynamics_map is not None:
            return self.dynamics_map.encode(torch.as_tensor(window, device=device), torch.as_tensor(mask, device=device))
        if env_context is not None:
            return torch.as_tensor(env_context, device=device)
        return None

    def update(self, batch: Batch, backend: GradientBackend | None = None) -> dict[str, Tensor]:
        """One SAC gradient step on `batch` (order as in Stable-Baselines3: alpha, critics, actor),
        plus the dynamics map's prediction step when the context is learned. `backend` overrides
        the configured one for this call (forensics replays with autograd)."""
        backend = backend or self.backend
        metrics: dict[str, Tensor] = {}
        context, next_context = batch.context, batch.next_context
        if self.dynamics_map is not None:
            context, next_context, map_metrics = backend.learn_context(self, batch)
            metrics.update({f"dynamics_map/{name}": value for name, value in map_metrics.items()})
        if context is not None:
            metrics.update(context_statistics(context))
            # s and s' in one pass: the same rows replaced, half the ops.
            both, bad_rows = guard_context(torch.cat([context, next_context]), self.settings.context_bound)
            context, next_context = both[:len(context)], both[len(context):]
            self.context_fallbacks += bad_rows
        update_policy = self.num_critic_updates % self.settings.policy_delay == 0
        self.num_critic_updates += 1
        # The policy's noise for s (when the actor updates) and for s', in one draw that every
        # backend splits the same way: the same numbers on every device (on CUDA, two draws of B
        # rows are not one draw of 2B).
        rows = batch.obs.shape[0] * (2 if update_policy else 1)
        noise = torch.randn(rows, self.policy.action_dim, dtype=self.log_alpha.dtype, device=batch.obs.device)

        sample = backend.sample(self, batch, context, next_context, update_policy, noise, metrics)
        if sample.alpha_loss is not None:
            metrics["alpha_loss"] = sample.alpha_loss
            metrics["alpha_grad_norm"] = self._apply_gradients(self.alpha_optimizer)
        critic = backend.critic_gradients(self, batch, context, next_context, sample)
        metrics["q_grad_norm"] = self._apply_gradients(self.critic_optimizer)
        self._clip_metric("q", metrics)
        if update_policy:  # through the critics just updated
            metrics["actor_loss"] = backend.actor_gradients(self, batch, context, sample, critic.alpha)
            metrics["policy_grad_norm"] = self._apply_gradients(self.actor_optimizer)
            self._clip_metric("policy", metrics)
        if self.map_optimizer is not None:
            # Last: the critic and actor losses may have added their gradients to the encoder's.
            metrics["dynamics_map/grad_norm"] = self._apply_gradients(self.map_optimizer)
        self.update_targets()
        metrics.update(losses.q_statistics(critic.q_pred, critic.q_target))
        metrics.update(critic_loss=critic.loss.detach(), alpha=critic.alpha)
        return metrics

    def _clip_metric(self, name: str, metrics: dict[str, Tensor]) -> None:
        if self.settings.max_grad_norm is not None:
            metrics[f"{name}_grad_clipped"] = (metrics[f"{name}_grad_norm"] >= self.settings.max_grad_norm).double()

    def autocast(self):
        """bfloat16 autocast for the autograd backend's forward passes where `bf16_devices` says
        so (`training.precision: bf16`); a no-op otherwise."""
        device = self.log_alpha.device.type
        return torch.autocast(device, dtype=torch.bfloat16, enabled=device in self.bf16_devices)

    def _apply_gradients(self, optimizer: LeanAdam) -> Tensor:
        """Clip the gradients of `optimizer`'s parameters and take its step, unless they are
        non-finite; returns their norm before clipping."""
        groups = optimizer.param_groups
        parameters = groups[0]["params"] if len(groups) == 1 else [p for group in groups for p in group["params"]]
        norm, finite, widened = clipped_grad_norm(parameters, self.settings.max_grad_norm)
        if widened:
            self.suspect_steps += 1
        # A non-finite gradient is never applied: Adam would spread it into every weight and its
        # moment estimates. (One host sync per optimizer step; negligible on CPU.)
        if self.settings.skip_nonfinite_gradients and not finite:
            optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            return norm
        optimizer.fast_step()
        return norm

    def target_critics(self, next_q: Tensor) -> Tensor:
        """The rows of the target critics' Q-values (E, B) the TD target takes its min over: all,
        or (REDQ, `critic_subset`) a random subset drawn afresh for every update."""
        subset = self.settings.critic_subset
        if subset is None or subset == next_q.shape[0]:
            return next_q
        return next_q[torch.randperm(next_q.shape[0], device=next_q.device)[:subset]]

    @property
    def actor_reduction(self) -> str:
        """How the actor loss combines the critics: their min (SAC), or their mean (REDQ, when
        the target takes a subset's min)."""
        subset = self.settings.critic_subset
        return "min" if subset is None or subset == self.critic.num_critics else "mean"

    @torch.no_grad()
    def update_targets(self) -> None:
        if self.critic_target is None:
            return
        torch._foreach_lerp_(self.critic_target.flat_parameters(), self.critic.flat_parameters(), self.settings.tau)

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
