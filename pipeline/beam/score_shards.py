"""The scoring job as one branch, for runners that compute one sink only (Beam 2.77's DaskRunner)::

    ListShards -> Distribute -> ScoreShard (read, validate, score; write scores/ and rejects/)

Each shard's rows go through the same steps as :func:`pipeline.beam.score_job.build_pipeline`
(:mod:`pipeline.beam.score_steps`: ``read_batches``, ``Validator``, ``Scorer``), in one worker, a
record batch at a time, and are streamed into two Parquet files named after the shard,
``PREFIX-SSSSS-of-NNNNN.parquet`` in ``scores/`` and in ``rejects/``: the same rows as the two-sink
pipeline, only cut into files per shard rather than per bundle. A shard with no rows for a dataset
writes no file there, except shard 0, which always writes both (so each dataset has its schema; an
input of no rows gets both files empty as the pipeline is built).

A file is written under a hidden temporary name and renamed into place when complete (local
folders; an object store shows an object only once it is closed): a retried shard overwrites its own
files, and a reader never sees half a file. The element emitted per shard is small (its counts), as
the runner collects a partition's outputs in a list.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import apache_beam as beam
import pyarrow as pa

from pipeline.beam.defaults import ONE_BRANCH_RUNNERS
from pipeline.beam.score_steps import Counters, Scorer, Validator, read_batches
from pipeline.outputs.files import is_temporary, temporary_beside
from pipeline.outputs.score_tables import REJECTS_SCHEMA, SCORES_SCHEMA
from training.data import reader
from training.data.reader import InputPlan
from training.paths import is_remote

__all__ = ["ONE_BRANCH_RUNNERS", "ScoreShard", "build_pipeline"]


class _ParquetFile:
    """A Parquet file written a table at a time, created on the first table (or on close if ``always``)."""

    def __init__(self, path: str, schema: pa.Schema, always: bool) -> None:
        self.path = path
        self.schema = schema
        self.always = always
        self.rows = 0
        self._writer = None
        self._sink = None
        self._tmp: str | None = None

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            self._open()
        self._writer.write_table(table)
        self.rows += table.num_rows

    def _open(self) -> None:
        import pyarrow.parquet as pq
        from pyarrow import fs

        if is_remote(self.path):
            filesystem, inner = fs.FileSystem.from_uri(self.path)
            self._sink = filesystem.open_output_stream(inner)
            self._writer = pq.ParquetWriter(self._sink, self.schema, compression="snappy")
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._tmp = str(temporary_beside(self.path))
        self._writer = pq.ParquetWriter(self._tmp, self.schema, compression="snappy")

    def close(self) -> None:
        if self._writer is None and self.always:
            self._open()
        if self._writer is None:
            return
        self._writer.close()
        if self._sink is not None:
            self._sink.close()
        if self._tmp is not None:
            os.replace(self._tmp, self.path)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._tmp is not None and os.path.exists(self._tmp):
            os.remove(self._tmp)


def remove_unfinished(*folders: str | os.PathLike) -> int:
    """Deletes the temporary files of shard writers that never finished (a worker killed mid-shard,
    whose shard was then retried elsewhere) from local staging folders, before the commit; returns
    how many."""
    removed = 0
    for folder in folders:
        if is_remote(str(folder)) or not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            if is_temporary(name):
                os.remove(os.path.join(folder, name))
                removed += 1
    return removed


def _shard_file(prefix: str, shard: reader.Shard | None) -> str:
    """``PREFIX-SSSSS-of-NNNNN.parquet``; for no shard (an input of no rows), as if it had one."""
    index, total = (0, 1) if shard is None else (shard.index, shard.total)
    return f"{prefix}-{index:05d}-of-{total:05d}.parquet"


class ScoreShard(beam.DoFn):
    """A shard -> its rows scored into ``scores/`` and rejected into ``rejects/``; emits
    ``(shard index, rows scored, rows rejected)``."""

    def __init__(
        self, batch_size: int, validator: Validator, scorer: Scorer, scores_prefix: str, rejects_prefix: str
    ) -> None:
        self.batch_size = batch_size
        self.validator = validator
        self.scorer = scorer
        self.scores_prefix = scores_prefix
        self.rejects_prefix = rejects_prefix
        self.counters = Counters()

    def setup(self) -> None:
        self.scorer.load()  # once per partition on Dask: the model itself is loaded once per process

    def process(self, shard: reader.Shard) -> Iterator[tuple[int, int, int]]:
        scores = _ParquetFile(_shard_file(self.scores_prefix, shard), SCORES_SCHEMA, always=shard.index == 0)
        rejects = _ParquetFile(_shard_file(self.rejects_prefix, shard), REJECTS_SCHEMA, always=shard.index == 0)
        try:
            for batch in read_batches(shard, self.batch_size, self.counters):
                valid, rejected = self.validator(batch, self.counters)
                if rejected is not None:
                    rejects.write(rejected)
                if valid is not None:
                    scores.write(self.scorer(valid, self.counters))
            scores.close()
            rejects.close()
        except BaseException:
            scores.abort()
            rejects.abort()
            raise
        yield shard.index, scores.rows, rejects.rows


def build_pipeline(
    p: beam.Pipeline,
    plan: InputPlan,
    *,
    scorer: Scorer,
    validator: Validator,
    scores_prefix: str,
    rejects_prefix: str,
    batch_size: int,
) -> None:
    """:func:`pipeline.beam.score_job.build_pipeline`'s steps as one branch (same arguments)."""
    if not plan.shards:  # an input of no rows: no shard 0 to write the datasets' (empty) files
        for prefix, schema in ((scores_prefix, SCORES_SCHEMA), (rejects_prefix, REJECTS_SCHEMA)):
            _ParquetFile(_shard_file(prefix, None), schema, always=True).close()
    (
        p
        | "ListShards" >> beam.Create(plan.shards, reshuffle=False)
        | "Distribute" >> beam.Reshuffle()
        | "ScoreShard" >> beam.ParDo(ScoreShard(batch_size, validator, scorer, scores_prefix, rejects_prefix))
    )
