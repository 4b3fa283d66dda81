"""LeanAdam: the same numbers as torch.optim.Adam(fused=True), bit for bit, on every path."""

from __future__ import annotations

import copy
import subprocess
import sys

import torch
from torch import nn

from dynsac.sac.optim import LeanAdam
from conftest import REPO_ROOT


def _twins(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))
    twin = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))
    twin.load_state_dict(net.state_dict())
    return net, twin


def _step(net: nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    net(inputs).square().mean().backward()
    optimizer.step()


def _assert_same(a: nn.Module, b: nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_lean_adam_matches_fused_adam_bit_for_bit_including_lr_changes_and_reload() -> None:
    net, twin = _twins()
    lean, reference = LeanAdam(net.parameters(), lr=1e-2), torch.optim.Adam(twin.parameters(), lr=1e-2, fused=True)
    generator = torch.Generator().manual_seed(1)
    for step in range(30):
        inputs = torch.randn(32, 5, generator=generator)
        if step == 10:  # a rollback lowers the rates in place
            for optimizer in (lean, reference):
                optimizer.param_groups[0]["lr"] *= 0.5
        if step == 20:  # a rollback or resume reloads the state: the cached lists must follow it
            saved = reference.state_dict()
            lean.load_state_dict(copy.deepcopy(saved))
            reference.load_state_dict(copy.deepcopy(saved))
        _step(net, lean, inputs)
        _step(twin, reference, inputs)
        _assert_same(net, twin)
    assert lean.state_dict()["state"][0]["step"] == reference.state_dict()["state"][0]["step"] == 30
    # The state dict is torch's: it loads into a plain Adam and back.
    torch.optim.Adam(twin.parameters(), lr=1e-2, fused=True).load_state_dict(lean.state_dict())


def test_lean_adam_falls_back_when_a_parameter_has_no_gradient() -> None:
    net, twin = _twins()
    lean, reference = LeanAdam(net.parameters(), lr=1e-2), torch.optim.Adam(twin.parameters(), lr=1e-2, fused=True)
    inputs = torch.randn(8, 5)
    for _ in range(3):
        _step(net, lean, inputs)
        _step(twin, reference, inputs)
    hidden = torch.randn(4, 16)
    for model, optimizer in ((net, lean), (twin, reference)):
        optimizer.zero_grad(set_to_none=True)
        model[2](hidden).sum().backward()  # the first layer gets no gradient
        optimizer.step()
    _assert_same(net, twin)


def test_fast_step_is_step_and_honours_step_hooks() -> None:
    net, twin = _twins(2)
    lean, reference = LeanAdam(net.parameters(), lr=1e-2), LeanAdam(twin.parameters(), lr=1e-2)
    inputs = torch.randn(8, 5)
    calls = []
    for step in range(4):
        for model, optimizer in ((net, lean), (twin, reference)):
            optimizer.zero_grad(set_to_none=True)
            model(inputs).square().mean().backward()
        lean.fast_step()
        reference.step()
        _assert_same(net, twin)
        if step == 1:  # from here on, a hook: fast_step must go through step() and call it
            lean.register_step_pre_hook(lambda optimizer, args, kwargs: calls.append(1))
    assert len(calls) == 2


def test_plain_adam_state_loads_onto_the_fused_kernel() -> None:
    """Older checkpoints hold a plain Adam's state: step counts as CPU tensors and `fused: False`.
    Loaded, LeanAdam keeps stepping as fused Adam (on a GPU the fused kernel needs the counts on
    the parameters' device; tests/test_cuda.py checks that there)."""
    net, twin = _twins()
    plain = torch.optim.Adam(net.parameters(), lr=1e-2)
    inputs = torch.randn(16, 5)
    for _ in range(3):
        _step(net, plain, inputs)
    twin.load_state_dict(net.state_dict())
    saved = plain.state_dict()
    assert saved["param_groups"][0]["fused"] in (None, False)
    lean = LeanAdam(net.parameters(), lr=1e-2)
    lean.load_state_dict(copy.deepcopy(saved))
    assert lean.param_groups[0]["fused"] is True
    assert all(state["step"].dtype == torch.float32 and state["step"].item() == 3 for state in lean.state.values())
    as_fused = copy.deepcopy(saved)
    as_fused["param_groups"][0]["fused"] = True
    reference = torch.optim.Adam(twin.parameters(), lr=1e-2, fused=True)
    reference.load_state_dict(as_fused)
    for _ in range(3):
        _step(net, lean, inputs)
        _step(twin, reference, inputs)
        _assert_same(net, twin)


def test_first_step_state_is_adams_and_a_first_step_without_some_gradients_is_adams_too() -> None:
    net, twin = _twins(3)
    lean, reference = LeanAdam(net.parameters(), lr=1e-2), torch.optim.Adam(twin.parameters(), lr=1e-2, fused=True)
    _step(net, lean, torch.randn(8, 5, generator=torch.Generator().manual_seed(4)))
    _step(twin, reference, torch.randn(8, 5, generator=torch.Generator().manual_seed(4)))
    ours, theirs = lean.state_dict(), reference.state_dict()
    for index, state in theirs["state"].items():
        assert set(ours["state"][index]) == set(state)
        for key, value in state.items():
            mine = ours["state"][index][key]
            assert mine.dtype == value.dtype and mine.device == value.device and torch.equal(mine, value), key
    # A first step where one layer has no gradient creates state only where Adam does.
    net, twin = _twins(5)
    lean, reference = LeanAdam(net.parameters(), lr=1e-2), torch.optim.Adam(twin.parameters(), lr=1e-2, fused=True)
    for model, optimizer in ((net, lean), (twin, reference)):
        optimizer.zero_grad(set_to_none=True)
        model[2](torch.randn(4, 16, generator=torch.Generator().manual_seed(6))).sum().backward()
        optimizer.step()
    _assert_same(net, twin)
    assert sorted(lean.state_dict()["state"]) == sorted(reference.state_dict()["state"]) == [2, 3]


def test_training_saving_and_resuming_never_import_torch_compiler(tmp_path, subprocess_env) -> None:
    """torch's optimizer methods import `torch._dynamo` on their first call (~1 s of start-up);
    a whole run through `dynsac train`, its checkpoint and a resume must not."""
    script = f"""
import sys
from dynsac.cli import main
common = ["--set", "training.eval_episodes=1", "--set", "logging.progress=off",
          "--set", "training.checkpoint_dir={tmp_path / 'ck'}", "--set", "logging.dir={tmp_path / 'run'}",
          "--set", "training.hidden_sizes=[16, 16]", "--set", "training.learning_starts=50"]
for args in (["--set", "training.total_steps=80", "--set", "training.checkpoint_interval=80"],
             ["--resume", "{tmp_path / 'ck' / 'sac_step_80.pt'}", "--set", "training.total_steps=100"]):
    sys.argv = ["dynsac", "train", "--config", "configs/pendulum.yaml", *args, *common]
    try:
        main()
    except SystemExit as stop:
        assert not stop.code, stop.code
print("DYNAMO", "torch._dynamo" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=REPO_ROOT, env=subprocess_env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "DYNAMO False" in done.stdout, done.stdout[-500:]
