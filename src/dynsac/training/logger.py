"""Run logging: TensorBoard events, JSON-lines metrics, and console progress."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import torch
import yaml
from torch import Tensor

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"


class MetricAccumulator:
    """Keeps per-update metric tensors on their device; averaged and read only when logged.

    `add` only stores references (no tensor work per update); a metric missing from some updates
    (the policy's, with `policy_delay` > 1) is averaged over the updates that produced it."""

    def __init__(self) -> None:
        self._values: dict[str, list[Tensor]] = {}

    def add(self, metrics: Mapping[str, Tensor]) -> None:
        for name, value in metrics.items():
            self._values.setdefault(name, []).append(value.detach() if value.requires_grad else value)

    def pop_means(self) -> dict[str, float]:
        """Means since the last call, as floats (the only host sync of the update metrics)."""
        if not self._values:
            return {}
        names = list(self._values)
        means = torch.stack([torch.stack(self._values[n]).double().mean() for n in names]).tolist()
        self._values = {}
        return dict(zip(names, means))


class RunLogger:
    """Writes scalars to TensorBoard and to `metrics.jsonl` in the run folder."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, resume_step: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / METRICS_FILE
        if resume_step is not None:
            drop_records_after(self.metrics_path, resume_step)
        self._file: IO[str] = self.metrics_path.open("a")
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events a crashed run wrote past the resumed step.
            self._writer = SummaryWriter(str(self.run_dir), purge_step=resume_step)

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        record = {"step": step, "time": round(time.time(), 3), **{k: _json_number(v) for k, v in scalars.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._writer is not None:
            for name, value in scalars.items():
                self._writer.add_scalar(name, value, step)

    def event(self, step: int, kind: str, message: str, **details: Any) -> None:
        """A discrete event (warning, rollback, ...) as a JSON line and a TensorBoard text entry."""
        record = {"step": step, "time": round(time.time(), 3), "event": kind, "message": message, **details}
        self._file.write(json.dumps(record, default=str) + "\n")
        self._file.flush()
        if self._writer is not None:
            self._writer.add_text(f"events/{kind}", message, step)

    def write_config(self, config: Mapping[str, Any]) -> None:
        """The resolved config as `config.yaml`, so plots and summaries can tell runs apart."""
        _write_atomic(self.run_dir / CONFIG_FILE, yaml.safe_dump(dict(config), sort_keys=False))

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """End-of-run facts (steps, wall time, final/best eval, warnings, rollbacks) as `summary.json`."""
        clean = {k: (_json_number(v) if isinstance(v, float) else v) for k, v in summary.items()}
        _write_atomic(self.run_dir / SUMMARY_FILE, json.dumps(clean, indent=2, default=str) + "\n")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._file.close()


def _json_number(value: float) -> float | str:
    """JSON has no NaN/Inf: write them as strings so the file stays valid JSON."""
    return value if math.isfinite(value) else str(value)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def drop_records_after(path: Path, step: int) -> None:
    """Rewrite `path` without the records past `step` (atomically), for a resumed run."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    _write_atomic(path, "".join(line + "\n" for line in kept))


class Progress:
    """A one-line progress bar on a terminal; periodic plain lines otherwise (logs, CI)."""

    def __init__(self, total: int, mode: str = "auto", interval_s: float = 10.0, stream: IO[str] | None = None) -> None:
        self.total, self.interval_s = total, interval_s
        self.stream = stream or sys.stderr
        is_tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.mode = ("bar" if is_tty else "lines") if mode == "auto" else mode
        self._start_time = time.monotonic()
        self._start_step: int | None = None
        self._last_print = 0.0
        self._last_printed: tuple[int, float | None] | None = None  # (step, eval) of the last line
        self.last_eval: float | None = None
        self.last_eval_ratio: float | None = None  # optimal / agent return, where the env knows it

    def update(self, step: int, force: bool = False) -> None:
        if self.mode == "off":
            return
        now = time.monotonic()
        if self._start_step is None:
            self._start_step, self._start_time = step, now
        min_gap = 0.2 if self.mode == "bar" else self.interval_s
        if not force and now - self._last_print < min_gap:
            return
        if self.mode == "lines" and self._last_printed == (step, self.last_eval):
            return  # the same line again (e.g. close right after the last update)
        self._last_print, self._last_printed = now, (step, self.last_eval)
        line = self.describe(step, now)
        if self.mode == "bar":
            self.stream.write("\r" + line.ljust(100)[:120])
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def steps_per_sec(self, step: int, now: float | None = None) -> float:
        elapsed = (now or time.monotonic()) - self._start_time
        return (step - (self._start_step or 0)) / elapsed if elapsed > 0 else 0.0

    def describe(self, step: int, now: float) -> str:
        rate = self.steps_per_sec(step, now)
        fraction = step / self.total if self.total else 1.0
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        eval_text = f"{self.last_eval:,.1f}" if self.last_eval is not None else "-"
        if self.last_eval_ratio is not None:
            eval_text += f" ({self.last_eval_ratio:.2f} of optimum)"
        if self.mode == "bar":
            filled = int(20 * fraction)
            head = f"[{'#' * filled}{'.' * (20 - filled)}]"
        else:
            head = "step"
        return (
            f"{head} {step:,}/{self.total:,} ({100 * fraction:.0f}%) | {rate:,.0f} steps/s "
            f"| eval return {eval_text} | ETA {_format_seconds(eta)}"
        )

    def close(self, step: int) -> None:
        if self.mode == "off":
            return
        self.update(step, force=True)
        if self.mode == "bar":
            self.stream.write("\n")
        self.stream.flush()


def _format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--:--"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"
