"""Reward normalisation applied at sample time, so that any reward magnitude trains alike.

- `none`: rewards are used as stored (after `training.reward_scale`).
- `fixed`: one scale, 1 / std of the rewards collected during warm-up, frozen at the first update:
  every target of the run sees the same scale, so off-policy targets stay consistent.
- `running`: 1 / running std of all rewards collected so far, updated as they arrive; adapts when
  the reward distribution shifts, at the price of slowly moving targets.
The statistic (`safety.reward_statistic`) is the rewards' standard deviation (`std`) or their root
mean square about zero (`rms`, sqrt(mean^2 + variance)). `rms` measures the rewards' size, offset
included: a nearly constant reward (a pendulum hanging still, an alive bonus) has a tiny std, and
scaling by 1/std would blow it up; its RMS is its magnitude.
Statistics are float64 and travel in checkpoints.
"""

from __future__ import annotations

import math
from typing import Any


class RewardNormalizer:
    def __init__(self, mode: str, epsilon: float = 1e-8, statistic: str = "std") -> None:
        if mode not in ("none", "fixed", "running"):
            raise ValueError(f"reward normalization mode {mode!r}: expected none, fixed or running")
        if statistic not in ("std", "rms"):
            raise ValueError(f"reward statistic {statistic!r}: expected std or rms")
        self.mode, self.epsilon, self.statistic = mode, epsilon, statistic
        self.count, self.mean, self.sum_squares = 0, 0.0, 0.0
        self.frozen_scale: float | None = None

    def observe(self, reward: float) -> None:
        """Welford update with one stored (already reward_scale'd) reward."""
        if self.mode == "none" or (self.mode == "fixed" and self.frozen_scale is not None):
            return
        self.count += 1
        delta = reward - self.mean
        self.mean += delta / self.count
        self.sum_squares += delta * (reward - self.mean)

    @property
    def variance(self) -> float:
        return self.sum_squares / self.count if self.count > 1 else 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self.variance)

    @property
    def scale(self) -> float:
        """The factor applied to sampled rewards (1.0 until there are statistics)."""
        if self.mode == "none":
            return 1.0
        if self.mode == "fixed":
            if self.frozen_scale is None:
                self.frozen_scale = self._current_scale()
            return self.frozen_scale
        return self._current_scale()

    @property
    def rms(self) -> float:
        return math.sqrt(self.mean**2 + self.variance) if self.count > 1 else 0.0

    def _current_scale(self) -> float:
        size = self.rms if self.statistic == "rms" else self.std
        return 1.0 / size if size > self.epsilon else 1.0

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "count": self.count, "mean": self.mean, "sum_squares": self.sum_squares,
                "frozen_scale": self.frozen_scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count, self.mean, self.sum_squares = state["count"], state["mean"], state["sum_squares"]
        self.frozen_scale = state["frozen_scale"] if state["mode"] == self.mode else None
