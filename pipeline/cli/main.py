"""The ``vae`` command. Each sub-command is a thin shell over a library function."""

from __future__ import annotations

import click

from pipeline.cli.evaluate import evaluate_command
from pipeline.cli.generate import generate_command
from pipeline.cli.report import report_command
from pipeline.cli.run import run_command
from pipeline.cli.score import score_command
from pipeline.cli.support import setup_logging
from pipeline.cli.train import train_command
from training import registry
from training.registry import DEFAULT_WORK_DIR, WORK_DIR_ENV


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--work-dir",
    default=None,
    show_default=f"${WORK_DIR_ENV}, else {DEFAULT_WORK_DIR}",
    type=click.Path(file_okay=False),
    help="Working folder: the MLflow store (unless MLFLOW_TRACKING_URI is set) and the default outputs. "
    "The Airflow DAGs use the same default.",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def main(ctx: click.Context, work_dir: str | None, verbose: bool) -> None:
    """Train VAEs on images, score data sets for anomalies, and write synthetic images."""
    setup_logging(verbose)
    ctx.ensure_object(dict)["work_dir"] = registry.work_dir(work_dir, create=False)


main.add_command(train_command)
main.add_command(run_command)
main.add_command(score_command)
main.add_command(evaluate_command)
main.add_command(report_command)
main.add_command(generate_command)
