"""LeanAdam: the same numbers as torch.optim.Adam(fused=True), bit for bit, on every path."""

from __future__ import annotations

import copy

import torch
from torch import nn

from dynsac.sac.optim import LeanAdam


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
