"""The dynamics map: windows rebuilt from the buffer, encoder and losses, each context source."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from dynsac import SACTrainer
from dynsac.config import load_config
from dynsac.context import ContextError, DynamicsMap, HistoryWindow, RunningNormalizer
from dynsac.sac.replay import ReplayBuffer
from dynsac.training import CheckpointError
from dynsac.training.logger import read_metrics

from conftest import REPO_ROOT, tiny_overrides


def random_episodes(buffer, rng, lengths, window_length, obs_dim=3, action_dim=2):
    """Fill the buffer with episodes of the given lengths, recording the acting-time windows."""
    seen = {}  # buffer slot -> (window features, mask) the agent saw before acting there
    episode_id = 0
    for length in lengths:
        window = HistoryWindow(window_length, obs_dim, action_dim)
        obs = rng.normal(size=obs_dim).astype(np.float32)
        for t in range(length):
            action = rng.uniform(-1, 1, action_dim).astype(np.float32)
            next_obs = rng.normal(size=obs_dim).astype(np.float32)
            slot = buffer.position
            seen[slot] = (window.features.copy(), window.mask.copy())
            buffer.add(obs, action, 0.0, next_obs, False, t == length - 1, episode_id)
            window.push(obs, action, next_obs)
            obs = next_obs
        episode_id += 1
    return seen


@pytest.mark.parametrize("capacity", [1000, 37])  # 37: the buffer wraps around several times
def test_windows_from_buffer_equal_windows_seen_while_acting(capacity):
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer(capacity, 3, 2)
    seen = random_episodes(buffer, rng, [3, 12, 1, 25, 7, 4], window_length=5)
    index = torch.arange(len(buffer))
    features, mask = buffer.windows(index, 5)
    for row, slot in enumerate(index.tolist()):
        acted_features, acted_mask = seen[slot]
        retained_before = (slot - (buffer.position if len(buffer) == capacity else 0)) % capacity
        # Transitions older than the buffer's oldest one are gone: the rebuilt window may only be
        # shorter there, never different.
        expected_mask = acted_mask.copy()
        expected_mask[: max(0, 5 - retained_before)] = 0.0
        assert mask[row, :-1].numpy().tolist() == expected_mask.tolist(), slot
        rebuilt = features[row, :-1].numpy() * expected_mask[:, None]
        np.testing.assert_array_equal(rebuilt, acted_features * expected_mask[:, None])
        assert mask[row, -1] == 1.0  # the next-state window ends with the transition itself


def test_next_window_is_the_window_shifted_by_the_transition():
    rng = np.random.default_rng(1)
    buffer = ReplayBuffer(100, 3, 2)
    random_episodes(buffer, rng, [8, 8], window_length=4)
    batch = buffer.sample(64, history_length=4)
    np.testing.assert_array_equal(batch.next_window[:, :-1].numpy(), batch.window[:, 1:].numpy())
    last = torch.cat([batch.obs, batch.action, batch.next_obs - batch.obs], -1)
    np.testing.assert_allclose(batch.next_window[:, -1].numpy(), last.numpy())


def test_window_memory_stays_within_plain_transitions():
    buffer = ReplayBuffer(10_000, 17, 6)
    plain = 10_000 * 4 * (17 + 6 + 1 + 17 + 1)  # obs, action, reward, next_obs, terminated (float32)
    assert buffer.nbytes() <= 1.2 * plain


def test_running_normalizer_matches_numpy():
    normalizer = RunningNormalizer(3)
    data = np.random.default_rng(0).normal(5.0, 3.0, size=(500, 3))
    for chunk in np.array_split(data, 7):
        normalizer.update(torch.as_tensor(chunk))
    np.testing.assert_allclose(normalizer.mean.numpy(), data.mean(0), rtol=1e-10)
    np.testing.assert_allclose(normalizer.std.numpy(), np.sqrt(data.var(0) + 1e-6), rtol=1e-8)


def test_running_normalizer_cpu_path_is_the_tensor_arithmetic_bit_for_bit():
    """On the CPU `update` runs on NumPy views of the buffers: the same float64 operations as
    the tensor path, so one-row (per env step) updates agree exactly."""
    normalizer = RunningNormalizer(4)
    mean, sum_squares = torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    count = torch.zeros((), dtype=torch.float64)
    rng = np.random.default_rng(1)
    for step in range(300):
        row = (rng.standard_normal((1, 4)) * 10.0 ** rng.uniform(-3, 4)).astype(np.float32)
        normalizer.update(torch.as_tensor(row))
        RunningNormalizer._update(torch.as_tensor(row).to(torch.float64), mean, sum_squares, count)
        assert torch.equal(normalizer.mean, mean) and torch.equal(normalizer.sum_squares, sum_squares), step
    assert float(normalizer.count) == 300.0
    reference_std = ((sum_squares / count) + normalizer.epsilon).sqrt().float()
    assert torch.equal(normalizer.statistics(torch.float32, torch.device("cpu"))[1], reference_std)


def test_dynamics_map_observes_numpy_transitions_as_it_does_tensors():
    """A CPU run hands the collected transition to the map as NumPy arrays: the feature
    statistics must be those of the tensor path, bit for bit."""
    from_numpy, from_tensors = DynamicsMap(3, 2, context_dim=2), DynamicsMap(3, 2, context_dim=2)
    rng = np.random.default_rng(2)
    for step in range(200):
        obs = (rng.standard_normal(3) * 10.0 ** rng.uniform(-2, 5)).astype(np.float32)
        next_obs = (obs + rng.standard_normal(3) * 1e-3).astype(np.float32)
        action = rng.uniform(-1, 1, 2).astype(np.float32)
        from_numpy.observe(obs, action, next_obs)
        from_tensors.observe(*(torch.as_tensor(x) for x in (obs, action, next_obs)))
        for name in ("count", "mean", "sum_squares"):
            assert torch.equal(getattr(from_numpy.normalizer, name), getattr(from_tensors.normalizer, name)), (name, step)


def test_normalize_follows_every_change_of_the_statistics():
    """`normalize` caches its float32 (mean, std); updates and state loads must refresh it."""
    normalizer = RunningNormalizer(3)
    values = torch.tensor([[1.0, -2.0, 3.0]])

    def expected(stats: RunningNormalizer) -> torch.Tensor:
        return (values - stats.mean.float()) / stats.std.float()

    normalizer.update(torch.randn(50, 3, dtype=torch.float64) * 4 + 1)
    assert torch.equal(normalizer.normalize(values), expected(normalizer))
    normalizer.update(torch.randn(50, 3, dtype=torch.float64) * 9 - 5)
    assert torch.equal(normalizer.normalize(values), expected(normalizer))
    other = RunningNormalizer(3)
    other.update(torch.randn(20, 3, dtype=torch.float64))
    normalizer.load_state_dict(other.state_dict())
    assert torch.equal(normalizer.normalize(values), expected(other))
    assert torch.equal(normalizer.normalize(values.double())[0, 1:], ((values.double() - other.mean) / other.std)[0, 1:])
    assert torch.equal(normalizer.normalize(values[:, 1:], 1), expected(other)[:, 1:])


def test_encoder_ignores_padding_and_prediction_losses_train():
    torch.manual_seed(0)
    dynamics_map = DynamicsMap(3, 2, context_dim=4, history_length=5, encoder_hidden_sizes=(32,),
                               model_hidden_sizes=(32,))
    window, mask = torch.randn(2, 5, 8), torch.tensor([[0, 0, 1, 1, 1]] * 2, dtype=torch.float32)
    window[1, :2] = 1e6  # garbage in padded slots must not matter
    context = dynamics_map.encode(window, mask)
    assert context.shape == (2, 4)
    padded_with_zeros = torch.cat([torch.zeros(1, 2, 8), window[1:, 2:]], 1)
    torch.testing.assert_close(context[1:], dynamics_map.encode(padded_with_zeros, mask[1:]))
    # A linear system whose gain is written in the window: the context must make prediction possible.
    optimizer = torch.optim.Adam(dynamics_map.parameters(), lr=3e-3)
    for step in range(300):
        gain = torch.rand(64, 1) * 2
        obs, action = torch.randn(64, 3), torch.rand(64, 2) * 2 - 1
        next_obs = obs + gain * action[:, :1]
        history_obs, history_action = torch.randn(64, 5, 3), torch.rand(64, 5, 2) * 2 - 1
        history_next = history_obs + gain.unsqueeze(1) * history_action[:, :, :1]
        history = torch.cat([history_obs, history_action, history_next - history_obs], -1)
        dynamics_map.observe(obs, action, next_obs)
        loss, metrics = dynamics_map.prediction_loss(obs, action, next_obs,
                                                     dynamics_map.encode(history, torch.ones(64, 5)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == 0:
            first = metrics["forward_loss"].item()
    assert metrics["forward_loss"].item() < 0.2 * first


@pytest.mark.parametrize("source", ["none", "env", "learned"])
def test_short_training_run_with_each_context_source(tmp_path, source):
    config = load_config(None, tiny_overrides(tmp_path, **{
        "env.id": "dynsac/RandomPendulum-v0", "context.source": source, "context.encoder_hidden_sizes": "[32]",
        "context.model_hidden_sizes": "[32]", "context.history_length": 4, "context.dim": 3,
        "training.total_steps": 300}))
    trainer = SACTrainer(config)
    result = trainer.train()
    assert result.steps == 300 and np.isfinite(result.final_eval.mean)
    expected_dim = {"none": 0, "env": 2, "learned": 3}[source]
    assert trainer.context_dim == expected_dim
    assert trainer.agent.policy.net[0].in_features == 3 + expected_dim
    records = [r for r in read_metrics(tmp_path / "run") if "train/q_mean" in r]
    assert records
    if source == "learned":
        assert {"dynamics_map/forward_loss", "dynamics_map/backward_loss", "dynamics_map/grad_norm"} <= set(records[-1])
    if source != "none":
        assert {"context/mean", "context/std", "context/abs_max"} <= set(records[-1])
    if source == "env":
        stored = trainer.buffer.context[: len(trainer.buffer)].cpu().numpy()
        assert ((stored >= 0.75) & (stored <= 1.25)).all() and len(np.unique(stored[:, 0])) > 1


def test_learned_context_resume_is_bit_exact(tmp_path):
    overrides = {"env.id": "dynsac/RandomPendulum-v0", "context.source": "learned", "context.history_length": 4,
                 "context.encoder_hidden_sizes": "[16]", "context.model_hidden_sizes": "[16]",
                 "training.eval_interval": 0}
    straight = SACTrainer(load_config(None, tiny_overrides(tmp_path / "a", **overrides)))
    straight.train()
    first = SACTrainer(load_config(None, tiny_overrides(tmp_path / "b", **{**overrides, "training.total_steps": 250})))
    first.train()
    resumed = SACTrainer.from_checkpoint(tmp_path / "b" / "checkpoints" / "sac_step_250.pt",
                                         load_config(None, tiny_overrides(tmp_path / "b", **overrides)))
    resumed.train()
    for (name, a), b in zip(straight.agent.state_dict().items(), resumed.agent.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_map_without_backward_weight_builds_no_backward_predictor(tmp_path):
    """`backward_weight: 0`: no backward predictor (nor its optimizer state, nor its metric); the run
    trains, saves and resumes."""
    overrides = {"env.id": "dynsac/RandomPendulum-v0", "context.source": "learned", "context.history_length": 4,
                 "context.encoder_hidden_sizes": "[16]", "context.model_hidden_sizes": "[16]",
                 "context.backward_weight": 0, "training.total_steps": 250}
    trainer = SACTrainer(load_config(None, tiny_overrides(tmp_path, **overrides)))
    trainer.train()
    dynamics_map = trainer.agent.dynamics_map
    assert dynamics_map.backward_model is None
    assert not any(name.startswith("backward_model") for name in dynamics_map.state_dict())
    map_params = {id(p) for group in trainer.agent.map_optimizer.param_groups for p in group["params"]}
    assert map_params == {id(p) for p in dynamics_map.parameters()}
    records = [r for r in read_metrics(tmp_path / "run") if "dynamics_map/forward_loss" in r]
    assert records and not any("dynamics_map/backward_loss" in r for r in records)
    resumed = SACTrainer.from_checkpoint(tmp_path / "checkpoints" / "sac_step_200.pt",
                                         load_config(None, tiny_overrides(tmp_path, **overrides)))
    assert resumed.agent.dynamics_map.backward_model is None
    resumed.train()


class DictContextPendulum(gym.Env):
    """Pendulum-v1 returning CARL-style Dict observations {"obs", "context"}."""

    def __init__(self):
        self.inner = gym.make("dynsac/RandomPendulum-v0")
        self.action_space = self.inner.action_space
        self.observation_space = gym.spaces.Dict({"obs": self.inner.observation_space,
                                                  "context": self.inner.unwrapped.context_space})

    def reset(self, seed=None, options=None):
        obs, info = self.inner.reset(seed=seed)
        return {"obs": obs, "context": info.pop("context")}, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.inner.step(action)
        return {"obs": obs, "context": info.pop("context")}, reward, terminated, truncated, info


def test_env_context_from_dict_observations(tmp_path):
    config = load_config(None, tiny_overrides(tmp_path, **{"env.id": "test_context:DictContextPendulum",
                                                            "context.source": "env", "training.total_steps": 150}))
    trainer = SACTrainer(config)
    trainer.train()
    assert trainer.context_dim == 2 and trainer.obs_dim == 3


def test_env_source_without_context_is_a_clear_error(tmp_path):
    config = load_config(None, tiny_overrides(tmp_path, **{"context.source": "env"}))
    with pytest.raises(ContextError, match="context.source = 'env', but env.id = 'Pendulum-v1' provides no context"):
        SACTrainer(config)


def test_encoder_gradient_options_change_what_trains_the_encoder(tmp_path):
    """Default: only the prediction loss trains the encoder. `critic_gradient` (PEARL-style) adds the
    critic loss's gradient, `detach_policy: false` the actor loss's: same state and batch, other result."""
    import copy

    config = load_config(None, tiny_overrides(tmp_path, **{
        "env.id": "dynsac/RandomPendulum-v0", "context.source": "learned", "context.encoder_hidden_sizes": "[16]",
        "context.model_hidden_sizes": "[16]", "context.history_length": 3}))
    trainer = SACTrainer(config)
    for _ in range(120):
        trainer.collect_step()
    batch = trainer.buffer.sample(16, 3)

    def encoder_after_update(critic_gradient, detach_policy):
        agent = copy.deepcopy(trainer.agent)
        agent.critic_gradient_to_map, agent.detach_policy_context = critic_gradient, detach_policy
        agent.use_backend("auto")  # structure changed: choose the backend again
        torch.manual_seed(0)
        metrics = agent.update(batch)
        assert all(torch.isfinite(value) for value in metrics.values())
        return torch.cat([p.detach().flatten() for p in agent.dynamics_map.encoder.parameters()])

    default = encoder_after_update(False, True)
    assert torch.equal(default, encoder_after_update(False, True))
    assert not torch.equal(default, encoder_after_update(True, True))
    assert not torch.equal(default, encoder_after_update(False, False))
    assert torch.isfinite(encoder_after_update(True, False)).all()


LEARNED_TINY = {"context.source": "learned", "context.history_length": 4, "context.encoder_hidden_sizes": "[16]",
                "context.model_hidden_sizes": "[16]", "training.eval_interval": 0}


def test_windows_from_buffer_equal_each_envs_acting_window_with_several_envs(tmp_path):
    """Three envs with 50-step episodes in a 97-slot buffer: across episode ends and wrap-around,
    the window rebuilt for each env's latest transition is the one its tracker will act with."""
    trainer = SACTrainer(load_config(None, tiny_overrides(tmp_path, **{
        **LEARNED_TINY, "env.id": "dynsac/RandomLinear-v0", "training.num_envs": 3, "training.buffer_size": 97,
        "training.learning_starts": 10_000})))
    slots, buffer, checked = trainer.slots, trainer.buffer, 0
    for _ in range(120):  # 360 transitions: 7 episodes per env, the buffer wraps 3 times
        trainer.collect_step()
        for env_index, slot in enumerate(slots):
            latest = torch.tensor([(buffer.position - len(slots) + env_index) % buffer.capacity], device=buffer.device)
            features, mask = (t.cpu() for t in buffer.windows(latest, 4))
            window = slot.tracker.window
            if slot.episode_length == 0:  # the env was just reset: its new window is empty
                assert window.mask.sum() == 0
                continue
            np.testing.assert_array_equal(mask[0, 1:].numpy(), window.mask)
            valid = window.mask == 1
            np.testing.assert_allclose(features[0, 1:].numpy()[valid], window.features[valid], rtol=1e-6)
            checked += 1
    assert checked > 300 and trainer.step == 360 and len({s.episode_id for s in slots}) == 3


def test_several_envs_train_and_resume_bit_exact(tmp_path):
    overrides = {**LEARNED_TINY, "env.id": "dynsac/RandomPendulum-v0", "training.num_envs": 2}
    straight = SACTrainer(load_config(None, tiny_overrides(tmp_path / "a", **overrides)))
    result = straight.train()
    assert result.steps == 400 and straight.num_updates == 400 - 100 + 2  # 2 updates per 2-env step from 100
    first = SACTrainer(load_config(None, tiny_overrides(tmp_path / "b", **{**overrides, "training.total_steps": 250})))
    first.train()
    checkpoint = tmp_path / "b" / "checkpoints" / "sac_step_250.pt"
    resumed = SACTrainer.from_checkpoint(checkpoint, load_config(None, tiny_overrides(tmp_path / "b", **overrides)))
    resumed.train()
    for (name, a), b in zip(straight.agent.state_dict().items(), resumed.agent.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(CheckpointError, match="training.num_envs=2, but the config has num_envs=3"):
        SACTrainer.from_checkpoint(checkpoint, load_config(None, tiny_overrides(tmp_path / "c", **{
            **overrides, "training.num_envs": 3})))


def test_cli_env_context_on_an_env_without_one_is_exit_2(tmp_path, capsys):
    from dynsac.cli import main

    overrides = [f"--set={o}" for o in tiny_overrides(tmp_path, **{"context.source": "env"})]
    assert main(["train", "--config", str(REPO_ROOT / "configs/pendulum.yaml"), *overrides]) == 2
    assert "context.source = 'env', but env.id = 'Pendulum-v1' provides no context" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
