"""``vae generate``: a thin shell over :func:`pipeline.beam.generate_job.generate_dataset`."""

from __future__ import annotations

import click

from pipeline.beam.defaults import (
    DEFAULT_FIDELITY_K,
    DEFAULT_INPUT,
    DEFAULT_INTERPOLATION_STEPS,
    DEFAULT_MODEL_URI,
    DEFAULT_PER_LABEL,
    DEFAULT_PRIOR_SAMPLES,
    DEFAULT_SEED,
    DEFAULT_TEMPERATURE,
    METHODS,
    SAMPLES_PER_SHARD,
)
from pipeline.cli.progress import shard_progress
from pipeline.cli.support import (
    beam_args_help,
    beam_runner_options,
    friendly_errors,
    job_options,
    parse_shape,
    result_json_option,
)
from scoring.sampling_choices import DEFAULT_LATENT_PRIOR, DEFAULT_PIXEL_TEMPERATURE, LATENT_PRIORS


@click.command("generate", epilog=beam_args_help("vae generate ... -- --direct_num_workers=4 --job_name=nightly"))
@click.option(
    "--model",
    default=DEFAULT_MODEL_URI,
    show_default=True,
    help="Registered model (models:/NAME@ALIAS or models:/NAME/VERSION) or a .keras file.",
)
@click.option(
    "--method",
    type=click.Choice(METHODS),
    required=True,
    help="prior: z drawn from --latent-prior (default: the Gaussian fitted to the training images' posteriors), its "
    "spread scaled by --temperature T (any model); conditional: N images per label (conditional models); "
    "posterior: encode real images from --input, sample z ~ q(z|x), decode; interpolate: decode --steps points "
    "on the straight line between the posterior means of the --input images --from and --to.",
)
@click.option("--from", "from_id", default=None, metavar="ID", help="interpolate: the first image's example_id.")
@click.option("--to", "to_id", default=None, metavar="ID", help="interpolate: the last image's example_id.")
@click.option(
    "--steps",
    type=click.IntRange(2),
    default=DEFAULT_INTERPOLATION_STEPS,
    show_default=True,
    help="interpolate: images from one to the other, both ends included.",
)
@click.option(
    "--n",
    "n",
    type=click.IntRange(1),
    default=None,
    help=f"Samples in all [prior: {DEFAULT_PRIOR_SAMPLES}; posterior: one per input image]. For a conditional model "
    "they are "
    "spread evenly over the labels; for posterior they cycle over the input images.",
)
@click.option(
    "--per-label",
    type=click.IntRange(1),
    default=None,
    help=f"Samples per label [conditional: {DEFAULT_PER_LABEL}]. Not with --n.",
)
@click.option(
    "--labels",
    "class_labels",
    default=None,
    metavar="LIST",
    help="Only these labels, as indices or class names separated by commas, e.g. 0,3,7 [all]. "
    "For posterior: only input images with these labels.",
)
@click.option(
    "--temperature",
    type=click.FloatRange(0),
    default=DEFAULT_TEMPERATURE,
    show_default=True,
    help="Scales the latent standard deviation: of the prior, or of q(z|x) for posterior (0: the mean).",
)
@click.option(
    "--input",
    default=None,
    help="posterior and interpolate: images to encode: digits (built in), or a Parquet file or folder, .npz, "
    f"PNG folder [{DEFAULT_INPUT}].",
)
@click.option("--shape", callback=parse_shape, default=None, help="Image shape HxWxC for a Parquet 'pixels' --input.")
@click.option(
    "--pixel-temperature",
    type=click.FloatRange(0),
    default=None,
    help=f"Draw the pixels from p(x|z)^(1/T), the likelihood tempered by T: 1 is a plain draw, below 1 a "
    f"sharper one with less speckle, 0 the likelihood's mean on the data's grey levels, an image a person "
    f"would draw, whose variety comes from the latent [{DEFAULT_PIXEL_TEMPERATURE:g}]. README 'Synthetic images'.",
)
@click.option("--sample-pixels", is_flag=True, help="The same as --pixel-temperature 1.")
@click.option(
    "--latent-prior",
    type=click.Choice(LATENT_PRIORS),
    default=DEFAULT_LATENT_PRIOR,
    show_default=True,
    help="prior and conditional: where latents are drawn. fitted: the Gaussian (per label) fitted to the "
    "training images' posteriors when the model was trained (N(0, I) for older models); standard: N(0, I).",
)
@click.option(
    "--output",
    type=click.Path(file_okay=False),
    required=True,
    help="Folder for the Parquet dataset OUTPUT/synthetic/METHOD/label-L/*.parquet (this method's "
    "folder is replaced only when the run succeeds; other methods are kept) and the grid "
    "OUTPUT/synthetic-METHOD.png.",
)
@click.option(
    "--seed",
    type=click.IntRange(0),
    default=DEFAULT_SEED,
    show_default=True,
    help="Seed: the same seed gives the same images, whatever the shards or workers.",
)
@click.option(
    "--shards",
    type=click.IntRange(1),
    default=None,
    help=f"Units of work handed to Beam workers [one per {SAMPLES_PER_SHARD} samples]. Does not change the images.",
)
@click.option(
    "--compare-with",
    default=None,
    metavar="INPUT",
    help="Real labelled images to measure the samples against, never trained on and dense (300 or more per "
    "label: with fewer, pixel noise passes for realistic), e.g. a Parquet file or folder, .npz, PNG folder, "
    "read with the model's pixel scale. Prints improved precision and recall (Kynkaanniemi et al. 2019), "
    f"density and coverage (Naeem et al. 2020), k = {DEFAULT_FIDELITY_K}, pixel space, and diversity (mean "
    "pairwise distance of the samples / of the real images) per label and their means, and logs them as "
    "MLflow metrics fidelity_METHOD_* to the model version's run [none]. benchmarks/synthetic_quality.py "
    "prints the same beside real images against the same reference.",
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
