"""Per-environment context state while acting: the env's own context, or the history window."""

from __future__ import annotations

from typing import Any

import numpy as np

from dynsac.context.window import HistoryWindow


class ContextError(ValueError):
    """The environment does not provide what `context.source` needs."""


def split_observation(obs: Any, info: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """An observation and the env's context: from a Dict observation {"obs", "context"} (the
    CARL convention) or from `info["context"]`; None when the env gives neither."""
    if isinstance(obs, dict):
        return np.asarray(obs["obs"], dtype=np.float32), np.asarray(obs["context"], dtype=np.float32)
    context = info.get("context")
    return np.asarray(obs, dtype=np.float32), None if context is None else np.asarray(context, dtype=np.float32)


class ContextTracker:
    """What one environment's current episode says about its dynamics, for `source` env or learned."""

    def __init__(self, source: str, history_length: int, obs_dim: int, action_dim: int, env_id: str = "") -> None:
        self.source, self.env_id = source, env_id
        self.window = HistoryWindow(history_length, obs_dim, action_dim) if source == "learned" else None
        self.env_context: np.ndarray | None = None

    def reset(self, env_context: np.ndarray | None) -> None:
        if self.window is not None:
            self.window.reset()
        self._set_env_context(env_context)

    def record(self, obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray, env_context: np.ndarray | None) -> None:
        if self.window is not None:
            self.window.push(obs, action, next_obs)
        self._set_env_context(env_context)

    def _set_env_context(self, env_context: np.ndarray | None) -> None:
        if self.source != "env":
            return
        if env_context is None:
            raise ContextError(
                f"context.source = 'env', but env.id = {self.env_id!r} provides no context: it must put a "
                f"vector in info['context'] or return Dict observations {{'obs', 'context'}}; "
                f"use context.source = 'learned' or 'none' otherwise"
            )
        self.env_context = env_context

    def state_dict(self) -> dict[str, Any]:
        return {
            "window": None if self.window is None else self.window.state_dict(),
            "env_context": None if self.env_context is None else self.env_context.tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.window is not None and state.get("window") is not None:
            self.window.load_state_dict(state["window"])
        if state.get("env_context") is not None:
            self.env_context = np.asarray(state["env_context"], dtype=np.float32)
