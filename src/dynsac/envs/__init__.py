"""Built-in environments whose dynamics change from episode to episode.

Importing this package registers ``dynsac/RandomLinear-v0`` and ``dynsac/RandomPendulum-v0`` with
Gymnasium, and, when MuJoCo is installed (``pip install -e '.[mujoco]'``), the MuJoCo presets
``dynsac/RandomHalfCheetah-v0``, ``dynsac/RandomAnt-v0`` and ``dynsac/RandomHopper-v0`` (without
importing ``mujoco`` itself).
"""

from dynsac.envs.factory import EnvError, make_env
from dynsac.envs.mujoco_dynamics import RandomDynamicsMuJoCo
from dynsac.envs.random_linear import RandomLinearEnv
from dynsac.envs.random_pendulum import RandomPendulumEnv
from dynsac.envs.registration import (
    RANDOM_ANT_ID,
    RANDOM_HALF_CHEETAH_ID,
    RANDOM_HOPPER_ID,
    RANDOM_LINEAR_ID,
    RANDOM_PENDULUM_ID,
    register_envs,
)

register_envs()

__all__ = [
    "EnvError",
    "make_env",
    "RANDOM_ANT_ID",
    "RANDOM_HALF_CHEETAH_ID",
    "RANDOM_HOPPER_ID",
    "RANDOM_LINEAR_ID",
    "RANDOM_PENDULUM_ID",
    "RandomDynamicsMuJoCo",
    "RandomLinearEnv",
    "RandomPendulumEnv",
    "register_envs",
]
