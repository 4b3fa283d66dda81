"""The config-to-agent mapping, written once: construction and resume both read it from here."""

from __future__ import annotations

from typing import Any

from dynsac.config import Config
from dynsac.context import DynamicsMap
from dynsac.sac.agent import SACAgent, UpdateSettings
from dynsac.sac.value import CategoricalValue, ValueHead, value_bound


def update_settings(config: Config) -> UpdateSettings:
    """The agent's tunables from `config` (what a resume with a changed config re-applies)."""
    params, safety = config.training, config.safety
    return UpdateSettings(
        actor_lr=params.actor_lr,
        critic_lr=params.critic_lr,
        alpha_lr=params.alpha_lr,
        dynamics_map_lr=config.context.learning_rate,
        gamma=params.gamma,
        tau=params.tau,
        max_grad_norm=params.max_grad_norm,
        huber_delta=params.huber_delta if params.critic_loss == "huber" else None,
        policy_delay=params.policy_delay,
        precision=params.precision,
        compile_update=params.compile,
        skip_nonfinite_gradients=safety.skip_nonfinite_gradients,
        context_bound=safety.context_bound,
        weight_decay=params.weight_decay,
        critic_subset=params.critic_subset,
        adam_beta1=params.adam_beta1,
    )


def build_value_head(config: Config) -> ValueHead | None:
    """The categorical critics' head of `training.critic_loss` (None: the scalar head)."""
    params = config.training
    if params.critic_loss not in CategoricalValue.KINDS:
        return None
    return CategoricalValue(params.critic_loss, params.critic_bins,
                            value_bound(params.gamma, params.critic_reward_bound))


def build_dynamics_map(config: Config, obs_dim: int, action_dim: int) -> DynamicsMap | None:
    """The learned dynamics map of `config.context` (None unless `context.source` is learned)."""
    context = config.context
    if context.source != "learned":
        return None
    return DynamicsMap(
        obs_dim, action_dim, context.dim, context.history_length, context.encoder_hidden_sizes,
        context.model_hidden_sizes, context.backward_weight, context.bounded,
    )


def build_agent(config: Config, obs_dim: int, action_dim: int, context_dim: int, action_low: Any,
                action_high: Any) -> SACAgent:
    """The SAC agent `config` describes, for an env of these shapes and action bounds."""
    params = config.training
    return SACAgent(
        obs_dim,
        action_dim,
        actor_hidden_sizes=params.actor_layers,
        critic_hidden_sizes=params.critic_layers,
        context_dim=context_dim,
        action_low=action_low,
        action_high=action_high,
        alpha=params.alpha,
        init_alpha=params.init_alpha,
        target_entropy=params.target_entropy,
        log_std_min=params.log_std_min,
        log_std_max=params.log_std_max,
        dynamics_map=build_dynamics_map(config, obs_dim, action_dim),
        critic_gradient_to_map=config.context.critic_gradient,
        detach_policy_context=config.context.detach_policy,
        critic_layer_norm=params.critic_layer_norm,
        num_critics=params.num_critics,
        critic_dropout=params.critic_dropout,
        value_head=build_value_head(config),
        obs_normalization=params.obs_normalization,
        crossq=params.crossq,
        network=params.network,
        settings=update_settings(config),
    )
