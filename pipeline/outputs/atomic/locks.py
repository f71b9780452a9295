"""The runs' locks and the clean-up after killed runs (see the package docstring, "Locks" and
"Leftovers").

A run (:class:`_Run`) holds ``fcntl.flock`` locks on files in the staging folder from its start
until it has committed or failed: its own ``run-ID.lock`` (proof that it is alive), exclusive ones
on its targets and shared ones on the datasets its partitions belong to. Asking for a target lock
is retried for :data:`LOCK_RETRY` seconds before a :class:`DatasetLockedError`: a run letting its
locks go, or a cleaner deleting a free lock file, holds one for microseconds. When a run starts it
removes the folders of killed runs (finishing an interrupted commit) and free lock files."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pipeline.outputs.atomic.exchange import JOURNAL, OLD_VERSION_GRACE, _remove, _roll_forward

log = logging.getLogger(__name__)

LOCK_RETRY = 0.05  # seconds a run retries a target lock before refusing (others hold free ones for microseconds)
LEGACY_STALE_AFTER = 3600  # the ``.NAME.tmp-*`` / ``.NAME.old-*`` folders of earlier versions of this module
_RUN = re.compile(r"^(run-(\d{8}T\d{6}Z)-(.+)-(\d+)-([0-9a-f]{6}))(\.lock)?$")
_LEGACY = re.compile(r"^\..+\.(tmp|old)-[0-9A-Za-z_]+$")


class DatasetLockedError(RuntimeError):
    """Another run is writing the same dataset (or partition) right now."""


# --------------------------------------------------------------------------------------------------
# Locks


@dataclass
class _Lock:
    path: Path
    fd: int
    exclusive: bool


def _try_lock(path: Path, exclusive: bool, holder: dict | None = None, create: bool = True) -> _Lock | None:
    """An flock on ``path``, or None if someone holds a conflicting one. Lock files are deleted by
    whoever releases them last, so after locking we check that the name still leads to our file."""
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    for _ in range(1000):
        try:
            fd = os.open(path, flags, 0o666)
        except FileNotFoundError:
            if not create:
                raise
            path.parent.mkdir(parents=True, exist_ok=True)  # another run removed the empty staging folder
            continue
        except PermissionError:  # another user's lock file: lockable read-only, holder left unsaid
            fd, holder = os.open(path, os.O_RDONLY), None
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if not same:  # its last holder deleted it between our open and our lock
            os.close(fd)
            if not create:
                raise FileNotFoundError(errno.ENOENT, "lock file removed", str(path))
            continue
        if exclusive and holder is not None:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        return _Lock(path, fd, exclusive)
    raise OSError(f"could not lock {path}: it keeps being removed")


def _try_lock_briefly(path: Path, exclusive: bool, holder: dict | None = None) -> _Lock | None:
    """:func:`_try_lock`, tried again for up to :data:`LOCK_RETRY` seconds: a run that releases a
    shared lock upgrades it to exclusive for a moment (to delete the file if it was the last), and
    a starting run's cleaner locks free lock files to delete them; neither is a writer to refuse."""
    deadline = time.monotonic() + LOCK_RETRY
    while True:
        lock = _try_lock(path, exclusive, holder)
        if lock is not None or time.monotonic() >= deadline:
            return lock
        time.sleep(LOCK_RETRY / 10)


def _release(lock: _Lock) -> None:
    """Unlocks and, if nobody else holds or waits on it, deletes the lock file."""
    try:
        if not lock.exclusive:
            try:
                fcntl.flock(lock.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                lock.exclusive = True
            except BlockingIOError:
                pass  # other runs share it; the last one deletes it
        if lock.exclusive:
            with contextlib.suppress(OSError):  # gone already, or not ours to delete: harmless either way
                os.unlink(lock.path)
    finally:
        os.close(lock.fd)


def _describe_holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text().splitlines()[0])
        text = f"pid {info['pid']} on host {info['host']} since {info['started']} ({info['run']})"
        return text + (f": {info['command']}" if info.get("command") else "")
    except (OSError, ValueError, IndexError, KeyError, TypeError):
        return "a process that has not said who it is"


def _lock_keys(target: str, root: str) -> list[tuple[str, bool]]:
    """(lock name, exclusive) for a target: shared on each folder above it inside ``root`` (the
    dataset a partition belongs to), exclusive on the target itself."""
    if not target.startswith(root + "/"):
        return [("path-" + hashlib.sha1(target.encode()).hexdigest()[:16], True)]
    parts = target[len(root) + 1 :].split("/")
    return [("+".join(parts[:i]), i == len(parts)) for i in range(1, len(parts) + 1)]


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]+", ".", socket.gethostname())[:40] or "host"


def _new_run_id() -> str:
    return f"run-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{_host()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


# --------------------------------------------------------------------------------------------------
# One run


@dataclass
class _Run:
    """One writer: its id, its own lock (proof that it is alive), and the locks on its targets."""

    lock_dir: Path
    id: str
    lock: _Lock
    started: str
    held: dict[str, _Lock] = field(default_factory=dict)
    keep_dir: bool = False  # a commit that could not be finished or undone: leave the journal to the next run
    switched: bool = False  # a public folder was switched: the one it replaced gets a grace period

    @classmethod
    def start(cls, lock_dir: Path) -> _Run:
        lock_dir.mkdir(parents=True, exist_ok=True)
        while True:
            run_id = _new_run_id()
            started = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
            lock = _try_lock(lock_dir / f"{run_id}.lock", exclusive=True, holder=_holder(run_id, started))
            if lock is not None:  # None: a cleaner of another run took the fresh file for debris; try again
                return cls(lock_dir, run_id, lock, started)

    @property
    def dir(self) -> Path:
        return self.lock_dir / self.id

    def lock_targets(self, targets: Sequence[str], root: str) -> None:
        for target in targets:
            for name, exclusive in _lock_keys(target, root):
                if name in self.held:
                    continue
                lock = _try_lock_briefly(self.lock_dir / f"{name}.lock", exclusive, _holder(self.id, self.started))
                if lock is None:
                    raise DatasetLockedError(self._refusal(target, root, name, exclusive))
                self.held[name] = lock

    def _refusal(self, target: str, root: str, name: str, exclusive: bool) -> str:
        path = self.lock_dir / f"{name}.lock"
        dataset = f"{root}/{name.replace('+', '/')}"
        if not exclusive:
            return (
                f"{target} cannot be written now: another run is replacing the whole dataset {dataset}; "
                f"its lock {path} is held by {_describe_holder(path)}. Wait for it to finish (or stop it)"
            )
        probe = _try_lock(path, exclusive=False)
        if probe is not None:  # shared holders only: runs writing partitions of it
            _release(probe)
            return (
                f"{target} cannot be replaced now: other runs are writing partitions of it (they share "
                f"its lock {path}). Wait for them to finish (or stop them)"
            )
        return (
            f"{target} is being written by another run: its lock {path} is held by {_describe_holder(path)}. "
            "Wait for that run to finish (or stop it); the lock goes away when its process ends"
        )

    def close(self) -> None:
        """Lets the targets go, then deletes the run folder (after the switch, the replaced folders:
        only after a grace period, see the module docstring), then its own lock."""
        try:
            for lock in self.held.values():
                _release(lock)
            self.held.clear()
            if not self.keep_dir:
                if self.switched:
                    time.sleep(OLD_VERSION_GRACE)
                _remove(self.dir)
        finally:
            _release(self.lock)
            with contextlib.suppress(OSError):
                self.lock_dir.rmdir()  # only when empty: no other run is using it


def _holder(run_id: str, started: str) -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": started,
        "run": run_id,
        "command": " ".join(sys.argv)[:300],
    }


# --------------------------------------------------------------------------------------------------
# Cleaning up after killed runs


def _clean_leftovers(run: _Run, root: str) -> None:
    """Removes what killed runs left in the staging folder: their run folders (finishing an
    interrupted commit first), lock files nobody holds, and old folders of earlier versions."""
    stage = run.lock_dir
    runs, lock_files = set(), []
    for entry in os.scandir(stage):
        match = _RUN.match(entry.name)
        if match:
            runs.add(match.group(1))
        elif entry.name.endswith(".lock"):
            lock_files.append(Path(entry.path))
        elif _LEGACY.match(entry.name):
            with contextlib.suppress(OSError):
                if time.time() - entry.stat(follow_symlinks=False).st_mtime > LEGACY_STALE_AFTER:
                    _remove(Path(entry.path))
    for run_id in sorted(runs - {run.id}):
        _reap(run, run_id, root)
    for path in lock_files:
        if path.stem in run.held:
            continue
        try:
            lock = _try_lock(path, exclusive=True, create=False)
        except FileNotFoundError:
            continue
        if lock is not None:  # nobody holds it: the lock file of a killed run
            _release(lock)


def _best_effort(where: object, clean, *args) -> None:
    """Cleaning up after others must never fail this run."""
    try:
        clean(*args)
    except Exception:
        log.warning("could not clean up after killed runs in %s; the next run will try again", where, exc_info=True)


def _reap(run: _Run, run_id: str, root: str) -> None:
    folder = run.lock_dir / run_id
    try:
        lock = _try_lock(run.lock_dir / f"{run_id}.lock", exclusive=True, create=False)
        if lock is None:
            return  # alive
    except FileNotFoundError:
        lock = None  # a run creates its lock before its folder and deletes it after: dead
    try:
        journal = folder / JOURNAL
        if journal.exists():
            switched = _recover(run, journal, root)
            if switched is None:
                return
            if switched:
                time.sleep(OLD_VERSION_GRACE)  # the folders it replaced are in ``folder``
        if os.path.lexists(folder):
            log.info("removing %s, left by a run that was killed", folder)
            _remove(folder)
    finally:
        if lock is not None:
            _release(lock)


def _recover(run: _Run, journal: Path, root: str) -> bool | None:
    """Finishes the commit of a killed run: whether that switched a folder, or None if another live
    run holds one of its targets (that run finishes it instead)."""
    try:
        entries = json.loads(journal.read_text())["entries"]
    except (OSError, ValueError, KeyError):
        log.warning("ignoring the unreadable commit journal %s", journal)
        return False
    borrowed: list[_Lock] = []
    try:
        for entry in entries:
            for name, exclusive in _lock_keys(entry["target"], root):
                if name in run.held:
                    if exclusive and not run.held[name].exclusive:
                        return None  # we only share that dataset with partition writers
                    continue
                lock = _try_lock(run.lock_dir / f"{name}.lock", exclusive, _holder(run.id, run.started))
                if lock is None:
                    return None
                borrowed.append(lock)
        switched = [_roll_forward(entry) for entry in entries]
        journal.unlink()
        log.warning("finished the commit of %s (interrupted when its process died)", journal.parent.name)
        return any(switched)
    finally:
        for lock in borrowed:
            _release(lock)
