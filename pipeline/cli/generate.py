"""``vae generate``: a thin shell over :func:`pipeline.beam.generate_job.generate_dataset`."""

from __future__ import annotations

import click

from pipeline.beam.defaults import DEFAULT_INPUT
from pipeline.beam.flags import GENERATE_FLAGS, JOB_FLAGS
from pipeline.cli.progress import shard_progress
from pipeline.cli.support import (
    beam_args_help,
    beam_runner_options,
    friendly_errors,
    job_flags,
    job_options,
    result_json_option,
)


@click.command("generate", epilog=beam_args_help("vae generate ... -- --direct_num_workers=4 --job_name=nightly"))
@job_flags(
    JOB_FLAGS + GENERATE_FLAGS,
    method={"required": True},
    input={
        "help": "posterior and interpolate: images to encode: digits (built in), or a Parquet file or folder, .npz, "
        f"PNG folder [{DEFAULT_INPUT}]."
    },
    output={
        "required": True,
        "type": click.Path(file_okay=False),
        "help": "Folder for the Parquet dataset OUTPUT/synthetic/METHOD/label-L/*.parquet (this method's folder is "
        "replaced only when the run succeeds; other methods are kept) and the grid OUTPUT/synthetic-METHOD.png.",
    },
)
@result_json_option("status, reason, model, method, rows, output, synthetic_path, run_id, manifest_path")
@click.option("--grid/--no-grid", default=True, show_default=True, help="Save a PNG grid of the samples.")
@click.option(
    "--log-grid", is_flag=True, help="Also log the grid to the model version's MLflow run (artifact 'synthetic/')."
)
@click.argument("beam_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- BEAM_ARGS...]")
@beam_runner_options
@click.pass_context
@friendly_errors
def generate_command(ctx: click.Context, grid: bool, log_grid: bool, beam_args: tuple[str, ...], **params) -> None:
    """Write synthetic images from a registered VAE to Parquet with an Apache Beam pipeline.

    Columns: sample_id, method, label, image_png, height, width, channels, pixels, latent, seed,
    source_example_id (posterior; FROM->TO for interpolate), model_name, model_version, created_at;
    one folder per method and label. Example:

    \b
        vae generate --method conditional --per-label 100 --labels 0,3,7 --output out
        vae generate --method conditional --output out --compare-with digits:holdout
        vae generate --method interpolate --from digits:0 --to digits:7 --steps 10 --output out
    """
    if log_grid and not grid:
        raise click.UsageError("--log-grid logs the grid that --no-grid turns off: drop one of them", ctx)
    from dataclasses import replace

    from pipeline.beam.generate_job import generate_dataset
    from pipeline.beam.options import GenerateOptions

    work_dir = ctx.obj["work_dir"]
    # the click parameters are named like the options: this is the one place they meet
    with shard_progress("generate", "pipeline.beam.generate_job"):
        summary = generate_dataset(job_options(ctx, GenerateOptions, beam_args, params))
    if grid:
        from pipeline.report.figures import save_grid
        from training import registry

        title = f"{summary.method} samples, {summary.model_name} v{summary.model_version}"
        grid_path = save_grid(summary.output, summary.method, class_names=summary.class_names, title=title)
        summary = replace(summary, grid=grid_path)
        if log_grid:
            run_id = registry.log_artifact(summary.model_name, summary.model_version, grid_path, "synthetic", work_dir)
            if run_id:
                click.echo(f"logged the grid to MLflow run {run_id} (artifact synthetic/{grid_path.name})")
    for line in summary.lines():
        click.echo(line)
