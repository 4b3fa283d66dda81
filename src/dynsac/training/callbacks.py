"""Callbacks: how a run is extended without subclassing the trainer.

`SACTrainer(config, callbacks=[...])` calls each callback's hooks in order. A hook may call
`trainer.request_stop(reason)`: the run then stops at the next step boundary, saves its
checkpoint, exits 0 and records the reason in `summary.json` (`early_stop`).

A callback with state sets `state_key`; its `state_dict()` is saved in every checkpoint under that
key and given back to `load_state_dict` on resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from dynsac.config import Config
from dynsac.safety.warnings import EarlyWarningMonitor
from dynsac.training.checkpoint import save_checkpoint

if TYPE_CHECKING:
    from dynsac.training.rollout import EvalResult
    from dynsac.training.trainer import SACTrainer, TrainResult

MIN_UPDATES_FOR_WARNINGS = 50  # logged intervals with fewer updates are not read for early warnings
BEST_CHECKPOINT = "sac_best.pt"


class Callback:
    """Base class: every hook does nothing. Override the ones you need."""

    state_key: str | None = None

    def on_train_start(self, trainer: SACTrainer) -> None:
        """The run folder is open; `trainer.step` is 0, or the step a resume starts from."""

    def on_log(self, trainer: SACTrainer, step: int, scalars: dict[str, float]) -> None:
        """The training scalars of one log interval (`train/...`, `safety/...`, `perf/...`), as logged."""

    def on_eval(self, trainer: SACTrainer, step: int, result: EvalResult) -> None:
        """An evaluation finished (deterministic policy, fixed seeds)."""

    def on_event(self, trainer: SACTrainer, step: int, kind: str, message: str, details: dict[str, Any]) -> None:
        """A discrete event: a warning, a skipped update, a rollback, a safety stop..."""

    def on_checkpoint(self, trainer: SACTrainer, step: int, path: Path) -> None:
        """A scheduled or final checkpoint was written to `path`."""

    def on_train_end(self, trainer: SACTrainer, result: TrainResult) -> None:
        """The run ended (finished, interrupted, stopped); `summary.json` is written."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class StopAtTarget(Callback):
    """Stop the run once an evaluation's `metric` reaches `target`.

    `metric`: "eval/return_mean" or "eval/optimality_ratio" (envs that know their optimum).
    """

    METRICS = ("eval/return_mean", "eval/optimality_ratio")

    def __init__(self, target: float, metric: str = "eval/return_mean") -> None:
        if metric not in self.METRICS:
            raise ValueError(f"StopAtTarget metric {metric!r}: expected one of {', '.join(self.METRICS)}")
        self.target, self.metric = float(target), metric

    def on_eval(self, trainer: SACTrainer, step: int, result: EvalResult) -> None:
        value = result.mean if self.metric == "eval/return_mean" else result.optimality_ratio
        if value is None:
            raise ValueError(f"StopAtTarget: {self.metric} is not available: env {trainer.config.env.id!r} "
                             "has no known optimum; use eval/return_mean")
        if value >= self.target:
            trainer.request_stop(f"{self.metric} = {value:.4g} reached the target {self.target:g} at step {step:,}")


class KeepBestCheckpoint(Callback):
    """Keep the checkpoint of the best evaluation so far as `sac_best.pt` in the checkpoint folder
    (as SB3's EvalCallback keeps its best model). Eval returns swing: the last checkpoint is not
    always the best one."""

    state_key = "keep_best"

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.best: float | None = None
        self.best_step: int | None = None

    def on_eval(self, trainer: SACTrainer, step: int, result: EvalResult) -> None:
        if self.best is not None and result.mean <= self.best:
            return
        self.best, self.best_step = result.mean, step
        path = self.path or Path(trainer.config.training.checkpoint_dir) / BEST_CHECKPOINT
        save_checkpoint(trainer.state_dict(), path)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step = state["best"], state["best_step"]


def callbacks_from_config(config: Config) -> list[Callback]:
    """The built-in callbacks `config.training` switches on (`torch_threads: auto`, `keep_best_checkpoint`,
    `stop_at`)."""
    params, chosen = config.training, []
    if params.torch_threads == "auto":
        from dynsac.training.threads import ThreadGovernor

        chosen.append(ThreadGovernor())
    if params.keep_best_checkpoint:
        chosen.append(KeepBestCheckpoint())
    if params.stop_at is not None:
        chosen.append(StopAtTarget(params.stop_at, params.stop_metric))
    return chosen


class EarlyWarnings(Callback):
    """Reads each logged interval for the signs that precede a divergence (`EarlyWarningMonitor`)
    and reports them as `warning/...` events. Always installed; its history feeds the diagnosis."""

    state_key = "early_warnings"

    def __init__(self, target_entropy: float | None) -> None:
        self.monitor = EarlyWarningMonitor(target_entropy=target_entropy)
        self._updates_at_last_log: int | None = None

    def on_log(self, trainer: SACTrainer, step: int, scalars: dict[str, float]) -> None:
        updates, last = trainer.num_updates, self._updates_at_last_log
        self._updates_at_last_log = updates
        if last is None or updates - last < MIN_UPDATES_FOR_WARNINGS:  # a mean of a few updates is noise
            return
        for warning in self.monitor.check(step, scalars):
            trainer.events.report(step, f"warning/{warning.kind}", warning.message,
                                  console=f"early warning at step {step:,}: ")

    def on_train_start(self, trainer: SACTrainer) -> None:
        self._updates_at_last_log = trainer.num_updates

    def on_train_end(self, trainer: SACTrainer, result: TrainResult) -> None:
        if self.monitor.counts:
            trainer.events.report(trainer.step, "warning_summary", self.monitor.summary(), console="",
                                  counts=dict(self.monitor.counts))

    def state_dict(self) -> dict[str, Any]:
        return self.monitor.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.monitor.load_state_dict(state)
