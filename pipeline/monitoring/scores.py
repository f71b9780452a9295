"""Reading a committed run's scores back: the columns monitoring needs, from one consistent version."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_RUN_TAG = re.compile(r"^part-([0-9a-f]{8})-")


@dataclass(frozen=True)
class RunScores:
    path: Path | str
    example_ids: np.ndarray | None  # only when asked for
    scores: np.ndarray | None  # the calibrated score column (NaN for a null); None if it is missing
    flags: np.ndarray  # is_anomaly as 1.0 / 0.0 / NaN (null: no threshold)
    scored_at: datetime | None
    run_ids: tuple[str, ...]  # run tags in the file names
    model_name: str | None
    model_version: str | None

    def __len__(self) -> int:
        return len(self.flags)

    @property
    def anomalies(self) -> int:
        return int(np.nansum(self.flags))


def scores_path(output: str | os.PathLike, partition: str | None) -> Path | str:
    """``OUTPUT/scores`` or ``OUTPUT/scores/KEY=VALUE``, as ``vae score`` writes it."""
    from pipeline.outputs.score_tables import output_paths

    return output_paths(output, partition)[0]


def read_run_scores(
    output: str | os.PathLike, partition: str | None, score_column: str, *, with_ids: bool = False
) -> RunScores:
    """The committed scores of ``OUTPUT`` (its ``partition``): read from one snapshot, so a commit
    running meanwhile cannot mix two versions in the read."""
    import pyarrow.dataset as ds

    from pipeline.outputs.atomic import snapshot

    path = scores_path(output, partition)
    where = path
    if isinstance(path, Path):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no scores to monitor (has the run committed?)")
        where = snapshot(path)
    try:
        dataset = ds.dataset(str(where), format="parquet")
        names = set(dataset.schema.names)
        if "is_anomaly" not in names or (with_ids and "example_id" not in names):
            raise ValueError(f"{path}: not a scores dataset (no is_anomaly or example_id column)")
        # the per-row columns the checks need; the run's model and time from one row and a running minimum
        wanted = [c for c in (score_column, "is_anomaly") if c in names] + (["example_id"] if with_ids else [])
        table = dataset.to_table(columns=wanted)
        first = dataset.head(1, columns=[c for c in ("model_name", "model_version") if c in names])
        scored_at = _earliest(dataset, "scored_at") if "scored_at" in names else None
        files = dataset.files
    except (OSError, pa.ArrowInvalid) as exc:
        raise ValueError(f"{path}: not a readable scores dataset ({exc})") from exc
    flags = table.column("is_anomaly").cast(pa.float64()).to_numpy(zero_copy_only=False)
    scores = None
    if score_column in names:
        scores = table.column(score_column).cast(pa.float64()).to_numpy(zero_copy_only=False)
    tags = sorted({m[1] for f in files if (m := _RUN_TAG.match(os.path.basename(f)))})
    return RunScores(
        path=path,
        example_ids=table.column("example_id").to_numpy(zero_copy_only=False) if with_ids else None,
        scores=scores,
        flags=flags,
        scored_at=scored_at,
        run_ids=tuple(tags),
        model_name=_first(first, "model_name"),
        model_version=_first(first, "model_version"),
    )


def _first(table: pa.Table, column: str):
    if column not in table.column_names or table.num_rows == 0:
        return None
    return table.column(column)[0].as_py()


def _earliest(dataset, column: str):
    """The smallest value of ``column``, a record batch at a time."""
    smallest = None
    for batch in dataset.to_batches(columns=[column]):
        value = pc.min(batch.column(0)).as_py()
        if value is not None and (smallest is None or value < smallest):
            smallest = value
    return smallest
