"""The scoring job's steps as plain objects over one shard or one record batch.

Both ways the job runs call these and nothing else: the two-sink pipeline wraps each in a thin DoFn
(:mod:`pipeline.beam.score_job`), and the one-branch pipeline of runners that compute one sink runs
them in a row inside one DoFn per shard (:mod:`pipeline.beam.score_shards`). The job's counters
(rows read, rejected, scored; anomalies) are Beam metrics in :data:`METRICS_NAMESPACE`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics

from pipeline.beam.defaults import MIN_BATCH_ROWS
from pipeline.outputs.score_tables import rejects_table, scores_table
from pipeline.steps import Step
from training.data import reader
from training.data.validate import ModelSpec, ValidRows, validate_batch
from training.registry import ModelRef

log = logging.getLogger("pipeline.beam.score_job")  # the progress lines keep the job's logger name

METRICS_NAMESPACE = "vae_score"


class Counters:
    """The job's Beam counters (each step increments its own)."""

    def __init__(self) -> None:
        self.rows_read = Metrics.counter(METRICS_NAMESPACE, "rows_read")
        self.rows_rejected = Metrics.counter(METRICS_NAMESPACE, "rows_rejected")
        self.rows_scored = Metrics.counter(METRICS_NAMESPACE, "rows_scored")
        self.anomalies = Metrics.counter(METRICS_NAMESPACE, "anomalies")


def read_batches(shard: reader.Shard, batch_size: int, counters: Counters) -> Iterator[pa.RecordBatch]:
    """A shard's Arrow record batches of at most ``batch_size`` rows; logs ``shard k/N done`` at its end."""
    start = time.perf_counter()
    rows = 0
    for batch in shard.read(batch_size):
        rows += batch.num_rows
        yield batch
    counters.rows_read.inc(rows)
    seconds = time.perf_counter() - start
    log.info(
        "shard %d/%d done: %s rows in %.1f s (%s rows/s, worker pid %d)",
        shard.index + 1,
        shard.total,
        f"{rows:,}",
        seconds,
        f"{rows / max(seconds, 1e-9):,.0f}",
        os.getpid(),
        extra=Step(shard.index + 1, shard.total, f"shard {shard.index + 1}").extra(),
    )


@dataclass
class Validator:
    """A record batch -> (scorable rows or None, the rejects table or None)."""

    spec: ModelSpec
    shape_hint: tuple[int, int, int] | None
    model: ModelRef
    scored_at: datetime
    pixel_scale: float | None = None  # replaces the model's scale for numeric pixels (vae score --pixel-scale)

    def __call__(self, batch: pa.RecordBatch, counters: Counters) -> tuple[ValidRows | None, pa.Table | None]:
        valid, rejected = validate_batch(batch, self.spec, self.shape_hint, self.pixel_scale)
        if rejected is None:
            return valid, None
        counters.rows_rejected.inc(len(rejected))
        return valid, rejects_table(rejected, self.model, self.scored_at)


def model_calibration(model, fpr: float | None):
    """The model's stored calibration, re-thresholded at ``fpr`` if given; None if it has none."""
    from scoring.calibration import Calibration

    if not getattr(model, "calibration", None):
        return None
    calibration = Calibration.from_dict(model.calibration)
    return calibration.with_fpr(fpr) if fpr is not None else calibration


@dataclass
class Scorer:
    """Scorable rows -> the scores table, with :func:`scoring.detector.score_images`; :meth:`load`
    first, once per worker (the model itself is loaded once per process: ``ModelRef.load``)."""

    model_ref: ModelRef
    scored_at: datetime
    iwae_k: int | None = None
    fpr: float | None = None
    batch_size: int = MIN_BATCH_ROWS
    pixel_scores: bool = False
    model: object = field(default=None, repr=False)
    calibration: object = field(default=None, repr=False)

    def load(self) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.model = self.model_ref.load()
        self.calibration = model_calibration(self.model, self.fpr)

    def __call__(self, rows: ValidRows, counters: Counters) -> pa.Table:
        from scoring.detector import score_images

        scores = score_images(
            self.model,
            rows.images,
            rows.labels,
            num_samples=self.model.score_samples,
            seed=self.model.score_seed,
            iwae_k=self.iwae_k,
            batch_size=self.batch_size,
            pixel_scores=self.pixel_scores,
        )
        table = scores_table(rows, scores, self.calibration, self.model_ref, self.scored_at)
        counters.rows_scored.inc(len(rows))
        if self.calibration is not None:
            counters.anomalies.inc(int(np.count_nonzero(self.calibration.is_anomaly(scores[self.calibration.score]))))
        return table
