"""What only a GPU can check: the hand-derived update on CUDA, checkpoints that cross between CUDA
and CPU, the host syncs of one update, and a GPU replay buffer's memory.

Skipped without CUDA. On a machine with one the rest of the suite trains on it too, because the
tiny configs leave `training.device` at `auto`.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings

import numpy as np
import pytest
import torch

from dynsac import SACTrainer
from dynsac.config import load_config
from dynsac.sac.agent import SACAgent
from dynsac.sac.replay import ReplayBuffer
from dynsac.training import load_checkpoint

from conftest import tiny_overrides
from test_by_hand import _assert_same_updates, _batch, assert_same_updates, learned_map_case, on_device

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")


@pytest.mark.parametrize("options", [{}, {"context_dim": 2, "policy_delay": 2}, {"max_grad_norm": 0.05}])
def test_by_hand_update_matches_autograd_on_cuda(options):
    torch.manual_seed(4)
    by_hand = SACAgent(3, 2, actor_hidden_sizes=(32, 32), critic_hidden_sizes=(32, 32), **options).double().to(CUDA)
    reference = copy.deepcopy(by_hand)
    reference.use_backend("autograd")
    _assert_same_updates(by_hand, reference, on_device(_batch(options.get("context_dim", 0)), CUDA), steps=6)
    assert all(p.device.type == "cuda" for p in by_hand.parameters())


def test_by_hand_dynamics_map_matches_autograd_on_cuda():
    by_hand, batch = learned_map_case(device=CUDA)
    reference = copy.deepcopy(by_hand)
    reference.use_backend("autograd")
    _assert_same_updates(by_hand, reference, batch, steps=4)


def test_compiled_update_matches_eager_on_cuda():
    torch.manual_seed(6)
    eager = SACAgent(3, 2, actor_hidden_sizes=(32, 32), critic_hidden_sizes=(32, 32), policy_delay=2).double().to(CUDA)
    compiled = copy.deepcopy(eager)
    compiled.configure(dataclasses.replace(compiled.settings, compile_update=True))
    assert_same_updates(compiled, eager, on_device(_batch(), CUDA), steps=4)


def test_cuda_checkpoint_resumes_on_cpu_and_back(tmp_path):
    def config(folder, device, total_steps):
        return load_config(None, tiny_overrides(tmp_path / folder, **{
            "training.device": device, "training.total_steps": total_steps, "context.source": "learned",
            "env.id": "dynsac/RandomPendulum-v0", "context.history_length": 4}))

    on_gpu = SACTrainer(config("gpu", "cuda", 200))
    on_gpu.train()
    assert {p.device.type for p in on_gpu.agent.parameters()} == {"cuda"}
    saved = tmp_path / "gpu" / "checkpoints" / "sac_step_200.pt"
    payload = load_checkpoint(saved)  # onto the CPU by default
    assert {t.device.type for t in payload["agent"]["modules"].values()} == {"cpu"}

    on_cpu = SACTrainer.from_checkpoint(saved, config("cpu", "cpu", 300))
    assert {p.device.type for p in on_cpu.agent.parameters()} == {"cpu"}
    assert on_cpu.buffer.obs.device.type == "cpu"
    for name, value in on_gpu.agent.state_dict().items():
        assert torch.equal(on_cpu.agent.state_dict()[name], value.cpu()), name
    on_cpu.train()
    assert on_cpu.step == 300

    back = SACTrainer.from_checkpoint(tmp_path / "cpu" / "checkpoints" / "sac_step_300.pt", config("back", "cuda", 400))
    result = back.train()
    assert back.step == 400 and back.rollbacks == 0 and result.steps == 400
    assert back.buffer.obs.device.type == "cuda" and back.buffer.size == 400


def _syncs_during(action) -> list[str]:
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            action()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [f"{w.filename}:{w.lineno}" for w in caught if "called a synchronizing" in str(w.message)]


def test_an_update_reads_one_flag_per_optimizer_step(tmp_path):
    """The SAC math itself never waits on the GPU; the only syncs are the finite-gradient flags
    that decide whether each optimizer step is applied (critic, actor, alpha)."""
    trainer = SACTrainer(load_config(None, tiny_overrides(tmp_path, **{"training.device": "cuda"})))
    while trainer.step < 150:
        trainer.collect_step()
    for _ in range(3):
        trainer.update()
    batch = trainer.buffer.sample(32)
    syncs = _syncs_during(lambda: trainer.agent.update(batch))
    assert len(syncs) == 3, syncs
    trainer.env.close()


def test_gpu_replay_buffer_stays_within_its_raw_bytes():
    before = torch.cuda.memory_allocated()
    buffer = ReplayBuffer(1_000_000, 17, 6, CUDA)
    allocated = torch.cuda.memory_allocated() - before
    raw = 1_000_000 * (17 + 17 + 6 + 1 + 1) * 4  # obs, next obs, action, reward, done in float32
    assert allocated <= 1.2 * raw, (allocated, raw)
    buffer.add(np.ones(17), np.ones(6), 1.0, np.ones(17), False, False, 0)
    assert buffer.sample(4).obs.device.type == "cuda"
    del buffer
