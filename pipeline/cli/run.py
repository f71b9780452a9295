"""``vae run``: the whole job on the built-in digits, from training to the outputs."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pipeline.beam.defaults import DEFAULT_PER_LABEL, DEFAULT_PRIOR_SAMPLES
from pipeline.cli.support import friendly_errors
from pipeline.cli.train import print_result, run_training, train_options

if TYPE_CHECKING:
    from pipeline.beam.generate_job import GenerateSummary

# 270 test rows: worker processes would spend longer importing TensorFlow than scoring.
SMALL_JOB = {"direct_running_mode": "in_memory", "direct_num_workers": 1}


def generate_showcase(
    model_uri: str,
    output: str | os.PathLike,
    *,
    seed: int = 0,
    log_to_mlflow: bool = True,
    work_dir: str | os.PathLike | None = None,
    test_pipeline: Any = None,
    **options: Any,
) -> GenerateSummary:
    """What ``vae run`` writes: 100 conditional samples per label (1,000 prior samples for a plain
    model) into ``output/synthetic``, a PNG grid of them beside it (``output/synthetic-METHOD.png``,
    also in ``summary.grid``), logged to the model version's MLflow run under ``synthetic/``.
    ``options``: more :class:`~pipeline.beam.options.GenerateOptions` (``direct_running_mode`` ...)."""
    from pipeline.beam.generate_job import generate_dataset
    from pipeline.beam.options import GenerateOptions
    from pipeline.report.figures import save_grid
    from training import registry

    model = registry.pin(model_uri, work_dir)
    if model.load().num_classes:
        method, sizes = "conditional", {"per_label": DEFAULT_PER_LABEL}
    else:
        method, sizes = "prior", {"n": DEFAULT_PRIOR_SAMPLES}
    settings = GenerateOptions.of(
        model=model.uri, method=method, output=output, seed=seed, work_dir=work_dir, **sizes, **options
    )
    summary = generate_dataset(settings, test_pipeline=test_pipeline)
    title = f"{method} samples, {summary.model_name} v{summary.model_version}"
    grid = save_grid(summary.output, method, class_names=summary.class_names, title=title)
    if log_to_mlflow:
        registry.log_artifact(summary.model_name, summary.model_version, grid, "synthetic", work_dir)
    return replace(summary, grid=grid)


@click.command("run")
@click.option("--model-name", default="vae-digits", show_default=True, help="Registered model name in MLflow.")
@click.option(
    "--conditional/--plain",
    default=True,
    show_default=True,
    help="Train the label-conditioned VAE (default) or a plain one.",
)
@click.option(
    "--output", type=click.Path(file_okay=False), default=None, help="Where the outputs go (default: WORK_DIR/outputs)."
)
@click.option("--top", type=click.IntRange(1), default=10, show_default=True, help="Anomalies to list.")
@train_options
@click.pass_context
@friendly_errors
def run_command(
    ctx: click.Context, model_name: str, conditional: bool, output: str | None, top: int, **options
) -> None:
    """Train, calibrate and register a model on the built-in digits, then score the test split,
    write synthetic images and an HTML report, and print where everything is."""
    from pipeline.beam.options import ScoreOptions
    from pipeline.beam.score_job import score_dataset
    from pipeline.outputs.score_tables import top_anomalies
    from pipeline.report.html import render_report
    from training import registry

    work_dir = ctx.obj["work_dir"]
    output_dir = Path(output) if output else registry.work_dir(work_dir) / "outputs"
    click.echo("== 1/4 train, calibrate, register")
    result = run_training(ctx, data="digits", model_name=model_name, conditional=conditional, **options)
    print_result(result, work_dir)
    model_uri = f"models:/{result.model_name}/{result.version}"

    click.echo(f"\n== 2/4 score the holdout (rows no model trained on) with {model_uri}")
    scored = score_dataset(
        ScoreOptions.of(
            model=model_uri,
            input="digits:holdout",
            output=output_dir,
            split_seed=options["seed"],
            work_dir=work_dir,
            **SMALL_JOB,
        )
    )
    for line in scored.lines():
        click.echo(line)
    click.echo(f"top {top} anomalies:")
    click.echo(f"  {'example_id':<14} {'label':>5} {'anomaly_score':>13} {'neg_elbo':>10} {'p_value':>8}")
    for row in top_anomalies(scored.scores_path, n=top).to_pylist():
        click.echo(
            f"  {row['example_id']:<14} {row['label']!s:>5} {row['anomaly_score']:>13.3f} {row['neg_elbo']:>10.2f}"
            f" {row['p_value']:>8.4f}"
        )

    click.echo("\n== 3/4 synthetic images")
    generated = generate_showcase(model_uri, output_dir, seed=options["seed"], work_dir=work_dir, **SMALL_JOB)
    for line in generated.lines():
        click.echo(line)

    click.echo("\n== 4/4 report")
    report = render_report(
        scored.scores_path,
        model_uri,
        output_dir / "report.html",
        input_spec="digits",
        seed=options["seed"],
        work_dir=work_dir,
    )
    click.echo(f"report:     {report}")

    uri = registry.tracking_uri(work_dir)
    click.echo("\nOutputs")
    click.echo(f"  scores:    {scored.scores_path}   (Parquet)")
    click.echo(f"  rejects:   {scored.rejects_path}")
    click.echo(f"  synthetic: {generated.output}   grid: {generated.grid}")
    click.echo(f"  report:    {report}")
    click.echo(f"  MLflow:    {uri}")
    champion = registry.champion_version(result.model_name, work_dir)
    click.echo(f"  model:     models:/{result.model_name}@champion -> version {champion}")
    query = f"SELECT * FROM '{scored.scores_path}/*.parquet' ORDER BY anomaly_score DESC LIMIT 5"
    click.echo('\nQuery the scores:  .venv/bin/python -c "import duckdb; duckdb.sql(\\"' + query + '\\").show()"')
    click.echo(f"Browse the runs:   .venv/bin/mlflow ui --backend-store-uri {uri}")
