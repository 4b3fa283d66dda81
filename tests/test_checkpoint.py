"""Checkpoints: bit-exact resume, atomic saves, safe loading, clear errors, old formats."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dynsac.config import load_config
from dynsac.training import CheckpointError, SACTrainer, load_checkpoint, save_checkpoint
from dynsac.training.checkpoint import FORMAT_VERSION, list_checkpoints

from conftest import REPO_ROOT, tiny_overrides

FIXTURES = Path(__file__).parent / "fixtures"


def assert_same_tensors(left, right, where=""):
    if isinstance(left, torch.Tensor):
        assert torch.equal(left, right), where
    elif isinstance(left, dict):
        assert left.keys() == right.keys(), where
        for key in left:
            assert_same_tensors(left[key], right[key], f"{where}.{key}")
    elif isinstance(left, (list, tuple)):
        assert len(left) == len(right), where
        for index, (a, b) in enumerate(zip(left, right)):
            assert_same_tensors(a, b, f"{where}[{index}]")
    else:
        assert left == right, where


# The classic update, and the learning-quality options (a categorical REDQ/DroQ ensemble with AdamW,
# observation normalisation) whose state must travel too, and bf16 products (deterministic too).
RESUMED_OPTIONS = {
    "classic": {},
    "quality-options": {"training.critic_loss": "hl_gauss", "training.critic_bins": 21, "training.num_critics": 3,
                        "training.critic_subset": 2, "training.critic_dropout": 0.05,
                        "training.critic_layer_norm": True, "training.weight_decay": 0.01,
                        "training.obs_normalization": True},
    "crossq": {"training.crossq": True, "training.adam_beta1": 0.5, "training.policy_delay": 3},
    "simba": {"training.network": "simba", "training.obs_normalization": True, "training.critic_loss": "two_hot"},
    "bf16": {"training.precision": "bf16", "training.critic_loss": "hl_gauss", "training.critic_bins": 21},
}


@pytest.mark.parametrize("options", list(RESUMED_OPTIONS.values()), ids=list(RESUMED_OPTIONS))
def test_resume_is_bit_exact(tmp_path, options):
    """0 -> 400 straight equals 0 -> 300, save, load in a new trainer, 300 -> 400."""
    straight = SACTrainer(load_config(None, tiny_overrides(tmp_path / "a", **options)))
    straight.train()

    first = SACTrainer(load_config(None, tiny_overrides(tmp_path / "b", **options, **{"training.total_steps": 300})))
    first.train()
    checkpoint = tmp_path / "b" / "checkpoints" / "sac_step_300.pt"
    assert checkpoint.exists()  # step 300 is mid-episode for Pendulum's 200-step episodes
    resumed = SACTrainer.from_checkpoint(checkpoint, load_config(None, tiny_overrides(tmp_path / "b", **options)))
    resumed.train()

    assert resumed.step == straight.step == 400
    assert_same_tensors(straight.agent.full_state_dict(), resumed.agent.full_state_dict(), "agent")
    assert_same_tensors(straight.buffer.state_dict(), resumed.buffer.state_dict(), "buffer")
    straight_eval = {r["step"]: r["eval/return_mean"] for r in _records(tmp_path / "a") if "eval/return_mean" in r}
    resumed_eval = {r["step"]: r["eval/return_mean"] for r in _records(tmp_path / "b") if "eval/return_mean" in r}
    assert sorted(straight_eval) == [200, 400] and sorted(resumed_eval) == [200, 300, 400]
    assert straight_eval[400] == resumed_eval[400]


def _records(root):
    from dynsac.training.logger import read_metrics

    return read_metrics(root / "run")


@pytest.fixture
def trained(tmp_path, tiny_config):
    trainer = SACTrainer(tiny_config(**{"training.total_steps": 200}))
    trainer.train()
    return trainer, tmp_path / "checkpoints" / "sac_step_200.pt"


def test_checkpoint_holds_everything(trained):
    _, path = trained
    payload = load_checkpoint(path)
    assert payload["format_version"] == FORMAT_VERSION
    for key in ("agent", "buffer", "rng", "rollout", "supervisor", "callbacks", "config", "step", "spaces"):
        assert key in payload
    assert len(payload["rollout"]["envs"]) == 1 and "history" in payload["callbacks"]["early_warnings"]
    assert payload["buffer"]["size"] == 200
    assert set(payload["agent"]["optimizers"]) == {"actor", "critic", "alpha"}
    assert "log_alpha" in payload["agent"]["modules"]
    assert "critic_target.weights.0" in payload["agent"]["modules"]


def test_save_that_fails_midway_leaves_previous_file(trained, monkeypatch):
    trainer, path = trained
    before = path.read_bytes()

    def broken_save(obj, file):
        file.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint(path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["sac_step_200.pt"]


KILL_SCRIPT = """
import sys, torch
from dynsac.training.checkpoint import save_checkpoint
payload = {"step": 1, "data": torch.zeros(60_000_000)}
print("ready", flush=True)
while True:
    save_checkpoint(payload, sys.argv[1])
"""


def test_save_killed_midway_leaves_a_loadable_checkpoint(tmp_path, subprocess_env):
    path = tmp_path / "sac_step_1.pt"
    save_checkpoint({"step": 0, "data": torch.ones(3)}, path)
    process = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(path)], env=subprocess_env,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    time.sleep(0.4)  # mid-way through writing 240 MB
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    payload = load_checkpoint(path)
    assert payload["step"] in (0, 1)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [1]


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = "/tmp/dynsac_pickle_exploit_ran"


def test_pickle_payload_is_refused_without_running(tmp_path):
    Path(MARKER).unlink(missing_ok=True)
    path = tmp_path / "sac_step_5.pt"
    torch.save({"format_version": 1, "step": 5, "payload": Exploit()}, path)
    with pytest.raises(CheckpointError, match="refused to load.*unsupported GLOBAL posix.system"):
        load_checkpoint(path)
    assert not Path(MARKER).exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_files_are_named(trained, tmp_path, damage):
    _, good = trained
    bad = tmp_path / "bad.pt"
    data = good.read_bytes()
    bad.write_bytes({"truncate": data[: len(data) // 2], "garbage": os.urandom(4096), "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=r"bad\.pt: not a readable checkpoint"):
        load_checkpoint(bad)


def test_missing_checkpoint_lists_neighbours(trained):
    _, good = trained
    with pytest.raises(CheckpointError, match=r"checkpoint not found: .*sac_step_999\.pt \(that folder has: sac_step_200\.pt"):
        load_checkpoint(good.parent / "sac_step_999.pt")


def test_newer_format_is_refused(tmp_path):
    path = tmp_path / "future.pt"
    torch.save({"format_version": FORMAT_VERSION + 1}, path)
    with pytest.raises(CheckpointError, match=f"format {FORMAT_VERSION + 1} is not supported"):
        load_checkpoint(path)


def test_not_a_dynsac_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match="not a dynsac checkpoint"):
        load_checkpoint(path)


def test_other_env_shapes_are_refused(trained, tmp_path):
    _, path = trained
    other = load_config(None, tiny_overrides(tmp_path / "x", **{"env.id": "dynsac/RandomLinear-v0"}))
    with pytest.raises(CheckpointError, match="with obs_dim=3, but env.id = 'dynsac/RandomLinear-v0' has obs_dim=4"):
        SACTrainer.from_checkpoint(path, other)


def test_other_network_sizes_are_refused(trained, tmp_path):
    _, path = trained
    other = load_config(None, tiny_overrides(tmp_path / "x", **{"training.hidden_sizes": "[16, 16]"}))
    with pytest.raises(CheckpointError, match="networks do not match this config"):
        SACTrainer.from_checkpoint(path, other)


def test_fresh_run_refuses_to_overwrite_checkpoints(trained, tiny_config):
    _, path = trained
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="already holds sac_step_200.pt") as err:
        SACTrainer(tiny_config()).train()
    assert f"dynsac resume {path}" in str(err.value)
    assert path.read_bytes() == before


def test_resume_changes_tunables(trained, tmp_path):
    _, path = trained
    config = load_config(None, tiny_overrides(tmp_path, **{"training.learning_rate": 1e-5, "training.tau": 0.001}))
    trainer = SACTrainer.from_checkpoint(path, config)
    assert trainer.agent.actor_optimizer.param_groups[0]["lr"] == 1e-5
    assert trainer.agent.settings.tau == 0.001
    assert trainer.step == 200


@pytest.mark.parametrize("version", range(1, FORMAT_VERSION + 1))
def test_old_format_fixtures_load_and_resume(tmp_path, version):
    """A checkpoint of every released format keeps loading (through MIGRATIONS) and resumes."""
    fixture = FIXTURES / f"checkpoint_format_v{version}.pt"
    copy = tmp_path / "sac_step_150.pt"
    shutil.copy(fixture, copy)
    trainer = SACTrainer.from_checkpoint(copy, overrides=[
        f"training.checkpoint_dir={tmp_path / 'ck'}", f"logging.dir={tmp_path / 'run'}",
        "training.total_steps=200", "logging.progress=off"])
    assert trainer.step == 150
    result = trainer.train()
    assert result.steps == 200
    assert load_checkpoint(fixture)["format_version"] == FORMAT_VERSION


def test_cli_resume_of_corrupt_checkpoint_exits_2_and_writes_nothing(trained, tmp_path, subprocess_env):
    _, good = trained
    bad = good.parent / "sac_step_100.pt"
    bad.write_bytes(good.read_bytes()[:1000])
    before = {p.name: p.read_bytes() for p in good.parent.iterdir()}
    config = tmp_path / "config.yaml"
    config.write_text("")
    command = [sys.executable, str(REPO_ROOT / "training" / "train_sac.py"), "--config", str(config),
               "--resume", str(bad), *sum((["--set", o] for o in tiny_overrides(tmp_path)), [])]
    result = subprocess.run(command, capture_output=True, text=True, env=subprocess_env, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "sac_step_100.pt: not a readable checkpoint" in result.stderr
    assert "Traceback" not in result.stderr
    assert {p.name: p.read_bytes() for p in good.parent.iterdir()} == before


@pytest.mark.parametrize("version", range(1, FORMAT_VERSION + 1))
def test_every_released_format_has_a_fixture(version):
    assert (FIXTURES / f"checkpoint_format_v{version}.pt").exists()


def test_migrated_learned_context_keeps_its_unbounded_encoder():
    from dynsac.training.checkpoint import migrate

    old = {"format_version": 3, "config": {"context": {"source": "learned"}}, "env": {"context": {}}, "episode": 0}
    assert migrate(old)["config"]["context"]["bounded"] is False
