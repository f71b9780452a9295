"""``vae monitor``: the trend of an output's scoring runs, drawn, and checked (a thin shell over
:mod:`pipeline.monitoring`)."""

from __future__ import annotations

import functools
import re
import traceback
from collections.abc import Callable
from typing import Any

import click

from pipeline.contract import CHECK_FAILED, MONITOR_ALARM_PREFIX, ON_ALARM

_PARTITION = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=[^/\\]+$")


def plain_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Errors a user can fix as one clean line (like ``support.friendly_errors``, which would import
    TensorFlow for its training errors: this command never needs it)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pipeline.cli.support import announce_loading

        try:
            announce_loading("pandas and pyarrow")
            return func(*args, **kwargs)
        except (FileNotFoundError, ValueError, LookupError) as exc:
            from pipeline.logging_setup import is_verbose

            if is_verbose():
                traceback.print_exc()
            raise click.ClickException(str(exc)) from exc

    return wrapper


def _partition(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not _PARTITION.match(value):
        raise click.BadParameter(f"{value!r}: expected KEY=VALUE, e.g. date=2026-11-20")
    return value


@click.command("monitor")
@click.argument("output", type=click.Path(file_okay=False))
@click.option("--last", type=click.IntRange(1), default=30, show_default=True, help="Show the last N points.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    default=None,
    show_default="OUTPUT/monitoring.png",
    help="Where to draw the trend (PNG).",
)
@click.option(
    "--check",
    is_flag=True,
    help=f"Exit with code {CHECK_FAILED} and a one-line reason (or warn: --on-alarm) when the selected run (the "
    "partition's latest, else the latest) has its anomaly rate outside its bound or its drift statistic above its "
    "limit.",
)
@click.option(
    "--on-alarm",
    type=click.Choice(ON_ALARM),
    default="fail",
    show_default=True,
    help=f"With --check, what an out-of-bounds run does: fail (exit {CHECK_FAILED}), or warn (exit 0 with "
    f"'{MONITOR_ALARM_PREFIX}REASON' as the last line of stdout, for a scheduler to log).",
)
@click.option(
    "--partition",
    default=None,
    metavar="KEY=VALUE",
    callback=_partition,
    help="Only this partition's runs (every rerun), e.g. date=2026-11-20; --check judges its latest run.",
)
@click.option(
    "--run-id",
    default=None,
    metavar="RUN_ID",
    help="With --check: judge this scoring run (the run_id of vae score's result JSON) and fail when it has no "
    "monitoring row, rather than the partition's latest row, which may be an earlier run's.",
)
@click.option(
    "--shadow",
    "shadow_output",
    default=None,
    metavar="SHADOW_OUTPUT",
    type=click.Path(file_okay=False),
    help="First record how the flags in SHADOW_OUTPUT/scores (a challenger scored in shadow) agree with those "
    "in OUTPUT/scores, for the same partition, as a row of OUTPUT/monitoring/.",
)
@click.option("--no-mlflow", is_flag=True, help="With --shadow: do not log the comparison to MLflow.")
@click.pass_context
@plain_errors
def monitor_command(
    ctx: click.Context,
    output: str,
    last: int,
    plot: str | None,
    check: bool,
    on_alarm: str,
    partition: str | None,
    run_id: str | None,
    shadow_output: str | None,
    no_mlflow: bool,
) -> None:
    """Print and draw how the scoring runs written to OUTPUT have moved, from OUTPUT/monitoring/.

    One line per partition (its latest run) or per run of a whole-dataset output: the model, the rows,
    the anomaly rate against its acceptance bound at the target false positive rate, and the KS drift
    of the scores from the model's calibration scores against its limit. `vae score` adds the rows.
    """
    from pipeline.monitoring import monitoring_path, read_rows, record_shadow
    from pipeline.monitoring.plot import save_trend
    from pipeline.monitoring.trend import frame_of, selected_run, shadow_lines, shadow_rows, table_lines, trend

    work_dir = (ctx.obj or {}).get("work_dir")
    if shadow_output is not None:
        row = record_shadow(output, shadow_output, partition=partition, work_dir=work_dir, log_to_mlflow=not no_mlflow)
        click.echo(
            f"shadow: {row['shadow_model_name']} v{row['shadow_model_version']} agrees with "
            f"{row['model_name']} v{row['model_version']} on {_share(row['agreement'])} of {row['shadow_rows']:,} rows "
            f"(both flag {row['both_flagged']}, only the champion {row['champion_only']}, only the challenger "
            f"{row['shadow_only']})"
        )
    frame = frame_of(read_rows(output))
    points = trend(frame, partition=partition, last=last) if len(frame) else frame
    if points.empty:
        where = f" for {partition}" if partition else ""
        raise click.ClickException(f"{monitoring_path(output)}: no scoring runs recorded{where}")
    for line in table_lines(points):
        click.echo(line)
    shadows = shadow_rows(frame, partition=partition, last=last)
    if not shadows.empty:
        click.echo("")
        for line in shadow_lines(shadows):
            click.echo(line)
    folder = monitoring_path(output)
    target = plot or ("monitoring.png" if isinstance(folder, str) else folder.with_suffix(".png"))
    title = f"{output}" + (f" {partition}" if partition else "")
    click.echo(f"trend: {save_trend(points, target, title=title)}")
    if check:
        from pipeline.monitoring import judge

        row = selected_run(frame, partition, run_id)
        if row is None:
            raise click.ClickException(
                f"{monitoring_path(output)}: no monitoring row for run {run_id}"
                + (f" in {partition}" if partition else "")
                + ": the run's monitoring was not recorded, so the day cannot be checked"
            )
        status, reason = judge(row)
        which = f"{row.get('partition') or 'the latest run'} (model {row['model_name']} v{row['model_version']})"
        if status == "alarm":
            alarm = f"out of bounds: {which}: {reason}"
            click.echo(alarm, err=True)
            if on_alarm == "fail":
                ctx.exit(CHECK_FAILED)
            click.echo(f"{MONITOR_ALARM_PREFIX}{alarm}")
            return
        click.echo(f"check: {which} {'within bounds' if status == 'ok' else f'not checked: {reason}'}")


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"
