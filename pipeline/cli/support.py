"""What every ``vae`` command shares: logging set-up, plain error messages, shape parsing."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

import click

from pipeline.beam.runner import DEFAULT_WORKERS, RUNNING_MODES

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
        parts = [int(p) for p in value.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 2:
        parts.append(1)
    if len(parts) != 3 or min(parts) < 1:
        raise click.BadParameter(f"{value!r}: give the image shape as HxW or HxWxC, e.g. 28x28x1")
    return tuple(parts)  # type: ignore[return-value]


def beam_runner_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--runner``, ``--direct-num-workers`` and ``--direct-running-mode``, shared by the Beam commands."""
    options = [
        click.option(
            "--runner",
            default="DirectRunner",
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
            default="multi_processing",
            show_default=True,
            help="DirectRunner: worker processes, threads, or one in-process worker (fastest start for small jobs).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func
