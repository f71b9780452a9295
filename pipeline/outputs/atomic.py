"""Dataset folders that never flicker: a run's outputs appear whole, together, in one step, or not at all.

    with atomic_datasets(out / "scores", out / "rejects", staging=out / ".staging") as (scores, rejects):
        write_parquet_files_into(scores, rejects)
    # out/scores and out/rejects now hold exactly what was written, switched by one rename together;
    # on an exception they are untouched

    scores, rejects = snapshots(out / "scores", out / "rejects")  # a reader's fixed, consistent view

What "atomic" means here
------------------------
A run writes into private folders under ``OUT/.staging/run-ID/``, outside every dataset root (a
glob such as DuckDB's ``OUT/scores/*/*.parquet`` also matches hidden folders, and ``**`` any depth,
so nothing half-written or old may ever sit under ``OUT/scores``). ``OUT`` is the folder that holds
the staging folder. Only when the body of the ``with`` succeeded are the folders *committed*.

**Local disk: immutable versions behind one pointer.** The datasets of ``OUT`` live in version
folders that are never changed once built; each public dataset path is a symbolic link through one
pointer per ``OUT``::

    OUT/scores             -> .versions/current/scores
    OUT/rejects            -> .versions/current/rejects
    OUT/.versions/current  -> v-20260101T120000.123456Z-1a2b3c
    OUT/.versions/v-20260101T120000.123456Z-1a2b3c/scores/...   (partitions: plain folders inside)
    OUT/.versions/v-20260101T120000.123456Z-1a2b3c/rejects/...

A commit assembles a complete new version (the run's folders moved in; every other file of every
dataset of ``OUT`` carried over as a hard link, no data copied), then replaces ``current`` with a
new link by one ``rename()``. That one system call switches every dataset of the commit (``scores``
and ``rejects``, or the partitions ``scores/date=D`` and ``rejects/date=D``) at once: before it,
each public path leads to the previous version, after it to the new one. There is no moment in
which a dataset or partition is missing, empty or half-written, or in which ``scores`` and
``rejects`` come from different runs. Only the dataset roots are links; partitions are real
folders inside a version, so whoever opens ``OUT/scores`` finds a plain hive layout (pyarrow,
pandas, DuckDB with ``*/*.parquet`` or ``**``, Python's ``rglob`` and ``os.walk``: all tested; a
link per partition would hide it from ``rglob``, ``os.walk`` and DuckDB's ``**``). Commits to one
``OUT`` are serialised by a short lock (``.versions/commit.lock``), held only while a version is
assembled and switched, so runs writing different partitions still run side by side, and each
commit carries over what the others committed. The cost is one hard link per file of the datasets
of ``OUT`` per commit (tens of microseconds each). Files are shared between versions: never modify
a dataset file in place.

What a reader sees.

* A reader that resolves the pointer once reads one complete, unchanging version: use
  :func:`snapshot` (one path) or :func:`snapshots` (several paths, e.g. scores and rejects, from
  the same commit), which give the version folder, e.g. ``OUT/.versions/v-.../scores/date=D``.
  A version stays intact for :data:`VERSION_GRACE` seconds after it has been replaced; after that,
  a later commit to ``OUT`` deletes it (commits never wait for readers; nothing runs in the
  background, so the version before the latest stays until the next commit).
* A reader of the public path that opens the folder once and reads its files relative to it (a
  directory file descriptor, ``os.scandir`` then ``openat``) sees one version, complete.
* pyarrow, pandas and DuckDB, given the public path, list the folder and then open every file again
  by its full path, which goes through the pointer again. A read that overlaps a commit (a window as
  long as the read) may list one version and look the names up in the next. With file names that
  differ from run to run (as ``score_dataset`` writes them: ``part-RUN-SSSSS-of-NNNNN.parquet``)
  such a read fails with "file not found", or, since pyarrow skips listed names that are gone, comes
  back with fewer rows (or none) of the one run it listed; it never combines rows of two runs.
  Retry it, check the row count, or read a snapshot. With names that repeat from run to run (as
  ``vae generate`` writes them) a straddling read may combine files of two versions: read a
  snapshot. No switch of a folder (exchange or link) can do better for such readers; only a reader
  that resolves once can. A file already open keeps its contents until it is closed.

**Adopting a plain folder.** A dataset root that is still a plain folder (from an earlier version
of this module, or made by hand) is adopted by the first commit that writes it: a version holding
hard links of its files (same names, same bytes) is made current, and the folder is exchanged for
the link with ``renameat2(RENAME_EXCHANGE)``. Readers find the same files before and after, even a
read that lists across the exchange; then the commit proceeds as above. Where the exchange is not
available the folder is renamed away and the link renamed in: for that one moment, once per
dataset, the path does not exist. A commit killed between these steps is finished from its journal
(``.versions/migrate-RUN.json``) by the next commit. The replaced folder is kept for the grace
period as ``.versions/old-...``.

**Fallback.** Where symbolic links cannot be made (a file system that refuses them), or a final
path does not lie inside ``OUT``, each public folder is switched by its own
``renameat2(RENAME_EXCHANGE)`` (Linux 3.15+): never missing, but ``scores`` and ``rejects`` are
switched by two calls microseconds apart, not one (a journal in ``run-ID/commit.json`` rolls a
killed commit forward), and the replaced folder is kept :data:`OLD_VERSION_GRACE` seconds before it
is deleted. Where even the exchange is missing, two renames, with a moment in which the folder does
not exist. A warning is logged in both cases.

**Locks.** A run holds ``fcntl.flock`` locks on files in the staging folder from the moment it
starts until it has committed (or failed): exclusive on each target (``scores.lock``,
``scores+date=D.lock``), shared on the dataset a partition belongs to (``scores.lock``), so any
number of runs may write different partitions at once, but a second run writing the same dataset or
partition, or replacing a dataset while a partition of it is written, is refused at once with a
:class:`DatasetLockedError` naming the lock file and the holder's pid, host and start time. Two runs
started together for the same dataset: one writes, the other is refused, and the dataset ends up
as the one run's. The kernel releases the locks of a process that dies, so there is never a stale
lock. Every writer of ``OUT`` must use the same staging folder, ``OUT/.staging``.

**Leftovers.** Each run also holds a lock on its own ``run-ID.lock``. When a run starts it removes
the run folders of runs whose lock is no longer held (killed runs) and lock files nobody holds;
each commit removes what killed commits left in ``.versions`` (half-built versions, links made for
a switch that never came) and versions past their grace. A killed run leaves the previous data
readable: before the switch nothing public has changed, after it the commit is complete. A
successful or failed run leaves nothing in ``.staging``, not even the folder; ``.versions`` holds
the current version and those still in their grace period.

Nothing is fsync'ed: the guarantees hold against crashed processes and concurrent readers, not
against a power cut.

**Object stores** (``gs://``, ``s3://``, through Apache Beam's file systems): see
:func:`atomic_filesystem_datasets`. They cannot rename a folder or switch a pointer, so the best they
allow is weaker: new files are copied in next to the old ones before any old one is deleted, and a
``_manifest.json`` names the files of the last commit (:func:`committed_files`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from training.data.images import is_remote

log = logging.getLogger(__name__)

STAGING = ".staging"  # OUTPUT/.staging: runs' private folders and the locks, outside every dataset root
VERSIONS = ".versions"  # OUTPUT/.versions: the immutable versions and the pointer to the current one
CURRENT = "current"  # OUTPUT/.versions/current -> v-...: the pointer a commit switches
MANIFEST = "_manifest.json"  # object stores: the files of the last commit of a dataset folder
JOURNAL = "commit.json"
VERSION_GRACE = 600.0  # seconds a replaced version stays intact for readers that resolved it (snapshot)
COMMIT_WAIT = 600.0  # seconds a commit waits for another run's commit to the same OUTPUT before giving up
REMOTE_STALE_AFTER = 2 * 24 * 3600  # seconds after which another host's run prefix on an object store is debris
OLD_VERSION_GRACE = 0.5  # fallback only: seconds a replaced folder is kept for readers that were listing it
LEGACY_STALE_AFTER = 3600  # the ``.NAME.tmp-*`` / ``.NAME.old-*`` folders of earlier versions of this module

_RUN = re.compile(r"^(run-(\d{8}T\d{6}Z)-(.+)-(\d+)-([0-9a-f]{6}))(\.lock)?$")
_LEGACY = re.compile(r"^\..+\.(tmp|old)-[0-9A-Za-z_]+$")
_VERSION = re.compile(r"^v-\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{6}$")


class DatasetLockedError(RuntimeError):
    """Another run is writing the same dataset (or partition) right now."""


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
    os.rename(target, aside)
    try:
        os.rename(new, target)
    except BaseException:
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
                lock = _try_lock(self.lock_dir / f"{name}.lock", exclusive, _holder(self.id, self.started))
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


# --------------------------------------------------------------------------------------------------
# Local folders


@contextmanager
def atomic_datasets(*final_paths: str | os.PathLike, staging: str | os.PathLike | None = None) -> Iterator[list[Path]]:
    """Yields one empty folder per ``final_paths`` entry, in ``staging``/run-ID/; when the body
    succeeds, all of them replace their final paths in one commit, switched by one rename (see the
    module docstring); on an exception they are deleted and the final paths are untouched.

    ``staging`` defaults to ``.staging`` beside the first final path; its parent is the output
    folder ``OUT`` whose ``.versions`` hold the data. For partitions (``OUT/scores/date=D``) pass
    ``OUT/.staging``. Every writer of ``OUT`` must use the same staging folder: that is where the
    locks are. Raises :class:`DatasetLockedError` at once if another run is writing one of the
    final paths."""
    finals = [Path(os.path.abspath(p)) for p in final_paths]
    if not finals:
        raise ValueError("atomic_datasets needs at least one final path")
    if staging is None and any("=" in final.name for final in finals):
        raise ValueError(
            f"{finals[0]} looks like a partition: pass staging=OUT/.staging (the output folder's), so that "
            "the staging folder and the versions are not kept inside the dataset"
        )
    stage = Path(os.path.abspath(staging)) if staging is not None else finals[0].parent / STAGING
    root = stage.parent
    _check_layout([str(f) for f in finals], str(stage))
    _check_reserved(finals, stage, root / VERSIONS)
    run = _Run.start(stage)
    try:
        run.lock_targets([str(f) for f in finals], str(root))
        _best_effort(stage, _clean_leftovers, run, str(root))
        run.dir.mkdir()
        places = [_place(final, root) for final in finals]
        versioned = _can_version(run.dir, places)
        if not versioned:
            for final in finals:
                _refuse_versioned_parent(final)
                final.parent.mkdir(parents=True, exist_ok=True)
        tmps = [run.dir / f"{i}-{final.name}" for i, final in enumerate(finals)]
        for tmp in tmps:
            tmp.mkdir()
        yield tmps
        if versioned:
            _commit_version(run, root, places, tmps)  # type: ignore[arg-type]
        else:
            _commit(run, finals, tmps)
    finally:
        run.close()


@contextmanager
def atomic_dataset_dir(final_path: str | os.PathLike, staging: str | os.PathLike | None = None) -> Iterator[Path]:
    """:func:`atomic_datasets` for one folder: yields an empty temporary folder; on success it
    replaces ``final_path``, on an exception it is deleted.

        with atomic_dataset_dir("out/scores") as tmp:
            write_parquet_files_into(tmp)
    """
    with atomic_datasets(final_path, staging=staging) as (tmp,):
        yield tmp


def snapshot(path: str | os.PathLike) -> Path:
    """The immutable version folder a public dataset path leads to right now, e.g.
    ``OUT/scores/date=D`` -> ``OUT/.versions/v-.../scores/date=D``: read it instead of the public
    path for a read that no commit can disturb (its files stay as they are for at least
    :data:`VERSION_GRACE` seconds after a commit replaces them). A path that is not in the versioned
    layout (a plain folder) is returned resolved, with no such guarantee. Raises
    :class:`FileNotFoundError` if the path does not exist."""
    return snapshots(path)[0]


def snapshots(*paths: str | os.PathLike) -> list[Path]:
    """:func:`snapshot` for several paths, all resolved through one reading of each pointer: the
    snapshots of ``OUT/scores`` and ``OUT/rejects`` always come from the same commit."""
    pointers: dict[Path, str] = {}
    resolved = []
    for path in paths:
        path = Path(os.path.abspath(path))
        link = next((p for p in (path, *path.parents) if _is_ours(p)), None)
        if link is None:
            found = Path(os.path.realpath(path))
        else:
            root = link.parent
            if root not in pointers:
                version = _current(root / VERSIONS)
                if version is None:
                    raise FileNotFoundError(errno.ENOENT, "no version has been committed", str(path))
                pointers[root] = version
            found = root / VERSIONS / pointers[root] / link.name / path.relative_to(link)
        if not os.path.exists(found):
            raise FileNotFoundError(errno.ENOENT, "no such dataset", str(path))
        resolved.append(found)
    return resolved


def _check_layout(finals: list[str], stage: str) -> None:
    if len(set(finals)) != len(finals):
        raise ValueError(f"the same final path twice: {finals}")
    for final in finals:
        for other in [*finals, stage]:
            if other != final and other.startswith(final + "/"):
                raise ValueError(f"{other} lies inside {final}, which is replaced as a whole")


def _check_reserved(finals: list[Path], *reserved: Path) -> None:
    for final in finals:
        for folder in reserved:
            if final == folder or final.is_relative_to(folder):
                raise ValueError(f"{final} lies inside {folder}, which belongs to the atomic commit")


def _place(final: Path, root: Path) -> tuple[str, str] | None:
    """(dataset root's name in OUT, path of the final inside it, "" for the whole dataset), or None
    for a final outside OUT."""
    try:
        parts = final.relative_to(root).parts
    except ValueError:
        return None
    return parts[0], "/".join(parts[1:])


def _can_version(probe_dir: Path, places: list) -> bool:
    """Whether the versioned layout can be used; else the exchange of folders, with a warning."""
    if any(place is None for place in places):
        _fall_back("a final path lies outside the folder that holds the staging folder")
        return False
    probe = probe_dir / "symlink-probe"
    try:
        os.symlink(VERSIONS, probe)
    except (OSError, NotImplementedError) as exc:
        _fall_back(f"symbolic links cannot be made in {probe_dir.parent} ({exc})")
        return False
    probe.unlink()
    return True


def _fall_back(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        log.warning(
            "%s: each dataset folder is switched on its own (RENAME_EXCHANGE), not all of a commit's "
            "datasets by one rename of a versions pointer",
            reason,
        )


def _refuse_versioned_parent(final: Path) -> None:
    """The fallback must not switch folders inside an (immutable) version."""
    if VERSIONS in Path(os.path.realpath(final.parent)).parts:
        raise ValueError(
            f"{final} lies in a dataset kept in {VERSIONS}/ (the versioned layout), which this run cannot use; "
            "pass staging=OUT/.staging of the output folder OUT"
        )


def _commit(run: _Run, finals: list[Path], tmps: list[Path]) -> None:
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


# --------------------------------------------------------------------------------------------------
# The versioned layout: OUT/NAME -> .versions/current/NAME, .versions/current -> v-...


def _link_text(name: str) -> str:
    return f"{VERSIONS}/{CURRENT}/{name}"


def _is_ours(path: Path) -> bool:
    """Whether ``path`` is a public dataset link of the versioned layout."""
    try:
        return os.readlink(path) == _link_text(path.name)
    except OSError:  # not a link, or not there
        return False


def _current(versions: Path) -> str | None:
    """The name of the current version, or None if there is none (or its folder is gone)."""
    try:
        name = os.readlink(versions / CURRENT)
    except OSError:
        return None
    return name if _VERSION.match(name) and (versions / name).is_dir() else None


def _managed(root: Path, versions: Path, current: str | None) -> set[str]:
    """The datasets of the current version that are published (their public link is in place)."""
    if current is None:
        return set()
    return {name for name in os.listdir(versions / current) if _is_ours(root / name)}


def _version_name() -> str:
    return f"v-{datetime.now(UTC):%Y%m%dT%H%M%S.%fZ}-{uuid.uuid4().hex[:6]}"


def _link_tree(src: Path, dst: Path, skip: frozenset[str] = frozenset(), rel: str = "") -> None:
    """Rebuilds folder ``src`` at ``dst``: the same folders, each file a hard link (a copy where a
    link cannot be made), symbolic links as they are; the paths in ``skip`` (relative to the top,
    with what is under them) are left out."""
    os.mkdir(dst)
    with os.scandir(src) as entries:
        for entry in entries:
            path = f"{rel}/{entry.name}" if rel else entry.name
            if path in skip:
                continue
            target = dst / entry.name
            if entry.is_dir(follow_symlinks=False):
                _link_tree(Path(entry.path), target, skip, path)
            elif entry.is_symlink():
                os.symlink(os.readlink(entry.path), target)
            else:
                try:
                    os.link(entry.path, target, follow_symlinks=False)
                except OSError:  # another file system, too many links, or links not supported
                    shutil.copy2(entry.path, target)
    shutil.copymode(src, dst)


def _lock_commits(versions: Path, run: _Run) -> _Lock:
    """The lock that serialises the commits to one OUT: waits (briefly: a commit only assembles
    links and renames) for another run's commit."""
    path = versions / "commit.lock"
    deadline, delay, said = time.monotonic() + COMMIT_WAIT, 0.001, False
    while True:
        lock = _try_lock(path, exclusive=True, holder=_holder(run.id, run.started))
        if lock is not None:
            return lock
        if time.monotonic() > deadline:
            raise DatasetLockedError(
                f"cannot commit to {versions.parent}: its commit lock {path} has been held for "
                f"{COMMIT_WAIT:.0f} s by {_describe_holder(path)}"
            )
        if not said:
            log.info("waiting for the commit of another run to %s (%s)", versions.parent, _describe_holder(path))
            said = True
        time.sleep(delay)
        delay = min(2 * delay, 0.05)


def _commit_version(run: _Run, root: Path, places: list[tuple[str, str]], tmps: list[Path]) -> None:
    """Builds the next version of OUT with the run's folders in it and switches to it (one rename)."""
    versions = root / VERSIONS
    versions.mkdir(exist_ok=True)
    lock = _lock_commits(versions, run)
    try:
        _best_effort(versions, _tidy, root)
        current = _current(versions)
        names = sorted({name for name, _ in places})
        plain = [name for name in names if os.path.lexists(root / name) and not _is_ours(root / name)]
        hidden = [n for n in names if current and not os.path.lexists(root / n) and (versions / current / n).exists()]
        if plain or hidden:  # first bring OUT into the layout, without changing what readers see
            current = _adopt(run, root, current, plain)
        version = _build(run, root, current, places, tmps)
        created: list[Path] = []
        try:
            for name in names:
                if not os.path.lexists(root / name):
                    os.symlink(_link_text(name), root / name)  # leads nowhere until the switch
                    created.append(root / name)
            _switch(versions, version, current)
        except BaseException:
            if _current(versions) != version:
                for link in created:
                    with contextlib.suppress(OSError):
                        link.unlink()
                _remove(versions / version)
            raise
    finally:
        _release(lock)


def _build(run: _Run, root: Path, current: str | None, places: list[tuple[str, str]], tmps: list[Path]) -> str:
    """A new version: the current one, with the run's folders in place of the ones they replace."""
    versions = root / VERSIONS
    whole = {name for name, inside in places if not inside}
    parts: dict[str, set[str]] = {}
    for name, inside in places:
        if inside:
            parts.setdefault(name, set()).add(inside)
    build = versions / f"tmp-{run.id}"
    build.mkdir()
    try:
        for name in sorted(_managed(root, versions, current) - whole):
            _link_tree(versions / current / name, build / name, frozenset(parts.get(name, ())))  # type: ignore[operator]
        for (name, inside), tmp in zip(places, tmps, strict=True):
            target = build / name / inside if inside else build / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp, target)
        version = _version_name()
        os.rename(build, versions / version)
    except BaseException:
        _remove(build)
        raise
    return version


def _switch(versions: Path, version: str, previous: str | None) -> None:
    """Points ``current`` at ``version``: one rename of a new link over the old one."""
    if previous is not None:
        with contextlib.suppress(OSError):
            os.utime(versions / previous)  # its grace period counts from now
    link = versions / f"{CURRENT}.tmp-{uuid.uuid4().hex[:8]}"
    os.symlink(version, link)
    try:
        os.replace(link, versions / CURRENT)
    except BaseException:
        with contextlib.suppress(OSError):
            link.unlink()
        raise


def _adopt(run: _Run, root: Path, current: str | None, plain: list[str]) -> str:
    """Makes current a version with the published datasets and the files of the ``plain`` dataset
    folders (hard links: same names, same bytes), then exchanges each plain folder for its link.
    Readers see the same files throughout. Also drops datasets whose link was removed."""
    versions = root / VERSIONS
    for name in plain:
        if not (root / name).is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "a dataset must be a folder", str(root / name))
    build = versions / f"tmp-{run.id}"
    build.mkdir()
    try:
        for name in sorted(_managed(root, versions, current)):
            _link_tree(versions / current / name, build / name)  # type: ignore[operator]
        for name in plain:
            _link_tree(root / name, build / name)
        version = _version_name()
        os.rename(build, versions / version)
    except BaseException:
        _remove(build)
        raise
    entries = []
    try:
        for name in plain:
            link = versions / f"old-{run.id}-{name}"  # after the exchange: the plain folder
            os.symlink(_link_text(name), link)
            aside = versions / f"old-{run.id}-{name}-aside"  # where it goes without the exchange
            entries.append(
                {"target": str(root / name), "new": str(link), "aside": str(aside), "ident": _identity(link)}
            )
        _switch(versions, version, current)
    except BaseException:
        for entry in entries:
            with contextlib.suppress(OSError):
                os.unlink(entry["new"])
        raise
    if entries:
        journal = versions / f"migrate-{run.id}.json"
        draft = versions / f"migrate-{run.id}.json.tmp"
        draft.write_text(json.dumps({"run": run.id, "entries": entries}))
        os.replace(draft, journal)  # a run killed from here on is finished by the next commit
        for entry in entries:
            log.info("moving %s into the versioned layout (%s)", entry["target"], versions)
            _swap_into_place(Path(entry["new"]), Path(entry["target"]), Path(entry["aside"]))
        journal.unlink()
        _age_from_now(entries)
    return version


def _age_from_now(entries: list[dict]) -> None:
    """The replaced plain folders' grace period counts from now."""
    for entry in entries:
        for path in (entry["new"], entry["aside"]):
            with contextlib.suppress(OSError):
                os.utime(path, follow_symlinks=False)


def _tidy(root: Path) -> None:
    """Under the commit lock (so nobody else is building): finishes killed adoptions, removes what
    killed commits left, the public links that lead nowhere, and versions past their grace."""
    versions = root / VERSIONS
    for journal in sorted(versions.glob("migrate-*.json")):
        try:
            entries = json.loads(journal.read_text())["entries"]
        except (OSError, ValueError, KeyError):
            log.warning("ignoring the unreadable journal %s", journal)
        else:
            for entry in entries:
                _roll_forward(entry)
            _age_from_now(entries)
            log.warning("finished moving %s into the versioned layout (interrupted when its process died)", root)
        journal.unlink()
    current = _current(versions)
    now = time.time()
    for entry in os.scandir(versions):
        name, path = entry.name, Path(entry.path)
        if name.startswith(("tmp-", f"{CURRENT}.tmp-")) or name.endswith(".json.tmp"):
            _remove(path)  # half-built by a killed commit
        elif name.startswith("old-") and entry.is_symlink():
            path.unlink()  # a link made for an adoption that never happened
        elif _VERSION.match(name) and current is not None and name > current:
            _remove(path)  # built after the current one (names sort by time) but never switched to
        elif (
            (name.startswith("old-") or _VERSION.match(name))
            and name != current
            and now - entry.stat(follow_symlinks=False).st_mtime > VERSION_GRACE
        ):
            _remove(path)  # replaced longer ago than the grace period
    for entry in os.scandir(root):
        path = Path(entry.path)
        if entry.is_symlink() and _is_ours(path) and not path.exists():
            path.unlink()  # made for a commit that died before its switch


# --------------------------------------------------------------------------------------------------
# Any file system Apache Beam knows (gs://, s3://, hdfs://, local)


@contextmanager
def atomic_filesystem_datasets(*final_paths: str, staging: str | None = None) -> Iterator[list[str]]:
    """The same contract, as far as an object store allows, on any file system Apache Beam knows.

    Files are written under ``staging``/run-ID/ (default ``.staging`` beside the first final path;
    pass ``OUT/.staging``, outside every dataset root, as ``vae score`` does: then no listing of a
    dataset or partition ever sees a temporary file). On success the commit, for all the datasets
    together, (1) renames every new file into place (on GCS and S3: a copy, then a delete of the
    temporary one), next to the old files; (2) writes each dataset folder's ``_manifest.json``,
    naming the run and its files, in one object write; (3) deletes the old files that were not
    overwritten. On an exception the temporary files are deleted and the old datasets are untouched.

    What a reader sees. An object store cannot switch a folder in one step, so:

    * A reader that lists the folder sees the old dataset, complete, until (1) begins; during (1)
      and (2) the old files plus some or all of the new ones; during (3) all the new ones plus the
      old ones not yet deleted; then the new dataset alone. The folder is never missing and never
      holds less than one complete dataset (unless the new one is empty). With file names that
      differ from run to run (``part-RUN-...``, as ``score_dataset`` writes them) the mix is never
      silent: the names, and each row's run stamp, tell the two runs apart. GCS and S3 list
      consistently after a write, so nothing that was listed is missing except what (3) deletes.
    * A reader that reads ``_manifest.json`` first (:func:`committed_files`) gets exactly one
      run's complete list: the old run's until (2), the new run's after it. A file of the old list
      can disappear under such a reader during (3): retry on "not found".
    * ``scores`` and ``rejects`` of one run are not switched together: their manifests are written
      one after the other, and between (1) and (3) both runs are listed in each.
    * Underscore files are ignored by pyarrow, pandas and Spark, and not matched by ``*.parquet``;
      a glob that matches every file (DuckDB ``read_parquet('OUT/scores/**')``) would try to read
      the manifest: end such globs with ``*.parquet``.

    A failure while renaming deletes the new files already in place; a process killed during the
    commit leaves the old files (and the old manifest) plus some new ones until the next successful
    commit of that dataset, which deletes every file that is not its own.

    Locking: the locks are ``flock`` files on this machine (in ``staging`` itself when it is a
    local path, else in the system's temporary folder), so a second run on the same machine is
    refused with :class:`DatasetLockedError`; object stores offer no lock through Beam, so runs on
    different machines are not kept apart. Temporary prefixes of killed runs are deleted by the next
    run: at once if they come from this machine, after :data:`REMOTE_STALE_AFTER` seconds otherwise.
    """
    finals = [str(p).rstrip("/") for p in final_paths]
    if not finals:
        raise ValueError("atomic_filesystem_datasets needs at least one final path")
    stage = (staging or f"{finals[0].rsplit('/', 1)[0]}/{STAGING}").rstrip("/")
    _check_layout(finals, stage)
    root = stage.rsplit("/", 1)[0]
    remote = is_remote(stage)
    lock_dir = Path(stage) if not remote else _host_lock_dir(stage)
    run = _Run.start(lock_dir)
    try:
        run.lock_targets(finals, root)
        _best_effort(lock_dir, _clean_leftovers, run, root)
        if remote:
            _best_effort(stage, _clean_remote, stage, run)
        prefix = f"{stage}/{run.id}"
        tmps = [f"{prefix}/{i}-{final.rsplit('/', 1)[1]}" for i, final in enumerate(finals)]
        try:
            for tmp in tmps:
                _mkdirs(tmp)
            yield tmps
            _publish(finals, tmps, run.id, prefix)
        finally:
            _delete_quietly(prefix)
    finally:
        run.close()


@contextmanager
def atomic_filesystem_dir(final_path: str, staging: str | None = None) -> Iterator[str]:
    """:func:`atomic_filesystem_datasets` for one folder."""
    with atomic_filesystem_datasets(final_path, staging=staging) as (tmp,):
        yield tmp


def committed_files(folder: str | os.PathLike) -> list[str]:
    """The data files of the last commit of a dataset folder written by
    :func:`atomic_filesystem_datasets`, from its ``_manifest.json`` (sorted full paths): one run's
    complete dataset, never a mix (see there). Raises :class:`FileNotFoundError` without a manifest."""
    from apache_beam.io.filesystems import FileSystems

    folder = str(folder).rstrip("/")
    try:
        with FileSystems.open(f"{folder}/{MANIFEST}") as file:
            manifest = json.loads(file.read())
    except Exception as exc:
        if isinstance(exc, FileNotFoundError) or not _exists(f"{folder}/{MANIFEST}"):
            raise FileNotFoundError(errno.ENOENT, "no commit manifest", f"{folder}/{MANIFEST}") from exc
        raise
    return [f"{folder}/{name}" for name in manifest["files"]]


def _host_lock_dir(stage: str) -> Path:
    user = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"vae-output-locks-{user}" / hashlib.sha1(stage.encode()).hexdigest()[:16]


def _match(pattern: str) -> list[str]:
    from apache_beam.io.filesystems import FileSystems

    return [m.path for m in FileSystems.match([pattern])[0].metadata_list]


def _publish(finals: list[str], tmps: list[str], run_id: str, prefix: str) -> None:
    """New files into place for every dataset first, then the manifests, then the old files that
    were not overwritten out."""
    from apache_beam.io.filesystems import FileSystems

    plans = []
    for final, tmp in zip(finals, tmps, strict=True):
        new = sorted(_match(f"{tmp}/**"))
        targets = [f"{final}/{path[len(tmp) + 1 :]}" for path in new]
        old = set(_match(f"{final}/**"))
        plans.append((final, new, targets, old))
    manifests = []
    for i, (final, _, targets, _) in enumerate(plans):  # written beside the temporary datasets, renamed in later
        draft = f"{prefix}/{i}-{MANIFEST}"
        files = sorted(t[len(final) + 1 :] for t in targets)
        with FileSystems.create(draft) as file:
            file.write(json.dumps({"run": run_id, "committed": _now(), "files": files}, indent=1).encode())
        manifests.append((draft, f"{final}/{MANIFEST}"))
    try:
        for final, new, targets, _ in plans:
            _mkdirs(final)
            if not is_remote(final):
                for folder in sorted({t.rsplit("/", 1)[0] for t in targets} - {final}):
                    _mkdirs(folder)
            FileSystems.rename(new, targets)
    except BaseException:  # take the new files that made it out again; the old ones are all still there
        written = [t for _, _, targets, old in plans for t in targets if t not in old and _exists(t)]
        if written:
            with contextlib.suppress(Exception):
                FileSystems.delete(written)
        raise
    for draft, manifest in manifests:
        FileSystems.rename([draft], [manifest])
    keep = {manifest for _, manifest in manifests}
    stale = sorted(path for _, _, targets, old in plans for path in old - set(targets) - keep)
    if stale:
        FileSystems.delete(stale)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _exists(path: str) -> bool:
    from apache_beam.io.filesystems import FileSystems

    try:
        return FileSystems.exists(path)
    except Exception:
        return False


def _clean_remote(stage: str, run: _Run) -> None:
    """Deletes the temporary prefixes of dead runs: this machine's whose run lock is free, and any
    older than :data:`REMOTE_STALE_AFTER`."""
    me = _host()
    paths = _match(f"{stage}/run-*/**")
    for run_id in sorted({p[len(stage) + 1 :].split("/", 1)[0] for p in paths} - {run.id}):
        match = _RUN.match(run_id)
        if not match:
            continue
        born = datetime.strptime(match.group(2), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
        dead = time.time() - born > REMOTE_STALE_AFTER
        if not dead and match.group(3) == me:
            try:
                lock = _try_lock(run.lock_dir / f"{run_id}.lock", exclusive=True, create=False)
            except FileNotFoundError:
                dead = True
            else:
                if lock is not None:
                    _release(lock)
                    dead = True
        if dead:
            log.info("removing %s/%s, left by a run that was killed", stage, run_id)
            _delete_quietly(f"{stage}/{run_id}")


def _mkdirs(path: str) -> None:
    from apache_beam.io.filesystems import FileSystems

    with contextlib.suppress(OSError):  # it exists already (object stores have no folders to make)
        FileSystems.mkdirs(path)


def _delete_quietly(path: str) -> None:
    from apache_beam.io.filesystems import FileSystems

    try:
        if is_remote(path):
            if _match(f"{path}/**"):
                FileSystems.delete([path + "/"])
        elif os.path.lexists(path):
            FileSystems.delete([path])
    except Exception:  # best effort: it is only a temporary prefix, and the next run retries
        log.warning("could not delete the temporary folder %s; the next run will", path)
