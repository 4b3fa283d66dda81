"""`dynsac export`: a checkpoint's controller as one self-contained ONNX graph or torch program.

Inputs: the observation, and the env's context or the raw history window and its mask. Outputs:
the deterministic action in env units (plus the normalised action and a non-finite flag).
Normalisation statistics, encoder, policy, tanh and rescale are inside; no replay buffer, no
optimizer state. Files are written to a temporary name and renamed: a failed export changes
nothing on disk.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from dynsac.envs.factory import EnvFactory, make_env
from dynsac.export.controller import EXPORT_EXTRA_HINT, module_from_checkpoint
from dynsac.export.module import OUTPUT_NAMES, ControllerModule
from dynsac.export.spec import SPEC_KEY, fix_batch_size, sidecar_path
from dynsac.training.checkpoint import load_checkpoint

MAX_DYNAMIC_BATCH = 1 << 20


class ExportError(ValueError):
    """An export that cannot be done: names the file, the env or the missing extra."""


def export_controller(checkpoint: str | Path, out: str | Path, batch_size: int | str = "dynamic",
                      env_fn: EnvFactory | None = None) -> Path:
    """Write the controller of `checkpoint` to `out` (`.onnx` or `.pt2`) and its spec beside it
    (`out` with suffix `.json`). `batch_size`: "dynamic" (any N) or a fixed N."""
    checkpoint, out = Path(checkpoint), Path(out)
    if out.suffix not in (".onnx", ".pt2"):
        raise ExportError(f"--out {out}: unknown suffix {out.suffix!r}; expected .onnx (onnxruntime, C++, ...) or "
                          ".pt2 (torch.export)")
    if out.suffix == ".onnx":
        _require_onnx()
    fixed = _batch_size(batch_size)
    env = _rebuild_env(checkpoint, env_fn)
    module, spec = module_from_checkpoint(checkpoint, env)
    env.close()
    fix_batch_size(spec, fixed)
    example = _example_inputs(spec, fixed or 2)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.stem}.tmp{out.suffix}")  # torch.export wants the suffix
    try:
        (_write_onnx if out.suffix == ".onnx" else _write_pt2)(module, example, fixed, spec, temporary)
        sidecar = sidecar_path(out)
        sidecar_tmp = sidecar.with_name(f".{sidecar.name}.tmp")
        sidecar_tmp.write_text(json.dumps(spec, indent=1, allow_nan=False) + "\n")
        os.replace(temporary, out)
        os.replace(sidecar_tmp, sidecar)
    finally:
        for leftover in (temporary, sidecar_path(out).with_name(f".{sidecar_path(out).name}.tmp")):
            leftover.unlink(missing_ok=True)
    return out


def _require_onnx() -> None:
    missing = []
    for name in ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(f"exporting to .onnx needs {' and '.join(missing)}, which are not installed: "
                          f"{EXPORT_EXTRA_HINT}")


def _batch_size(batch_size: int | str) -> int | None:
    if batch_size == "dynamic":
        return None
    try:
        size = int(batch_size)
    except (TypeError, ValueError):
        size = 0
    if not 1 <= size <= MAX_DYNAMIC_BATCH:
        raise ExportError(f"--batch-size {batch_size!r}: expected 'dynamic' or a number from 1 to {MAX_DYNAMIC_BATCH}")
    return size


def _rebuild_env(checkpoint: Path, env_fn: EnvFactory | None) -> Any:
    payload = load_checkpoint(checkpoint)
    env_cfg = payload["config"]["env"]
    trained_with = payload.get("env_factory")
    if trained_with is not None and env_fn is None:
        raise ExportError(f"{checkpoint}: was trained on an env built by env_fn {trained_with}; export it in Python "
                          f"with export_controller(..., env_fn={trained_with.rsplit('.', 1)[-1]})")
    try:
        return make_env(env_cfg["id"], env_cfg["kwargs"], env_cfg["max_episode_steps"], env_fn)
    except Exception as err:  # noqa: BLE001 - an env that cannot be rebuilt, for whatever reason
        raise ExportError(f"{checkpoint}: its env {env_cfg['id']!r} cannot be rebuilt here, so its spaces cannot be "
                          f"recorded: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None


def _example_inputs(spec: dict[str, Any], rows: int) -> tuple[torch.Tensor, ...]:
    return tuple(torch.zeros([rows, *item["shape"][1:]]) for item in spec["inputs"])


def _dynamic_shapes(module: ControllerModule, fixed: int | None) -> tuple | None:
    if fixed is not None:
        return None
    batch = torch.export.Dim("batch", min=1, max=MAX_DYNAMIC_BATCH)
    return tuple({0: batch} for _ in module.input_names)


@contextlib.contextmanager
def _quiet(logger: str):
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _write_pt2(module: ControllerModule, example: tuple, fixed: int | None, spec: dict[str, Any], path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.export.export(module, example, dynamic_shapes=_dynamic_shapes(module, fixed))
    torch.export.save(program, str(path), extra_files={f"{SPEC_KEY}.json": json.dumps(spec, allow_nan=False)})


def _write_onnx(module: ControllerModule, example: tuple, fixed: int | None, spec: dict[str, Any], path: Path) -> None:
    import onnx

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), _quiet("torch.onnx"):
        warnings.simplefilter("ignore")  # the exporter narrates its passes and warns of what it does not need
        program = torch.onnx.export(module, example, dynamo=True, input_names=list(module.input_names),
                                    output_names=list(OUTPUT_NAMES), dynamic_shapes=_dynamic_shapes(module, fixed))
    model = program.model_proto
    entry = model.metadata_props.add()
    entry.key, entry.value = SPEC_KEY, json.dumps(spec, allow_nan=False)
    onnx.save(model, str(path))
