"""vae_score: daily, score the day's input with the @champion model into Parquet.

The day is the run's logical date (``{{ ds }}``: the scheduled run at midnight scores the day that
just ended) or the param ``date``. ``find_input`` looks for ``{input_root}/date=YYYY-MM-DD/`` and
skips the run when the day has no input; ``score`` runs ``vae score --partition date=YYYY-MM-DD``
into ``{output_root}/scores/date=YYYY-MM-DD/`` and ``{output_root}/rejects/date=YYYY-MM-DD/`` (one
hive partition of each dataset), which ``vae score`` replaces atomically and together, so a rerun
replaces that day only. ``input_root`` may be ``digits``, the built-in data set, for demos.
Settings: see ``_vae_common``.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from _vae_common import (
    common_params,
    dag_defaults,
    day_input,
    param,
    run_day,
    schedule,
    score_command,
    setting,
)
from airflow.sdk import CronDataIntervalTimetable, Param, dag, task
from airflow.sdk.exceptions import AirflowSkipException

log = logging.getLogger(__name__)


@dag(
    dag_id="vae_score",
    # a data-interval schedule: the run at midnight scores the day that just ended ({{ ds }})
    schedule=CronDataIntervalTimetable(schedule("VAE_SCORE_SCHEDULE", "@daily"), timezone="UTC"),
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

    @task.bash(skip_on_exit_code=None, do_xcom_push=False, execution_timeout=timedelta(hours=4))
    def score(day: dict[str, str], params: dict[str, Any] | None = None) -> str:
        return score_command(day["input"], day["date"], params)

    score(find_input())


vae_score()
