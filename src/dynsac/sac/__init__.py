"""Pure SAC pieces: networks, losses, replay buffer and the update step."""

from dynsac.sac.agent import SACAgent
from dynsac.sac.networks import CriticEnsemble, GaussianPolicy
from dynsac.sac.replay import Batch, ReplayBuffer

__all__ = ["Batch", "CriticEnsemble", "GaussianPolicy", "ReplayBuffer", "SACAgent"]
