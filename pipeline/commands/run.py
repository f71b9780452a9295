"""``vae run``: the whole job on the built-in digits, from training to the outputs."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli_support import friendly_errors
from pipeline.commands.train import print_result, run_training, train_options


@click.command("run")
@click.option("--model-name", default="vae-digits", show_default=True)
@click.option(
    "--conditional/--plain",
    default=True,
    show_default=True,
    help="Train the label-conditioned VAE (default) or a plain one.",
)
@click.option(
    "--output", type=click.Path(file_okay=False), default=None, help="Where the outputs go (default: WORK_DIR/outputs)."
)
@train_options
@click.pass_context
@friendly_errors
def run_command(ctx: click.Context, model_name: str, conditional: bool, output: str | None, **options) -> None:
    """Train, calibrate, register, then score and generate on the built-in digits."""
    from training import registry

    output_dir = Path(output) if output else registry.work_dir(ctx.obj["work_dir"]) / "outputs"
    result = run_training(ctx, data="digits", model_name=model_name, conditional=conditional, **options)
    print_result(result)
    click.echo(f"\nMLflow UI:           mlflow ui --backend-store-uri {registry.tracking_uri(ctx.obj['work_dir'])}")
    click.echo(f"outputs:             {output_dir}")
