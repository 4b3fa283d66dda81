"""Build environments from `env:` config: a Gymnasium id or `package.module:Class`."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import TimeLimit


class EnvError(ValueError):
    """An environment that cannot be built or used by SAC; names the config key at fault."""


EnvFactory = Callable[..., gym.Env]


def factory_name(env_fn: EnvFactory) -> str:
    """`module.qualname` of an env factory, as checkpoints record it."""
    return f"{getattr(env_fn, '__module__', '?')}.{getattr(env_fn, '__qualname__', type(env_fn).__name__)}"


def make_env(env_id: str, kwargs: dict[str, Any] | None = None, max_episode_steps: int | None = None,
             env_fn: EnvFactory | None = None) -> gym.Env:
    """Create the env, check it is usable by SAC (flat Box observations, bounded Box actions).

    `env_fn`: a factory for an env that is not registered (`env_fn(**kwargs)` builds it; `env_id`
    is then only its name in messages and run records).
    """
    from dynsac.envs.registration import MUJOCO_INSTALL_HINT, MUJOCO_SPECS, register_envs

    if env_fn is not None:
        return _env_from_factory(env_fn, env_id, dict(kwargs or {}), max_episode_steps)

    register_envs()
    if env_id in MUJOCO_SPECS and env_id not in gym.registry:
        raise EnvError(f"env.id = {env_id!r} needs MuJoCo, which is not installed: {MUJOCO_INSTALL_HINT}")

    kwargs = dict(kwargs or {})
    env_class = _import_class(env_id)
    try:
        if env_class is not None:
            env = env_class(**kwargs)
            if max_episode_steps is not None:
                env = TimeLimit(env, max_episode_steps)
        else:
            env = gym.make(env_id, max_episode_steps=max_episode_steps, **kwargs)
    except gym.error.Error as err:
        raise EnvError(f"env.id = {env_id!r}: {err}") from None
    except TypeError as err:
        raise EnvError(f"env.kwargs = {kwargs!r} do not fit {env_id!r}: {err}") from None
    except ValueError as err:  # a kwarg the env rejected, e.g. a bad range: report it without a traceback
        raise EnvError(f"env.id = {env_id!r} with env.kwargs = {kwargs!r}: {err}") from None
    check_spaces(env, env_id)
    return env


def _env_from_factory(env_fn: EnvFactory, env_id: str, kwargs: dict[str, Any],
                      max_episode_steps: int | None) -> gym.Env:
    name = factory_name(env_fn)
    try:
        env = env_fn(**kwargs)
    except TypeError as err:
        raise EnvError(f"env_fn {name} does not take env.kwargs = {kwargs!r}: {err}") from None
    if not isinstance(env, gym.Env):
        raise EnvError(f"env_fn {name} returned {type(env).__name__}, not a gymnasium.Env")
    if max_episode_steps is not None:
        env = TimeLimit(env, max_episode_steps)
    check_spaces(env, f"{env_id} (from env_fn {name})")
    return env


def _import_class(env_id: str) -> type[gym.Env] | None:
    """`package.module:Class` -> the class; None for a Gymnasium id."""
    module_name, sep, attribute = env_id.partition(":")
    if not sep or "/" in module_name or not attribute.isidentifier():
        return None
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise EnvError(f"env.id = {env_id!r}: cannot import module {module_name!r}: {err}") from None
    env_class = getattr(module, attribute, None)
    if not (inspect.isclass(env_class) and issubclass(env_class, gym.Env)):
        if env_class is None:
            raise EnvError(f"env.id = {env_id!r}: module {module_name!r} has no attribute {attribute!r}")
        # `module:env-name` is also Gymnasium's own "import module, then make id" syntax.
        return None
    return env_class


def observation_box(env: gym.Env) -> gym.spaces.Box:
    """The observation space proper: the Box itself, or the "obs" entry of a Dict {"obs", "context"}."""
    space = env.observation_space
    if isinstance(space, gym.spaces.Dict) and set(space.spaces) == {"obs", "context"}:
        return space["obs"]
    return space


def check_spaces(env: gym.Env, env_id: str) -> None:
    missing = [name for name in ("observation_space", "action_space") if getattr(env, name, None) is None]
    if missing:
        raise EnvError(f"env.id = {env_id!r}: the environment defines no {' and no '.join(missing)}")
    obs_space, action_space = observation_box(env), env.action_space
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise EnvError(
            f"env.id = {env_id!r}: observations must be a flat Box (or a Dict of 'obs' and 'context' Boxes), "
            f"got {env.observation_space}"
        )
    if not isinstance(action_space, gym.spaces.Box) or len(action_space.shape) != 1:
        raise EnvError(
            f"env.id = {env_id!r}: SAC needs a continuous action space (1-D Box), got {action_space}"
        )
    if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
        raise EnvError(f"env.id = {env_id!r}: action bounds must be finite for a tanh policy, got {action_space}")


def accepts_kwarg(env: gym.Env, name: str) -> bool:
    """Whether the env's class, or one of its wrappers' (e.g. the MuJoCo presets' dynamics wrapper),
    takes constructor keyword `name` (e.g. `split` for train/test dynamics)."""
    while True:
        try:
            if name in inspect.signature(type(env).__init__).parameters:
                return True
        except (TypeError, ValueError):
            pass
        if not isinstance(env, gym.Wrapper):
            return False
        env = env.env
