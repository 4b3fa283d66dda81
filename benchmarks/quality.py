"""Learning quality at equal env steps: dynsac, dynsac with the plain SAC critic, SB3 SAC, CrossQ.

Systems (`--systems`):
  dynsac          dynsac with the task's shipped config (below);
  dynsac_classic  the same config with `configs/sac_classic.yaml` (`--classic-config`) deep-merged
                  over it (dicts merged recursively, other values replaced; `env` and
                  `context.source` never change). The file holds a partial config, e.g.
                  `training: {critic_loss: mse}`; while it does not exist (or does not make a valid
                  config) the system is reported as unavailable and skipped;
  sb3             Stable-Baselines3 SAC ("MlpPolicy"), its defaults except `learning_starts` (dynsac's
                  `training.learning_starts`, after --set) and `batch_size=256`;
  crossq          sb3-contrib CrossQ ("MlpPolicy"), its defaults except the same `learning_starts`.

Tasks (`--tasks`):
  pendulum                          Pendulum-v1, configs/pendulum.yaml. Final mean return, and the
                                    env steps at which the eval curve first reaches -200;
  linear_none / _env / _learned     dynsac/RandomLinear-v0, training/config_dynamics_map.yaml with
                                    context.source none / env / learned. Optimality ratio (LQR return
                                    / agent return, sums over the eval episodes; 1.0 is optimal) on
                                    train-range and held-out test-range dynamics (env kwarg
                                    `split: test`), and the steps to a ratio of 0.8 on the curve;
  pendulum_none / _env / _learned   dynsac/RandomPendulum-v0, configs/random_pendulum.yaml; final
                                    return on train-range and test-range dynamics (no threshold).

The peers (sb3, crossq) run once per env family, not once per context source. On the Random*
envs they get the env's true context appended to the observation (an ObservationWrapper adding
`env.unwrapped.context`), so their rows are `linear_env` / `pendulum_env`, `sb3 (+context)`: the
oracle-context setting. There the rewards are of order -1e6 per episode, so the peers train on
rewards normalised by SB3's `VecNormalize(norm_obs=False, norm_reward=True)`, which is what an SB3
user would do; dynsac normalises rewards itself (`safety.reward_normalization`). Every evaluation
uses the raw env rewards. On Pendulum-v1 the peers run on the plain env.

One evaluation for every system (`evaluate_policy`): the deterministic policy (dynsac: its own
acting path, `Rollout.act(deterministic=True)` with the run's context tracker; peers:
`model.predict(obs, deterministic=True)`), episode i reset with seed `seed + 1_000_000 + i` (the
seeds dynsac's own `trainer.evaluate` uses), so for a given seed every system meets the same start
states and dynamics. The learning curve: every `--eval-interval` env steps (and at the end),
`--curve-episodes` episodes on the config's eval env (`env.kwargs` + `env.eval_kwargs`, as
`trainer.evaluate()`); dynsac's from a `Callback.on_eval`, the peers' from an SB3 `BaseCallback`
(after that step's gradient update, as dynsac). The final numbers: `--eval-episodes` episodes per
split (`env.kwargs` + `split`, as `trainer.evaluate(n, {"split": ...})`). Each dynsac evaluation is
also checked against the trainer's own (`native_*` in the JSON; they must agree).

Runs go to a pool of `--jobs` worker processes (spawned; one torch thread each). Each finished run
is written to the JSON at once, so a killed benchmark leaves partial results, and `--resume-results`
skips the runs the JSON already holds complete with the same settings and config. `--set KEY=VALUE`
(repeatable) adds dynsac config overrides to every run (and so to the peers' env kwargs and
learning_starts), e.g. smaller networks for a smoke test; the keys the script sets are refused.

    PYTHONPATH=src python benchmarks/quality.py                              # everything (long)
    PYTHONPATH=src python benchmarks/quality.py --systems dynsac,sb3 --tasks pendulum
    PYTHONPATH=src python benchmarks/quality.py --systems dynsac --tasks pendulum,linear_learned \\
        --seeds 0 --steps 300 --eval-interval 150 --curve-episodes 1 --eval-episodes 2 --jobs 1 \\
        --set training.learning_starts=100 --set training.hidden_sizes=[32,32] \\
        --out /tmp/quality_smoke.json                                        # smoke test
    PYTHONPATH=src python benchmarks/quality.py --resume-results             # finish a killed run

The script prints a table (mean ± std over seeds; steps to threshold: the mean over the seeds
that reached it, and how many did) and checks the targets: (a) linear_learned: train ratio >= 0.90
and test ratio >= 0.85; (b) learned beats none on test by more than std(none) + std(learned), on
RandomLinear (test ratio) and RandomPendulum (test return); (c) learned closes >= 60% of the
none -> env gap on test, both families; (d) Pendulum-v1: dynsac's mean return >= max(sb3, crossq),
and dynsac reaches -200 in fewer steps than sb3. Per-run dynsac logs (metrics.jsonl, summary.json)
go to `--runs-dir`/{task}_{system}_seed{seed}. The peers need `pip install -e '.[bench]'`.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from common import REPO_ROOT, git_revision, read_previous_runs, run_pool, snapshot_source, use_snapshot, write_json

# ----------------------------------------------------------------------------- what is compared
PENDULUM_CONFIG = REPO_ROOT / "configs" / "pendulum.yaml"
LINEAR_CONFIG = REPO_ROOT / "training" / "config_dynamics_map.yaml"
RANDOM_PENDULUM_CONFIG = REPO_ROOT / "configs" / "random_pendulum.yaml"
CLASSIC_CONFIG = REPO_ROOT / "configs" / "sac_classic.yaml"

# Thresholds on the learning curve, and the targets.
PENDULUM_THRESHOLD = -200.0  # Pendulum-v1: mean return
LINEAR_RATIO_THRESHOLD = 0.8  # RandomLinear: optimality ratio
LINEAR_TRAIN_RATIO_TARGET = 0.90
LINEAR_TEST_RATIO_TARGET = 0.85
GAP_CLOSED_TARGET = 0.6

RANDOM_SPLITS = {"train": {"split": "train"}, "test": {"split": "test"}}
# splits: name -> env kwargs over env.kwargs (None: the eval env, env.kwargs + env.eval_kwargs).
TASKS: dict[str, dict[str, Any]] = {
    "pendulum": {"family": "pendulum_v1", "env_id": "Pendulum-v1", "config": PENDULUM_CONFIG, "source": None,
                 "metric": "return", "threshold": PENDULUM_THRESHOLD, "splits": {"train": None}},
    **{f"linear_{source}": {"family": "linear", "env_id": "dynsac/RandomLinear-v0", "config": LINEAR_CONFIG,
                            "source": source, "metric": "ratio", "threshold": LINEAR_RATIO_THRESHOLD,
                            "splits": RANDOM_SPLITS}
       for source in ("none", "env", "learned")},
    **{f"pendulum_{source}": {"family": "random_pendulum", "env_id": "dynsac/RandomPendulum-v0",
                              "config": RANDOM_PENDULUM_CONFIG, "source": source, "metric": "return",
                              "threshold": None, "splits": RANDOM_SPLITS}
       for source in ("none", "env", "learned")},
}
# The peers run once per family, with the true context appended on the Random* envs.
PEER_TASK = {"pendulum_v1": "pendulum", "linear": "linear_env", "random_pendulum": "pendulum_env"}
FAMILY_NAMES = {"pendulum_v1": "Pendulum-v1", "linear": "dynsac/RandomLinear-v0",
                "random_pendulum": "dynsac/RandomPendulum-v0"}
DYNSAC_SYSTEMS = ("dynsac", "dynsac_classic")
PEERS = {"sb3": ("stable_baselines3", "SAC"), "crossq": ("sb3_contrib", "CrossQ")}
SYSTEMS = (*DYNSAC_SYSTEMS, *PEERS)
PEER_BATCH_SIZE = {"sb3": 256, "crossq": None}  # None: the library's default

EVAL_SEED_OFFSET = 1_000_000  # dynsac's evaluate_episodes: episode i of seed s resets with s + 1_000_000 + i
RESERVED_KEYS = {
    "training.seed": "--seeds", "training.total_steps": "--steps", "context.source": "--tasks",
    "training.eval_interval": "--eval-interval", "training.eval_episodes": "--curve-episodes",
    "logging.dir": "--runs-dir", "env.id": "--tasks", "training.checkpoint_interval": None,
    "training.checkpoint_dir": None, "logging.progress": None, "training.torch_threads": None,
    "training.stop_at": None,
}
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "quality.json"
RUNS_DIR = REPO_ROOT / "benchmarks" / "results" / "quality_runs"



# ----------------------------------------------------------------------------- command line
def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _choose(parser: argparse.ArgumentParser, flag: str, text: str, valid: tuple[str, ...]) -> list[str]:
    chosen = [v.lower() for v in _csv(text)]
    unknown = [v for v in chosen if v not in valid]
    if unknown or not chosen:
        parser.error(f"{flag}: unknown {unknown}; choose from {', '.join(valid)}")
    return [v for v in valid if v in chosen]  # canonical order, no duplicates


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Learning quality at equal env steps: dynsac, dynsac with the plain SAC critic, "
        "Stable-Baselines3 SAC and CrossQ, all evaluated alike (deterministic policy, the same episode seeds).")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, from {', '.join(SYSTEMS)}")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {', '.join(TASKS)}")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--steps", type=int, default=20_000, help="env steps per run (default 20000)")
    parser.add_argument("--eval-interval", type=int, default=1000,
                        help="evaluate for the learning curve every N env steps (default 1000; 0: only at the end)")
    parser.add_argument("--eval-episodes", type=int, default=10, help="final evaluation episodes per split (default 10)")
    parser.add_argument("--curve-episodes", type=int, default=5, help="episodes per learning-curve point (default 5)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel worker processes, one torch thread each (default 2)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results (default benchmarks/results/quality.json)")
    parser.add_argument("--runs-dir", default=str(RUNS_DIR), help="dynsac run folders (default benchmarks/results/quality_runs)")
    parser.add_argument("--resume-results", action="store_true",
                        help="skip the runs --out already holds complete with the same settings and config")
    parser.add_argument("--classic-config", default=str(CLASSIC_CONFIG),
                        help="dynsac_classic's partial config, merged over each task config "
                        "(default configs/sac_classic.yaml)")
    parser.add_argument("--set", dest="set", action="append", default=[], metavar="KEY=VALUE",
                        help="dynsac config override for every run, e.g. training.hidden_sizes=[32,32] (repeatable)")
    args = parser.parse_args(argv)
    args.systems = _choose(parser, "--systems", args.systems, SYSTEMS)
    args.tasks = _choose(parser, "--tasks", args.tasks, tuple(TASKS))
    try:
        args.seeds = sorted({int(s) for s in _csv(args.seeds)})
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 0,1,2")
    if not args.seeds or any(s < 0 for s in args.seeds):
        parser.error("--seeds: give at least one seed, each >= 0")
    for name in ("steps", "jobs", "eval_episodes", "curve_episodes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.eval_interval < 0:
        parser.error("--eval-interval must be >= 0 (0: the curve has only the final point)")
    for override in args.set:
        key = override.partition("=")[0].strip()
        if "=" not in override or not key:
            parser.error(f"--set {override!r}: expected KEY=VALUE, e.g. training.hidden_sizes=[32,32]")
        if key in RESERVED_KEYS:
            flag = RESERVED_KEYS[key]
            parser.error(f"--set {override!r}: {key} is set by this script" + (f"; use {flag}" if flag else ""))
    args.out, args.runs_dir, args.classic_config = Path(args.out), Path(args.runs_dir), Path(args.classic_config)
    return args


def require_peers(systems: list[str]) -> None:
    """Exit with the install command when --systems asks for a peer whose library is missing."""
    missing = [s for s in systems if s in PEERS and importlib.util.find_spec(PEERS[s][0]) is None]
    if missing:
        rest = ",".join(s for s in systems if s not in missing) or "dynsac"
        libraries = ", ".join(PEERS[s][0].replace("_", "-") for s in missing)
        sys.exit(f"error: --systems includes {', '.join(missing)} but {libraries} is not installed.\n"
                 f"  Install it with:  pip install -e '.[bench]'\n  or run without it:  --systems {rest}")


# ----------------------------------------------------------------------------- the runs to do
def cells(args: argparse.Namespace, available: list[str]) -> list[tuple[str, str]]:
    """(task, system) pairs: dynsac systems on every chosen task, peers once per chosen family."""
    out = [(task, system) for task in args.tasks for system in available if system in DYNSAC_SYSTEMS]
    families = list(dict.fromkeys(TASKS[task]["family"] for task in args.tasks))
    out += [(PEER_TASK[family], system) for family in families for system in available if system in PEERS]
    return out


def run_key(task: str, system: str, seed: int) -> str:
    return f"{task}_{system}_seed{seed}"


def label(task: str, system: str) -> str:
    return f"{system} (+context)" if system in PEERS and TASKS[task]["source"] == "env" else system


def task_overrides(task: str) -> list[str]:
    source = TASKS[task]["source"]
    return [] if source is None else [f"context.source={source}"]


def run_overrides(spec: dict[str, Any], args: argparse.Namespace) -> list[str]:
    log_dir = spec["log_dir"]
    return [
        *task_overrides(spec["task"]), *args.set,
        f"training.seed={spec['seed']}", f"training.total_steps={args.steps}",
        f"training.eval_interval={args.eval_interval}", f"training.eval_episodes={args.curve_episodes}",
        "training.checkpoint_interval=0", f"training.checkpoint_dir={log_dir}/checkpoints", "training.stop_at=null",
        f"logging.dir={log_dir}", "logging.progress=off", "training.torch_threads=1",
    ]


def fingerprint(spec: dict[str, Any], config: Any) -> str:
    """What a run's result depends on: a changed config or setting makes --resume-results redo it."""
    dump = config.model_dump(mode="json")
    dump["logging"].pop("dir", None)
    dump["training"].pop("checkpoint_dir", None)
    if spec["system"] in PEERS:  # the peers use only the env and learning_starts of dynsac's config
        dump = {"env": dump["env"], "learning_starts": dump["training"]["learning_starts"]}
    settings = {k: spec[k] for k in ("task", "system", "seed", "steps", "eval_interval", "curve_episodes",
                                     "eval_episodes")}
    text = json.dumps({"settings": settings, "config": dump}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- dynsac_classic
def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` merged into a copy of `base`: dicts recursively, any other value replaced."""
    merged = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def merge_classic(task_raw: dict[str, Any], classic: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The task config with the classic overrides over it, `env` and `context.source` kept as the
    task's; and the keys of `classic` that were ignored for that."""
    if "context" in classic and not isinstance(classic["context"], dict):
        raise ValueError(f"context: expected a mapping of keys, got {classic['context']!r}")
    merged, ignored = deep_merge(task_raw, classic), []
    if "env" in classic:
        ignored.append("env")
        merged.pop("env", None)
        if "env" in task_raw:
            merged["env"] = copy.deepcopy(task_raw["env"])
    if "source" in classic.get("context", {}):
        ignored.append("context.source")
        base_context = task_raw.get("context") if isinstance(task_raw.get("context"), dict) else {}
        if "source" in base_context:
            merged["context"]["source"] = base_context["source"]
        else:
            merged["context"].pop("source")
    return merged, ignored


def shown(path: Path) -> str:
    """A path as messages show it: relative to the repository where it lies inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def prepare_classic(snapshot: Path, task_configs: dict[Path, Path], classic_path: Path, classic_copy: Path | None
                    ) -> tuple[dict[Path, Path], dict[str, Any]]:
    """Merged config files for dynsac_classic (one per task config, in the snapshot), and what
    the JSON says about it. Raises ValueError with the reason when it is unavailable."""
    import yaml

    from dynsac.config.loader import read_yaml

    if classic_copy is None:
        raise ValueError(f"{shown(classic_path)} does not exist (the plain-SAC-critic overrides)")
    classic = read_yaml(classic_copy)
    merged_paths, ignored = {}, []
    for original, copied in task_configs.items():
        merged, ignored = merge_classic(read_yaml(copied), classic)
        path = snapshot / "files" / f"classic_{original.stem}.yaml"
        path.write_text(yaml.safe_dump(merged, sort_keys=False))
        merged_paths[original] = path
    return merged_paths, {"path": shown(classic_path), "available": True,
                          "overrides": classic, "ignored_keys": ignored}


# ----------------------------------------------------------------------------- one evaluation for all
class EpisodePolicy(Protocol):
    """A deterministic policy: `reset()` at each episode start, then `policy(obs, info) -> env action`."""

    def reset(self) -> None: ...

    def __call__(self, obs: Any, info: dict[str, Any]) -> np.ndarray: ...


def evaluate_policy(policy: EpisodePolicy, make_env: Callable[[], gym.Env], episodes: int,
                    base_seed: int) -> dict[str, Any]:
    """The evaluation of every system: `episodes` episodes of `policy` on a fresh `make_env()`,
    episode i from `reset(seed=base_seed + i)`, raw env rewards; with the optimum's return on the
    same seeds where the env knows it (`optimal_return`)."""
    env = make_env()
    knows_optimum = hasattr(env.unwrapped, "optimal_return")
    returns, lengths, optimal = [], [], []
    try:
        for episode in range(episodes):
            seed = base_seed + episode
            total, length = run_episode(policy, env, seed)
            returns.append(total)
            lengths.append(length)
            if knows_optimum:
                optimal.append(float(env.unwrapped.optimal_return(seed=seed)))
    finally:
        env.close()
    return eval_record(returns, lengths, optimal if knows_optimum else None)


def run_episode(policy: EpisodePolicy, env: gym.Env, seed: int) -> tuple[float, int]:
    policy.reset()
    obs, info = env.reset(seed=seed)
    total, length, done = 0.0, 0, False
    while not done:
        obs, reward, terminated, truncated, info = env.step(policy(obs, info))
        total += float(reward)
        length += 1
        done = bool(terminated or truncated)
    return total, length


def eval_record(returns: list[float], lengths: list[int], optimal: list[float] | None) -> dict[str, Any]:
    return {
        "returns": returns, "lengths": lengths, "mean": float(np.mean(returns)), "std": float(np.std(returns)),
        "optimal_returns": optimal, "optimal_mean": None if optimal is None else float(np.mean(optimal)),
        # optimal / agent for negative-cost envs: 1.0 is optimal, 0.5 twice the cost (as dynsac's EvalResult)
        "optimality_ratio": None if optimal is None else float(np.sum(optimal) / np.sum(returns)),
    }


def curve_point(step: int, record: dict[str, Any]) -> dict[str, Any]:
    return {"step": int(step), "return_mean": record["mean"], "return_std": record["std"],
            "optimality_ratio": record["optimality_ratio"], "returns": record["returns"]}


def env_maker(config: Any, extra: dict[str, Any] | None, append_context: bool = False) -> Callable[[], gym.Env]:
    """The env dynsac's `trainer.evaluate(n, extra)` builds: `env.kwargs` + `extra`, or with `extra`
    None the eval env (`env.kwargs` + `env.eval_kwargs`); for a peer with the context appended."""
    from dynsac.envs.factory import make_env

    env_cfg = config.env
    kwargs = {**env_cfg.kwargs, **(env_cfg.eval_kwargs if extra is None else extra)}

    def make() -> gym.Env:
        env = make_env(env_cfg.id, kwargs, env_cfg.max_episode_steps)
        return AppendContext(env) if append_context else env

    return make


def base_seed(spec: dict[str, Any]) -> int:
    return spec["seed"] + EVAL_SEED_OFFSET


def threshold_step(curve: list[dict[str, Any]], metric: str, threshold: float | None) -> int | None:
    """The first curve step whose mean return (or optimality ratio) reaches `threshold`."""
    if threshold is None:
        return None
    key = "optimality_ratio" if metric == "ratio" else "return_mean"
    return next((point["step"] for point in curve if point[key] is not None and point[key] >= threshold), None)


class AppendContext(gym.ObservationWrapper):
    """The env's true context (`env.unwrapped.context`) appended to the observation, for the peers."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        obs_space, context_space = env.observation_space, env.unwrapped.context_space
        self.observation_space = gym.spaces.Box(
            np.concatenate([obs_space.low, context_space.low]).astype(np.float32),
            np.concatenate([obs_space.high, context_space.high]).astype(np.float32), dtype=np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(observation, dtype=np.float32), self.env.unwrapped.context])


# ----------------------------------------------------------------------------- dynsac (in a worker)
class RolloutPolicy:
    """dynsac's own acting path as an `EpisodePolicy`: `Rollout.act(deterministic=True)` with a
    context tracker per episode (none / env / learned alike), the same input sanitising and action
    rescale as `trainer.evaluate`."""

    def __init__(self, rollout: Any) -> None:
        from dynsac.context import split_observation

        self.rollout, self.split = rollout, split_observation
        self.reset()

    def reset(self) -> None:
        self.tracker, self.last = None, None

    def __call__(self, obs: Any, info: dict[str, Any]) -> np.ndarray:
        rollout = self.rollout
        obs, env_context = self.split(obs, info)
        obs = rollout.sanitize(obs, count=False)
        if self.tracker is None:
            self.tracker = rollout.new_tracker(env_context)
        else:  # the transition that led here, as Rollout.run_episode records it
            self.tracker.record(*self.last, obs, env_context)
        action = rollout.act(obs[None], [self.tracker], deterministic=True)[0]
        self.last = (obs, action)
        return rollout.to_env_action(action)


def dynsac_curve_callback(spec: dict[str, Any], curve: list[dict[str, Any]]) -> Any:
    """A dynsac Callback: at each of the trainer's evaluations, this benchmark's evaluation too."""
    from dynsac.training.callbacks import Callback

    class QualityCurve(Callback):
        def on_eval(self, trainer: Any, step: int, result: Any) -> None:
            record = evaluate_policy(RolloutPolicy(trainer.rollout), env_maker(trainer.config, None),
                                     spec["curve_episodes"], base_seed(spec))
            curve.append({**curve_point(step, record), "native_return_mean": float(result.mean)})

    return QualityCurve()


def run_dynsac(spec: dict[str, Any], config: Any) -> dict[str, Any]:
    from dynsac.training import SACTrainer

    log_dir = Path(spec["log_dir"])
    if log_dir.exists():  # metrics.jsonl is appended to: start the folder afresh
        shutil.rmtree(log_dir)
    curve: list[dict[str, Any]] = []
    trainer = SACTrainer(config, callbacks=[dynsac_curve_callback(spec, curve)])
    start = time.perf_counter()
    train = trainer.train()
    out: dict[str, Any] = {"train_wall_s": time.perf_counter() - start, "train_steps": int(train.steps),
                           "interrupted": bool(train.interrupted), "device": str(trainer.device), "curve": curve}
    start = time.perf_counter()
    out["final"] = {}
    for split, extra in spec["splits"].items():
        record = evaluate_policy(RolloutPolicy(trainer.rollout), env_maker(config, extra), spec["eval_episodes"],
                                 base_seed(spec))
        record["native_mean"] = float(trainer.evaluate(spec["eval_episodes"], extra).mean)
        out["final"][split] = record
    out["eval_wall_s"] = time.perf_counter() - start
    out["native_agrees"] = native_agrees(out)
    trainer.env.close()
    if trainer.rollout.eval_env is not None:
        trainer.rollout.eval_env.close()
    return out


def native_agrees(out: dict[str, Any]) -> bool:
    """Whether this benchmark's evaluation of dynsac gave what the trainer's own evaluation gave."""
    pairs = [(p["return_mean"], p["native_return_mean"]) for p in out["curve"]]
    pairs += [(r["mean"], r["native_mean"]) for r in out["final"].values()]
    return all(abs(a - b) <= 1e-6 * max(1.0, abs(b)) for a, b in pairs)


# ----------------------------------------------------------------------------- peers (in a worker)
class PeerPolicy:
    """An SB3 model as an `EpisodePolicy`: `model.predict(obs, deterministic=True)`."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def reset(self) -> None:
        pass

    def __call__(self, obs: Any, info: dict[str, Any]) -> np.ndarray:
        return self.model.predict(obs, deterministic=True)[0]


def peer_curve_callback(interval: int, evaluate_at: Callable[[int], None]) -> Any:
    """An SB3 callback evaluating each time the step count crosses a multiple of `interval`, at the
    start of the next rollout: after that step's gradient update, as dynsac evaluates."""
    from stable_baselines3.common.callbacks import BaseCallback

    class EvalEvery(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.seen = 0

        def _on_step(self) -> bool:
            return True

        def _on_rollout_start(self) -> None:
            step, seen = self.num_timesteps, self.seen
            self.seen = step
            if interval and step // interval > seen // interval:
                evaluate_at(step)

    return EvalEvery()


def make_peer(spec: dict[str, Any], config: Any) -> tuple[Any, dict[str, Any]]:
    """The peer model on its training env, and the settings that differ from the library's defaults."""
    import importlib

    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    contextual = TASKS[spec["task"]]["source"] == "env"
    make_train = env_maker(config, {}, append_context=contextual)  # env.kwargs alone, as dynsac trains
    vec_env = DummyVecEnv([lambda: Monitor(make_train())])
    if contextual:
        vec_env = VecNormalize(vec_env, norm_obs=False, norm_reward=True)
    module, name = PEERS[spec["system"]]
    settings: dict[str, Any] = {"learning_starts": int(config.training.learning_starts)}
    if PEER_BATCH_SIZE[spec["system"]] is not None:
        settings["batch_size"] = PEER_BATCH_SIZE[spec["system"]]
    model = getattr(importlib.import_module(module), name)("MlpPolicy", vec_env, seed=spec["seed"], verbose=0,
                                                           **settings)
    return model, {**settings, "appended_context": contextual, "vec_normalize_reward": contextual}


def run_peer(spec: dict[str, Any], config: Any) -> dict[str, Any]:
    model, settings = make_peer(spec, config)
    contextual = settings["appended_context"]
    curve: list[dict[str, Any]] = []

    def evaluate_at(step: int) -> None:
        curve.append(curve_point(step, evaluate_policy(PeerPolicy(model), env_maker(config, None, contextual),
                                                       spec["curve_episodes"], base_seed(spec))))

    start = time.perf_counter()
    model.learn(total_timesteps=spec["steps"], callback=peer_curve_callback(spec["eval_interval"], evaluate_at))
    if not curve or curve[-1]["step"] != model.num_timesteps:  # the end of training, as dynsac
        evaluate_at(int(model.num_timesteps))
    out: dict[str, Any] = {"train_wall_s": time.perf_counter() - start, "train_steps": int(model.num_timesteps),
                           "interrupted": False, "device": str(model.device), "curve": curve,
                           "peer_settings": settings, "peer_learning_rate": float(model.learning_rate)}
    start = time.perf_counter()
    out["final"] = {split: evaluate_policy(PeerPolicy(model), env_maker(config, extra, contextual),
                                           spec["eval_episodes"], base_seed(spec))
                    for split, extra in spec["splits"].items()}
    out["eval_wall_s"] = time.perf_counter() - start
    model.get_env().close()
    return out


def library_version(system: str) -> str | None:
    if system in DYNSAC_SYSTEMS:
        import dynsac

        return getattr(dynsac, "__version__", None)
    return _version(PEERS[system][0].replace("_", "-"))


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one system on one task and evaluate it. Never raises: errors are returned."""
    import torch

    torch.set_num_threads(1)
    use_snapshot(spec.get("code_dir"))
    result: dict[str, Any] = {k: spec[k] for k in ("key", "task", "system", "seed", "steps", "eval_interval",
                                                   "curve_episodes", "eval_episodes", "fingerprint", "git")}
    start = time.perf_counter()
    try:
        from dynsac.config import load_config

        config = load_config(spec["config_path"], spec["overrides"])
        result["library_version"] = library_version(spec["system"])
        result["env_config"] = config.env.model_dump(mode="json")
        if spec["system"] in DYNSAC_SYSTEMS:
            import dynsac

            result["code_from"] = str(Path(dynsac.__file__).parent)
            result["config"] = config.model_dump(mode="json")
            result.update(run_dynsac(spec, config))
        else:
            result.update(run_peer(spec, config))
        task = TASKS[spec["task"]]
        result["threshold_step"] = threshold_step(result["curve"], task["metric"], task["threshold"])
    except Exception as err:  # noqa: BLE001 - one failed run must not stop the benchmark
        result["error"] = f"{type(err).__name__}: {err}"
        result["traceback"] = traceback.format_exc()
    result["wall_s"] = time.perf_counter() - start
    return result


def is_complete(run: dict[str, Any] | None, steps: int) -> bool:
    return bool(run) and "error" not in run and not run.get("interrupted") and run.get("train_steps") == steps \
        and "final" in run


# ----------------------------------------------------------------------------- statistics
def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single seed)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def summarize(runs: dict[str, Any], args: argparse.Namespace, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Per task x system: the seeds done, mean/std over seeds of each final metric, steps to threshold."""
    summary: dict[str, Any] = {}
    for task, system in pairs:
        done = [runs[k] for k in (run_key(task, system, s) for s in args.seeds) if is_complete(runs.get(k), args.steps)]
        if not done:
            continue
        entry: dict[str, Any] = {"task": task, "system": system, "label": label(task, system),
                                 "seeds": [r["seed"] for r in done]}
        for split in TASKS[task]["splits"]:
            entry[f"{split}_return"] = _mean_std([r["final"][split]["mean"] for r in done])
            if done[0]["final"][split]["optimality_ratio"] is not None:
                entry[f"{split}_ratio"] = _mean_std([r["final"][split]["optimality_ratio"] for r in done])
        threshold = TASKS[task]["threshold"]
        reached = [r["threshold_step"] for r in done if r.get("threshold_step") is not None]
        entry["threshold"] = None if threshold is None else {
            "value": threshold, "metric": TASKS[task]["metric"], "reached": len(reached), "of": len(done),
            "steps": [r.get("threshold_step") for r in done],
            "mean_step": float(np.mean(reached)) if reached else None}
        summary[f"{task}/{system}"] = entry
    return summary


def _fmt(x: float) -> str:
    return f"{x:.3e}" if abs(x) >= 1e5 else f"{x:.1f}"


def _ms(pair: tuple[float, float] | None, ratio: bool = False) -> str:
    if pair is None:
        return "-"
    mean, std = pair
    return f"{mean:.3f} ± {std:.3f}" if ratio else f"{_fmt(mean)} ± {_fmt(std)}"


def _threshold_cell(threshold: dict[str, Any] | None) -> str:
    if threshold is None:
        return "n/a"
    what = f"{threshold['value']:g}" + (" ratio" if threshold["metric"] == "ratio" else "")
    if not threshold["reached"]:
        return f"never ({what}; 0/{threshold['of']})"
    return f"{threshold['mean_step']:,.0f} ({what}; {threshold['reached']}/{threshold['of']})"


def format_table(summary: dict[str, Any], pairs: list[tuple[str, str]]) -> str:
    header = ["task", "system", "seeds", "train return", "test return", "train ratio", "test ratio",
              "steps to threshold (seeds)"]
    rows = []
    for family in FAMILY_NAMES:
        for task, system in sorted((p for p in pairs if TASKS[p[0]]["family"] == family),
                                   key=lambda p: (list(TASKS).index(p[0]), SYSTEMS.index(p[1]))):
            entry = summary.get(f"{task}/{system}")
            if entry is None:
                rows.append([task, label(task, system), "0", "(no finished run)", "", "", "", ""])
                continue
            rows.append([task, entry["label"], str(len(entry["seeds"])), _ms(entry.get("train_return")),
                         _ms(entry.get("test_return")), _ms(entry.get("train_ratio"), ratio=True),
                         _ms(entry.get("test_ratio"), ratio=True), _threshold_cell(entry["threshold"])])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    return "\n".join(out)


# ----------------------------------------------------------------------------- targets
def _check(name: str, statuses: list[str], details: list[str]) -> dict[str, Any]:
    status = "FAIL" if "FAIL" in statuses else ("N/A" if "N/A" in statuses or not statuses else "PASS")
    return {"target": name, "status": status, "detail": details}


def target_a(summary: dict[str, Any]) -> dict[str, Any]:
    name = (f"(a) linear_learned: train ratio >= {LINEAR_TRAIN_RATIO_TARGET:.2f} and test ratio >= "
            f"{LINEAR_TEST_RATIO_TARGET:.2f}")
    entry = summary.get("linear_learned/dynsac")
    if entry is None:
        return _check(name, ["N/A"], ["no finished linear_learned/dynsac run"])
    (train, train_std), (test, test_std) = entry["train_ratio"], entry["test_ratio"]
    ok = train >= LINEAR_TRAIN_RATIO_TARGET and test >= LINEAR_TEST_RATIO_TARGET
    return _check(name, ["PASS" if ok else "FAIL"], [f"train {train:.3f} ± {train_std:.3f}, test {test:.3f} ± "
                                                     f"{test_std:.3f} over {len(entry['seeds'])} seed(s)"])


FAMILY_TEST_METRIC = {"linear": "test_ratio", "pendulum": "test_return"}  # task prefix -> what (b) and (c) compare


def _family_entries(summary: dict[str, Any], prefix: str, sources: tuple[str, ...]) -> list[dict[str, Any]] | None:
    entries = [summary.get(f"{prefix}_{source}/dynsac") for source in sources]
    return None if any(e is None for e in entries) else entries


def target_b(summary: dict[str, Any]) -> dict[str, Any]:
    statuses, details = [], []
    for prefix, metric in FAMILY_TEST_METRIC.items():
        entries = _family_entries(summary, prefix, ("none", "learned"))
        if entries is None:
            statuses.append("N/A")
            details.append(f"{prefix}: missing {prefix}_none or {prefix}_learned runs")
            continue
        (mn, sn), (ml, sl) = entries[0][metric], entries[1][metric]
        ok = ml - mn > sn + sl
        statuses.append("PASS" if ok else "FAIL")
        one = min(len(e["seeds"]) for e in entries) < 2
        details.append(f"{prefix} ({metric}): learned - none = {_fmt(ml)} - ({_fmt(mn)}) = {_fmt(ml - mn)} "
                       f"{'>' if ok else '<='} {_fmt(sn)} + {_fmt(sl)}  -> {statuses[-1]}"
                       + ("  (one seed: no spread estimate)" if one else ""))
    return _check("(b) learned beats none on test by more than std(none) + std(learned) (linear: test ratio; "
                  "pendulum: test return)", statuses, details)


def target_c(summary: dict[str, Any]) -> dict[str, Any]:
    statuses, details = [], []
    for prefix, metric in FAMILY_TEST_METRIC.items():
        entries = _family_entries(summary, prefix, ("none", "learned", "env"))
        if entries is None:
            statuses.append("N/A")
            details.append(f"{prefix}: missing {prefix}_none, _learned or _env runs")
            continue
        mn, ml, me = (e[metric][0] for e in entries)
        gap = me - mn
        frac = (ml - mn) / gap if gap > 0 else None
        statuses.append("PASS" if frac is not None and frac >= GAP_CLOSED_TARGET else "FAIL")
        shown = "undefined: env does not beat none" if frac is None else f"{frac:.2f}"
        details.append(f"{prefix} ({metric}): (learned - none) / (env - none) = {_fmt(ml - mn)} / {_fmt(gap)} = "
                       f"{shown}  -> {statuses[-1]}")
    return _check(f"(c) learned closes >= {GAP_CLOSED_TARGET:.0%} of the none -> env gap on test", statuses, details)


def target_d(summary: dict[str, Any]) -> dict[str, Any]:
    name = (f"(d) Pendulum-v1: dynsac mean return >= max(sb3, crossq), and dynsac reaches {PENDULUM_THRESHOLD:g} "
            "in fewer steps than sb3")
    dynsac, sb3, crossq = (summary.get(f"pendulum/{s}") for s in ("dynsac", "sb3", "crossq"))
    if dynsac is None or sb3 is None or crossq is None:
        return _check(name, ["N/A"], ["needs finished pendulum runs of dynsac, sb3 and crossq"])
    best = max(sb3["train_return"][0], crossq["train_return"][0])
    ok_return = dynsac["train_return"][0] >= best
    d, s = dynsac["threshold"], sb3["threshold"]
    # Fewer steps: reached in more seeds, or in as many (> 0) with a lower mean step.
    ok_steps = d["reached"] > s["reached"] or (d["reached"] == s["reached"] > 0 and d["mean_step"] < s["mean_step"])
    details = [f"return: dynsac {_fmt(dynsac['train_return'][0])} {'>=' if ok_return else '<'} max(sb3 "
               f"{_fmt(sb3['train_return'][0])}, crossq {_fmt(crossq['train_return'][0])})",
               f"steps to {PENDULUM_THRESHOLD:g}: dynsac {_threshold_cell(d)}, sb3 {_threshold_cell(s)}  -> "
               f"{'fewer' if ok_steps else 'not fewer'}"]
    return _check(name, ["PASS" if ok_return and ok_steps else "FAIL"], details)


def format_verdict(checks: list[dict[str, Any]]) -> str:
    lines = []
    for check in checks:
        lines.append(f"{check['status']:4}  {check['target']}")
        lines += [f"        {d}" for d in check["detail"]]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- results file
def build_report(runs: dict[str, Any], args: argparse.Namespace, meta: dict[str, Any],
                 pairs: list[tuple[str, str]], clock: tuple[float, float], finished: bool) -> dict[str, Any]:
    wall_s, earlier_wall_s = clock
    summary = summarize(runs, args, pairs)
    expected = [run_key(t, s, seed) for t, s in pairs for seed in args.seeds]
    complete = [k for k in expected if is_complete(runs.get(k), args.steps)]
    return {
        **meta,
        "finished": finished and len(complete) == len(expected),
        "runs_expected": len(expected), "runs_complete": len(complete),
        "wall_time_s": wall_s, "wall_time_total_s": earlier_wall_s + wall_s,
        "sum_of_run_wall_s": float(sum(runs[k].get("wall_s", 0.0) for k in complete)),
        "summary": summary,
        "verdict": [target_a(summary), target_b(summary), target_c(summary), target_d(summary)],
        "runs": runs,
    }


def print_report(report: dict[str, Any], args: argparse.Namespace, pairs: list[tuple[str, str]]) -> None:
    print("\n" + "=" * 100)
    print(f"Learning quality at {args.steps:,} env steps, seeds {args.seeds}; final evaluation {args.eval_episodes} "
          f"episode(s) per split, curve every {args.eval_interval:,} steps over {args.curve_episodes} episode(s); "
          "deterministic policies, episode i of seed s reset with s + 1,000,000 + i for every system.")
    print("Mean ± std over seeds (sample std). Returns: higher is better. Ratio (RandomLinear): LQR return / agent "
          "return, 1.0 = optimal. Pendulum-v1 has one dynamics: its return is under 'train return'.\n"
          "'(+context)': a peer given the env's true context in its observation (the `_env` setting).")
    if args.set:
        print(f"Extra dynsac overrides (--set): {args.set}")
    for system, reason in report["unavailable"].items():
        print(f"  {system}: UNAVAILABLE, skipped: {reason}")
    print(f"Runs complete: {report['runs_complete']}/{report['runs_expected']}"
          + ("" if report["finished"] else "  (PARTIAL RESULTS)"))
    for key, run in report["runs"].items():
        if "error" in run:
            print(f"  run {key} FAILED: {run['error']}")
        elif run.get("native_agrees") is False:
            print(f"  run {key}: WARNING this benchmark's evaluation differs from dynsac's own trainer.evaluate")
    print()
    print(format_table(report["summary"], pairs))
    print("\nDone-when targets:")
    print(format_verdict(report["verdict"]))
    total = report["wall_time_total_s"]
    print(f"\nTotal wall time: {total:.0f} s ({total / 60:.1f} min) with --jobs {args.jobs}; sum of the runs' own "
          f"wall times: {report['sum_of_run_wall_s']:.0f} s")
    print(f"Results: {args.out}")
    print("=" * 100)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def build_meta(args: argparse.Namespace, unavailable: dict[str, str], classic: dict[str, Any]) -> dict[str, Any]:
    import dynsac

    tasks = {t: {"env_id": TASKS[t]["env_id"], "config": str(TASKS[t]["config"].relative_to(REPO_ROOT)),
                 "overrides": task_overrides(t), "metric": TASKS[t]["metric"], "threshold": TASKS[t]["threshold"],
                 "splits": TASKS[t]["splits"]} for t in TASKS if t in {*args.tasks, *PEER_TASK.values()}}
    return {
        "benchmark": "quality", "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "git": git_revision(), "python": platform.python_version(),
        "platform": platform.platform(), "cpu_count": os.cpu_count(), "jobs": args.jobs,
        "versions": {"dynsac": getattr(dynsac, "__version__", None),
                     **{p: _version(p) for p in ("torch", "gymnasium", "numpy", "stable-baselines3", "sb3-contrib")}},
        "systems": args.systems, "tasks": args.tasks, "seeds": args.seeds, "steps": args.steps,
        "eval_interval": args.eval_interval, "eval_episodes": args.eval_episodes,
        "curve_episodes": args.curve_episodes, "eval_seed": f"training seed + {EVAL_SEED_OFFSET:,} + episode",
        "extra_overrides": args.set, "task_definitions": tasks, "peer_tasks": PEER_TASK,
        "peer_batch_size": PEER_BATCH_SIZE, "dynsac_classic": classic, "unavailable": unavailable,
        "runs_dir": str(args.runs_dir),
    }


# ----------------------------------------------------------------------------- main
def snapshot_files(args: argparse.Namespace) -> list[Path]:
    """The config files the runs read: every task config, and the classic overrides where used."""
    task_configs = sorted({task["config"] for task in TASKS.values()})
    classic = args.classic_config
    return task_configs + ([classic] if "dynsac_classic" in args.systems and classic.is_file() else [])


def prepare_configs(args: argparse.Namespace, snapshot: Path, copies: dict[Path, Path]
                    ) -> tuple[dict[tuple[str, str], Path], dict[str, str], dict[str, Any]]:
    """The config file (in the snapshot) of each (task, system) pair; the systems unavailable (with
    why); what the JSON says about dynsac_classic. A bad --set raises ValueError."""
    paths = {original: copy for original, copy in copies.items() if original != args.classic_config}
    config_of = {(task, system): paths[TASKS[task]["config"]] for task in TASKS for system in ("dynsac", *PEERS)}
    for task in args.tasks:  # a bad --set fails here, once, as an error (not as an unavailable dynsac_classic)
        validate(config_of[(task, "dynsac")], [*task_overrides(task), *args.set])
    unavailable = {}
    classic = {"path": shown(args.classic_config), "available": False, "reason": "not in --systems"}
    if "dynsac_classic" in args.systems:
        try:
            classic_paths, classic = prepare_classic(snapshot, paths, args.classic_config,
                                                     copies.get(args.classic_config))
            for task in args.tasks:
                validate(classic_paths[TASKS[task]["config"]], [*task_overrides(task), *args.set])
            config_of.update({(t, "dynsac_classic"): classic_paths[TASKS[t]["config"]] for t in args.tasks})
        except ValueError as err:
            unavailable["dynsac_classic"] = classic["reason"] = original_paths(str(err), snapshot, copies)
    return config_of, unavailable, classic


def original_paths(message: str, snapshot: Path, copies: dict[Path, Path]) -> str:
    """`message` naming the files the snapshot copied, not their copies."""
    for original, copied in copies.items():
        message = message.replace(str(copied), shown(original))
    for merged in (snapshot / "files").glob("classic_*.yaml"):
        message = message.replace(str(merged), f"dynsac_classic's {merged.name.removeprefix('classic_')}")
    return message


def validate(path: Path, overrides: list[str]) -> Any:
    from dynsac.config import load_config

    return load_config(path, overrides)


def make_specs(args: argparse.Namespace, pairs: list[tuple[str, str]], config_of: dict[tuple[str, str], Path],
               snapshot: Path, git: str | None) -> list[dict[str, Any]]:
    specs = []
    for seed in args.seeds:  # seed-major: a benchmark cut short has every cell's first seeds
        for task, system in pairs:
            key = run_key(task, system, seed)
            spec = {"key": key, "task": task, "system": system, "seed": seed, "steps": args.steps,
                    "eval_interval": args.eval_interval, "curve_episodes": args.curve_episodes,
                    "eval_episodes": args.eval_episodes, "splits": TASKS[task]["splits"],
                    "config_path": str(config_of[(task, system)]), "log_dir": str(args.runs_dir / key),
                    "code_dir": str(snapshot), "git": git}
            spec["overrides"] = run_overrides(spec, args)
            spec["fingerprint"] = fingerprint(spec, validate(spec["config_path"], spec["overrides"]))
            specs.append(spec)
    return specs


def _status(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"FAILED: {result['error']}"
    parts = []
    for split, record in result["final"].items():
        ratio = record["optimality_ratio"]
        parts.append(f"{split} {_fmt(record['mean'])}" + (f" (ratio {ratio:.3f})" if ratio is not None else ""))
    reached = result.get("threshold_step")
    return ", ".join(parts) + ("" if reached is None else f", threshold at step {reached:,}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_peers(args.systems)
    start = time.monotonic()
    snapshot, copies = snapshot_source("quality_src_", snapshot_files(args))
    try:
        config_of, unavailable, classic = prepare_configs(args, snapshot, copies)
        available = [s for s in args.systems if s not in unavailable]
        pairs = cells(args, available)
        specs = make_specs(args, pairs, config_of, snapshot, git_revision())
    except ValueError as err:  # a bad --set fails here, once, not in every run
        print(f"[quality] error: --set {args.set}: {original_paths(str(err), snapshot, copies)}", file=sys.stderr)
        shutil.rmtree(snapshot, ignore_errors=True)
        return 2
    meta = build_meta(args, unavailable, classic)
    runs, earlier_wall = read_previous_runs(args.out) if args.resume_results else ({}, 0.0)
    todo = []
    for spec in specs:
        previous = runs.get(spec["key"])
        if is_complete(previous, args.steps) and previous.get("fingerprint") == spec["fingerprint"]:
            continue
        runs.pop(spec["key"], None)  # rerun: an outdated result must not count as done if this one fails
        todo.append(spec)
    for system, reason in unavailable.items():
        print(f"[quality] {system} is unavailable and skipped: {reason}", flush=True)
    if classic.get("ignored_keys"):
        print(f"[quality] dynsac_classic: {classic['path']} sets {', '.join(classic['ignored_keys'])}; ignored (the "
              "task decides them)", flush=True)
    print(f"[quality] {len(todo)} run(s) to do ({len(specs) - len(todo)} already in {args.out}), {args.jobs} "
          f"worker(s), {args.steps:,} steps each; systems {available}, tasks {args.tasks}", flush=True)

    def save(finished: bool) -> dict[str, Any]:
        report = build_report(runs, args, meta, pairs, (time.monotonic() - start, earlier_wall), finished)
        write_json(args.out, report)
        return report

    interrupted = False
    save(False)
    try:
        for done, result in enumerate(run_pool(run_one, todo, args.jobs), 1):
            runs[result["key"]] = result
            save(False)
            print(f"[quality] {done}/{len(todo)} {result['key']} ({result['wall_s']:.0f} s): {_status(result)}  "
                  f"[elapsed {(time.monotonic() - start) / 60:.1f} min]", flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("\n[quality] interrupted: workers stopped; finished runs are saved (continue with --resume-results)",
              flush=True)
    shutil.rmtree(snapshot, ignore_errors=True)
    report = save(not interrupted)
    print_report(report, args, pairs)
    return 130 if interrupted else (0 if report["finished"] else 1)


if __name__ == "__main__":
    sys.exit(main())
