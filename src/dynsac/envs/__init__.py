"""Built-in environments whose dynamics change from episode to episode.

Importing this package registers ``dynsac/RandomLinear-v0`` and ``dynsac/RandomPendulum-v0``
with Gymnasium.
"""

from dynsac.envs.factory import EnvError, make_env
from dynsac.envs.random_linear import RandomLinearEnv
from dynsac.envs.random_pendulum import RandomPendulumEnv
from dynsac.envs.registration import RANDOM_LINEAR_ID, RANDOM_PENDULUM_ID, register_envs

register_envs()

__all__ = [
    "EnvError",
    "make_env",
    "RANDOM_LINEAR_ID",
    "RANDOM_PENDULUM_ID",
    "RandomLinearEnv",
    "RandomPendulumEnv",
    "register_envs",
]
