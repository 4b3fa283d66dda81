"""End to end: the reference entry point, logging, evaluation, progress, env handling."""

import io
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from dynsac import SACTrainer
from dynsac.config import load_config
from dynsac.envs import EnvError, make_env
from dynsac.training import CheckpointError
from dynsac.training.logger import Progress, read_metrics

from conftest import REPO_ROOT, tiny_overrides

REQUIRED_SCALARS = [
    "train/policy_grad_norm", "train/q_grad_norm", "train/q_mean", "train/q_std", "train/actor_loss",
    "train/critic_loss", "train/alpha_loss", "train/alpha", "train/entropy", "eval/return_mean",
    "eval/return_std", "perf/steps_per_sec",
]


def run(args, env, timeout=300):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout)


def set_flags(overrides):
    return sum((["--set", override] for override in overrides), [])


def test_reference_command_trains_logs_checkpoints_and_resumes(tmp_path, subprocess_env):
    config = tmp_path / "config.yaml"
    config.write_text("env:\n  id: Pendulum-v1\ntraining:\n  learning_rate: 1e-3\n")
    overrides = tiny_overrides(tmp_path, **{"training.total_steps": 300, "logging.progress": "auto"})
    script = str(REPO_ROOT / "training" / "train_sac.py")
    first = run([script, "--config", str(config), *set_flags(overrides)], subprocess_env)
    assert first.returncode == 0, first.stderr
    assert "starting: Pendulum-v1, 300 steps" in first.stdout
    assert "step 300/300 (100%)" in first.stderr  # plain progress lines when not a terminal
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == ["sac_step_200.pt", "sac_step_300.pt"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert set(REQUIRED_SCALARS) <= tags, set(REQUIRED_SCALARS) - tags
    assert all(np.isfinite(e.value) for e in events.Scalars("train/q_grad_norm"))

    records = read_metrics(tmp_path / "run")
    assert {r["step"] for r in records} == {100, 200, 300}
    assert all(set(REQUIRED_SCALARS[:9]) <= set(r) for r in records if r["step"] in (200, 300) and "train/q_mean" in r)

    more = tiny_overrides(tmp_path, **{"training.total_steps": 400, "logging.progress": "lines"})
    resumed = run([script, "--config", str(config), "--resume", str(tmp_path / "checkpoints" / "sac_step_300.pt"),
                   *set_flags(more)], subprocess_env)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step 300" in resumed.stdout
    assert (tmp_path / "checkpoints" / "sac_step_400.pt").exists()
    assert max(r["step"] for r in read_metrics(tmp_path / "run")) == 400

    evaluated = run(["-m", "dynsac.cli", "eval", str(tmp_path / "checkpoints" / "sac_step_400.pt"),
                     "--episodes", "2"], subprocess_env)
    assert evaluated.returncode == 0, evaluated.stderr
    lines = evaluated.stdout.splitlines()
    assert "step 400" in lines[0] and lines[1].split() == ["split", "episode", "return", "length"]
    assert lines[2].split()[:2] == ["eval", "0"] and lines[3].split()[:2] == ["eval", "1"]
    assert lines[4].split()[:2] == ["eval", "mean"]


def test_unknown_env_id_exits_2_with_suggestion(tmp_path, subprocess_env):
    config = tmp_path / "c.yaml"
    config.write_text("env:\n  id: Pendulm-v1\n")
    result = run(["-m", "dynsac.cli", "train", "--config", str(config)], subprocess_env)
    assert result.returncode == 2
    assert "env.id = 'Pendulm-v1'" in result.stderr and "Pendulum" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "env_id, kwargs, expected",
    [
        ("CartPole-v1", {}, "SAC needs a continuous action space"),
        ("no_such_module_xyz:Env", {}, "cannot import module 'no_such_module_xyz'"),
        ("dynsac.envs.random_pendulum:NoSuchEnv", {}, "has no attribute 'NoSuchEnv'"),
        ("Pendulum-v1", {"no_such_kwarg": 1}, "env.kwargs = {'no_such_kwarg': 1} do not fit 'Pendulum-v1'"),
    ],
)
def test_env_errors_name_the_problem(env_id, kwargs, expected):
    with pytest.raises(EnvError, match=expected.replace("(", r"\(").replace("{", r"\{").replace("}", r"\}")):
        make_env(env_id, kwargs)


def test_module_class_env_id_with_kwargs():
    env = make_env("dynsac.envs.random_pendulum:RandomPendulumEnv", {"split": "test"}, max_episode_steps=7)
    env.reset(seed=0)
    steps = 0
    while not any(env.step(env.action_space.sample())[2:4]):
        steps += 1
    assert steps + 1 == 7


def test_non_finite_observations_are_replaced_counted_and_logged(tmp_path, capsys):
    config = load_config(None, tiny_overrides(tmp_path, **{"env.id": "faulty_envs:NaNObservationEnv",
                                                            "training.total_steps": 300}))
    trainer = SACTrainer(config)
    trainer.train()
    assert trainer.sanitized_values == 2 * 6
    assert np.isfinite(trainer.buffer.obs[:300].cpu().numpy()).all()
    assert np.isfinite(trainer.buffer.next_obs[:300].cpu().numpy()).all()
    assert "step 49: observation had 2 non-finite value(s); replaced by 0" in capsys.readouterr().out
    records = read_metrics(tmp_path / "run")
    assert any(r.get("event") == "sanitized_observation" for r in records)
    assert [r["safety/sanitized_values"] for r in records if "safety/sanitized_values" in r][-1] == 12


def test_progress_bar_on_a_terminal_and_lines_elsewhere():
    class FakeTerminal(io.StringIO):
        def isatty(self):
            return True

    terminal, log = FakeTerminal(), io.StringIO()
    for stream in (terminal, log):
        progress = Progress(1000, "auto", interval_s=0.0, stream=stream)
        progress.update(0)
        progress.last_eval = -150.5
        progress.update(500, force=True)
        progress.close(1000)
    assert "\r[##########..........] 500/1,000 (50%)" in terminal.getvalue()
    assert "eval return -150.5" in terminal.getvalue() and terminal.getvalue().endswith("\n")
    assert "\r" not in log.getvalue()
    progress = Progress(100, "lines", stream=log)
    progress.last_eval, progress.last_eval_ratio = -4000.0, 0.8
    assert "eval return -4,000.0 (0.80 of optimum)" in progress.describe(50, progress._start_time + 1)
    assert log.getvalue().splitlines()[-1].startswith("step 1,000/1,000 (100%)")


def test_already_finished_run_does_nothing(tmp_path, tiny_config):
    trainer = SACTrainer(tiny_config(**{"training.total_steps": 200}))
    trainer.train()
    before = sorted((tmp_path / "checkpoints").iterdir())
    result = trainer.train()
    assert result.steps == 200 and result.last_checkpoint is None
    assert sorted((tmp_path / "checkpoints").iterdir()) == before


def test_eval_reports_optimum_on_train_and_test_dynamics(tmp_path, tiny_config, capsys):
    from dynsac.cli import main

    trainer = SACTrainer(tiny_config(**{"env.id": "dynsac/RandomLinear-v0", "training.total_steps": 150}))
    trainer.train()
    assert main(["eval", str(tmp_path / "checkpoints" / "sac_step_150.pt"), "--episodes", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["split", "episode", "return", "length", "optimal", "ratio"]
    rows = {(line.split()[0], line.split()[1]): line.split() for line in lines[2:8]}
    assert set(rows) == {(s, e) for s in ("train", "test") for e in ("0", "1", "mean")}
    for split in ("train", "test"):
        agent, optimal, ratio = (float(rows[(split, "0")][i].replace(",", "")) for i in (2, 4, 5))
        assert optimal < 0 and agent < 0 and ratio == pytest.approx(optimal / agent, abs=1e-3)
        assert ratio <= 1.0 + 1e-6  # LQR is optimal


def test_fresh_run_refuses_another_runs_log_folder(tmp_path, tiny_config):
    SACTrainer(tiny_config(**{"training.total_steps": 100, "training.checkpoint_interval": 0})).train()
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(CheckpointError, match="logging.dir = .* already holds another run's metrics.jsonl"):
        SACTrainer(tiny_config(**{"training.checkpoint_interval": 0})).train()
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before


def test_importing_dynsac_loads_no_torch_and_sets_no_environment(subprocess_env):
    code = ("import os, sys, dynsac; before = dict(os.environ); dynsac.SACTrainer; "
            "print('torch' in sys.modules, os.environ == before, os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in subprocess_env.items() if k != "OMP_WAIT_POLICY"}
    code = code.replace("dynsac.SACTrainer; ", "print('torch' in sys.modules); dynsac.SACTrainer; ")
    lines = run(["-c", code], env).stdout.split()
    assert lines == ["False", "True", "True", "None"]


def test_thread_governor_measures_over_the_start_up_and_waits_only_for_the_rest_of_its_window(monkeypatch):
    import time
    from types import SimpleNamespace

    from dynsac.training import threads

    reports = []
    trainer = SimpleNamespace(step=0, events=SimpleNamespace(report=lambda *args, **kwargs: reports.append(args)))
    monkeypatch.setattr(threads.torch, "set_num_threads", lambda n: None)
    governor = threads.ThreadGovernor(cores=2)
    time.sleep(threads.PROBE_S)  # the trainer's own start-up
    start = time.monotonic()
    governor.on_train_start(trainer)
    assert time.monotonic() - start < threads.PROBE_S / 2 and governor.threads in (1, 2) and reports
    fresh = threads.ThreadGovernor(cores=2)  # built just now: waits for the whole window
    start = time.monotonic()
    fresh.on_train_start(trainer)
    assert time.monotonic() - start >= threads.PROBE_S * 0.9
    stale = threads.ThreadGovernor(cores=2)
    stale._others.opened -= threads.STALE_S + 1  # built long before training: measures afresh
    start = time.monotonic()
    stale.on_train_start(trainer)
    assert time.monotonic() - start >= threads.PROBE_S * 0.9


def test_thread_governor_gives_way_to_busy_processes():
    from dynsac.training.threads import BusyOthers, threads_for

    assert [threads_for(2, busy) for busy in (0.0, 0.4, 0.6, 1.0, 3.0)] == [2, 2, 1, 1, 1]
    assert threads_for(16, 4.2) == 12
    others = BusyOthers()
    competitor = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
    try:
        import time

        time.sleep(1.0)
        others.read()
        time.sleep(1.0)
        assert others.read() > 0.5
    finally:
        competitor.kill()


def test_auto_threads_are_announced_and_logged(tmp_path, tiny_config, capsys):
    trainer = SACTrainer(tiny_config(**{"training.torch_threads": "auto", "training.total_steps": 100,
                                        "logging.progress": "lines"}))
    before = torch.get_num_threads()
    try:
        trainer.train()
        assert re.search(r"\[dynsac\] torch threads: \d of \d cores \(training.torch_threads: auto; ",
                         capsys.readouterr().out)
        changes = [r for r in read_metrics(tmp_path / "run") if r.get("event") == "threads"]
        assert changes and changes[0]["step"] == 0  # the start's choice, then any change the load made
        assert changes[-1]["threads"] == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_critic_options_train(tiny_config):
    trainer = SACTrainer(tiny_config(**{"training.critic_layer_norm": True, "training.critic_loss": "huber",
                                        "training.total_steps": 200, "training.checkpoint_interval": 0}))
    result = trainer.train()
    assert result.steps == 200 and trainer.agent.settings.huber_delta == 1.0 and len(trainer.agent.critic.norm_weights) == 2


def test_policy_delay_updates_the_actor_every_nth_update(tmp_path, tiny_config):
    trainer = SACTrainer(tiny_config(**{"training.policy_delay": 2, "training.total_steps": 110}))
    trainer.train()
    updates = trainer.num_updates
    step_counts = {name: int(next(iter(opt.state.values()))["step"]) for name, opt in trainer.agent.optimizers.items()}
    assert step_counts == {"critic": updates, "actor": (updates + 1) // 2, "alpha": (updates + 1) // 2}
    logged = [r for r in read_metrics(tmp_path / "run") if "train/actor_loss" in r]
    assert logged and all(np.isfinite(r["train/actor_loss"]) for r in logged)


@pytest.mark.parametrize("options", [{}, {"training.critic_layer_norm": True}])  # by hand; autograd's autocast
def test_bf16_precision_trains_with_fp32_weights(tmp_path, tiny_config, options):
    trainer = SACTrainer(tiny_config(**{"training.precision": "bf16", "training.total_steps": 200, **options}))
    assert trainer.agent.bf16_devices and trainer.agent.backend.name == ("autograd" if options else "by-hand")
    result = trainer.train()
    assert result.steps == 200 and trainer.supervisor.nonfinite_state() == []
    assert all(p.dtype == torch.float32 for p in trainer.agent.parameters())
    record = [r for r in read_metrics(tmp_path / "run") if "train/q_mean" in r][-1]
    assert np.isfinite(record["train/q_mean"]) and np.isfinite(record["train/critic_loss"])


def test_bad_eval_kwargs_fail_at_construction_naming_them(tiny_config):
    from dynsac.envs.factory import EnvError

    config = tiny_config(**{"env.id": "dynsac/RandomPendulum-v0", "env.eval_kwargs": "{no_such_kwarg: 1}"})
    with pytest.raises(EnvError, match=r"env.eval_kwargs = \{'no_such_kwarg': 1\} \(over env.kwargs\) do not build"):
        SACTrainer(config)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_reward_beyond_float32_is_stored_as_inf_and_repaired(tiny_config, precision):
    trainer = SACTrainer(tiny_config(**{"training.total_steps": 150, "training.precision": precision}))
    trainer.train(120)
    trainer.buffer.add(np.zeros(3), np.zeros(1), 1e39, np.zeros(3), False, False, 0)  # finite, past float32
    assert torch.isinf(trainer.buffer.reward[(trainer.buffer.position - 1) % trainer.buffer.capacity])
    while trainer.agent.skipped_steps == 0 and trainer.step < 400:
        trainer.train_step()  # without train(): logs without a run folder
    assert trainer.supervisor.repaired_values >= 1 and trainer.supervisor.nonfinite_state() == []
