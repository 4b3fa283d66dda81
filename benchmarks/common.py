"""What the benchmark scripts share: results files, the source snapshot, the pool of workers."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT / "src") not in sys.path:  # also works without PYTHONPATH=src (and in spawned workers)
    sys.path.insert(0, str(REPO_ROOT / "src"))


def require_sb3(without: str) -> None:
    """Exit with the install command when --libs asks for Stable-Baselines3 and it is missing;
    `without` is the --libs value that runs without it."""
    try:
        import stable_baselines3  # noqa: F401 - only checks that it is installed
    except ImportError:
        sys.exit("error: --libs includes sb3 but stable-baselines3 is not installed.\n"
                 f"  Install it with:  pip install -e '.[bench]'\n  or run without it:  --libs {without}")


def git_revision() -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{rev}{'-dirty' if dirty else ''}" if rev else None
    except (OSError, subprocess.SubprocessError):
        return None


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable))
    os.replace(tmp, path)  # atomic: a kill mid-write never leaves a truncated file


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def read_previous_runs(path: Path) -> tuple[dict[str, Any], float]:
    """The runs and total wall time a killed invocation left in `path` (for --resume-results)."""
    if not path.is_file():
        print(f"note: --resume-results but {path} does not exist yet; running everything", flush=True)
        return {}, 0.0
    try:
        previous = json.loads(path.read_text())
        return previous.get("runs", {}), float(previous.get("wall_time_total_s", previous.get("wall_time_s", 0.0)))
    except (json.JSONDecodeError, OSError, ValueError, TypeError) as err:
        print(f"warning: cannot read {path} ({err}); starting afresh", flush=True)
        return {}, 0.0


def snapshot_source(prefix: str, files: Iterable[Path] = ()) -> tuple[Path, dict[Path, Path]]:
    """Copy src/dynsac (and `files`) to a temporary folder. The package is edited while benchmarks
    run: every run of one invocation then uses the same code and configs. Returns the folder
    (to put first on sys.path) and where each of `files` was copied."""
    snapshot = Path(tempfile.mkdtemp(prefix=prefix))
    shutil.copytree(REPO_ROOT / "src" / "dynsac", snapshot / "dynsac", ignore=shutil.ignore_patterns("__pycache__"))
    copies = {}
    for index, path in enumerate(files):
        copy = snapshot / "files" / f"{index}_{path.name}"
        copy.parent.mkdir(exist_ok=True)
        shutil.copyfile(path, copy)
        copies[path] = copy
    return snapshot, copies


def use_snapshot(code_dir: str | None) -> None:
    """In a worker: import dynsac from the launch-time snapshot, not the live tree."""
    if code_dir:
        sys.path.insert(0, code_dir)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it terminates the pool


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_pool(run_one: Callable[[dict[str, Any]], dict[str, Any]], specs: list[dict[str, Any]],
             jobs: int) -> Iterator[dict[str, Any]]:
    """Yield each spec's result as it finishes, from `jobs` spawned workers (one torch thread
    each, one run per worker process). SIGTERM and Ctrl-C stop the workers and raise
    KeyboardInterrupt in the caller, after the results already yielded."""
    if not specs:
        return
    pool = mp.get_context("spawn").Pool(min(jobs, len(specs)), initializer=_init_worker, maxtasksperchild=1)
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield from pool.imap_unordered(run_one, specs)
        pool.close()
    except KeyboardInterrupt:
        pool.terminate()
        raise
    finally:
        pool.join()
        signal.signal(signal.SIGTERM, previous_term)
