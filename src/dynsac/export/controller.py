"""`Controller`: a trained policy outside the trainer, the same whatever file it comes from.

`load_controller(path)` reads a checkpoint (`.pt`, run eagerly in torch), an exported ONNX graph
(`.onnx`, run with onnxruntime) or an exported torch program (`.pt2`). The controller keeps the
last K transitions itself for a learned dynamics map, reads the env's context from `info` or a
Dict observation, sanitises its inputs as training does and never returns a non-finite action.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynsac.export.module import OUTPUT_NAMES, ControllerModule, controller_module
from dynsac.export.spec import SPEC_KEY, build_spec, read_sidecar
from dynsac.training.checkpoint import CheckpointError, load_checkpoint

EXPORT_EXTRA_HINT = "pip install 'dynsac[export]'"
Backend = Callable[[dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray, np.ndarray]]


class Controller:
    """Acts for one env, or a batch of N envs with a history per row.

    `spec` describes the file: spaces, context source, history length K and feature layout,
    input and output names, dynsac version and the checkpoint's step.
    """

    def __init__(self, backend: Backend, spec: dict[str, Any], module: ControllerModule | None = None) -> None:
        self.spec, self._backend, self._module = spec, backend, module
        self.obs_dim, self.action_dim = spec["obs_dim"], spec["action_dim"]
        self.context_source, self.history_length = spec["context"]["source"], spec["context"]["history_length"]
        self.sanitized_values = 0  # non-finite observation entries replaced by 0
        self.nonfinite_actions = 0  # actions replaced by the zero (mid-range) action
        self.reset()

    def reset(self) -> None:
        """Start an episode (every row's): the history is cleared."""
        self._window: np.ndarray | None = None
        self._mask: np.ndarray | None = None
        self._last: tuple[np.ndarray, np.ndarray] | None = None  # (obs, normalised action) of the last act()

    def act(self, obs: Any, info: dict[str, Any] | None = None, deterministic: bool = True) -> np.ndarray:
        """The action in the env's units for `obs` ((obs_dim,) or (N, obs_dim), or a Dict
        observation {"obs", "context"}); `info["context"]` holds the env's context where the
        controller needs it. Call `reset()` at every episode start."""
        if not deterministic:
            raise ValueError("Controller.act(deterministic=False): a controller acts with the policy's mode; "
                             "stochastic actions are for training (SACTrainer)")
        obs, env_context = self._split(obs, info)
        single = obs.ndim == 1
        rows = obs.reshape(-1, self.obs_dim)
        inputs = {"obs": rows}
        if self.context_source == "env":
            inputs["context"] = self._env_context(env_context, rows.shape[0])
        elif self.context_source == "learned":
            inputs["window"], inputs["mask"] = self._history(rows)
        action, action_normalized, nonfinite = self._backend(inputs)
        if nonfinite.any():
            self._report_nonfinite(inputs, nonfinite)
        self._last = (rows, action_normalized)
        return action[0] if single else action

    # ----------------------------------------------------------------- inputs
    def _split(self, obs: Any, info: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray | None]:
        env_context = None
        if isinstance(obs, dict):
            obs, env_context = obs.get("obs"), obs.get("context")
        elif info is not None:
            env_context = info.get("context")
        obs = np.asarray(obs, dtype=np.float32)
        if obs.ndim not in (1, 2) or obs.shape[-1] != self.obs_dim:
            raise ValueError(f"Controller.act: obs has shape {obs.shape}; expected ({self.obs_dim},) for one env "
                             f"or (N, {self.obs_dim}) for N envs")
        finite = np.isfinite(obs)
        if not finite.all():
            replaced = int((~finite).sum())
            self.sanitized_values += replaced
            warnings.warn(f"Controller.act: observation had {replaced} non-finite value(s); replaced by 0 "
                          f"({self.sanitized_values} so far)", RuntimeWarning, stacklevel=3)
            obs = np.where(finite, obs, 0.0).astype(np.float32)
        return obs, env_context

    def _env_context(self, env_context: Any, rows: int) -> np.ndarray:
        size = self.spec["context"]["dim"]
        if env_context is None:
            raise ValueError("Controller.act: this controller needs the env's context (context.source = 'env'): "
                             f"pass info={{'context': ...}} ({size} values per row) or a Dict observation "
                             "{'obs', 'context'}")
        context = np.asarray(env_context, dtype=np.float32).reshape(-1, size) if np.size(env_context) else None
        if context is None or context.shape[0] != rows:
            raise ValueError(f"Controller.act: the context has shape {np.shape(env_context)}; expected ({size},) or "
                             f"({rows}, {size})")
        return context

    def _history(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The window before this step: the last K (s, a, s' - s), oldest first, padded in front."""
        count, length = rows.shape[0], self.history_length
        if self._window is None or self._window.shape[0] != count:
            if self._window is not None:
                raise ValueError(f"Controller.act: {count} observation rows, but this episode started with "
                                 f"{self._window.shape[0]}; call reset() to start afresh")
            features = 2 * self.obs_dim + self.action_dim
            self._window = np.zeros((count, length, features), dtype=np.float32)
            self._mask = np.zeros((count, length), dtype=np.float32)
        if self._last is not None:
            last_obs, last_action = self._last
            self._window[:, :-1], self._mask[:, :-1] = self._window[:, 1:].copy(), self._mask[:, 1:].copy()
            self._window[:, -1] = np.concatenate([last_obs, last_action, rows - last_obs], axis=-1)
            self._mask[:, -1] = 1.0
        return self._window, self._mask

    def _report_nonfinite(self, inputs: dict[str, np.ndarray], nonfinite: np.ndarray) -> None:
        self.nonfinite_actions += int(nonfinite.sum())
        rows = np.flatnonzero(nonfinite).tolist()
        if self._module is not None:
            from dynsac.safety.guards import trace_policy_nonfinite

            context = None
            if self.context_source != "none":
                with torch.no_grad():
                    context = self._module.context_of(**{k: torch.as_tensor(v) for k, v in inputs.items()})
            origin = trace_policy_nonfinite(self._module.policy, torch.as_tensor(inputs["obs"]), context)
        else:
            bad = [name for name, value in inputs.items() if not np.isfinite(value).all()]
            origin = f"non-finite inputs: {', '.join(bad)}" if bad else "every input is finite; inside the graph"
        warnings.warn(f"Controller.act: the policy's action is non-finite in rows {rows[:8]} ({origin}); acting "
                      f"with the zero action (mid-range) instead ({self.nonfinite_actions} so far)", RuntimeWarning,
                      stacklevel=3)


# ----------------------------------------------------------------- loading
def load_controller(path: str | Path, device: str = "cpu", threads: int | None = None) -> Controller:
    """A `Controller` from a checkpoint (`.pt`), an ONNX graph (`.onnx`) or a torch program (`.pt2`).

    `threads`: onnxruntime's intra-op threads for an `.onnx` file (default: its own choice, all
    cores); torch's are set process-wide with `torch.set_num_threads`."""
    path = Path(path)
    if path.suffix not in (".pt", ".onnx", ".pt2"):
        raise CheckpointError(f"{path}: unknown suffix {path.suffix!r}; expected .pt (a checkpoint), .onnx or .pt2 "
                              "(files written by dynsac export)")
    if not path.is_file():
        raise CheckpointError(f"controller file not found: {path}")
    if path.suffix == ".pt":
        module, spec = module_from_checkpoint(path)
        return Controller(_torch_backend(module.to(device), device), spec, module)
    if path.suffix == ".pt2":
        return _load_pt2(path, device)
    return _load_onnx(path, device, threads)


def module_from_checkpoint(path: Path, env: Any = None) -> tuple[ControllerModule, dict[str, Any]]:
    """The controller module of a checkpoint and its spec (spaces from `env` when given)."""
    from dynsac.config import validate_config
    from dynsac.sac.build import build_agent

    payload = load_checkpoint(path)
    config = validate_config(payload["config"], source=f"{path} (saved config)")
    spaces = payload["spaces"]
    modules = payload["agent"]["modules"]
    context_dim = modules["policy.net.0.weight"].shape[1] - spaces["obs_dim"]
    agent = build_agent(config, spaces["obs_dim"], spaces["action_dim"], context_dim,
                        np.asarray(spaces["action_low"], dtype=np.float32),
                        np.asarray(spaces["action_high"], dtype=np.float32))
    agent.load_state_dict(modules)
    module = controller_module(agent.policy, config.context.source, agent.dynamics_map, config.safety.context_bound)
    return module, build_spec(payload, config, context_dim, module.input_names, env)


def _torch_backend(module: Callable, device: str) -> Backend:
    @torch.no_grad()
    def run(inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        outputs = module(*(torch.as_tensor(value, device=device) for value in inputs.values()))
        return tuple(output.cpu().numpy() for output in outputs)

    return run


def _load_pt2(path: Path, device: str) -> Controller:
    extra = {f"{SPEC_KEY}.json": ""}
    try:
        program = torch.export.load(str(path), extra_files=extra)
    except Exception as err:  # noqa: BLE001 - any unreadable file is one clear error
        raise CheckpointError(f"{path}: not a readable torch program (truncated or corrupt?): "
                              f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    spec = json.loads(extra[f"{SPEC_KEY}.json"]) if extra[f"{SPEC_KEY}.json"] else read_sidecar(path)
    return Controller(_torch_backend(program.module().to(device), device), spec)


def _load_onnx(path: Path, device: str, threads: int | None) -> Controller:
    try:
        import onnxruntime
    except ImportError:
        raise CheckpointError(f"{path}: running an .onnx controller needs onnxruntime: {EXPORT_EXTRA_HINT}") from None
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else None
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise CheckpointError(f"{path}: not a readable ONNX graph (truncated or corrupt?): "
                              f"{str(err).splitlines()[0]}") from None
    meta = session.get_modelmeta().custom_metadata_map
    spec = json.loads(meta[SPEC_KEY]) if SPEC_KEY in meta else read_sidecar(path)

    def run(inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(session.run(list(OUTPUT_NAMES), inputs))

    return Controller(run, spec)
