"""`training.compile`: the compiled update is the eager one up to rounding, the option reaches the
agent (a resume can change it), and a compile that fails falls back to eager with one warning."""

from __future__ import annotations

import copy
import dataclasses
import warnings

import pytest
import torch

from dynsac import SACTrainer
from dynsac.config import load_config
from dynsac.nn import compiled_or_eager
from dynsac.sac.agent import SACAgent

from conftest import tiny_overrides
from test_by_hand import _batch, assert_same_updates, learned_map_case


def test_compiled_update_matches_eager_with_a_delayed_actor():
    torch.manual_seed(0)
    eager = SACAgent(3, 2, actor_hidden_sizes=(32, 32), critic_hidden_sizes=(32, 32), policy_delay=2,
                     max_grad_norm=1.0).double()
    compiled = copy.deepcopy(eager)
    compiled.configure(dataclasses.replace(compiled.settings, compile_update=True))
    assert_same_updates(compiled, eager, _batch(), steps=4)  # actor steps at updates 0 and 2 only


def test_compiled_dynamics_map_step_matches_eager():
    eager, batch = learned_map_case()
    compiled = copy.deepcopy(eager)
    compiled.configure(dataclasses.replace(compiled.settings, compile_update=True))
    assert_same_updates(compiled, eager, batch, steps=3)


def test_the_option_reaches_the_agent_and_a_resume_can_change_it(tmp_path):
    trainer = SACTrainer(load_config(None, tiny_overrides(tmp_path, **{"training.compile": "true",
                                                                      "training.total_steps": 200})))
    assert trainer.agent.settings.compile_update and trainer.agent.backend.name == "by-hand, compiled"
    trainer.train()  # 100 updates, the first ones compiling
    saved = tmp_path / "checkpoints" / "sac_step_200.pt"
    resumed = SACTrainer.from_checkpoint(saved, overrides=["training.compile=false"])
    assert not resumed.agent.settings.compile_update and resumed.agent.backend.name == "by-hand"
    again = SACTrainer.from_checkpoint(saved)  # the checkpoint's own config: compile on
    assert again.agent.settings.compile_update


def test_a_failed_compile_warns_once_and_runs_the_function_itself(monkeypatch):
    calls = []

    def broken_compile(fn, **options):
        def run(*args):
            calls.append(args)
            raise RuntimeError("InductorError: no working C++ compiler found\nmore detail")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)

    def double(x):
        return 2 * x

    wrapped = compiled_or_eager(double)
    with pytest.warns(RuntimeWarning, match=r"torch.compile of double failed \(RuntimeError: InductorError: no "
                                            r"working C\+\+ compiler found\); it runs uncompiled"):
        assert torch.equal(wrapped(torch.ones(2)), torch.full((2,), 2.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(wrapped(torch.ones(3)), torch.full((3,), 2.0))
    assert len(calls) == 1 and wrapped.compile_failure == ["RuntimeError: InductorError: no working C++ compiler found"]
