import numpy as np
import pytest
import torch

from dynsac.sac.replay import ReplayBuffer


def fill(buffer, count, start=0):
    for i in range(start, start + count):
        buffer.add(np.full(2, i), np.full(1, i / 100), float(i), np.full(2, i + 1), i % 7 == 6, i % 5 == 4, i // 5)


def test_wraps_around_and_keeps_fields_apart():
    buffer = ReplayBuffer(8, 2, 1)
    fill(buffer, 11)
    assert len(buffer) == 8 and buffer.position == 3
    assert buffer.reward.tolist() == [8, 9, 10, 3, 4, 5, 6, 7]
    assert buffer.terminated.tolist() == [0, 0, 0, 0, 0, 0, 1, 0]
    assert buffer.truncated.tolist() == [False, True, False, False, True, False, False, False]
    assert buffer.episode_id.tolist() == [1, 1, 2, 0, 0, 1, 1, 1]


def test_sample_is_uniform_over_filled_part():
    buffer = ReplayBuffer(100, 2, 1)
    fill(buffer, 10)
    torch.manual_seed(0)
    batch = buffer.sample(5000)
    assert batch.index.min().item() == 0 and batch.index.max().item() == 9
    assert torch.equal(batch.obs[:, 0], batch.reward)
    counts = torch.bincount(batch.index, minlength=10).float()
    assert (counts / 5000 - 0.1).abs().max().item() < 0.02


def test_empty_buffer_refuses_to_sample():
    with pytest.raises(RuntimeError, match="empty replay buffer"):
        ReplayBuffer(4, 2, 1).sample(2)


def test_state_dict_round_trip_same_capacity():
    buffer = ReplayBuffer(8, 2, 1)
    fill(buffer, 11)
    copy = ReplayBuffer(8, 2, 1)
    copy.load_state_dict(buffer.state_dict())
    assert copy.position == buffer.position and len(copy) == 8
    assert torch.equal(copy.reward, buffer.reward)


def test_load_into_smaller_capacity_keeps_newest_in_order():
    buffer = ReplayBuffer(8, 2, 1)
    fill(buffer, 11)
    smaller = ReplayBuffer(5, 2, 1)
    smaller.load_state_dict(buffer.state_dict())
    assert smaller.reward.tolist() == [6, 7, 8, 9, 10] and smaller.position == 0 and len(smaller) == 5


def test_load_rejects_wrong_shapes():
    buffer = ReplayBuffer(8, 2, 1)
    fill(buffer, 3)
    with pytest.raises(ValueError, match="field 'obs' has shape \\(3, 2\\), expected \\(3, 4\\)"):
        ReplayBuffer(8, 4, 1).load_state_dict(buffer.state_dict())
