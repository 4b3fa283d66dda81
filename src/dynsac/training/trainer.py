"""SACTrainer: wires env, replay buffer, SAC agent, logging, evaluation and checkpoints."""

from __future__ import annotations

import copy
import json
import random
import signal
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from dynsac import __version__
from dynsac.config import Config, ConfigError, validate_config, apply_override
from dynsac.context import ContextTracker, DynamicsMap, split_observation
from dynsac.envs.factory import make_env, observation_box
from dynsac.envs.state import capture_env_state, restore_env_state
from dynsac.safety.forensics import PreUpdateState, investigate
from dynsac.safety import (
    EarlyWarningMonitor,
    NonFiniteReport,
    RecoveryManager,
    all_finite,
    find_nonfinite,
    named_state_tensors,
    sanitize_observation,
    sanitize_reward,
)
from dynsac.safety.guards import guard_context, trace_policy_nonfinite
from dynsac.safety.reward_scale import RewardNormalizer
from dynsac.sac import GaussianPolicy, SACAgent
from dynsac.sac.replay import ReplayBuffer
from dynsac.training.checkpoint import (
    CheckpointError,
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from dynsac.training.logger import METRICS_FILE, MetricAccumulator, Progress, RunLogger


@dataclass
class EvalResult:
    """Deterministic-policy episode returns; `optimal_returns` where the env knows its optimum."""

    returns: list[float]
    lengths: list[int]
    optimal_returns: list[float] | None = None

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))

    @property
    def optimal_mean(self) -> float | None:
        return None if self.optimal_returns is None else float(np.mean(self.optimal_returns))

    @property
    def optimality_ratio(self) -> float | None:
        """Optimal return / agent return, for negative-cost envs: 1.0 is optimal, 0.5 twice the cost."""
        if self.optimal_returns is None:
            return None
        return float(np.sum(self.optimal_returns) / np.sum(self.returns))


@dataclass
class TrainResult:
    steps: int
    wall_time_s: float
    final_eval: EvalResult | None
    last_checkpoint: Path | None
    interrupted: bool = False
    eval_history: list[tuple[int, float]] = field(default_factory=list)
    stop_reason: str | None = None  # set when the safety policy stopped the run


MAX_FORENSIC_RUNS = 5  # replays per run: the first events tell the story, later ones only cost time


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


MIN_UPDATES_FOR_WARNINGS = 50  # logged intervals with fewer updates are not read for early warnings


@dataclass
class EnvSlot:
    """One training env and where its current episode stands."""

    env: Any
    tracker: ContextTracker
    obs: np.ndarray
    episode_id: int
    episode_return: float = 0.0
    episode_length: int = 0


class SACTrainer:
    """Soft Actor-Critic training on `training.num_envs` environments (one by default).

    Constructing a trainer touches nothing on disk; `train()` opens the run folder and writes
    metrics and checkpoints.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        params = config.training
        if params.torch_threads:
            torch.set_num_threads(params.torch_threads)
        self.device = resolve_device(params.device)
        seed_everything(params.seed)

        envs = [make_env(config.env.id, config.env.kwargs, config.env.max_episode_steps) for _ in range(params.num_envs)]
        first = [split_observation(*self._seed_env(env, params.seed + i)) for i, env in enumerate(envs)]
        self.obs_dim = int(observation_box(envs[0]).shape[0])
        self.action_dim = int(envs[0].action_space.shape[0])
        self.context_dim = self._context_dim(first[0][1])
        self.agent = SACAgent(
            self.obs_dim,
            self.action_dim,
            actor_hidden_sizes=params.actor_layers,
            critic_hidden_sizes=params.critic_layers,
            context_dim=self.context_dim,
            action_low=envs[0].action_space.low,
            action_high=envs[0].action_space.high,
            actor_lr=params.actor_lr,
            critic_lr=params.critic_lr,
            alpha_lr=params.alpha_lr,
            gamma=params.gamma,
            tau=params.tau,
            alpha=params.alpha,
            init_alpha=params.init_alpha,
            target_entropy=params.target_entropy,
            max_grad_norm=params.max_grad_norm,
            log_std_min=params.log_std_min,
            log_std_max=params.log_std_max,
            dynamics_map=self._build_dynamics_map(),
            dynamics_map_lr=config.context.learning_rate,
            critic_gradient_to_map=config.context.critic_gradient,
            detach_policy_context=config.context.detach_policy,
            critic_layer_norm=params.critic_layer_norm,
            huber_delta=params.huber_delta if params.critic_loss == "huber" else None,
            policy_delay=params.policy_delay,
            bf16=params.precision == "bf16",
            compile_update=params.compile,
        ).to(self.device)
        self._action_center = self.policy.action_center.cpu().numpy()
        self._action_half_range = self.policy.action_half_range.cpu().numpy()
        stored_context_dim = self.context_dim if config.context.source == "env" else 0
        self.buffer = ReplayBuffer(
            params.buffer_size, self.obs_dim, self.action_dim, self.device, stored_context_dim, params.num_envs
        )
        safety = config.safety
        self.agent.skip_nonfinite_gradients = safety.skip_nonfinite_gradients
        self.agent.context_bound = safety.context_bound
        self.reward_normalizer = RewardNormalizer(safety.reward_normalization)
        self.acting_context_fallbacks = 0
        self.nonfinite_actions = 0  # policy outputs replaced before they reached the env
        self._state_tensor_cache: tuple[tuple, list[torch.Tensor]] | None = None
        self._reported_context_fallbacks = 0
        self.recovery = RecoveryManager(
            safety.snapshot_interval, safety.rollback_lr_factor, safety.max_rollbacks, safety.rollback_window
        )
        self.stop_reason: str | None = None
        self.early_warnings = EarlyWarningMonitor(target_entropy=self.agent.target_entropy if self.agent.auto_alpha else None)
        self._pre_update = PreUpdateState(self.agent) if safety.forensics else None
        self._forensic_runs = 0
        self._last_clean_scan = -1  # update after which the full state scan last found nothing (-1: none yet)
        self.warmup_rng = np.random.default_rng(params.seed)

        self.step = 0
        self._step_before = 0  # self.step before the last collect_step (schedules fire when crossed)
        self.num_updates = 0
        self.sanitized_values = 0
        self.slots = [self._new_slot(env, obs, env_context, episode_id)
                      for episode_id, (env, (obs, env_context)) in enumerate(zip(envs, first))]
        self.episode = len(self.slots)  # the next episode id to hand out
        self._finished_returns: list[float] = []
        self._finished_lengths: list[int] = []
        self.metrics = MetricAccumulator()
        self.eval_env = None
        self.logger: RunLogger | None = None
        self._stop_requested = False

    @property
    def policy(self) -> GaussianPolicy:
        return self.agent.policy

    @property
    def rollbacks(self) -> int:
        """Rollbacks to the last good state so far (checkpointed with the recovery state)."""
        return self.recovery.total_rollbacks

    @property
    def env(self):
        """The first training env (the only one unless `training.num_envs` > 1)."""
        return self.slots[0].env

    @property
    def tracker(self) -> ContextTracker:
        return self.slots[0].tracker

    @staticmethod
    def _seed_env(env, seed: int) -> tuple[Any, dict[str, Any]]:
        env.action_space.seed(seed)
        return env.reset(seed=seed)

    def _new_slot(self, env, obs: Any, env_context: np.ndarray | None, episode_id: int) -> EnvSlot:
        tracker = self._new_tracker()
        tracker.reset(env_context)
        return EnvSlot(env, tracker, self._sanitize(obs), episode_id)

    def _context_dim(self, env_context: np.ndarray | None) -> int:
        context = self.config.context
        if context.source == "learned":
            return context.dim
        if context.source == "env":
            ContextTracker("env", 1, 1, 1, self.config.env.id).reset(env_context)  # raises if missing
            return int(env_context.shape[0])
        return 0

    def _build_dynamics_map(self) -> DynamicsMap | None:
        context = self.config.context
        if context.source != "learned":
            return None
        return DynamicsMap(
            self.obs_dim,
            self.action_dim,
            context.dim,
            context.history_length,
            context.encoder_hidden_sizes,
            context.model_hidden_sizes,
            context.backward_weight,
            context.bounded,
        )

    def _new_tracker(self) -> ContextTracker:
        context = self.config.context
        return ContextTracker(context.source, context.history_length, self.obs_dim, self.action_dim, self.config.env.id)

    def _acting_context(self, tracker: ContextTracker) -> torch.Tensor | None:
        window = tracker.window
        if window is None:
            context = self.agent.acting_context(env_context=tracker.env_context)
        else:
            context = self.agent.acting_context(window=window.features, mask=window.mask)
        if context is None:
            return None
        guarded, replaced = guard_context(context, self.config.safety.context_bound)
        if bool(replaced):
            self.acting_context_fallbacks += 1
            finite = context[torch.isfinite(context)]
            largest = f"{finite.abs().max().item():.3g}" if finite.numel() else "none"
            message = (f"step {self.step}: context for acting is not usable (NaN {int(context.isnan().sum())}, "
                       f"Inf {int(context.isinf().sum())}, largest finite |entry| {largest}, bound "
                       f"{self.config.safety.context_bound:g}); acting with a zero context")
            if self.acting_context_fallbacks <= 3 or self.acting_context_fallbacks % 1000 == 0:
                print(f"[dynsac] warning: {message} ({self.acting_context_fallbacks} so far)", flush=True)
                self._event("context_fallback", message)
        return guarded

    def _guard_action(self, actions: np.ndarray, obs: torch.Tensor, context: torch.Tensor | None) -> np.ndarray:
        """Actions (N, A) with a non-finite entry never reach the env: each such row is replaced by a
        uniformly random action, counted, and the first non-finite tensor on the policy's path is named."""
        bad_rows = ~np.isfinite(actions).all(axis=1)
        if not bad_rows.any():
            return actions
        self.nonfinite_actions += int(bad_rows.sum())
        origin = trace_policy_nonfinite(self.policy, obs, context)
        message = f"step {self.step}: the policy's action is non-finite ({origin}); acting uniformly at random instead"
        if self.nonfinite_actions <= 3 or self.nonfinite_actions % 1000 == 0:
            print(f"[dynsac] warning: {message} ({self.nonfinite_actions} so far)", flush=True)
            self._event("nonfinite_action", message)
        actions = actions.copy()
        actions[bad_rows] = self.warmup_rng.uniform(-1.0, 1.0, (int(bad_rows.sum()), self.action_dim))
        return actions

    # ----------------------------------------------------------------- acting and learning
    def collect_step(self) -> list[dict[str, Any]]:
        """Act once in every env (uniformly random during warm-up; otherwise one batched policy
        forward for all), store the transitions in env order, handle episode ends. Returns one
        result (reward, done, info, and episode_return at an episode's end) per env."""
        params = self.config.training
        if self.step < params.learning_starts:
            actions = self.warmup_rng.uniform(-1.0, 1.0, (len(self.slots), self.action_dim)).astype(np.float32)
        else:
            obs = torch.as_tensor(np.stack([slot.obs for slot in self.slots]), dtype=torch.float32, device=self.device)
            contexts = [self._acting_context(slot.tracker) for slot in self.slots]
            context = None if contexts[0] is None else torch.cat(contexts)
            with torch.no_grad():
                actions = self._guard_action(self.policy.sample(obs, context)[0].cpu().numpy(), obs, context)
        self._step_before = self.step
        return [self._step_env(slot, action) for slot, action in zip(self.slots, actions)]

    def _step_env(self, slot: EnvSlot, action: np.ndarray) -> dict[str, Any]:
        params = self.config.training
        env_action = self._action_center + action * self._action_half_range
        raw_next_obs, reward, terminated, truncated, info = slot.env.step(env_action)
        next_obs, next_env_context = split_observation(raw_next_obs, info)
        next_obs = self._sanitize(next_obs)
        reward = self._sanitize_reward(float(reward))
        self.reward_normalizer.observe(reward * params.reward_scale)
        self.buffer.add(
            slot.obs, action, reward * params.reward_scale, next_obs, terminated, truncated, slot.episode_id,
            slot.tracker.env_context, next_env_context,
        )
        if self.agent.dynamics_map is not None:
            self.agent.dynamics_map.observe(*(torch.as_tensor(x, device=self.device) for x in (slot.obs, action, next_obs)))
        slot.tracker.record(slot.obs, action, next_obs, next_env_context)
        self.step += 1
        slot.episode_return += float(reward)
        slot.episode_length += 1
        done = bool(terminated or truncated)
        result = {"reward": float(reward), "done": done, "info": info}
        if done:
            result["episode_return"] = slot.episode_return
            self._finished_returns.append(slot.episode_return)
            self._finished_lengths.append(slot.episode_length)
            slot.episode_id, self.episode = self.episode, self.episode + 1
            slot.episode_return, slot.episode_length = 0.0, 0
            next_obs, env_context = split_observation(*slot.env.reset())
            next_obs = self._sanitize(next_obs)
            slot.tracker.reset(env_context)
        slot.obs = next_obs
        return result

    def update(self) -> dict[str, torch.Tensor]:
        """One gradient step on a uniformly sampled batch; metrics stay on the device."""
        context = self.config.context
        history = context.history_length if context.source == "learned" else 0
        batch = self.buffer.sample(self.config.training.batch_size, history)
        if self.reward_normalizer.mode != "none":
            batch.reward = batch.reward * self.reward_normalizer.scale
        self.recovery.maybe_snapshot(self.agent, self.step, self.num_updates)
        if self._pre_update is not None:
            self._pre_update.capture()
        skipped_before, suspect_before = self.agent.skipped_steps, self.agent.suspect_steps
        metrics = self.agent.update(batch)
        self.num_updates += 1
        suspect = self.agent.suspect_steps != suspect_before
        if self._state_check_due(suspect):
            # The exact check confirms a failed fast one, which also flags huge finite values.
            reports = [] if bool(all_finite(self._state_tensors())) else self._check_for_nans()
            if reports:
                self._handle_nonfinite(batch, reports, suspect)
                return metrics
            self._last_clean_scan = self.num_updates
        if self.agent.skipped_steps > skipped_before:
            self._report_skipped_step(batch)
        self.metrics.add(metrics)
        return metrics

    def _state_check_due(self, suspect: bool) -> bool:
        """Whether to scan every state tensor for NaN/Inf after this update.

        Starting from a finite state, an update whose every applied gradient had a finite float32
        norm cannot make the state non-finite: Adam's moments are convex combinations of finite
        values (no squared entry can overflow), its step is bounded by the learning rate, and the
        targets are interpolations. So the scan runs after any update with a suspect gradient
        (non-finite, or overflowing float32), before every snapshot (only verified states become
        rollback points), on the first update of a fresh or resumed run, and every
        `safety.state_check_interval` updates for whatever the argument does not cover (memory
        corruption, code outside dynsac writing to the weights).
        A NaN written into a weight between scans reaches the next update's gradients, which makes
        that update suspect: it is still caught at the first update that uses it.
        """
        safety = self.config.safety
        return (
            suspect
            or self.num_updates % safety.state_check_interval == 0
            or self.num_updates % safety.snapshot_interval == 0
            or self._last_clean_scan < 0  # the first update of this process, fresh or resumed
        )

    def _forensics(self, batch) -> str:
        """One line naming where the non-finite values of this update started (empty if disabled)."""
        if self._pre_update is None or self._forensic_runs >= MAX_FORENSIC_RUNS:
            return ""
        self._forensic_runs += 1
        return investigate(self.agent, self._pre_update.state_dict(), batch).describe()

    def _report_skipped_step(self, batch) -> None:
        origin = self._forensics(batch)
        message = f"step {self.step}, update {self.num_updates}: non-finite gradient, optimizer step skipped"
        message += f"; {origin}" if origin else ""
        repaired = self._repair_stored_transitions(batch)
        if repaired:
            message += f"; repaired non-finite values in stored transitions {repaired} (set to 0)"
        if origin or repaired or self.agent.skipped_steps % 100 == 0:
            print(f"[dynsac] warning: {message}", flush=True)
        self._event("skipped_update", message)

    def _repair_stored_transitions(self, batch) -> list[int]:
        """Zero the non-finite entries of stored transitions in this batch, so that a poisoned
        transition does not spoil every later batch it lands in."""
        buffer, slots = self.buffer, batch.index.unique()
        repaired: set[int] = set()
        for name in ("obs", "action", "reward", "next_obs", "terminated"):
            values = getattr(buffer, name)
            rows = values[slots].reshape(len(slots), -1)
            bad = slots[~torch.isfinite(rows).all(dim=1)]
            if len(bad):
                values[bad] = torch.nan_to_num(values[bad], nan=0.0, posinf=0.0, neginf=0.0)
                repaired.update(bad.tolist())
        self.sanitized_values += len(repaired)
        return sorted(repaired)

    def _state_tensors(self) -> list[torch.Tensor]:
        """Every floating-point parameter, buffer and optimizer-state tensor: what must stay finite.
        Cached: the list changes only when an optimizer creates or reloads its state."""
        signature = tuple((id(opt.state), len(opt.state)) for opt in self.agent.optimizers.values())
        if self._state_tensor_cache is None or self._state_tensor_cache[0] != signature:
            named = named_state_tensors(self.agent, self.agent.optimizers)
            self._state_tensor_cache = (signature, [tensor for _, tensor in named if tensor.is_floating_point()])
        return self._state_tensor_cache[1]

    def _check_for_nans(self) -> list[NonFiniteReport]:
        """Every parameter, buffer and optimizer-state tensor (policy, critics, targets, log-alpha,
        dynamics map) holding NaN/Inf, named by module path, with counts and finite-part statistics."""
        return find_nonfinite(named_state_tensors(self.agent, self.agent.optimizers))

    def _handle_nonfinite(self, batch, reports: list[NonFiniteReport], suspect: bool = True) -> None:
        """Name what went non-finite, then roll back to the last good state (dropping this batch) or stop."""
        lines = [report.describe() for report in reports[:8]]
        more = f" (and {len(reports) - 8} more tensors)" if len(reports) > 8 else ""
        message = f"step {self.step}, update {self.num_updates}: non-finite values after the update in " + "; ".join(lines) + more
        if not suspect and self._last_clean_scan < 0:
            message += ("\n  found by the first state scan of this run, with finite gradients: the state it started "
                        "or resumed from may already have held them")
        elif not suspect:
            message += (f"\n  found by the scheduled state scan: no gradient since update {self._last_clean_scan} was "
                        f"non-finite, so these values appeared in updates {self._last_clean_scan + 1}-{self.num_updates} "
                        "without passing through a gradient (an optimizer moment overflowing, or a write from outside "
                        "the update)")
        origin = self._forensics(batch)
        message += f"\n  forensics: {origin}" if origin else ""
        print(f"[dynsac] warning: {message}", flush=True)
        self._event("nonfinite", message, tensors=[r.name for r in reports])
        if self.config.safety.on_nonfinite == "stop":
            self._stop_gracefully(message, reports)
            return
        self.recovery.rollback(self.agent, self.step)
        if self.recovery.should_stop(self.step):
            self._stop_gracefully(message + f"; {self.recovery.total_rollbacks} rollbacks within "
                                  f"{self.config.safety.rollback_window} steps", reports)
            return
        rates = ", ".join(f"{k} {v:.3g}" for k, v in self.agent.learning_rates().items())
        note = (f"rolled back to the state of step {self.recovery.snapshot_step} and dropped the batch; "
                f"learning rates lowered to {rates}")
        print(f"[dynsac] {note}", flush=True)
        self._event("rollback", note, learning_rates=self.agent.learning_rates())

    def _stop_gracefully(self, message: str, reports: list[NonFiniteReport]) -> None:
        """Restore the last good state, save it as an emergency checkpoint, write a diagnosis, stop."""
        if self.recovery.snapshot is not None:
            self.agent.load_full_state_dict(copy.deepcopy(self.recovery.snapshot))
        folder = Path(self.config.training.checkpoint_dir)
        emergency = save_checkpoint(self.state_dict(), folder / f"sac_step_{self.step}_emergency.pt")
        on_disk = list_checkpoints(folder)
        suggestions = self._suggestions()
        resume = f"dynsac resume {emergency}" + "".join(f" --set {s}" for s in suggestions["overrides"])
        diagnosis = {
            "step": self.step,
            "update": self.num_updates,
            "message": message,
            "nonfinite_tensors": [asdict(report) for report in reports],
            "last_good_state_step": self.recovery.snapshot_step,
            "emergency_checkpoint": str(emergency),
            "last_good_checkpoint": str(on_disk[-1][1]) if on_disk else None,
            "rollbacks": self.recovery.total_rollbacks,
            "learning_rates": self.agent.learning_rates(),
            "recent_metrics": list(self.early_warnings.history),  # the last logged intervals, oldest first
            "early_warnings": dict(self.early_warnings.counts),
            "suggestions": suggestions["reasons"],
            "resume_command": resume,
        }
        run_dir = Path(self.config.logging.dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "diagnosis.json").write_text(json.dumps(diagnosis, indent=2, default=str))
        (run_dir / "diagnosis.txt").write_text(format_diagnosis(diagnosis))
        self.stop_reason = (
            f"{message}\nstopped (safety.on_nonfinite = {self.config.safety.on_nonfinite!r}, "
            f"{self.recovery.total_rollbacks} rollbacks); last good state saved to {emergency}\n"
            + "".join(f"suggestion: {reason}\n" for reason in suggestions["reasons"])
            + f"resume with: {resume}\ndiagnosis: {run_dir / 'diagnosis.txt'}"
        )
        self._event("stopped", self.stop_reason, emergency_checkpoint=str(emergency))
        self._stop_requested = True

    def _suggestions(self) -> dict[str, list[str]]:
        """Concrete changes computed from the run: config overrides for the resume command, and why."""
        overrides, reasons = [], []
        lr, rollbacks = self.agent.learning_rates()["critic"], self.recovery.total_rollbacks
        if not rollbacks:  # stopped at the first event: step more gently than the update that diverged
            lr *= self.config.safety.rollback_lr_factor
        overrides.append(f"training.learning_rate={lr:.3g}")
        reasons.append(f"training.learning_rate={lr:.3g}: " + (
            f"the rate {rollbacks} rollback(s) lowered it to" if rollbacks
            else f"the current rate times safety.rollback_lr_factor ({self.config.safety.rollback_lr_factor:g})"))
        q_max = max((h.get("train/q_max_abs", 0.0) for h in self.early_warnings.history), default=0.0)
        if self.config.safety.reward_normalization == "none":
            overrides.append("safety.reward_normalization=fixed")
            reasons.append("safety.reward_normalization=fixed: scale rewards by 1/std of the warm-up rewards "
                           "(the default), so that any reward magnitude trains alike")
            if q_max > 100:
                scale = self.config.training.reward_scale / q_max
                reasons.append(f"or, keeping normalisation off, training.reward_scale={scale:.3g}: |Q| reached "
                               f"{q_max:.3g}, and this scale would bring it near 1")
        return {"overrides": overrides, "reasons": reasons}

    def _event(self, kind: str, message: str, **details: Any) -> None:
        if self.logger is not None:
            self.logger.event(self.step, kind, message, **details)

    def _sanitize_reward(self, reward: float) -> float:
        if not self.config.safety.sanitize_inputs:
            return reward
        clean, replaced = sanitize_reward(reward)
        if replaced:
            self.sanitized_values += 1
            message = f"step {self.step}: reward {reward} is not finite; replaced by 0"
            print(f"[dynsac] warning: {message}", flush=True)
            self._event("sanitized_reward", message)
        return clean

    def _sanitize(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float32)
        if not self.config.safety.sanitize_inputs:
            return obs
        obs, replaced = sanitize_observation(obs)
        if replaced:
            self.sanitized_values += replaced
            message = f"step {self.step}: observation had {replaced} non-finite value(s); replaced by 0"
            print(f"[dynsac] warning: {message}", flush=True)
            if self.logger is not None:
                self.logger.event(self.step, "sanitized_observation", message, count=replaced)
        return obs

    # ----------------------------------------------------------------- evaluation
    def evaluate(self, episodes: int | None = None, env_kwargs: dict[str, Any] | None = None) -> EvalResult:
        """Deterministic-policy returns on a separate env; episode i always uses the same seed,
        so evaluations are comparable along a run and consume none of the training randomness."""
        episodes = episodes or self.config.training.eval_episodes
        env_cfg = self.config.env
        if env_kwargs is not None:
            env = make_env(env_cfg.id, {**env_cfg.kwargs, **env_kwargs}, env_cfg.max_episode_steps)
        else:
            if self.eval_env is None:
                kwargs = {**env_cfg.kwargs, **env_cfg.eval_kwargs}
                self.eval_env = make_env(env_cfg.id, kwargs, env_cfg.max_episode_steps)
            env = self.eval_env
        returns, lengths, optimal = [], [], []
        knows_optimum = hasattr(env.unwrapped, "optimal_return")
        for episode in range(episodes):
            seed = self.config.training.seed + 1_000_000 + episode
            total, length = self._run_episode(env, seed)
            returns.append(total)
            lengths.append(length)
            if knows_optimum:
                optimal.append(float(env.unwrapped.optimal_return(seed=seed)))
        if env is not self.eval_env:
            env.close()
        return EvalResult(returns, lengths, optimal if knows_optimum else None)

    def _run_episode(self, env, seed: int) -> tuple[float, int]:
        tracker = self._new_tracker()
        obs, env_context = split_observation(*env.reset(seed=seed))
        obs = self._clean(obs)
        tracker.reset(env_context)
        total, length, done = 0.0, 0, False
        while not done:
            obs_tensor = torch.as_tensor(obs, device=self.device).unsqueeze(0)
            context = self._acting_context(tracker)
            with torch.no_grad():
                action = self._guard_action(self.policy.deterministic(obs_tensor, context).cpu().numpy(),
                                            obs_tensor, context)[0]
            raw_obs, reward, terminated, truncated, info = env.step(self._action_center + action * self._action_half_range)
            next_obs, env_context = split_observation(raw_obs, info)
            next_obs = self._clean(next_obs)
            tracker.record(obs, action, next_obs, env_context)
            obs = next_obs
            total += float(reward)
            length += 1
            done = terminated or truncated
        return total, length

    def _clean(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float32)
        return sanitize_observation(obs)[0] if self.config.safety.sanitize_inputs else obs

    # ----------------------------------------------------------------- the loop
    def train(self, total_steps: int | None = None) -> TrainResult:
        """Train until `total_steps` (default: `training.total_steps`), logging, evaluating and
        checkpointing on schedule. Ctrl-C or SIGTERM stops at the next step boundary with a checkpoint."""
        params, log_cfg = self.config.training, self.config.logging
        total = total_steps or params.total_steps
        if self.step >= total:
            print(f"[dynsac] already at step {self.step:,} >= total_steps {total:,}: nothing to do; "
                  f"raise training.total_steps to train further")
            return TrainResult(self.step, 0.0, None, None)
        self._check_checkpoint_dir()
        self._check_run_dir()
        resumed = self.step > 0
        self.logger = RunLogger(log_cfg.dir, log_cfg.tensorboard, resume_step=self.step if resumed else None)
        self.logger.write_config(self.config.model_dump(mode="json"))
        progress = Progress(total, log_cfg.progress, log_cfg.progress_interval_s)
        start, last_checkpoint, final_eval = time.monotonic(), None, None
        eval_history: list[tuple[int, float]] = []
        self._log_clock = (time.monotonic(), self.step, self.num_updates)
        self._announce(total, resumed)
        with self._stop_on_signals():
            while self.step < total and not self._stop_requested:
                self.train_step()
                if self._crossed(params.eval_interval):
                    final_eval = self._log_evaluation(progress)
                    eval_history.append((self.step, final_eval.mean))
                if self._crossed(params.checkpoint_interval):
                    last_checkpoint = self.save_checkpoint()
                progress.update(self.step)
        interrupted = self._stop_requested
        if not interrupted and (not eval_history or eval_history[-1][0] != self.step):
            final_eval = self._log_evaluation(progress)
            eval_history.append((self.step, final_eval.mean))
        saved_this_step = last_checkpoint is not None and last_checkpoint.name.endswith(f"_{self.step}.pt")
        if params.checkpoint_interval and not saved_this_step and self.stop_reason is None:
            last_checkpoint = self.save_checkpoint()
        progress.close(self.step)
        if self.early_warnings.counts:
            print(f"[dynsac] {self.early_warnings.summary()}", flush=True)
            self._event("warning_summary", self.early_warnings.summary(), counts=dict(self.early_warnings.counts))
        self.logger.write_summary({
            "steps": self.step, "total_steps": total, "updates": self.num_updates,
            "wall_s": time.monotonic() - start, "interrupted": interrupted, "stop_reason": self.stop_reason,
            "final_eval_return": None if final_eval is None else final_eval.mean,
            "best_eval_return": max((r for _, r in eval_history), default=None),
            "optimal_return": None if final_eval is None else final_eval.optimal_mean,
            "optimality_ratio": None if final_eval is None else final_eval.optimality_ratio,
            "warnings": dict(self.early_warnings.counts), "rollbacks": self.recovery.total_rollbacks,
            "last_checkpoint": None if last_checkpoint is None else str(last_checkpoint),
        })
        self.logger.close()
        if self.stop_reason is not None:
            print(f"[dynsac] {self.stop_reason}", flush=True)
        elif interrupted and last_checkpoint is not None:
            print(f"[dynsac] interrupted at step {self.step}; resume with:\n  {resume_command(last_checkpoint)}")
        return TrainResult(self.step, time.monotonic() - start, final_eval, last_checkpoint, interrupted,
                           eval_history, self.stop_reason)

    def train_step(self) -> None:
        """One env step, its updates and, on schedule, the training log line: what `train` repeats
        between its evaluations and checkpoints (needs `self.logger`, which `train` opens)."""
        params = self.config.training
        self.collect_step()
        if self.step >= params.learning_starts:
            for _ in range(params.updates_per_step * len(self.slots)):  # the same updates per env step
                if self.stop_reason is None:
                    self.update()
        if self._crossed(self.config.logging.log_interval):
            self._log_training()

    def _crossed(self, interval: int) -> bool:
        """Whether the last collect_step reached a multiple of `interval` steps (0: never). With one
        env that is `step % interval == 0`; with N envs the step count moves by N at a time."""
        return bool(interval) and self.step // interval > self._step_before // interval

    def _announce(self, total: int, resumed: bool) -> None:
        if self.config.logging.progress == "off":
            return
        what = f"resuming at step {self.step:,}" if resumed else "starting"
        print(
            f"[dynsac] {what}: {self.config.env.id}, {total:,} steps, device {self.device}, "
            f"run folder {self.config.logging.dir}",
            flush=True,
        )

    @contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """Turn SIGINT/SIGTERM into a request to stop at the next step boundary (never mid-update)."""

        def request_stop(signum: int, _frame: Any) -> None:
            if self._stop_requested:  # a second Ctrl-C stops at once
                raise KeyboardInterrupt
            self._stop_requested = True
            print(f"\n[dynsac] {signal.Signals(signum).name} received: saving a checkpoint and stopping", flush=True)

        previous = {}
        try:
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, request_stop)
        except ValueError:  # not the main thread: leave signal handling alone
            previous = {}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _log_training(self) -> None:
        now, step, updates = time.monotonic(), self.step, self.num_updates
        last_time, last_step, last_updates = self._log_clock
        self._log_clock = (now, step, updates)
        # Names that carry their own group ("context/mean", "dynamics_map/forward_loss") keep it.
        scalars = {name if "/" in name else f"train/{name}": value for name, value in self.metrics.pop_means().items()}
        elapsed = max(now - last_time, 1e-9)
        scalars["perf/steps_per_sec"] = (step - last_step) / elapsed
        scalars["perf/updates_per_sec"] = (updates - last_updates) / elapsed
        if self._finished_returns:
            scalars["train/episode_return"] = float(np.mean(self._finished_returns))
            scalars["train/episode_length"] = float(np.mean(self._finished_lengths))
            self._finished_returns, self._finished_lengths = [], []
        scalars["safety/sanitized_values"] = float(self.sanitized_values)
        scalars["safety/skipped_updates"] = float(self.agent.skipped_steps)
        scalars["safety/rollbacks"] = float(self.rollbacks)
        scalars["safety/nonfinite_actions"] = float(self.nonfinite_actions)
        scalars["safety/reward_normalization_scale"] = self.reward_normalizer.scale if self.num_updates else 1.0
        learning_fallbacks = int(self.agent.context_fallbacks)
        scalars["safety/context_fallbacks"] = float(learning_fallbacks + self.acting_context_fallbacks)
        if learning_fallbacks > self._reported_context_fallbacks:
            message = (f"{learning_fallbacks - self._reported_context_fallbacks} batch context rows since step "
                       f"{last_step} were non-finite or beyond "
                       f"safety.context_bound and fell back to zeros (context/abs_max {scalars.get('context/abs_max', float('nan')):.3g})")
            print(f"[dynsac] warning: {message}", flush=True)
            self._event("context_fallback", message)
            self._reported_context_fallbacks = learning_fallbacks
        self.logger.log(step, scalars)
        if updates - last_updates < MIN_UPDATES_FOR_WARNINGS:  # a mean of a few updates is noise, not a trend
            return
        for warning in self.early_warnings.check(step, scalars):
            print(f"[dynsac] early warning at step {step:,}: {warning.message}", flush=True)
            self._event(f"warning/{warning.kind}", warning.message)

    def _log_evaluation(self, progress: Progress) -> EvalResult:
        result = self.evaluate()
        progress.last_eval, progress.last_eval_ratio = result.mean, result.optimality_ratio
        scalars = {"eval/return_mean": result.mean, "eval/return_std": result.std,
                   "eval/episode_length": float(np.mean(result.lengths))}
        if result.optimal_returns is not None:
            scalars["eval/optimal_return_mean"] = result.optimal_mean
            scalars["eval/optimality_ratio"] = result.optimality_ratio
        self.logger.log(self.step, scalars)
        return result

    # ----------------------------------------------------------------- checkpoints
    def _check_checkpoint_dir(self) -> None:
        """Refuse to overwrite checkpoints that another run (or a later part of this one) wrote."""
        if not self.config.training.checkpoint_interval:
            return
        folder = self.config.training.checkpoint_dir
        later = [(step, path) for step, path in list_checkpoints(folder) if step > self.step or self.step == 0]
        if not later:
            return
        newest = later[-1][1]
        what = "a fresh run" if self.step == 0 else f"resuming from step {self.step}"
        raise CheckpointError(
            f"training.checkpoint_dir = {folder!r} already holds {newest.name} (and {len(later) - 1} more) "
            f"from another run; {what} would overwrite them. Continue that run with:\n  {resume_command(newest)}\n"
            f"or start afresh elsewhere: --set training.checkpoint_dir=NEW_DIR --set logging.dir=NEW_RUN_DIR"
        )

    def _check_run_dir(self) -> None:
        """A fresh run never mixes its metrics into another run's folder."""
        metrics = Path(self.config.logging.dir) / METRICS_FILE
        if self.step == 0 and metrics.exists() and metrics.stat().st_size > 0:
            raise CheckpointError(
                f"logging.dir = {self.config.logging.dir!r} already holds another run's {METRICS_FILE}; "
                f"start afresh elsewhere with --set logging.dir=NEW_RUN_DIR (or resume that run)"
            )

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        path = path or checkpoint_path(self.config.training.checkpoint_dir, self.step)
        return save_checkpoint(self.state_dict(), path)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run bit for bit."""
        return {
            "dynsac_version": __version__,
            "step": self.step,
            "num_updates": self.num_updates,
            "episode": self.episode,
            "config": self.config.model_dump(mode="json"),
            "spaces": self._space_signature(),
            "agent": self.agent.full_state_dict(),
            "buffer": self.buffer.state_dict() if self.config.training.save_replay_buffer else None,
            "rng": {
                "python": random.getstate(),
                "numpy": _numpy_global_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "warmup": self.warmup_rng.bit_generator.state,
            },
            "envs": [
                {
                    "state": capture_env_state(slot.env),
                    "obs": slot.obs.tolist(),
                    "episode_id": slot.episode_id,
                    "episode_return": slot.episode_return,
                    "episode_length": slot.episode_length,
                    "context": slot.tracker.state_dict(),
                }
                for slot in self.slots
            ],
            "counters": {"sanitized_values": self.sanitized_values},
            "reward_normalizer": self.reward_normalizer.state_dict(),
            "safety": {
                "recovery": self.recovery.state_dict(),
                "early_warnings": self.early_warnings.state_dict(),
                "acting_context_fallbacks": self.acting_context_fallbacks,
                "nonfinite_actions": self.nonfinite_actions,
            },
        }

    def _space_signature(self) -> dict[str, Any]:
        return {
            "env_id": self.config.env.id,
            "obs_dim": self.obs_dim,
            "action_dim": self.action_dim,
            "action_low": self.env.action_space.low.tolist(),
            "action_high": self.env.action_space.high.tolist(),
        }

    def load_state_dict(self, state: dict[str, Any], source: str | Path = "<checkpoint>") -> None:
        saved, here = state["spaces"], self._space_signature()
        for key in ("obs_dim", "action_dim"):
            if saved[key] != here[key]:
                raise CheckpointError(
                    f"{source}: was trained on {saved['env_id']!r} with {key}={saved[key]}, but "
                    f"env.id = {here['env_id']!r} has {key}={here[key]}; use the checkpoint's env"
                )
        try:
            self.agent.load_full_state_dict(state["agent"])
        except (RuntimeError, KeyError, ValueError) as err:
            raise CheckpointError(
                f"{source}: its networks do not match this config (hidden sizes changed?): {str(err).splitlines()[0]}"
            ) from None
        params = self.config.training
        self.agent.set_learning_rates(params.actor_lr, params.critic_lr, params.alpha_lr, self.config.context.learning_rate)
        self.agent.tau, self.agent.gamma, self.agent.max_grad_norm = params.tau, params.gamma, params.max_grad_norm
        self.agent.huber_delta = params.huber_delta if params.critic_loss == "huber" else None
        self.agent.policy_delay, self.agent.bf16 = params.policy_delay, params.precision == "bf16"
        self.agent.compile_update = params.compile
        if state["buffer"] is not None:
            try:
                self.buffer.load_state_dict(state["buffer"])
            except ValueError as err:
                raise CheckpointError(f"{source}: {err}") from None
        self.step, self.num_updates, self.episode = state["step"], state["num_updates"], state["episode"]
        self.sanitized_values = state["counters"]["sanitized_values"]
        self.reward_normalizer.load_state_dict(state["reward_normalizer"])
        if state["safety"] is not None:
            self._load_safety_state(state["safety"])
        self._restore_rng(state["rng"])
        if len(state["envs"]) != len(self.slots):
            raise CheckpointError(
                f"{source}: was trained with training.num_envs={len(state['envs'])}, but the config has "
                f"num_envs={len(self.slots)}; resume with --set training.num_envs={len(state['envs'])} "
                f"(the replay buffer interleaves the envs' transitions)"
            )
        for slot, env_state in zip(self.slots, state["envs"]):
            self._restore_env(slot, env_state, source)

    def _load_safety_state(self, safety: dict[str, Any]) -> None:
        self.recovery.load_state_dict(safety["recovery"])
        if self.recovery.lr_scale != 1.0:  # the rates rollbacks lowered stay lowered
            self.agent.scale_learning_rates(self.recovery.lr_scale)
        self.early_warnings.load_state_dict(safety["early_warnings"])
        self.acting_context_fallbacks = safety["acting_context_fallbacks"]
        self.nonfinite_actions = safety["nonfinite_actions"]

    def _restore_rng(self, rng: dict[str, Any]) -> None:
        random.setstate(rng["python"])
        np.random.set_state(_numpy_state_from_plain(rng["numpy"]))
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.warmup_rng.bit_generator.state = rng["warmup"]

    def _restore_env(self, slot: EnvSlot, env_state: dict[str, Any], source: str | Path) -> None:
        slot.episode_id = env_state["episode_id"]
        try:
            restore_env_state(slot.env, env_state["state"])
        except Exception as err:  # an env we cannot restore mid-episode: start a new episode instead
            print(f"[dynsac] warning: {source}: env state not restorable ({err}); starting a new episode")
            obs, env_context = split_observation(*slot.env.reset())
            slot.obs = self._sanitize(obs)
            slot.tracker.reset(env_context)
            slot.episode_id, self.episode = self.episode, self.episode + 1
            return
        slot.obs = np.asarray(env_state["obs"], dtype=np.float32)
        slot.tracker.load_state_dict(env_state["context"])
        slot.episode_return = env_state["episode_return"]
        slot.episode_length = env_state["episode_length"]

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, config: Config | None = None, overrides: list[str] | tuple[str, ...] = ()
    ) -> SACTrainer:
        """Rebuild a trainer from a checkpoint. Without `config`, the checkpoint's own config is used
        (with `overrides` applied); with one, its tunables (learning rates, tau, total_steps...) win."""
        state = load_checkpoint(path)
        if config is None:
            raw = state["config"]
            for override in overrides:
                apply_override(raw, override)
            config = validate_config(raw, source=f"{path} (saved config)")
        trainer = cls(config)
        trainer.load_state_dict(state, path)
        return trainer


def format_diagnosis(diagnosis: dict[str, Any]) -> str:
    """The human-readable twin of diagnosis.json."""
    lines = [
        f"dynsac stopped at step {diagnosis['step']:,} (update {diagnosis['update']:,}) after "
        f"{diagnosis['rollbacks']} rollback(s).",
        "",
        "What went non-finite first:",
        f"  {diagnosis['message']}",
        "",
        f"Last good state (step {diagnosis['last_good_state_step']:,}): {diagnosis['emergency_checkpoint']}",
        f"Last good checkpoint on disk: {diagnosis['last_good_checkpoint'] or 'none'}",
        f"Learning rates now: " + ", ".join(f"{k} {v:.3g}" for k, v in diagnosis["learning_rates"].items()),
    ]
    if diagnosis["early_warnings"]:
        lines.append("Early warnings before it: " + ", ".join(f"{k} x{n}" for k, n in diagnosis["early_warnings"].items()))
    history = diagnosis["recent_metrics"]
    if history:
        lines += ["", "Metric trends over the last logged intervals (oldest -> newest):"]
        for name in ("train/q_max_abs", "train/q_std", "train/q_grad_norm", "train/policy_grad_norm", "train/alpha",
                     "train/entropy", "train/action_saturated", "context/abs_max"):
            values = [h.get(name) for h in history]
            if any(v is not None for v in values):
                lines.append(f"  {name:<24} " + " -> ".join("-" if v is None else f"{v:.3g}" for v in values))
    lines += ["", "Suggestions:", *[f"  - {reason}" for reason in diagnosis["suggestions"]], "",
              "Resume with:", f"  {diagnosis['resume_command']}", ""]
    return "\n".join(lines)


def resume_command(checkpoint: Path) -> str:
    return f"dynsac resume {checkpoint}"


def _numpy_global_state() -> dict[str, Any]:
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": keys.tolist(), "pos": position, "has_gauss": has_gauss, "cached": cached}


def _numpy_state_from_plain(state: dict[str, Any]) -> tuple:
    keys = np.asarray(state["keys"], dtype=np.uint32)
    return state["name"], keys, state["pos"], state["has_gauss"], state["cached"]
