"""``vae calibrate``: a thin shell over :func:`training.recalibrate.recalibrate`."""

from __future__ import annotations

import os

import click

from pipeline.beam.defaults import DEFAULT_MODEL_URI
from pipeline.cli.support import friendly_errors, result_json_option


@click.command("calibrate")
@click.option(
    "--model",
    default=DEFAULT_MODEL_URI,
    show_default=True,
    help="The registered version to recalibrate: models:/NAME@ALIAS or models:/NAME/VERSION.",
)
@click.option(
    "--fpr",
    "target_fpr",
    type=float,
    required=True,
    help="The new target false positive rate: the threshold at that rate on the calibration scores "
    "(scoring.calibration.threshold_at: their quantile, or a tail fit when too few lie above it).",
)
@click.option(
    "--data",
    default=None,
    help="Held-out normal images to calibrate on (any input vae score reads, e.g. a Parquet folder or "
    "digits:calibration). Default: the calibration part of the data the version was trained on, re-read "
    "and checked against its training run's fingerprint; for a version calibrated by cross-fitting, the "
    "out-of-fold scores stored with it.",
)
@click.option(
    "--alias",
    default=None,
    help="Point this alias (e.g. champion) at the new version; recorded, so `vae models rollback` undoes it.",
)
@click.option(
    "--max-reject-rate",
    type=click.FloatRange(0, 1),
    default=0.01,
    show_default=True,
    help="With --data: stop when a larger share of its rows cannot be scored by the model.",
)
@result_json_option("status, reason, model_name, source_version, model_version, threshold, target_fpr, ...")
@click.pass_context
def calibrate_command(ctx: click.Context, result_json: str | None, **options) -> None:
    """Recalibrate a registered model at a new false positive rate, without retraining.

    Registers a NEW version of the same model with the same weights and the new threshold, logged
    in its own MLflow run (a child of the source run); the source version is left as it was.
    """
    from pipeline.outputs.result_json import write_result_json

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        result = _calibrate(ctx, **options)
    except Exception as exc:
        if result_json:
            reason = exc.format_message() if isinstance(exc, click.ClickException) else f"{type(exc).__name__}: {exc}"
            write_result_json(result_json, {"command": "calibrate", "status": "failed", "reason": reason})
        raise
    if result_json:
        write_result_json(result_json, {"command": "calibrate", "status": "ok", "reason": None} | result.to_dict())


@friendly_errors
def _calibrate(ctx: click.Context, model: str, target_fpr: float, data: str | None, alias: str | None, **rest):
    from training.recalibrate import recalibrate

    result = recalibrate(model, target_fpr, data=data, alias=alias, work=ctx.obj["work_dir"], **rest)
    was = (
        "no stored threshold"
        if result.previous_threshold is None
        else f"{result.previous_threshold:.4f} at FPR {result.previous_target_fpr:g}"
    )
    click.echo(f"recalibrated:    {result.name} version {result.source_version} -> new version {result.version}")
    click.echo(f"run id:          {result.run_id}  (child of {result.source_run_id})")
    click.echo(f"fitted on:       {result.calibration_rows:,} rows, {result.calibration_data}")
    click.echo(f"threshold:       {was}  ->  {result.threshold:.4f} at FPR {result.target_fpr:g}  ({result.score})")
    if result.holdout_flagged_rate is not None:
        click.echo(f"holdout flagged: {result.holdout_flagged_rate:.2%} at the new threshold")
    if result.warning:
        click.echo(f"warning:         {result.warning}")
    if result.alias_move is not None:
        click.echo(f"alias:           {result.alias_move.line()}")
    else:
        click.echo(f"alias:           none moved; `vae models promote {result.name} {result.version}` to use it")
    return result
