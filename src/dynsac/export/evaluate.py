"""Evaluating a `Controller` as `dynsac eval` evaluates a checkpoint: the same env, eval seeds and table."""

from __future__ import annotations

from typing import Any

from dynsac.config import validate_config
from dynsac.context import split_observation
from dynsac.envs.factory import make_env
from dynsac.export.controller import Controller
from dynsac.training.rollout import EvalResult, evaluate_episodes


def controller_env(controller: Controller, env_kwargs: dict[str, Any] | None = None) -> Any:
    """The evaluation env of the run the controller was exported from (its `env.eval_kwargs`
    applied, then `env_kwargs`)."""
    env_cfg = validate_config(controller.spec["config"], source="the controller's spec").env
    kwargs = {**env_cfg.kwargs, **env_cfg.eval_kwargs, **(env_kwargs or {})}
    return make_env(env_cfg.id, kwargs, env_cfg.max_episode_steps)


def evaluate_controller(controller: Controller, episodes: int, env_kwargs: dict[str, Any] | None = None) -> EvalResult:
    """Deterministic episodes from the training run's eval seeds."""
    seed = controller.spec["config"]["training"]["seed"]
    env = controller_env(controller, env_kwargs)
    try:
        return evaluate_episodes(env, episodes, seed, lambda e, s: run_controller_episode(controller, e, s))
    finally:
        env.close()


def run_controller_episode(controller: Controller, env: Any, seed: int) -> tuple[float, int]:
    """One episode of `controller` in `env` from `env.reset(seed=seed)`: (return, length)."""
    controller.reset()
    obs, info = env.reset(seed=seed)
    total, length, done = 0.0, 0, False
    while not done:
        obs, context = split_observation(obs, info)
        action = controller.act(obs, {"context": context} if context is not None else None)
        obs, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        length += 1
        done = terminated or truncated
    return total, length
