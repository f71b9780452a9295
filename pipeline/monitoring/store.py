"""``OUTPUT/monitoring/``: a Parquet dataset that grows by one file per recorded run.

Each row is its own file, ``part-TIME-KIND-ID.parquet``, written whole under a hidden temporary
name and renamed into place (:func:`pipeline.outputs.files.write_atomically`), so a reader sees a
run's row complete or not at all, two runs recording at once never touch the same file, and no
earlier row is ever rewritten. The folder is a plain one beside ``scores/`` (not part of the
versioned commits of :mod:`pipeline.outputs.atomic`, which only ever replace data; this only adds).
On an object store (``gs://``, ``s3://``) one object is written, which appears whole.

Read it with :func:`read_rows`, or DuckDB: ``select * from 'OUTPUT/monitoring/*.parquet'``.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.monitoring.row import MONITORING_SCHEMA
from pipeline.outputs.atomic import is_remote, output_folder

MONITORING = "monitoring"


def monitoring_path(output: str | os.PathLike) -> Path | str:
    """``OUTPUT/monitoring``, ``OUTPUT`` resolved as ``vae score`` resolves it."""
    folder = output_folder(output)
    return f"{folder}/{MONITORING}" if is_remote(folder) else Path(folder) / MONITORING


def append_row(output: str | os.PathLike, row: dict[str, Any]) -> Path | str:
    """Adds ``row`` (the columns of :data:`~pipeline.monitoring.row.MONITORING_SCHEMA`) to
    ``OUTPUT/monitoring/`` as a new file; returns its path."""
    import pyarrow.parquet as pq

    unknown = sorted(set(row) - set(MONITORING_SCHEMA.names))
    if unknown:
        raise ValueError(f"not monitoring columns: {', '.join(unknown)}")
    table = pa.Table.from_pylist([row], schema=MONITORING_SCHEMA)
    stamp = (row.get("recorded_at") or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%f")
    name = f"part-{stamp}-{row.get('kind', 'row')}-{uuid.uuid4().hex[:8]}.parquet"
    folder = monitoring_path(output)
    if isinstance(folder, str):  # an object store: one PUT, visible whole
        from pyarrow import fs

        filesystem, inner = fs.FileSystem.from_uri(folder)
        with filesystem.open_output_stream(f"{inner}/{name}") as handle:
            pq.write_table(table, handle)
        return f"{folder}/{name}"
    from pipeline.outputs.files import write_atomically

    folder.mkdir(parents=True, exist_ok=True)
    return write_atomically(folder / name, lambda tmp: pq.write_table(table, tmp))


def read_rows(output: str | os.PathLike) -> pa.Table:
    """Every row of ``OUTPUT/monitoring/``, oldest first (by ``recorded_at``); an empty table when
    there is none. Files written before a column existed read it as null."""
    import pyarrow.dataset as ds

    folder = monitoring_path(output)
    if isinstance(folder, Path) and not folder.is_dir():
        return MONITORING_SCHEMA.empty_table()
    try:
        table = ds.dataset(str(folder), schema=MONITORING_SCHEMA, format="parquet").to_table()
    except (OSError, pa.ArrowInvalid) as exc:
        raise ValueError(f"{folder}: not a readable monitoring dataset ({exc})") from exc
    return table.sort_by([("recorded_at", "ascending")])
