"""``vae report``: a thin shell over :func:`pipeline.report.html.render_report`."""

from __future__ import annotations

import click

from pipeline.cli.support import friendly_errors


@click.command("report")
@click.option(
    "--scores",
    required=True,
    type=click.Path(exists=True),
    help="A scores dataset (a folder of Parquet files, as `vae score` writes).",
)
@click.option(
    "--model",
    "model_uri",
    default=None,
    help="models:/NAME@ALIAS, models:/NAME/VERSION or a .keras file (default: the model named in the scores).",
)
@click.option("--output", type=click.Path(dir_okay=False), default="report.html", show_default=True)
@click.option("--top", type=click.IntRange(1), default=20, show_default=True, help="How many top anomalies to show.")
@click.option(
    "--input",
    "input_spec",
    default=None,
    help="The scored input (Parquet, .npz, PNG folder), to show images; the built-in digits need none.",
)
@click.option("--no-mlflow", is_flag=True, help="Do not log the page to the model's MLflow run.")
@click.pass_context
@friendly_errors
def report_command(
    ctx: click.Context,
    scores: str,
    model_uri: str | None,
    output: str,
    top: int,
    input_spec: str | None,
    no_mlflow: bool,
) -> None:
    """Write one self-contained HTML page about a model and its scores.

    Learning curves, reconstructions, samples, the latent map, the score histogram with its
    threshold, and the top anomalies with their images, scores and p-values.
    """
    from pipeline.report.html import render_report

    path = render_report(
        scores,
        model_uri,
        output,
        top=top,
        input_spec=input_spec,
        log_to_mlflow=not no_mlflow,
        work_dir=ctx.obj["work_dir"],
    )
    click.echo(f"report: {path}")
