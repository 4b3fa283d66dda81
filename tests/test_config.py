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


def test_critics_learn_at_five_thirds_of_learning_rate_unless_set(tmp_path):
    rates = lambda config: (config.training.actor_lr, config.training.critic_lr)  # noqa: E731
    assert rates(load_config(None)) == (3e-4, 5e-4)
    # Lowering learning_rate (the users' remedy, a 10x lower rate) slows the critics alike.
    assert rates(load_config(write(tmp_path, "training:\n  learning_rate: 3.0e-5\n"))) == (3e-5, 5e-5)
    assert rates(load_config(None, ["training.learning_rate=1e-4", "training.critic_learning_rate=2e-4"])) == (
        1e-4, 2e-4)
    assert TrainingParams(learning_rate=1.2e-3).critic_lr == pytest.approx(2e-3, rel=1e-12)
    assert load_config(None).model_dump()["training"]["critic_learning_rate"] is None


def test_checkpoints_from_before_the_critic_ratio_keep_their_critic_rate():
    from dynsac.training.checkpoint import migrate

    old = {"format_version": 9, "config": {"training": {"learning_rate": 1e-4, "critic_learning_rate": None}}}
    assert migrate(old)["config"]["training"]["critic_learning_rate"] == 1e-4
    kept = {"format_version": 9, "config": {"training": {"learning_rate": 1e-4, "critic_learning_rate": 7e-4}}}
    assert migrate(kept)["config"]["training"]["critic_learning_rate"] == 7e-4


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
        # sizes and floats the trainer cannot honour
        ("context.encoder_hidden_sizes=[256,-4]",
         "context.encoder_hidden_sizes = [256, -4]: every layer size must be >= 1"),
        ("context.model_hidden_sizes=[0]", "context.model_hidden_sizes = [0]: every layer size must be >= 1"),
        ("training.critic_hidden_sizes=[65537]", "training.critic_hidden_sizes = [65537]: every layer size must be"),
        ("training.num_envs=999999999999",
         "training.num_envs = 999999999999: out of range; allowed: 1 <= value <= 1024"),
        ("context.history_length=10001", "context.history_length = 10001: out of range; allowed: 1 <= value <= 10000"),
        ("training.alpha=.nan", "training.alpha"),
        ("training.stop_at=.inf", "training.stop_at = inf: Input should be a finite number"),
        ("training.seed=4294967296", "training.seed = 4294967296: out of range"),
        ("logging.dir=''", "logging.dir = '': must name a folder"),
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


# ----------------------------------------------------------------------------- bounds and resources
def test_a_list_of_too_many_layers_is_refused():
    with pytest.raises(ConfigError, match=r"training.hidden_sizes = \[8, .*at most 16 items"):
        load_config(None, ["training.hidden_sizes=[" + ",".join(["8"] * 17) + "]"])


def test_a_replay_buffer_that_cannot_fit_is_refused_up_front(tiny_config, monkeypatch):
    from dynsac.training import SACTrainer, resources

    monkeypatch.setattr(resources, "host_memory_available", lambda: (2_000_000_000, "a test's 2 GB"))
    # 10^12 transitions: were the check missing, the allocation itself would fail at once.
    config = tiny_config(**{"training.buffer_size": 10**12, "training.device": "cpu"})
    with pytest.raises(ConfigError) as err:
        SACTrainer(config)
    message = str(err.value)
    assert message.startswith("training.buffer_size = 1000000000000: the replay buffer would take 45.0 TB")
    assert "obs 12.0 TB" in message and "episode_id 8.0 TB" in message
    assert "but 2.0 GB (2,000,000,000 bytes) are available (a test's 2 GB)" in message
    most = int(message.split("at most ~")[1].split(" ")[0].replace(",", ""))
    assert 40_000_000 < most < 2_000_000_000 // 45
    assert "lower training.buffer_size" in message and " bytes) of host memory" in message
    # The largest buffer it names fits, one more does not (checked without allocating either).
    resources.check_resources(tiny_config(**{"training.buffer_size": most, "training.device": "cpu"}), 3, 1, 0)
    with pytest.raises(ConfigError):
        resources.check_resources(tiny_config(**{"training.buffer_size": most + 1, "training.device": "cpu"}), 3, 1, 0)


@pytest.mark.parametrize(
    "overrides, knob",
    [
        ({"training.hidden_sizes": "[65536, 65536]"}, "training.hidden_sizes = [65536, 65536]: the critics"),
        ({"training.actor_hidden_sizes": "[65536, 65536]"}, "training.actor_hidden_sizes = [65536, 65536]: the policy"),
        ({"context.source": "learned", "context.encoder_hidden_sizes": "[65536, 65536]"},
         "context.encoder_hidden_sizes = [65536, 65536]: the dynamics-map encoder"),
        ({"context.source": "learned", "context.history_length": 10_000, "training.batch_size": 100_000,
          "training.buffer_size": 100_000}, "training.batch_size = 100000: one update's working memory"),
    ],
)
def test_networks_and_batches_that_cannot_fit_name_their_field(tiny_config, monkeypatch, overrides, knob):
    from dynsac.training import resources

    monkeypatch.setattr(resources, "host_memory_available", lambda: (2_000_000_000, "a test's 2 GB"))
    config = tiny_config(**{"training.device": "cpu", **overrides})
    with pytest.raises(ConfigError) as err:
        resources.check_resources(config, obs_dim=3, action_dim=1, context_dim=config.context.dim
                                  if config.context.source == "learned" else 0)
    assert str(err.value).startswith(knob)
    assert "GB" in str(err.value) and "bytes) are available" in str(err.value)


def test_memory_estimate_matches_what_is_allocated(tiny_config):
    from dynsac.training import SACTrainer
    from dynsac.training.resources import estimate_memory

    for extra in ({}, {"context.source": "learned", "context.history_length": 4}, {"training.critic_loss": "mse"},
                  {"training.network": "simba", "training.num_critics": 3}, {"training.crossq": True},
                  {"env.id": "dynsac/RandomPendulum-v0", "context.source": "env", "training.critic_layer_norm": True}):
        trainer = SACTrainer(tiny_config(**{"training.device": "cpu", **extra}))
        parts = {part.name: part for part in estimate_memory(trainer.config, trainer.obs_dim, trainer.action_dim,
                                                             trainer.context_dim)}
        assert parts["the replay buffer"].nbytes == trainer.buffer.nbytes()
        count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
        assert f"{count(trainer.agent.policy):,} parameters" in parts["the policy"].detail
        assert f"{count(trainer.agent.critic):,} parameters" in parts["the critics"].detail
        if trainer.agent.dynamics_map is not None:
            encoder = count(trainer.agent.dynamics_map.encoder)
            assert f"{encoder:,} parameters" in parts["the dynamics-map encoder"].detail


def test_on_cuda_the_device_memory_is_what_the_buffer_must_fit(tiny_config, monkeypatch):
    """Without a GPU here: the CUDA path with its free memory faked (buffer, networks and batches
    live on the device, the acting windows on the host)."""
    from dynsac.training import resources

    monkeypatch.setattr(resources, "_uses_cuda", lambda config: True)
    monkeypatch.setattr(resources, "device_memory_available", lambda: (1_000_000_000, "free memory of CUDA device 0"))
    monkeypatch.setattr(resources, "host_memory_available", lambda: (10**15, "plenty"))
    config = tiny_config(**{"training.buffer_size": 10**9})
    with pytest.raises(ConfigError, match=r"training.buffer_size = 1000000000: .* of CUDA device memory, but 1.0 GB "
                                          r"\(1,000,000,000 bytes\) are available \(free memory of CUDA device 0\)"):
        resources.check_resources(config, 3, 1, 0)
    monkeypatch.setattr(resources, "host_memory_available", lambda: (100, "almost none"))
    with pytest.raises(ConfigError, match=r"context.history_length = 4: the acting windows .* of host memory"):
        resources.check_resources(tiny_config(**{"context.source": "learned", "context.history_length": 4}), 3, 1, 10)


def test_config_files_merge_in_order_section_by_section(tmp_path):
    base, over = tmp_path / "base.yaml", tmp_path / "over.yaml"
    base.write_text("env: {id: Pendulum-v1}\ntraining: {learning_rate: 1.0e-3, batch_size: 64}\n")
    over.write_text("training: {learning_rate: 5.0e-4, critic_loss: mse}\n")
    config = load_config([base, over], ["training.tau=0.01"])
    assert config.env.id == "Pendulum-v1" and config.training.batch_size == 64
    assert config.training.learning_rate == 5e-4 and config.training.critic_loss == "mse" and config.training.tau == 0.01
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config([base, tmp_path / "missing.yaml"])
