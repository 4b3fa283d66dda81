"""Smoke tests of benchmarks/throughput.py and stress.py: the tiniest settings, in a subprocess, then the JSON."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "throughput.py"
HAS_SB3 = importlib.util.find_spec("stable_baselines3") is not None
TINY = ["--hidden", "32", "--batches", "32", "--reps", "1", "--seconds", "0.05", "--warmup", "1",
        "--fill", "300", "--threads", "1"]


def run_throughput(tmp_path: Path, env: dict[str, str], *extra: str) -> dict:
    out = tmp_path / "throughput.json"
    result = subprocess.run([sys.executable, str(SCRIPT), *TINY, "--out", str(out), *extra],
                            capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "targets:" in result.stdout
    return json.loads(out.read_text())


def load_module():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec = importlib.util.spec_from_file_location("throughput_under_test", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPT.parent))


def test_throughput_updates_and_memory(tmp_path, subprocess_env):
    libs = "dynsac,learned,sb3" if HAS_SB3 else "dynsac,learned"
    data = run_throughput(tmp_path, subprocess_env, "--skip-loop", "--memory-capacity", "20000", "--libs", libs,
                          "--bf16", "--compile")

    assert data["complete"] is True
    for key in ("git_revision", "machine", "args", "hyperparameters", "updates", "loop", "memory", "targets"):
        assert key in data
    assert data["machine"]["torch_threads"] == 1 and data["machine"]["torch"]
    variants = ({"dynsac", "dynsac-noguard", "dynsac-bf16", "dynsac-compile", "learned", "learned-compile"}
                | ({"sb3"} if HAS_SB3 else set()))
    cell = data["updates"]["h32_b32"]
    assert cell["hidden"] == [32, 32] and cell["batch"] == 32
    assert set(cell["median_updates_per_s"]) == variants
    for name in variants:
        runs = cell["raw"][name]
        assert len(runs) == 1 and runs[0]["updates"] >= 1 and runs[0]["seconds"] > 0
        assert cell["median_updates_per_s"][name] > 0
    assert cell["flops_per_update"] > 0 and cell["ceiling_gflops"] > 0
    assert all(value > 0 for value in cell["achieved_gflops"].values())
    assert cell["ratios"]["learned_over_none_cost"] > 0 and cell["ratios"]["dynsac_compile_over_dynsac"] > 0
    assert cell["ratios"]["guard_overhead"] > -1
    if HAS_SB3:
        assert cell["ratios"]["dynsac_over_sb3"] > 0 and cell["ratios"]["dynsac_bf16_over_sb3"] > 0
    assert data["loop"] == {}

    memory = data["memory"]
    assert memory["capacity"] == 20_000 and memory["raw_bytes"] == 20_000 * 42 * 4
    assert memory["dynsac"]["nbytes"] == 20_000 * (42 * 4 + 1 + 8)  # + truncated flag + episode id
    assert memory["dynsac"]["rss_delta"] > 0 and memory["dynsac"]["sample_ok"]
    assert memory["dynsac"]["stores_next_obs_separately"]
    assert [t["name"] for t in data["targets"]][-1].startswith("replay RSS")


def test_throughput_training_loop(tmp_path, subprocess_env):
    data = run_throughput(tmp_path, subprocess_env, "--loop-all", "--no-memory", "--libs", "dynsac")
    loop = data["loop"]["h32_b32"]
    assert set(loop["median_steps_per_s"]) == {"dynsac"}
    assert loop["median_steps_per_s"]["dynsac"] > 0 and loop["raw"]["dynsac"][0]["steps"] >= 20
    assert data["memory"] is None


def test_sac_update_flops_by_hand():
    flops = load_module().sac_update_flops(3, 1, [256, 256], 256)
    b, h = 256, 256
    policy = 2 * b * (3 * h + h * h + h * 2)  # obs 3 -> h -> h -> 2 x action 1
    critic = 2 * b * (4 * h + h * h + h * 1)  # obs + action 4 -> h -> h -> 1
    expected = 4 * policy - 2 * b * 3 * h + 12 * critic - 2 * (2 * b * 4 * h)
    assert flops["total"] == expected == sum(flops["parts"].values())
    assert flops["sb3_extra"] == 2 * critic


def test_ratios_are_medians_of_per_repetition_ratios():
    module = load_module()
    # The machine slows down by 2x between repetitions 1 and 2: both variants alike.
    raw = {"a": [{"rate": 300.0}, {"rate": 150.0}, {"rate": 290.0}],
           "b": [{"rate": 100.0}, {"rate": 50.0}, {"rate": 145.0}]}
    assert module.paired_ratio(raw, "a", "b", "rate") == 3.0  # median of 3.0, 3.0, 2.0
    assert module.paired_ratio(raw, "a", "missing", "rate") is None


def test_stress_benchmark_runs_scales_and_reports(tmp_path, subprocess_env):
    """benchmarks/stress.py at the tiniest budget: dynsac at rewards x1 and x1e6 (the learner sees
    the same normalised batches, so both evaluate alike) and the crash case skipped."""
    out = tmp_path / "stress.json"
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "stress.py"), "--steps", "200", "--crash-steps", "0",
               "--envs", "pendulum", "--libs", "dynsac", "--multipliers", "1,1e6", "--lrs", "3e-3", "--seeds", "0",
               "--eval-episodes", "1", "--jobs", "2", "--out", str(out), "--runs-dir", str(tmp_path / "runs")]
    result = subprocess.run(command, capture_output=True, text=True, env=subprocess_env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["finished"] and report["runs_complete"] == 2 and report["dynsac_crashes"] == 0
    (check,) = report["scale_invariance"]
    assert check["relative_difference"] < 0.05, check
    assert "scale invariance pendulum lr 0.003" in result.stdout


def test_cli_speed_runs_whole_processes_and_writes_ratios(tmp_path, subprocess_env):
    out = tmp_path / "cli_speed.json"
    script = REPO_ROOT / "benchmarks" / "cli_speed.py"
    systems = "dynsac,sb3" if HAS_SB3 else "dynsac,dynsac-learned"
    result = subprocess.run([sys.executable, str(script), "--hidden", "16", "--reps", "1", "--steps", "150",
                             "--systems", systems, "--out", str(out)], capture_output=True, text=True,
                            env=subprocess_env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    cell = json.loads(out.read_text())["cells"]["16"]
    for system in systems.split(","):
        row = cell["systems"][system]
        assert row["loop_steps_per_s"] > 0 and 0 < row["startup_s"] < 120
    assert ("dynsac/sb3" if HAS_SB3 else "dynsac-learned/dynsac") in cell["ratios"]


def test_controller_benchmark_prints_every_file_kind(tmp_path, subprocess_env):
    out = tmp_path / "controller.json"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "controller.py"), "--reps", "1",
                             "--seconds", "0.05", "--out", str(out)], capture_output=True, text=True,
                            env=subprocess_env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert {row["kind"] for row in rows.values()} == {"checkpoint", "pt2", "onnx"}
    assert all(row["latency_ms"] > 0 for row in rows.values())
