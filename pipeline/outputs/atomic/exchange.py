"""Switching one folder at a time: ``renameat2(RENAME_EXCHANGE)``, else two renames.

:func:`replace_dir`, and the fallback commit of :func:`pipeline.outputs.atomic.atomic_datasets`
where symbolic links cannot be made (or a final path lies outside ``OUT``): each public folder is
switched by its own exchange (Linux 3.15+), never missing, but ``scores`` and ``rejects`` by two
calls microseconds apart; a journal in ``run-ID/commit.json`` rolls a killed commit forward
(:func:`_roll_forward`, also used to finish an interrupted adoption of a plain folder). Where even
the exchange is missing, two renames, with a moment in which the folder does not exist. A warning
is logged in both cases. See the package docstring for the whole contract."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Protocol


class CommittingRun(Protocol):
    """What the fallback commit needs of a writer (:class:`pipeline.outputs.atomic.locks._Run`)."""

    id: str
    switched: bool  # set here: a public folder was switched
    keep_dir: bool  # set here: a half-done commit that could not be undone

    @property
    def dir(self) -> Path: ...


log = logging.getLogger(__name__)

JOURNAL = "commit.json"
OLD_VERSION_GRACE = 0.5  # fallback only: seconds a replaced folder is kept for readers that were listing it


# --------------------------------------------------------------------------------------------------
# Switching two folders


def _load_renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2  # glibc 2.28+
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _load_renameat2()
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2

_warned: set[str] = set()


def _exchange(a: Path, b: Path) -> bool:
    """Swaps the names ``a`` and ``b`` in one system call; False where that is not available."""
    if _RENAMEAT2 is None:
        return _unsupported("renameat2 is not available on this system")
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return _unsupported(f"the file system of {b} does not support RENAME_EXCHANGE ({os.strerror(code)})")
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _unsupported(reason: str) -> bool:
    if reason not in _warned:
        _warned.add(reason)
        log.warning("%s: datasets are replaced with two renames, so for a moment each one does not exist", reason)
    return False


def _swap_into_place(new: Path, target: Path, aside: Path) -> None:
    """Puts folder ``new`` at ``target``. Afterwards the previous ``target`` (if any) is at ``new``
    (exchanged) or at ``aside`` (the two-rename fallback)."""
    if not os.path.lexists(target):
        try:
            os.rename(new, target)
            return
        except OSError as exc:  # it appeared meanwhile (a writer that takes no lock): exchange instead
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not os.path.lexists(target):
                raise
    if _exchange(new, target):
        return
    try:  # an interrupt (SIGTERM) may land between the two renames: put the old one back
        os.rename(target, aside)
        os.rename(new, target)
    except BaseException:
        if os.path.lexists(aside) and not os.path.lexists(target):
            os.rename(aside, target)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def replace_dir(src: str | os.PathLike, dst: str | os.PathLike, staging: str | os.PathLike | None = None) -> None:
    """Moves folder ``src`` to ``dst`` in one step, replacing whatever was at ``dst``; if the move
    fails nothing has changed. ``staging`` (default ``dst``'s parent) holds the old ``dst`` briefly
    where the two-rename fallback is needed. All on one file system; takes no lock."""
    src, dst = Path(src), Path(dst)
    aside = Path(staging if staging is not None else dst.parent) / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
    existed = os.path.lexists(dst)
    if not os.path.lexists(src):
        raise FileNotFoundError(errno.ENOENT, "nothing to move into place", str(src))
    _swap_into_place(src, dst, aside)
    if existed:
        _remove(aside if os.path.lexists(aside) else src)


# --------------------------------------------------------------------------------------------------
# The fallback commit, one folder at a time, with a journal


def _commit(run: CommittingRun, finals: list[Path], tmps: list[Path]) -> None:
    """The fallback: each folder switched into place on its own, with a journal."""
    entries = [
        {"target": str(final), "new": str(tmp), "aside": str(run.dir / f"{i}-old"), "ident": _identity(tmp)}
        for i, (final, tmp) in enumerate(zip(finals, tmps, strict=True))
    ]
    journal = run.dir / JOURNAL
    draft = run.dir / f"{JOURNAL}.tmp"
    draft.write_text(json.dumps({"run": run.id, "entries": entries}))
    os.replace(draft, journal)  # from here on the commit is decided: a killed run is rolled forward
    done = []
    try:
        for entry in entries:
            run.switched = run.switched or os.path.lexists(entry["target"])
            _swap_into_place(Path(entry["new"]), Path(entry["target"]), Path(entry["aside"]))
            done.append(entry)
    except BaseException:
        run.switched = run.switched or bool(done)
        try:
            for entry in reversed(done):
                _undo(entry)
            journal.unlink()
        except BaseException:
            run.keep_dir = True
            log.exception("could not undo a half-done commit; the next run that writes here finishes it (%s)", journal)
        raise
    journal.unlink()  # committed; the run folder now holds the old datasets and is deleted with it


def _roll_forward(entry: dict) -> bool:
    """Switches one folder of a killed run's commit unless that happened already; whether it did."""
    target, new, aside = Path(entry["target"]), Path(entry["new"]), Path(entry["aside"])
    ident = tuple(entry["ident"])
    if _identity(target) == ident:
        return False  # switched already
    if _identity(new) != ident:
        log.warning("cannot finish switching %s: its new folder %s is gone", target, new)
        return False
    _swap_into_place(new, target, aside)
    return True


def _undo(entry: dict) -> None:
    target, new, aside = Path(entry["target"]), Path(entry["new"]), Path(entry["aside"])
    if _identity(target) != tuple(entry["ident"]):
        return
    if os.path.lexists(new) and _exchange(new, target):  # the old folder is at ``new``: exchange back
        return
    os.rename(target, new)
    if os.path.lexists(aside):
        os.rename(aside, target)
