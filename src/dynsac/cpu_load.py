"""How many cores other processes keep busy: `training.torch_threads: auto`'s measurement.

Free of torch, so that the CLI can open the first measurement window before torch loads (the
imports then count towards it instead of a wait before training).
"""

from __future__ import annotations

import os
import time


class BusyOthers:
    """How many cores other processes kept busy since the last reading (from /proc/stat and this
    process's own CPU time; the 1-minute load average where /proc/stat is missing)."""

    def __init__(self) -> None:
        self._last = self._sample()
        self.opened = time.monotonic()

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


_start_window: BusyOthers | None = None


def open_start_window() -> None:
    """Start measuring now, for the first trainer this process builds (the CLI calls it first)."""
    global _start_window
    _start_window = BusyOthers()


def take_start_window() -> BusyOthers | None:
    """The window `open_start_window` opened, once (a second trainer opens its own)."""
    global _start_window
    window, _start_window = _start_window, None
    return window
