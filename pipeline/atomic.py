"""All-or-nothing dataset directories: write into a temporary folder beside the target, then
rename it into place, so readers see the old complete dataset or the new complete one, never half.

    with atomic_dataset_dir("out/scores") as tmp:
        write_parquet_files_into(tmp)
    # out/scores now holds exactly what was written; on an exception it is untouched

The temporary folder (and the old dataset while it is swapped out) lives in ``staging``: by default
beside the target, on the same file system, so the final step is a rename. When the target is a
partition *inside* a dataset (``out/scores/date=2026-11-20``), pass a ``staging`` folder outside the
dataset root (``out/.staging``): a glob such as DuckDB's ``out/scores/*/*.parquet`` matches hidden
folders too, so nothing half-written may ever sit under the dataset root.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

STAGING = ".staging"  # OUTPUT/.staging: temporary and swapped-out datasets, outside every dataset root


@contextmanager
def atomic_dataset_dir(final_path: str | os.PathLike, staging: str | os.PathLike | None = None) -> Iterator[Path]:
    """Yields an empty temporary folder in ``staging`` (default: next to ``final_path``); on
    success it replaces ``final_path`` (and any older dataset there), on an exception it is deleted."""
    final = Path(final_path).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(staging).absolute() if staging is not None else final.parent
    stage.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=stage))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the dataset should not be
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, final, staging=stage)


def replace_dir(src: str | os.PathLike, dst: str | os.PathLike, staging: str | os.PathLike | None = None) -> None:
    """Moves folder ``src`` to ``dst``, replacing whatever was at ``dst`` (set aside in ``staging``,
    default its parent, meanwhile); if the move fails the old ``dst`` is put back. All on one file system."""
    src, dst = Path(src), Path(dst)
    old: Path | None = None
    if dst.exists() or dst.is_symlink():
        old = (Path(staging) if staging is not None else dst.parent) / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dst, old)
    try:
        os.replace(src, dst)
    except BaseException:
        if old is not None:
            os.replace(old, dst)
        shutil.rmtree(src, ignore_errors=True)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def is_remote(path: str | os.PathLike) -> bool:
    """True for URLs such as ``gs://bucket/x`` (any scheme), False for local paths."""
    return "://" in str(path)


@contextmanager
def atomic_filesystem_dir(final_path: str) -> Iterator[str]:
    """The same contract on any file system Apache Beam knows (``gs://``, ``s3://``, ``hdfs://``,
    local): files are written under a hidden sibling prefix and moved into place on success; on an
    exception they are deleted and the old dataset is untouched.

    Object stores cannot rename a folder in one step, so the final move deletes the old files and
    then renames the new ones (a copy on GCS and S3): a reader during that moment may find the
    dataset missing or incomplete, never a mixture of two runs."""
    from apache_beam.io.filesystems import FileSystems

    final = str(final_path).rstrip("/")
    parent, name = final.rsplit("/", 1)
    tmp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:8]}"
    _mkdirs(tmp)
    try:
        yield tmp
    except BaseException:
        _delete_quietly(tmp)
        raise
    new = [m.path for m in FileSystems.match([f"{tmp}/*"])[0].metadata_list]
    if FileSystems.exists(final) or FileSystems.match([f"{final}/*"])[0].metadata_list:
        FileSystems.delete([final if not is_remote(final) else final + "/"])
    _mkdirs(final)
    FileSystems.rename(new, [f"{final}/{path.rsplit('/', 1)[1]}" for path in new])
    _delete_quietly(tmp)


def _mkdirs(path: str) -> None:
    from apache_beam.io.filesystems import FileSystems

    with contextlib.suppress(OSError):  # it exists already (object stores have no folders to make)
        FileSystems.mkdirs(path)


def _delete_quietly(path: str) -> None:
    from apache_beam.io.filesystems import FileSystems

    try:
        FileSystems.delete([path if not is_remote(path) else path + "/"])
    except Exception:  # best effort: it is only a temporary prefix
        log.warning("could not delete the temporary folder %s; delete it by hand", path)
