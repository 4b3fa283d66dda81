"""Callbacks, the built-in ones, and envs built by a Python factory (`env_fn`)."""

from __future__ import annotations

import json
from pathlib import Path
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

from dynsac import SACTrainer
from dynsac.training.callbacks import BEST_CHECKPOINT, Callback, KeepBestCheckpoint, StopAtTarget
from dynsac.training.checkpoint import CheckpointError, load_checkpoint

from conftest import REPO_ROOT, tiny_overrides


class Recorder(Callback):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_train_start(self, trainer):
        self.calls.append(("start", trainer.step))

    def on_log(self, trainer, step, scalars):
        self.calls.append(("log", step, "train/q_grad_norm" in scalars or step < 200))

    def on_eval(self, trainer, step, result):
        self.calls.append(("eval", step, round(result.mean, 6)))

    def on_event(self, trainer, step, kind, message, details):
        self.calls.append(("event", step, kind))

    def on_checkpoint(self, trainer, step, path):
        self.calls.append(("checkpoint", step, path.name))

    def on_train_end(self, trainer, result):
        self.calls.append(("end", result.steps))


def test_every_hook_is_called_in_order_with_what_happened(tiny_config):
    recorder = Recorder()
    trainer = SACTrainer(tiny_config(**{"safety.snapshot_interval": 50}), callbacks=[recorder])
    trainer.train(250)
    with torch.no_grad():
        trainer.agent.critic.weights[1][0, 0, 0] = float("nan")
    result = trainer.train(400)
    kinds = [call[0] for call in recorder.calls]
    assert kinds[0] == "start" and kinds[-1] == "end" and result.steps == 400
    assert ("log", 100, True) in recorder.calls and ("log", 400, True) in recorder.calls
    evals = [call for call in recorder.calls if call[0] == "eval"]
    assert [step for _, step, _ in evals] == [200, 250, 400]  # on schedule, and the final one of each train()
    assert evals[-1][2] == round(result.final_eval.mean, 6)
    assert ("checkpoint", 200, "sac_step_200.pt") in recorder.calls and ("checkpoint", 400, "sac_step_400.pt") in recorder.calls
    events = [call for call in recorder.calls if call[0] == "event"]
    assert ("event", 251, "nonfinite") in events and ("event", 251, "rollback") in events


def test_stop_at_target_stops_cleanly_with_a_checkpoint_and_the_reason(tiny_config):
    trainer = SACTrainer(tiny_config(**{"training.total_steps": 1000}), callbacks=[StopAtTarget(-1e9)])
    result = trainer.train()
    assert result.steps == 200 and not result.interrupted and result.stop_reason is None
    assert result.early_stop.startswith("eval/return_mean = ") and "reached the target -1e+09 at step 200" in result.early_stop
    assert result.last_checkpoint.name == "sac_step_200.pt" and load_checkpoint(result.last_checkpoint)["step"] == 200
    summary = json.loads((Path(trainer.config.logging.dir) / "summary.json").read_text())
    assert summary["early_stop"] == result.early_stop and summary["steps"] == 200


def test_stop_at_target_refuses_a_metric_the_env_lacks(tiny_config):
    with pytest.raises(ValueError, match="expected one of eval/return_mean, eval/optimality_ratio"):
        StopAtTarget(0.9, "eval/ratio")
    trainer = SACTrainer(tiny_config(), callbacks=[StopAtTarget(0.9, "eval/optimality_ratio")])
    with pytest.raises(ValueError, match="has no known optimum"):
        trainer.train()


def test_cli_stop_at_exits_0_and_keep_best_writes_the_best_eval(tmp_path, subprocess_env):
    overrides = tiny_overrides(tmp_path, **{"training.total_steps": 600, "training.stop_at": 1e9,
                                            "training.keep_best_checkpoint": "true"})
    command = [sys.executable, "-m", "dynsac.cli", "train", "--config", str(REPO_ROOT / "configs/pendulum.yaml")]
    command += [f"--set={o}" for o in overrides]
    done = subprocess.run(command, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    best = load_checkpoint(tmp_path / "checkpoints" / BEST_CHECKPOINT)
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["step"], r["eval/return_mean"]) for r in evals if "eval/return_mean" in r]
    assert best["step"] == max(evals, key=lambda e: e[1])[0]
    assert best["callbacks"]["keep_best"]["best"] == pytest.approx(max(e[1] for e in evals))


def test_keep_best_survives_a_resume(tiny_config, tmp_path):
    trainer = SACTrainer(tiny_config(**{"training.total_steps": 200}), callbacks=[KeepBestCheckpoint()])
    trainer.train()
    best = trainer.callbacks[-1].best
    resumed = SACTrainer.from_checkpoint(tmp_path / "checkpoints" / "sac_step_200.pt",
                                         callbacks=[KeepBestCheckpoint()])
    assert resumed.callbacks[-1].best == best and resumed.callbacks[-1].best_step == 200


class DriftingPoint(gym.Env):
    """A user's own env class, never registered: push a point to the origin against a drift."""

    def __init__(self, drift: float = 0.1) -> None:
        self.drift = drift
        self.observation_space = gym.spaces.Box(-10.0, 10.0, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.state = np.zeros(2, np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.state = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        return self.state.copy(), {}

    def step(self, action):
        self.state = np.clip(self.state + [self.drift, float(action[0]) * 0.2], -10, 10).astype(np.float32)
        return self.state.copy(), -float(np.square(self.state).sum()), False, False, {}


def make_drifting_point(drift: float = 0.1) -> DriftingPoint:
    return DriftingPoint(drift)


def test_env_fn_trains_and_resumes_with_the_same_factory(tmp_path):
    from dynsac.config import load_config

    config = load_config(None, tiny_overrides(tmp_path, **{"env.id": "drifting-point", "env.kwargs": "{drift: 0.05}",
                                                           "env.max_episode_steps": 50, "training.total_steps": 200}))
    trainer = SACTrainer(config, env_fn=make_drifting_point)
    assert trainer.env.unwrapped.drift == 0.05
    trainer.train()
    saved = tmp_path / "checkpoints" / "sac_step_200.pt"
    assert load_checkpoint(saved)["env_factory"] == "test_callbacks.make_drifting_point"
    with pytest.raises(CheckpointError, match=r"trained on an env built by env_fn test_callbacks.make_drifting_point; "
                                              r"resume it in Python with SACTrainer.from_checkpoint\(.*env_fn=make_drifting_point\)"):
        SACTrainer.from_checkpoint(saved)
    resumed = SACTrainer.from_checkpoint(saved, overrides=["training.total_steps=300"], env_fn=make_drifting_point)
    assert resumed.train().steps == 300


def test_env_fn_that_returns_no_env_is_named(tmp_path):
    from dynsac.config import load_config
    from dynsac.envs.factory import EnvError

    config = load_config(None, tiny_overrides(tmp_path, **{"env.id": "mine"}))
    with pytest.raises(EnvError, match=r"env_fn test_callbacks\..*<lambda> returned dict, not a gymnasium.Env"):
        SACTrainer(config, env_fn=lambda: {})
