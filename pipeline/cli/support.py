"""What every ``vae`` command shares: logging set-up, plain error messages, shape parsing."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

import click

from pipeline.beam.defaults import DEFAULT_RUNNER, DEFAULT_RUNNING_MODE, DEFAULT_WORKERS, RUNNING_MODES
from pipeline.beam.defaults import parse_shape as shape_of

QUIET_LOGGERS = ("absl", "tensorflow", "mlflow.store.db.utils", "alembic", "h5py", "matplotlib", "apache_beam")


def setup_logging(verbose: bool) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", force=True)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def friendly_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turns the errors a user can fix (bad data, a missing model, divergence) into one clean line."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from training.callbacks import TrainingDiverged
        from training.data import DataError

        try:
            return func(*args, **kwargs)
        except (DataError, LookupError, TrainingDiverged, FileNotFoundError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper


def parse_shape(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, int, int] | None:
    if value is None:
        return None
    try:
        return shape_of(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def beam_runner_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--runner``, ``--direct-num-workers`` and ``--direct-running-mode``, shared by the Beam commands."""
    options = [
        click.option(
            "--runner",
            default=DEFAULT_RUNNER,
            show_default=True,
            help="Beam runner: DirectRunner runs locally and offline; DataflowRunner, FlinkRunner, SparkRunner "
            "take their own pipeline options (see the README).",
        ),
        click.option(
            "--direct-num-workers",
            type=click.IntRange(1),
            default=DEFAULT_WORKERS,
            show_default=True,
            help="DirectRunner: parallel workers (each loads the model once).",
        ),
        click.option(
            "--direct-running-mode",
            type=click.Choice(RUNNING_MODES),
            default=DEFAULT_RUNNING_MODE,
            show_default=True,
            help="DirectRunner: worker processes, threads, or one in-process worker (fastest start for small jobs).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func
