"""Single files written whole or not at all: the reports, tables and figures beside the datasets.

    write_atomically(folder / "tables.md", markdown)
    write_atomically(folder / "evaluation.png", lambda tmp: figure.savefig(tmp, format="png"))

The content goes to a temporary file in the same folder (so on the same file system), which then
replaces the target with one ``os.replace``: a reader finds the previous file or the new one,
complete, never a half-written one, and a failed write leaves the previous file as it was and no
temporary file behind. Nothing is fsync'ed (as in :mod:`pipeline.outputs.atomic`): this holds
against crashed processes and concurrent readers, not against a power cut. For dataset folders see
:mod:`pipeline.outputs.atomic`.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path

__all__ = ["is_temporary", "temporary_beside", "write_atomically"]

TEMPORARY_SUFFIX = ".tmp"


def temporary_beside(path: str | os.PathLike) -> Path:
    """A fresh hidden name in ``path``'s folder for the file that will replace ``path``: the same
    file system, so one ``os.replace`` puts it in place; never ``*.png``, ``*.parquet`` ..., so no
    reader of the folder takes it for data (:func:`is_temporary` finds what a killed writer left)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{TEMPORARY_SUFFIX}")


def is_temporary(name: str) -> bool:
    """Whether a file name is one of :func:`temporary_beside`'s."""
    return name.startswith(".") and name.endswith(TEMPORARY_SUFFIX)


def write_atomically(
    path: str | os.PathLike, content: bytes | str | Callable[[Path], object], *, encoding: str = "utf-8"
) -> Path:
    """Writes ``content`` to ``path`` in one step (see the module docstring); returns ``path``.

    ``content``: bytes, a str (written in ``encoding``), or a function that writes the file at the
    path it is given, e.g. ``lambda tmp: frame.to_csv(tmp, index=False)`` (that path does not end
    in the target's suffix: give writers that go by the suffix the format, e.g. ``format="png"``).
    The folder must exist. The new file gets the usual permissions (0666 less the umask)."""
    path = Path(path)
    tmp = temporary_beside(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        if callable(content):
            os.close(fd)
            content(tmp)
        else:
            data = content.encode(encoding) if isinstance(content, str) else bytes(content)
            with os.fdopen(fd, "wb") as file:
                file.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path
