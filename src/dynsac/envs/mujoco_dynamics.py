"""MuJoCo bodies whose masses, joint damping and friction are rescaled every episode.

``RandomDynamicsMuJoCo`` wraps any Gymnasium MuJoCo env. It caches the model's ``body_mass``,
``dof_damping`` and ``geom_friction`` once, and at every reset (and, on request, mid-episode)
writes ``cached * scale`` back into the model, one scalar scale per quantity drawn from the
split's distribution. The true scales are the context: ``info["context"]`` (float32) holds the
scales of the *varied* quantities in the fixed order ``mass, damping, friction`` (a quantity
that is not varied keeps its XML value and is left out of the context).

Presets (registered as ``dynsac/Random*-v0`` when MuJoCo is installed, see registration.py):

============================  =================  ===========================  ==============================
preset (base env)             context            train                        test
============================  =================  ===========================  ==============================
RandomHalfCheetah (v5)        [mass, damping]    {0.75, 0.80, ..., 1.25}      U[0.2, 0.3] or U[1.7, 1.8]
RandomAnt (v5)                [mass]             {0.85, 0.90, 0.95, 1.00}     U[0.2, 0.6]
RandomHopper (v5)             [mass, damping,    1.5 ** U[-3, 3]              1.5 ** (U[-4, -3] or U[3, 4])
                              friction]
============================  =================  ===========================  ==============================

HalfCheetah and Ant follow CaDM (Lee et al., 2020): discrete train grids, extrapolation at test
time. Ant's test range 0.2-0.6 is the two bands 0.2-0.4 and 0.4-0.6, all lighter than any
training body. Hopper follows the PEARL / ESCP rand-params tasks' ``1.5 ** U(-3, 3)`` (log-scale
limit 3); its held-out test split uses exponents just beyond that, ``|e|`` in [3, 4] (scales
0.20-0.30 or 3.4-5.1), so every test quantity lies outside the train range. Unlike PEARL, which
draws one multiplier per array element (and ``1.3 ** U`` for damping), each quantity here has one
scalar scale for the whole body, so the context stays three numbers. Each quantity of each draw
is independent; "or" means one of the bands with probability 1/2, then uniform within it.

Only the listed arrays change: body inertias and MuJoCo's derived constants
(``body_subtreemass``, ``dof_invweight0``, set by ``mj_setConst``) keep their XML values, as in
CaDM and PEARL.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from dynsac.envs.random_linear import validated_range
from dynsac.envs.random_pendulum import SPLITS, TRAIN_VALUES
from dynsac.envs.registration import MUJOCO_INSTALL_HINT, mujoco_available

QUANTITIES: tuple[str, ...] = ("mass", "damping", "friction")
MODEL_FIELDS: dict[str, str] = {"mass": "body_mass", "damping": "dof_damping", "friction": "geom_friction"}


class MuJoCoNotInstalled(gym.error.DependencyNotInstalled):
    """A MuJoCo preset was asked for but the `mujoco` package is missing."""


def require_mujoco(what: str) -> None:
    if not mujoco_available():
        raise MuJoCoNotInstalled(f"{what} needs MuJoCo, which is not installed: {MUJOCO_INSTALL_HINT}")


# ----------------------------------------------------------------------------- distributions
@dataclass(frozen=True)
class ScaleDistribution:
    """Where a scale factor is drawn from.

    Either a discrete set ``values`` (each equally likely), or a union of ``intervals``: one
    interval is picked with equal probability, then a value uniformly within it. With ``base``,
    the intervals bound the exponent: ``scale = base ** U``.
    """

    values: tuple[float, ...] = ()
    intervals: tuple[tuple[float, float], ...] = ()
    base: float | None = None

    def sample(self, rng: np.random.Generator) -> float:
        if self.values:
            return float(self.values[int(rng.integers(len(self.values)))])
        low, high = self.intervals[int(rng.integers(len(self.intervals)))]
        value = float(rng.uniform(low, high))
        return float(self.base**value) if self.base is not None else value

    def _scale_bounds(self) -> list[float]:
        if self.values:
            return list(self.values)
        ends = [end for interval in self.intervals for end in interval]
        return [self.base**end for end in ends] if self.base is not None else ends

    @property
    def low(self) -> float:
        return float(min(self._scale_bounds()))

    @property
    def high(self) -> float:
        return float(max(self._scale_bounds()))

    def contains(self, scale: float, rtol: float = 1e-9) -> bool:
        """Whether ``scale`` can be drawn (up to a relative tolerance at interval ends)."""
        if self.values:
            return any(math.isclose(scale, v, rel_tol=rtol) for v in self.values)
        value = math.log(scale, self.base) if self.base is not None else scale
        slack = rtol * max(1.0, abs(value))
        return any(low - slack <= value <= high + slack for low, high in self.intervals)


ScaleSpec = ScaleDistribution | Sequence[float] | Sequence[Sequence[float]] | Mapping[str, Any]

_FORMS = (
    "(low, high) with 0 < low <= high, a list of such intervals [[l1, h1], [l2, h2], ...], "
    "{'values': [v1, v2, ...]} (all > 0), or {'base': b, 'exponent': (low, high) or a list of intervals} "
    "(b > 0, b != 1)"
)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _intervals(name: str, value: Any, low_above: float | None) -> tuple[tuple[float, float], ...]:
    """A pair (low, high) or a non-empty list of pairs, validated."""
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0:
        if all(_is_number(v) for v in value):
            return (validated_range(name, value, low_above),)
        if all(isinstance(v, Sequence) and not isinstance(v, str) for v in value):
            return tuple(validated_range(f"{name}[{i}]", v, low_above) for i, v in enumerate(value))
    raise ValueError(f"{name} must be {_FORMS}; got {value!r}")


def scale_distribution(name: str, spec: ScaleSpec) -> ScaleDistribution:
    """Parse a range given in a config or kwarg; ValueError naming ``name`` and the valid forms."""
    if isinstance(spec, ScaleDistribution):
        return spec
    if isinstance(spec, Mapping):
        keys = set(spec)
        if keys == {"values"}:
            values = spec["values"]
            ok = isinstance(values, Sequence) and not isinstance(values, str) and len(values) > 0
            if ok and all(_is_number(v) and np.isfinite(v) and v > 0 for v in values):
                return ScaleDistribution(values=tuple(float(v) for v in values))
            raise ValueError(f"{name}['values'] must be a non-empty list of finite numbers > 0, got {values!r}")
        if keys == {"base", "exponent"}:
            base = spec["base"]
            if not (_is_number(base) and np.isfinite(base) and base > 0 and base != 1):
                raise ValueError(f"{name}['base'] must be a finite number > 0 and != 1, got {base!r}")
            exponents = _intervals(f"{name}['exponent']", spec["exponent"], None)
            return ScaleDistribution(intervals=exponents, base=float(base))
        raise ValueError(f"{name} must be {_FORMS}; got a mapping with keys {sorted(keys)}")
    return ScaleDistribution(intervals=_intervals(name, spec, low_above=0.0))


def _ranges(what: str, ranges: Mapping[str, ScaleSpec]) -> dict[str, ScaleDistribution]:
    if not isinstance(ranges, Mapping) or not ranges:
        raise ValueError(f"{what} must map some of {list(QUANTITIES)} to ranges, got {ranges!r}")
    unknown = sorted(set(ranges) - set(QUANTITIES))
    if unknown:
        raise ValueError(f"{what} has unknown quantities {unknown}; valid: {list(QUANTITIES)}")
    return {q: scale_distribution(f"{q}_range", ranges[q]) for q in QUANTITIES if q in ranges}


# ----------------------------------------------------------------------------- the wrapper
class RandomDynamicsMuJoCo(gym.Wrapper):
    """Rescale a MuJoCo env's masses, joint damping and friction at every reset.

    ``train_ranges`` / ``test_ranges`` map quantities (``mass``, ``damping``, ``friction``) to
    :class:`ScaleDistribution` or a spec accepted by :func:`scale_distribution`; both splits
    must vary the same quantities, and ``split`` (``train`` | ``test``) picks one. The context
    (``info["context"]`` on reset and every step, float32) is the current scales of the varied
    quantities in the order of :data:`QUANTITIES`; names in ``context_names``.

    New scales are drawn before the wrapped env's reset, so the initial state is computed with
    the new model. ``resample()`` draws new scales mid-episode; with ``resample_every=N`` this
    happens after every N-th step of an episode, and that step's ``info["context"]`` already
    gives the new scales: the context always describes the dynamics of the next step.

    Scales come from a generator of their own: ``reset(seed=s)`` reseeds it from a child of
    ``SeedSequence(s)``, so a seed fixes dynamics and initial state without the two draws
    sharing random numbers. ``state_dict()`` / ``load_state_dict()`` save and restore scales,
    the modified model arrays, that generator and the step counter (env/state.py uses them for
    checkpoint resume).
    """

    def __init__(
        self,
        env: gym.Env,
        train_ranges: Mapping[str, ScaleSpec],
        test_ranges: Mapping[str, ScaleSpec] | None = None,
        split: str = "train",
        resample_every: int | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        if resample_every is not None and (
            isinstance(resample_every, bool) or not isinstance(resample_every, (int, np.integer)) or resample_every < 1
        ):
            raise ValueError(f"resample_every must be a positive integer or null, got {resample_every!r}")
        model = getattr(env.unwrapped, "model", None)
        if model is None or not all(hasattr(model, field) for field in MODEL_FIELDS.values()):
            raise ValueError(f"RandomDynamicsMuJoCo needs a MuJoCo env (with .model), got {env.unwrapped!r}")
        super().__init__(env)
        train = _ranges("train_ranges", train_ranges)
        test = train if test_ranges is None else _ranges("test_ranges", test_ranges)
        if set(test) != set(train):
            raise ValueError(
                f"train_ranges and test_ranges must vary the same quantities, got {list(train)} and {list(test)}"
            )
        self.split = split
        self.resample_every = None if resample_every is None else int(resample_every)
        self.ranges: dict[str, ScaleDistribution] = train if split == "train" else test
        self.varied: tuple[str, ...] = tuple(self.ranges)
        self.context_names: tuple[str, ...] = tuple(f"{q}_scale" for q in self.varied)
        self.context_space = spaces.Box(
            np.array([self.ranges[q].low for q in self.varied], dtype=np.float32),
            np.array([self.ranges[q].high for q in self.varied], dtype=np.float32),
            dtype=np.float32,
        )
        self.base_values: dict[str, np.ndarray] = {
            q: np.array(getattr(model, MODEL_FIELDS[q]), dtype=np.float64, copy=True) for q in QUANTITIES
        }
        self.scales: dict[str, float] = {q: 1.0 for q in QUANTITIES}
        self.dynamics_rng = np.random.default_rng()
        self.steps_since_resample = 0

    # ----------------------------------------------------------------- Gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Draw new scales, apply them, then reset the wrapped env (``seed`` and ``options`` go to it)."""
        if seed is not None:
            self.dynamics_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
        self.resample()
        obs, info = self.env.reset(seed=seed, options=options)
        return obs, self._with_context(info)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps_since_resample += 1
        if self.resample_every is not None and self.steps_since_resample >= self.resample_every:
            self.resample()
        return obs, reward, terminated, truncated, self._with_context(info)

    # ----------------------------------------------------------------- dynamics
    def resample(self) -> np.ndarray:
        """Draw new scales for the varied quantities (in the order of ``varied``), apply them, return the context."""
        self.set_scales(**{q: self.ranges[q].sample(self.dynamics_rng) for q in self.varied})
        return self.context

    def set_scales(self, **scales: float) -> None:
        """Set some varied quantities' scales (e.g. ``set_scales(mass=0.3)``) and write the model arrays."""
        for name, value in scales.items():
            if name not in self.varied:
                raise ValueError(f"{name!r} is not varied by this env; varied: {list(self.varied)}")
            if not (_is_number(value) and np.isfinite(value) and value > 0):
                raise ValueError(f"{name} scale must be a finite number > 0, got {value!r}")
            self.scales[name] = float(value)
        model = self.env.unwrapped.model
        for q in QUANTITIES:
            getattr(model, MODEL_FIELDS[q])[...] = self.base_values[q] * self.scales[q]
        self.steps_since_resample = 0

    @property
    def context(self) -> np.ndarray:
        """The current scales of the varied quantities, float32, in the order of ``context_names``."""
        return np.array([self.scales[q] for q in self.varied], dtype=np.float32)

    def _with_context(self, info: dict[str, Any]) -> dict[str, Any]:
        info = dict(info)
        info["context"] = self.context
        info["dynamics"] = {q: self.scales[q] for q in self.varied}
        return info

    # ----------------------------------------------------------------- exact resume
    def state_dict(self) -> dict[str, Any]:
        """Scales, modified model arrays, scale generator and step counter (plain Python types only)."""
        model = self.env.unwrapped.model
        return {
            "wrapper": type(self).__name__,
            "varied": list(self.varied),
            "scales": dict(self.scales),
            "model": {MODEL_FIELDS[q]: np.asarray(getattr(model, MODEL_FIELDS[q])).tolist() for q in QUANTITIES},
            "rng": self.dynamics_rng.bit_generator.state,
            "steps_since_resample": self.steps_since_resample,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()`` taken from the same preset (same base env and varied quantities)."""
        if state.get("wrapper") != type(self).__name__ or list(state.get("varied", [])) != list(self.varied):
            raise ValueError(
                f"state is for {state.get('wrapper')} varying {state.get('varied')}, "
                f"expected {type(self).__name__} varying {list(self.varied)}"
            )
        model = self.env.unwrapped.model
        arrays = {}
        for q in QUANTITIES:
            field = MODEL_FIELDS[q]
            arrays[field] = np.asarray(state["model"][field], dtype=np.float64)
            if arrays[field].shape != getattr(model, field).shape:
                raise ValueError(
                    f"saved model.{field} has shape {arrays[field].shape}, this env's {getattr(model, field).shape}"
                )
        for field, array in arrays.items():
            getattr(model, field)[...] = array
        self.scales = {q: float(state["scales"][q]) for q in QUANTITIES}
        self.dynamics_rng.bit_generator.state = state["rng"]
        self.steps_since_resample = int(state["steps_since_resample"])


# ----------------------------------------------------------------------------- presets
LIGHT_CHEETAH, HEAVY_CHEETAH = (0.2, 0.3), (1.7, 1.8)
ANT_TRAIN_VALUES: tuple[float, ...] = (0.85, 0.90, 0.95, 1.00)
ANT_TEST = (0.2, 0.6)
HOPPER_BASE, HOPPER_TRAIN_EXPONENT, HOPPER_TEST_EXPONENTS = 1.5, (-3.0, 3.0), ((-4.0, -3.0), (3.0, 4.0))


@dataclass(frozen=True)
class Preset:
    base_id: str
    train: dict[str, ScaleDistribution]
    test: dict[str, ScaleDistribution]


PRESETS: dict[str, Preset] = {
    "dynsac/RandomHalfCheetah-v0": Preset(
        "HalfCheetah-v5",
        train={q: ScaleDistribution(values=TRAIN_VALUES) for q in ("mass", "damping")},
        test={q: ScaleDistribution(intervals=(LIGHT_CHEETAH, HEAVY_CHEETAH)) for q in ("mass", "damping")},
    ),
    "dynsac/RandomAnt-v0": Preset(
        "Ant-v5",
        train={"mass": ScaleDistribution(values=ANT_TRAIN_VALUES)},
        test={"mass": ScaleDistribution(intervals=(ANT_TEST,))},
    ),
    "dynsac/RandomHopper-v0": Preset(
        "Hopper-v5",
        train={q: ScaleDistribution(intervals=(HOPPER_TRAIN_EXPONENT,), base=HOPPER_BASE) for q in QUANTITIES},
        test={q: ScaleDistribution(intervals=HOPPER_TEST_EXPONENTS, base=HOPPER_BASE) for q in QUANTITIES},
    ),
}


def make_preset(
    preset_id: str,
    split: str = "train",
    mass_range: ScaleSpec | None = None,
    damping_range: ScaleSpec | None = None,
    friction_range: ScaleSpec | None = None,
    resample_every: int | None = None,
    **env_kwargs: Any,
) -> RandomDynamicsMuJoCo:
    """Build a preset; a ``*_range`` replaces that quantity's distribution in both splits (and adds
    the quantity to the context if the preset did not vary it). ``env_kwargs`` go to the base env."""
    require_mujoco(preset_id)
    preset = PRESETS[preset_id]
    train, test = dict(preset.train), dict(preset.test)
    for quantity, spec in (("mass", mass_range), ("damping", damping_range), ("friction", friction_range)):
        if spec is not None:
            train[quantity] = test[quantity] = scale_distribution(f"{quantity}_range", spec)
    if split not in SPLITS:  # checked before the (slow) model load
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    base = gym.make(preset.base_id, **env_kwargs).unwrapped
    return RandomDynamicsMuJoCo(base, train, test, split=split, resample_every=resample_every)
