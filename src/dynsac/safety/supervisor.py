"""The update supervisor: what wraps every `agent.update(batch)` to keep a run alive.

Before the update: the rollback snapshot (on its schedule) and forensics' copy of the state.
After it: the full state scan when due (`state_check_due`), then, if something went non-finite,
a rollback to the last good state or a stop; a skipped optimizer step is reported with its
forensics and the stored transitions that caused it are repaired. The loop gets an
`UpdateOutcome` and acts on it; it never sees these decisions' internals.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from dynsac.config.schema import SafetyConfig
from dynsac.events import EventReporter
from dynsac.safety.forensics import PreUpdateState, investigate
from dynsac.safety.nonfinite import NonFiniteReport, all_finite, find_nonfinite, named_state_tensors
from dynsac.safety.recovery import RecoveryManager
from dynsac.sac.agent import SACAgent
from dynsac.sac.backends import AUTOGRAD
from dynsac.sac.replay import Batch, ReplayBuffer

MAX_FORENSIC_RUNS = 5  # replays per run: the first events tell the story, later ones only cost time


@dataclass
class UpdateOutcome:
    """What one supervised update came to: `applied` (metrics to log), `rolled_back` (the batch
    was dropped) or `stop` (the safety policy ends the run; `message` and `reports` say why)."""

    status: str
    metrics: dict[str, Tensor] = field(default_factory=dict)
    message: str = ""
    reports: list[NonFiniteReport] = field(default_factory=list)


def state_check_due(safety: SafetyConfig, num_updates: int, suspect: bool, last_clean_scan: int) -> bool:
    """Whether to scan every state tensor for NaN/Inf after update number `num_updates`.

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
    return (
        suspect
        or num_updates % safety.state_check_interval == 0
        or num_updates % safety.snapshot_interval == 0
        or last_clean_scan < 0  # the first update of this process, fresh or resumed
    )


def repair_stored_transitions(buffer: ReplayBuffer, batch: Batch) -> list[int]:
    """Zero the non-finite entries of the stored transitions in `batch`, so that a poisoned
    transition does not spoil every later batch it lands in. Returns the repaired buffer slots."""
    slots = (batch.index if batch.return_slots is None else batch.return_slots).unique()
    repaired: set[int] = set()
    for name in ("obs", "action", "reward", "next_obs", "terminated"):
        values = getattr(buffer, name)
        rows = values[slots].reshape(len(slots), -1)
        bad = slots[~torch.isfinite(rows).all(dim=1)]
        if len(bad):
            values[bad] = torch.nan_to_num(values[bad], nan=0.0, posinf=0.0, neginf=0.0)
            repaired.update(bad.tolist())
    return sorted(repaired)


class UpdateSupervisor:
    """Runs `agent.update` under the safety policy of `safety` (`SafetyConfig`)."""

    def __init__(self, agent: SACAgent, buffer: ReplayBuffer, safety: SafetyConfig, events: EventReporter) -> None:
        self.agent, self.buffer, self.safety, self.events = agent, buffer, safety, events
        self.recovery = RecoveryManager(
            safety.snapshot_interval, safety.rollback_lr_factor, safety.max_rollbacks, safety.rollback_window
        )
        self.pre_update = PreUpdateState(agent) if safety.forensics else None
        self.forensic_runs = 0
        self.last_clean_scan = -1  # update after which the full state scan last found nothing (-1: none yet)
        self.repaired_values = 0  # non-finite stored-transition rows set to 0
        self._state_tensor_cache: tuple[tuple, list[Tensor]] | None = None

    def update(self, batch: Batch, step: int, updates_done: int) -> UpdateOutcome:
        """Update number `updates_done + 1`, at env step `step`."""
        agent = self.agent
        self.recovery.maybe_snapshot(agent, step, updates_done)
        if self.pre_update is not None:
            self.pre_update.capture()
        skipped_before, suspect_before = agent.skipped_steps, agent.suspect_steps
        metrics = agent.update(batch)
        num_updates = updates_done + 1
        suspect = agent.suspect_steps != suspect_before
        if state_check_due(self.safety, num_updates, suspect, self.last_clean_scan):
            # The exact check confirms a failed fast one, which also flags huge finite values.
            reports = [] if bool(all_finite(self.state_tensors())) else self.nonfinite_state()
            if reports:
                return self._handle_nonfinite(batch, reports, suspect, step, num_updates)
            self.last_clean_scan = num_updates
        if agent.skipped_steps > skipped_before:
            self._report_skipped_step(batch, step, num_updates)
        return UpdateOutcome("applied", metrics)

    def state_tensors(self) -> list[Tensor]:
        """Every floating-point parameter, buffer and optimizer-state tensor: what must stay finite.
        Cached: the list changes only when an optimizer creates or reloads its state."""
        optimizers = self.agent.optimizers
        signature = tuple((id(opt.state), len(opt.state)) for opt in optimizers.values())
        if self._state_tensor_cache is None or self._state_tensor_cache[0] != signature:
            named = named_state_tensors(self.agent, optimizers)
            self._state_tensor_cache = (signature, [tensor for _, tensor in named if tensor.is_floating_point()])
        return self._state_tensor_cache[1]

    def nonfinite_state(self) -> list[NonFiniteReport]:
        """Every parameter, buffer and optimizer-state tensor (policy, critics, targets, log-alpha,
        dynamics map) holding NaN/Inf, named by module path, with counts and finite-part statistics."""
        return find_nonfinite(named_state_tensors(self.agent, self.agent.optimizers))

    def restore_last_good(self) -> None:
        """Put the last verified snapshot back into the agent (before an emergency checkpoint)."""
        if self.recovery.snapshot is not None:
            self.agent.load_full_state_dict(copy.deepcopy(self.recovery.snapshot))

    def forensics(self, batch: Batch) -> str:
        """One line naming where the non-finite values of this update started (empty if disabled)."""
        if self.pre_update is None or self.forensic_runs >= MAX_FORENSIC_RUNS:
            return ""
        self.forensic_runs += 1
        return investigate(self.agent, self.pre_update.state_dict(), batch, AUTOGRAD).describe()

    def _report_skipped_step(self, batch: Batch, step: int, num_updates: int) -> None:
        origin = self.forensics(batch)
        message = f"step {step}, update {num_updates}: non-finite gradient, optimizer step skipped"
        message += f"; {origin}" if origin else ""
        repaired = repair_stored_transitions(self.buffer, batch)
        self.repaired_values += len(repaired)
        if repaired:
            message += f"; repaired non-finite values in stored transitions {repaired} (set to 0)"
        loud = origin or repaired or self.agent.skipped_steps % 100 == 0
        self.events.report(step, "skipped_update", message, console="warning: " if loud else None)

    def _handle_nonfinite(self, batch: Batch, reports: list[NonFiniteReport], suspect: bool, step: int,
                          num_updates: int) -> UpdateOutcome:
        """Name what went non-finite, then roll back to the last good state (dropping this batch) or stop."""
        message = self._describe_nonfinite(reports, suspect, step, num_updates)
        origin = self.forensics(batch)
        message += f"\n  forensics: {origin}" if origin else ""
        self.events.report(step, "nonfinite", message, tensors=[r.name for r in reports])
        if self.safety.on_nonfinite == "stop":
            return UpdateOutcome("stop", message=message, reports=reports)
        self.recovery.rollback(self.agent, step)
        if self.recovery.should_stop(step):
            message += f"; {self.recovery.total_rollbacks} rollbacks within {self.safety.rollback_window} steps"
            return UpdateOutcome("stop", message=message, reports=reports)
        rates = self.agent.learning_rates()
        note = (f"rolled back to the state of step {self.recovery.snapshot_step} and dropped the batch; "
                f"learning rates lowered to " + ", ".join(f"{k} {v:.3g}" for k, v in rates.items()))
        self.events.report(step, "rollback", note, console="", learning_rates=rates)
        return UpdateOutcome("rolled_back", message=note, reports=reports)

    def _describe_nonfinite(self, reports: list[NonFiniteReport], suspect: bool, step: int, num_updates: int) -> str:
        lines = [report.describe() for report in reports[:8]]
        more = f" (and {len(reports) - 8} more tensors)" if len(reports) > 8 else ""
        message = f"step {step}, update {num_updates}: non-finite values after the update in " + "; ".join(lines) + more
        if not suspect and self.last_clean_scan < 0:
            message += ("\n  found by the first state scan of this run, with finite gradients: the state it started "
                        "or resumed from may already have held them")
        elif not suspect:
            message += (f"\n  found by the scheduled state scan: no gradient since update {self.last_clean_scan} was "
                        f"non-finite, so these values appeared in updates {self.last_clean_scan + 1}-{num_updates} "
                        "without passing through a gradient (an optimizer moment overflowing, or a write from outside "
                        "the update)")
        return message

    def state_dict(self) -> dict[str, Any]:
        return {"recovery": self.recovery.state_dict(), "repaired_values": self.repaired_values}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["recovery"] is not None:
            self.recovery.load_state_dict(state["recovery"])
        self.repaired_values = state["repaired_values"]
