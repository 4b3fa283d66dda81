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


def n_step_by_loop(buffer, index, n_step, gamma):
    """The n-step return of one stored transition, walking forward one transition of its env at a time."""
    total, slot, stored_after = 0.0, index, (buffer.position - 1 - index) % buffer.capacity
    for k in range(n_step):
        candidate = (index + k * buffer.num_envs) % buffer.capacity
        if k and (k * buffer.num_envs > stored_after or buffer.episode_id[candidate] != buffer.episode_id[index]):
            break
        slot = candidate
        total += gamma**k * buffer.reward[slot].item()
        if buffer.terminated[slot] or buffer.truncated[slot]:
            k += 1
            break
    else:
        k = n_step
    steps = k if k else 1
    return slot, total, gamma**steps


@pytest.mark.parametrize("capacity, count, num_envs", [(40, 23, 1), (8, 11, 1), (16, 29, 2), (12, 12, 1)])
def test_n_step_returns_match_a_loop_over_the_stored_transitions(capacity, count, num_envs):
    """Episode ends (terminated at i % 7 == 6, truncated at i % 5 == 4), the newest transition, a
    wrapped buffer and interleaved envs all stop the sum where the loop stops it."""
    buffer = ReplayBuffer(capacity, 2, 1, num_envs=num_envs)
    fill(buffer, count)
    index = torch.arange(len(buffer))
    for n_step in (1, 2, 3, 6):
        last, returns, discount, summed = buffer.n_step_returns(index, n_step, 0.9)
        for i in range(len(buffer)):
            slot, total, power = n_step_by_loop(buffer, i, n_step, 0.9)
            assert last[i].item() == slot, (n_step, i)
            assert returns[i].item() == pytest.approx(total, rel=1e-6) and discount[i].item() == pytest.approx(power)
            assert slot in summed[i].tolist() and i in summed[i].tolist()


def test_an_n_step_batch_bootstraps_from_the_last_summed_state_and_keeps_the_one_step_transition():
    buffer = ReplayBuffer(40, 2, 1, context_dim=1)
    for i in range(12):  # one episode of 12 steps, truncated at the end; obs = step, context = 10 * step
        buffer.add(np.full(2, i), np.zeros(1), 1.0, np.full(2, i + 1), False, i == 11, 0,
                   np.full(1, 10.0 * i), np.full(1, 10.0 * (i + 1)))
    torch.manual_seed(0)
    batch = buffer.sample(64, history_length=3, n_step=3, gamma=0.5)
    start = batch.index.float()
    steps = torch.clamp(12 - start, max=3)  # the episode ends after step 11
    assert torch.equal(batch.step_next_obs[:, 0], start + 1) and torch.equal(batch.next_obs[:, 0], start + steps)
    assert torch.equal(batch.next_context[:, 0], 10 * (start + steps)) and torch.equal(batch.context[:, 0], 10 * start)
    assert torch.allclose(batch.reward, (1 - 0.5**steps) / 0.5) and torch.allclose(batch.discount, 0.5**steps)
    # The window before s' ends with the transition into it.
    last_obs = batch.next_window[:, -1, 0]
    assert torch.equal(last_obs, start + steps - 1) and torch.equal(batch.window[:, -1, 0][start > 0], (start - 1)[start > 0])
    one_step = buffer.sample(4)
    assert one_step.discount is None and one_step.transition_next_obs is one_step.next_obs


def _tensor_path_add(buffer: ReplayBuffer, *args) -> None:
    """`add` through the tensor assignments (the path off the CPU)."""
    buffer.__dict__["_views"] = None
    buffer._host_views = lambda: None  # type: ignore[method-assign]
    buffer.add(*args)


def test_host_writes_store_exactly_what_the_tensor_path_stores():
    """On the CPU `add` writes through NumPy views of the tensors; every field must hold the same
    bits as the tensor assignments give, overflow to Inf and NaN included."""
    transitions = [
        (np.array([0.1, -2.5], np.float32), np.array([0.3]), -1.25, np.array([1e-8, 3.0]), False, True, 4,
         np.array([0.5, 1.5]), np.array([2.0, -1.0])),
        (np.array([np.nan, 1.0]), np.array([-1.0], np.float32), 1e300, np.array([np.inf, 2.0 / 3.0]), True, False, 5,
         np.array([1e40, 0.0]), np.array([-np.inf, np.nan])),
        (np.array([2.0 / 3.0, 7.0]), np.array([1.0]), float("nan"), np.array([0.0, -0.0]), False, False, 2**40,
         np.array([0.25, 0.75]), np.array([0.0, 1.0])),
    ]
    host, reference = (ReplayBuffer(4, 2, 1, context_dim=2) for _ in range(2))
    for transition in transitions:
        host.add(*transition)
        _tensor_path_add(reference, *transition)
    assert host.__dict__["_views"] is not None and host.size == reference.size == 3
    for name in host._fields:
        assert torch.equal(getattr(host, name).view(torch.uint8), getattr(reference, name).view(torch.uint8)), name
    assert torch.isinf(host.reward[1]) and torch.isnan(host.reward[2])


def test_a_copied_buffer_writes_into_its_own_tensors():
    import copy

    buffer = ReplayBuffer(4, 1, 1)
    buffer.add(np.array([1.0]), np.array([0.0]), 1.0, np.array([2.0]), False, False, 0)
    clone = copy.deepcopy(buffer)
    clone.add(np.array([3.0]), np.array([0.0]), 1.0, np.array([4.0]), False, False, 0)
    buffer.add(np.array([5.0]), np.array([0.0]), 1.0, np.array([6.0]), False, False, 0)
    assert clone.obs[:2, 0].tolist() == [1.0, 3.0] and buffer.obs[:2, 0].tolist() == [1.0, 5.0]
