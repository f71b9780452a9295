"""vae_score: daily, score the day's input with the @champion model into Parquet, then check it.

The day is the run's logical date (``{{ ds }}``: the scheduled run at midnight scores the day that
just ended) or the param ``date``. ``find_input`` looks for ``{input_root}/date=YYYY-MM-DD/`` and
skips the run when the day has no input; ``score`` runs ``vae score --partition date=YYYY-MM-DD``
into ``{output_root}/scores/date=YYYY-MM-DD/`` and ``{output_root}/rejects/date=YYYY-MM-DD/`` (one
hive partition of each dataset), which ``vae score`` replaces atomically and together, so a rerun
replaces that day only. A day that fails one of ``vae score``'s guards (too many rejected rows, too
few rows) fails ``score``, with the reason in its log, and replaces nothing. ``score_result`` reads
the run's result JSON and returns its counts (XCom). ``monitor`` runs ``vae monitor --check`` on the
day: an out-of-bounds flagged rate or drift fails the run (``monitor_on_alarm=fail``, the default)
or is logged as a warning (``warn``). With ``challenger_alias`` set, ``shadow_score`` scores the same
day with ``models:/NAME@ALIAS`` into ``{output_root}/shadow/`` and ``shadow_agreement`` records in
``{output_root}/monitoring/`` how often the two models' flags agree; a failing shadow task is
skipped, never failed, so it never fails the champion's day. ``input_root`` may be ``digits``, the
built-in data set, for demos. Settings: see ``_vae_common``.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from _vae_common import (
    ON_ALARM,
    SHADOW_SKIP_CODES,
    common_params,
    dag_defaults,
    day_input,
    monitor_check_command,
    monitor_outcome,
    param,
    parse_score_result,
    parse_shadow_result,
    run_day,
    schedule,
    score_command,
    score_counts,
    setting,
    shadow_agreement_command,
    shadow_root,
)
from airflow.sdk import CronDataIntervalTimetable, Param, dag, task
from airflow.sdk.exceptions import AirflowSkipException

log = logging.getLogger(__name__)

SCORE_SCHEDULE = schedule("VAE_SCORE_SCHEDULE", "@daily")


@dag(
    dag_id="vae_score",
    # a data-interval schedule: the run at midnight scores the day that just ended ({{ ds }})
    schedule=None if SCORE_SCHEDULE is None else CronDataIntervalTimetable(SCORE_SCHEDULE, timezone="UTC"),
    doc_md=__doc__,
    **dag_defaults(),
    params={
        "date": Param(
            None,
            type=["null", "string"],
            format="date",
            description="The day to score, YYYY-MM-DD. Empty: the run's logical date.",
        ),
        "input_root": param("input_root", "Root of the daily input partitions date=YYYY-MM-DD/, or digits."),
        "output_root": param("output_root", "Root of the daily outputs: scores/date=YYYY-MM-DD/, rejects/date=.../."),
        "score_args": param("score_args", "More `vae score` options."),
        "monitor_on_alarm": param(
            "monitor_on_alarm", "When the day's monitoring check is out of bounds: fail or warn.", enum=list(ON_ALARM)
        ),
        "challenger_alias": param(
            "challenger_alias", "Model alias scored in shadow beside @champion into {output_root}/shadow/."
        ),
        **common_params(),
    },
)
def vae_score() -> None:
    @task
    def find_input(ds: str | None = None, params: dict[str, Any] | None = None, dag_run: Any = None) -> dict[str, str]:
        day = run_day(params, ds, getattr(dag_run, "run_after", None))
        expected, found = day_input(setting("input_root", params), day)
        if found is None:
            log.info("No input for %s: %s is missing or empty; nothing to score, skipping.", day, expected)
            raise AirflowSkipException(f"no input for {day} at {expected}")
        log.info("Input for %s: %s", day, found)
        return {"date": day, "input": found}

    # the last line vae score prints is its result JSON, parsed into the XCom; no retries: a day
    # past a guard fails the same way again (rerun the day once its input is fixed)
    @task.bash(
        skip_on_exit_code=None,
        output_processor=parse_score_result,
        execution_timeout=timedelta(hours=4),
        retries=0,
    )
    def score(day: dict[str, str], params: dict[str, Any] | None = None) -> str:
        return score_command(day["input"], day["date"], params)

    @task
    def score_result(result: dict[str, Any]) -> dict[str, Any]:
        counts = score_counts(result)
        log.info(
            "Scored %s with %s version %s: %s rows read, %s scored, %s rejected (%.2f%%), %s flagged (%.2f%%) "
            "at threshold %s",
            counts["partition"],
            counts["model_name"],
            counts["model_version"],
            counts["rows_read"],
            counts["rows_scored"],
            counts["rows_rejected"],
            100 * float(counts["reject_rate"] or 0),
            counts["anomalies"],
            100 * float(counts["anomaly_rate"] or 0),
            counts["threshold"],
        )
        return counts

    # an alarm is a verdict on the day, not a passing fault: no retries
    @task.bash(skip_on_exit_code=None, output_processor=monitor_outcome, retries=0)
    def monitor(day: dict[str, str], scored: dict[str, Any], params: dict[str, Any] | None = None) -> str:
        return monitor_check_command(day["date"], params, run_id=scored.get("run_id"))

    # the shadow branch: a failure or its time limit exits one of SHADOW_SKIP_CODES, so the task is
    # skipped, never failed
    @task.bash(
        skip_on_exit_code=SHADOW_SKIP_CODES,
        output_processor=parse_shadow_result,
        retries=0,
        execution_timeout=timedelta(hours=4),
    )
    def shadow_score(day: dict[str, str], params: dict[str, Any] | None = None) -> str:
        alias = setting("challenger_alias", params).strip().lstrip("@")
        if not alias:
            raise AirflowSkipException("no challenger_alias set: no shadow scoring")
        log.info("Shadow scoring %s with the challenger @%s into %s", day["date"], alias, shadow_root(params))
        return score_command(day["input"], day["date"], params, alias=alias, output=shadow_root(params), shadow=True)

    @task.bash(skip_on_exit_code=SHADOW_SKIP_CODES, retries=0)
    def shadow_agreement(day: dict[str, str], params: dict[str, Any] | None = None) -> str:
        return shadow_agreement_command(day["date"], params)

    day = find_input()
    scored = score_result(score(day))
    monitor(day, scored)
    shadow = shadow_score(day)
    [scored, shadow] >> shadow_agreement(day)


vae_score()
