"""Checkpoints: atomic writes, safe loads (tensors and plain data only), versioned formats.

A checkpoint is a dict saved with `torch.save` and read back with `torch.load(weights_only=True)`,
which refuses anything that could run code when unpickled. Every format change bumps
`FORMAT_VERSION` and adds a migration from the previous format to `MIGRATIONS`, so old
checkpoints keep loading (new fields take their defaults).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 10
CHECKPOINT_PATTERN = re.compile(r"^sac_step_(\d+)\.pt$")


def _v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    """Format 2 added the dynamics-map context: the per-env context state (window, env context)."""
    payload["env"].setdefault("context", {"window": None, "env_context": None})
    return payload


def _v2_to_v3(payload: dict[str, Any]) -> dict[str, Any]:
    """Format 3 added reward-normalisation statistics; older runs had none (mode `none`)."""
    payload.setdefault(
        "reward_normalizer", {"mode": "none", "count": 0, "mean": 0.0, "sum_squares": 0.0, "frozen_scale": None}
    )
    return payload


def _v3_to_v4(payload: dict[str, Any]) -> dict[str, Any]:
    """Format 4 squashes the learned context with tanh by default; older runs learned without it."""
    payload["config"].setdefault("context", {}).setdefault("bounded", False)
    return payload


def _v4_to_v5(payload: dict[str, Any]) -> dict[str, Any]:
    """Format 5 keeps the safety layer's state (rollbacks, early-warning history, fallback counts) and
    made `fixed` reward normalisation the default; older runs were trained without normalisation."""
    payload["config"].setdefault("safety", {}).setdefault("reward_normalization", "none")
    payload.setdefault("safety", None)  # None: counters start from zero
    return payload


def _v5_to_v6(payload: dict[str, Any]) -> dict[str, Any]:
    """Format 6 trains on `training.num_envs` envs: one state per env, each with its episode id;
    `episode` became the next id to hand out (one env: the current episode's id + 1)."""
    env = payload.pop("env")
    payload["envs"] = [{**env, "episode_id": payload["episode"]}]
    payload["episode"] += 1
    return payload


def _v6_to_v7(payload: dict[str, Any]) -> dict[str, Any]:
    """Format 7 is the composition of the parts' states: the rollout (envs, next episode id, acting
    counters), the update supervisor (rollbacks, repaired transitions) and the callbacks (early
    warnings); it also records the env factory of a Python-built env (none before)."""
    safety = payload.pop("safety", None) or {}
    counters = payload.pop("counters", None) or {"sanitized_values": 0}
    payload["rollout"] = {
        "next_episode_id": payload.pop("episode"),
        "envs": payload.pop("envs"),
        "sanitized_values": counters["sanitized_values"],
        "context_fallbacks": safety.get("acting_context_fallbacks", 0),
        "nonfinite_actions": safety.get("nonfinite_actions", 0),
    }
    payload["supervisor"] = {"recovery": safety.get("recovery"), "repaired_values": 0}
    payload["callbacks"] = {"early_warnings": safety.get("early_warnings")}
    payload["env_factory"] = None
    return payload


def structural_run_id(config: dict[str, Any]) -> str:
    """The id of a run whose checkpoints predate run ids: a hash of what defines the run (env,
    context, networks, seed), so that its own checkpoints match each other and no other run's."""
    training = config.get("training", {})
    keys = ("hidden_sizes", "actor_hidden_sizes", "critic_hidden_sizes", "seed", "num_envs")
    defining = {"env": config.get("env"), "context": config.get("context"),
                "training": {key: training.get(key) for key in keys}}
    digest = hashlib.sha256(json.dumps(defining, sort_keys=True, default=str).encode()).hexdigest()
    return f"cfg-{digest[:12]}"


def _v7_to_v8(payload: dict[str, Any]) -> dict[str, Any]:
    """Format 8 records the run's lineage (run id, what it resumed from, segments, rewinds); a run
    from before gets the id its config defines and no recorded segments."""
    payload["lineage"] = {"run_id": structural_run_id(payload["config"]), "resumed_from": None, "segments": [],
                          "rewinds": []}
    return payload


def _v8_to_v9(payload: dict[str, Any]) -> dict[str, Any]:
    """Format 9 made the categorical critic (`critic_loss: hl_gauss`) the default and added the critic
    options (ensembles, CrossQ, SimBa, observation normalisation), all off by default; older runs
    were trained with the squared TD error."""
    payload["config"].setdefault("training", {}).setdefault("critic_loss", "mse")
    return payload


def _v9_to_v10(payload: dict[str, Any]) -> dict[str, Any]:
    """Format 10 gave `critic_learning_rate: null` its meaning of 5/3 of `learning_rate`; older runs'
    null meant `learning_rate` itself, which they keep."""
    training = payload["config"].setdefault("training", {})
    if training.get("critic_learning_rate") is None:
        training["critic_learning_rate"] = training.get("learning_rate", 3e-4)
    return payload


# MIGRATIONS[v] turns a format-v checkpoint into a format-(v+1) one.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4, 4: _v4_to_v5, 5: _v5_to_v6, 6: _v6_to_v7, 7: _v7_to_v8,
    8: _v8_to_v9, 9: _v9_to_v10,
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, unsafe, or from another setup."""


def checkpoint_path(checkpoint_dir: str | Path, step: int) -> Path:
    return Path(checkpoint_dir) / f"sac_step_{step}.pt"


def list_checkpoints(checkpoint_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the `sac_step_N.pt` files in the folder, oldest first."""
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
    return sorted(found)


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Write atomically: a temporary file in the same folder, fsync, then rename over `path`.

    A crash at any point leaves either the previous file or the complete new one under `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**payload, "format_version": FORMAT_VERSION}
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer killed mid-save
        stale.unlink(missing_ok=True)
    return path


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (where the platform lets a folder be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def peek_checkpoint(path: str | Path) -> dict[str, Any]:
    """`load_checkpoint` with the tensors memory-mapped, not read: cheap for the metadata (step,
    lineage, config) of a checkpoint that holds a large replay buffer."""
    return load_checkpoint(path, mmap=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Load safely and migrate to the current format; every failure is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        hint = _nearby_checkpoints(path)
        raise CheckpointError(f"checkpoint not found: {path}{hint}")
    if not zipfile.is_zipfile(path):  # torch.save always writes a zip archive
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt file?): not a torch archive")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused to load: it contains objects other than tensors and plain data, which "
            f"could run code when loaded ({_unsafe_reason(err)}). Only load checkpoints written by dynsac."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or corrupt file?): {_first_line(err)}"
        ) from None
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise CheckpointError(f"{path}: not a dynsac checkpoint (no format_version)")
    return migrate(payload, path)


def migrate(payload: dict[str, Any], path: str | Path = "<checkpoint>") -> dict[str, Any]:
    version = payload["format_version"]
    if not isinstance(version, int) or version < 1 or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version!r} is not supported; this dynsac reads formats 1 to "
            f"{FORMAT_VERSION} (a newer dynsac wrote it?)"
        )
    while version < FORMAT_VERSION:
        payload = MIGRATIONS[version](payload)
        version += 1
        payload["format_version"] = version
    return payload


def _unsafe_reason(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines()]
    return next((line for line in lines if "GLOBAL" in line.upper() and "unsupported" in line.lower()), "an object type not allowed by weights_only")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _nearby_checkpoints(path: Path) -> str:
    found = list_checkpoints(path.parent)
    if not found:
        return ""
    names = ", ".join(p.name for _, p in found[-3:])
    return f" (that folder has: {names})"
