"""dynsac: Soft Actor-Critic conditioned on a dynamics map, built never to die of NaN."""

import os


# Spinning OpenMP workers turn a 2-thread update into a crawl whenever another process holds a core
# (measured on 2 cores beside one busy process: 0.6 vs 22 steps/s). Sleeping workers cost little
# when the machine is idle. Only effective when dynsac is imported before torch; a user's own
# setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from dynsac.version import __version__  # noqa: E402
from dynsac.config import Config, TrainingParams, load_config  # noqa: E402
from dynsac.sac import GaussianPolicy  # noqa: E402
from dynsac.training import SACTrainer  # noqa: E402
from dynsac.export import Controller, load_controller  # noqa: E402

__all__ = ["Config", "Controller", "GaussianPolicy", "SACTrainer", "TrainingParams", "__version__", "load_config",
           "load_controller"]
