"""A run's lineage (run id, what it resumed from, its segments and rewinds) and rewinding.

Resuming from a checkpoint older than the newest one of the same run *rewinds*: the later
checkpoints of that run (regular, emergency, `sac_best.pt` when it is later) and a copy of
`metrics.jsonl` move into `checkpoint_dir/rewound_from_step_N_TIME/`, and training goes on from
the older one. Nothing is deleted. The move is a marker file listing the plan, then one atomic
rename per file, then the marker's removal: a process killed half-way leaves every file in one
place or the other, and the next start completes the move.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynsac.config import Config
from dynsac.events import EventReporter
from dynsac.safety.diagnosis import resume_command
from dynsac.training.checkpoint import CheckpointError, fsync_folder, peek_checkpoint
from dynsac.training.logger import METRICS_FILE

REWIND_MARKER = ".rewind-pending.json"
REWOUND_PREFIX = "rewound_from_step_"
RUN_FILE = re.compile(r"^sac_step_(\d+)(_emergency)?\.pt$")
BEST_FILE = "sac_best.pt"


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass
class Lineage:
    """Who this run is and how it got here; saved in every checkpoint."""

    run_id: str = field(default_factory=new_run_id)
    resumed_from: dict[str, Any] | None = None  # {"run_id", "step", "checkpoint"} of the last resume
    segments: list[dict[str, Any]] = field(default_factory=list)  # closed: {"start_step", "end_step", "wall_s"}
    rewinds: list[dict[str, Any]] = field(default_factory=list)  # {"step", "from_step", "moved_to"}
    segment_start_step: int = 0
    _segment_start: float | None = None

    def start_segment(self, step: int, events: EventReporter | None = None, rewound: dict | None = None) -> None:
        """A new segment of the run starts at `step` (the run folder is open): its clock starts, and
        the resume and the rewind that led here are logged as events (the plots mark them)."""
        first_in_process = self._segment_start is None
        self.segments.extend(self.current_segment(step))  # a second train() of this trainer: close the first
        self.segment_start_step, self._segment_start = step, time.monotonic()
        if events is None:
            return
        if self.resumed_from is not None and first_in_process:
            events.report(step, "resume", f"resumed from {self.resumed_from['checkpoint']}", console=None,
                          run_id=self.run_id)
        if rewound is not None:
            events.report(step, "rewind", f"rewound to step {step} from step {rewound['from_step']}; the later files "
                          f"are in {rewound['moved_to']}", console=None, from_step=rewound["from_step"],
                          moved_to=rewound["moved_to"])

    def record_rewind(self, rewound: dict, run_dir: Path) -> None:
        """Keep the rewind just done; back on an abandoned branch, its metrics become the run's record."""
        self.rewinds.append(rewound)
        if self.resumed_from is not None:
            restore_branch_metrics(Path(self.resumed_from["checkpoint"]), run_dir)

    def current_segment(self, step: int) -> list[dict[str, Any]]:
        if self._segment_start is None:
            return []
        return [{"start_step": self.segment_start_step, "end_step": step,
                 "wall_s": time.monotonic() - self._segment_start}]

    @property
    def trained_in_this_process(self) -> bool:
        return self._segment_start is not None

    def all_segments(self, step: int) -> list[dict[str, Any]]:
        return self.segments + self.current_segment(step)

    def state_dict(self, step: int) -> dict[str, Any]:
        return {"run_id": self.run_id, "resumed_from": self.resumed_from, "segments": self.all_segments(step),
                "rewinds": list(self.rewinds)}

    def load_state_dict(self, state: dict[str, Any], step: int, source: str) -> None:
        """Continue the run of `state` from its checkpoint `source` at `step`."""
        self.run_id, self.segments, self.rewinds = state["run_id"], list(state["segments"]), list(state["rewinds"])
        self.resumed_from = {"run_id": state["run_id"], "step": step, "checkpoint": source}


def run_files(folder: Path) -> list[tuple[int, Path]]:
    """The run's checkpoints in `folder` (regular and emergency) by step."""
    if not folder.is_dir():
        return []
    found = [(int(match.group(1)), path) for path in folder.iterdir() if (match := RUN_FILE.match(path.name))]
    return sorted(found)


def checkpoint_run_id(path: Path) -> str:
    lineage = peek_checkpoint(path).get("lineage") or {}
    return lineage.get("run_id") or "unknown"


def prepare_checkpoint_dir(config: Config, step: int, lineage: Lineage, events: EventReporter) -> dict | None:
    """Make `training.checkpoint_dir` safe to write from `step` on: refuse another run's later
    checkpoints, rewind past this run's (unless `training.rewind` is off). Returns the rewind done."""
    folder = Path(config.training.checkpoint_dir)
    complete_pending_rewind(folder, events)
    if not config.training.checkpoint_interval:
        return None
    resumed = lineage.resumed_from
    source = None if resumed is None else Path(resumed["checkpoint"]).resolve()
    # At the resume step itself, another file than the one resumed from would be overwritten; once
    # this trainer has trained, a file at its current step is its own.
    same_step_is_later = source is not None and not lineage.trained_in_this_process
    later = [(saved, path) for saved, path in run_files(folder)
             if (step == 0 or saved > step or (saved == step and same_step_is_later)) and path.resolve() != source]
    best = folder / BEST_FILE
    if step and best.is_file() and peek_checkpoint(best)["step"] > step:
        later.append((peek_checkpoint(best)["step"], best))
    going_back = source is not None and source.parent.name.startswith(REWOUND_PREFIX)
    if not later and not going_back:
        return None
    if not later:  # back to an abandoned branch: only the current branch's metrics move aside
        return rewind(folder, [], step, Path(config.logging.dir), events)
    newest_step, newest = max(later)
    if step == 0:
        raise CheckpointError(
            f"training.checkpoint_dir = {str(folder)!r} already holds {newest.name} (and {len(later) - 1} more) of "
            f"an earlier run (run id {checkpoint_run_id(newest)}); a fresh run would overwrite them. Continue that "
            f"run with:\n  {resume_command(newest)}\nor start afresh elsewhere: --set training.checkpoint_dir=NEW_DIR "
            f"--set logging.dir=NEW_RUN_DIR"
        )
    foreign = [path for _, path in later if checkpoint_run_id(path) != lineage.run_id]
    if foreign:
        raise CheckpointError(
            f"training.checkpoint_dir = {str(folder)!r} holds {foreign[-1].name} of another run (run id "
            f"{checkpoint_run_id(foreign[-1])}; the checkpoint resumed from is run {lineage.run_id}); resuming from "
            f"step {step} would mix the two. Resume into a folder of its own: --set training.checkpoint_dir=NEW_DIR "
            f"--set logging.dir=NEW_RUN_DIR"
        )
    if not config.training.rewind:
        raise CheckpointError(
            f"training.checkpoint_dir = {str(folder)!r} holds {len(later)} later checkpoint(s) of this run, up to "
            f"{newest.name}; resuming from step {step} would rewind past them and training.rewind is off "
            f"(--no-rewind). Continue from the newest with:\n  {resume_command(newest)}\nor allow rewinding "
            f"(drop --no-rewind; the later files are moved aside, never deleted)"
        )
    return rewind(folder, later, step, Path(config.logging.dir), events)


def rewind(folder: Path, later: list[tuple[int, Path]], step: int, run_dir: Path, events: EventReporter) -> dict:
    """Move `later` (files in `folder`) and a copy of the run's metrics into a new subfolder."""
    newest_step = max((saved for saved, _ in later), default=step)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = folder / f"{REWOUND_PREFIX}{newest_step}_{stamp}"
    suffix = 1
    while target.exists():
        suffix += 1
        target = folder / f"{REWOUND_PREFIX}{newest_step}_{stamp}_{suffix}"
    metrics = run_dir / METRICS_FILE
    plan = {"target": target.name, "files": [path.name for _, path in sorted(later)], "step": step,
            "from_step": newest_step, "metrics": str(metrics) if metrics.is_file() else None}
    _write_atomic(folder / REWIND_MARKER, json.dumps(plan, indent=1))
    complete_pending_rewind(folder, events)
    return {"step": step, "from_step": newest_step, "moved_to": str(target)}


def complete_pending_rewind(folder: Path, events: EventReporter) -> None:
    """Finish a rewind's move that a killed process left half-done (or do one just planned)."""
    marker = folder / REWIND_MARKER
    if not marker.is_file():
        return
    plan = json.loads(marker.read_text())
    target = folder / plan["target"]
    target.mkdir(exist_ok=True)
    metrics = plan["metrics"]
    if metrics and Path(metrics).is_file() and not (target / METRICS_FILE).is_file():
        shutil.copyfile(metrics, target / f"{METRICS_FILE}.tmp")
        os.replace(target / f"{METRICS_FILE}.tmp", target / METRICS_FILE)
    for name in plan["files"]:
        if (folder / name).is_file():
            os.replace(folder / name, target / name)
    back = _branch_head(target, plan["files"]) if plan["files"] else None
    how_back = f"Go back to this branch with:\n  {resume_command(back)}\n" if back else ""
    (target / "REWOUND.txt").write_text(
        f"Moved here when the run was rewound to step {plan['step']} (from step {plan['from_step']}).\n"
        f"metrics.jsonl is the run's record as it stood then. {how_back}")
    fsync_folder(target)
    marker.unlink()
    fsync_folder(folder)
    names = plan["files"]
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    moved = " and ".join(part for part in (shown, f"a copy of {METRICS_FILE}" if metrics else "") if part)
    back_line = f"; go back to that branch with: {resume_command(back)}" if back else ""
    events.say(f"rewound to step {plan['step']}: moved {moved or 'nothing'} to {target}/{back_line}")


def _branch_head(target: Path, names: list[str]) -> Path:
    """The newest regular checkpoint among the moved files (else the newest file)."""
    regular = [name for name in names if (match := RUN_FILE.match(name)) and not match.group(2)]
    pool = regular or names
    return target / max(pool, key=lambda name: int(RUN_FILE.match(name).group(1)) if RUN_FILE.match(name) else -1)


def restore_branch_metrics(checkpoint: Path, run_dir: Path) -> bool:
    """Resuming from a checkpoint inside a rewound folder: put that branch's metrics back as the
    run's record (the current branch's copy was moved aside first). Returns whether it did."""
    saved = checkpoint.parent / METRICS_FILE
    if not (checkpoint.parent.name.startswith(REWOUND_PREFIX) and saved.is_file()):
        return False
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(saved, run_dir / f"{METRICS_FILE}.tmp")
    os.replace(run_dir / f"{METRICS_FILE}.tmp", run_dir / METRICS_FILE)
    return True


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_folder(path.parent)


def rewind_target(run_dir: str | Path, to: str) -> tuple[Path, str]:
    """The checkpoint of the run in `run_dir` nearest its best evaluation (`to="best"`) or step
    `to`, and why it was chosen. Bad input is a CheckpointError naming what is missing."""
    import yaml

    from dynsac.training.checkpoint import list_checkpoints
    from dynsac.training.logger import CONFIG_FILE, read_metrics

    run_dir = Path(run_dir)
    config_file = run_dir / CONFIG_FILE
    if not config_file.is_file():
        raise CheckpointError(f"RUN_DIR = {str(run_dir)!r}: no {CONFIG_FILE} there; give a run's logging.dir")
    folder = Path(yaml.safe_load(config_file.read_text())["training"]["checkpoint_dir"])
    checkpoints = list_checkpoints(folder)
    if not checkpoints:
        raise CheckpointError(f"{run_dir}: its training.checkpoint_dir = {str(folder)!r} holds no sac_step_N.pt")
    if to == "best":
        evals = [(r["step"], r["eval/return_mean"]) for r in read_metrics(run_dir) if "eval/return_mean" in r]
        if not evals:
            raise CheckpointError(f"{run_dir}: no evaluation in {METRICS_FILE} yet; rewind --to STEP instead")
        step, value = max(evals, key=lambda entry: entry[1])
        why = f"the best eval/return_mean, {value:,.4g}, was at step {step:,}"
    else:
        try:
            step, why = int(to), f"the checkpoint nearest step {int(to):,}"
        except ValueError:
            raise CheckpointError(f"--to {to!r}: expected 'best' or a step number") from None
    saved, path = min(checkpoints, key=lambda entry: (abs(entry[0] - step), entry[0]))
    return path, why
