"""What every ``vae`` command shares: plain error messages, shape parsing, the Beam flags (logging
lives in :mod:`pipeline.logging_setup`)."""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource

from pipeline.beam.defaults import DEFAULT_RUNNER, DEFAULT_RUNNING_MODE, DEFAULT_WORKERS, RUNNING_MODES
from pipeline.beam.defaults import parse_shape as shape_of
from pipeline.logging_setup import is_verbose


def friendly_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turns the errors a user can fix (bad data, a missing model, divergence) into one clean line;
    with ``vae -v`` the traceback comes first."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from training.callbacks import TrainingDiverged
        from training.data import DataError

        try:
            return func(*args, **kwargs)
        except click.ClickException as exc:  # a command's own message for a failure: its cause with -v
            if is_verbose() and exc.__cause__ is not None:
                click.echo(traceback.format_exc(), err=True, nl=False)
            raise
        except (DataError, LookupError, TrainingDiverged, FileNotFoundError, ValueError) as exc:
            if is_verbose():
                click.echo(traceback.format_exc(), err=True, nl=False)
            raise click.ClickException(str(exc)) from exc

    return wrapper


def parse_shape(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, int, int] | None:
    if value is None:
        return None
    try:
        return shape_of(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def beam_args_help(example: str) -> str:
    """The epilog of ``vae score`` / ``vae generate`` on the flags after ``--``."""
    return (
        f"Beam pipeline options go after --, e.g. {example}. A mistyped option before -- is an error, never "
        "silently handed to Beam. An option of this command may also be given after -- in Beam's spelling "
        "(e.g. --direct_num_workers=4 for --direct-num-workers 4): it then replaces the default; giving it "
        "both before and after -- is an error."
    )


def job_options(ctx: click.Context, options_class: type, beam_args: tuple[str, ...], params: dict[str, Any]) -> Any:
    """The job's options (``options_class.of``) from a command's parameters and the Beam flags after
    ``--``: the parameters a user left at their defaults give way to such a flag; one given both
    before and after ``--`` is a usage error naming both."""
    explicit, defaults = {}, {}
    for name, value in params.items():
        source = ctx.get_parameter_source(name)
        is_default = source in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
        (defaults if is_default else explicit)[name] = value
    root = ctx.find_root()
    work_dir = ctx.obj["work_dir"]
    if root is not ctx and root.get_parameter_source("work_dir") == ParameterSource.COMMANDLINE:
        explicit["work_dir"] = work_dir
    else:
        defaults["work_dir"] = work_dir
    given = options_class.flags_given(beam_args)
    twice = [name for name in explicit if name in given]
    if twice:
        opts = {p.name: "/".join(p.opts) for p in ctx.command.params}
        raise click.UsageError(
            "; ".join(
                f"{opts.get(name, '--work-dir')} {explicit[name]} and, after --, {given[name]} set the same option"
                for name in twice
            )
            + ": give it once",
            ctx,
        )
    return options_class.of(beam_args, defaults=defaults, **explicit)


def beam_runner_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--runner``, ``--direct-num-workers``, ``--direct-running-mode``, ``--dask-address`` and
    ``--dask-workers``, shared by the Beam commands."""
    options = [
        click.option(
            "--runner",
            default=DEFAULT_RUNNER,
            show_default=True,
            help="Beam runner: DirectRunner runs locally and offline; DaskRunner on a Dask cluster (--dask-address) "
            "or a local one; DataflowRunner, FlinkRunner, SparkRunner, PortableRunner take their own pipeline "
            "options (see the README).",
        ),
        click.option(
            "--direct-num-workers",
            type=click.IntRange(1),
            default=DEFAULT_WORKERS,
            show_default=True,
            help="DirectRunner: parallel workers (threads share one model; processes load it once each).",
        ),
        click.option(
            "--direct-running-mode",
            type=click.Choice(RUNNING_MODES),
            default=DEFAULT_RUNNING_MODE,
            show_default=True,
            help="DirectRunner: worker processes, threads, or one in-process worker (fastest start for small jobs).",
        ),
        click.option(
            "--dask-address",
            default=None,
            help="DaskRunner: the scheduler of a running Dask cluster, e.g. tcp://HOST:8786 (default: a local "
            "cluster started for the run).",
        ),
        click.option(
            "--dask-workers",
            type=click.IntRange(1),
            default=DEFAULT_WORKERS,
            show_default=True,
            help="DaskRunner without --dask-address: worker processes of the local cluster.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func
