"""Early warnings: signs of divergence read from the logged training metrics, long before NaN.

The monitor sees the per-interval means the trainer logs anyway (no extra work per update) and
raises each kind of warning at most once per `cooldown` intervals.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass


@dataclass
class EarlyWarning:
    kind: str
    message: str


class EarlyWarningMonitor:
    """Checks each logged interval of training scalars (`train/...`, `context/...`)."""

    def __init__(self, history: int = 5, cooldown: int = 10, target_entropy: float | None = None) -> None:
        self.target_entropy = target_entropy  # SAC's entropy target, when alpha is tuned
        self.history = deque(maxlen=history)  # past intervals' scalars, oldest first
        self.cooldown = cooldown
        self._last_raised: dict[str, int] = {}
        self._interval = 0
        self._trained_intervals = 0  # logged intervals that had updates
        self.counts: Counter[str] = Counter()
        self.first_step: dict[str, int] = {}

    def check(self, step: int, scalars: dict[str, float]) -> list[EarlyWarning]:
        if "train/q_max_abs" in scalars:
            self._trained_intervals += 1
        found = [warning for warning in self._signs(scalars) if self._may_raise(warning.kind)]
        for warning in found:
            self._last_raised[warning.kind] = self._interval
            self.counts[warning.kind] += 1
            self.first_step.setdefault(warning.kind, step)
        self.history.append(dict(scalars))
        self._interval += 1
        return found

    def state_dict(self) -> dict:
        """Plain data for checkpoints: a resumed run keeps its history, cooldowns and counts."""
        return {"history": list(self.history), "last_raised": dict(self._last_raised), "interval": self._interval,
                "trained_intervals": self._trained_intervals, "counts": dict(self.counts),
                "first_step": dict(self.first_step)}

    def load_state_dict(self, state: dict) -> None:
        self.history = deque(state["history"], maxlen=self.history.maxlen)
        self._last_raised, self._interval = dict(state["last_raised"]), state["interval"]
        self._trained_intervals = state["trained_intervals"]
        self.counts, self.first_step = Counter(state["counts"]), dict(state["first_step"])

    def _saturated(self, fraction: float | None, entropy: float | None) -> bool:
        """Most sampled actions at the tanh bounds. Bang-bang control saturates healthy policies
        too, so with an entropy target it also takes an entropy far below it (the tanh correction
        makes a saturated policy's log-probs huge)."""
        if fraction is None:
            return False
        if self.target_entropy is None or entropy is None:
            return fraction >= 0.9
        return fraction >= 0.5 and entropy < self.target_entropy - 5.0

    def _may_raise(self, kind: str) -> bool:
        last = self._last_raised.get(kind)
        return last is None or self._interval - last >= self.cooldown

    def _signs(self, now: dict[str, float]) -> list[EarlyWarning]:
        signs: list[EarlyWarning] = []
        past = self.history[0] if self.history else None

        def add(kind: str, message: str) -> None:
            signs.append(EarlyWarning(kind, message))

        for name in ("q_grad_clipped", "policy_grad_clipped"):
            fraction = now.get(f"train/{name}")
            if fraction is not None and fraction >= 0.9:
                which = "critic" if name.startswith("q") else "policy"
                add(f"{which}_grad_at_clip_limit",
                    f"{which} gradient norm at the clipping limit in {fraction:.0%} of updates: the step size is "
                    f"set by clipping, not by the loss (lower the learning rate, or normalise rewards)")
        if self._saturated(now.get("train/action_saturated"), now.get("train/entropy")):
            add("policy_saturated",
                f"{now['train/action_saturated']:.0%} of the policy's sampled actions sit at the +-1 bounds of tanh (entropy "
                f"{now.get('train/entropy', float('nan')):.1f}): the policy is saturated and its gradient through "
                f"tanh vanishes (normalise rewards, or lower the learning rate)")
        if now.get("train/policy_grad_norm") == 0.0 and now.get("train/actor_loss") is not None:
            add("actor_gradient_zero",
                "actor gradient is exactly 0: the policy is saturated (tanh at +-1) and has stopped learning")
        pinned = now.get("train/log_std_at_bound")
        if pinned is not None and pinned >= 0.9:
            add("log_std_pinned",
                f"{pinned:.0%} of the policy's log-std entries sit at a bound "
                f"(mean log-std {now.get('train/log_std_mean', float('nan')):.2f}): exploration is stuck")
        alpha = now.get("train/alpha")
        if alpha is not None:
            growth = alpha / past["train/alpha"] if past and past.get("train/alpha", 0) > 0 else 1.0
            # SAC's alpha starts near 1 and normally falls; above 10 and still growing 10x is a runaway.
            if alpha > 1e3 or growth > 100 or (alpha > 10 and growth >= 10):
                add("alpha_runaway", f"entropy coefficient alpha is running away ({_trend(past, now, 'train/alpha')}); "
                    f"the entropy term is swamping the reward in the critic target")
            elif alpha < 1e-6:
                add("alpha_collapse", f"entropy coefficient alpha collapsed to {alpha:.2e}: exploration has stopped")
        if self._trained_intervals <= self.history.maxlen + 1:  # history[0] must postdate the first interval
            # Q-values start near 0 and grow to the return's scale while the critic learns: growth
            # only means divergence once a few intervals of learning have set the scale.
            return signs
        if _grew(past, now, "train/q_max_abs", 100.0):
            add("q_growth", f"|Q| grew by orders of magnitude ({_trend(past, now, 'train/q_max_abs')}); "
                f"Q-values are diverging (reward scale? learning rate?)")
        if _grew(past, now, "train/q_std", 100.0):
            add("q_std_explosion", f"Q-value std exploded ({_trend(past, now, 'train/q_std')})")
        previous = self.history[-1] if self.history else None
        if _grew(previous, now, "context/abs_max", 10.0):
            add("context_jump", f"context magnitude jumped ({_trend(previous, now, 'context/abs_max')})")
        return signs

    def summary(self) -> str:
        if not self.counts:
            return "no early warnings"
        parts = [f"{kind} x{count} (first at step {self.first_step[kind]:,})" for kind, count in self.counts.items()]
        return "early warnings: " + ", ".join(parts)


def _grew(past: dict[str, float] | None, now: dict[str, float], name: str, factor: float) -> bool:
    if past is None or name not in past or name not in now:
        return False
    before, after = abs(past[name]), abs(now[name])
    return math.isfinite(after) and before > 0 and after / before >= factor and after > 1.0


def _trend(past: dict[str, float] | None, now: dict[str, float], name: str) -> str:
    before = past.get(name) if past else None
    return f"{before:.3g} -> {now[name]:.3g}" if before is not None else f"{now[name]:.3g}"
