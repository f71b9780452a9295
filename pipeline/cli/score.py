"""``vae score``: a thin shell over :func:`pipeline.beam.score_job.score_dataset`."""

from __future__ import annotations

import click

from pipeline.beam.flags import JOB_FLAGS, SCORE_FLAGS
from pipeline.cli import COMMAND_STARTED
from pipeline.cli.progress import shard_progress
from pipeline.cli.support import (
    beam_args_help,
    beam_runner_options,
    friendly_errors,
    job_flags,
    job_options,
    result_json_option,
)


@click.command(
    "score",
    epilog=beam_args_help(
        "vae score ... --runner DataflowRunner -- --project P --region R --temp_location gs://B/tmp "
        "--setup_file ./setup.py"
    ),
)
@job_flags(
    JOB_FLAGS + SCORE_FLAGS,
    input={
        "callback": lambda ctx, param, value: _required_input(ctx, value),
        "help": "Required (the built-in demo is `vae run`). A .parquet file or folder, an .npz file, a folder of "
        "PNG/JPEG files, digits or mnist5k (built in), or NAME:train|validation|calibration|holdout (that part of "
        "the split vae train makes with --split-seed; the holdout, alias test, is the same for every seed).",
    },
    output={
        "required": True,
        "type": click.Path(file_okay=False),
        "help": "Folder for the scores/ and rejects/ Parquet datasets; each is replaced only when the run succeeds.",
    },
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
