"""One event reporter: the console line, the event log and throttling in one place.

Every part that has something to say (the rollout's input guards, the update supervisor, the
loop) calls `EventReporter.report`; the trainer subscribes the run's event log and the callbacks'
`on_event` as listeners.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TextIO

Listener = Callable[[int, str, str, dict[str, Any]], None]  # (step, kind, message, details)


def first_few_then_rarely(count: int, first: int = 3, every: int = 1000) -> bool:
    """Whether the `count`-th occurrence of a repeating event is reported: the first few, then 1 in `every`."""
    return count <= first or count % every == 0


class EventReporter:
    """Reports events to the console and to every listener."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.listeners: list[Listener] = []
        self._stream = stream

    def report(self, step: int, kind: str, message: str, *, console: str | None = "warning: ", log: bool = True,
               **details: Any) -> None:
        """Print `[dynsac] {console}{message}` (no line with `console=None`) and, with `log`, pass
        the event to the listeners."""
        if console is not None:
            print(f"[dynsac] {console}{message}", file=self._stream or sys.stdout, flush=True)
        if log:
            for listener in self.listeners:
                listener(step, kind, message, details)

    def say(self, message: str) -> None:
        """A console line that is not an event (start-up, progress notes)."""
        print(f"[dynsac] {message}", file=self._stream or sys.stdout, flush=True)
