"""The Airflow 3 DAGs in ``airflow_dags/``, with the real Airflow from the project's environment.

Cheap tests: every DAG file parses with no import errors and without importing TensorFlow, Beam or
MLflow; task ids, dependencies, schedules, retries and the model Asset are wired as documented; the
command lines are built from params, Variables and defaults in that order.

Slow tests: ``airflow dags test`` against a fresh ``AIRFLOW_HOME`` with a SQLite metadata database,
each in a subprocess, with settings given as Airflow Variables through ``AIRFLOW_VAR_*``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DAGS_FOLDER = REPO / "airflow_dags"
BIN = Path(sys.executable).parent
AIRFLOW = str(BIN / "airflow")
DAG_IDS = {"vae_retrain", "vae_score", "vae_augment"}
SCORE_TASKS = ("find_input", "score", "score_result", "monitor", "shadow_score", "shadow_agreement")
HEAVY = ("tensorflow", "keras", "apache_beam", "mlflow", "torch", "jax")
MODEL = "vae-airflow-test"
DAY = "2026-01-05"
# the calibration part alone (tests/test_cross_fit.py covers cross-fitting)
QUICK_TRAIN_ARGS = "--kl-warmup 1 --early-stopping 0 --score-samples 4 --calibration-folds 0"
QUICK_SCORE_ARGS = "--direct-running-mode in_memory --direct-num-workers 1"  # 1,797 rows: no worker processes


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("airflow_home")


@pytest.fixture(scope="session")
def airflow_env(airflow_home: Path) -> dict[str, str]:
    """The environment of every Airflow subprocess: a fresh home, our DAGs folder, no examples, no
    retries, and the DAG settings as Variables (``AIRFLOW_VAR_VAE_*``) pointing into the home."""
    return airflow_test_env(airflow_home)


def airflow_test_env(airflow_home: Path) -> dict[str, str]:
    """What ``airflow_env`` holds, for any home (``test_dag_events.py`` runs a scheduler in its own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "VAE_", "MLFLOW_"))}
    work = airflow_home / "vae-work"
    env.update(
        AIRFLOW_HOME=str(airflow_home),
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS_FOLDER),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__LOGGING__LOGGING_LEVEL="INFO",
        VAE_DAG_RETRIES="0",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONWARNINGS="ignore",
        AIRFLOW_VAR_VAE_WORK_DIR=str(work),
        AIRFLOW_VAR_VAE_MLFLOW_TRACKING_URI=f"sqlite:///{airflow_home / 'mlflow.db'}",
        AIRFLOW_VAR_VAE_MODEL_NAME=MODEL,
        AIRFLOW_VAR_VAE_EPOCHS="2",
        AIRFLOW_VAR_VAE_TRAIN_ARGS=QUICK_TRAIN_ARGS,
        AIRFLOW_VAR_VAE_SCORE_ARGS=QUICK_SCORE_ARGS,
        AIRFLOW_VAR_VAE_SYNTHETIC_N="32",
        AIRFLOW_VAR_VAE_GENERATE_ARGS=QUICK_SCORE_ARGS + " --no-grid",
    )
    return env


@pytest.fixture(scope="session")
def airflow_db(airflow_env: dict[str, str]) -> dict[str, str]:
    """A migrated SQLite metadata database in the fresh home."""
    result = subprocess.run([AIRFLOW, "db", "migrate"], env=airflow_env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return airflow_env


def run_python(env: dict[str, str], code: str) -> Any:
    """Runs ``code`` in a fresh interpreter with ``env``; returns the JSON it prints on its last line."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, cwd=DAGS_FOLDER
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


DAGBAG_SUMMARY = """
    import json, sys
    from pathlib import Path
    from airflow.dag_processing.dagbag import BundleDagBag

    folder = Path({folder!r})
    bag = BundleDagBag(dag_folder=folder, bundle_path=folder)

    def timetable(dag):
        t = dag.timetable
        assets = getattr(t, "asset_condition", None)
        return {{
            "kind": type(t).__name__,
            "expression": getattr(t, "expression", None),
            "assets": sorted(a.uri for a in assets.objects) if assets is not None else None,
        }}

    dags = {{
        dag.dag_id: {{
            "timetable": timetable(dag),
            "catchup": dag.catchup,
            "max_active_runs": dag.max_active_runs,
            "params": {{k: dag.params.get_param(k).value for k in dag.params}},
            "tasks": {{
                t.task_id: {{
                    "upstream": sorted(t.upstream_task_ids),
                    "operator": type(t).__name__,
                    "outlets": sorted(a.uri for a in t.outlets),
                    "retries": t.retries,
                    "backoff": t.retry_exponential_backoff,
                    "skip_on_exit_code": list(getattr(t, "skip_on_exit_code", None) or []),
                }}
                for t in dag.tasks
            }},
        }}
        for dag in bag.dags.values()
    }}
    files = sorted(Path(stat.file).name for stat in bag.dagbag_stats)
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})
    print(json.dumps({{"errors": {{str(k): v for k, v in bag.import_errors.items()}}, "files": files,
                       "dags": dags, "heavy": heavy}}))
"""


@pytest.fixture(scope="session")
def dagbag(airflow_env: dict[str, str]) -> dict[str, Any]:
    """What Airflow's own DagBag finds in ``airflow_dags/``, collected in a fresh interpreter."""
    return run_python(airflow_env, DAGBAG_SUMMARY.format(folder=str(DAGS_FOLDER), heavy=HEAVY))


@pytest.fixture(scope="module")
def common(airflow_env: dict[str, str]) -> ModuleType:
    """``airflow_dags/_vae_common.py`` loaded from its file (Airflow puts the DAGs folder on the path;
    the tests do not touch ``sys.path``), with Airflow's home in the temporary folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW_HOME", airflow_env["AIRFLOW_HOME"])
        spec = importlib.util.spec_from_file_location("_vae_common", DAGS_FOLDER / "_vae_common.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module


def dags_test(env: dict[str, str], dag_id: str, day: str, conf: dict[str, Any] | None = None):
    args = [AIRFLOW, "dags", "test", dag_id, day]
    if conf:
        args += ["-c", json.dumps(conf)]
    return subprocess.run(args, env=env, capture_output=True, text=True, cwd=env["AIRFLOW_HOME"])


def task_states(env: dict[str, str], dag_id: str, day: str) -> dict[str, str]:
    """The states of a DAG's task instances in the run of one logical date, from the metadata database."""
    return run_python(
        env,
        f"""
        import json
        from sqlalchemy import select
        from airflow.models.dagrun import DagRun
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session

        with create_session() as session:
            rows = session.execute(
                select(TaskInstance.task_id, TaskInstance.state, DagRun.logical_date)
                .join(DagRun, (DagRun.dag_id == TaskInstance.dag_id) & (DagRun.run_id == TaskInstance.run_id))
                .where(TaskInstance.dag_id == {dag_id!r})
            ).all()
        # (an asset-triggered run has no logical date)
        print(json.dumps({{t: str(s) for t, s, d in rows if d is not None and d.date().isoformat() == {day!r}}}))
        """,
    )


def model_events(env: dict[str, str]) -> list[dict[str, Any]]:
    return run_python(
        env,
        """
        import json
        from sqlalchemy import select
        from airflow.models.asset import AssetEvent, AssetModel
        from airflow.utils.session import create_session

        with create_session() as session:
            rows = session.execute(
                select(AssetModel.uri, AssetEvent.extra, AssetEvent.source_dag_id, AssetEvent.source_task_id)
                .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
                .order_by(AssetEvent.timestamp)
            ).all()
        print(json.dumps([{"uri": u, "extra": e, "dag": d, "task": t} for u, e, d, t in rows]))
        """,
    )


def log_of(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


# ---------------------------------------------------------------------------------- parsing, wiring


def test_every_dag_file_imports_without_errors(dagbag):
    assert dagbag["errors"] == {}
    assert set(dagbag["dags"]) == DAG_IDS
    assert dagbag["files"] == sorted(p.name for p in DAGS_FOLDER.glob("vae_*.py"))  # helper module ignored


def test_parsing_imports_no_tensorflow_beam_or_mlflow(dagbag):
    assert dagbag["heavy"] == []


def test_retrain_trains_then_publishes_the_model_asset(dagbag, common):
    dag = dagbag["dags"]["vae_retrain"]
    assert dag["timetable"] == {"kind": "CronTriggerTimetable", "expression": "0 0 * * 0", "assets": None}
    assert dag["tasks"]["train"] == {
        "upstream": [],
        "operator": "_BashDecoratedOperator",
        "outlets": [],
        "retries": 0,  # VAE_DAG_RETRIES=0 in the tests; 2 by default
        "backoff": 2.0,
        "skip_on_exit_code": [],  # every non-zero exit fails the task
    }
    assert dag["tasks"]["publish_model"]["upstream"] == ["train"]
    assert dag["tasks"]["publish_model"]["outlets"] == [common.MODEL_ASSET.uri]
    assert dag["max_active_runs"] == 1 and dag["catchup"] is False
    assert set(dag["params"]) >= {"train_data", "epochs", "model_name", "mlflow_tracking_uri"}
    assert all(value is None for value in dag["params"].values())  # empty params: Variables apply


def test_score_finds_the_day_input_scores_checks_and_shadows(dagbag, common):
    dag = dagbag["dags"]["vae_score"]
    assert dag["timetable"] == {"kind": "CronDataIntervalTimetable", "expression": "0 0 * * *", "assets": None}
    assert {task: spec["upstream"] for task, spec in dag["tasks"].items()} == {
        "find_input": [],
        "score": ["find_input"],
        "score_result": ["score"],
        "monitor": ["find_input", "score_result"],
        "shadow_score": ["find_input"],
        "shadow_agreement": ["find_input", "score_result", "shadow_score"],
    }
    tasks = dag["tasks"]
    assert {t: tasks[t]["operator"] for t in ("score", "monitor", "shadow_score", "shadow_agreement")} == dict.fromkeys(
        ("score", "monitor", "shadow_score", "shadow_agreement"), "_BashDecoratedOperator"
    )
    # the champion's tasks fail on any error; the shadow's are skipped instead, so the day stays green
    assert tasks["score"]["skip_on_exit_code"] == tasks["monitor"]["skip_on_exit_code"] == []
    # vae --on-failure skip, timeout, a signal (a crash, a kill: -N from bash -c of one command, else 128 + N)
    skips = [99, 124, -6, -9, -11, -15, 134, 137, 139, 143]
    assert tasks["shadow_score"]["skip_on_exit_code"] == tasks["shadow_agreement"]["skip_on_exit_code"] == skips
    assert tasks["monitor"]["retries"] == 0
    assert {"input_root", "output_root", "monitor_on_alarm", "challenger_alias"} <= set(dag["params"])


def test_augment_is_scheduled_on_the_model_asset(dagbag, common):
    dag = dagbag["dags"]["vae_augment"]
    assert dag["timetable"] == {
        "kind": "AssetTriggeredTimetable",
        "expression": None,
        "assets": [common.MODEL_ASSET.uri],
    }
    assert {task: spec["upstream"] for task, spec in dag["tasks"].items()} == {
        "choose_model": [],
        "generate": ["choose_model"],
    }
    assert dag["tasks"]["generate"]["operator"] == "_BashDecoratedOperator"


def test_a_schedule_of_none_means_triggered_runs_only(airflow_env, common, monkeypatch):
    monkeypatch.setenv("VAE_SCORE_SCHEDULE", "None")
    assert common.schedule("VAE_SCORE_SCHEDULE", "@daily") is None
    monkeypatch.setenv("VAE_SCORE_SCHEDULE", "0 6 * * *")
    assert common.schedule("VAE_SCORE_SCHEDULE", "@daily") == "0 6 * * *"
    monkeypatch.delenv("VAE_SCORE_SCHEDULE")
    assert common.schedule("VAE_SCORE_SCHEDULE", "@daily") == "@daily"
    env = airflow_env | {"VAE_SCORE_SCHEDULE": "none", "VAE_RETRAIN_SCHEDULE": "none"}
    dags = run_python(env, DAGBAG_SUMMARY.format(folder=str(DAGS_FOLDER), heavy=HEAVY))["dags"]
    assert dags["vae_score"]["timetable"]["kind"] == dags["vae_retrain"]["timetable"]["kind"] == "NullTimetable"


def test_default_retries_back_off_exponentially(common, monkeypatch):
    monkeypatch.delenv("VAE_DAG_RETRIES", raising=False)
    args = common.default_args()
    assert args["retries"] == 2
    assert args["retry_exponential_backoff"] == 2.0
    assert args["max_retry_delay"] >= args["retry_delay"]


# ---------------------------------------------------------------------------------- settings, commands


def no_variables(_name: str) -> None:
    return None


def test_settings_come_from_params_then_variables_then_defaults(common):
    variables = {"model_name": "from-variable", "work_dir": "/srv/vae"}.get
    assert common.setting("model_name", {"model_name": "from-param"}, variables) == "from-param"
    assert common.setting("model_name", {"model_name": None}, variables) == "from-variable"
    assert common.setting("model_name", {}, no_variables) == "vae-digits"
    assert common.setting("output_root", {}, variables) == "/srv/vae/daily"
    assert common.setting("command", {}, no_variables).endswith("vae")


def test_the_dags_default_work_dir_is_vaes_own(common, monkeypatch, tmp_path):
    from pipeline.cli.main import main
    from training import registry

    monkeypatch.delenv("VAE_WORK_DIR", raising=False)  # the real default, only computed here, never created
    assert common.setting("work_dir", {}, no_variables) == str(Path("~/vae-work").expanduser())
    assert common.default_work_dir() == str(registry.default_work_dir()) == str(registry.work_dir(create=False))
    shown = next(p for p in main.params if p.name == "work_dir").show_default  # what `vae --help` says
    assert shown == "$VAE_WORK_DIR, else ~/vae-work"
    monkeypatch.setenv("VAE_WORK_DIR", str(tmp_path / "shared"))
    assert common.setting("output_root", {}, no_variables) == str(tmp_path / "shared" / "daily")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert registry.tracking_uri() == f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}"


def test_default_vae_command_is_the_one_beside_the_interpreter(common):
    assert common.default_vae_command() == str(BIN / "vae")


def one_vae_command(line: str, vae: str = "vae") -> list[str]:
    """The words of a task's command line, which must be one ``vae`` command: no second command,
    pipe, redirection or shell logic."""
    assert "\n" not in line
    words = shlex.split(line)
    assert not set(words) & {";", "&&", "||", "|", ">", "2>&1", "exit", "if", "then"}, line
    start = next(i for i, w in enumerate(words) if w == vae or w.endswith("/vae"))
    assert all(
        w.startswith("MLFLOW_TRACKING_URI=") for w in words[:start] if not w.isdigit() and w not in ("timeout", "-k")
    )
    return words


def test_train_command_promotes_only_a_better_model(common):
    variables = {
        "command": "/opt/vae/bin/vae",
        "work_dir": "/srv/vae work",
        "mlflow_tracking_uri": "http://mlflow:5000",
        "epochs": "3",
        "train_args": "--latent-dim 4",
    }.get
    line = common.train_command({"train_data": "/data/train.parquet", "conditional": True}, variables)
    assert line == (
        "MLFLOW_TRACKING_URI=http://mlflow:5000 /opt/vae/bin/vae --work-dir '/srv/vae work' train --data "
        "/data/train.parquet --model-name vae-digits --promote if-better --conditional --epochs 3 --latent-dim 4 "
        "--result-json -"
    )
    one_vae_command(line)


def test_train_result_is_read_from_the_last_line(common):
    result = {"model_name": "m", "version": "3", "promoted": False, "run_id": "r", "validation_neg_elbo": 1.5}
    output = "registered: m version 3\n" + json.dumps(result)
    assert common.parse_train_result(output) == result
    extra = common.model_event_extra(result, conditional=True)
    assert {k: extra[k] for k in ("model_name", "version", "promoted", "conditional")} == {
        "model_name": "m",
        "version": "3",
        "promoted": False,
        "conditional": True,
    }
    assert extra["holdout_fingerprint"] is None  # every key of the contract, null where the result lacks it
    # a conditional model trained through train_args: the result says so, whatever the DAG's setting
    assert common.model_event_extra(result | {"conditional": True}, conditional=False)["conditional"] is True
    assert common.model_event_extra(result | {"conditional": False}, conditional=True)["conditional"] is False


def test_score_command_writes_one_folder_per_day(common, tmp_path):
    line = common.score_command("digits", DAY, {"output_root": str(tmp_path / "out/")}, no_variables)
    assert "MLFLOW_TRACKING_URI" not in line  # unset: the worker's own environment applies
    words = one_vae_command(line)
    assert "--on-failure" not in words and "timeout" not in words  # the champion's failure fails the task
    assert line.endswith(
        f"score --model models:/vae-digits@champion --input digits --output {tmp_path}/out --partition date={DAY} "
        "--result-json -"
    )


def test_shadow_score_command_uses_the_challenger_and_its_own_root(common):
    variables = {
        "output_root": "/srv/daily",
        "score_args": "--max-reject-rate 0.2",
        "command": "vae",
        "work_dir": "/w",
    }.get
    line = common.score_command(
        "/in/date=1", DAY, {}, variables, alias="challenger", output="/srv/daily/shadow", shadow=True
    )
    assert line == (
        f"timeout -k 300 {common.SHADOW_TIME_LIMIT_S} vae --work-dir /w --on-failure skip score --model "
        f"models:/vae-digits@challenger --input /in/date=1 --output /srv/daily/shadow --partition date={DAY} "
        "--max-reject-rate 0.2 --result-json -"
    )
    one_vae_command(line)
    assert common.SHADOW_TIME_LIMIT_S < 4 * 3600  # inside vae_score's execution_timeout of 4 hours
    assert common.shadow_root({}, variables) == "/srv/daily/shadow"


def test_monitor_commands_check_the_day_and_record_the_shadow_agreement(common):
    variables = {"output_root": "/srv/daily/", "command": "vae", "work_dir": "/w"}.get
    check = common.monitor_check_command(DAY, {}, variables, run_id="r1")
    assert check == f"vae --work-dir /w monitor /srv/daily --check --partition date={DAY} --run-id r1 --on-alarm fail"
    warn = common.monitor_check_command(DAY, {"monitor_on_alarm": "WARN"}, variables)
    assert warn.endswith("--on-alarm warn")
    agreement = common.shadow_agreement_command(DAY, {}, variables)
    assert agreement == (
        f"vae --work-dir /w --on-failure skip monitor /srv/daily --shadow /srv/daily/shadow --partition date={DAY}"
    )
    for line in (check, warn, agreement):
        one_vae_command(line)
    assert common.on_alarm({}, no_variables) == "fail"
    with pytest.raises(ValueError, match="monitor_on_alarm must be one of fail, warn, not 'ignore'"):
        common.monitor_check_command(DAY, {"monitor_on_alarm": "ignore"}, variables)


def test_the_dags_and_vae_share_one_contract(common):
    """Exit codes, the alarm line and result keys come from pipeline.contract on both sides."""
    from pipeline import contract
    from pipeline.cli import monitor
    from pipeline.outputs import result_json

    assert [contract.SKIPPED, contract.TIMED_OUT, *contract.SIGNALLED] == common.SHADOW_SKIP_CODES
    assert common.MONITOR_ALARM_PREFIX is contract.MONITOR_ALARM_PREFIX
    assert monitor.CHECK_FAILED == contract.CHECK_FAILED
    assert result_json.KEYS == {"score": contract.SCORE_KEYS, "generate": contract.GENERATE_KEYS}
    assert set(contract.SCORE_COUNT_KEYS) <= set(contract.SCORE_KEYS)
    assert list(common.score_counts(dict.fromkeys(contract.SCORE_KEYS) | {"status": "ok"})) == list(
        contract.SCORE_COUNT_KEYS
    )


# -------------------------------------------------------- the command lines, run by bash with a stand-in vae

FAKE_VAE = """#!/usr/bin/env bash
# stands in for vae: prints its arguments, then $FAKE_RESULT for --result-json -, prints $FAKE_REASON
# to stderr and exits $FAKE_EXIT
echo "fake vae $*"
if [ -n "${FAKE_REASON:-}" ]; then echo "$FAKE_REASON" >&2; fi
if [ -n "${FAKE_SIGNAL:-}" ]; then kill -s "$FAKE_SIGNAL" $$; fi
sleep "${FAKE_SLEEP:-0}"
if [ -n "${FAKE_RESULT:-}" ]; then echo "$FAKE_RESULT"; fi
exit "${FAKE_EXIT:-0}"
"""


@pytest.fixture
def run_script(tmp_path):
    """Runs a task's command line the way BashOperator does (bash -c in a fresh folder, stderr into
    stdout) with a stand-in ``vae`` whose result, message and exit code the test chooses."""
    fake = tmp_path / "fake-vae"
    fake.write_text(FAKE_VAE)
    fake.chmod(0o755)

    def run(
        script_for, exit_code: int = 0, result: dict | None = None, reason: str = "", sleep: float = 0, signal: str = ""
    ):
        variables = {"command": str(fake), "work_dir": str(tmp_path / "work"), "output_root": "/srv/daily"}.get
        env = os.environ | {
            "FAKE_EXIT": str(exit_code),
            "FAKE_RESULT": json.dumps(result) if result is not None else "",
            "FAKE_REASON": reason,
            "FAKE_SLEEP": str(sleep),
            "FAKE_SIGNAL": signal,
        }
        cwd = tmp_path / f"run-{len(list(tmp_path.glob('run-*')))}"
        cwd.mkdir()
        done = subprocess.run(
            ["bash", "-c", script_for(variables)], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        return done.returncode, done.stdout.decode()

    return run


def score_result_json(status: str = "ok", reason: str | None = None) -> dict[str, Any]:
    return {
        "command": "score",
        "status": status,
        "reason": reason,
        "model_name": "m",
        "model_version": "4",
        "partition": f"date={DAY}",
        "run_id": "20260105T000000-abc",
        "rows_read": 100,
        "rows_scored": 98 if status == "ok" else 0,
        "rows_rejected": 2 if status == "ok" else 100,
        "reject_rate": 0.02 if status == "ok" else 1.0,
        "anomalies": 3,
        "anomaly_rate": 3 / 98,
        "threshold": 41.5,
    }


def test_a_score_result_becomes_the_tasks_last_line_and_its_counts(common, run_script):
    result = score_result_json()
    code, output = run_script(lambda v: common.score_command("digits", DAY, {}, v), result=result)
    assert code == 0, output
    assert "--result-json -" in output
    parsed = common.parse_result_json(output, "score")  # BashOperator hands on the last line only
    assert parsed == common.parse_result_json(output.splitlines()[-1], "score") == result
    counts = common.score_counts(parsed)
    assert (counts["rows_read"], counts["rows_rejected"], counts["anomalies"]) == (100, 2, 3)
    assert counts["partition"] == f"date={DAY}" and "scores_path" not in counts
    reason = "reject rate 100.00% is above --max-reject-rate 10.00%: missing column 'pixels'"
    with pytest.raises(ValueError, match="did not succeed: 'failed', reject rate 100.00%"):
        common.score_counts(score_result_json("failed", reason))


def test_a_slow_shadow_ends_at_its_own_time_limit_as_skipped_and_its_output_never_fails(
    common, run_script, monkeypatch
):
    """A challenger past its time limit exits with a skip code before the task's execution_timeout
    could fail it, and an unreadable result is None rather than an error: the shadow never turns the
    champion's day red."""
    monkeypatch.setattr(common, "SHADOW_TIME_LIMIT_S", 1)
    code, output = run_script(
        lambda v: common.score_command("/in", DAY, {}, v, alias="challenger", shadow=True),
        result=score_result_json(),
        sleep=30,
    )
    assert code in common.SHADOW_SKIP_CODES and code == 124, output
    assert "--on-failure skip" in output
    for signal in ("SEGV", "ABRT", "KILL"):  # a native crash or a kill under timeout, as Airflow runs it
        code, output = run_script(
            lambda v: common.score_command("/in", DAY, {}, v, alias="c", shadow=True), signal=signal
        )
        assert code in common.SHADOW_SKIP_CODES and code < 0, (signal, code, output)
    assert common.parse_shadow_result("Traceback ...\nnot json") is None
    assert common.parse_shadow_result(json.dumps(score_result_json()))["status"] == "ok"


def test_a_warned_monitoring_alarm_is_logged(common, caplog):
    reason = "out of bounds: date=2026-01-05: flagged rate 9.0% is outside [2.1%, 7.9%]"
    with caplog.at_level("WARNING"):
        outcome = common.monitor_outcome(f"trend: x.png\n{common.MONITOR_ALARM_PREFIX}{reason}\n")
    assert outcome == {"alarm": True, "reason": reason}
    assert reason in caplog.text and "monitor_on_alarm=warn" in caplog.text
    assert common.monitor_outcome("check: date=2026-01-05 within bounds") == {"alarm": False, "reason": None}


def test_a_generate_result_is_parsed_and_logged(common, run_script, caplog):
    result = {
        "command": "generate",
        "status": "ok",
        "reason": None,
        "model_name": "m",
        "model_version": "7",
        "method": "conditional",
        "rows": 30,
        "output": "/srv/synthetic/m/version=7",
        "synthetic_path": "/srv/synthetic/m/version=7/synthetic/conditional",
    }
    model = {"model_name": "m", "version": "7", "conditional": True}
    code, output = run_script(lambda v: common.generate_command(model, {}, v), result=result)
    assert code == 0, output
    with caplog.at_level("INFO"):
        assert common.parse_generate_result(output.splitlines()[-1]) == result
    assert "Generated 30 rows (conditional) with m version 7 into /srv/synthetic/m/version=7/synthetic" in caplog.text
    with pytest.raises(ValueError, match="expected its result object"):
        common.parse_result_json(output.splitlines()[-1], "score")
    with pytest.raises(ValueError, match="not its result JSON: 'Traceback'"):
        common.parse_result_json("Traceback", "generate")


def test_the_score_dag_documents_the_layout_it_writes():
    """vae score --partition date=D writes OUT/scores/date=D and OUT/rejects/date=D (as the command
    above and the end-to-end run check), not OUT/date=D/scores."""
    text = (DAGS_FOLDER / "vae_score.py").read_text()
    assert "{output_root}/scores/date=YYYY-MM-DD/" in text and "{output_root}/rejects/date=YYYY-MM-DD/" in text
    assert "{output_root}/date=" not in text and "outputs date=YYYY-MM-DD/" not in text


def test_the_day_is_the_param_else_the_logical_date_else_the_trigger_day(common):
    from datetime import datetime

    triggered = datetime(2026, 3, 4, 12, 30)
    assert common.run_day({"date": "2026-03-01"}, DAY, triggered) == "2026-03-01"
    assert common.run_day({"date": None}, DAY, triggered) == DAY
    assert common.run_day({}, None, triggered) == "2026-03-04"
    with pytest.raises(ValueError, match="param 'date'"):
        common.run_day({}, None, None)


def test_day_input_is_the_date_partition(common, tmp_path):
    assert common.day_input("digits", DAY) == ("digits", "digits")
    day = tmp_path / f"date={DAY}"
    assert common.day_input(str(tmp_path), DAY) == (str(day), None)  # missing
    day.mkdir()
    assert common.day_input(str(tmp_path), DAY) == (str(day), None)  # empty
    (day / "part-0.parquet").write_bytes(b"")
    assert common.day_input(str(tmp_path), DAY) == (str(day), str(day))
    assert common.day_input("gs://bucket/in/", DAY) == (f"gs://bucket/in/date={DAY}",) * 2


def test_generate_command_follows_the_model_kind(common):
    variables = {"synthetic_root": "/srv/synthetic"}.get
    conditional = common.generate_command({"model_name": "m", "version": "7", "conditional": True}, {}, variables)
    assert (
        "generate --model models:/m/7 --method conditional --per-label 100 --output /srv/synthetic/m/version=7 --seed 0"
    ) in conditional
    plain = common.generate_command({"model_name": "m", "version": "7", "conditional": False}, {}, variables)
    assert "--method prior --n 1000" in plain


def test_augment_uses_the_latest_promoted_event(common):
    events = [
        {"model_name": "m", "version": "1", "promoted": True},
        {"model_name": "m", "version": "2", "promoted": True},
        {"model_name": "m", "version": "3", "promoted": False},
    ]
    assert common.latest_promoted(events)["version"] == "2"
    assert common.latest_promoted(events[2:]) is None
    assert common.latest_promoted([]) is None


# ---------------------------------------------------------------------------------- airflow dags test


@pytest.mark.slow
def test_score_skips_a_day_without_input(airflow_db, tmp_path):
    result = dags_test(airflow_db, "vae_score", "2026-02-01", {"input_root": str(tmp_path / "incoming")})
    assert result.returncode == 0, log_of(result)
    assert "No input for 2026-02-01" in log_of(result)
    assert task_states(airflow_db, "vae_score", "2026-02-01") == dict.fromkeys(SCORE_TASKS, "skipped")


@pytest.mark.slow
def test_augment_skips_without_a_promoted_model(airflow_db):
    result = dags_test(airflow_db, "vae_augment", "2026-02-02")
    assert result.returncode == 0, log_of(result)
    assert "No promoted version among 0 model event(s)" in log_of(result)
    assert task_states(airflow_db, "vae_augment", "2026-02-02") == {"choose_model": "skipped", "generate": "skipped"}


@pytest.mark.slow
def test_a_failing_command_fails_the_task_and_shows_its_output(airflow_db):
    events_before = model_events(airflow_db)
    result = dags_test(airflow_db, "vae_retrain", "2026-02-03", {"train_args": "--likelihood poisson"})
    assert result.returncode != 0
    assert "Invalid value for '--likelihood': 'poisson'" in log_of(result)  # vae's own stderr, in the task log
    assert "Bash command failed" in log_of(result)
    assert task_states(airflow_db, "vae_retrain", "2026-02-03") == {
        "train": "failed",
        "publish_model": "upstream_failed",
    }
    assert model_events(airflow_db) == events_before  # no model event from a failed run
