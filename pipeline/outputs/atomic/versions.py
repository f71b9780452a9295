"""The local commit: immutable versions behind one pointer, ``OUT/.versions/current``.

:func:`atomic_datasets` (and :func:`atomic_dataset_dir`) stage a run's folders, then build the next
version of ``OUT`` (the run's folders moved in, every other file hard-linked) and switch
``current`` to it with one rename; :func:`snapshot` / :func:`snapshots` resolve public paths to a
version. A plain dataset folder is adopted into the layout; a user's own symbolic link as a dataset
root is refused. Where symbolic links cannot be made the commit falls back to
:mod:`pipeline.outputs.atomic.exchange`. See the package docstring for the whole contract."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from pipeline.outputs.atomic.exchange import _commit, _identity, _remove, _roll_forward, _swap_into_place
from pipeline.outputs.atomic.locks import (
    DatasetLockedError,
    _best_effort,
    _clean_leftovers,
    _describe_holder,
    _holder,
    _Lock,
    _release,
    _Run,
    _try_lock,
)
from training.paths import is_remote

log = logging.getLogger(__name__)

STAGING = ".staging"  # OUTPUT/.staging: runs' private folders and the locks, outside every dataset root
VERSIONS = ".versions"  # OUTPUT/.versions: the immutable versions and the pointer to the current one
CURRENT = "current"  # OUTPUT/.versions/current -> v-...: the pointer a commit switches
VERSION_GRACE = 600.0  # seconds a replaced version stays intact for readers that resolved it (snapshot)
COMMIT_WAIT = 600.0  # seconds a commit waits for another run's commit to the same OUTPUT before giving up
_VERSION = re.compile(r"^v-\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{6}$")


def output_folder(output: str | os.PathLike) -> Path | str:
    """The output folder ``OUT`` that a ``--output`` names, the same for every command that writes
    one (``vae score``, ``vae generate``): an object store URL as given, without a trailing slash; a
    local path absolute, its symbolic links and ``..`` resolved the way the system resolves them
    when it opens a file (``link/../out`` is the ``out`` beside the link's target, as ``ls
    link/../out`` shows, not the ``out`` beside ``link``)."""
    if is_remote(output):
        return str(output).rstrip("/")
    return Path(os.path.realpath(output))


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
    _refuse_foreign_links(finals, root)
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


def _refuse_foreign_links(finals: list[Path], root: Path) -> None:
    """A symbolic link of one's own at a dataset root (``OUT/scores -> /big/scores``) or at a final
    path would be adopted (its files copied or hard-linked into ``OUT/.versions``) and replaced:
    refuse it, saying what to do instead. The versioned layout's own links are fine."""
    for final in finals:
        place = _place(final, root)
        for path in dict.fromkeys([final] if place is None else [root / place[0], final]):
            if os.path.islink(path) and not _is_ours(path):
                raise ValueError(
                    f"{path} is a symbolic link (to {os.readlink(path)}), not a dataset folder this run may "
                    f"replace: adopting it would copy its files into {root / VERSIONS} and remove the link. To keep "
                    "the data elsewhere, write the output folder there instead (--output on that disk, or the "
                    f"output folder itself a link to it); or remove the link {path} (its files stay where it led)"
                )


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


_warned: set[str] = set()  # the reasons warned about once


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
    killed commits left, the public links that lead nowhere, and versions past their grace period
    (counted from each version's time stamp: when it was replaced, or built if it never was current)."""
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
        elif (
            (name.startswith("old-") or _VERSION.match(name))
            and name != current
            and now - entry.stat(follow_symlinks=False).st_mtime > VERSION_GRACE
        ):
            # replaced longer ago than the grace period (the switch set its time stamp), or built
            # that long ago by a commit that died before its switch. Never by the order of the
            # names: they carry the wall-clock time, which may step backwards.
            _remove(path)
    for entry in os.scandir(root):
        path = Path(entry.path)
        if entry.is_symlink() and _is_ours(path) and not path.exists():
            path.unlink()  # made for a commit that died before its switch
