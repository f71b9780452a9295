"""The ``scores/`` and ``rejects/`` datasets that ``vae score`` writes: their schemas, the rows of one
batch, where a run writes them, and reading them back."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.outputs.atomic import STAGING, atomic_datasets, atomic_filesystem_datasets, is_remote, output_folder
from training.data.validate import REJECTS_SCHEMA as ROW_REJECTS_SCHEMA

if TYPE_CHECKING:
    from scoring.calibration import Calibration
    from training.data.validate import RejectedRows, ValidRows
    from training.registry import ModelRef

SCORES_SCHEMA = pa.schema(
    [
        ("example_id", pa.string()),
        ("anomaly_score", pa.float64()),
        ("neg_elbo", pa.float64()),
        ("reconstruction_nll", pa.float64()),
        ("kl", pa.float64()),
        ("iwae_nll", pa.float64()),
        ("p_value", pa.float64()),
        ("threshold", pa.float64()),
        ("is_anomaly", pa.bool_()),
        ("label", pa.int64()),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("scored_at", pa.timestamp("us", tz="UTC")),
        ("source", pa.string()),
        ("source_row", pa.int64()),
        ("pixel_nll", pa.list_(pa.float32())),
    ]
)
#: the reader's rejected rows (training.data.validate.REJECTS_SCHEMA) and the run that rejected them
REJECTS_SCHEMA = pa.schema(
    [
        *ROW_REJECTS_SCHEMA,
        pa.field("model_name", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("scored_at", pa.timestamp("us", tz="UTC")),
    ]
)


def run_columns(model: ModelRef, scored_at: datetime, n: int) -> dict[str, pa.Array]:
    """What every output row carries about the run: the model version that made it and when."""
    return {
        "model_name": pa.repeat(pa.scalar(model.name, pa.string()), n),
        "model_version": pa.repeat(pa.scalar(model.version, pa.string()), n),
        "scored_at": pa.repeat(pa.scalar(scored_at, pa.timestamp("us", tz="UTC")), n),
    }


def rejects_table(rejected: RejectedRows, model: ModelRef, scored_at: datetime) -> pa.Table:
    """The ``rejects/`` rows for one batch."""
    columns = {
        "example_id": rejected.example_ids,
        "source": rejected.sources,
        "source_row": rejected.source_rows,
        "reason": rejected.reasons,
        "raw": rejected.raws,
        **run_columns(model, scored_at, len(rejected)),
    }
    return pa.Table.from_pydict({name: columns[name] for name in REJECTS_SCHEMA.names}, schema=REJECTS_SCHEMA)


def scores_table(
    rows: ValidRows,
    scores: dict[str, np.ndarray],
    calibration: Calibration | None,
    model: ModelRef,
    scored_at: datetime,
) -> pa.Table:
    """The ``scores/`` rows for one batch; ``calibration`` (or None) sets threshold and p-value."""
    n = len(rows)
    nulls = pa.nulls(n, pa.float64())
    if calibration is not None:
        calibrated = scores[calibration.score]  # anomaly_score; neg_elbo for models calibrated before it
        p_value = pa.array(calibration.p_values(calibrated))
        threshold = pa.repeat(pa.scalar(calibration.threshold, pa.float64()), n)
        is_anomaly = pa.array(calibration.is_anomaly(calibrated))
    else:
        p_value, threshold, is_anomaly = nulls, nulls, pa.nulls(n, pa.bool_())
    columns = {
        "example_id": rows.example_ids,
        "anomaly_score": pa.array(scores["anomaly_score"]),
        "neg_elbo": pa.array(scores["neg_elbo"]),
        "reconstruction_nll": pa.array(scores["reconstruction_nll"]),
        "kl": pa.array(scores["kl"]),
        "iwae_nll": pa.array(scores["iwae_nll"]) if "iwae_nll" in scores else nulls,
        "p_value": p_value,
        "threshold": threshold,
        "is_anomaly": is_anomaly,
        "label": rows.label_out,
        "source": rows.sources,
        "source_row": rows.source_rows,
        "pixel_nll": pixel_column(scores["pixel_nll"]) if "pixel_nll" in scores else pa.nulls(n, PIXEL_NLL_TYPE),
        **run_columns(model, scored_at, n),
    }
    return pa.Table.from_pydict({name: columns[name] for name in SCORES_SCHEMA.names}, schema=SCORES_SCHEMA)


PIXEL_NLL_TYPE = SCORES_SCHEMA.field("pixel_nll").type


def pixel_column(pixel_nll: np.ndarray) -> pa.Array:
    """(N, H, W, C) per-pixel NLLs as one list<float32> per row, row-major (H, W, C): a row's list
    reshaped to the image's (``height``, ``width``, ``channels``) is its heat map."""
    n = len(pixel_nll)
    values = np.ascontiguousarray(pixel_nll, dtype=np.float32).reshape(-1)
    per_row = values.size // n if n else 0
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * per_row, pa.int32())
    return pa.ListArray.from_arrays(offsets, pa.array(values, pa.float32()), type=PIXEL_NLL_TYPE)


def output_paths(
    output: str | os.PathLike, partition: str | None = None
) -> tuple[Path | str, Path | str, Callable[..., AbstractContextManager[list]]]:
    """(scores path, rejects path, the commit: a context manager that takes both paths, yields a
    temporary folder for each, and commits them together, see :mod:`pipeline.outputs.atomic`).

    With ``partition`` (``KEY=VALUE``, e.g. ``date=2026-11-20``) the run writes and replaces only
    ``scores/KEY=VALUE/`` and ``rejects/KEY=VALUE/``: hive-style partitions of one dataset. The
    temporary folders and the locks live in ``OUTPUT/.staging``, outside both dataset roots. ``output``
    is resolved by :func:`pipeline.outputs.atomic.output_folder`."""
    suffix = f"/{partition}" if partition else ""
    output = output_folder(output)  # as vae generate resolves it
    if is_remote(output):
        base = str(output)
        remote = functools.partial(atomic_filesystem_datasets, staging=f"{base}/{STAGING}")
        return f"{base}/scores{suffix}", f"{base}/rejects{suffix}", remote
    staged = functools.partial(atomic_datasets, staging=Path(output) / STAGING)
    return Path(f"{Path(output) / 'scores'}{suffix}"), Path(f"{Path(output) / 'rejects'}{suffix}"), staged


def reject_duplicates(scores_dir: str | os.PathLike, rejects_dir: str | os.PathLike, run_tag: str) -> int:
    """Applies the input contract's rule for a repeated ``example_id``
    (:func:`training.data.validate.duplicate_rows`, the same as training's) to a run written but
    not yet committed: of the scored rows sharing an id, the one first by (``source``,
    ``source_row``) stays and the others move to the rejects. Finds them in bounded memory
    (:mod:`pipeline.outputs.duplicate_ids`); rewrites only the files that hold a repeated row.
    Returns how many rows moved."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq
    from pyarrow import fs

    from pipeline.outputs.duplicate_ids import find_duplicates

    dataset = ds.dataset(str(scores_dir), format="parquet")
    duplicates = find_duplicates(dataset)
    if not duplicates.rows:
        return 0
    filesystem = dataset.filesystem
    moved: list[pa.Table] = []
    reason_of = duplicates.rows
    marked = np.fromiter(sorted(reason_of), dtype=np.int64)
    start = 0
    for path, rows in duplicates.files:
        local = marked[(marked >= start) & (marked < start + rows)] - start
        if len(local):
            with filesystem.open_input_file(path) as handle:
                whole = pq.read_table(handle)
            keep = np.ones(rows, dtype=bool)
            keep[local] = False
            gone = whole.take(pa.array(local))
            moved.append(
                pa.table(
                    {
                        "example_id": gone.column("example_id"),
                        "source": gone.column("source"),
                        "source_row": gone.column("source_row"),
                        "reason": pa.array([reason_of[start + int(i)] for i in local], pa.string()),
                        "raw": pa.nulls(len(local), pa.string()),
                        "model_name": gone.column("model_name"),
                        "model_version": gone.column("model_version"),
                        "scored_at": gone.column("scored_at"),
                    },
                    schema=REJECTS_SCHEMA,
                )
            )
            with filesystem.open_output_stream(path) as handle:
                pq.write_table(whole.filter(pa.array(keep)), handle)
        start += rows
    target, inner = (
        fs.FileSystem.from_uri(str(rejects_dir))
        if "://" in str(rejects_dir)
        else (fs.LocalFileSystem(), str(rejects_dir))
    )
    with target.open_output_stream(f"{inner.rstrip('/')}/part-{run_tag}-duplicates.parquet") as handle:
        pq.write_table(pa.concat_tables(moved), handle)
    return len(reason_of)


def count_output(scores_dir: str | os.PathLike, rejects_dir: str | os.PathLike) -> tuple[int, int, int, dict[str, int]]:
    """(rows scored, rows rejected, anomalies, rejects per reason) of a written run."""
    import pyarrow.dataset as ds

    scores = ds.dataset(str(scores_dir), format="parquet")
    rows_scored = scores.count_rows()
    flags = scores.to_table(columns=["is_anomaly"]).column("is_anomaly")
    anomalies = int(pc.sum(flags.fill_null(False)).as_py() or 0)
    reason = ds.dataset(str(rejects_dir), format="parquet").to_table(columns=["reason"]).column("reason")
    kinds = pc.list_element(pc.split_pattern(reason, ":", max_splits=1), 0)  # "wrong size: ..." -> "wrong size"
    reasons = {str(kind["values"]): int(kind["counts"]) for kind in pc.value_counts(kinds).to_pylist()}
    return rows_scored, len(reason), anomalies, reasons


def top_anomalies(scores_path: str | os.PathLike, n: int = 10) -> pa.Table:
    """The ``n`` rows with the highest ``anomaly_score`` (the most unusual images), highest first."""
    import pyarrow.dataset as ds

    table = ds.dataset(scores_path, format="parquet").to_table()
    return table.sort_by([("anomaly_score", "descending"), ("example_id", "ascending")]).slice(0, n)
