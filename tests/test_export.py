"""The controller leaves dynsac: checkpoint, .pt2 and .onnx act alike along whole episodes, batched
or not; the .onnx runs without dynsac; `dynsac eval` agrees; bad input is exit 2 with nothing written."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from dynsac import SACTrainer, load_controller
from dynsac.cli import main
from dynsac.config import load_config
from dynsac.context import split_observation
from dynsac.export import export_controller
from dynsac.training.checkpoint import load_checkpoint

from conftest import tiny_overrides

PENDULUM_CONTEXT = {"env.id": "dynsac/RandomPendulum-v0", "context.encoder_hidden_sizes": "[16]",
                    "context.model_hidden_sizes": "[16]", "context.history_length": 4}
CASES = {
    "none": {},
    "env": {**PENDULUM_CONTEXT, "context.source": "env"},
    "learned": {**PENDULUM_CONTEXT, "context.source": "learned"},
    "learned_2envs": {**PENDULUM_CONTEXT, "context.source": "learned", "training.num_envs": 2},
    # The normalised inputs and residual LayerNorm blocks travel inside the exported graph.
    "simba_obs_normalization": {**PENDULUM_CONTEXT, "context.source": "learned", "training.network": "simba",
                                "training.obs_normalization": True},
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 300-step checkpoint per case, exported to .pt2 and .onnx."""
    files = {}
    for name, values in CASES.items():
        root = tmp_path_factory.mktemp(name)
        config = load_config(None, tiny_overrides(root, **{"training.total_steps": 300, "training.eval_interval": 0,
                                                           "logging.tensorboard": "false", **values}))
        SACTrainer(config).train()
        checkpoint = root / "checkpoints" / "sac_step_300.pt"
        files[name] = {"pt": checkpoint, "pt2": export_controller(checkpoint, root / "ctrl.pt2"),
                       "onnx": export_controller(checkpoint, root / "ctrl.onnx")}
    return files


@pytest.mark.parametrize("case", list(CASES))
def test_checkpoint_pt2_and_onnx_act_alike_along_whole_episodes(exported, case):
    files = exported[case]
    trainer = SACTrainer.from_checkpoint(files["pt"])
    controllers = {kind: load_controller(path) for kind, path in files.items()}
    half = trainer.policy.action_half_range.numpy()
    env, worst, steps = trainer.rollout.make_env(eval_env=True), 0.0, 0
    for seed in (11, 12):
        for controller in controllers.values():
            controller.reset()
        obs, info = env.reset(seed=seed)
        obs, context = split_observation(obs, info)
        tracker, done = trainer.rollout.new_tracker(context), False
        while not done:
            reference = trainer.rollout.act(obs[None], [tracker], deterministic=True)[0]  # the trainer's own acting
            for controller in controllers.values():
                action = controller.act(obs, {"context": context} if context is not None else None)
                normalized = (action - trainer.policy.action_center.numpy()) / half
                worst = max(worst, float(np.abs(normalized - reference).max()))
            raw, _, terminated, truncated, info = env.step(trainer.rollout.to_env_action(reference))
            next_obs, context = split_observation(raw, info)
            tracker.record(obs, reference, next_obs, context)
            obs, done, steps = next_obs, terminated or truncated, steps + 1
    assert steps == 400 and worst <= 1e-5, worst


def test_a_batch_of_8_matches_8_single_controllers(exported):
    files = exported["learned"]
    batched = load_controller(files["onnx"])
    singles = [load_controller(files["pt2"]) for _ in range(8)]
    rng = np.random.default_rng(0)
    for step in range(7):  # across the padded start of the history and past K = 4
        obs = rng.normal(size=(8, 3)).astype(np.float32)
        together = batched.act(obs)
        apart = np.stack([single.act(row) for single, row in zip(singles, obs)])
        assert together.shape == (8, 1) and np.abs(together - apart).max() <= 1e-5
    batched.reset()
    assert batched.act(obs[:3]).shape == (3, 1)  # a new episode may have another batch size
    with pytest.raises(ValueError, match="3 observation rows, but this episode started with 3|call reset"):
        batched.act(obs[:5])


STANDALONE = """
import json, sys
import numpy as np
import onnxruntime
spec = json.load(open(sys.argv[2]))
session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
inputs = {item["name"]: np.load(sys.argv[3] + item["name"] + ".npy") for item in spec["inputs"]}
action, _, nonfinite = session.run(["action", "action_normalized", "nonfinite"], inputs)
assert "dynsac" not in sys.modules and "torch" not in sys.modules
np.save(sys.argv[3] + "action.npy", action)
print(json.dumps({"metadata": "dynsac_spec" in session.get_modelmeta().custom_metadata_map}))
"""


def test_the_onnx_file_runs_where_dynsac_was_never_imported(exported, tmp_path):
    files = exported["learned"]
    spec = json.loads(files["onnx"].with_suffix(".json").read_text())
    assert [i["name"] for i in spec["inputs"]] == ["obs", "window", "mask"]
    assert spec["context"]["history_features"][:4] == ["obs[0]", "obs[1]", "obs[2]", "action_normalized[0]"]
    rng = np.random.default_rng(1)
    inputs = {"obs": rng.normal(size=(5, 3)), "window": rng.normal(size=(5, 4, 7)),
              "mask": (rng.random((5, 4)) > 0.4).astype(float)}
    for name, value in inputs.items():
        np.save(tmp_path / f"{name}.npy", value.astype(np.float32))
    done = subprocess.run([sys.executable, "-c", STANDALONE, str(files["onnx"]), str(files["onnx"].with_suffix(".json")),
                           f"{tmp_path}/"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"metadata": True}
    module_action = load_controller(files["pt"])._backend({k: v.astype(np.float32) for k, v in inputs.items()})[0]
    assert np.abs(np.load(tmp_path / "action.npy") - module_action).max() <= 1e-5


def _episode_returns(output: str) -> list[float]:
    return [float(m.group(1).replace(",", "")) for m in re.finditer(r"^\w+\s+\d+\s+(-?[\d,]+\.\d+)", output, re.M)]


def test_dynsac_eval_of_the_export_prints_the_checkpoints_returns(exported, capsys):
    files = exported["learned"]
    assert main(["eval", str(files["pt"]), "--episodes", "3"]) == 0
    expected = _episode_returns(capsys.readouterr().out)
    for kind in ("onnx", "pt2"):
        assert main(["eval", str(files[kind]), "--episodes", "3"]) == 0
        got = _episode_returns(capsys.readouterr().out)
        assert len(got) == len(expected) == 6  # train and test splits
        assert np.allclose(got, expected, rtol=1e-4, atol=1e-3)


def test_the_export_is_small_and_carries_its_spec(exported):
    import onnx

    files = exported["learned"]
    modules = load_checkpoint(files["pt"])["agent"]["modules"]
    acting = sum(v.numel() for k, v in modules.items() if k.startswith(("policy.net", "dynamics_map.encoder")))
    graph = onnx.load(str(files["onnx"])).graph
    weights = sum(int(np.prod(t.dims)) for t in graph.initializer)
    assert acting <= weights <= acting + 64  # the policy, the encoder and its statistics: no buffer, no optimizer
    for kind in ("onnx", "pt2"):
        assert files[kind].stat().st_size < 4 * acting + 150_000
    files = exported["none"]
    for kind in ("onnx", "pt2"):
        spec = load_controller(files[kind]).spec
        assert spec["checkpoint_step"] == 300 and spec["context"]["source"] == "none"
        assert spec["observation_space"]["high"] == [1.0, 1.0, 8.0] and spec["action_space"]["low"] == [-2.0]


def test_non_finite_inputs_and_actions_never_come_out(exported, tmp_path):
    controller = load_controller(exported["env"]["pt"])
    with pytest.warns(RuntimeWarning, match="observation had 1 non-finite value"):
        action = controller.act(np.array([np.nan, 0.0, 0.0]), {"context": np.zeros(controller.spec["context"]["dim"])})
    assert np.isfinite(action).all() and controller.sanitized_values == 1
    payload = load_checkpoint(exported["none"]["pt"])
    payload["agent"]["modules"]["policy.net.4.weight"][0, 0] = float("nan")
    poisoned = tmp_path / "poisoned.pt"
    torch.save(payload, poisoned)
    for path in (poisoned, export_controller(poisoned, tmp_path / "poisoned.onnx")):
        controller = load_controller(path)
        with pytest.warns(RuntimeWarning, match=r"non-finite in rows \[0\] \((policy.net.4 \(Linear\) output|every "
                                                r"input is finite)"):
            action = controller.act(np.zeros(3))
        assert action.tolist() == [0.0] and controller.nonfinite_actions == 1  # Pendulum's mid-range torque


def test_bad_input_is_exit_2_and_writes_nothing(exported, tmp_path, capsys):
    checkpoint = exported["none"]["pt"]
    out = tmp_path / "ctrl.onnx"
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    payload = load_checkpoint(checkpoint)
    payload["config"]["env"]["id"] = "no_such_package.envs:Plant"
    unbuildable = tmp_path / "unbuildable.pt"
    torch.save(payload, unbuildable)
    cases = [
        (tmp_path / "missing.pt", "checkpoint not found"),
        (corrupt, "not a readable checkpoint"),
        (unbuildable, "its env 'no_such_package.envs:Plant' cannot be rebuilt here"),
    ]
    for source, message in cases:
        assert main(["export", str(source), "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "ctrl.tflite")]) == 2
    assert "unknown suffix '.tflite'" in capsys.readouterr().err
    assert main(["export", str(checkpoint), "--out", str(out), "--batch-size", "0"]) == 2
    assert main(["eval", str(tmp_path / "ctrl.bin")]) == 2
    assert "unknown suffix '.bin'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.pt", "unbuildable.pt"]
    with pytest.raises(ValueError, match=r"obs has shape \(4,\); expected \(3,\) for one env or \(N, 3\)"):
        load_controller(exported["none"]["onnx"]).act(np.zeros(4))


def test_export_without_the_extra_names_it(exported, tmp_path, monkeypatch):
    import builtins

    from dynsac.export import ExportError

    real_import = builtins.__import__

    def no_onnxscript(name, *args, **kwargs):
        if name == "onnxscript":
            raise ImportError("No module named 'onnxscript'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxscript)
    with pytest.raises(ExportError, match=r"needs onnxscript, which are not installed: pip install 'dynsac\[export\]'"):
        export_controller(exported["none"]["pt"], tmp_path / "ctrl.onnx")
    assert not list(tmp_path.iterdir())


def test_a_fixed_batch_size_is_in_the_graph_and_the_spec(exported, tmp_path):
    import onnxruntime

    out = export_controller(exported["env"]["pt"], tmp_path / "fixed.onnx", batch_size=4)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.shape for i in session.get_inputs()] == [[4, 3], [4, 2]]
    spec = json.loads(out.with_suffix(".json").read_text())  # strict JSON: no Infinity for a C++ parser
    assert spec["batch_size"] == 4 and spec["inputs"][1]["shape"] == [4, 2] and spec["outputs"][2]["shape"] == [4]
    assert load_controller(out).act(np.zeros((4, 3)), {"context": np.zeros((4, 2))}).shape == (4, 1)


def test_the_docs_example_runs(tmp_path, monkeypatch, capsys):
    """docs/export.md's example, shortened to 300 steps and run in a fresh folder."""
    from conftest import REPO_ROOT

    page = (REPO_ROOT / "docs" / "export.md").read_text()
    code = page.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) <= 20
    code = code.replace('"configs/random_pendulum.yaml", ["training.total_steps=20000"]',
                        f'"{REPO_ROOT / "configs/random_pendulum.yaml"}", ["training.total_steps=300", '
                        '"training.learning_starts=100", "training.hidden_sizes=[32]", "logging.progress=off", '
                        '"context.encoder_hidden_sizes=[16]", "context.model_hidden_sizes=[16]", '
                        '"training.eval_episodes=1", "logging.tensorboard=false"]')
    assert "total_steps=300" in code
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/export.md", "exec"), {})
    total = float(capsys.readouterr().out.strip().splitlines()[-1])
    assert np.isfinite(total) and (tmp_path / "pendulum.onnx").is_file()
