import subprocess
import sys

import pytest

from dynsac import TrainingParams
from dynsac.config import ConfigError, load_config


def write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_and_omitted_fields():
    config = load_config(None)
    assert config.training.reward_scale == 1.0
    assert config.training.learning_rate == 3e-4
    assert isinstance(config.training, TrainingParams)


def test_yaml_scientific_notation_is_a_float(tmp_path):
    config = load_config(write(tmp_path, "training:\n  learning_rate: 3e-5\nenv:\n  kwargs:\n    scale: 1e6\n"))
    assert config.training.learning_rate == 3e-5
    assert config.env.kwargs["scale"] == 1e6 and isinstance(config.env.kwargs["scale"], float)


def test_set_overrides_reach_fields_and_free_mappings(tmp_path):
    path = write(tmp_path, "training:\n  learning_rate: 0.001\n")
    config = load_config(path, ["training.learning_rate=1e-5", "env.kwargs.scale=1e6", "env.kwargs.name=abc",
                                "training.hidden_sizes=[64, 64]", "training.max_grad_norm=null"])
    assert config.training.learning_rate == 1e-5
    assert config.env.kwargs == {"scale": 1e6, "name": "abc"}
    assert config.training.hidden_sizes == [64, 64]
    assert config.training.max_grad_norm is None


@pytest.mark.parametrize(
    "override, expected",
    [
        ("training.learning_rate=0", "training.learning_rate = 0: out of range; allowed: 0 < value <= 1"),
        ("training.learning_rate=-1e-3", "training.learning_rate = -0.001"),
        ("training.tau=1.5", "training.tau = 1.5: out of range; allowed: 0 < value <= 1"),
        ("training.tau=0", "allowed: 0 < value <= 1"),
        ("training.gamma=1.0", "training.gamma = 1.0: out of range; allowed: 0 <= value < 1"),
        ("training.batch_size=abc", "training.batch_size = 'abc'"),
        ("training.device=tpu", "training.device = 'tpu'"),
        ("training.alpha=-0.1", "must be 'auto' or a number > 0"),
        ("training.hidden_sizes=[64, 0]", "every layer size must be >= 1"),
    ],
)
def test_out_of_range_values_are_named(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert expected in str(err.value)


def test_batch_larger_than_buffer():
    with pytest.raises(ConfigError, match=r"batch_size \(512\) must not exceed buffer_size \(100\)"):
        load_config(None, ["training.batch_size=512", "training.buffer_size=100"])


def test_unknown_keys_get_did_you_mean(tmp_path):
    path = write(tmp_path, "training:\n  lerning_rate: 1e-4\nloging:\n  dir: x\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message
    assert "training.lerning_rate: unknown key; did you mean 'learning_rate'?" in message
    assert "loging: unknown key; did you mean 'logging'?" in message


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["training.tau=2", "training.gamma=-1"])
    assert "training.tau" in str(err.value) and "training.gamma" in str(err.value)


@pytest.mark.parametrize(
    "text, expected",
    [("training: [1, 2\n", "not valid YAML"), ("- a\n- b\n", "top level must be a mapping")],
)
def test_broken_files(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("override", ["training.learning_rate", "=3", "training..tau=1"])
def test_malformed_set(override):
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        load_config(None, [override])


def test_set_through_a_scalar_is_refused():
    with pytest.raises(ConfigError, match="training.tau holds"):
        load_config(None, ["training.tau=0.1", "training.tau.x=1"])


def test_cli_config_error_exits_2_without_traceback(tmp_path, subprocess_env):
    path = write(tmp_path, "training:\n  tau: 3\n")
    result = subprocess.run(
        [sys.executable, "-m", "dynsac.cli", "train", "--config", str(path)],
        capture_output=True, text=True, env=subprocess_env, timeout=120,
    )
    assert result.returncode == 2
    assert "training.tau = 3: out of range; allowed: 0 < value <= 1" in result.stderr
    assert "Traceback" not in result.stderr
