"""Batch scoring with Apache Beam: images in, per-example negative ELBO and anomaly flags out.

The pipeline reads as a sentence::

    ListShards -> Distribute -> ReadImages -> Validate -+-> Score -> WriteScores   (scores/)
                                                        +-> WriteRejects          (rejects/)

Shards (small descriptions of slices of the input) are spread over the workers; everything after
``Distribute`` fuses into one stage, so Arrow record batches and numpy arrays flow from the reader to
the Parquet writer inside one worker without being serialised. The model is loaded once per worker
(``DoFn.setup``), pinned to the registry version resolved when the job starts. Rows that cannot be
scored go to the dead-letter output ``rejects`` with a reason. The datasets' schemas and rows live in
:mod:`pipeline.outputs.score_tables`; the job's settings in one :class:`~pipeline.beam.options.ScoreOptions`.

Run it through ``vae score`` or, Beam-examples style, ``python -m pipeline.beam.score_job --model ...
--input ... --output ... [pipeline options]`` (see :func:`run`).
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
from apache_beam.options.pipeline_options import DirectOptions

from pipeline.beam.defaults import DEFAULT_INPUT, ONE_BRANCH_RUNNERS, batch_rows
from pipeline.beam.guards import Guards, check_pixel_range, seal_scoring_run
from pipeline.beam.options import ScoreOptions
from pipeline.beam.runner import make_pipeline
from pipeline.beam.score_steps import (
    Counters,
    Scorer,
    Validator,
    model_calibration,
    read_batches,
)
from pipeline.outputs import result_json
from pipeline.outputs.atomic import output_folder
from pipeline.outputs.manifest import input_fingerprint
from pipeline.outputs.score_tables import (
    REJECTS_SCHEMA,
    SCORES_SCHEMA,
    count_output,
    output_paths,
    reject_duplicates,
)
from training.data import ImageData, reader
from training.data.reader import InputPlan
from training.data.validate import ModelSpec, ValidRows

log = logging.getLogger(__name__)

REJECTS = "rejects"


# --- the DoFns: thin shells over pipeline.beam.score_steps --------------------------------------


class ReadShard(beam.DoFn):
    """A shard -> Arrow record batches of at most ``batch_size`` rows; logs progress per shard."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.counters = Counters()

    def process(self, shard: reader.Shard):
        yield from read_batches(shard, self.batch_size, self.counters)


class ValidateRows(beam.DoFn):
    """Record batch -> scorable rows (main output) and rejected rows (the ``rejects`` output)."""

    def __init__(self, validator: Validator) -> None:
        self.validator = validator
        self.counters = Counters()

    def process(self, batch: pa.RecordBatch):
        valid, rejects = self.validator(batch, self.counters)
        if rejects is not None:
            yield beam.pvalue.TaggedOutput(REJECTS, rejects)
        if valid is not None:
            yield valid


class ScoreImages(beam.DoFn):
    """Scores whole batches (:class:`~pipeline.beam.score_steps.Scorer`); the model loads once per worker."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer
        self.counters = Counters()

    def setup(self) -> None:
        self.scorer.load()

    def process(self, rows: ValidRows):
        yield self.scorer(rows, self.counters)


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
    """Adds the labelled steps to ``p``; writes Parquet files named ``<prefix>-SSSSS-of-NNNNN.parquet``."""
    checked = (
        p
        | "ListShards" >> beam.Create(plan.shards, reshuffle=False)
        | "Distribute" >> beam.Reshuffle()
        | "ReadImages" >> beam.ParDo(ReadShard(batch_size))
        | "Validate" >> beam.ParDo(ValidateRows(validator)).with_outputs(REJECTS, main="valid")
    )
    (
        checked.valid
        | "Score" >> beam.ParDo(ScoreImages(scorer))
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
    run_id: str = ""  # the run tag in the file names: part-RUN_ID-...
    output: Path | str | None = None  # the output folder
    partition: str | None = None
    input_spec: str = ""  # the input as given (--input, or the in-memory data's source)
    input_fingerprint: str | None = None  # pipeline.outputs.manifest.input_fingerprint
    target_fpr: float | None = None  # the false positive rate the threshold is set for
    guards: Guards | None = None
    status: str = "ok"  # "failed": past a guard, nothing committed (GuardFailed carries this summary)
    reason: str | None = None  # why it failed
    manifest_path: Path | str | None = None  # scores' _manifest.json (None if nothing was committed)

    @property
    def reject_rate(self) -> float | None:
        return self.rows_rejected / self.rows_read if self.rows_read else None

    @property
    def anomaly_rate(self) -> float | None:
        return self.anomalies / self.rows_scored if self.rows_scored else None

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
        ]
        if self.guards is not None:
            verdict = "passed" if self.status == "ok" else f"FAILED: {self.reason}"
            out.append(f"guards:     {verdict} ({self.guards.describe()})")
        if self.status != "ok":
            return out + [f"scores:     not replaced: {self.scores_path}", f"rejects:    kept in {self.rejects_path}"]
        out += [f"scores:     {self.scores_path}", f"rejects:    {self.rejects_path}"]
        return out + ([f"manifest:   {self.manifest_path} (run {self.run_id})"] if self.manifest_path else [])


def score_dataset(
    options: ScoreOptions,
    *,
    input_data: ImageData | None = None,
    scored_at: datetime | None = None,
    test_pipeline: beam.Pipeline | None = None,
    started: float | None = None,
) -> ScoreSummary:
    """Scores ``options.input`` with ``options.model`` in a Beam pipeline; writes ``OUTPUT/scores`` and
    ``OUTPUT/rejects`` (Parquet datasets, a ``_manifest.json`` in each), replaced in one commit only
    on success (:mod:`pipeline.outputs.atomic`); while it runs, another run writing the same output (or
    partition) is refused with :class:`pipeline.outputs.atomic.DatasetLockedError`. A run past its
    guards (``options.max_reject_rate``, ``options.min_rows``) raises
    :class:`~pipeline.beam.guards.GuardFailed`, commits nothing and keeps its rejects in
    ``OUTPUT/_failed/RUN_ID/rejects/``. ``options.result_json``: also write the outcome there
    (:mod:`pipeline.outputs.result_json`), failed or not.

    ``options.input``: see :func:`training.data.reader.plan_input` (``digits:holdout`` is the holdout of
    the split ``vae train`` makes; the other parts depend on ``split_seed``); ``input_data``: images in
    memory to score instead. ``options.partition``: ``KEY=VALUE`` to write (and replace) only that hive
    partition of the outputs. ``scored_at``: the run's timestamp (default: now). ``test_pipeline``: a
    pipeline to build into and run instead of :func:`make_pipeline`'s. ``started``: the
    ``time.perf_counter()`` the summary's ``seconds`` count from (default: this call's start; the
    ``vae`` command passes its own start, imports included).
    """
    spec = input_data.source if input_data is not None else options.input or DEFAULT_INPUT
    output = output_folder(options.output) if options.output else None
    known = result_json.result("score", input=spec, output=output, partition=options.partition)
    with result_json.recorded(options.result_json, result_json.score_result, known) as record:
        return record(_score_dataset(options, input_data, scored_at, test_pipeline, started))


def _score_dataset(
    options: ScoreOptions,
    input_data: ImageData | None,
    scored_at: datetime | None,
    test_pipeline: beam.Pipeline | None,
    started: float | None = None,
) -> ScoreSummary:
    from training import registry

    options.check()
    started = time.perf_counter() if started is None else started
    model = registry.pin(options.model, options.work_dir)
    loaded = model.load()
    calibration = model_calibration(loaded, options.fpr)
    if calibration is None:
        log.warning("%s has no stored calibration: threshold, p_value and is_anomaly will be null", options.model)
    spec = ModelSpec.of(loaded)
    batch_size = batch_rows(options.batch_size, spec.image_shape)
    source = input_data if input_data is not None else options.input or DEFAULT_INPUT
    plan = reader.plan_input(source, shard_rows=options.shard_rows, split_seed=options.split_seed)
    _check_pixel_range(options, plan, spec, model, loaded, batch_size)
    fingerprint = input_fingerprint(plan)
    scored_at = scored_at or datetime.now(UTC).replace(microsecond=0)
    scores_path, rejects_path, commit = output_paths(options.output, options.partition)
    # File names carry the run: a read that overlaps the commit may find files it listed gone (and
    # should be retried), but never combines files of two runs (see pipeline.outputs.atomic).
    run_tag = uuid.uuid4().hex[:8]
    _log_start(options, plan, model, spec)
    scorer = Scorer(
        model,
        scored_at,
        iwae_k=options.iwae_k,
        fpr=options.fpr,
        batch_size=batch_size,
        pixel_scores=options.pixel_scores,
    )
    validator = Validator(spec, options.shape, model, scored_at, options.pixel_scale)
    # Locks scores and rejects (or those partitions) at once: a second run writing them is refused here.
    with commit(scores_path, rejects_path) as (scores_tmp, rejects_tmp):
        pipeline = test_pipeline or make_pipeline(options)
        pipeline_started = time.perf_counter()
        _run_pipeline(pipeline, options.runner, plan, scorer, validator, scores_tmp, rejects_tmp, run_tag, batch_size)
        pipeline_seconds = time.perf_counter() - pipeline_started
        _remove_unfinished(options.runner, scores_tmp, rejects_tmp)
        rows_scored, rows_rejected, anomalies, reasons = _counted(plan, scores_tmp, rejects_tmp, run_tag)
        summary = ScoreSummary(
            model_name=model.name,
            model_version=model.version,
            input=plan.description,
            rows_read=rows_scored + rows_rejected,
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
            run_id=run_tag,
            output=output_folder(options.output),
            partition=options.partition,
            input_spec=source if isinstance(source, str) else source.source,
            input_fingerprint=fingerprint,
            target_fpr=None if calibration is None else calibration.target_fpr,
            guards=Guards(options.max_reject_rate, options.min_rows),
        )
        # past a guard: keeps the rejects, raises GuardFailed (nothing committed); else the manifests
        summary = seal_scoring_run(summary, scores_tmp, rejects_tmp, model)
    summary = replace(summary, seconds=time.perf_counter() - started)
    log.info("done: %d scored, %d rejected, %d anomalies", rows_scored, rows_rejected, anomalies)
    record_monitoring(summary, options, model)
    return summary


def _check_pixel_range(options: ScoreOptions, plan: InputPlan, spec: ModelSpec, model, loaded, batch_size: int) -> None:
    check_pixel_range(
        plan,
        spec,
        getattr(loaded, "pixel_brightest", None),
        options.min_brightness,
        shape_hint=options.shape,
        pixel_scale=options.pixel_scale,
        batch_size=batch_size,
        model_name=f"{model.name} version {model.version}",
    )


def _remove_unfinished(runner: str, scores_tmp: str, rejects_tmp: str) -> None:
    """Deletes what shards of a one-branch runner that were retried elsewhere left behind."""
    if runner in ONE_BRANCH_RUNNERS:
        from pipeline.beam.score_shards import remove_unfinished

        if removed := remove_unfinished(scores_tmp, rejects_tmp):
            log.info("removed %d unfinished file(s) of retried shards", removed)


def _counted(plan: InputPlan, scores_tmp: str, rejects_tmp: str, run_tag: str) -> tuple[int, int, int, dict]:
    """(rows scored, rows rejected, anomalies, rejects by reason) of the written run, after moving a
    repeated example_id's later rows to the rejects; raises if a row of the input went missing."""
    reject_duplicates(scores_tmp, rejects_tmp, run_tag)  # the contract's rule for a repeated example_id
    rows_scored, rows_rejected, anomalies, reasons = count_output(scores_tmp, rejects_tmp)
    rows_read = rows_scored + rows_rejected
    if rows_read != plan.total_rows:
        raise RuntimeError(
            f"{plan.description}: {plan.total_rows} rows in the input but {rows_read} in the output "
            f"({rows_scored} scored + {rows_rejected} rejected); nothing was written"
        )
    return rows_scored, rows_rejected, anomalies, reasons


def _log_start(options: ScoreOptions, plan: InputPlan, model, spec: ModelSpec) -> None:
    direct = options.view_as(DirectOptions)
    log.info(
        "scoring %s with %s version %s (%s, image %s): %d shard(s) on %s",
        plan.description,
        model.name,
        model.version,
        "conditional" if spec.num_classes else "plain",
        spec.shape_text,
        len(plan.shards),
        options.runner
        if options.runner != "DirectRunner"
        else f"DirectRunner ({direct.direct_running_mode}, {direct.direct_num_workers} workers)",
    )


def _run_pipeline(
    pipeline: beam.Pipeline,
    runner: str,
    plan: InputPlan,
    scorer: Scorer,
    validator: Validator,
    scores_tmp: str,
    rejects_tmp: str,
    run_tag: str,
    batch_size: int,
) -> None:
    """Builds the scoring graph into ``pipeline`` and runs it, writing into the scores' and the
    rejects' temporary folders, files named after the run's tag."""
    build = build_pipeline
    if runner in ONE_BRANCH_RUNNERS:  # they compute one sink: pipeline.beam.score_shards
        from pipeline.beam.score_shards import build_pipeline as build
    with pipeline as p:
        build(
            p,
            plan,
            scorer=scorer,
            validator=validator,
            scores_prefix=f"{scores_tmp}/part-{run_tag}",
            rejects_prefix=f"{rejects_tmp}/part-{run_tag}",
            batch_size=batch_size,
        )


def record_monitoring(summary: ScoreSummary, options: ScoreOptions, model) -> None:
    """Adds the committed run's row to ``OUTPUT/monitoring/`` (:mod:`pipeline.monitoring`). The data
    is committed by then, so no failure here may fail the run (its result would say "failed" after
    the scores were replaced): it is a warning, and ``vae monitor --check --run-id RUN`` (what the
    daily DAG runs) fails on the missing row instead of judging an earlier run's."""
    from pipeline.monitoring import record_scoring_run

    try:
        record_scoring_run(
            summary,
            output=options.output,
            partition=options.partition,
            target_fpr=summary.target_fpr,
            model=model,
            work_dir=options.work_dir,
        )
    except Exception as exc:  # noqa: BLE001 - the scores are committed; `vae monitor --check --run-id` then fails loudly
        log.warning("monitoring: could not record run %s: %s", summary.run_id, exc)


def run(argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> ScoreSummary:
    """Beam-examples style entry point: ``python -m pipeline.beam.score_job --model ... --input ...
    --output ... [--runner DataflowRunner --project ... any Beam pipeline option]`` (flags:
    :class:`~pipeline.beam.options.ScoreOptions`)."""
    options = ScoreOptions.from_argv(sys.argv[1:] if argv is None else argv)
    return score_dataset(options, test_pipeline=test_pipeline)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for line in run().lines():
        print(line)
