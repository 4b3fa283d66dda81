"""SACTrainer: the training loop. Collect, update, then log / evaluate / checkpoint on schedule.

The trainer composes the parts and owns none of their policy: acting and the envs are the
`Rollout`'s, the update's gradients the agent's backend's, what happens around each update the
`UpdateSupervisor`'s, extensions the callbacks'. A checkpoint is the composition of the parts'
states plus the counters and the random generators.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynsac.config import Config, apply_override, validate_config
from dynsac.context import ContextTracker
from dynsac.envs.factory import EnvFactory, observation_box
from dynsac.events import EventReporter
from dynsac.safety.diagnosis import build_diagnosis, resume_command, stop_reason, write_diagnosis
from dynsac.safety.reward_scale import RewardNormalizer
from dynsac.safety.supervisor import UpdateOutcome, UpdateSupervisor
from dynsac.sac import GaussianPolicy
from dynsac.sac.build import build_agent
from dynsac.sac.replay import ReplayBuffer
from dynsac.training import run_state
from dynsac.training.callbacks import Callback, EarlyWarnings, callbacks_from_config
from dynsac.training.checkpoint import CheckpointError, checkpoint_path, list_checkpoints, load_checkpoint, save_checkpoint
from dynsac.training.lineage import Lineage, prepare_checkpoint_dir
from dynsac.training.logger import MetricAccumulator, Progress, RunLogger
from dynsac.training.resources import check_resources
from dynsac.training.rollout import EnvSlot, EvalResult, Rollout, make_training_envs
from dynsac.training.run_state import resolve_device, seed_everything

__all__ = ["EvalResult", "SACTrainer", "TrainResult"]


@dataclass
class TrainResult:
    steps: int
    wall_time_s: float
    final_eval: EvalResult | None
    last_checkpoint: Path | None
    interrupted: bool = False
    eval_history: list[tuple[int, float]] = field(default_factory=list)
    stop_reason: str | None = None  # set when the safety policy stopped the run
    early_stop: str | None = None  # set when a callback stopped the run


@contextmanager
def stop_on_signals(trainer: SACTrainer) -> Iterator[None]:
    """Turn SIGINT/SIGTERM into a request to stop at the next step boundary (never mid-update)."""

    def request_stop(signum: int, _frame: Any) -> None:
        if trainer._stop_requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        trainer._stop_requested = True
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


class SACTrainer:
    """Soft Actor-Critic training on `training.num_envs` environments (one by default).

    `callbacks`: `dynsac.training.callbacks.Callback`s, called in order. `env_fn`: a factory for an
    env that is not registered (`env_fn(**env.kwargs)`); a checkpoint of such a run resumes with
    `from_checkpoint(path, env_fn=...)`. Constructing a trainer touches nothing on disk;
    `train()` opens the run folder and writes metrics and checkpoints.
    """

    def __init__(self, config: Config, callbacks: Sequence[Callback] = (), env_fn: EnvFactory | None = None) -> None:
        self.config, self.env_fn = config, env_fn
        params = config.training
        if isinstance(params.torch_threads, int):
            torch.set_num_threads(params.torch_threads)
        self.device = resolve_device(params.device)
        seed_everything(params.seed)
        self.events = EventReporter()
        self.warmup_rng = np.random.default_rng(params.seed)
        self.step, self.num_updates = 0, 0
        envs, first = make_training_envs(config, env_fn)
        box, actions = observation_box(envs[0]), envs[0].action_space
        self.obs_dim, self.action_dim = int(box.shape[0]), int(actions.shape[0])
        self.context_dim = run_state.context_dim(config, first[0][1])
        check_resources(config, self.obs_dim, self.action_dim, self.context_dim)
        self.agent = build_agent(config, self.obs_dim, self.action_dim, self.context_dim, actions.low,
                                 actions.high).to(self.device)
        stored_context_dim = self.context_dim if config.context.source == "env" else 0
        self.buffer = ReplayBuffer(params.buffer_size, self.obs_dim, self.action_dim, self.device,
                                   stored_context_dim, params.num_envs)
        self.reward_normalizer = RewardNormalizer(config.safety.reward_normalization,
                                                 statistic=config.safety.reward_statistic)
        self.rollout = Rollout(config, self.agent, self.device, self.events, self.warmup_rng, env_fn)
        self.rollout.start(envs, first)
        self.rollout.check_eval_env()
        self.supervisor = UpdateSupervisor(self.agent, self.buffer, config.safety, self.events)
        self.early_warnings = EarlyWarnings(self.agent.target_entropy if self.agent.auto_alpha else None)
        self.callbacks: list[Callback] = [self.early_warnings, *callbacks_from_config(config), *callbacks]
        self.events.listeners.append(self._event_to_callbacks)
        self.metrics = MetricAccumulator()
        self.logger: RunLogger | None = None
        self.stop_reason: str | None = None  # a safety stop's account
        self.early_stop: str | None = None  # a callback's reason to stop
        self._stop_requested = False
        self._step_before = 0  # self.step before the last collect_step (schedules fire when crossed)
        self._log_clock = (time.monotonic(), 0, 0)
        self._reported_context_fallbacks = 0
        self.lineage = Lineage()

    # ----------------------------------------------------------------- views of the parts
    @property
    def policy(self) -> GaussianPolicy:
        return self.agent.policy

    @property
    def slots(self) -> list[EnvSlot]:
        return self.rollout.slots

    @property
    def env(self):
        """The first training env (the only one unless `training.num_envs` > 1)."""
        return self.rollout.slots[0].env

    @property
    def tracker(self) -> ContextTracker:
        return self.rollout.slots[0].tracker

    @property
    def rollbacks(self) -> int:
        return self.supervisor.recovery.total_rollbacks

    @property
    def sanitized_values(self) -> int:
        """Non-finite inputs replaced: observation entries and rewards, and repaired stored transitions."""
        return self.rollout.counters.sanitized_values + self.supervisor.repaired_values

    # ----------------------------------------------------------------- one step of the algorithm
    def train_step(self) -> None:
        """One env step in every env, its updates and, on schedule, the training log line (written
        to the run folder when `train` has opened it)."""
        self.collect_step()
        if self.step >= self.config.training.learning_starts:
            for _ in range(self.config.training.updates_per_step * len(self.slots)):  # the same per env step
                if self.stop_reason is None:
                    self.update()
        if self._crossed(self.config.logging.log_interval):
            self._log_training()

    def collect_step(self) -> list[dict[str, Any]]:
        """Act once in every env (uniformly random during warm-up) and store the transitions."""
        self._step_before = self.rollout.step = self.step
        results = self.rollout.collect(self.step < self.config.training.learning_starts, self._store)
        self.step = self.rollout.step
        return results

    def _store(self, obs, action, reward, next_obs, terminated, truncated, episode_id, context, next_context) -> None:
        scaled = reward * self.config.training.reward_scale
        self.reward_normalizer.observe(scaled)
        self.buffer.add(obs, action, scaled, next_obs, terminated, truncated, episode_id, context, next_context)
        if self.agent.dynamics_map is not None or self.agent.obs_statistics is not None:
            transition = (obs, action, next_obs)
            if self.device.type != "cpu":
                transition = tuple(torch.as_tensor(x, device=self.device) for x in transition)
            self.agent.observe(*transition)

    def update(self) -> dict[str, torch.Tensor]:
        """One supervised gradient step on a uniformly sampled batch; metrics stay on the device."""
        context, training = self.config.context, self.config.training
        batch = self.buffer.sample(training.batch_size, context.history_length if context.source == "learned" else 0,
                                   n_step=training.n_step, gamma=training.gamma)
        if self.reward_normalizer.mode != "none":
            batch.reward = batch.reward * self.reward_normalizer.scale
        outcome = self.supervisor.update(batch, self.step, self.num_updates)
        self.num_updates += 1
        if outcome.status == "applied":
            self.metrics.add(outcome.metrics)
        elif outcome.status == "stop":
            self._stop_with_diagnosis(outcome)
        return outcome.metrics

    def evaluate(self, episodes: int | None = None, env_kwargs: dict[str, Any] | None = None) -> EvalResult:
        """Deterministic-policy returns on a separate env, with fixed seeds (`Rollout.evaluate`)."""
        return self.rollout.evaluate(episodes or self.config.training.eval_episodes, env_kwargs)

    def request_stop(self, reason: str) -> None:
        """Stop at the next step boundary with a checkpoint; `reason` goes to summary.json (exit 0)."""
        self.early_stop = reason
        self._stop_requested = True

    # ----------------------------------------------------------------- the loop
    def train(self, total_steps: int | None = None) -> TrainResult:
        """Train until `total_steps` (default: `training.total_steps`), logging, evaluating and
        checkpointing on schedule. Ctrl-C or SIGTERM stops at the next step boundary with a checkpoint."""
        params = self.config.training
        total = total_steps or params.total_steps
        if self.step >= total:
            self.events.say(f"already at step {self.step:,} >= total_steps {total:,}: nothing to do; "
                            f"raise training.total_steps to train further")
            return TrainResult(self.step, 0.0, None, None)
        progress = self._open_run(total)
        start, last_checkpoint, final_eval = time.monotonic(), None, None
        eval_history: list[tuple[int, float]] = []
        with stop_on_signals(self):
            while self.step < total and not self._stop_requested:
                self.train_step()
                if self._crossed(params.eval_interval):
                    final_eval = self._log_evaluation(progress, eval_history)
                if self._crossed(params.checkpoint_interval):
                    last_checkpoint = self.save_checkpoint()
                progress.update(self.step)
        interrupted = self._stop_requested and self.early_stop is None
        if not interrupted and (not eval_history or eval_history[-1][0] != self.step):
            final_eval = self._log_evaluation(progress, eval_history)
        saved_this_step = last_checkpoint is not None and last_checkpoint.name.endswith(f"_{self.step}.pt")
        if params.checkpoint_interval and not saved_this_step and self.stop_reason is None:
            last_checkpoint = self.save_checkpoint()
        progress.close(self.step)
        result = TrainResult(self.step, time.monotonic() - start, final_eval, last_checkpoint, interrupted,
                             eval_history, self.stop_reason, self.early_stop)
        self._finish_run(result, total)
        return result

    def _open_run(self, total: int) -> Progress:
        rewound = prepare_checkpoint_dir(self.config, self.step, self.lineage, self.events)
        run_state.check_run_dir(self.config, self.step)
        log_cfg, resumed = self.config.logging, self.step > 0
        if rewound is not None:
            self.lineage.record_rewind(rewound, Path(log_cfg.dir))
        self.logger = RunLogger(log_cfg.dir, log_cfg.tensorboard, resume_step=self.step if resumed else None)
        self.logger.write_config(self.config.model_dump(mode="json"))
        self.lineage.start_segment(self.step, self.events, rewound)
        self._log_clock = (time.monotonic(), self.step, self.num_updates)
        if log_cfg.progress != "off":
            what = f"resuming at step {self.step:,}" if resumed else "starting"
            self.events.say(f"{what}: {self.config.env.id}, {total:,} steps, device {self.device}, "
                            f"run folder {log_cfg.dir}; update: {self.agent.backend_description}")
        for callback in self.callbacks:
            callback.on_train_start(self)
        return Progress(total, log_cfg.progress, log_cfg.progress_interval_s)

    def _finish_run(self, result: TrainResult, total: int) -> None:
        self.logger.write_summary(run_state.summary(self, result, total))
        for callback in self.callbacks:
            callback.on_train_end(self, result)
        self.logger.close()
        self.logger = None
        if self.stop_reason is not None:
            self.events.say(self.stop_reason)
        elif self.early_stop is not None:
            self.events.say(f"stopped early: {self.early_stop}")
        elif result.interrupted and result.last_checkpoint is not None:
            self.events.say(f"interrupted at step {self.step}; resume with:\n  {resume_command(result.last_checkpoint)}")

    def _crossed(self, interval: int) -> bool:
        """Whether the last collect_step reached a multiple of `interval` steps (0: never). With one
        env that is `step % interval == 0`; with N envs the step count moves by N at a time."""
        return bool(interval) and self.step // interval > self._step_before // interval

    # ----------------------------------------------------------------- logging and events
    def _log_training(self) -> None:
        now, step, updates = time.monotonic(), self.step, self.num_updates
        last_time, last_step, last_updates = self._log_clock
        self._log_clock = (now, step, updates)
        scalars = run_state.training_scalars(self, self.metrics.pop_means(), (now - last_time, step - last_step,
                                                                              updates - last_updates))
        learning_fallbacks = int(self.agent.context_fallbacks)
        if learning_fallbacks > self._reported_context_fallbacks:
            message = (f"{learning_fallbacks - self._reported_context_fallbacks} batch context rows since step "
                       f"{last_step} were non-finite or beyond safety.context_bound and fell back to zeros "
                       f"(context/abs_max {scalars.get('context/abs_max', float('nan')):.3g})")
            self.events.report(step, "context_fallback", message)
            self._reported_context_fallbacks = learning_fallbacks
        if self.logger is not None:  # None when train_step() runs outside train()
            self.logger.log(step, scalars)
        for callback in self.callbacks:
            callback.on_log(self, step, scalars)

    def _log_evaluation(self, progress: Progress, history: list[tuple[int, float]]) -> EvalResult:
        result = self.evaluate()
        history.append((self.step, result.mean))
        progress.last_eval, progress.last_eval_ratio = result.mean, result.optimality_ratio
        scalars = {"eval/return_mean": result.mean, "eval/return_std": result.std,
                   "eval/episode_length": float(np.mean(result.lengths))}
        if result.optimal_returns is not None:
            scalars["eval/optimal_return_mean"] = result.optimal_mean
            scalars["eval/optimality_ratio"] = result.optimality_ratio
        self.logger.log(self.step, scalars)
        for callback in self.callbacks:
            callback.on_eval(self, self.step, result)
        return result

    def _event_to_callbacks(self, step: int, kind: str, message: str, details: dict[str, Any]) -> None:
        if self.logger is not None:
            self.logger.event(step, kind, message, **details)
        for callback in self.callbacks:
            callback.on_event(self, step, kind, message, details)

    def _stop_with_diagnosis(self, outcome: UpdateOutcome) -> None:
        """Restore the last good state, save it as an emergency checkpoint, write a diagnosis, stop."""
        self.supervisor.restore_last_good()
        folder = Path(self.config.training.checkpoint_dir)
        emergency = save_checkpoint(self.state_dict(), folder / f"sac_step_{self.step}_emergency.pt")
        on_disk = list_checkpoints(folder)
        monitor, recovery = self.early_warnings.monitor, self.supervisor.recovery
        diagnosis = build_diagnosis(
            self.config, step=self.step, update=self.num_updates, message=outcome.message, reports=outcome.reports,
            last_good_state_step=recovery.snapshot_step, emergency=emergency,
            last_good_checkpoint=on_disk[-1][1] if on_disk else None, rollbacks=recovery.total_rollbacks,
            learning_rates=self.agent.learning_rates(), history=list(monitor.history),
            warning_counts=dict(monitor.counts),
        )
        text = write_diagnosis(self.config.logging.dir, diagnosis)
        self.stop_reason = stop_reason(self.config, diagnosis, text)
        self.events.report(self.step, "stopped", self.stop_reason, console=None, emergency_checkpoint=str(emergency))
        self._stop_requested = True

    # ----------------------------------------------------------------- checkpoints
    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        path = save_checkpoint(self.state_dict(), path or checkpoint_path(self.config.training.checkpoint_dir,
                                                                          self.step))
        for callback in self.callbacks:
            callback.on_checkpoint(self, self.step, path)
        return path

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run bit for bit: the parts' states, counters, RNGs."""
        return run_state.compose(self)

    def load_state_dict(self, state: dict[str, Any], source: str | Path = "<checkpoint>") -> None:
        run_state.restore(self, state, str(source))

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, config: Config | None = None, overrides: list[str] | tuple[str, ...] = (),
        callbacks: Sequence[Callback] = (), env_fn: EnvFactory | None = None,
    ) -> SACTrainer:
        """Rebuild a trainer from a checkpoint. Without `config`, the checkpoint's own config is used
        (with `overrides` applied); with one, its tunables (learning rates, tau, total_steps...) win.
        A run trained on an `env_fn` env needs the same `env_fn` again."""
        state = load_checkpoint(path)
        trained_with = state.get("env_factory")
        if trained_with is not None and env_fn is None:
            raise CheckpointError(
                f"{path}: was trained on an env built by env_fn {trained_with}; resume it in Python with "
                f"SACTrainer.from_checkpoint({str(path)!r}, env_fn={trained_with.rsplit('.', 1)[-1]})"
            )
        if config is None:
            raw = state["config"]
            for override in overrides:
                apply_override(raw, override)
            config = validate_config(raw, source=f"{path} (saved config)")
        trainer = cls(config, callbacks, env_fn)
        trainer.load_state_dict(state, path)
        return trainer
