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

from dynsac.training.callbacks import Callback

if TYPE_CHECKING:
    from dynsac.training.trainer import SACTrainer

PROBE_S = 0.2  # the first measurement's window, before training starts


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class BusyOthers:
    """How many cores other processes kept busy since the last reading (from /proc/stat and this
    process's own CPU time; the 1-minute load average where /proc/stat is missing)."""

    def __init__(self) -> None:
        self._last = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as stat:
                fields = [float(v) for v in stat.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        busy = (sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0.0)) / ticks  # minus idle, iowait
        own = sum(os.times()[:2])
        return time.monotonic(), busy, own

    def read(self) -> float:
        now = self._sample()
        if now is None or self._last is None:
            return max(0.0, os.getloadavg()[0] - 1.0) if hasattr(os, "getloadavg") else 0.0
        (t0, busy0, own0), (t1, busy1, own1) = self._last, now
        self._last = now
        elapsed = max(t1 - t0, 1e-3)
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / elapsed)


def threads_for(cores: int, busy_others: float) -> int:
    """All cores on an idle machine; one core fewer per core other processes keep busy (at least 1)."""
    return max(1, min(cores, cores - round(busy_others)))


class ThreadGovernor(Callback):
    """Sets torch's thread count from the other processes' load at the start and every log interval."""

    def __init__(self, cores: int | None = None) -> None:
        self.cores = cores or usable_cores()
        self.threads: int | None = None
        self._others: BusyOthers | None = None

    def on_train_start(self, trainer: SACTrainer) -> None:
        self._others = BusyOthers()
        time.sleep(PROBE_S)
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
