"""The ``synthetic/`` dataset that ``vae generate`` writes: its schema, its layout, the writer and the reader.

Layout: one folder per method, one per label inside it, and files named after the run that wrote
them (``RUN``: 8 hex digits), like the scores::

    OUTPUT/synthetic/conditional/label-3/part-RUN-SSSSS-of-NNNNN.parquet
    OUTPUT/synthetic/prior/label-none/part-RUN-00000-of-00001.parquet    (a plain model: no label)

Every file holds every column, ``method`` and ``label`` included, so a file read alone, or the folder
read by pandas, pyarrow, DuckDB or Spark, gives the same rows. The folder names are not hive-style
(``method=M``) on purpose: pyarrow and pandas would add a second, differently typed ``method`` and
``label`` from them and refuse to merge it with the file's (pyarrow infers int32 or a dictionary from
``label=3``). Filters on ``method`` and ``label`` still skip other files, by their statistics.
A run replaces its method's folder as a whole (:func:`pipeline.outputs.atomic.atomic_dataset_dir`).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from training.data.reader import UNIT_PIXELS_KEY

if TYPE_CHECKING:
    from training.registry import ModelRef

DATASET = "synthetic"  # the folder under --output, beside scores/ and rejects/
NO_LABEL = -1  # in label arrays: no label (null in the files)
NO_LABEL_DIR = "label-none"

SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("method", pa.string(), nullable=False),
        pa.field("label", pa.int64()),  # null: prior samples of a plain model
        pa.field("label_name", pa.string()),  # the model's class name for label: what training reads
        pa.field("image_png", pa.binary(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("channels", pa.int32(), nullable=False),
        pa.field("pixels", pa.list_(pa.float32()), nullable=False),
        pa.field("latent", pa.list_(pa.float32()), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("source_example_id", pa.string()),
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ],
    # pixels are likelihood means in [0, 1]: the input contract reads them as they are, whatever
    # pixel scale the model that reads them was trained with (training.data.validate)
    metadata={UNIT_PIXELS_KEY: b"1"},
)
COLUMNS = tuple(SCHEMA.names)
_LABEL_DIR = re.compile(r"^label-(none|\d+)$")


def sample_id(method: str, seed: int, index: int) -> str:
    return f"{method}-s{seed}-{index:08d}"


def method_dir(root: str | os.PathLike, method: str) -> Path:
    """The folder of one method's samples, which a run replaces: ``ROOT/METHOD``."""
    return Path(root) / method


def label_dir(label: int | None) -> str:
    """``label-3``, or ``label-none`` for no label."""
    return NO_LABEL_DIR if label is None or label == NO_LABEL else f"label-{int(label)}"


def legacy_partitions(root: str | os.PathLike) -> list[Path]:
    """Method folders of the hive layout written before ``method`` and ``label`` were columns
    (``ROOT/method=M``), which readers cannot combine with this layout."""
    folder = Path(root)
    return sorted(folder.glob("method=*")) if folder.is_dir() else []


def _list_array(rows: np.ndarray) -> pa.ListArray:
    flat = np.ascontiguousarray(rows, dtype=np.float32).reshape(len(rows), -1)
    offsets = np.arange(0, flat.size + 1, flat.shape[1], dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat.reshape(-1)))


def synthetic_table(
    *,
    index: np.ndarray,
    labels: np.ndarray,
    images: np.ndarray,
    latents: np.ndarray,
    source_ids: np.ndarray | None,
    method: str,
    seed: int,
    model: ModelRef,
    created_at: datetime,
    class_names: tuple[str, ...] | list[str] = (),
) -> pa.Table:
    """Samples as rows of :data:`SCHEMA`: ``index`` their positions in the plan, ``labels`` int64 with
    :data:`NO_LABEL` for none, ``images`` (N, H, W, C) in [0, 1], ``latents`` the z decoded."""
    from pipeline.outputs.png import encode_pngs

    n = len(images)
    height, width, channels = images.shape[1:]
    labels = np.asarray(labels, dtype=np.int64)
    columns = {
        "sample_id": pa.array([sample_id(method, seed, int(i)) for i in index], pa.string()),
        "method": pa.repeat(pa.scalar(method, pa.string()), n),
        "label": pa.array(labels, pa.int64(), mask=labels == NO_LABEL),
        "label_name": pa.array(
            [None if v == NO_LABEL else (class_names[v] if v < len(class_names) else str(v)) for v in labels.tolist()],
            pa.string(),
        ),
        "image_png": pa.array(encode_pngs(images), pa.binary()),
        "height": pa.array(np.full(n, height, np.int32)),
        "width": pa.array(np.full(n, width, np.int32)),
        "channels": pa.array(np.full(n, channels, np.int32)),
        "pixels": _list_array(images),
        "latent": _list_array(latents),
        "seed": pa.array(np.full(n, seed, np.int64)),
        "source_example_id": pa.nulls(n, pa.string())
        if source_ids is None
        else pa.array([str(s) for s in source_ids], pa.string()),
        "model_name": pa.repeat(pa.scalar(model.name, pa.string()), n),
        "model_version": pa.repeat(pa.scalar(model.version, pa.string()), n),
        "created_at": pa.repeat(pa.scalar(created_at, pa.timestamp("us", tz="UTC")), n),
    }
    return pa.Table.from_pydict(columns, schema=SCHEMA)


def write_partitions(
    table: pa.Table, folder: str | os.PathLike, *, run: str, shard: int, shards: int
) -> list[tuple[str, int]]:
    """One Parquet file per label in one shard's ``table``: ``folder/label-L/part-RUN-SSSSS-of-NNNNN.parquet``.
    Idempotent (a retried shard overwrites its own files). Returns (path, rows) for each file."""
    import pyarrow.parquet as pq

    labels = table.column("label").fill_null(NO_LABEL).to_numpy()
    written = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        directory = Path(folder) / label_dir(int(label))
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"part-{run}-{shard:05d}-of-{shards:05d}.parquet"
        pq.write_table(table.take(pa.array(rows)), path, compression="zstd")
        written.append((str(path), len(rows)))
    return written


def inventory(folder: str | os.PathLike) -> tuple[list[Path], dict[int | None, int]]:
    """The Parquet files under a method's folder and the rows per label (None: no label), from the
    folder names and the file footers."""
    import pyarrow.parquet as pq

    files = sorted(Path(folder).rglob("*.parquet"))
    counts: Counter[int | None] = Counter()
    for path in files:
        match = _LABEL_DIR.match(path.parent.name)
        if not match:
            raise ValueError(f"{path}: not in a label-L folder")
        label = None if match[1] == "none" else int(match[1])
        counts[label] += pq.ParquetFile(path).metadata.num_rows
    return files, dict(sorted(counts.items(), key=lambda kv: -1 if kv[0] is None else kv[0]))


def read_synthetic(
    path: str | os.PathLike, method: str | None = None, columns: Sequence[str] | None = None
) -> pa.Table:
    """The ``synthetic/`` dataset (or one method of it) with the documented column order and types,
    sorted by method, label and sample_id."""
    import pyarrow.dataset as ds

    dataset = ds.dataset(str(path), format="parquet", schema=SCHEMA)
    wanted = list(columns or COLUMNS)
    table = dataset.to_table(columns=wanted, filter=None if method is None else ds.field("method") == method)
    keys = [(k, "ascending") for k in ("method", "label", "sample_id") if k in wanted]
    return table.sort_by(keys) if keys else table


def images_of(table: pa.Table) -> np.ndarray:
    """The ``pixels`` column as float32 (N, H, W, C) images."""
    if table.num_rows == 0:
        return np.zeros((0, 1, 1, 1), np.float32)
    h, w, c = (table.column(k)[0].as_py() for k in ("height", "width", "channels"))
    flat = table.column("pixels").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32).reshape(table.num_rows, h, w, c)
