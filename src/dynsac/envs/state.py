"""Capture and restore an environment's mid-episode state, for exact resume from checkpoints.

Envs are not generally serialisable, so this covers what can be restored faithfully:
- an env (unwrapped) with `state_dict()` / `load_state_dict()`: dynsac's built-in envs;
- MuJoCo envs: qpos, qvel and simulation time;
- otherwise the unwrapped env's plain numeric attributes (classic control: `state`, `last_u`...).
Always included: the env's random generator, the wrappers' elapsed-step counters and the state of
every wrapper with `state_dict()` / `load_state_dict()` (the MuJoCo presets' dynamics wrapper:
scales, modified model arrays, its generator; restored first, so the body is the saved one before
qpos/qvel are set). Everything
is stored as plain Python/list data, loadable with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import numbers
from typing import Any

import gymnasium as gym
import numpy as np


def capture_env_state(env: gym.Env) -> dict[str, Any]:
    unwrapped = env.unwrapped
    state: dict[str, Any] = {"elapsed_steps": _wrapper_counters(env)}
    state["wrappers"] = [wrapper.state_dict() for wrapper in _wrappers_with_state(env)]
    if hasattr(unwrapped, "state_dict") and hasattr(unwrapped, "load_state_dict"):
        state["kind"], state["data"] = "state_dict", unwrapped.state_dict()
        return state
    state["np_random"] = unwrapped.np_random.bit_generator.state
    if hasattr(unwrapped, "data") and hasattr(unwrapped.data, "qpos") and hasattr(unwrapped, "set_state"):
        data = unwrapped.data
        state["kind"] = "mujoco"
        state["data"] = {"qpos": data.qpos.tolist(), "qvel": data.qvel.tolist(), "time": float(data.time)}
        return state
    state["kind"], state["data"] = "attributes", _plain_attributes(unwrapped)
    return state


def restore_env_state(env: gym.Env, state: dict[str, Any]) -> None:
    """Restore into an env that has already been reset once."""
    unwrapped = env.unwrapped
    stateful, saved = _wrappers_with_state(env), state.get("wrappers", [])
    if len(saved) != len(stateful):
        raise ValueError(
            f"saved state covers {len(saved)} stateful wrapper(s), this env has {len(stateful)} "
            f"({', '.join(type(w).__name__ for w in stateful) or 'none'})"
        )
    for wrapper, wrapper_state in zip(stateful, saved):
        wrapper.load_state_dict(wrapper_state)
    if state["kind"] == "state_dict":
        unwrapped.load_state_dict(state["data"])
    else:
        unwrapped.np_random.bit_generator.state = state["np_random"]
        data = state["data"]
        if state["kind"] == "mujoco":
            unwrapped.set_state(np.asarray(data["qpos"]), np.asarray(data["qvel"]))
            unwrapped.data.time = data["time"]
        else:
            for name, value in data.items():
                setattr(unwrapped, name, _from_plain(value))
    for wrapper, steps in zip(_wrappers_with_counter(env), state["elapsed_steps"]):
        wrapper._elapsed_steps = steps


def _wrappers_with_counter(env: gym.Env) -> list[gym.Env]:
    found = []
    while isinstance(env, gym.Wrapper):
        if hasattr(env, "_elapsed_steps"):
            found.append(env)
        env = env.env
    return found


def _wrappers_with_state(env: gym.Env) -> list[gym.Env]:
    found = []
    while isinstance(env, gym.Wrapper):
        if callable(getattr(env, "state_dict", None)) and callable(getattr(env, "load_state_dict", None)):
            found.append(env)
        env = env.env
    return found


def _wrapper_counters(env: gym.Env) -> list[int | None]:
    return [wrapper._elapsed_steps for wrapper in _wrappers_with_counter(env)]


def _plain_attributes(unwrapped: gym.Env) -> dict[str, Any]:
    plain = {}
    for name, value in vars(unwrapped).items():
        if name.startswith("_") or name in {"observation_space", "action_space", "metadata", "spec"}:
            continue
        if isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
            plain[name] = {"ndarray": value.tolist(), "dtype": str(value.dtype)}
        elif value is None or isinstance(value, (bool, numbers.Number)):
            plain[name] = value.item() if isinstance(value, np.generic) else value
    return plain


def _from_plain(value: Any) -> Any:
    if isinstance(value, dict) and "ndarray" in value:
        return np.asarray(value["ndarray"], dtype=value["dtype"])
    return value
