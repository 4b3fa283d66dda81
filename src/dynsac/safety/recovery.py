"""Rollback to the last good state when training goes non-finite."""

from __future__ import annotations

import copy
from collections import deque
from typing import Any, Protocol


class Recoverable(Protocol):
    def full_state_dict(self) -> dict[str, Any]: ...
    def load_full_state_dict(self, state: dict[str, Any]) -> None: ...
    def scale_learning_rates(self, factor: float) -> None: ...


class RecoveryManager:
    """Keeps an in-memory copy of the last state known to be finite (every `snapshot_interval`
    updates) and restores it on demand, lowering the learning rates each time.

    Too many rollbacks within `window_steps` env steps means recovery is not working: the caller
    should stop instead (`should_stop`).
    """

    def __init__(self, snapshot_interval: int, lr_factor: float, max_rollbacks: int, window_steps: int) -> None:
        self.snapshot_interval, self.lr_factor = snapshot_interval, lr_factor
        self.max_rollbacks, self.window_steps = max_rollbacks, window_steps
        self.snapshot: dict[str, Any] | None = None
        self.snapshot_step = -1
        self.total_rollbacks = 0
        self.lr_scale = 1.0  # product of the factors applied by rollbacks so far
        self._recent: deque[int] = deque()

    def maybe_snapshot(self, agent: Recoverable, step: int, num_updates: int) -> None:
        if self.snapshot is None or num_updates % self.snapshot_interval == 0:
            self.take_snapshot(agent, step)

    def take_snapshot(self, agent: Recoverable, step: int) -> None:
        self.snapshot = copy.deepcopy(agent.full_state_dict())
        self.snapshot_step = step

    def rollback(self, agent: Recoverable, step: int) -> None:
        """Restore the last good state and lower the learning rates by `lr_factor`."""
        if self.snapshot is None:
            raise RuntimeError("no good state to roll back to")
        agent.load_full_state_dict(copy.deepcopy(self.snapshot))
        agent.scale_learning_rates(self.lr_factor)
        self.lr_scale *= self.lr_factor
        self.snapshot = copy.deepcopy(agent.full_state_dict())  # keep the lowered rates
        self.total_rollbacks += 1
        self._recent.append(step)

    def should_stop(self, step: int) -> bool:
        while self._recent and self._recent[0] <= step - self.window_steps:
            self._recent.popleft()
        return len(self._recent) > self.max_rollbacks

    def state_dict(self) -> dict[str, Any]:
        """Counters for checkpoints (the in-memory snapshot itself is not saved: the checkpoint is one)."""
        return {"total_rollbacks": self.total_rollbacks, "recent": list(self._recent), "lr_scale": self.lr_scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total_rollbacks, self.lr_scale = state["total_rollbacks"], state["lr_scale"]
        self._recent = deque(state["recent"])
