"""Benchmark dynsac's SAC against Stable-Baselines3's SAC on Pendulum-v1.

Both libraries are trained with the same hyperparameters (read from the dynsac config, so they
stay in sync with `configs/pendulum.yaml`) and evaluated with the same loop: the deterministic
policy on a fresh `Pendulum-v1` env, episode i reset with seed `seed + 1_000_000 + i`.

Runs are sequential, alternating libraries per seed (dynsac seed 0, sb3 seed 0, dynsac seed 1, ...),
so a slow-down of the machine mid-benchmark hits both libraries alike.

    PYTHONPATH=src python benchmarks/pendulum.py                       # 20k steps, seeds 0,1,2
    PYTHONPATH=src python benchmarks/pendulum.py --steps 500 --seeds 0 # smoke test

The SB3 side needs `pip install -e '.[bench]'`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from common import require_sb3

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "pendulum.yaml"
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "pendulum.json"
ENV_ID = "Pendulum-v1"
EVAL_SEED_OFFSET = 1_000_000
LIBS = ("dynsac", "sb3")


# ----------------------------------------------------------------------------- command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train SAC on Pendulum-v1 with dynsac and Stable-Baselines3 and compare final returns."
    )
    parser.add_argument("--steps", type=int, default=20_000, help="environment steps per run (default 20000)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--libs", default="dynsac,sb3", help="comma-separated libraries: dynsac, sb3 (default both)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--eval-episodes", type=int, default=10, help="deterministic evaluation episodes (default 10)")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="dynsac config (default configs/pendulum.yaml)")
    parser.add_argument("--logdir", default=None, help="folder for dynsac run logs (default: a temporary folder)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results file (default benchmarks/results/pendulum.json)")
    args = parser.parse_args(argv)

    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 0,1,2")
    if not args.seeds or any(s < 0 for s in args.seeds):
        parser.error("--seeds: give at least one seed, each >= 0")
    args.libs = [lib.strip().lower() for lib in args.libs.split(",") if lib.strip()]
    unknown = [lib for lib in args.libs if lib not in LIBS]
    if unknown or not args.libs:
        parser.error(f"--libs: unknown {unknown}; choose from {', '.join(LIBS)}")
    args.libs = [lib for lib in LIBS if lib in args.libs]  # canonical order, no duplicates
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.eval_episodes < 1:
        parser.error("--eval-episodes must be >= 1")
    return args


# ----------------------------------------------------------------------------- config
def load_dynsac_config(path: str, seed: int, steps: int, log_dir: Path, threads: int):
    from dynsac.config import load_config

    return load_config(
        path,
        [
            f"training.seed={seed}",
            f"training.total_steps={steps}",
            "training.checkpoint_interval=0",
            "training.eval_interval=0",
            f"training.torch_threads={threads}",
            "training.device=cpu",
            f"logging.dir={log_dir}",
            "logging.progress=off",
        ],
    )


def shared_hyperparameters(config) -> dict[str, Any]:
    """The values both libraries are built from (recorded in the JSON)."""
    t = config.training
    return {
        "env_id": config.env.id,
        "learning_rate": t.learning_rate,
        "learning_starts": t.learning_starts,
        "batch_size": t.batch_size,
        "buffer_size": t.buffer_size,
        "gamma": t.gamma,
        "tau": t.tau,
        "hidden_sizes": list(t.hidden_sizes),
        "updates_per_step": t.updates_per_step,
        "alpha": t.alpha,
        "init_alpha": t.init_alpha,
        "target_entropy": t.target_entropy,
    }


def sb3_mismatches(config) -> list[str]:
    """Settings of the dynsac config that the SB3 model below cannot reproduce."""
    t = config.training
    notes = []
    if config.env.id != ENV_ID or config.env.kwargs or config.env.max_episode_steps is not None:
        notes.append(f"env {config.env.id!r} with kwargs/time limit: the SB3 side always uses plain {ENV_ID}")
    for name in ("actor_learning_rate", "critic_learning_rate", "alpha_learning_rate"):
        if getattr(t, name) not in (None, t.learning_rate):
            notes.append(f"training.{name}={getattr(t, name)}: SB3 uses one learning rate ({t.learning_rate})")
    for name in ("actor_hidden_sizes", "critic_hidden_sizes"):
        if getattr(t, name) not in (None, t.hidden_sizes):
            notes.append(f"training.{name}={getattr(t, name)}: SB3 is built with hidden_sizes={t.hidden_sizes}")
    if t.max_grad_norm is not None:
        notes.append(f"training.max_grad_norm={t.max_grad_norm}: SB3's SAC does not clip gradients")
    if t.reward_scale != 1.0:
        notes.append(f"training.reward_scale={t.reward_scale}: SB3's SAC has no reward scale")
    return notes


# ----------------------------------------------------------------------------- evaluation
def evaluate_policy_fn(act: Callable[[np.ndarray], np.ndarray], seed: int, episodes: int) -> list[float]:
    """Returns of `episodes` episodes of `act` (obs -> env action) on a fresh Pendulum-v1,
    episode i reset with seed `seed + 1_000_000 + i` (the same seeds dynsac's evaluate uses)."""
    import gymnasium as gym

    env = gym.make(ENV_ID)
    returns = []
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + EVAL_SEED_OFFSET + episode)
            total, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, _ = env.step(act(obs))
                total += float(reward)
                done = bool(terminated or truncated)
            returns.append(total)
    finally:
        env.close()
    return returns


# ----------------------------------------------------------------------------- the two libraries
def run_dynsac(args: argparse.Namespace, seed: int, log_root: Path) -> dict[str, Any]:
    from dynsac.training import SACTrainer

    config = load_dynsac_config(args.config, seed, args.steps, log_root / f"dynsac_seed{seed}", args.threads)
    trainer = SACTrainer(config)
    start = time.perf_counter()
    result = trainer.train()
    train_time = time.perf_counter() - start
    start = time.perf_counter()
    ev = trainer.evaluate(args.eval_episodes)
    eval_time = time.perf_counter() - start
    if trainer.env is not None:
        trainer.env.close()
    return {
        "returns": [float(r) for r in ev.returns],
        "train_steps": int(result.steps),
        "train_wall_s": train_time,  # includes dynsac's own end-of-training evaluation
        "eval_wall_s": eval_time,
        "interrupted": bool(result.interrupted),
    }


def run_sb3(args: argparse.Namespace, seed: int, config) -> dict[str, Any]:
    import gymnasium as gym
    from stable_baselines3 import SAC

    t = config.training
    if t.alpha == "auto":
        ent_coef: str | float = f"auto_{t.init_alpha}"
    else:
        ent_coef = float(t.alpha)
    target_entropy: str | float = "auto" if t.target_entropy == "auto" else float(t.target_entropy)

    env = gym.make(ENV_ID)
    model = SAC(
        "MlpPolicy",
        env,
        learning_rate=t.learning_rate,
        buffer_size=t.buffer_size,
        learning_starts=t.learning_starts,
        batch_size=t.batch_size,
        tau=t.tau,
        gamma=t.gamma,
        train_freq=1,
        gradient_steps=t.updates_per_step,
        ent_coef=ent_coef,
        target_entropy=target_entropy,
        policy_kwargs=dict(net_arch=list(t.hidden_sizes)),
        seed=seed,
        device="cpu",
        verbose=0,
    )
    start = time.perf_counter()
    model.learn(total_timesteps=args.steps)
    train_time = time.perf_counter() - start

    def act(obs: np.ndarray) -> np.ndarray:
        action, _ = model.predict(obs, deterministic=True)
        return action

    start = time.perf_counter()
    returns = evaluate_policy_fn(act, seed, args.eval_episodes)
    eval_time = time.perf_counter() - start
    env.close()
    return {
        "returns": returns,
        "train_steps": int(model.num_timesteps),
        "train_wall_s": train_time,
        "eval_wall_s": eval_time,
        "interrupted": False,
    }


# ----------------------------------------------------------------------------- reporting
def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    means = [r["eval_mean"] for r in runs]
    walls = [r["train_wall_s"] for r in runs]
    return {
        "seeds": [r["seed"] for r in runs],
        "mean": float(np.mean(means)),
        "std": float(np.std(means)),  # population std over seeds (ddof=0)
        "min": float(np.min(means)),
        "max": float(np.max(means)),
        "mean_train_wall_s": float(np.mean(walls)),
        "total_train_wall_s": float(np.sum(walls)),
    }


def _cell(mean: float | None, std: float | None = None, wall_s: float | None = None) -> str:
    if mean is None:
        return f"{'-':>22} {'-':>12}"
    return f"{f'{mean:.1f} ± {std:.1f}':>22} {wall_s:>11.1f}s"


def format_table(results: dict[str, list[dict[str, Any]]], summary: dict[str, dict[str, Any]], seeds: list[int]) -> str:
    libs = [lib for lib in LIBS if lib in results]
    header = f"{'seed':>6} | " + " | ".join(f"{lib + ' return':>22} {lib + ' wall':>12}" for lib in libs)
    lines = [header, "-" * len(header)]
    for seed in seeds:
        runs = [next((r for r in results[lib] if r["seed"] == seed), None) for lib in libs]
        cells = [_cell(r["eval_mean"], r["eval_std"], r["train_wall_s"]) if r else _cell(None) for r in runs]
        lines.append(f"{seed:>6} | " + " | ".join(cells))
    lines.append("-" * len(header))
    totals = [summary.get(lib) for lib in libs]
    cells = [_cell(t["mean"], t["std"], t["mean_train_wall_s"]) if t else _cell(None) for t in totals]
    lines.append(f"{'mean':>6} | " + " | ".join(cells))
    lines.append(
        "per seed: mean ± std of the deterministic return over the evaluation episodes; "
        "mean row: mean ± std over seeds of the per-seed means; wall: training time per seed"
    )
    return "\n".join(lines)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(payload, indent=2) + "\n")
    temporary.replace(path)


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if "sb3" in args.libs:
        require_sb3("dynsac")

    import torch

    torch.set_num_threads(args.threads)

    import dynsac

    versions = {"dynsac": getattr(dynsac, "__version__", "?"), "torch": torch.__version__, "numpy": np.__version__,
                "python": platform.python_version()}
    import gymnasium

    versions["gymnasium"] = gymnasium.__version__
    if "sb3" in args.libs:
        import stable_baselines3

        versions["stable_baselines3"] = stable_baselines3.__version__

    tmp = None
    if args.logdir:
        log_root = Path(args.logdir)
        log_root.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="dynsac_bench_")
        log_root = Path(tmp.name)

    reference_config = load_dynsac_config(args.config, args.seeds[0], args.steps, log_root / "unused", args.threads)
    hyper = shared_hyperparameters(reference_config)
    if "sb3" in args.libs:
        for note in sb3_mismatches(reference_config):
            print(f"warning: {note}", flush=True)

    print(
        f"Pendulum benchmark: {args.steps:,} steps, seeds {args.seeds}, libs {args.libs}, "
        f"{args.threads} torch thread(s), {args.eval_episodes} eval episodes",
        flush=True,
    )
    print("hyperparameters: " + ", ".join(f"{k}={v}" for k, v in hyper.items()), flush=True)

    out_path = Path(args.out)
    results: dict[str, list[dict[str, Any]]] = {lib: [] for lib in args.libs}
    total_runs = len(args.seeds) * len(args.libs)
    bench_start = time.perf_counter()
    done = 0

    def payload(complete: bool) -> dict[str, Any]:
        summary = {lib: summarize(runs) for lib, runs in results.items() if runs}
        return {
            "benchmark": "pendulum",
            "complete": complete,
            "env_id": ENV_ID,
            "steps": args.steps,
            "seeds": args.seeds,
            "libs": args.libs,
            "torch_threads": args.threads,
            "eval_episodes": args.eval_episodes,
            "eval_seeds": f"seed + {EVAL_SEED_OFFSET} + episode",
            "config": str(args.config),
            "hyperparameters": hyper,
            "versions": versions,
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
            "total_wall_s": time.perf_counter() - bench_start,
            "runs": results,
            "summary": summary,
        }

    try:
        for seed in args.seeds:
            for lib in args.libs:
                print(f"[{done + 1}/{total_runs}] {lib} seed {seed}: training ...", flush=True)
                if lib == "dynsac":
                    run = run_dynsac(args, seed, log_root)
                else:
                    config = load_dynsac_config(args.config, seed, args.steps, log_root / "unused", args.threads)
                    run = run_sb3(args, seed, config)
                run = {
                    "seed": seed,
                    "eval_mean": float(np.mean(run["returns"])),
                    "eval_std": float(np.std(run["returns"])),
                    **run,
                }
                results[lib].append(run)
                done += 1
                print(
                    f"[{done}/{total_runs}] {lib} seed {seed}: eval return {run['eval_mean']:.1f} ± "
                    f"{run['eval_std']:.1f} ({args.eval_episodes} episodes), train {run['train_wall_s']:.1f}s, "
                    f"eval {run['eval_wall_s']:.1f}s, elapsed {time.perf_counter() - bench_start:.0f}s",
                    flush=True,
                )
                write_json(out_path, payload(complete=False))  # partial results survive a crash
    finally:
        if tmp is not None:
            tmp.cleanup()

    final = payload(complete=True)
    write_json(out_path, final)
    print()
    print(format_table(results, final["summary"], args.seeds))
    if len(args.libs) == 2:
        d, s = final["summary"]["dynsac"], final["summary"]["sb3"]
        diff = d["mean"] - s["mean"]
        verdict = "better" if diff > 0 else "worse" if diff < 0 else "equal"
        print(f"dynsac - sb3 mean return: {diff:+.1f} (dynsac {verdict})")
        print(f"train wall ratio dynsac/sb3: {d['mean_train_wall_s'] / s['mean_train_wall_s']:.2f}")
    print(f"total wall time: {final['total_wall_s']:.0f}s")
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
