"""``_manifest.json``: what made the rows of one committed dataset folder or partition.

Every folder a run commits (``OUTPUT/scores/date=2026-11-20/``, ``OUTPUT/rejects/date=...``,
``OUTPUT/synthetic/conditional/``; ``OUTPUT/scores/`` itself when it is written whole) gets one,
written into the staging folder so that the same atomic commit publishes the data and the manifest
together (:mod:`pipeline.outputs.atomic`). pyarrow, pandas and Spark skip files starting with ``_``;
DuckDB globs ending in ``*.parquet`` do not match it. Keys: ``dataset``, ``partition``, ``rows``,
``model_name``, ``model_version``, ``model_uri``, ``input``, ``input_fingerprint``, ``run_id``,
``written_at`` (UTC, ISO 8601), ``vae_version``; callers may add more (a failed run's kept rejects
carry ``status`` and ``reason``). On an object store the commit adds the file list of
:func:`pipeline.outputs.atomic.committed_files` (``run``, ``committed``, ``files``) to the same file.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from pipeline.outputs.atomic import MANIFEST, is_remote

if TYPE_CHECKING:
    from training.data import ImageData
    from training.data.reader import InputPlan
    from training.registry import ModelRef

__all__ = ["MANIFEST", "build_manifest", "fingerprint_of", "input_fingerprint", "read_manifest", "write_manifest"]


def build_manifest(
    *,
    dataset: str,
    partition: str | None,
    rows: int,
    model: ModelRef,
    input: str | None,
    input_fingerprint: str | None,
    run_id: str,
    **extra: Any,
) -> dict[str, Any]:
    """The manifest of one folder: ``dataset`` (``scores``, ``rejects``, ``synthetic``), ``partition``
    (the folder inside the dataset, ``date=2026-11-20`` or the method; None for the whole dataset)."""
    return {
        "dataset": dataset,
        "partition": partition,
        "rows": int(rows),
        "model_name": model.name,
        "model_version": str(model.version),
        "model_uri": model.uri,
        "input": input,
        "input_fingerprint": input_fingerprint,
        "run_id": run_id,
        "written_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "vae_version": _vae_version(),
        **extra,
    }


def write_manifest(folder: str | os.PathLike, manifest: dict[str, Any]) -> str:
    """Writes ``FOLDER/_manifest.json`` (a staging folder: the commit makes it public); returns its path."""
    text = json.dumps(manifest, indent=1, sort_keys=False) + "\n"
    path = f"{str(folder).rstrip('/')}/{MANIFEST}"
    if is_remote(path):
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.create(path) as file:
            file.write(text.encode())
    else:
        Path(path).write_text(text)
    return path


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a committed folder; :class:`FileNotFoundError` if it has none."""
    path = f"{str(folder).rstrip('/')}/{MANIFEST}"
    if is_remote(path):
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.open(path) as file:
            return json.loads(file.read())
    return json.loads(Path(path).read_text())


def fingerprint_of(source: str | ImageData, split_seed: int = 0) -> str:
    """:func:`input_fingerprint` of an input as the jobs name it (``--input``, or images in memory)."""
    from training.data.reader import plan_input

    return input_fingerprint(plan_input(source, split_seed=split_seed))


def input_fingerprint(plan: InputPlan) -> str:
    """A cheap, stable fingerprint of what an input plan reads (SHA-256, hex).

    Files (Parquet, NPZ, PNG/JPEG folders), local or remote: their absolute paths, sizes and
    modification times (nanoseconds; on object stores the time pyarrow reports), in the plan's
    order; no file is opened. The same files unchanged give the same fingerprint; a file rewritten,
    touched, added or removed gives another. Rows in memory (an ``ImageData``, the built-in data
    sets): the bytes of every column's values (pixels, ids, labels, ...), column by column, so the
    number of shards does not change it."""
    from training.data.reader import ArrowShard

    digest = hashlib.sha256()
    columns: dict[str, hashlib._Hash] = {}
    seen: set[str] = set()
    for shard in plan.shards:
        if isinstance(shard, ArrowShard):
            for name, column in zip(shard.batch.schema.names, shard.batch.columns, strict=True):
                _hash_values(columns.setdefault(name, hashlib.sha256()), column)
            continue
        for path in _files_of(shard):
            if path not in seen:
                seen.add(path)
                size, mtime = _stat(path)
                digest.update(f"file\0{path}\0{size}\0{mtime}\n".encode())
    for name in sorted(columns):
        digest.update(f"column\0{name}\0{columns[name].hexdigest()}\n".encode())
    return digest.hexdigest()


def _files_of(shard: Any) -> list[str]:
    from training.data.reader import ImageFilesShard

    if isinstance(shard, ImageFilesShard):
        root = shard.root.rstrip("/")
        return [_absolute(f"{root}/{name}") for name in shard.files]
    return [_absolute(shard.path)]  # ParquetShard, NpzShard


def _absolute(path: str) -> str:
    return path if is_remote(path) else os.path.abspath(path)


def _stat(path: str) -> tuple[int, int]:
    if is_remote(path):
        from pyarrow import fs

        filesystem, inner = fs.FileSystem.from_uri(path)
        info = filesystem.get_file_info(inner)
        mtime = info.mtime_ns if info.mtime_ns is not None else 0
        return int(info.size or 0), int(mtime)
    try:
        st = os.stat(path)
    except FileNotFoundError:  # a broken link: the link itself (its row is a reject when read)
        st = os.lstat(path)
    return st.st_size, st.st_mtime_ns


def _hash_values(digest: Any, column: pa.Array) -> None:
    """Updates ``digest`` with a column's values in a way that does not depend on how the rows are
    cut into batches (fixed-size lists have a fixed width, so their values alone are enough)."""
    if isinstance(column, pa.ChunkedArray):
        for chunk in column.chunks:
            _hash_values(digest, chunk)
        return
    if pa.types.is_fixed_size_list(column.type) and column.null_count == 0:
        _hash_values(digest, column.flatten())
    elif (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)) and column.null_count == 0:
        digest.update(np.ascontiguousarray(column.to_numpy(zero_copy_only=False)).tobytes())
    else:
        for value in column.to_pylist():
            digest.update(repr(value).encode() + b"\x1e")


def _vae_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vae-pipeline")
    except PackageNotFoundError:
        return "unknown"
