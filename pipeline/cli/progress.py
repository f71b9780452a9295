"""Progress of long interactive work: a bar when stderr is a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from pipeline.steps import Step, step_of

log = logging.getLogger(__name__)

NOTE_WIDTH = 60  # of the note beside the bar (a log line keeps all of it)


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """``with Progress("evaluate", unit="task") as progress:`` then ``progress.advance(note)`` per
    finished step, or hand ``progress`` to a library that reports its steps as
    :class:`pipeline.steps.Step` events. At a terminal a tqdm bar on stderr (log lines print above
    it); otherwise each finished step is one log line, in the log format of the run. ``bar`` forces
    either."""

    def __init__(self, label: str, total: int | None = None, *, unit: str = "step", bar: bool | None = None) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0
        self.use_bar = stderr_is_terminal() if bar is None else bar
        self._bar: Any = None
        self._stack = ExitStack()

    def __enter__(self) -> Progress:
        if self.use_bar:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(total=self.total, desc=self.label, unit=self.unit, file=sys.stderr, dynamic_ncols=True)
            self._stack.enter_context(logging_redirect_tqdm())
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def advance(self, note: str = "", *, done: int | None = None, total: int | None = None) -> None:
        """One more step finished (or ``done`` of ``total``); ``note`` says which, or what it gave."""
        self.done = self.done + 1 if done is None else done
        if total is not None:
            self.total = total
        if self._bar is not None:
            if self._bar.total != self.total:
                self._bar.total = self.total
            self._bar.set_postfix_str(self._short(note), refresh=False)
            self._bar.update(self.done - self._bar.n)
        else:
            count = f"{self.done}/{self.total}" if self.total else str(self.done)
            log.info("%s [%s] %s", self.label, count, note)

    def __call__(self, step: Step) -> None:
        """A step as a library reports it: a finished one moves the bar to ``done`` of ``total``; a
        started one only shows its note beside the bar."""
        if step.finished:
            self.advance(step.note, done=step.done, total=step.total)
        elif self._bar is not None:
            self._bar.set_postfix_str(self._short(step.note), refresh=True)

    @staticmethod
    def _short(note: str) -> str:
        return note if len(note) <= NOTE_WIDTH else note[: NOTE_WIDTH - 1] + "…"


@contextmanager
def shard_progress(label: str, *loggers: str, bar: bool | None = None) -> Iterator[Progress]:
    """A bar over the shards a Beam job finishes in this process, at a terminal: each log record of
    the job's ``loggers`` that carries a finished shard's :class:`~pipeline.steps.Step` advances it.
    That covers the DirectRunner's default (worker threads); shards finished in worker processes
    (``multi_processing``, Dask) print their lines as before and leave the bar where it is. Off a
    terminal nothing changes: the lines are the progress."""
    progress = Progress(label, unit="shard", bar=bar)
    handler = _ShardLines(progress)
    with progress:
        targets = [logging.getLogger(name) for name in loggers] if progress.use_bar else []
        levels = [logger.level for logger in targets]
        for logger in targets:
            logger.addHandler(handler)
            if logger.getEffectiveLevel() > logging.INFO:  # the shard lines are INFO records
                logger.setLevel(logging.INFO)
        try:
            yield progress
        finally:
            for logger, level in zip(targets, levels, strict=True):
                logger.removeHandler(handler)
                logger.setLevel(level)


class _ShardLines(logging.Handler):
    """Advances a :class:`Progress` by one for every record that carries a shard's step (shards
    finish in any order, on concurrent worker threads)."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress
        self.guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        step = step_of(record)
        if step is not None:
            with self.guard:
                self.progress.advance(step.note, done=self.progress.done + 1, total=step.total)
