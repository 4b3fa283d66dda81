"""Shared fixtures: tiny, fast configs that write into the test's temporary folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from dynsac.config import Config, load_config

REPO_ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(1)


def tiny_overrides(tmp_path: Path, **extra: object) -> list[str]:
    """Overrides for a small, quick Pendulum run rooted in tmp_path."""
    values: dict[str, object] = {
        "env.id": "Pendulum-v1",
        "training.total_steps": 400,
        "training.learning_starts": 100,
        "training.batch_size": 32,
        "training.buffer_size": 10_000,
        "training.hidden_sizes": "[32, 32]",
        "training.eval_interval": 200,
        "training.eval_episodes": 1,
        "training.checkpoint_interval": 200,
        "training.checkpoint_dir": str(tmp_path / "checkpoints"),
        "logging.dir": str(tmp_path / "run"),
        "logging.log_interval": 100,
        "logging.progress": "off",
        "training.torch_threads": 1,  # tests run side by side: no thread governor
    }
    values.update(extra)
    return [f"{key}={value}" for key, value in values.items()]


@pytest.fixture
def tiny_config(tmp_path: Path):
    def make(**extra: object) -> Config:
        return load_config(None, tiny_overrides(tmp_path, **extra))

    return make


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"  # tests run side by side on 2 cores: no thread oversubscription
    return env
