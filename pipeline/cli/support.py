"""What every ``vae`` command shares: plain error messages, shape parsing, the Beam flags (logging
lives in :mod:`pipeline.logging_setup`)."""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from pipeline.beam.defaults import DEFAULT_RUNNER, DEFAULT_RUNNING_MODE, DEFAULT_WORKERS, RUNNING_MODES
from pipeline.beam.defaults import parse_shape as shape_of
from pipeline.beam.flags import DASK_FLAGS, Flag
from pipeline.contract import RESULT_TO_STDOUT
from pipeline.logging_setup import is_verbose
from training.limits import BUILTIN_DATA

RESULT_ON_FAILURE = "result_json_on_failure"  # ctx.meta: whether the command's --result-json is written on failure


def friendly_errors(func: Callable[..., Any] | None = None, *, loading: str = "TensorFlow and MLflow") -> Any:
    """Turns the errors a user can fix (bad data, a missing model, divergence) into one clean line;
    with ``vae -v`` the traceback comes first.

    Before the command runs (and imports TensorFlow, MLflow or Beam, seconds at best) its inputs are
    checked (:func:`check_paths`: ``--input``, ``--data``, ``--model``, ``--scores``), so a mistyped
    path is an error at once; then, at a terminal, one line says what is ``loading``."""
    if func is None:
        return functools.partial(friendly_errors, loading=loading)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            try:
                check_paths(kwargs)
            except click.ClickException as exc:
                _record_early_failure(kwargs, exc.message)
                raise
            announce_loading(loading)
            return func(*args, **kwargs)
        except click.ClickException as exc:  # a command's own message for a failure: its cause with -v
            if is_verbose() and exc.__cause__ is not None:
                click.echo(traceback.format_exc(), err=True, nl=False)
            raise
        except Exception as exc:
            if not _user_error(exc):
                raise
            if is_verbose():
                click.echo(traceback.format_exc(), err=True, nl=False)
            raise click.ClickException(str(exc)) from exc

    return wrapper


def _record_early_failure(kwargs: dict[str, Any], reason: str) -> None:
    """The failed result JSON of a command refused before it ran (a mistyped ``--input``), for the
    commands whose ``--result-json`` is written "also when the command fails"."""
    ctx = click.get_current_context(silent=True)
    path = kwargs.get("result_json")
    if not path or ctx is None or not ctx.meta.get(RESULT_ON_FAILURE):
        return
    from pipeline.outputs import result_json

    command = ctx.info_name
    if command in result_json.KEYS:  # the contract's keys, in order
        known = {key: kwargs.get(key) for key in ("input", "output", "method") if key in result_json.KEYS[command]}
        outcome = result_json.result(command, status="failed", reason=reason, **known)
    else:
        outcome = {"command": command, "status": "failed", "reason": reason}
    result_json.write_result_json(path, outcome)


def _user_error(exc: BaseException) -> bool:
    """An error with a message a user can act on (the data's ``DataError`` is a ValueError; MLflow's
    own, such as a tracking URI it cannot use); the modules are looked up, not imported: they are heavy."""
    if isinstance(exc, LookupError | FileNotFoundError | ValueError):
        return True
    callbacks, mlflow_errors = sys.modules.get("training.callbacks"), sys.modules.get("mlflow.exceptions")
    if mlflow_errors is not None and isinstance(exc, mlflow_errors.MlflowException):
        return True
    return callbacks is not None and isinstance(exc, callbacks.TrainingDiverged)


def announce_loading(what: str | None) -> None:
    """At a terminal, one line on stderr before the heavy imports (a user sees the command start)."""
    if what and sys.stderr.isatty():
        click.echo(f"loading {what}...", err=True)


def check_input(spec: str) -> None:
    """An input the reader can plan, judged without importing it: a built-in name (``digits``,
    ``digits:test``), a URL, or a local path that exists (the reader says the rest)."""
    if "://" in spec:
        return
    name = spec.partition(":")[0]
    if Path(spec).expanduser().exists() or (name in BUILTIN_DATA and not spec.endswith((".parquet", ".npz"))):
        return
    raise click.ClickException(
        f"{spec}: no such file or folder, and not a built-in data set ({', '.join(BUILTIN_DATA)}, digits:test, ...)"
    )


def check_model(uri: str) -> None:
    """A model URI of the right form (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``), or a
    ``.keras`` file that exists; whether the registry has it is asked once MLflow is loaded."""
    from training.registry import check_uri

    try:
        check_uri(uri)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc


def check_paths(params: dict[str, Any]) -> None:
    """The cheap checks of a command's parameters, before any heavy import."""
    if isinstance(params.get("input"), str):
        check_input(params["input"])
    data = params.get("data")
    for spec in (data,) if isinstance(data, str) else data or ():
        check_input(spec)
    if isinstance(params.get("model"), str):
        check_model(params["model"])
    scores = params.get("scores")
    if isinstance(scores, str) and "://" not in scores and not Path(scores).exists():
        raise click.ClickException(f"{scores}: no such folder (give the scores/ folder that vae score wrote)")


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


def job_flags(flags: tuple[Flag, ...], **changes: dict[str, Any]) -> Callable[[Callable[..., Any]], Any]:
    """The click options of a Beam job's flags (:mod:`pipeline.beam.flags`), in their order, with the
    same names, types, defaults, ranges and help; ``changes``: per flag name, click keywords that
    differ for this command (``required``, a command's own ``help``)."""

    def option(flag: Flag) -> Callable[..., Any]:
        kwargs: dict[str, Any] = {"default": flag.default, "show_default": flag.show_default, "help": flag.help}
        bounds = {"min": flag.minimum, "max": flag.maximum, "min_open": flag.open, "max_open": flag.open}
        if flag.type is bool:
            kwargs["is_flag"] = True
        elif flag.choices is not None:
            kwargs["type"] = click.Choice(flag.choices)
        elif flag.type is tuple:
            kwargs["callback"] = parse_shape
        elif flag.type in (int, float):
            bounded = flag.minimum is not None or flag.maximum is not None
            ranges = {int: click.IntRange, float: click.FloatRange}
            kwargs["type"] = ranges[flag.type](**bounds) if bounded else flag.type
        kwargs["metavar"] = flag.metavar
        return click.option(flag.spelling, flag.name, **{**kwargs, **changes.get(flag.name, {})})

    def decorate(func: Callable[..., Any]) -> Any:
        for flag in reversed(flags):
            if flag.cli != "":
                func = option(flag)(func)
        return func

    return decorate


def beam_runner_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--runner``, ``--direct-num-workers``, ``--direct-running-mode`` (Beam's own flags, whose
    defaults are ours) and the Dask flags (:data:`pipeline.beam.flags.DASK_FLAGS`), shared by the
    Beam commands."""
    options = [
        click.option(
            "--runner",
            default=DEFAULT_RUNNER,
            show_default=True,
            help="Beam runner: DirectRunner runs locally and offline; DaskRunner on a Dask cluster (--dask-address) "
            "or a local one; DataflowRunner, FlinkRunner, SparkRunner, PortableRunner take their own pipeline "
            "options (docs/scoring.md).",
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
    ]
    func = job_flags(DASK_FLAGS)(func)  # listed after the runner's own
    for option in reversed(options):
        func = option(func)
    return func


def result_json_option(what: str, *, on_failure: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--result-json PATH``: the command writes its outcome (``what``) as one JSON object to PATH
    (``on_failure``: also when it fails). ``-`` prints it instead, as the last line of stdout, after
    everything else the command prints: a scheduler then reads it from the task's output with no file
    to pass around (on failure click's ``Error:`` line on stderr still follows it)."""
    when = "also when the command fails" if on_failure else "when the command succeeds"
    return click.option(
        "--result-json",
        type=click.Path(dir_okay=False),
        default=None,
        callback=functools.partial(_result_json_path, on_failure=on_failure),
        help=f"Also write the outcome ({what}) as one JSON object to this file, {when}; "
        f"'{RESULT_TO_STDOUT}': print it as the last line of stdout.",
    )


def _result_json_path(
    ctx: click.Context, _param: click.Parameter, value: str | None, on_failure: bool = True
) -> str | None:
    """``-`` becomes a fresh file name in the temporary folder (nothing is created here), printed
    and removed when the command's context closes: after its own output, on success and on failure."""
    ctx.meta[RESULT_ON_FAILURE] = on_failure
    if value != RESULT_TO_STDOUT or ctx.resilient_parsing:
        return value
    import tempfile
    import uuid

    path = Path(tempfile.gettempdir()) / f"vae-result-{uuid.uuid4().hex}.json"

    def print_and_remove() -> None:
        if path.is_file():
            text = path.read_text()
            path.unlink(missing_ok=True)
            click.echo(text.replace("\n", ""))  # JSON strings hold no raw newlines

    ctx.call_on_close(print_and_remove)
    return str(path)
