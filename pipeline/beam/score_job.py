"""Batch scoring with Apache Beam: images in, per-example negative ELBO and anomaly flags out.

The pipeline reads as a sentence::

    ListShards -> Distribute -> ReadImages -> Validate -+-> Score -> WriteScores   (scores/)
                                                        +-> WriteRejects          (rejects/)

Shards (small descriptions of slices of the input) are spread over the workers; everything after
``Distribute`` fuses into one stage, so Arrow record batches and numpy arrays flow from the reader to
the Parquet writer inside one worker without being serialised. The model is loaded once per worker
(``DoFn.setup``), pinned to the registry version resolved when the job starts. Rows that cannot be
scored go to the dead-letter output ``rejects`` with a reason.

Run it through ``vae score`` or, Beam-examples style, ``python -m pipeline.beam.score_job --model ...
--input ... --output ... [pipeline options]`` (see :func:`run`).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics

from pipeline.beam.runner import DEFAULT_WORKERS, make_pipeline
from pipeline.outputs.atomic import STAGING, atomic_datasets, atomic_filesystem_datasets, is_remote
from training.data import ImageData
from training.data import reader as arrow_io
from training.data.reader import InputPlan
from training.data.validate import ModelSpec, RejectedRows, ValidRows, validate_batch
from training.registry import DEFAULT_MODEL_URI, PinnedModel

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 1024
METRICS_NAMESPACE = "vae_score"
REJECTS = "rejects"

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
    ]
)
REJECTS_SCHEMA = pa.schema(
    [
        ("example_id", pa.string()),
        ("source", pa.string()),
        ("reason", pa.string()),
        ("raw", pa.string()),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("scored_at", pa.timestamp("us", tz="UTC")),
    ]
)


@dataclass(frozen=True)
class RunStamp:
    """What every output row carries about the run: the model that made it and when."""

    model_name: str
    model_version: str
    scored_at: datetime

    def columns(self, n: int) -> dict[str, pa.Array]:
        return {
            "model_name": pa.repeat(pa.scalar(self.model_name, pa.string()), n),
            "model_version": pa.repeat(pa.scalar(self.model_version, pa.string()), n),
            "scored_at": pa.repeat(pa.scalar(self.scored_at, pa.timestamp("us", tz="UTC")), n),
        }


def rejects_table(rejected: RejectedRows, stamp: RunStamp) -> pa.Table:
    columns = {
        "example_id": rejected.example_ids,
        "source": rejected.sources,
        "reason": rejected.reasons,
        "raw": rejected.raws,
        **stamp.columns(len(rejected)),
    }
    return pa.Table.from_pydict({name: columns[name] for name in REJECTS_SCHEMA.names}, schema=REJECTS_SCHEMA)


def scores_table(rows: ValidRows, scores: dict[str, np.ndarray], calibration, stamp: RunStamp) -> pa.Table:
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
        **stamp.columns(n),
    }
    return pa.Table.from_pydict({name: columns[name] for name in SCORES_SCHEMA.names}, schema=SCORES_SCHEMA)


# --- the DoFns ----------------------------------------------------------------------------------


class ReadShard(beam.DoFn):
    """A shard -> Arrow record batches of at most ``batch_size`` rows; logs progress per shard."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.rows_read = Metrics.counter(METRICS_NAMESPACE, "rows_read")

    def process(self, shard: arrow_io.Shard):
        start = time.perf_counter()
        rows = 0
        for batch in shard.read(self.batch_size):
            rows += batch.num_rows
            yield batch
        self.rows_read.inc(rows)
        seconds = time.perf_counter() - start
        log.info(
            "shard %d/%d done: %s rows in %.1f s (%s rows/s, worker pid %d)",
            shard.index + 1,
            shard.total,
            f"{rows:,}",
            seconds,
            f"{rows / max(seconds, 1e-9):,.0f}",
            os.getpid(),
        )


class ValidateRows(beam.DoFn):
    """Record batch -> scorable rows (main output) and rejected rows (the ``rejects`` output)."""

    def __init__(self, spec: ModelSpec, shape_hint: tuple[int, int, int] | None, stamp: RunStamp) -> None:
        self.spec = spec
        self.shape_hint = shape_hint
        self.stamp = stamp
        self.rows_rejected = Metrics.counter(METRICS_NAMESPACE, "rows_rejected")

    def process(self, batch: pa.RecordBatch):
        valid, rejected = validate_batch(batch, self.spec, self.shape_hint)
        if rejected is not None:
            self.rows_rejected.inc(len(rejected))
            yield beam.pvalue.TaggedOutput(REJECTS, rejects_table(rejected, self.stamp))
        if valid is not None:
            yield valid


class ScoreImages(beam.DoFn):
    """Scores whole batches with :func:`scoring.elbo.score_images`; the model loads once per worker."""

    def __init__(
        self,
        pinned: PinnedModel,
        stamp: RunStamp,
        *,
        iwae_k: int | None = None,
        fpr: float | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        self.pinned = pinned
        self.stamp = stamp
        self.iwae_k = iwae_k
        self.fpr = fpr
        self.batch_size = batch_size
        self.rows_scored = Metrics.counter(METRICS_NAMESPACE, "rows_scored")
        self.anomalies = Metrics.counter(METRICS_NAMESPACE, "anomalies")

    def setup(self) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from training import registry

        start = time.perf_counter()
        self.model = registry.load_pinned(self.pinned.uri, self.pinned.tracking_uri).model
        self.calibration = model_calibration(self.model, self.fpr)
        log.info("worker pid %d loaded %s in %.1f s", os.getpid(), self.pinned.uri, time.perf_counter() - start)

    def process(self, rows: ValidRows):
        from scoring.elbo import score_images

        scores = score_images(
            self.model,
            rows.images,
            rows.labels,
            num_samples=self.model.score_samples,
            seed=self.model.score_seed,
            iwae_k=self.iwae_k,
            batch_size=self.batch_size,
        )
        table = scores_table(rows, scores, self.calibration, self.stamp)
        self.rows_scored.inc(len(rows))
        if self.calibration is not None:
            self.anomalies.inc(int(np.count_nonzero(self.calibration.is_anomaly(scores[self.calibration.score]))))
        yield table


def model_calibration(model, fpr: float | None):
    """The model's stored calibration, re-thresholded at ``fpr`` if given; None if it has none."""
    from scoring.calibration import Calibration

    if not getattr(model, "calibration", None):
        return None
    calibration = Calibration.from_dict(model.calibration)
    return calibration.with_fpr(fpr) if fpr is not None else calibration


def build_pipeline(
    p: beam.Pipeline,
    plan: InputPlan,
    *,
    scorer: ScoreImages,
    validator: ValidateRows,
    scores_prefix: str,
    rejects_prefix: str,
    batch_size: int,
) -> None:
    """Adds the labelled steps to ``p``; writes Parquet files named ``<prefix>-SSSSS-of-NNNNN.parquet``."""
    checked = (
        p
        | "ListShards" >> beam.Create(plan.shards, reshuffle=False)
        | "Distribute" >> beam.Reshuffle()
        | "ReadImages" >> beam.ParDo(ReadShard(batch_size))
        | "Validate" >> beam.ParDo(validator).with_outputs(REJECTS, main="valid")
    )
    (
        checked.valid
        | "Score" >> beam.ParDo(scorer)
        | "WriteScores"
        >> beam.io.WriteToParquetBatched(
            scores_prefix, schema=SCORES_SCHEMA, file_name_suffix=".parquet", codec="snappy"
        )
    )
    (
        checked[REJECTS]
        | "WriteRejects"
        >> beam.io.WriteToParquetBatched(
            rejects_prefix, schema=REJECTS_SCHEMA, file_name_suffix=".parquet", codec="snappy"
        )
    )


# --- the library entry point --------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreSummary:
    model_name: str
    model_version: str
    input: str
    rows_read: int
    rows_scored: int
    rows_rejected: int
    anomalies: int
    threshold: float | None
    seconds: float  # the whole call: model load, planning, the Beam run, the commit
    pipeline_seconds: float  # the Beam run alone
    scores_path: Path | str  # a str for gs://, s3:// ... outputs
    rejects_path: Path | str
    reject_reasons: dict[str, int] = field(default_factory=dict)
    calibrated_score: str = "anomaly_score"  # what the threshold applies to (neg_elbo for older models)

    @property
    def rows_per_second(self) -> float:
        """Rows read per second of the Beam run (worker start-up included)."""
        return self.rows_read / self.pipeline_seconds if self.pipeline_seconds > 0 else 0.0

    def lines(self) -> list[str]:
        threshold = "none stored" if self.threshold is None else f"{self.threshold:.3f} on {self.calibrated_score}"
        share = f" ({self.anomalies / self.rows_scored:.1%} of scored)" if self.rows_scored else ""
        out = [
            f"model:      {self.model_name} version {self.model_version}",
            f"input:      {self.input}",
            f"rows read:  {self.rows_read:,}",
            f"scored:     {self.rows_scored:,}",
            f"rejected:   {self.rows_rejected:,}",
        ]
        reasons = sorted(self.reject_reasons.items(), key=lambda kv: -kv[1])
        out += [f"  {count:,} x {reason}" for reason, count in reasons]
        out += [
            f"anomalies:  {self.anomalies:,}{share} above the threshold {threshold}",
            f"throughput: {self.rows_per_second:,.0f} rows/s ({self.pipeline_seconds:.1f} s pipeline, "
            f"{self.seconds:.1f} s in all)",
            f"scores:     {self.scores_path}",
            f"rejects:    {self.rejects_path}",
        ]
        return out


_PARTITION = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=[A-Za-z0-9_.:-]+$")


def _output_paths(
    output: str | os.PathLike, partition: str | None = None
) -> tuple[Path | str, Path | str, Callable[..., AbstractContextManager[list]]]:
    """(scores path, rejects path, the commit: a context manager that takes both paths, yields a
    temporary folder for each, and commits them together, see :mod:`pipeline.outputs.atomic`).

    With ``partition`` (``KEY=VALUE``, e.g. ``date=2026-11-20``) the run writes and replaces only
    ``scores/KEY=VALUE/`` and ``rejects/KEY=VALUE/``: hive-style partitions of one dataset. The
    temporary folders and the locks live in ``OUTPUT/.staging``, outside both dataset roots."""
    if partition is not None and not _PARTITION.match(partition):
        raise ValueError(f"--partition {partition!r}: expected KEY=VALUE, e.g. date=2026-11-20")
    suffix = f"/{partition}" if partition else ""
    if is_remote(output):
        base = str(output).rstrip("/")
        remote = functools.partial(atomic_filesystem_datasets, staging=f"{base}/{STAGING}")
        return f"{base}/scores{suffix}", f"{base}/rejects{suffix}", remote
    staged = functools.partial(atomic_datasets, staging=Path(output) / STAGING)
    return Path(f"{Path(output) / 'scores'}{suffix}"), Path(f"{Path(output) / 'rejects'}{suffix}"), staged


def _count_output(scores_dir, rejects_dir) -> tuple[int, int, int, dict[str, int]]:
    import pyarrow.dataset as ds

    scores = ds.dataset(str(scores_dir), format="parquet")
    rows_scored = scores.count_rows()
    flags = scores.to_table(columns=["is_anomaly"]).column("is_anomaly")
    anomalies = int(pc.sum(flags.fill_null(False)).as_py() or 0)
    rejects = ds.dataset(str(rejects_dir), format="parquet").to_table(columns=["reason"])
    reasons = Counter(r.split(":", 1)[0] for r in rejects.column("reason").to_pylist())
    return rows_scored, rejects.num_rows, anomalies, dict(reasons)


def score_dataset(
    model_uri: str,
    input: str | ImageData,
    output: str | os.PathLike,
    *,
    iwae_k: int | None = None,
    fpr: float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    shape: tuple[int, int, int] | None = None,
    split_seed: int = 0,
    shard_rows: int = arrow_io.DEFAULT_SHARD_ROWS,
    runner: str = "DirectRunner",
    direct_num_workers: int = DEFAULT_WORKERS,
    direct_running_mode: str = "multi_processing",
    beam_args: Sequence[str] = (),
    work_dir: str | os.PathLike | None = None,
    scored_at: datetime | None = None,
    partition: str | None = None,
    test_pipeline: beam.Pipeline | None = None,
) -> ScoreSummary:
    """Scores ``input`` with the model at ``model_uri`` in a Beam pipeline; writes
    ``output/scores`` and ``output/rejects`` (Parquet datasets), replaced in one commit only on
    success (:mod:`pipeline.outputs.atomic`); while it runs, another run writing the same output (or
    partition) is refused with :class:`pipeline.outputs.atomic.DatasetLockedError`.

    ``input``: see :func:`training.data.reader.plan_input` (``digits:holdout`` is the holdout of the
    split ``vae train`` makes; the other parts depend on ``split_seed``), or an :class:`ImageData`.
    ``partition``: ``KEY=VALUE`` to write (and replace) only that hive partition of the outputs.
    ``test_pipeline``: a pipeline to build into and run instead of :func:`make_pipeline`'s.
    """
    from training import registry

    if iwae_k is not None and iwae_k < 1:
        raise ValueError(f"--iwae-k must be at least 1, got {iwae_k}")
    if fpr is not None and not 0.0 < fpr < 1.0:
        raise ValueError(f"--fpr must be in (0, 1), got {fpr}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    started = time.perf_counter()
    pinned = registry.pin(model_uri, work_dir)
    model, name, version = registry.load_pinned(pinned.uri, pinned.tracking_uri).model, pinned.name, pinned.version
    calibration = model_calibration(model, fpr)
    if calibration is None:
        log.warning("%s has no stored calibration: threshold, p_value and is_anomaly will be null", model_uri)
    spec = ModelSpec.of(model)
    plan = arrow_io.plan_input(input, shard_rows=shard_rows, split_seed=split_seed)
    stamp = RunStamp(name, str(version), scored_at or datetime.now(UTC).replace(microsecond=0))
    scores_path, rejects_path, commit = _output_paths(output, partition)
    # File names carry the run: a read that overlaps the commit may find files it listed gone (and
    # should be retried), but never combines files of two runs (see pipeline.outputs.atomic).
    run_tag = uuid.uuid4().hex[:8]
    log.info(
        "scoring %s with %s version %s (%s, image %s): %d shard(s) on %s",
        plan.description,
        name,
        version,
        "conditional" if spec.num_classes else "plain",
        spec.shape_text,
        len(plan.shards),
        runner if runner != "DirectRunner" else f"DirectRunner ({direct_running_mode}, {direct_num_workers} workers)",
    )
    scorer = ScoreImages(pinned, stamp, iwae_k=iwae_k, fpr=fpr, batch_size=batch_size)
    validator = ValidateRows(spec, shape, stamp)
    # Locks scores and rejects (or those partitions) at once: a second run writing them is refused here.
    with commit(scores_path, rejects_path) as (scores_tmp, rejects_tmp):
        pipeline = test_pipeline or make_pipeline(
            runner, direct_num_workers=direct_num_workers, direct_running_mode=direct_running_mode, beam_args=beam_args
        )
        pipeline_started = time.perf_counter()
        with pipeline as p:
            build_pipeline(
                p,
                plan,
                scorer=scorer,
                validator=validator,
                scores_prefix=f"{scores_tmp}/part-{run_tag}",
                rejects_prefix=f"{rejects_tmp}/part-{run_tag}",
                batch_size=batch_size,
            )
        pipeline_seconds = time.perf_counter() - pipeline_started
        rows_scored, rows_rejected, anomalies, reasons = _count_output(scores_tmp, rejects_tmp)
        rows_read = rows_scored + rows_rejected
        if rows_read != plan.total_rows:
            raise RuntimeError(
                f"{plan.description}: {plan.total_rows} rows in the input but {rows_read} in the output "
                f"({rows_scored} scored + {rows_rejected} rejected); nothing was written"
            )
    summary = ScoreSummary(
        model_name=name,
        model_version=str(version),
        input=plan.description,
        rows_read=rows_read,
        rows_scored=rows_scored,
        rows_rejected=rows_rejected,
        anomalies=anomalies,
        threshold=None if calibration is None else calibration.threshold,
        calibrated_score="anomaly_score" if calibration is None else calibration.score,
        seconds=time.perf_counter() - started,
        pipeline_seconds=pipeline_seconds,
        scores_path=scores_path,
        rejects_path=rejects_path,
        reject_reasons=reasons,
    )
    log.info("done: %d scored, %d rejected, %d anomalies", rows_scored, rows_rejected, anomalies)
    return summary


def top_anomalies(scores_path: str | os.PathLike, n: int = 10) -> pa.Table:
    """The ``n`` rows with the highest ``anomaly_score`` (the most unusual images), highest first."""
    import pyarrow.dataset as ds

    table = ds.dataset(scores_path, format="parquet").to_table()
    return table.sort_by([("anomaly_score", "descending"), ("example_id", "ascending")]).slice(0, n)


def run(argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> ScoreSummary:
    """Beam-examples style entry point: ``python -m pipeline.beam.score_job --model ... --input ...
    --output ... [--runner DataflowRunner --project ... any Beam pipeline option]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL_URI)
    parser.add_argument("--input", default="digits")
    parser.add_argument("--output", required=True)
    parser.add_argument("--iwae-k", "--iwae_k", type=int, default=None)
    parser.add_argument("--fpr", type=float, default=None)
    parser.add_argument("--batch-size", "--batch_size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--shape", default=None, help="HxWxC")
    parser.add_argument("--split-seed", "--split_seed", type=int, default=0)
    parser.add_argument("--shard-rows", "--shard_rows", type=int, default=arrow_io.DEFAULT_SHARD_ROWS)
    parser.add_argument("--runner", default="DirectRunner")
    parser.add_argument("--direct-num-workers", "--direct_num_workers", type=int, default=DEFAULT_WORKERS)
    parser.add_argument("--direct-running-mode", "--direct_running_mode", default="multi_processing")
    known, beam_args = parser.parse_known_args(argv)
    shape = tuple(int(v) for v in known.shape.lower().split("x")) if known.shape else None
    return score_dataset(
        known.model,
        known.input,
        known.output,
        iwae_k=known.iwae_k,
        fpr=known.fpr,
        batch_size=known.batch_size,
        shape=shape,  # type: ignore[arg-type]
        split_seed=known.split_seed,
        shard_rows=known.shard_rows,
        runner=known.runner,
        direct_num_workers=known.direct_num_workers,
        direct_running_mode=known.direct_running_mode,
        beam_args=beam_args,
        test_pipeline=test_pipeline,
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run()
