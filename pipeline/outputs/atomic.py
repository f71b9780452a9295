"""Dataset folders that never flicker: a run's outputs appear whole, in one commit, or not at all.

    with atomic_datasets(out / "scores", out / "rejects", staging=out / ".staging") as (scores, rejects):
        write_parquet_files_into(scores, rejects)
    # out/scores and out/rejects now hold exactly what was written; on an exception they are untouched

What "atomic" means here
------------------------
A run writes into private folders under ``OUT/.staging/run-ID/``, outside every dataset root (a
glob such as DuckDB's ``OUT/scores/*/*.parquet`` also matches hidden folders, and ``**`` any depth,
so nothing half-written or swapped-out may ever sit under ``OUT/scores``). Only when the body of the
``with`` succeeded are the folders *committed*: switched with the public paths (``OUT/scores``,
``OUT/rejects``, or the partitions ``OUT/scores/date=D`` and ``OUT/rejects/date=D``).

**Local disk.** Each public folder is switched with one ``renameat2(RENAME_EXCHANGE)`` system call
(Linux 3.15+; ext4, xfs, btrfs, tmpfs and most local file systems): the path names the old complete
folder until the call and the new complete folder after it; there is no moment in which it is
missing, empty or half-written. The datasets of one commit (``scores`` and ``rejects``) are switched
by consecutive calls, microseconds apart, but not by one: a reader who looks at both at that very
instant may pair new scores with old rejects. Before the first switch the commit writes a journal
(``run-ID/commit.json``); a process killed between the switches is finished (rolled forward) by the
next run that writes there, and a switch that fails is undone, so the datasets of a commit end up
from the same run. Where the exchange is not available (another OS, a file system without it) the
old path is used, two renames with a moment in which the folder does not exist, and a warning is
logged.

What a reader sees. Every state of a public path is one run's complete dataset: a reader that
opens the folder once and reads the files relative to it never sees it missing, partial or mixed.
The folder that was replaced is kept intact for :data:`OLD_VERSION_GRACE` seconds before it is
deleted, so a reader that began listing it just before the switch still lists it whole (deleting it
at once would let that listing come back empty). pyarrow, pandas and DuckDB, however, list the folder
and then stat and open every file again by its full path, so a read that overlaps a switch (a window
as long as the read) looks up names from the old folder in the new one. With file names that differ
from run to run (as ``score_dataset`` writes them: ``part-RUN-SSSSS-of-NNNNN.parquet``) such a read
fails with "file not found" or, rarely, comes back short (these libraries skip names that vanish
while they list), but never holds rows of two runs; retry it, or check the row count. With names
that repeat from run to run it could silently combine files of two runs. No switch of folders
(exchange or symbolic link) can do better for such readers; only a manifest or table format can. A
file already open keeps its old contents until it is closed.

**Locks.** A run holds ``fcntl.flock`` locks on files in the staging folder from the moment it
starts until it has committed (or failed): exclusive on each target (``scores.lock``,
``scores+date=D.lock``), shared on the dataset a partition belongs to (``scores.lock``), so any
number of runs may write different partitions at once, but a second run writing the same dataset or
partition, or replacing a dataset while a partition of it is written, is refused at once with a
:class:`DatasetLockedError` naming the lock file and the holder's pid, host and start time. The
kernel releases the locks of a process that dies, so there is never a stale lock.

**Leftovers.** Each run also holds a lock on its own ``run-ID.lock``. When a run starts it removes
the run folders of runs whose lock is no longer held (killed runs), finishing an interrupted commit
from its journal first, and lock files nobody holds. A successful or failed run leaves no trace, not
even an empty ``.staging`` folder.

Nothing is fsync'ed: the guarantees hold against crashed processes and concurrent readers, not
against a power cut.

**Object stores** (``gs://``, ``s3://``, through Apache Beam's file systems): see
:func:`atomic_filesystem_datasets`; they cannot rename a folder, so the best they allow is weaker.
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
JOURNAL = "commit.json"
REMOTE_STALE_AFTER = 2 * 24 * 3600  # seconds after which another host's run prefix on an object store is debris
OLD_VERSION_GRACE = 0.5  # seconds a replaced folder is kept, intact, for readers that were listing it
LEGACY_STALE_AFTER = 3600  # the ``.NAME.tmp-*`` / ``.NAME.old-*`` folders of earlier versions of this module

_RUN = re.compile(r"^(run-(\d{8}T\d{6}Z)-(.+)-(\d+)-([0-9a-f]{6}))(\.lock)?$")
_LEGACY = re.compile(r"^\..+\.(tmp|old)-[0-9A-Za-z_]+$")


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
    succeeds, all of them replace their final paths in one commit (see the module docstring), on an
    exception they are deleted and the final paths are untouched.

    ``staging`` defaults to ``.staging`` beside the first final path. For partitions
    (``out/scores/date=D``) pass a folder outside the dataset root (``out/.staging``). Every writer
    of a dataset must use the same staging folder: that is where the locks are. Raises
    :class:`DatasetLockedError` at once if another run is writing one of the final paths."""
    finals = [Path(p).absolute() for p in final_paths]
    if not finals:
        raise ValueError("atomic_datasets needs at least one final path")
    stage = Path(staging).absolute() if staging is not None else finals[0].parent / STAGING
    _check_layout([str(f) for f in finals], str(stage))
    for final in finals:
        final.parent.mkdir(parents=True, exist_ok=True)
    root = str(stage.parent)
    run = _Run.start(stage)
    try:
        run.lock_targets([str(f) for f in finals], root)
        _best_effort(stage, _clean_leftovers, run, root)
        run.dir.mkdir()
        tmps = [run.dir / f"{i}-{final.name}" for i, final in enumerate(finals)]
        for tmp in tmps:
            tmp.mkdir()
        yield tmps
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


def _check_layout(finals: list[str], stage: str) -> None:
    if len(set(finals)) != len(finals):
        raise ValueError(f"the same final path twice: {finals}")
    for final in finals:
        for other in [*finals, stage]:
            if other != final and other.startswith(final + "/"):
                raise ValueError(f"{other} lies inside {final}, which is replaced as a whole")


def _commit(run: _Run, finals: list[Path], tmps: list[Path]) -> None:
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
# Any file system Apache Beam knows (gs://, s3://, hdfs://, local)


@contextmanager
def atomic_filesystem_datasets(*final_paths: str, staging: str | None = None) -> Iterator[list[str]]:
    """The same contract, as far as an object store allows, on any file system Apache Beam knows.

    Files are written under ``staging``/run-ID/ (default ``.staging`` beside the first final path;
    for partitions pass ``OUT/.staging``, outside the dataset root). On success every new file is
    renamed into place (on GCS and S3 a copy), for all the datasets, and only then are the old
    files that were not overwritten deleted; on an exception the temporary files are deleted and the
    old datasets are untouched.

    What readers see: an object store cannot switch a folder in one step, so during the commit a
    reader may list the old files plus some or all of the new ones (with run-specific file names:
    rows of two runs side by side), then, once the old files are deleted, only the new ones. The
    dataset is never missing or empty. That is the best an object store allows without a manifest
    or table format (Delta Lake, Iceberg). A failure while renaming deletes the new files already in
    place; a process killed during the commit leaves the old files plus some new ones until the next
    successful commit of that dataset, which deletes every file that is not its own.

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
            _publish(finals, tmps)
        finally:
            _delete_quietly(prefix)
    finally:
        run.close()


@contextmanager
def atomic_filesystem_dir(final_path: str, staging: str | None = None) -> Iterator[str]:
    """:func:`atomic_filesystem_datasets` for one folder."""
    with atomic_filesystem_datasets(final_path, staging=staging) as (tmp,):
        yield tmp


def _host_lock_dir(stage: str) -> Path:
    user = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"vae-output-locks-{user}" / hashlib.sha1(stage.encode()).hexdigest()[:16]


def _match(pattern: str) -> list[str]:
    from apache_beam.io.filesystems import FileSystems

    return [m.path for m in FileSystems.match([pattern])[0].metadata_list]


def _publish(finals: list[str], tmps: list[str]) -> None:
    """New files into place for every dataset first, then the old ones that were not overwritten out."""
    from apache_beam.io.filesystems import FileSystems

    plans = []
    for final, tmp in zip(finals, tmps, strict=True):
        new = sorted(_match(f"{tmp}/**"))
        targets = [f"{final}/{path[len(tmp) + 1 :]}" for path in new]
        old = set(_match(f"{final}/**"))
        plans.append((final, new, targets, old))
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
    stale = sorted(path for _, _, targets, old in plans for path in old - set(targets))
    if stale:
        FileSystems.delete(stale)


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
