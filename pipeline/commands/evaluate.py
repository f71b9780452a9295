"""``vae evaluate``: a thin shell over :func:`pipeline.evaluate.evaluate`."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli_support import friendly_errors

PROTOCOL_HELP = (
    "Comma-separated: held-out (one class left out of training), contaminated (3% planted, unsupervised), one-class."
)


def parse_protocols(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[str, ...]:
    from pipeline.evaluate import PROTOCOLS

    chosen = tuple(p.strip() for p in value.split(",") if p.strip())
    unknown = [p for p in chosen if p not in PROTOCOLS]
    if unknown or not chosen:
        raise click.BadParameter(f"{value!r}: choose one or more of {', '.join(PROTOCOLS)}")
    return chosen


@click.command("evaluate")
@click.option(
    "--data",
    default="digits",
    show_default=True,
    help="Labelled images: digits (built in) or a path (Parquet, .npz, PNG folder with labels).",
)
@click.option(
    "--protocols",
    default="held-out,contaminated,one-class",
    show_default=True,
    callback=parse_protocols,
    help=PROTOCOL_HELP,
)
@click.option(
    "--epochs",
    type=click.IntRange(1),
    default=None,
    help="VAE epochs per fit (default: the evaluation's own, 30; 21 fits in all).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for splits, fits and scores.")
@click.option(
    "--output",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for results.csv, vae_fits.csv, tables.md and evaluation.png (default: WORK_DIR/evaluation).",
)
@click.option("--run-id", default=None, help="Log into this MLflow run (default: a new run named 'evaluation').")
@click.option("--no-mlflow", is_flag=True, help="Do not log to MLflow.")
@click.pass_context
@friendly_errors
def evaluate_command(
    ctx: click.Context,
    data: str,
    protocols: tuple[str, ...],
    epochs: int | None,
    seed: int,
    output: str | None,
    run_id: str | None,
    no_mlflow: bool,
) -> None:
    """Compare the VAE's scores with Isolation Forest, One-Class SVM, PCA and KDE.

    Prints AUROC and average-precision tables (detectors side by side) for each protocol.
    """
    from pipeline.evaluate import DEFAULT_EPOCHS, METRICS, evaluate, results_table
    from training import registry
    from training.config import TrainConfig

    work = ctx.obj["work_dir"]
    folder = Path(output) if output else registry.work_dir(work) / "evaluation"
    result = evaluate(
        data,
        protocols,
        epochs=epochs or DEFAULT_EPOCHS,
        seed=seed,
        output_dir=folder,
        run_id=run_id,
        log_to_mlflow=not no_mlflow,
        train_config=TrainConfig(work_dir=work),
        progress=click.echo,
    )
    for protocol in protocols:
        for metric in METRICS:
            table = results_table(result.rows, protocol, metric)
            if not table.empty:
                click.echo(f"\n{protocol}: {metric}\n{table.to_string(float_format=lambda v: f'{v:.3f}')}")
    click.echo(f"\nresults:  {result.csv_path}\nplot:     {result.plot_path}")
    if result.run_id:
        click.echo(f"MLflow run: {result.run_id}")
