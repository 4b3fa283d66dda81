"""A family of random linear-quadratic control problems whose dynamics change every episode."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from scipy.linalg import solve_discrete_are

Range = tuple[float, float]

PARAM_NAMES: tuple[str, ...] = ("drift", "rotation", "gain")

# Default per-parameter ranges. The test ranges are disjoint from the train ranges
# (extrapolation): faster-growing, faster-rotating systems with weaker actuators.
TRAIN_RANGES: dict[str, Range] = {"drift": (0.95, 1.02), "rotation": (0.1, 0.5), "gain": (0.6, 1.0)}
TEST_RANGES: dict[str, Range] = {"drift": (1.02, 1.05), "rotation": (0.5, 0.7), "gain": (0.4, 0.6)}
SPLITS: dict[str, dict[str, Range]] = {"train": TRAIN_RANGES, "test": TEST_RANGES}

INIT_STATE_BOUND = 1.0
CONTROL_COST = 0.3  # R = CONTROL_COST * I; Q = I


def validated_range(name: str, value: Sequence[float], low_above: float | None = None) -> Range:
    """Return ``value`` as a finite ``(low, high)`` pair with ``low <= high`` (and ``low > low_above``).

    Raises ValueError naming ``name`` otherwise.
    """
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair of numbers, got {value!r}") from None
    if not (np.isfinite(low) and np.isfinite(high)) or low > high:
        raise ValueError(f"{name} must satisfy low <= high with finite bounds, got {value!r}")
    if low_above is not None and low <= low_above:
        raise ValueError(f"{name} must have low > {low_above}, got {value!r}")
    return low, high


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _non_negative(name: str, value: Any, strict: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not np.isfinite(number) or number < 0 or (strict and number == 0):
        bound = "> 0" if strict else ">= 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return number


def _rotation_blocks(n: int, angle: float) -> np.ndarray:
    """Block-diagonal matrix rotating plane ``j`` by ``(j + 1) * angle``; odd ``n`` keeps one fixed axis."""
    blocks = np.eye(n)
    for j in range(n // 2):
        c, s = np.cos((j + 1) * angle), np.sin((j + 1) * angle)
        blocks[2 * j : 2 * j + 2, 2 * j : 2 * j + 2] = [[c, -s], [s, c]]
    return blocks


def _base_structure(state_dim: int, action_dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed orthogonal basis for A and unit-gain input matrix B0 (singular values in [0.75, 1])."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((state_dim, state_dim)))
    left, _ = np.linalg.qr(rng.standard_normal((state_dim, state_dim)))
    right, _ = np.linalg.qr(rng.standard_normal((action_dim, action_dim)))
    rank = min(state_dim, action_dim)
    singular = np.linspace(1.0, 0.75, rank)
    b0 = left[:, :rank] @ np.diag(singular) @ right[:, :rank].T
    return basis, b0


class RandomLinearEnv(gym.Env):
    """Linear system ``x' = A x + B u + w`` with ``A`` and ``B`` redrawn every episode.

    ``A = drift * V R(rotation) V^T`` (``V`` a fixed orthogonal basis, ``R`` rotates plane ``j`` by
    ``(j+1) * rotation``), so ``drift`` is exactly the spectral radius; ``B = gain * B0`` with a fixed
    ``B0``. Only the scalars ``(drift, rotation, gain)`` vary per episode; they are drawn uniformly
    from the split's ranges and exposed as the context. The fixed matrices come from
    ``structure_seed``, so the family is the same in every run.

    Reward is ``-cost_scale * (x^T x + 0.3 u^T u)`` for the state *before* the step, so returns are
    huge on purpose. Measured with the defaults (train split, 50 steps, seeds 0-19): a uniformly
    random policy scores -1.0e6 on average (range -3.1e5 to -3.3e6), zero actions about -1e5 and
    the LQR controller -3.2e3 (range -1.2e3 to -5.8e3; see ``optimal_return``). On the test split:
    random -3.6e6, LQR -4.3e3.

    The initial state is uniform in ``[-1, 1]^state_dim`` and ``w ~ N(0, noise_std^2 I)`` is drawn
    every step in the same order whatever the actions, so a seed fixes dynamics, initial state and
    noise. The env truncates itself after ``episode_length`` steps (it needs no TimeLimit wrapper).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        state_dim: int = 4,
        action_dim: int = 10,
        episode_length: int = 50,
        noise_std: float = 0.02,
        cost_scale: float = 1500.0,
        split: str = "train",
        drift_range: Sequence[float] | None = None,
        rotation_range: Sequence[float] | None = None,
        gain_range: Sequence[float] | None = None,
        structure_seed: int = 0,
    ) -> None:
        # Constructor kwargs, to build identical copies in optimal_return() / evaluate_policy().
        self._config = {k: v for k, v in locals().items() if k != "self"}
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        self.state_dim = _positive_int("state_dim", state_dim)
        self.action_dim = _positive_int("action_dim", action_dim)
        self.episode_length = _positive_int("episode_length", episode_length)
        self.noise_std = _non_negative("noise_std", noise_std)
        self.cost_scale = _non_negative("cost_scale", cost_scale, strict=True)
        self.split = split
        self.ranges = self._resolve_ranges(split, drift_range, rotation_range, gain_range)
        self._basis, self._b0 = _base_structure(self.state_dim, self.action_dim, int(structure_seed))

        self.action_space = spaces.Box(-1.0, 1.0, shape=(self.action_dim,), dtype=np.float32)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(self.state_dim,), dtype=np.float32)
        lows, highs = zip(*(self.ranges[name] for name in PARAM_NAMES))
        self.context_space = spaces.Box(
            np.array(lows, dtype=np.float32), np.array(highs, dtype=np.float32), dtype=np.float32
        )

        self._x: np.ndarray | None = None
        self._t = 0
        self.params: dict[str, float] = {}
        self.A = np.zeros((self.state_dim, self.state_dim))
        self.B = np.zeros((self.state_dim, self.action_dim))
        self._gain: np.ndarray | None = None

    @staticmethod
    def _resolve_ranges(
        split: str,
        drift: Sequence[float] | None,
        rotation: Sequence[float] | None,
        gain: Sequence[float] | None,
    ) -> dict[str, Range]:
        ranges = dict(SPLITS[split])
        # A zero actuator gain would make unstable systems impossible to stabilise.
        overrides = {"drift": (drift, None), "rotation": (rotation, None), "gain": (gain, 0.0)}
        for name, (value, low_above) in overrides.items():
            if value is not None:
                ranges[name] = validated_range(f"{name}_range", value, low_above)
        return ranges

    # ----------------------------------------------------------------- Gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Draw new dynamics, then a new initial state. ``options`` is accepted and ignored."""
        super().reset(seed=seed)
        rng = self.np_random
        params = {name: float(rng.uniform(*self.ranges[name])) for name in PARAM_NAMES}
        self._set_params(params)
        self._x = rng.uniform(-INIT_STATE_BOUND, INIT_STATE_BOUND, size=self.state_dim)
        self._t = 0
        return self._obs(), self._info()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply ``action`` (clipped to [-1, 1]) and return the quadratic-cost reward."""
        if self._x is None:
            raise RuntimeError("call reset() before step()")
        u = np.clip(np.asarray(action, dtype=np.float64).reshape(self.action_dim), -1.0, 1.0)
        x = self._x
        cost = float(x @ x + CONTROL_COST * (u @ u))
        noise = self.np_random.normal(0.0, 1.0, size=self.state_dim) * self.noise_std
        self._x = self.A @ x + self.B @ u + noise
        self._t += 1
        truncated = self._t >= self.episode_length
        return self._obs(), -self.cost_scale * cost, False, truncated, self._info()

    # ----------------------------------------------------------------- context
    @property
    def context(self) -> np.ndarray:
        """The current dynamics parameters ``(drift, rotation, gain)`` as float32."""
        return np.array([self.params.get(name, np.nan) for name in PARAM_NAMES], dtype=np.float32)

    def _set_params(self, params: dict[str, float]) -> None:
        self.params = dict(params)
        rotation = _rotation_blocks(self.state_dim, params["rotation"])
        self.A = params["drift"] * self._basis @ rotation @ self._basis.T
        self.B = params["gain"] * self._b0
        self._gain = None

    def _obs(self) -> np.ndarray:
        assert self._x is not None
        return self._x.astype(np.float32)

    def _info(self) -> dict[str, Any]:
        return {"context": self.context, "dynamics": dict(self.params)}

    # ----------------------------------------------------------------- optimal control
    @property
    def lqr_gain(self) -> np.ndarray:
        """Infinite-horizon discrete LQR gain ``K`` (``u = -K x``) for this episode's ``(A, B)``."""
        return self._lqr_gain().copy()

    def _lqr_gain(self) -> np.ndarray:
        if not self.params:
            raise RuntimeError("call reset() before asking for the LQR gain")
        if self._gain is None:
            q = np.eye(self.state_dim)
            r = CONTROL_COST * np.eye(self.action_dim)
            p = solve_discrete_are(self.A, self.B, q, r)
            bt_p = self.B.T @ p
            self._gain = np.linalg.solve(r + bt_p @ self.B, bt_p @ self.A)
        return self._gain

    def optimal_action(self, x: np.ndarray) -> np.ndarray:
        """LQR action ``clip(-K x, -1, 1)`` for observation ``x``, as float32."""
        u = -self._lqr_gain() @ np.asarray(x, dtype=np.float64)
        return np.clip(u, -1.0, 1.0).astype(np.float32)

    def optimal_return(self, seed: int | None = None, options: dict[str, Any] | None = None) -> float:
        """Episode return of the LQR controller; this env is left untouched.

        With a ``seed``, a fresh copy of the env is reset with it, so the rollout faces the same
        dynamics, initial state and noise as an agent reset with that seed. With ``seed=None``
        the copy continues this env's current episode (the LQR return-to-go from here).
        """
        twin, obs = self._twin(seed, options)
        return twin._run(twin.optimal_action, obs)

    def evaluate_policy(
        self,
        policy: Callable[[np.ndarray], np.ndarray],
        seed: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> float:
        """Episode return of ``policy(obs) -> action`` on a copy, like ``optimal_return``."""
        twin, obs = self._twin(seed, options)
        return twin._run(policy, obs)

    def _twin(self, seed: int | None, options: dict[str, Any] | None) -> tuple[RandomLinearEnv, np.ndarray]:
        twin = RandomLinearEnv(**self._config)
        if seed is not None:
            obs, _ = twin.reset(seed=seed, options=options)
            return twin, obs
        if self._x is None:
            raise RuntimeError("call reset() first, or pass a seed")
        twin.load_state_dict(self.state_dict())
        return twin, twin._obs()

    def _run(self, policy: Callable[[np.ndarray], np.ndarray], obs: np.ndarray) -> float:
        total, truncated = 0.0, self._t >= self.episode_length
        while not truncated:
            obs, reward, _, truncated, _ = self.step(policy(obs))
            total += reward
        return total

    # ----------------------------------------------------------------- exact resume
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the current episode bit-for-bit (plain Python types only)."""
        if self._x is None:
            raise RuntimeError("call reset() before state_dict()")
        return {
            "env": type(self).__name__,
            "state_dim": self.state_dim,
            "action_dim": self.action_dim,
            "x": self._x.tolist(),
            "t": self._t,
            "params": dict(self.params),
            "A": self.A.tolist(),
            "B": self.B.tolist(),
            "rng": self.np_random.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()`` taken from an env built with the same kwargs."""
        dims = (state.get("state_dim"), state.get("action_dim"))
        if state.get("env") != type(self).__name__ or dims != (self.state_dim, self.action_dim):
            raise ValueError(
                f"state_dict is for {state.get('env')} with (state_dim, action_dim)={dims}, "
                f"expected {type(self).__name__} with {(self.state_dim, self.action_dim)}"
            )
        self.params = {name: float(state["params"][name]) for name in PARAM_NAMES}
        self.A = np.array(state["A"], dtype=np.float64)
        self.B = np.array(state["B"], dtype=np.float64)
        self._gain = None
        self._x = np.array(state["x"], dtype=np.float64)
        self._t = int(state["t"])
        self.np_random.bit_generator.state = state["rng"]
