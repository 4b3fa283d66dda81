"""`dynsac sweep`: validation, trial folders, and a real Ray Tune sweep killed midway and resumed."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from dynsac.cli import main
from dynsac.config import ConfigError
from dynsac.training import sweep
from dynsac.training.logger import read_metrics

from conftest import tiny_overrides

GRID = "training.learning_rate=[1e-3,3e-4]"
TRIALS = ["lr=0.001,seed=0", "lr=0.001,seed=1", "lr=0.0003,seed=0", "lr=0.0003,seed=1"]


def sweep_sets(tmp_path: Path) -> list[str]:
    """tiny_overrides without the run/checkpoint folders (the sweep sets those per trial)."""
    overrides = tiny_overrides(tmp_path, **{"training.checkpoint_interval": 100})
    return [o for o in overrides if not o.startswith(("logging.dir=", "training.checkpoint_dir="))]


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "base.yaml"
    config.write_text("env:\n  id: Pendulum-v1\n")
    return config


@pytest.mark.parametrize("args, expected", [
    (["--grid", "training.learnin_rate=[1e-3,3e-4]"], "training.learnin_rate: unknown key; did you mean 'learning_rate'"),
    (["--grid", "training.learning_rate=1e-3"], "expected KEY.PATH=[V1,V2,...]"),
    (["--grid", "training.learning_rate=[1e-3"], "expected KEY.PATH=[V1,V2,...]"),
    (["--grid", "training.tau=[0.005,2]"], "training.tau = 2: out of range"),
    (["--grid", "training.seed=[1,2]"], "use --seeds"),
    (["--grid", GRID, "--grid", "training.learning_rate=[1e-4]"], "already has a --grid"),
    (["--grid", "env.kwargs.g=[9.81,x]"], "env.kwargs = {'g': 'x'}: the first step failed: TypeError"),
    (["--seeds", "0,x"], "--seeds '0,x': expected comma-separated non-negative integers"),
    (["--seeds", "1,1"], "listed twice"),
])
def test_bad_sweep_input_exits_2_before_anything_starts(tmp_path, capsys, args, expected):
    config = write_config(tmp_path)
    status = main(["sweep", "--config", str(config), "--dir", str(tmp_path / "sweeps"), *args])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("dynsac: error: ") and expected in err, err
    assert not (tmp_path / "sweeps").exists()


def test_trials_are_named_from_grid_values_and_seed_and_the_preset_merges(tmp_path):
    config = write_config(tmp_path)
    plan = sweep.plan_sweep(str(config), [GRID, "training.hidden_sizes=[[32],[16,16]]"], "0-1", [],
                            directory=str(tmp_path / "sweeps"))
    assert plan.folder == (tmp_path / "sweeps" / "base").resolve()
    assert [t.name for t in plan.trials][:3] == [
        "lr=0.001,hidden_sizes=[32],seed=0", "lr=0.001,hidden_sizes=[32],seed=1", "lr=0.001,hidden_sizes=[16,16],seed=0"]
    trial = plan.trials[2]
    assert trial.config.training.hidden_sizes == [16, 16] and trial.config.training.seed == 0
    assert Path(trial.config.logging.dir) == plan.folder / trial.name / "run"
    assert Path(trial.config.training.checkpoint_dir) == plan.folder / trial.name / "checkpoints"
    assert trial.config.training.torch_threads == 1

    stability = sweep.plan_sweep(str(config), ["training.tau=[0.01]"], "0", [], preset="stability",
                                 name="stab", directory=str(tmp_path / "sweeps"))
    assert [axis.key for axis in stability.grid] == list(sweep.PRESETS["stability"])
    assert len(stability.trials) == 8  # tau narrowed to one value by --grid
    assert stability.trials[0].name == "reward_normalization=fixed,lr=0.0003,tau=0.01,max_grad_norm=10.0,seed=0"


def test_a_trial_folder_of_another_setup_is_refused(tmp_path):
    config = write_config(tmp_path)
    plan = sweep.plan_sweep(str(config), [GRID], "0", sweep_sets(tmp_path), directory=str(tmp_path / "sw"))
    run_dir = plan.trials[0].run_dir
    run_dir.mkdir(parents=True)
    saved = plan.trials[0].config.model_dump(mode="json")
    saved["training"]["hidden_sizes"] = [64, 64]
    (run_dir / "config.yaml").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match=r"different config \(training.hidden_sizes: \[64, 64\] -> \[32, 32\]\)"):
        sweep.plan_sweep(str(config), [GRID], "0", sweep_sets(tmp_path), directory=str(tmp_path / "sw"))
    saved["training"]["hidden_sizes"] = [32, 32]
    saved["training"]["total_steps"] = 100  # more steps for a finished sweep: continuable
    (run_dir / "config.yaml").write_text(json.dumps(saved))
    sweep.plan_sweep(str(config), [GRID], "0", sweep_sets(tmp_path), directory=str(tmp_path / "sw"))


def test_a_trial_clears_a_partial_attempt_and_completes_a_missing_summary(tmp_path, monkeypatch):
    """Without Ray: what one trial does with the files an interrupted attempt left."""
    reports = []
    monkeypatch.setattr(sweep, "_tune_report", reports.append)
    config = write_config(tmp_path)
    plan = sweep.plan_sweep(str(config), [], "3", [*sweep_sets(tmp_path), "training.total_steps=200",
                                                   "training.eval_interval=100"],
                            directory=str(tmp_path / "sw"))
    trial = plan.trials[0]
    spec = {"name": trial.name, "config": trial.config.model_dump(mode="json")}
    trial.run_dir.mkdir(parents=True)  # killed before its first checkpoint: metrics but no checkpoint
    (trial.run_dir / "metrics.jsonl").write_text('{"step": 100, "time": 0, "train/alpha": 1.0}\n')
    assert sweep.inspect_trial(trial.config).kind == "fresh"

    final = sweep.run_trial(spec)  # a fresh dynsac run would refuse this folder; the trial clears it
    assert final["status"] == "done" and final["step"] == 200
    assert [r["step"] for r in reports] == [100, 200, 200] and reports[-1]["status"] == "done"
    assert sweep.inspect_trial(trial.config).kind == "done"
    summary = json.loads((trial.run_dir / "summary.json").read_text())

    (trial.run_dir / "summary.json").unlink()  # killed between the final checkpoint and summary.json
    state = sweep.inspect_trial(trial.config)
    assert (state.kind, state.step) == ("resume", 200)
    again = sweep.run_trial(spec)
    assert again["eval_return"] == pytest.approx(summary["final_eval_return"])
    assert again["best_eval_return"] == pytest.approx(summary["best_eval_return"])
    assert sweep.inspect_trial(trial.config).kind == "done"
    assert sweep.run_trial(spec)["step"] == 200  # done: reported, nothing rerun


def session_processes(session: int) -> list[int]:
    """Live (non-zombie) processes of a session: what the sweep and its Ray instance started."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[3]) == session:
            found.append(int(entry.name))
    return found


def wait_until_gone(session: int, timeout: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := session_processes(session)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def trial_files(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {name: ((folder / name).read_bytes(), (folder / name).stat().st_mtime_ns)
            for name in ("summary.json", "metrics.jsonl", "config.yaml")}


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs the sweep extra (ray[tune])")
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process bookkeeping reads /proc")
def test_sweep_killed_midway_resumes_without_rerunning_finished_trials(tmp_path, subprocess_env):
    config = write_config(tmp_path)
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Ray's Unix socket paths must stay short
    env = {**subprocess_env, "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    command = [sys.executable, "-m", "dynsac.cli", "sweep", "--config", str(config), "--grid", GRID,
               "--seeds", "0,1", "--max-concurrent", "2", "--dir", str(tmp_path / "sweeps"), "--name", "lr",
               *sum((["--set", s] for s in sweep_sets(tmp_path)), [])]
    folder = tmp_path / "sweeps" / "lr"
    try:
        log = (tmp_path / "first.log").open("w")
        first = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        done, partial, deadline = [], [], time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None:
            done = [t for t in TRIALS if (folder / t / "run" / "summary.json").exists()]
            partial = [t for t in TRIALS if t not in done and list((folder / t / "checkpoints").glob("sac_step_*.pt"))]
            if done and partial:
                break
            time.sleep(0.05)
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)  # the driver and its Ray instance, as in a crash
        first.wait(timeout=30)
        log.close()
        for pid in wait_until_gone(first.pid):
            os.kill(pid, signal.SIGKILL)
        # Read again now that nothing runs: between the poll and the kill a trial can finish.
        done = [t for t in TRIALS if (folder / t / "run" / "summary.json").exists()]
        partial = [t for t in TRIALS if t not in done and list((folder / t / "checkpoints").glob("sac_step_*.pt"))]
        assert done and partial, (tmp_path / "first.log").read_text()[-3000:]

        before = {t: trial_files(folder / t / "run") for t in done}
        resumed = partial[0]
        resumed_step = max(int(p.stem.split("_")[-1]) for p in (folder / resumed / "checkpoints").glob("sac_step_*.pt"))
        first_records = [r for r in read_metrics(folder / resumed / "run") if r["step"] <= resumed_step]

        second = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True)
        output = second.communicate(timeout=180)[0]
        assert second.returncode == 0, output[-5000:]
        assert f"{len(done)} already finished" in output
        assert f"{resumed}: resuming from step {resumed_step}" in output
        assert not wait_until_gone(second.pid), "Ray left processes behind"

        for trial in TRIALS:
            run = folder / trial / "run"
            summary = json.loads((run / "summary.json").read_text())
            assert summary["steps"] == 400 and not summary["interrupted"], trial
            train_steps = [r["step"] for r in read_metrics(run) if "perf/steps_per_sec" in r]
            assert train_steps == [100, 200, 300, 400], trial  # a resume drops nothing and repeats nothing
        for trial in done:  # finished trials were not rerun
            assert trial_files(folder / trial / "run") == before[trial]
        kept = [r for r in read_metrics(folder / resumed / "run") if r["step"] <= resumed_step]
        resume_events = [r for r in kept if r.get("event") == "resume"]
        assert len(resume_events) == 1 and resume_events[0]["step"] == resumed_step  # the resume is on record
        assert [r for r in kept if r.get("event") != "resume"] == first_records  # continued, not started again

        table = (folder / "summary.txt").read_text()
        assert all(f"{trial}/run" in table for trial in TRIALS), table
        assert "lr=0.001 " in table and "lr=0.0003 " in table  # the per-config rows over seeds
        assert (folder / "eval_return.png").stat().st_size > 0
        assert json.loads((folder / "sweep.json").read_text())["trials"] == TRIALS
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
