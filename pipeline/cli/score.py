"""``vae score``: a thin shell over :func:`pipeline.beam.score_job.score_dataset`."""

from __future__ import annotations

import click

from pipeline.beam.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MODEL_URI,
    DEFAULT_SHARD_ROWS,
    DEFAULT_SPLIT_SEED,
)
from pipeline.beam.guards import DEFAULT_MAX_REJECT_RATE, DEFAULT_MIN_BRIGHTNESS, DEFAULT_MIN_ROWS
from pipeline.cli import COMMAND_STARTED
from pipeline.cli.progress import shard_progress
from pipeline.cli.support import (
    beam_args_help,
    beam_runner_options,
    friendly_errors,
    job_options,
    parse_shape,
    result_json_option,
)


@click.command(
    "score",
    epilog=beam_args_help(
        "vae score ... --runner DataflowRunner -- --project P --region R --temp_location gs://B/tmp "
        "--setup_file ./setup.py"
    ),
)
@click.option(
    "--model",
    default=DEFAULT_MODEL_URI,
    show_default=True,
    help="models:/NAME@ALIAS, models:/NAME/VERSION, or a .keras file. An alias is resolved once, at the start.",
)
@click.option(
    "--input",
    callback=lambda ctx, param, value: _required_input(ctx, value),
    help="Required (the built-in demo is `vae run`). A .parquet file or folder, an .npz file, a folder of "
    "PNG/JPEG files, digits or mnist5k (built in), or "
    "NAME:train|validation|calibration|holdout (that part of the split vae train makes with --split-seed; "
    "the holdout, alias test, is the same for every seed).",
)
@click.option(
    "--output",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for the scores/ and rejects/ Parquet datasets; each is replaced only when the run succeeds.",
)
@click.option(
    "--partition",
    default=None,
    metavar="KEY=VALUE",
    help="Write only this hive partition, e.g. date=2026-11-20: OUTPUT/scores/date=2026-11-20/ and the same "
    "under rejects/, replacing that partition alone (what the daily Airflow DAG uses).",
)
@click.option(
    "--iwae-k",
    type=click.IntRange(1),
    default=None,
    help="Also compute the importance-weighted bound iwae_nll with K samples (slower; null when not given).",
)
@click.option(
    "--pixel-scores",
    is_flag=True,
    default=False,
    help="Also write pixel_nll: each pixel's share of reconstruction_nll, a list in row-major (H, W, C) "
    "order (a heat map of where the image is unusual; null when not given).",
)
@click.option(
    "--fpr",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    help="Re-threshold at this false positive rate on the model's held-out scores (default: the stored threshold).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    default=DEFAULT_BATCH_SIZE,
    help="Rows per Arrow record batch and per model call [as many as hold 524,288 pixels, between 1,024 and "
    "8,192: 8,192 rows of 8x8 images, 1,024 of 28x28; larger batches score faster and take more memory].",
)
@click.option(
    "--shape",
    callback=parse_shape,
    default=None,
    help="Image shape HxWxC of a Parquet 'pixels' column without height/width columns (default: the model's).",
)
@click.option(
    "--split-seed",
    type=int,
    default=DEFAULT_SPLIT_SEED,
    show_default=True,
    help="Seed of the split for NAME:train|validation|calibration (the --seed the model was trained with).",
)
@click.option(
    "--shard-rows",
    type=click.IntRange(1),
    default=DEFAULT_SHARD_ROWS,
    show_default=True,
    help="Rows per unit of work spread over the workers (Parquet: whole row groups).",
)
@click.option(
    "--max-reject-rate",
    type=click.FloatRange(0, 1),
    default=DEFAULT_MAX_REJECT_RATE,
    show_default=True,
    help="Fail (exit 1, replacing nothing) when more than this share of the rows read is rejected; the run's "
    "rejects are kept in OUTPUT/_failed/RUN_ID/rejects/. 1 turns the guard off.",
)
@click.option(
    "--min-rows",
    type=click.IntRange(0),
    default=DEFAULT_MIN_ROWS,
    show_default=True,
    help="Fail (exit 1, replacing nothing) when the input has fewer rows than this (rows read, scored or not).",
)
@click.option(
    "--min-brightness",
    type=click.FloatRange(0, 1),
    default=DEFAULT_MIN_BRIGHTNESS,
    show_default=True,
    help="Fail at once (exit 1, replacing nothing) when the brightest pixel of every image in the first batches "
    "is below this share of the training images' typical brightest pixel: pixels scaled wrongly (0/1 masks "
    "read as 0-255 values, 0-255 values in 16-bit PNGs). 0 turns the guard off.",
)
@click.option(
    "--pixel-scale",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Divide numeric pixels by this instead of the model's scale (e.g. 1 for 0/1 integer masks).",
)
@result_json_option("status, reason, model, counts, reject_rate, anomaly_rate, threshold, run_id, paths")
@beam_runner_options
@click.argument("beam_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- BEAM_ARGS...]")
@click.pass_context
@friendly_errors
def score_command(ctx: click.Context, beam_args: tuple[str, ...], **params) -> None:
    """Score a data set for anomalies with a registered VAE, in an Apache Beam pipeline.

    Writes OUTPUT/scores (negative ELBO, its terms, p-value, threshold, is_anomaly per row) and
    OUTPUT/rejects (every row that could not be scored, with the reason) as Parquet datasets, each with
    a _manifest.json (rows, model, input fingerprint, run id). A run past a guard (--max-reject-rate,
    --min-rows) exits 1 and replaces nothing.
    """
    from pipeline.beam.guards import GuardFailed
    from pipeline.beam.options import ScoreOptions
    from pipeline.beam.score_job import score_dataset
    from training.data import DataError

    if beam_args:
        click.echo(f"Beam pipeline options passed through: {' '.join(beam_args)}")
    # the click parameters are named like the options: this is the one place they meet
    options = job_options(ctx, ScoreOptions, beam_args, params)
    try:
        with shard_progress("score", "pipeline.beam.score_job"):
            summary = score_dataset(options, started=COMMAND_STARTED)
    except GuardFailed as exc:  # the result JSON is written; say what the run did, then exit 1
        for line in exc.summary.lines():
            click.echo(line)
        raise click.ClickException(str(exc)) from exc
    except (RuntimeError, DataError) as exc:
        if isinstance(exc, DataError) and "[while running" not in str(exc):
            raise  # bad input found before the pipeline started: friendly_errors prints it
        # a step failed in a worker (Beam wraps its traceback)
        raise click.ClickException(
            f"the scoring pipeline failed; {options.output} was left as it was: {_cause(exc)}"
        ) from exc
    for line in summary.lines():
        click.echo(line)


def _cause(exc: BaseException) -> str:
    """What went wrong, in one line, from an error or a worker traceback that Beam wrapped."""
    from pipeline.outputs.result_json import error_reason

    return error_reason(exc)


def _required_input(ctx: click.Context, value: str | None) -> str:
    if value is None and not ctx.resilient_parsing:
        raise click.UsageError(
            "--input is required for scoring: a Parquet file or folder, an .npz file, a folder of PNGs, or a "
            "built-in part such as digits:holdout; the demo on the built-in digits is `vae run`",
            ctx,
        )
    return value
