"""A run's records: the checkpoint as the composition of the parts' states, the guards on the run
and checkpoint folders, the logged scalars and `summary.json`."""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dynsac.config import Config, ConfigError
from dynsac.context import ContextTracker
from dynsac.envs.factory import factory_name
from dynsac.training.checkpoint import CheckpointError
from dynsac.training.logger import METRICS_FILE
from dynsac.version import __version__

if TYPE_CHECKING:
    from dynsac.training.trainer import SACTrainer, TrainResult


def context_dim(config: Config, env_context: np.ndarray | None) -> int:
    """The policy's and critics' context width for `config.context.source`."""
    context = config.context
    if context.source == "learned":
        return context.dim
    if context.source == "env":
        ContextTracker("env", 1, 1, 1, config.env.id).reset(env_context)  # raises if missing
        return int(env_context.shape[0])
    return 0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("training.device = 'cuda': no CUDA device is available here; use 'auto' or 'cpu'")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------- folders
def check_run_dir(config: Config, step: int) -> None:
    """A fresh run never mixes its metrics into another run's folder."""
    metrics = Path(config.logging.dir) / METRICS_FILE
    if step == 0 and metrics.exists() and metrics.stat().st_size > 0:
        raise CheckpointError(
            f"logging.dir = {config.logging.dir!r} already holds another run's {METRICS_FILE}; "
            f"start afresh elsewhere with --set logging.dir=NEW_RUN_DIR (or resume that run)"
        )


# ----------------------------------------------------------------- records
def training_scalars(trainer: SACTrainer, means: dict[str, float], interval: tuple[float, int, int]) -> dict[str, float]:
    """One log interval's scalars: the update metrics' means, speed, episodes and safety counters.
    `interval`: (seconds, env steps, updates) since the last log."""
    seconds, steps, updates = interval
    # Names that carry their own group ("context/mean", "dynamics_map/forward_loss") keep it.
    scalars = {name if "/" in name else f"train/{name}": value for name, value in means.items()}
    elapsed = max(seconds, 1e-9)
    scalars["perf/steps_per_sec"] = steps / elapsed
    scalars["perf/updates_per_sec"] = updates / elapsed
    returns, lengths = trainer.rollout.pop_finished()
    if returns:
        scalars["train/episode_return"] = float(np.mean(returns))
        scalars["train/episode_length"] = float(np.mean(lengths))
    acting = trainer.rollout.counters
    scalars["safety/sanitized_values"] = float(trainer.sanitized_values)
    scalars["safety/skipped_updates"] = float(trainer.agent.skipped_steps)
    scalars["safety/rollbacks"] = float(trainer.rollbacks)
    scalars["safety/nonfinite_actions"] = float(acting.nonfinite_actions)
    scalars["safety/reward_normalization_scale"] = trainer.reward_normalizer.scale if trainer.num_updates else 1.0
    scalars["safety/context_fallbacks"] = float(int(trainer.agent.context_fallbacks) + acting.context_fallbacks)
    return scalars


def summary(trainer: SACTrainer, result: TrainResult, total: int) -> dict[str, Any]:
    """`summary.json`: the end-of-run facts; wall_s is this segment's, wall_s_total that of every
    segment on the way to this state (resumes included, abandoned branches not)."""
    final, history, lineage = result.final_eval, result.eval_history, trainer.lineage
    segments = lineage.all_segments(trainer.step)
    return {
        "steps": trainer.step, "total_steps": total, "updates": trainer.num_updates,
        "wall_s": result.wall_time_s, "wall_s_total": sum(s["wall_s"] for s in segments),
        "segments": len(segments), "rewinds": len(lineage.rewinds), "run_id": lineage.run_id,
        "interrupted": result.interrupted, "stop_reason": result.stop_reason,
        "early_stop": result.early_stop,
        "final_eval_return": None if final is None else final.mean,
        "best_eval_return": max((r for _, r in history), default=None),
        "optimal_return": None if final is None else final.optimal_mean,
        "optimality_ratio": None if final is None else final.optimality_ratio,
        "warnings": dict(trainer.early_warnings.monitor.counts), "rollbacks": trainer.rollbacks,
        "last_checkpoint": None if result.last_checkpoint is None else str(result.last_checkpoint),
    }


# ----------------------------------------------------------------- the checkpoint
def space_signature(trainer: SACTrainer) -> dict[str, Any]:
    return {
        "env_id": trainer.config.env.id,
        "obs_dim": trainer.obs_dim,
        "action_dim": trainer.action_dim,
        "action_low": trainer.env.action_space.low.tolist(),
        "action_high": trainer.env.action_space.high.tolist(),
    }


def compose(trainer: SACTrainer) -> dict[str, Any]:
    """The checkpoint payload (format 7): each part's `state_dict`, the counters and the RNGs."""
    return {
        "dynsac_version": __version__,
        "step": trainer.step,
        "num_updates": trainer.num_updates,
        "config": trainer.config.model_dump(mode="json"),
        "spaces": space_signature(trainer),
        "env_factory": None if trainer.env_fn is None else factory_name(trainer.env_fn),
        "agent": trainer.agent.full_state_dict(),
        "buffer": trainer.buffer.state_dict() if trainer.config.training.save_replay_buffer else None,
        "rng": rng_state(trainer.warmup_rng),
        "rollout": trainer.rollout.state_dict(),
        "reward_normalizer": trainer.reward_normalizer.state_dict(),
        "supervisor": trainer.supervisor.state_dict(),
        "callbacks": {cb.state_key: cb.state_dict() for cb in trainer.callbacks if cb.state_key is not None},
        "lineage": trainer.lineage.state_dict(trainer.step),
    }


def restore(trainer: SACTrainer, state: dict[str, Any], source: str) -> None:
    """Load a (migrated) checkpoint payload into `trainer`'s parts; the config's tunables win."""
    check_spaces(state["spaces"], space_signature(trainer), source)
    agent = trainer.agent
    try:
        agent.load_full_state_dict(state["agent"])
    except (RuntimeError, KeyError, ValueError) as err:
        raise CheckpointError(
            f"{source}: its networks do not match this config (hidden sizes, critic_loss, num_critics, "
            f"network, crossq or obs_normalization changed?): {str(err).splitlines()[0]}"
        ) from None
    agent.configure(agent.settings)  # this config's tunables, learning rates included
    if state["buffer"] is not None:
        try:
            trainer.buffer.load_state_dict(state["buffer"])
        except ValueError as err:
            raise CheckpointError(f"{source}: {err}") from None
    trainer.step, trainer.num_updates = state["step"], state["num_updates"]
    trainer.rollout.step = trainer.step
    trainer.lineage.load_state_dict(state["lineage"], trainer.step, source)
    trainer.reward_normalizer.load_state_dict(state["reward_normalizer"])
    trainer.supervisor.load_state_dict(state["supervisor"])
    if trainer.supervisor.recovery.lr_scale != 1.0:  # the rates rollbacks lowered stay lowered
        agent.scale_learning_rates(trainer.supervisor.recovery.lr_scale)
    for callback in trainer.callbacks:
        saved = state["callbacks"].get(callback.state_key) if callback.state_key else None
        if saved is not None:
            callback.load_state_dict(saved)
    restore_rng(state["rng"], trainer.warmup_rng)
    saved_envs = len(state["rollout"]["envs"])
    if saved_envs != len(trainer.slots):
        raise CheckpointError(
            f"{source}: was trained with training.num_envs={saved_envs}, but the config has "
            f"num_envs={len(trainer.slots)}; resume with --set training.num_envs={saved_envs} "
            f"(the replay buffer interleaves the envs' transitions)"
        )
    trainer.rollout.load_state_dict(state["rollout"], source)


def check_spaces(saved: dict[str, Any], here: dict[str, Any], source: str) -> None:
    for key in ("obs_dim", "action_dim"):
        if saved[key] != here[key]:
            raise CheckpointError(
                f"{source}: was trained on {saved['env_id']!r} with {key}={saved[key]}, but "
                f"env.id = {here['env_id']!r} has {key}={here[key]}; use the checkpoint's env"
            )


def rng_state(warmup_rng: np.random.Generator) -> dict[str, Any]:
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": keys.tolist(), "pos": position, "has_gauss": has_gauss, "cached": cached},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "warmup": warmup_rng.bit_generator.state,
    }


def restore_rng(rng: dict[str, Any], warmup_rng: np.random.Generator) -> None:
    random.setstate(rng["python"])
    plain = rng["numpy"]
    keys = np.asarray(plain["keys"], dtype=np.uint32)
    np.random.set_state((plain["name"], keys, plain["pos"], plain["has_gauss"], plain["cached"]))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    warmup_rng.bit_generator.state = rng["warmup"]
