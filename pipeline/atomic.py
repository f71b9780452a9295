"""All-or-nothing dataset directories: write into a temporary folder beside the target, then
rename it into place, so readers see the old complete dataset or the new complete one, never half.

    with atomic_dataset_dir("out/scores") as tmp:
        write_parquet_files_into(tmp)
    # out/scores now holds exactly what was written; on an exception it is untouched

The temporary folder is a hidden sibling (``.scores.tmp-XXXX``) on the same file system, so the
final step is a rename. pyarrow, DuckDB and Spark skip names starting with ``.`` or ``_``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_dataset_dir(final_path: str | os.PathLike) -> Iterator[Path]:
    """Yields an empty temporary folder next to ``final_path``; on success it replaces
    ``final_path`` (and any older dataset there), on an exception it is deleted."""
    final = Path(final_path).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the dataset should not be
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, final)


def replace_dir(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Moves folder ``src`` to ``dst``, replacing whatever was at ``dst``; if the move fails the
    old ``dst`` is put back. Both must be on the same file system."""
    src, dst = Path(src), Path(dst)
    old: Path | None = None
    if dst.exists() or dst.is_symlink():
        old = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex[:8]}")
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
