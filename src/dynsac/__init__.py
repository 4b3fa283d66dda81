"""dynsac: Soft Actor-Critic conditioned on a dynamics map, built never to die of NaN."""

__version__ = "0.1.0"

from dynsac.config import Config, TrainingParams, load_config  # noqa: E402
from dynsac.sac import GaussianPolicy  # noqa: E402
from dynsac.training import SACTrainer  # noqa: E402

__all__ = ["Config", "GaussianPolicy", "SACTrainer", "TrainingParams", "__version__", "load_config"]
