"""Registration of dynsac's built-in environments with Gymnasium."""

from __future__ import annotations

import importlib.util

import gymnasium

RANDOM_LINEAR_ID = "dynsac/RandomLinear-v0"
RANDOM_PENDULUM_ID = "dynsac/RandomPendulum-v0"
RANDOM_HALF_CHEETAH_ID = "dynsac/RandomHalfCheetah-v0"
RANDOM_ANT_ID = "dynsac/RandomAnt-v0"
RANDOM_HOPPER_ID = "dynsac/RandomHopper-v0"
MUJOCO_INSTALL_HINT = "pip install -e '.[mujoco]'"

# RandomLinear-v0 has no TimeLimit: it truncates itself after its `episode_length` kwarg, so
# changing that kwarg cannot disagree with a registered limit. RandomPendulum-v0 keeps
# Pendulum-v1's registered limit of 200 steps.
_SPECS: dict[str, dict[str, object]] = {
    RANDOM_LINEAR_ID: {
        "entry_point": "dynsac.envs.random_linear:RandomLinearEnv",
        "max_episode_steps": None,
    },
    RANDOM_PENDULUM_ID: {
        "entry_point": "dynsac.envs.random_pendulum:RandomPendulumEnv",
        "max_episode_steps": 200,
    },
}

# The MuJoCo presets (envs/mujoco_dynamics.py) keep their base envs' limit of 1000 steps. They are
# registered only when `mujoco` is installed; make_env names the extra to install otherwise.
MUJOCO_SPECS: dict[str, dict[str, object]] = {
    RANDOM_HALF_CHEETAH_ID: {
        "entry_point": "dynsac.envs.mujoco_dynamics:make_preset",
        "kwargs": {"preset_id": RANDOM_HALF_CHEETAH_ID},
        "max_episode_steps": 1000,
    },
    RANDOM_ANT_ID: {
        "entry_point": "dynsac.envs.mujoco_dynamics:make_preset",
        "kwargs": {"preset_id": RANDOM_ANT_ID},
        "max_episode_steps": 1000,
    },
    RANDOM_HOPPER_ID: {
        "entry_point": "dynsac.envs.mujoco_dynamics:make_preset",
        "kwargs": {"preset_id": RANDOM_HOPPER_ID},
        "max_episode_steps": 1000,
    },
}


def mujoco_available() -> bool:
    """Whether the `mujoco` package is installed (found without importing it)."""
    return importlib.util.find_spec("mujoco") is not None


def register_envs() -> None:
    """Register the dynsac environments with Gymnasium; calling it again does nothing."""
    specs = dict(_SPECS)
    if mujoco_available():
        specs.update(MUJOCO_SPECS)
    for env_id, spec in specs.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, **spec)
