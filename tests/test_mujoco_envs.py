"""MuJoCo bodies with varying dynamics (dynsac.envs.mujoco_dynamics): presets, splits, resume, training."""

from __future__ import annotations

import io
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("mujoco")

import gymnasium as gym  # noqa: E402
from gymnasium.utils.env_checker import check_env  # noqa: E402

from dynsac import SACTrainer  # noqa: E402
from dynsac.config import load_config  # noqa: E402
from dynsac.envs import registration  # noqa: E402
from dynsac.envs import mujoco_dynamics as md  # noqa: E402
from dynsac.envs.factory import EnvError, accepts_kwarg, make_env  # noqa: E402
from dynsac.envs.state import capture_env_state, restore_env_state  # noqa: E402
from dynsac.envs.random_pendulum import TRAIN_VALUES  # noqa: E402

from conftest import tiny_overrides  # noqa: E402

CHEETAH, ANT, HOPPER = registration.RANDOM_HALF_CHEETAH_ID, registration.RANDOM_ANT_ID, registration.RANDOM_HOPPER_ID
PRESET_IDS = [CHEETAH, ANT, HOPPER]
VARIED = {CHEETAH: ("mass", "damping"), ANT: ("mass",), HOPPER: ("mass", "damping", "friction")}
BENIGN_WARNINGS = ("infinity", "different from the unwrapped")


def dynamics_wrapper(env: gym.Env) -> md.RandomDynamicsMuJoCo:
    while not isinstance(env, md.RandomDynamicsMuJoCo):
        env = env.env
    return env


def assert_model_matches(wrapper: md.RandomDynamicsMuJoCo, context: np.ndarray) -> None:
    """The model arrays are exactly cached * scale, and the context gives those scales."""
    model = wrapper.unwrapped.model
    for q, field in md.MODEL_FIELDS.items():
        scale = wrapper.scales[q] if q in wrapper.varied else 1.0
        np.testing.assert_array_equal(getattr(model, field), wrapper.base_values[q] * scale)
    expected = np.array([wrapper.scales[q] for q in wrapper.varied], dtype=np.float32)
    np.testing.assert_array_equal(context, expected)


# ----------------------------------------------------------------------------- registration, check_env
def test_presets_registered_without_importing_mujoco(subprocess_env):
    for env_id in PRESET_IDS:
        assert gym.spec(env_id).max_episode_steps == 1000
    code = ("import sys, gymnasium, dynsac, dynsac.envs; "
            "print('mujoco' in sys.modules, 'dynsac/RandomAnt-v0' in gymnasium.registry)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env, timeout=120)
    assert out.stdout.split() == ["False", "True"], out.stderr


@pytest.mark.parametrize("env_id", PRESET_IDS)
def test_check_env(env_id):
    for env in (gym.make(env_id), gym.make(env_id, split="test"), dynamics_wrapper(gym.make(env_id))):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(env, skip_render_check=True)  # no display for MuJoCo's human renderer
        unexpected = [str(w.message) for w in caught if not any(b in str(w.message) for b in BENIGN_WARNINGS)]
        assert not unexpected, unexpected
        assert accepts_kwarg(env, "split")  # so `dynsac eval` reports train and test dynamics


# ----------------------------------------------------------------------------- dynamics and context
@pytest.mark.parametrize("env_id", PRESET_IDS)
def test_model_is_rescaled_at_every_reset_and_context_matches(env_id):
    env = gym.make(env_id)
    wrapper = dynamics_wrapper(env)
    assert wrapper.varied == VARIED[env_id]
    assert wrapper.context_names == tuple(f"{q}_scale" for q in VARIED[env_id])
    env.reset(seed=0)
    masses, contexts = set(), []
    for _ in range(12):
        _, info = env.reset()
        context = info["context"]
        assert context.dtype == np.float32 and context.shape == (len(VARIED[env_id]),)
        assert info["dynamics"] == {q: wrapper.scales[q] for q in VARIED[env_id]}
        assert wrapper.context_space.contains(context)
        assert_model_matches(wrapper, context)
        for _ in range(3):
            *_, step_info = env.step(env.action_space.sample())
            np.testing.assert_array_equal(step_info["context"], context)
        assert_model_matches(wrapper, context)  # no change mid-episode without resample
        masses.add(float(wrapper.unwrapped.model.body_mass[1]))
        contexts.append(tuple(context))
    assert len(masses) > 2 and len(set(contexts)) > 2


def test_quantities_not_varied_keep_their_xml_values():
    env = gym.make(ANT)
    wrapper = dynamics_wrapper(env)
    env.reset(seed=0)
    for _ in range(5):
        env.reset()
        np.testing.assert_array_equal(wrapper.unwrapped.model.dof_damping, wrapper.base_values["damping"])
        np.testing.assert_array_equal(wrapper.unwrapped.model.geom_friction, wrapper.base_values["friction"])
    assert wrapper.base_values["friction"].shape == wrapper.unwrapped.model.geom_friction.shape


def test_dynamics_change_the_motion():
    def velocities(scales):
        env = md.make_preset("dynsac/RandomHalfCheetah-v0")
        env.reset(seed=0)
        env.set_scales(**scales)
        for _ in range(20):
            obs, *_ = env.step(np.ones(6, dtype=np.float32))
        return obs

    nominal = velocities({"mass": 1.0, "damping": 1.0})
    assert not np.allclose(nominal, velocities({"mass": 0.2, "damping": 1.0}))
    assert not np.allclose(nominal, velocities({"mass": 1.0, "damping": 1.8}))


def _draws(env_id: str, split: str, resets: int) -> np.ndarray:
    env = gym.make(env_id, split=split)
    env.reset(seed=1)
    return np.array([env.reset()[1]["context"] for _ in range(resets)], dtype=np.float64)


def test_half_cheetah_splits_follow_cadm():
    train = _draws(CHEETAH, "train", 300)
    assert set(np.round(train.ravel(), 6)) == set(np.round(TRAIN_VALUES, 6))  # the whole grid, nothing else
    test = _draws(CHEETAH, "test", 300).ravel()
    light, heavy = (test >= 0.2 - 1e-6) & (test <= 0.3 + 1e-6), (test >= 1.7 - 1e-6) & (test <= 1.8 + 1e-6)
    assert np.all(light | heavy) and light.mean() > 0.35 and heavy.mean() > 0.35


def test_ant_splits():
    train = _draws(ANT, "train", 100)
    assert set(np.round(train.ravel(), 6)) == {0.85, 0.9, 0.95, 1.0}
    test = _draws(ANT, "test", 200).ravel()
    assert test.min() >= 0.2 - 1e-6 and test.max() <= 0.6 + 1e-6
    assert (test < 0.4).mean() > 0.35 and (test > 0.4).mean() > 0.35


def test_hopper_splits_are_disjoint_in_the_exponent():
    train_exponents = np.log(_draws(HOPPER, "train", 200)) / np.log(1.5)
    assert train_exponents.min() >= -3 - 1e-6 and train_exponents.max() <= 3 + 1e-6
    assert train_exponents.min() < -2.5 and train_exponents.max() > 2.5
    test_exponents = np.abs(np.log(_draws(HOPPER, "test", 200)) / np.log(1.5))
    assert test_exponents.min() >= 3 - 1e-6 and test_exponents.max() <= 4 + 1e-6


def test_reset_is_reproducible_from_seed():
    a, b = gym.make(CHEETAH, split="test"), gym.make(CHEETAH, split="test")
    a.action_space.seed(0)
    actions = [a.action_space.sample() for _ in range(10)]
    runs = []
    for env in (a, b):
        obs, info = env.reset(seed=7)
        trace = [obs, info["context"]]
        for action in actions:
            trace.append(env.step(action)[0])
        trace += [env.reset()[1]["context"], env.reset(seed=7)[1]["context"]]
        runs.append(trace)
    for x, y in zip(*runs):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(runs[0][1], runs[0][-1])
    assert not np.array_equal(a.reset(seed=8)[1]["context"], runs[0][1])


def test_resample_mid_episode():
    env = gym.make(CHEETAH, resample_every=5)
    wrapper = dynamics_wrapper(env)
    _, info = env.reset(seed=0)
    contexts = [info["context"]]
    for _ in range(15):
        *_, info = env.step(env.action_space.sample())
        contexts.append(info["context"])
        assert_model_matches(wrapper, info["context"])
    # New dynamics after steps 5, 10 and 15; the step's info already gives the new scales.
    for start in (0, 5, 10):
        for t in range(start + 1, start + 5):
            np.testing.assert_array_equal(contexts[t], contexts[start])
    assert len({tuple(contexts[t]) for t in (0, 5, 10, 15)}) > 1
    context = wrapper.resample()
    assert_model_matches(wrapper, context)
    assert wrapper.steps_since_resample == 0


# ----------------------------------------------------------------------------- resume
def test_state_capture_restores_dynamics_exactly_through_torch():
    torch = pytest.importorskip("torch")
    source = gym.make(HOPPER, split="test", resample_every=6)
    source.reset(seed=3)
    source.action_space.seed(0)
    actions = [source.action_space.sample() * 0.1 for _ in range(12)]
    for action in actions[:8]:
        source.step(action)
    buffer = io.BytesIO()
    torch.save(capture_env_state(source), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    expected = [source.step(action) for action in actions[8:]]

    target = gym.make(HOPPER, split="test", resample_every=6)
    target.reset(seed=99)
    restore_env_state(target, saved)
    src, dst = dynamics_wrapper(source), dynamics_wrapper(target)
    assert dst.steps_since_resample == 2
    for (obs, reward, term, trunc, info), action in zip(expected, actions[8:]):
        obs2, reward2, term2, trunc2, info2 = target.step(action)
        np.testing.assert_allclose(obs2, obs, rtol=1e-9, atol=1e-9)
        assert math.isclose(reward2, reward, rel_tol=1e-9, abs_tol=1e-9) and (term2, trunc2) == (term, trunc)
        np.testing.assert_array_equal(info2["context"], info["context"])  # includes a resample at step 12
    assert_model_matches(dst, dst.context)
    for q in md.QUANTITIES:
        np.testing.assert_array_equal(getattr(dst.unwrapped.model, md.MODEL_FIELDS[q]),
                                      getattr(src.unwrapped.model, md.MODEL_FIELDS[q]))
    # Both generators were restored: the next episodes coincide.
    (obs_a, info_a), (obs_b, info_b) = source.reset(), target.reset()
    np.testing.assert_array_equal(obs_a, obs_b)
    np.testing.assert_array_equal(info_a["context"], info_b["context"])


def test_restore_refuses_another_preset():
    cheetah, ant = gym.make(CHEETAH), gym.make(ANT)
    cheetah.reset(seed=0)
    ant.reset(seed=0)
    with pytest.raises(ValueError, match=r"varying \['mass', 'damping'\], expected RandomDynamicsMuJoCo varying \['mass'\]"):
        dynamics_wrapper(ant).load_state_dict(dynamics_wrapper(cheetah).state_dict())
    with pytest.raises(ValueError, match="stateful wrapper"):
        restore_env_state(gym.make(CHEETAH), {**capture_env_state(cheetah), "wrappers": []})


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "valid"}, r"split must be one of \['train', 'test'\], got 'valid'"),
        ({"mass_range": (2.0, 1.0)}, r"mass_range must satisfy low <= high"),
        ({"damping_range": (0.0, 1.0)}, r"damping_range must have low > 0.0"),
        ({"friction_range": "heavy"}, r"friction_range must be \(low, high\) with 0 < low <= high, a list of such"),
        ({"mass_range": [[0.2, 0.3], [1.8, 1.7]]}, r"mass_range\[1\] must satisfy low <= high"),
        ({"mass_range": {"values": []}}, r"mass_range\['values'\] must be a non-empty list of finite numbers > 0"),
        ({"mass_range": {"base": 1, "exponent": [-1, 1]}}, r"mass_range\['base'\] must be a finite number > 0 and != 1"),
        ({"mass_range": {"low": 1}}, r"mass_range must be .*\{'values': .*got a mapping with keys \['low'\]"),
        ({"resample_every": 0}, "resample_every must be a positive integer or null, got 0"),
    ],
)
def test_bad_kwargs_name_the_kwarg_and_valid_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        md.make_preset("dynsac/RandomHalfCheetah-v0", **kwargs)
    with pytest.raises(EnvError, match=message):  # through the config path: exit status 2, no traceback
        make_env(CHEETAH, kwargs)


def test_range_forms_and_overrides():
    env = md.make_preset("dynsac/RandomHalfCheetah-v0", split="test", mass_range={"values": [0.5]}, friction_range=[[0.5, 0.6], [2.0, 2.1]])
    assert env.varied == ("mass", "damping", "friction")
    _, info = env.reset(seed=0)
    assert info["context"][0] == 0.5 and 0.2 <= info["context"][1] <= 1.8
    assert 0.5 <= info["context"][2] <= 0.6 or 2.0 <= info["context"][2] <= 2.1
    logged = md.scale_distribution("x", {"base": 2, "exponent": [1, 2]})
    assert (logged.low, logged.high) == (2.0, 4.0) and logged.contains(3.0) and not logged.contains(4.5)
    with pytest.raises(ValueError, match=r"'length' is not varied by this env; varied: \['mass', 'damping', 'friction'\]"):
        env.set_scales(length=1.0)
    with pytest.raises(ValueError, match="mass scale must be a finite number > 0"):
        env.set_scales(mass=-1.0)
    with pytest.raises(ValueError, match="needs a MuJoCo env"):
        md.RandomDynamicsMuJoCo(gym.make("Pendulum-v1"), {"mass": (1, 2)})
    with pytest.raises(ValueError, match=r"unknown quantities \['gravity'\]"):
        md.RandomDynamicsMuJoCo(env.unwrapped, {"gravity": (1, 2)})


def test_missing_mujoco_names_the_extra(monkeypatch):
    monkeypatch.setattr(registration, "mujoco_available", lambda: False)
    monkeypatch.setattr(md, "mujoco_available", lambda: False)
    monkeypatch.delitem(gym.registry, CHEETAH)
    with pytest.raises(EnvError, match=r"env.id = 'dynsac/RandomHalfCheetah-v0' needs MuJoCo.*pip install -e '\.\[mujoco\]'"):
        make_env(CHEETAH)
    assert CHEETAH not in gym.registry  # not registered without mujoco
    with pytest.raises(md.MuJoCoNotInstalled, match=r"pip install -e '\.\[mujoco\]'"):
        md.make_preset("dynsac/RandomAnt-v0")


# ----------------------------------------------------------------------------- training
def test_tiny_half_cheetah_run_trains_resumes_and_evaluates_on_both_splits(tmp_path, capsys):
    from dynsac.cli import main

    overrides = tiny_overrides(tmp_path, **{
        "env.id": CHEETAH, "env.max_episode_steps": 60, "env.eval_kwargs": "{split: test}",
        "context.source": "env", "training.total_steps": 200, "training.learning_starts": 50,
        "training.checkpoint_interval": 100, "training.eval_interval": 200,
    })
    trainer = SACTrainer(load_config(None, overrides))
    assert trainer.context_dim == 2
    result = trainer.train()
    assert result.steps == 200 and np.isfinite(result.final_eval.mean)
    assert result.final_eval.lengths == [60]
    assert trainer.num_updates > 0

    checkpoint = tmp_path / "checkpoints" / "sac_step_200.pt"
    saved_scales = dict(dynamics_wrapper(trainer.env).scales)
    resumed = SACTrainer.from_checkpoint(checkpoint, overrides=["training.total_steps=260"])
    assert dynamics_wrapper(resumed.env).scales == saved_scales  # continues in the same dynamics
    assert_model_matches(dynamics_wrapper(resumed.env), dynamics_wrapper(resumed.env).context)
    assert resumed.train().steps == 260

    for split in ("train", "test"):
        evaluation = resumed.evaluate(1, {"split": split})
        assert evaluation.lengths == [60] and np.isfinite(evaluation.mean)
        assert main(["eval", str(checkpoint), "--episodes", "1", "--set", f"env.eval_kwargs.split={split}"]) == 0
    assert "RandomHalfCheetah" in capsys.readouterr().out
