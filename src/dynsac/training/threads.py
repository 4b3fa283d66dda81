"""`training.torch_threads: auto`: as many torch threads as the machine has cores to spare.

Measured on this repo's 2-core VM (Pendulum-v1, [256, 256], batch 256, whole `dynsac train`
processes, env steps/s in the training loop; docs/benchmarks.md has the table and its command):

| OpenMP policy              | alone | beside one busy process |
|----------------------------|------:|------------------------:|
| 2 threads, OMP_WAIT_POLICY=PASSIVE | 79 | 46 |
| 2 threads, libgomp's default spin  | 160 | 13 |
| 1 thread                           | 89-105 | 66-95 |

Spinning workers are fastest alone and slowest beside another busy process (they burn the time
slices the other thread of their team waits for); one thread does not spin at all. So dynsac keeps
OpenMP's default wait policy (a bounded spin; a user's own `OMP_WAIT_POLICY` wins) and moves the
thread count instead: all cores when the machine is otherwise idle, fewer while other processes
keep cores busy, re-measured at every log interval.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import torch

from dynsac.cpu_load import BusyOthers, take_start_window
from dynsac.training.callbacks import Callback

if TYPE_CHECKING:
    from dynsac.training.trainer import SACTrainer

PROBE_S = 0.2  # the first measurement's shortest window; it opens when the trainer is built
STALE_S = 10.0  # a window opened longer ago than this before training (a notebook) starts afresh


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_for(cores: int, busy_others: float) -> int:
    """All cores on an idle machine; one core fewer per core other processes keep busy (at least 1)."""
    return max(1, min(cores, cores - round(busy_others)))


class ThreadGovernor(Callback):
    """Sets torch's thread count from the other processes' load at the start and every log interval."""

    def __init__(self, cores: int | None = None) -> None:
        self.cores = cores or usable_cores()
        self.threads: int | None = None
        # The first window spans the start-up, from the CLI's start (before torch loads) or from
        # here (this process's own CPU time is not counted), so training waits only for what is
        # left of PROBE_S.
        self._others: BusyOthers | None = take_start_window() or BusyOthers()

    def on_train_start(self, trainer: SACTrainer) -> None:
        if self._others is None or time.monotonic() - self._others.opened > STALE_S:
            self._others = BusyOthers()
        left = PROBE_S - (time.monotonic() - self._others.opened)
        if left > 0:
            time.sleep(left)
        self._apply(trainer, self._others.read(), first=True)

    def on_log(self, trainer: SACTrainer, step: int, scalars: dict[str, float]) -> None:
        if self._others is not None:
            self._apply(trainer, self._others.read())

    def _apply(self, trainer: SACTrainer, busy_others: float, first: bool = False) -> None:
        threads = threads_for(self.cores, busy_others)
        if threads == self.threads:
            return
        self.threads = threads
        torch.set_num_threads(threads)
        why = ("the machine is otherwise idle" if busy_others < 0.5
               else f"other processes keep {busy_others:.1f} of {self.cores} cores busy")
        message = f"torch threads: {threads} of {self.cores} cores (training.torch_threads: auto; {why})"
        trainer.events.report(trainer.step, "threads", message, console="" if first else None, threads=threads,
                              busy_others=round(busy_others, 2))
