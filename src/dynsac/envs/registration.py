"""Registration of dynsac's built-in environments with Gymnasium."""

from __future__ import annotations

import gymnasium

RANDOM_LINEAR_ID = "dynsac/RandomLinear-v0"
RANDOM_PENDULUM_ID = "dynsac/RandomPendulum-v0"

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


def register_envs() -> None:
    """Register the dynsac environments with Gymnasium; calling it again does nothing."""
    for env_id, spec in _SPECS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, **spec)
