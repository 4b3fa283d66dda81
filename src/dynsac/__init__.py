"""dynsac: Soft Actor-Critic conditioned on a dynamics map, built never to die of NaN.

The public names load on first use: `import dynsac` (and the `dynsac` command's start) does not
import torch, so the command line can choose the OpenMP thread and wait policy before torch's
OpenMP runtime starts (`dynsac.runtime`). Importing dynsac changes no environment variable.
"""

from __future__ import annotations

import importlib
from typing import Any

from dynsac.version import __version__

_PUBLIC = {
    "Config": "dynsac.config", "TrainingParams": "dynsac.config", "load_config": "dynsac.config",
    "GaussianPolicy": "dynsac.sac", "SACTrainer": "dynsac.training",
    "Controller": "dynsac.export", "load_controller": "dynsac.export",
}

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'dynsac' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
