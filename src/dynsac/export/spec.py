"""The spec of an exported controller: what its inputs and outputs are, for a user who never
touches Python. Stored in the file (ONNX `metadata_props`, the .pt2's extra files) and in a
sidecar `FILE.json`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from dynsac.config import Config
from dynsac.envs.factory import observation_box
from dynsac.training.checkpoint import CheckpointError
from dynsac.version import __version__

SPEC_KEY = "dynsac_spec"
SPEC_VERSION = 1


def history_features(obs_dim: int, action_dim: int) -> list[str]:
    """The feature order of one transition in the history window."""
    return ([f"obs[{i}]" for i in range(obs_dim)] + [f"action_normalized[{j}]" for j in range(action_dim)]
            + [f"next_obs[{i}] - obs[{i}]" for i in range(obs_dim)])


def _space(low: Any, high: Any, shape: tuple[int, ...]) -> dict[str, Any]:
    def plain(values: Any) -> list[float | None] | None:  # JSON has no Infinity: an unbounded entry is null
        if values is None:
            return None
        return [float(v) if np.isfinite(v) else None for v in np.asarray(values, dtype=np.float64).reshape(-1)]

    return {"shape": list(shape), "low": plain(low), "high": plain(high)}


def build_spec(payload: dict[str, Any], config: Config, context_dim: int, input_names: tuple[str, ...],
               env: Any = None) -> dict[str, Any]:
    """The spec of the controller of checkpoint `payload` (observation bounds from `env` if given)."""
    spaces, context = payload["spaces"], config.context
    obs_dim, action_dim = spaces["obs_dim"], spaces["action_dim"]
    box = None if env is None else observation_box(env)
    learned = context.source == "learned"
    history = context.history_length if learned else 0
    shapes = {"obs": ["batch", obs_dim], "context": ["batch", context_dim], "window": ["batch", history, 2 * obs_dim
                                                                                        + action_dim],
              "mask": ["batch", history]}
    meanings = {
        "obs": "the observation (non-finite entries count as 0)",
        "context": "the env's context vector (info['context'] or the Dict observation's 'context')",
        "window": "the last K transitions before this step, oldest first, features in history_features order; "
                  "zero rows in front while the episode is younger than K",
        "mask": "1 for a real transition of the window, 0 for padding",
    }
    return {
        "format": "dynsac-controller", "spec_version": SPEC_VERSION, "dynsac_version": __version__,
        "checkpoint_step": payload["step"], "env_id": spaces["env_id"], "obs_dim": obs_dim, "action_dim": action_dim,
        "observation_space": _space(None if box is None else box.low, None if box is None else box.high, (obs_dim,)),
        "action_space": _space(spaces["action_low"], spaces["action_high"], (action_dim,)),
        "context": {"source": context.source, "dim": context_dim, "history_length": history,
                    "history_features": history_features(obs_dim, action_dim) if learned else [],
                    "bound": config.safety.context_bound},
        "inputs": [{"name": name, "shape": shapes[name], "dtype": "float32", "meaning": meanings[name]}
                   for name in input_names],
        "outputs": [
            {"name": "action", "shape": ["batch", action_dim], "dtype": "float32",
             "meaning": "the deterministic action in the env's units"},
            {"name": "action_normalized", "shape": ["batch", action_dim], "dtype": "float32",
             "meaning": "the same action in [-1, 1]: what the next step's history window records"},
            {"name": "nonfinite", "shape": ["batch"], "dtype": "bool",
             "meaning": "the policy's action was non-finite and was replaced by the mid-range action"},
        ],
        "batch_size": None,
        "config": payload["config"],
    }


def fix_batch_size(spec: dict[str, Any], batch_size: int | None) -> None:
    """Record a fixed batch size in the spec, in its shapes too."""
    spec["batch_size"] = batch_size
    if batch_size is not None:
        for item in spec["inputs"] + spec["outputs"]:
            item["shape"] = [batch_size if dim == "batch" else dim for dim in item["shape"]]


def sidecar_path(path: Path) -> Path:
    return path.with_suffix(".json")


def read_sidecar(path: Path) -> dict[str, Any]:
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        raise CheckpointError(f"{path}: holds no dynsac spec and has no sidecar {sidecar.name}; export it again with "
                              "dynsac export")
    return json.loads(sidecar.read_text())
