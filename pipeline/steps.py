"""Progress as structured events: a long job reports each step as a :class:`Step`, never as text
for someone to parse. ``vae``'s :class:`pipeline.cli.progress.Progress` draws them as a bar at a
terminal and as one log line each elsewhere; a library caller may pass any callable.

Steps finished in Beam workers travel on their log records (``log.info(..., extra=step.extra())``,
read back with :func:`step_of`), so the same record is a readable line in a log file and an event
for the bar. Standard library only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

STEP_ATTRIBUTE = "vae_step"  # the LogRecord attribute that carries a Step


@dataclass(frozen=True)
class Step:
    """``done`` of ``total`` steps (``total`` None: not known); ``note`` says which, or what it
    gave. ``finished`` False: the step ``done + 1`` has started (a bar shows the note, a log says nothing)."""

    done: int
    total: int | None
    note: str = ""
    finished: bool = True

    def line(self) -> str:
        return f"[{self.done}/{self.total}] {self.note}" if self.total else f"[{self.done}] {self.note}"

    def extra(self) -> dict[str, Step]:
        """The ``extra`` of a log call that carries this step."""
        return {STEP_ATTRIBUTE: self}


Reporter = Callable[[Step], None]


def step_of(record: logging.LogRecord) -> Step | None:
    """The step a log record carries, if any."""
    step = getattr(record, STEP_ATTRIBUTE, None)
    return step if isinstance(step, Step) else None
