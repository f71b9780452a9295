"""What the ``vae_*`` DAGs share: settings, the model Asset, and the ``vae`` command lines they run.

The DAGs do no work of their own: every task either builds one ``vae`` command line (run by bash in
the project's own environment, so TensorFlow, Beam and MLflow are never imported by Airflow) or
reads a small result. What a failure, an alarm or a shadow means is said by ``vae``'s flags
(``--on-failure skip``, ``monitor --on-alarm warn``, ``--result-json -``), and the exit codes and
result keys come from :mod:`pipeline.contract`, the one module both sides import. This module
imports only the standard library, ``airflow.sdk`` and that module (standard library only), so
parsing the DAG files is quick; a task that needs ``vae``'s default working folder asks the project
for it.

A setting is looked up, at run time and never at parse time, in this order: the run's param (``-c``
conf or the trigger form), the Airflow Variable ``vae_<name>``, then the default below.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import sys
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import Asset, Param

from pipeline.contract import (
    MONITOR_ALARM_PREFIX,
    ON_ALARM,
    RESULT_TO_STDOUT,
    SCORE_COUNT_KEYS,
    SIGNALLED,
    SKIPPED,
    TIMED_OUT,
    TRAIN_KEYS,
)

log = logging.getLogger(__name__)

VARIABLE_PREFIX = "vae_"

#: One event per model version registered by ``vae_retrain``; its extra says which and whether promoted.
MODEL_ASSET = Asset(name="vae_model", uri="vae://models")

#: Where the DAGs' schedules start; ``catchup=False`` so no backfill of the past.
START_DATE = datetime(2026, 1, 1)


def default_vae_command() -> str:
    """The ``vae`` next to the running interpreter (Airflow installed in the project's environment),
    else ``vae`` on the PATH."""
    beside = Path(sys.executable).parent / "vae"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("vae") or "vae"


def default_work_dir() -> str:
    """``vae``'s own default working folder (``$VAE_WORK_DIR``, else ``~/vae-work``), from the project
    itself so that the DAGs and the command share one MLflow store. Read when a task runs, never at
    parse time; where Airflow runs outside the project's environment, set the Variable ``vae_work_dir``."""
    try:
        from training.registry import default_work_dir as vae_default
    except ImportError as exc:
        raise RuntimeError(
            "the vae project is not importable here, so its default working folder is unknown: set the "
            "Airflow Variable vae_work_dir"
        ) from exc
    return str(vae_default())


#: Defaults: a string, or a callable evaluated on the worker when the setting is needed.
#: ``{work_dir}`` in a default is replaced by the resolved work dir.
DEFAULTS: dict[str, str | Callable[[], str]] = {
    # every DAG
    "command": default_vae_command,  # path of the `vae` executable in the project's environment
    "work_dir": default_work_dir,  # vae --work-dir: its MLflow store (unless a tracking URI is set), vae's default
    "mlflow_tracking_uri": "",  # empty: inherit MLFLOW_TRACKING_URI, else SQLite in the work dir
    "model_name": "vae-digits",
    # vae_retrain
    "train_data": "digits",
    "conditional": "false",
    "epochs": "",  # empty: the `vae train` default
    "train_args": "",  # more `vae train` options, e.g. "--latent-dim 16 --kl-warmup 5"
    # vae_score
    "input_root": "digits",  # {input_root}/date=YYYY-MM-DD/ is a day's input; "digits": the built-in set
    "output_root": "{work_dir}/daily",  # {output_root}/scores/date=YYYY-MM-DD/ and rejects/date=YYYY-MM-DD/
    "score_args": "",
    "monitor_on_alarm": "fail",  # when `vae monitor --check` finds the day out of bounds: fail | warn
    "challenger_alias": "",  # empty: no shadow scoring; else score models:/{model}@ALIAS into {output_root}/shadow
    # vae_augment
    "synthetic_root": "{work_dir}/synthetic",  # {synthetic_root}/{model}/version=V/ gets synthetic/
    "synthetic_per_label": "100",  # conditional models: images per label
    "synthetic_n": "1000",  # plain models: images from the prior
    "synthetic_seed": "0",
    "generate_args": "",
}

TRUE = {"1", "true", "yes", "on"}


def variable_name(name: str) -> str:
    return VARIABLE_PREFIX + name


def get_variable(name: str) -> str | None:
    """The Airflow Variable ``vae_<name>`` (or env ``AIRFLOW_VAR_VAE_<NAME>``), None when unset.
    Only call it inside a running task."""
    from airflow.sdk import Variable

    value = Variable.get(variable_name(name), default=None)
    return None if value is None else str(value)


def setting(
    name: str,
    params: Mapping[str, Any] | None,
    variables: Callable[[str], str | None] = get_variable,
) -> str:
    """The value of one setting: the run's param, else the Variable, else the default."""
    value = (params or {}).get(name)
    if value is None or value == "":
        value = variables(name)
    if value is None or value == "":
        default = DEFAULTS[name]
        value = default() if callable(default) else default
    value = str(value)
    if "{work_dir}" in value:
        value = value.replace("{work_dir}", setting("work_dir", params, variables))
    return value


def flag(value: str | bool) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in TRUE


def param(name: str, description: str, type_: str = "string", **schema: Any) -> Param:
    """A run param that is empty by default, so the Variable or the default applies; ``schema``: more
    JSON-schema keywords (e.g. ``enum``, which then also admits the empty value)."""
    default = DEFAULTS[name]
    shown = "see the docs" if callable(default) else (repr(default) if default else "empty")
    if "enum" in schema:
        schema["enum"] = [None, *schema["enum"]]
    return Param(
        None,
        type=["null", type_],
        description=f"{description} Empty: Variable {variable_name(name)}, else {shown}.",
        **schema,
    )


def common_params() -> dict[str, Param]:
    """The params every DAG offers."""
    return {
        "model_name": param("model_name", "Registered model name in MLflow."),
        "mlflow_tracking_uri": param("mlflow_tracking_uri", "MLflow tracking URI for this run."),
    }


def default_args() -> dict[str, Any]:
    """Retries with exponential back-off: Airflow waits 2-4, then 4-8 minutes (at most an hour).

    ``VAE_DAG_RETRIES`` in the scheduler's environment changes the number of retries (tests use 0)."""
    return {
        "owner": "vae",
        "retries": int(os.environ.get("VAE_DAG_RETRIES", "2")),
        "retry_delay": timedelta(minutes=2),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(hours=1),
    }


def dag_defaults() -> dict[str, Any]:
    """What every VAE DAG shares: start date, no catch-up, one run at a time, retries, the tag."""
    return {
        "start_date": START_DATE,
        "catchup": False,
        "max_active_runs": 1,
        "default_args": default_args(),
        "tags": ["vae"],
    }


#: The value of a schedule variable that turns a DAG's schedule off: it runs only when triggered.
NO_SCHEDULE = "none"


def schedule(env: str, default: str) -> str | None:
    """A DAG's schedule: a cron expression or preset from the scheduler's environment, else ``default``;
    ``none`` there: no schedule (runs only when triggered)."""
    value = os.environ.get(env) or default
    return None if value.strip().lower() == NO_SCHEDULE else value


# ---------------------------------------------------------------- command lines


def vae_command(
    args: list[str],
    params: Mapping[str, Any] | None,
    variables=get_variable,
    *,
    on_failure: str = "fail",
    time_limit: int | None = None,
) -> str:
    """One ``vae --work-dir WORK [--on-failure skip] ARGS`` command line, with the configured MLflow
    tracking URI in its environment; under coreutils ``timeout`` when ``time_limit`` seconds are given
    (it exits :data:`~pipeline.contract.TIMED_OUT` past them). Its output goes to the task log; what a
    failure or an alarm means is ``vae``'s own flags (``--on-failure``, ``--on-alarm``), not the script's."""
    command = [setting("command", params, variables), "--work-dir", setting("work_dir", params, variables)]
    if on_failure != "fail":
        command += ["--on-failure", on_failure]
    line = shlex.join([*command, *args])
    if time_limit is not None:
        line = f"timeout -k 300 {int(time_limit)} {line}"  # SIGTERM, then SIGKILL 5 minutes on
    uri = setting("mlflow_tracking_uri", params, variables)
    return f"MLFLOW_TRACKING_URI={shlex.quote(uri)} {line}" if uri else line


def parse_result_json(output: str, command: str) -> dict[str, Any]:
    """The result JSON ``vae COMMAND --result-json`` wrote, from the last line of the task's output."""
    lines = output.strip().splitlines()
    if not lines:
        raise ValueError(f"vae {command} printed no result")
    try:
        result = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise ValueError(f"vae {command}: the last line of its output is not its result JSON: {lines[-1]!r}") from exc
    if not isinstance(result, dict) or result.get("command") != command:
        raise ValueError(f"vae {command}: expected its result object, got {lines[-1]!r}")
    return result


def train_command(params: Mapping[str, Any] | None, variables=get_variable) -> str:
    """``vae train`` on the configured data, promoting only a better model; prints its JSON result last."""

    def get(name: str) -> str:
        return setting(name, params, variables)

    args = ["train", "--data", get("train_data"), "--model-name", get("model_name"), "--promote", "if-better"]
    if flag(get("conditional")):
        args.append("--conditional")
    if get("epochs"):
        args += ["--epochs", get("epochs")]
    args += [*shlex.split(get("train_args")), "--result-json", RESULT_TO_STDOUT]
    return vae_command(args, params, variables)


def parse_train_result(output: str) -> dict[str, Any]:
    """The JSON line ``vae train --result-json`` wrote, from the last line of the task's output."""
    lines = output.strip().splitlines()
    if not lines:
        raise ValueError("vae train printed nothing")
    return json.loads(lines[-1])


def model_event_extra(result: Mapping[str, Any], conditional: bool) -> dict[str, Any]:
    """The extra on the model Asset event: ``vae train``'s result (what ``vae_augment`` needs) and
    whether the model is conditional: as the result says (``--conditional`` may come through
    ``train_args``), else ``conditional``, the DAG's setting."""
    extra = {key: result.get(key) for key in TRAIN_KEYS}
    extra.update(
        model_name=str(result["model_name"]),
        version=str(result["version"]),
        promoted=bool(result["promoted"]),
        conditional=bool(conditional if result.get("conditional") is None else result["conditional"]),
    )
    return extra


def run_day(params: Mapping[str, Any] | None, ds: str | None, run_after: datetime | None) -> str:
    """The day a run works on (YYYY-MM-DD): the ``date`` param, else the logical date (``ds``), else
    (a manual run without a logical date) the day it was triggered."""
    chosen = (params or {}).get("date") or ds
    if chosen:
        return str(chosen)
    if run_after is None:
        raise ValueError("the run has no logical date: give the day as the param 'date' (YYYY-MM-DD)")
    return run_after.date().isoformat()


def day_input(input_root: str, ds: str) -> tuple[str, str | None]:
    """(where the day's input should be, the input to score or None when there is none).

    ``digits`` is the built-in data set, the same every day (for demos and tests). A remote root
    (``gs://...``) cannot be checked cheaply here and is passed on as is."""
    if input_root == "digits":
        return "digits", "digits"
    path = f"{input_root.rstrip('/')}/date={ds}"
    if "://" in input_root:
        return path, path
    folder = Path(path)
    if folder.is_dir() and any(folder.iterdir()):
        return path, path
    return path, None


def day_partition(ds: str) -> str:
    """The hive partition of one day: ``vae score --partition`` replaces ``scores/date=DS/`` and
    ``rejects/date=DS/`` atomically, so a rerun of a day replaces that day only."""
    return f"date={ds}"


#: the challenger's own time limit, inside its task's 4-hour execution_timeout: a slow challenger
#: ends as a skipped shadow, never as a failed task that would turn the champion's day red
SHADOW_TIME_LIMIT_S = 3 * 3600 + 1800
#: the exit codes that skip a shadow task: a failure under ``vae --on-failure skip``, its time limit,
#: or a signal (a native crash, a kill): whatever ends the challenger, the champion's day stays green
SHADOW_SKIP_CODES = [SKIPPED, TIMED_OUT, *SIGNALLED]


def parse_score_result(output: str) -> dict[str, Any]:
    """``vae score``'s result JSON, from the last line of the task's output."""
    return parse_result_json(output, "score")


def parse_shadow_result(output: str) -> dict[str, Any] | None:
    """The challenger's result JSON, or None when its output cannot be read: the shadow never fails
    the day over its own result."""
    try:
        return parse_score_result(output)
    except ValueError:
        return None


def output_root(params: Mapping[str, Any] | None, variables=get_variable) -> str:
    return setting("output_root", params, variables).rstrip("/")


def shadow_root(params: Mapping[str, Any] | None, variables=get_variable) -> str:
    """Where the challenger's shadow scores go: ``{output_root}/shadow`` (its own scores/, rejects/)."""
    return f"{output_root(params, variables)}/shadow"


def score_command(
    input_path: str,
    ds: str,
    params: Mapping[str, Any] | None,
    variables=get_variable,
    *,
    alias: str = "champion",
    output: str | None = None,
    shadow: bool = False,
) -> str:
    """``vae score`` of one day with ``models:/NAME@ALIAS`` into ``output`` (default: the output root);
    its result JSON is the last line it prints. A ``shadow`` run exits :data:`SHADOW_SKIP_CODES` when
    it fails or passes :data:`SHADOW_TIME_LIMIT_S`."""

    def get(name: str) -> str:
        return setting(name, params, variables)

    args = [
        "score",
        "--model",
        f"models:/{get('model_name')}@{alias}",
        "--input",
        input_path,
        "--output",
        output or output_root(params, variables),
        "--partition",
        day_partition(ds),
        *shlex.split(get("score_args")),
        "--result-json",
        RESULT_TO_STDOUT,
    ]
    if shadow:
        return vae_command(args, params, variables, on_failure="skip", time_limit=SHADOW_TIME_LIMIT_S)
    return vae_command(args, params, variables)


def score_counts(result: Mapping[str, Any]) -> dict[str, Any]:
    """What a scoring run did, from its result JSON; a result that is not ``ok`` is an error."""
    if result.get("status") != "ok":
        raise ValueError(f"vae score did not succeed: {result.get('status')!r}, {result.get('reason')}")
    return {key: result.get(key) for key in SCORE_COUNT_KEYS}


def on_alarm(params: Mapping[str, Any] | None, variables=get_variable) -> str:
    """What a monitoring alarm does to the run: ``fail`` or ``warn``."""
    value = setting("monitor_on_alarm", params, variables).strip().lower()
    if value not in ON_ALARM:
        raise ValueError(f"monitor_on_alarm must be one of {', '.join(ON_ALARM)}, not {value!r}")
    return value


def monitor_check_command(
    ds: str, params: Mapping[str, Any] | None, variables=get_variable, run_id: str | None = None
) -> str:
    """``vae monitor OUTPUT_ROOT --check --partition date=DS [--run-id RUN] --on-alarm MODE``: with
    ``fail`` an out-of-bounds day (``run_id``, from ``vae score``'s result, so an earlier run's row is
    never judged in its place) exits :data:`~pipeline.contract.CHECK_FAILED` and fails the task; with
    ``warn`` it exits 0 and prints ``MONITOR_ALARM_PREFIX`` and the alarm last, which
    :func:`monitor_outcome` logs as a warning."""
    args = ["monitor", output_root(params, variables), "--check", "--partition", day_partition(ds)]
    if run_id:
        args += ["--run-id", run_id]
    return vae_command([*args, "--on-alarm", on_alarm(params, variables)], params, variables)


def monitor_outcome(output: str) -> dict[str, Any]:
    """Whether the monitor task's check raised an alarm (only seen here when it is a warning)."""
    lines = output.strip().splitlines()
    last = lines[-1] if lines else ""
    if last.startswith(MONITOR_ALARM_PREFIX):
        reason = last[len(MONITOR_ALARM_PREFIX) :].strip()
        log.warning("Monitoring alarm (monitor_on_alarm=warn, so the run does not fail): %s", reason)
        return {"alarm": True, "reason": reason}
    return {"alarm": False, "reason": None}


def shadow_agreement_command(ds: str, params: Mapping[str, Any] | None, variables=get_variable) -> str:
    """``vae --on-failure skip monitor OUTPUT_ROOT --shadow SHADOW --partition date=DS``: records how
    often the champion's and the challenger's flags agree on the day; a failure exits
    :data:`~pipeline.contract.SKIPPED`."""
    args = [
        "monitor",
        output_root(params, variables),
        "--shadow",
        shadow_root(params, variables),
        "--partition",
        day_partition(ds),
    ]
    return vae_command(args, params, variables, on_failure="skip")


def latest_promoted(events: list[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The extra of the last event that promoted a version, from a list in time order."""
    promoted = [extra for extra in events if extra.get("promoted")]
    return promoted[-1] if promoted else None


def generate_command(model: Mapping[str, Any], params: Mapping[str, Any] | None, variables=get_variable) -> str:
    """``vae generate`` for one registered version: per label for a conditional model, else from the prior."""

    def get(name: str) -> str:
        return setting(name, params, variables)

    name, version = str(model["model_name"]), str(model["version"])
    if flag(model.get("conditional", False)):
        how = ["--method", "conditional", "--per-label", get("synthetic_per_label")]
    else:
        how = ["--method", "prior", "--n", get("synthetic_n")]
    args = [
        "generate",
        "--model",
        f"models:/{name}/{version}",
        *how,
        "--output",
        f"{get('synthetic_root').rstrip('/')}/{name}/version={version}",
        "--seed",
        get("synthetic_seed"),
        *shlex.split(get("generate_args")),
        "--result-json",
        RESULT_TO_STDOUT,
    ]
    return vae_command(args, params, variables)


def parse_generate_result(output: str) -> dict[str, Any]:
    """The result of ``vae generate``, logged: how many rows, where."""
    result = parse_result_json(output, "generate")
    if result.get("status") != "ok":
        raise ValueError(f"vae generate did not succeed: {result.get('status')!r}, {result.get('reason')}")
    log.info(
        "Generated %s rows (%s) with %s version %s into %s",
        result.get("rows"),
        result.get("method"),
        result.get("model_name"),
        result.get("model_version"),
        result.get("synthetic_path") or result.get("output"),
    )
    return result
