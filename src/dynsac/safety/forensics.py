"""Forensics: replay the update that went non-finite and name where it started.

Given the batch and the agent's state from just before that update, the replay records every
module's output in execution order (forward hooks, plus per-layer tracing inside the critic
ensemble) and reports the first one that held NaN/Inf, with the batch rows involved and what was
unusual about those rows' data; the backward pass runs under autograd anomaly detection, which
names the first backward operation that produced NaN.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

EXTREME = 1e6  # |value| beyond this in a batch is reported as extreme


@dataclass
class ForensicReport:
    first_nonfinite: str | None = None
    rows: list[int] = field(default_factory=list)
    batch_findings: list[str] = field(default_factory=list)
    backward_error: str | None = None

    def describe(self) -> str:
        parts = []
        if self.first_nonfinite:
            rows = f" in batch rows {self.rows[:8]}" if self.rows else ""
            parts.append(f"first non-finite output: {self.first_nonfinite}{rows}")
        if self.batch_findings:
            parts.append("batch: " + "; ".join(self.batch_findings[:6]))
        if self.backward_error:
            parts.append(f"backward: {self.backward_error}")
        return " | ".join(parts) if parts else "replay found nothing non-finite (a transient or non-deterministic event)"


def batch_findings(batch: Any) -> list[str]:
    """Rows of the batch holding non-finite or extreme values, named with their buffer index."""
    findings = []
    index = batch.index.tolist()
    for spec in fields(batch):
        value = getattr(batch, spec.name)
        if spec.name == "index" or not isinstance(value, Tensor) or not value.is_floating_point():
            continue
        per_row = value.reshape(value.shape[0], -1)
        bad = ~torch.isfinite(per_row).all(dim=1) | (per_row.abs() > EXTREME).any(dim=1)
        for row in torch.nonzero(bad).flatten().tolist()[:4]:
            entries = per_row[row]
            worst = entries[~torch.isfinite(entries)] if not torch.isfinite(entries).all() else entries[entries.abs().argmax()]
            shown = worst.flatten()[0].item()
            findings.append(f"row {row} (buffer index {index[row]}): {spec.name} = {shown:.3g}")
    return findings


class PreUpdateState:
    """A copy of the agent's parameters and buffers taken before every update, kept cheap: one
    fused copy into preallocated tensors (the optimizer states are not copied)."""

    def __init__(self, agent: nn.Module) -> None:
        state = agent.state_dict()  # aliases the live parameters, which are updated in place
        self.names, self._live = list(state), list(state.values())
        self._copy = [tensor.clone() for tensor in self._live]

    def capture(self) -> None:
        torch._foreach_copy_(self._copy, self._live)

    def state_dict(self) -> dict[str, Tensor]:
        return dict(zip(self.names, self._copy))


def investigate(agent: nn.Module, pre_update: dict[str, Tensor], batch: Any, backend: Any = None) -> ForensicReport:
    """Replay one update of a copy of `agent`, with the parameters it had before the update, on
    `batch`, with the gradient `backend` that runs through the modules (autograd: its forward
    hooks and the critics' per-layer trace see every output)."""
    replica = copy.deepcopy(agent)
    replica.load_state_dict(pre_update)
    report = ForensicReport(batch_findings=batch_findings(batch))

    def record(name: str, output: Any) -> None:
        if report.first_nonfinite is not None or not isinstance(output, Tensor) or not output.is_floating_point():
            return
        finite = torch.isfinite(output)
        if not bool(finite.all()):
            report.first_nonfinite = name
            rows_axis = 1 if output.dim() == 3 else 0  # critic ensemble outputs are (critics, batch, ...)
            bad = ~finite.reshape(*output.shape[: rows_axis + 1], -1).all(dim=-1)
            if rows_axis == 1:
                bad = bad.any(dim=0)
            report.rows = torch.nonzero(bad).flatten().tolist()

    handles = []
    for module_name, module in replica.named_modules():
        if module_name and not list(module.children()):
            kind = type(module).__name__
            handles.append(module.register_forward_hook(
                lambda _m, _in, out, name=f"{module_name} ({kind})": record(name, out)))
    for critic_name in ("critic", "critic_target")[: 1 if replica.critic_target is None else 2]:
        getattr(replica, critic_name).trace = lambda layer, out, c=critic_name: record(f"{c} ensemble {layer}", out)
    replica.settings = dataclasses.replace(replica.settings, skip_nonfinite_gradients=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # anomaly mode announces itself; the report says enough
            with torch.autograd.detect_anomaly(check_nan=True):
                replica.update(batch, backend)
    except RuntimeError as err:
        report.backward_error = str(err).strip().splitlines()[0]
    finally:
        for handle in handles:
            handle.remove()
    if report.first_nonfinite is None:
        for name, tensor in replica.named_parameters():
            if not bool(torch.isfinite(tensor).all()):
                report.first_nonfinite = f"parameter {name} after the optimizer step"
                break
    return report
