"""Tests of the built-in environments with per-episode dynamics (dynsac.envs)."""

from __future__ import annotations

import io
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from dynsac.envs import (
    RANDOM_LINEAR_ID,
    RANDOM_PENDULUM_ID,
    RandomLinearEnv,
    RandomPendulumEnv,
    register_envs,
)
from dynsac.envs.random_linear import TEST_RANGES, TRAIN_RANGES
from dynsac.envs.random_pendulum import TRAIN_VALUES

# Expected check_env warnings: RandomLinear's states are unbounded, and check_env on a
# gym.make() env always suggests checking the unwrapped env instead.
BENIGN_WARNINGS = ("infinity", "different from the unwrapped")


def _checked(env: gym.Env) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)
    unexpected = [str(w.message) for w in caught if not any(b in str(w.message) for b in BENIGN_WARNINGS)]
    assert not unexpected, unexpected


def _gain_policy(gain: np.ndarray):
    return lambda obs: np.clip(-gain @ obs.astype(np.float64), -1.0, 1.0).astype(np.float32)


def _random_return(env: RandomLinearEnv, seed: int) -> float:
    env.action_space.seed(seed)
    return env.evaluate_policy(lambda obs: env.action_space.sample(), seed=seed)


def _assert_plain(value: Any, where: str = "state_dict") -> None:
    """Only Python builtins, as torch.load(weights_only=True) needs."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str), f"{where}: key {key!r}"
            _assert_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _assert_plain(item, f"{where}[{i}]")
    else:
        assert value is None or type(value) in (int, float, bool, str), f"{where}: {type(value)}"


# ----------------------------------------------------------------------------- registration
def test_register_envs_is_idempotent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        register_envs()
        register_envs()
    assert gym.spec(RANDOM_LINEAR_ID).max_episode_steps is None  # the env truncates itself
    assert gym.spec(RANDOM_PENDULUM_ID).max_episode_steps == 200


@pytest.mark.parametrize("env_id", [RANDOM_LINEAR_ID, RANDOM_PENDULUM_ID])
def test_check_env(env_id):
    env = gym.make(env_id)
    _checked(env.unwrapped)
    _checked(gym.make(env_id))
    _checked(gym.make(env_id, split="test").unwrapped)


@pytest.mark.parametrize(("env_id", "length"), [(RANDOM_LINEAR_ID, 50), (RANDOM_PENDULUM_ID, 200)])
def test_made_env_truncates_once_at_episode_end(env_id, length):
    env = gym.make(env_id)
    env.action_space.seed(0)
    obs, info = env.reset(seed=0)
    context_dim = env.unwrapped.context_space.shape[0]
    for step in range(1, length + 1):
        assert env.observation_space.contains(obs)
        assert info["context"].dtype == np.float32 and info["context"].shape == (context_dim,)
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert not terminated and truncated == (step == length)
        assert np.isfinite(reward)


# ----------------------------------------------------------------------------- state_dict
def _rollout(env: gym.Env, actions: np.ndarray) -> list[tuple[np.ndarray, float, bool, np.ndarray]]:
    out = []
    for action in actions:
        obs, reward, _, truncated, info = env.step(action)
        out.append((obs, reward, truncated, info["context"]))
    return out


@pytest.mark.parametrize("env_cls", [RandomLinearEnv, RandomPendulumEnv])
@pytest.mark.parametrize("split", ["train", "test"])
def test_state_dict_resumes_bit_exactly_through_torch(env_cls, split):
    torch = pytest.importorskip("torch")
    env = env_cls(split=split)
    env.reset(seed=3)
    actions = np.random.default_rng(0).uniform(-1, 1, size=(20, env.action_space.shape[0])).astype(np.float32)
    _rollout(env, actions[:7])
    snapshot = env.state_dict()
    _assert_plain(snapshot)
    buffer = io.BytesIO()
    torch.save(snapshot, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    expected = _rollout(env, actions[7:])

    fresh = env_cls(split=split)
    fresh.reset(seed=99)
    fresh.load_state_dict(loaded)
    for (obs, reward, truncated, context), (obs2, reward2, truncated2, context2) in zip(
        expected, _rollout(fresh, actions[7:])
    ):
        assert np.array_equal(obs, obs2) and reward == reward2 and truncated == truncated2
        assert np.array_equal(context, context2)
    # The random generator was restored too: the next episodes coincide.
    assert np.array_equal(env.reset()[0], fresh.reset()[0])


def test_load_state_dict_rejects_another_env():
    linear, pendulum = RandomLinearEnv(), RandomPendulumEnv()
    linear.reset(seed=0)
    pendulum.reset(seed=0)
    with pytest.raises(ValueError, match="RandomLinearEnv"):
        pendulum.load_state_dict(linear.state_dict())
    with pytest.raises(ValueError, match="state_dim"):
        RandomLinearEnv(state_dim=3).load_state_dict(linear.state_dict())


# ----------------------------------------------------------------------------- RandomLinear
@pytest.mark.parametrize(("split", "seeds"), [("train", range(6)), ("test", range(3))])
def test_lqr_beats_perturbed_gains(split, seeds):
    env = RandomLinearEnv(split=split)
    for seed in seeds:
        env.reset(seed=seed)
        gain = env.lqr_gain
        optimal = env.optimal_return(seed=seed)
        jitter = np.random.default_rng(seed).standard_normal(gain.shape)
        for perturbed in (0.8 * gain, 1.2 * gain, gain + 0.05 * jitter):
            assert env.evaluate_policy(_gain_policy(perturbed), seed=seed) < optimal, seed


def test_optimal_return_matches_a_manual_rollout_and_leaves_env_alone():
    env = RandomLinearEnv()
    obs, _ = env.reset(seed=5)
    before = env.state_dict()
    optimal = env.optimal_return(seed=5)
    assert env.optimal_return() == optimal  # seed=None: from the current state (t = 0 here)
    assert env.state_dict() == before
    total, truncated = 0.0, False
    while not truncated:
        obs, reward, _, truncated, _ = env.step(env.optimal_action(obs))
        total += reward
    assert total == optimal


def test_random_policy_return_is_of_order_minus_one_million():
    env = RandomLinearEnv()
    for seed in range(5):
        random_return = _random_return(env, seed)
        assert -1e7 < random_return < -1e5, (seed, random_return)
        assert env.optimal_return(seed=seed) > random_return / 30, seed


def test_lqr_rarely_saturates():
    env = RandomLinearEnv()
    saturated = total = 0
    for seed in range(10):
        obs, _ = env.reset(seed=seed)
        for _ in range(env.episode_length):
            saturated += int(np.sum(np.abs(env.lqr_gain @ obs.astype(np.float64)) > 1.0))
            total += env.action_dim
            obs, *_ = env.step(env.optimal_action(obs))
    assert saturated / total < 0.01


def test_noise_does_not_depend_on_actions():
    def noises(actions_seed: int) -> np.ndarray:
        env = RandomLinearEnv()
        x, _ = env.reset(seed=1)
        rng = np.random.default_rng(actions_seed)
        out = []
        for _ in range(10):
            u = rng.uniform(-1, 1, env.action_dim)
            x_before = env.state_dict()["x"]
            x, *_ = env.step(u.astype(np.float32))
            u64 = u.astype(np.float32).astype(np.float64)
            out.append(np.array(env.state_dict()["x"]) - env.A @ x_before - env.B @ u64)
        return np.array(out)

    np.testing.assert_allclose(noises(0), noises(1), atol=1e-12)


@pytest.mark.parametrize(("split", "ranges"), [("train", TRAIN_RANGES), ("test", TEST_RANGES)])
def test_linear_parameters_stay_in_split_ranges_and_match_context(split, ranges):
    env = RandomLinearEnv(split=split)
    env.reset(seed=0)
    seen = []
    for _ in range(30):
        obs, info = env.reset()
        dynamics = info["dynamics"]
        for name, (low, high) in ranges.items():
            assert low <= dynamics[name] <= high, (name, dynamics[name])
        expected = np.array([dynamics[k] for k in ("drift", "rotation", "gain")], dtype=np.float32)
        assert np.array_equal(info["context"], expected) and np.array_equal(env.context, expected)
        assert env.context_space.contains(info["context"])
        assert np.isclose(np.max(np.abs(np.linalg.eigvals(env.A))), dynamics["drift"])
        _, _, _, _, step_info = env.step(env.action_space.sample())
        assert np.array_equal(step_info["context"], expected)
        seen.append(expected)
    assert len({tuple(c) for c in seen}) == len(seen)


def test_train_and_test_ranges_are_disjoint():
    for name in TRAIN_RANGES:
        (train_low, train_high), (test_low, test_high) = TRAIN_RANGES[name], TEST_RANGES[name]
        assert train_high <= test_low or test_high <= train_low, name


def test_explicit_range_overrides_split_default():
    env = RandomLinearEnv(split="test", gain_range=(2.0, 2.0))
    _, info = env.reset(seed=0)
    assert info["dynamics"]["gain"] == 2.0
    assert TEST_RANGES["drift"][0] <= info["dynamics"]["drift"] <= TEST_RANGES["drift"][1]


def test_linear_reset_is_reproducible_from_seed():
    a, b = RandomLinearEnv(), RandomLinearEnv()
    obs_a, info_a = a.reset(seed=7)
    obs_b, info_b = b.reset(seed=7)
    assert np.array_equal(obs_a, obs_b) and np.array_equal(info_a["context"], info_b["context"])
    assert np.array_equal(a.step(a.optimal_action(obs_a))[0], b.step(b.optimal_action(obs_b))[0])


def test_linear_custom_dimensions():
    env = RandomLinearEnv(state_dim=3, action_dim=2, episode_length=5)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (3,) and env.action_space.shape == (2,)
    assert env.lqr_gain.shape == (2, 3)
    assert np.isfinite(env.optimal_return(seed=0))


# ----------------------------------------------------------------------------- RandomPendulum
def test_pendulum_with_unit_mass_and_length_is_pendulum_v1():
    ours = gym.make(RANDOM_PENDULUM_ID, mass_range=(1.0, 1.0), length_range=(1.0, 1.0))
    reference = gym.make("Pendulum-v1")
    obs, _ = ours.reset(seed=11)
    ref_obs, _ = reference.reset(seed=11)
    assert np.array_equal(obs, ref_obs)
    actions = np.random.default_rng(0).uniform(-1, 1, size=(200, 1)).astype(np.float32)
    for action in actions:
        obs, reward, _, truncated, _ = ours.step(action)
        ref_obs, ref_reward, _, ref_truncated, _ = reference.step(2.0 * action)
        assert np.array_equal(obs, ref_obs) and reward == ref_reward and truncated == ref_truncated


def test_pendulum_train_split_uses_the_cadm_grid():
    env = RandomPendulumEnv(split="train")
    env.reset(seed=0)
    masses, lengths = set(), set()
    for _ in range(200):
        _, info = env.reset()
        assert info["dynamics"]["mass"] in TRAIN_VALUES and info["dynamics"]["length"] in TRAIN_VALUES
        masses.add(env.m)
        lengths.add(env.l)
    assert masses == lengths == set(TRAIN_VALUES)
    assert np.allclose(TRAIN_VALUES, np.linspace(0.75, 1.25, 11))


def test_pendulum_test_split_draws_both_extrapolation_modes():
    env = RandomPendulumEnv(split="test")
    env.reset(seed=0)
    light_long = heavy_short = 0
    for _ in range(100):
        _, info = env.reset()
        m, l = info["dynamics"]["mass"], info["dynamics"]["length"]
        if 0.2 <= m <= 0.4:
            assert 1.6 <= l <= 1.8
            light_long += 1
        else:
            assert 1.6 <= m <= 1.8 and 0.2 <= l <= 0.4
            heavy_short += 1
        assert env.context_space.contains(info["context"])
    assert light_long > 20 and heavy_short > 20


def test_pendulum_dynamics_change_between_resets_and_match_context():
    env = RandomPendulumEnv(mass_range=(0.5, 1.5))
    env.reset(seed=0)
    contexts = []
    for _ in range(10):
        _, info = env.reset()
        assert np.array_equal(info["context"], np.array([env.m, env.l], dtype=np.float32))
        _, _, _, _, step_info = env.step(np.zeros(1, dtype=np.float32))
        assert np.array_equal(step_info["context"], info["context"])
        assert 0.5 <= env.m <= 1.5 and env.l in TRAIN_VALUES
        contexts.append(tuple(info["context"]))
    assert len(set(contexts)) == len(contexts)


def test_pendulum_dynamics_affect_the_motion():
    def first_velocity(mass: float, length: float) -> float:
        env = RandomPendulumEnv(mass_range=(mass, mass), length_range=(length, length))
        env.reset(seed=0)
        return float(env.step(np.ones(1, dtype=np.float32))[0][2])

    assert first_velocity(1.0, 1.0) != first_velocity(0.3, 1.0) != first_velocity(0.3, 1.7)


# ----------------------------------------------------------------------------- bad kwargs
@pytest.mark.parametrize(
    ("env_cls", "kwargs", "message"),
    [
        (RandomLinearEnv, {"split": "valid"}, r"split must be one of \['test', 'train'\], got 'valid'"),
        (RandomLinearEnv, {"state_dim": 0}, "state_dim must be a positive integer, got 0"),
        (RandomLinearEnv, {"action_dim": -3}, "action_dim must be a positive integer, got -3"),
        (RandomLinearEnv, {"action_dim": 2.5}, "action_dim must be a positive integer, got 2.5"),
        (RandomLinearEnv, {"episode_length": 0}, "episode_length must be a positive integer"),
        (RandomLinearEnv, {"noise_std": -0.1}, "noise_std must be a finite number >= 0, got -0.1"),
        (RandomLinearEnv, {"cost_scale": 0}, "cost_scale must be a finite number > 0, got 0"),
        (RandomLinearEnv, {"drift_range": (1.1, 0.9)}, r"drift_range must satisfy low <= high.*\(1.1, 0.9\)"),
        (RandomLinearEnv, {"gain_range": (0.0, 1.0)}, r"gain_range must have low > 0.0, got \(0.0, 1.0\)"),
        (RandomLinearEnv, {"rotation_range": (0.1,)}, "rotation_range must be a .low, high. pair"),
        (RandomPendulumEnv, {"split": "eval"}, r"split must be one of \['train', 'test'\], got 'eval'"),
        (RandomPendulumEnv, {"mass_range": (2.0, 1.0)}, r"mass_range must satisfy low <= high"),
        (RandomPendulumEnv, {"length_range": (-1.0, 1.0)}, r"length_range must have low > 0.0"),
        (RandomPendulumEnv, {"length_range": "long"}, "length_range must be a .low, high. pair"),
    ],
)
def test_bad_kwargs_raise_informative_value_error(env_cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        env_cls(**kwargs)
