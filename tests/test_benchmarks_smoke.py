"""Smoke tests of the benchmarks (throughput, stress, cli_speed, controller, quality): the tiniest settings, in a
subprocess, then the JSON."""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


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


# ----------------------------------------------------------------------------- benchmarks/quality.py
QUALITY = REPO_ROOT / "benchmarks" / "quality.py"
QUALITY_TINY = ["--seeds", "0", "--steps", "300", "--eval-interval", "150", "--curve-episodes", "1",
                "--eval-episodes", "2", "--jobs", "1", "--set", "training.learning_starts=100",
                "--set", "training.hidden_sizes=[32,32]", "--set", "training.batch_size=32",
                "--set", "context.encoder_hidden_sizes=[32]", "--set", "context.model_hidden_sizes=[32]",
                "--set", "logging.tensorboard=false"]


def run_quality(tmp_path: Path, env: dict[str, str], *extra: str) -> tuple[dict, str]:
    out = tmp_path / "quality.json"
    command = [sys.executable, str(QUALITY), *QUALITY_TINY, "--out", str(out), "--runs-dir", str(tmp_path / "runs"),
               *extra]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=150, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text()), result.stdout


def check_quality_runs(report: dict, keys: set[str]) -> None:
    assert report["finished"] and report["runs_complete"] == len(keys)
    assert set(report["runs"]) == keys
    for run in report["runs"].values():
        assert "error" not in run, run.get("traceback")
        assert run["train_steps"] == 300
        assert [point["step"] for point in run["curve"]] == [150, 300]  # every --eval-interval, the last at the end
        assert all(len(point["returns"]) == 1 and math.isfinite(point["return_mean"]) for point in run["curve"])
        splits = {"train"} if run["task"] == "pendulum" else {"train", "test"}
        assert set(run["final"]) == splits
        for record in run["final"].values():
            assert len(record["returns"]) == 2 and all(math.isfinite(r) for r in record["returns"])
            if run["task"].startswith("linear"):
                assert 0 < record["optimality_ratio"] < 10 and len(record["optimal_returns"]) == 2
            else:
                assert record["optimality_ratio"] is None
    for key in ("command", "git", "versions", "wall_time_s", "summary", "verdict"):
        assert key in report
    assert report["versions"]["torch"] and report["versions"]["gymnasium"]


def test_quality_benchmark_dynsac(tmp_path, subprocess_env):
    report, stdout = run_quality(tmp_path, subprocess_env, "--systems", "dynsac", "--tasks", "pendulum,linear_learned")
    check_quality_runs(report, {"pendulum_dynsac_seed0", "linear_learned_dynsac_seed0"})
    for run in report["runs"].values():
        assert run["native_agrees"]  # the benchmark's evaluation is the trainer's own, episode for episode
        assert all(p["return_mean"] == p["native_return_mean"] for p in run["curve"])
    assert (tmp_path / "runs" / "linear_learned_dynsac_seed0" / "metrics.jsonl").is_file()
    assert "| task" in stdout and "| linear_learned | dynsac" in stdout and "| pendulum       | dynsac" in stdout
    assert "(a) linear_learned" in stdout and "(d) Pendulum-v1" in stdout


def test_quality_benchmark_peers(tmp_path, subprocess_env):
    pytest.importorskip("stable_baselines3")
    pytest.importorskip("sb3_contrib")
    # learning_starts 200: CrossQ's default 1024-unit critics take ~0.1 s an update on one thread.
    report, stdout = run_quality(tmp_path, subprocess_env, "--systems", "sb3,crossq", "--tasks", "pendulum",
                                 "--set", "training.learning_starts=200")
    check_quality_runs(report, {"pendulum_sb3_seed0", "pendulum_crossq_seed0"})
    for run in report["runs"].values():
        assert run["peer_settings"]["learning_starts"] == 200 and not run["peer_settings"]["appended_context"]
    assert report["runs"]["pendulum_sb3_seed0"]["peer_settings"]["batch_size"] == 256
    assert "| pendulum | sb3" in stdout and "| pendulum | crossq" in stdout


def load_quality():
    sys.path.insert(0, str(QUALITY.parent))
    try:
        spec = importlib.util.spec_from_file_location("quality_under_test", QUALITY)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(QUALITY.parent))


def test_quality_classic_merge_keeps_env_and_source(tmp_path):
    quality = load_quality()
    task = {"env": {"id": "dynsac/RandomLinear-v0", "kwargs": {"action_dim": 10}},
            "context": {"source": "learned", "dim": 10}, "training": {"learning_rate": 3e-4, "hidden_sizes": [256]}}
    classic = {"env": {"id": "Other-v0"}, "context": {"source": "none", "dim": 4},
               "training": {"critic_loss": "mse", "hidden_sizes": [64, 64]}, "safety": {"sanitize_inputs": True}}
    merged, ignored = quality.merge_classic(task, classic)
    assert merged == {"env": task["env"], "context": {"source": "learned", "dim": 4},
                      "training": {"learning_rate": 3e-4, "hidden_sizes": [64, 64], "critic_loss": "mse"},
                      "safety": {"sanitize_inputs": True}}
    assert ignored == ["env", "context.source"] and task["context"]["dim"] == 10  # the task config is not changed
    merged, _ = quality.merge_classic({"env": {"id": "Pendulum-v1"}}, {"context": {"source": "env", "dim": 3}})
    assert merged == {"env": {"id": "Pendulum-v1"}, "context": {"dim": 3}}  # the default source stays
    with pytest.raises(ValueError, match="does not exist"):
        quality.prepare_classic(tmp_path, {}, tmp_path / "sac_classic.yaml", None)


def test_quality_peer_observation_has_the_true_context():
    from dynsac.envs.factory import make_env

    quality = load_quality()
    env = quality.AppendContext(make_env("dynsac/RandomLinear-v0", {"split": "test"}))
    obs, _ = env.reset(seed=3)
    assert obs.shape == env.observation_space.shape == (7,)
    np.testing.assert_array_equal(obs[4:], env.unwrapped.context)
    obs, *_ = env.step(env.action_space.sample())
    np.testing.assert_array_equal(obs[4:], env.unwrapped.context)


def test_quality_targets_from_a_summary():
    quality = load_quality()

    def entry(seeds=3, **metrics):
        threshold = metrics.pop("threshold", None)
        return {"seeds": list(range(seeds)), **{k: tuple(v) for k, v in metrics.items()}, "threshold": threshold}

    def reached(steps):
        hits = [s for s in steps if s is not None]
        return {"value": -200.0, "metric": "return", "reached": len(hits), "of": len(steps), "steps": steps,
                "mean_step": sum(hits) / len(hits) if hits else None}

    summary = {
        "linear_none/dynsac": entry(train_ratio=(0.5, 0.05), test_ratio=(0.40, 0.05)),
        "linear_learned/dynsac": entry(train_ratio=(0.93, 0.01), test_ratio=(0.86, 0.02)),
        "linear_env/dynsac": entry(train_ratio=(0.95, 0.01), test_ratio=(0.90, 0.01)),
        "pendulum_none/dynsac": entry(test_return=(-900.0, 50.0)),
        "pendulum_learned/dynsac": entry(test_return=(-850.0, 40.0)),  # +50 < 90 spread; 50 / 300 of the gap
        "pendulum_env/dynsac": entry(test_return=(-600.0, 30.0)),
        "pendulum/dynsac": entry(train_return=(-150.0, 5.0), threshold=reached([4000, 5000, 6000])),
        "pendulum/sb3": entry(train_return=(-160.0, 5.0), threshold=reached([7000, 8000, None])),
        "pendulum/crossq": entry(train_return=(-155.0, 5.0), threshold=reached([3000, 3000, 3000])),
    }
    a, b, c, d = (check(summary) for check in (quality.target_a, quality.target_b, quality.target_c, quality.target_d))
    assert a["status"] == "PASS" and d["status"] == "PASS"  # dynsac reached -200 in 3 seeds, sb3 in 2
    assert b["status"] == c["status"] == "FAIL"  # linear passes both, pendulum neither
    assert [line.split()[-1] for line in b["detail"]] == ["PASS", "FAIL"]
    assert [line.split()[-1] for line in c["detail"]] == ["PASS", "FAIL"]
    summary["pendulum/dynsac"]["threshold"] = reached([9000, None, None])
    assert quality.target_d(summary)["status"] == "FAIL"
    del summary["pendulum/crossq"], summary["linear_env/dynsac"], summary["pendulum_env/dynsac"]
    assert quality.target_d(summary)["status"] == quality.target_c(summary)["status"] == "N/A"
    assert quality.format_verdict([a, b, c, d]).startswith("PASS  (a)")


def test_option_cost_times_each_option_against_the_classic_update(tmp_path, subprocess_env):
    """benchmarks/option_cost.py at the tiniest budget: every requested option gets a time per
    update, the classic update's ratio to itself is 1 and the others' are their time over its."""
    out = tmp_path / "cost.json"
    script = REPO_ROOT / "benchmarks" / "option_cost.py"
    result = subprocess.run([sys.executable, str(script), "--options", "classic,hl_gauss,hl_gauss_51", "--hidden", "16",
                             "--batch", "32", "--reps", "1", "--updates", "3", "--fill", "100", "--threads", "1",
                             "--out", str(out)], capture_output=True, text=True, env=subprocess_env, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert list(rows) == ["classic", "hl_gauss", "hl_gauss_51"]
    assert rows["classic"]["ratio_to_classic"] == 1.0
    for name in ("hl_gauss", "hl_gauss_51"):  # one repetition: the median ratio is the ratio of the medians
        expected = rows[name]["ms_per_update"] / rows["classic"]["ms_per_update"]
        assert rows[name]["ms_per_update"] > 0 and abs(rows[name]["ratio_to_classic"] - expected) < 1e-9 * expected


def test_map_cost_times_variants_and_the_what_if_skips_half_the_map_steps(tmp_path, subprocess_env):
    """benchmarks/map_cost.py at the tiniest budget: ratios are medians of per-block ratios to
    `none`, and the what-if `every2` variant takes half the map's optimizer steps of `learned`."""
    out = tmp_path / "map_cost.json"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "map_cost.py"), "--hidden", "16",
                             "--variants", "none,learned,every2", "--warmup", "320", "--blocks", "2", "--steps", "5",
                             "--parts-steps", "5", "--threads", "1", "--out", str(out)],
                            capture_output=True, text=True, env=subprocess_env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    rows = data["variants"]
    assert rows["none"]["ratio_to_none"] == 1.0 and rows["none"]["map_adam_steps"] is None
    for name in ("learned", "every2"):
        ratios = [own / base for own, base in zip(rows[name]["block_ms"], rows["none"]["block_ms"])]
        assert abs(rows[name]["ratio_to_none"] - statistics.median(ratios)) < 1e-12
    learned, every2 = rows["learned"]["map_adam_steps"], rows["every2"]["map_adam_steps"]
    assert learned > 30 and abs(every2 - learned / 2) <= 1
    assert data["parts_learned"]["  map prediction step"] > 0 and "  map prediction step" not in data["parts_none"]
