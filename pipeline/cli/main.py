"""The ``vae`` command. Each sub-command is a thin shell over a library function."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import traceback

import click

from pipeline.cli.calibrate import calibrate_command
from pipeline.cli.evaluate import evaluate_command
from pipeline.cli.generate import generate_command
from pipeline.cli.models import models_command
from pipeline.cli.monitor import monitor_command
from pipeline.cli.report import report_command
from pipeline.cli.run import run_command
from pipeline.cli.score import score_command
from pipeline.cli.train import train_command
from pipeline.contract import CHECK_FAILED, FAILED, OK, ON_FAILURE, SKIPPED, USAGE
from pipeline.logging_setup import LOG_FORMAT_ENV, LOG_FORMATS, setup_logging
from training import registry
from training.registry import DEFAULT_WORK_DIR, WORK_DIR_ENV


@contextlib.contextmanager
def _exit_on_sigterm():
    """A terminated ``vae`` (a scheduler's timeout, a killed task) unwinds as a failure does, exit
    code 128 + 15 (:data:`~pipeline.contract.SKIPPED` under ``--on-failure skip``, as any failure): its
    MLflow run is marked failed, its staging folders, locks and spill files go."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum, _frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


class VaeGroup(click.Group):
    """``vae``: with ``--on-failure skip`` every failure exits :data:`pipeline.contract.SKIPPED`
    instead of its own code, with the same message: click's errors (a wrong command line, ``vae``'s
    own options included), any exception, an interrupt, a non-zero ``sys.exit``. Only success and a
    verdict keep their code (``vae monitor --check``'s :data:`~pipeline.contract.CHECK_FAILED`)."""

    def main(self, args=None, *rest, **extra):
        with _exit_on_sigterm():
            return self._main(args, *rest, **extra)

    def _main(self, args=None, *rest, **extra):
        if not self._asks_to_skip(list(sys.argv[1:] if args is None else args)):
            return super().main(args, *rest, **extra)
        try:
            return super().main(args, *rest, **extra)  # click's own handling first: it prints and exits
        except SystemExit as exc:
            if exc.code in (None, 0, CHECK_FAILED):
                raise
            if isinstance(exc.code, str):
                click.echo(exc.code, err=True)
            sys.exit(SKIPPED)
        except Exception:
            traceback.print_exc()
            sys.exit(SKIPPED)

    def _asks_to_skip(self, args: list[str]) -> bool:
        """Whether raw arguments hold ``--on-failure skip`` before the sub-command."""
        for i, arg in enumerate(args):
            if arg == "--on-failure=skip" or (arg == "--on-failure" and args[i + 1 : i + 2] == ["skip"]):
                return True
            if arg in self.commands:
                return False
        return False


@click.group(
    cls=VaeGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=f"Exit codes: {OK} done, {FAILED} failed, {USAGE} a wrong command line, {CHECK_FAILED} vae monitor --check "
    f"found the run out of bounds, {SKIPPED} failed under --on-failure skip (the codes are pipeline/contract.py).",
)
@click.version_option(package_name="vae-pipeline", prog_name="vae", message="%(prog)s %(version)s")
@click.option(
    "--work-dir",
    default=None,
    show_default=f"${WORK_DIR_ENV}, else {DEFAULT_WORK_DIR}",
    type=click.Path(file_okay=False),
    help="Working folder: the MLflow store (unless MLFLOW_TRACKING_URI is set) and the default outputs. "
    "The Airflow DAGs use the same default.",
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Debug logging, the frameworks' own lines (TensorFlow, MLflow, Beam workers), a traceback with every error.",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    envvar=LOG_FORMAT_ENV,
    show_envvar=True,
    default="auto",
    show_default=True,
    help="Log lines on stderr: plain messages, or timed ('2026-01-31T06:00:00.000Z INFO logger: message', "
    "UTC) for scheduled runs; auto is plain at a terminal, timed otherwise.",
)
@click.option(
    "--on-failure",
    type=click.Choice(ON_FAILURE),
    default="fail",
    show_default=True,
    help=f"skip: a failing command exits {SKIPPED} instead of 1 (Airflow's skip code: a task that may fail "
    "without failing its run, such as a challenger scored in shadow, then shows as skipped).",
)
@click.pass_context
def main(ctx: click.Context, work_dir: str | None, verbose: bool, log_format: str, on_failure: str) -> None:
    """Train VAEs on images, score data sets for anomalies, and write synthetic images.

    Shell completion: eval "$(_VAE_COMPLETE=bash_source vae)" in ~/.bashrc (zsh_source, fish_source for
    zsh and fish).
    """
    # on_failure is applied by VaeGroup.main, around click's own error handling
    setup_logging(verbose, log_format)  # before any command imports TensorFlow, MLflow or Beam
    ctx.ensure_object(dict)["work_dir"] = registry.work_dir(work_dir, create=False)


main.add_command(train_command)
main.add_command(run_command)
main.add_command(score_command)
main.add_command(evaluate_command)
main.add_command(report_command)
main.add_command(generate_command)
main.add_command(monitor_command)
main.add_command(models_command)
main.add_command(calibrate_command)
