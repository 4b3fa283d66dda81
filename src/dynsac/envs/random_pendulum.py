"""Gymnasium's Pendulum with the pole's mass and length redrawn every episode (as in CaDM)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.envs.classic_control.pendulum import PendulumEnv

from dynsac.envs.random_linear import validated_range

SPLITS = ("train", "test")
MAX_TORQUE = 2.0
# CaDM train grid {0.75, 0.80, ..., 1.25}, built from integers to avoid float drift.
TRAIN_VALUES: tuple[float, ...] = tuple(v / 100 for v in range(75, 126, 5))
LIGHT, HEAVY = (0.2, 0.4), (1.6, 1.8)


@dataclass(frozen=True)
class _Uniform:
    low: float
    high: float

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.low, self.high))


@dataclass(frozen=True)
class _Choice:
    values: tuple[float, ...]

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def sample(self, rng: np.random.Generator) -> float:
        return float(self.values[rng.integers(len(self.values))])


_Dist = _Uniform | _Choice
# A mode is a (mass, length) distribution pair; each episode picks one mode uniformly.
_DEFAULT_MODES: dict[str, list[tuple[_Dist, _Dist]]] = {
    "train": [(_Choice(TRAIN_VALUES), _Choice(TRAIN_VALUES))],
    "test": [(_Uniform(*LIGHT), _Uniform(*HEAVY)), (_Uniform(*HEAVY), _Uniform(*LIGHT))],
}


class RandomPendulumEnv(PendulumEnv):
    """Pendulum-v1 whose mass ``m`` and length ``l`` are drawn at every reset.

    Dynamics, observation ``[cos, sin, thetadot]`` and reward are Pendulum-v1's; the action is
    rescaled to ``[-1, 1]`` and multiplied by ``max_torque = 2`` internally. Defaults follow CaDM:
    ``split="train"`` draws ``m`` and ``l`` independently from ``{0.75, 0.80, ..., 1.25}``;
    ``split="test"`` draws, with probability 1/2 each, ``(m, l)`` from ``U[0.2, 0.4] x U[1.6, 1.8]``
    or ``U[1.6, 1.8] x U[0.2, 0.4]``. ``mass_range`` / ``length_range`` replace that parameter's
    distribution with a uniform one. The context is ``[m, l]``.

    The initial state is drawn before the dynamics, so with ``m = l = 1`` a seed reproduces
    Pendulum-v1 exactly. Truncation after 200 steps is left to the registered TimeLimit; the
    step count is still kept in ``elapsed_steps`` (and in ``state_dict``) for exact resume.
    """

    def __init__(
        self,
        split: str = "train",
        mass_range: Sequence[float] | None = None,
        length_range: Sequence[float] | None = None,
        render_mode: str | None = None,
        g: float = 10.0,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        super().__init__(render_mode=render_mode, g=g)
        self.split = split
        self._modes = self._resolve_modes(split, mass_range, length_range)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        low = [min(mode[i].low for mode in self._modes) for i in range(2)]
        high = [max(mode[i].high for mode in self._modes) for i in range(2)]
        self.context_space = spaces.Box(
            np.array(low, dtype=np.float32), np.array(high, dtype=np.float32), dtype=np.float32
        )
        self.elapsed_steps = 0

    @staticmethod
    def _resolve_modes(
        split: str, mass_range: Sequence[float] | None, length_range: Sequence[float] | None
    ) -> list[tuple[_Dist, _Dist]]:
        modes = _DEFAULT_MODES[split]
        if mass_range is not None:
            mass = _Uniform(*validated_range("mass_range", mass_range, low_above=0.0))
            modes = [(mass, length) for _, length in modes]
        if length_range is not None:
            length = _Uniform(*validated_range("length_range", length_range, low_above=0.0))
            modes = [(mass, length) for mass, _ in modes]
        return modes

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Pendulum-v1's reset (same ``options``), then draw this episode's mass and length."""
        obs, _ = super().reset(seed=seed, options=options)
        # Fixed draw order (mode, mass, length) keeps episodes reproducible from the seed.
        rng = self.np_random
        mass_dist, length_dist = self._modes[int(rng.integers(len(self._modes)))]
        self.m = mass_dist.sample(rng)
        self.l = length_dist.sample(rng)
        self.elapsed_steps = 0
        return obs, self._info()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply torque ``2 * action`` (action clipped to [-1, 1])."""
        torque = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0) * np.float32(MAX_TORQUE)
        obs, reward, terminated, truncated, _ = super().step(torque.reshape(1))
        self.elapsed_steps += 1
        return obs, float(reward), terminated, truncated, self._info()

    @property
    def context(self) -> np.ndarray:
        """The current ``[mass, length]`` as float32."""
        return np.array([self.m, self.l], dtype=np.float32)

    def _info(self) -> dict[str, Any]:
        return {"context": self.context, "dynamics": {"mass": float(self.m), "length": float(self.l)}}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the current episode bit-for-bit (plain Python types only)."""
        if getattr(self, "state", None) is None:
            raise RuntimeError("call reset() before state_dict()")
        last_u = None if self.last_u is None else float(self.last_u)
        return {
            "env": type(self).__name__,
            "state": np.asarray(self.state, dtype=np.float64).tolist(),
            "mass": float(self.m),
            "length": float(self.l),
            "last_u": last_u,
            "elapsed_steps": self.elapsed_steps,
            "rng": self.np_random.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()`` taken from an env built with the same kwargs."""
        if state.get("env") != type(self).__name__:
            raise ValueError(f"state_dict is for {state.get('env')!r}, expected {type(self).__name__!r}")
        self.state = np.array(state["state"], dtype=np.float64)
        self.m = float(state["mass"])
        self.l = float(state["length"])
        self.last_u = None if state["last_u"] is None else np.float32(state["last_u"])
        self.elapsed_steps = int(state["elapsed_steps"])
        self.np_random.bit_generator.state = state["rng"]
