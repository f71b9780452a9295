"""The same contract, as far as an object store allows, on any file system Apache Beam knows
(``gs://``, ``s3://``, ``hdfs://``, local): :func:`atomic_filesystem_datasets`. New files are put in
place next to the old ones before any old one is deleted, and a ``_manifest.json`` names the files
of the last commit (:func:`committed_files`): a ``_manifest.json`` that a run wrote itself at the top
of a dataset folder (:mod:`pipeline.outputs.manifest`) is not copied as a file, its keys go into that
manifest."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from pipeline.outputs.atomic.locks import _RUN, _best_effort, _clean_leftovers, _host, _release, _Run, _try_lock
from pipeline.outputs.atomic.versions import STAGING, _check_layout
from training.paths import is_remote

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"  # object stores: the files of the last commit of a dataset folder
REMOTE_STALE_AFTER = 2 * 24 * 3600  # seconds after which another host's run prefix on an object store is debris


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
      differ from run to run (``part-RUN-...``, as ``vae score`` writes them) the mix is never
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

    plans, described = [], []
    for final, tmp in zip(finals, tmps, strict=True):
        new = sorted(_match(f"{tmp}/**"))
        own = f"{tmp}/{MANIFEST}"  # the run's own description (pipeline.outputs.manifest): merged below
        described.append(_read_json(own) if own in new else {})
        new = [path for path in new if path != own]
        targets = [f"{final}/{path[len(tmp) + 1 :]}" for path in new]
        old = set(_match(f"{final}/**"))
        plans.append((final, new, targets, old))
    manifests = []
    for i, (final, _, targets, _) in enumerate(plans):  # written beside the temporary datasets, renamed in later
        draft = f"{prefix}/{i}-{MANIFEST}"
        files = sorted(t[len(final) + 1 :] for t in targets)
        manifest = {**described[i], "run": run_id, "committed": _now(), "files": files}
        with FileSystems.create(draft) as file:
            file.write(json.dumps(manifest, indent=1).encode())
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


def _read_json(path: str) -> dict:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as file:
        return json.loads(file.read())


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
