"""Every shipped config validates and builds a trainer."""

from pathlib import Path

import pytest

from dynsac import SACTrainer
from dynsac.config import load_config
from dynsac.envs.registration import MUJOCO_INSTALL_HINT, MUJOCO_SPECS, mujoco_available

from conftest import REPO_ROOT

CONFIGS = sorted([*(REPO_ROOT / "configs").glob("*.yaml"), *(REPO_ROOT / "training").glob("*.yaml")])


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_builds(path: Path, tmp_path):
    config = load_config(path, [f"training.checkpoint_dir={tmp_path}/ck", f"logging.dir={tmp_path}/run",
                                "training.buffer_size=1000"])
    if config.env.id in MUJOCO_SPECS and not mujoco_available():
        pytest.skip(f"{config.env.id} needs MuJoCo: {MUJOCO_INSTALL_HINT}")
    trainer = SACTrainer(config)
    trainer.collect_step()
    assert trainer.step == 1
