"""The asset-triggered path with a real Airflow 3, and the daily DAG's guards, checks and shadow.

``vae_augment`` is scheduled on the model Asset. Here a real API server (the execution API the
LocalExecutor's tasks talk to), DAG processor and scheduler run as subprocesses over a fresh
``AIRFLOW_HOME`` with a SQLite metadata database: the test triggers ``vae_retrain`` (a conditional
VAE on the digits, one epoch), which promotes the first version and records the Asset event, and
waits for the scheduler to start ``vae_augment`` from that event (run type ``asset_triggered``) and
for its synthetic set. Then, in the same home with the services stopped, ``airflow dags test`` runs
``vae_score`` on a day that fails ``vae score``'s guards, on a good day (the default input and
output) with a challenger scored in shadow, and on a day out of the monitoring bounds, and
``vae_augment`` by hand for a named version. (``tests/test_dags.py`` runs the DAGs' skip and
failure paths with ``dags test`` in a home of its own.)
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.test_dags import AIRFLOW, MODEL, airflow_test_env, dags_test, log_of, run_python, task_states

pytestmark = pytest.mark.slow

PER_LABEL = 3  # conditional samples per label: 30 rows over the ten digits
WAIT_FOR_AUGMENT_S = 480  # from the trigger; about 4 minutes on 2 busy cores
SERVICES = {
    "api-server": ["api-server", "--apps", "execution", "--workers", "1", "--host", "127.0.0.1", "--port"],
    "dag-processor": ["dag-processor"],
    "scheduler": ["scheduler"],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def live_env(tmp_path_factory) -> dict[str, str]:
    """A fresh home (its own metadata database and MLflow store: the first version is promoted) for a
    real scheduler: LocalExecutor with two task slots, DAGs unpaused when first parsed, no schedules
    (``none``) so that only the triggered and asset-triggered runs happen, free ports, one JWT secret
    shared by the scheduler and the API server."""
    home = tmp_path_factory.mktemp("airflow_live")
    port = free_port()
    env = airflow_test_env(home) | {
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        "VAE_RETRAIN_SCHEDULE": "none",
        "VAE_SCORE_SCHEDULE": "none",
        "AIRFLOW_VAR_VAE_SYNTHETIC_PER_LABEL": str(PER_LABEL),
    }
    migrated = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    return env


def metadata(env: dict[str, str], query: str, *args: Any) -> list[tuple]:
    """Rows from the metadata database, read with sqlite3 while the services write to it."""
    db = Path(env["AIRFLOW_HOME"]) / "airflow.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as connection:
        return connection.execute(query, args).fetchall()


def runs(env: dict[str, str], dag_id: str) -> list[dict[str, str]]:
    rows = metadata(env, "SELECT run_id, run_type, state FROM dag_run WHERE dag_id = ? ORDER BY id", dag_id)
    return [{"run_id": r, "run_type": t, "state": s} for r, t, s in rows]


def start(env: dict[str, str], name: str) -> subprocess.Popen:
    args = [AIRFLOW, *SERVICES[name]]
    if name == "api-server":
        args.append(env["AIRFLOW__API__PORT"])
    with open(Path(env["AIRFLOW_HOME"]) / f"{name}.out", "w") as log:  # the service keeps its own copy
        return subprocess.Popen(
            args, env=env, cwd=env["AIRFLOW_HOME"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(*processes: subprocess.Popen) -> None:
    """SIGTERM to the process groups this test started (the scheduler's task workers included), all
    at once, then waits for each (SIGKILL after a minute)."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        os.killpg(process.pid, signal.SIGTERM)
    for process in running:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def log_events(path: Path) -> list[str]:
    """The messages of a task log (JSON lines)."""
    events = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            events.append(str(json.loads(line).get("event", line)))
        except (json.JSONDecodeError, AttributeError):
            events.append(line)
    return events


def diagnostics(env: dict[str, str]) -> str:
    """The tails of the scheduler's and the DAG processor's output and of every task log, for a
    failure message."""
    home = Path(env["AIRFLOW_HOME"])
    parts = [
        f"--- {name}.out\n" + (home / f"{name}.out").read_text(errors="replace")[-2000:]
        for name in ("dag-processor", "scheduler")
        if (home / f"{name}.out").exists()
    ]
    parts += [
        f"--- {p.relative_to(home / 'logs')}\n" + "\n".join(log_events(p)[-25:])
        for p in sorted((home / "logs").glob("dag_id=*/run_id=*/task_id=*/*.log"))
    ]
    return "\n".join(parts)


def wait_for(what: str, check, env: dict[str, str], timeout_s: float, processes: dict[str, subprocess.Popen]):
    """Polls ``check()`` every 3 s until it returns something true; fails with the logs when the time
    is up or a service died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        dead = {name: p.returncode for name, p in processes.items() if p.poll() is not None}
        assert not dead, f"{what}: services exited {dead}\n{diagnostics(env)}"
        time.sleep(3)
    pytest.fail(f"{what}: not within {timeout_s:.0f} s\n{diagnostics(env)}")


def task_log(env: dict[str, str], dag_id: str, run_id: str, task_id: str) -> str:
    folder = Path(env["AIRFLOW_HOME"]) / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
    return "\n".join(event for p in sorted(folder.glob("attempt=*.log")) for event in log_events(p))


@pytest.fixture(scope="module")
def asset_flow(live_env: dict[str, str]) -> dict[str, Any]:
    """Runs the services, triggers ``vae_retrain`` and waits for the ``vae_augment`` run its model
    event starts; stops the services and returns the runs."""
    env = live_env
    processes: dict[str, subprocess.Popen] = {}
    try:
        for name in SERVICES:
            processes[name] = start(env, name)
        parsed = "SELECT dag_id FROM dag WHERE is_paused = 0 AND dag_id IN ('vae_retrain', 'vae_augment')"
        wait_for("both DAGs parsed and unpaused", lambda: len(metadata(env, parsed)) == 2, env, 180, processes)

        conf = {"conditional": True, "epochs": 1}
        trigger = subprocess.run(
            [AIRFLOW, "dags", "trigger", "vae_retrain", "-c", json.dumps(conf)], env=env, capture_output=True, text=True
        )
        assert trigger.returncode == 0, log_of(trigger)

        def augment_done() -> dict[str, str] | None:
            retrain = runs(env, "vae_retrain")
            assert not any(r["state"] == "failed" for r in retrain), f"{retrain}\n{diagnostics(env)}"
            augment = [r for r in runs(env, "vae_augment") if r["state"] in ("success", "failed")]
            return augment[0] if augment else None

        wait_for("a finished vae_augment run", augment_done, env, WAIT_FOR_AUGMENT_S, processes)
        # the run is finished: give the scheduler a beat to create any other (it must not)
        time.sleep(5)
        return {"retrain": runs(env, "vae_retrain"), "augment": runs(env, "vae_augment")}
    finally:
        stop(*reversed(processes.values()))


def test_a_promoted_model_starts_augment_through_the_scheduler(live_env, asset_flow):
    from mlflow import MlflowClient

    env = live_env
    assert len(asset_flow["retrain"]) == 1
    retrain = asset_flow["retrain"][0]
    assert (retrain["run_type"], retrain["state"]) == ("manual", "success")
    assert len(asset_flow["augment"]) == 1, asset_flow["augment"]  # one event, one run
    augment = asset_flow["augment"][0]
    assert augment["run_type"] == "asset_triggered", augment
    assert augment["state"] == "success", diagnostics(env)

    # the run consumed the event vae_retrain's publish_model recorded, for the version now @champion
    consumed = run_python(
        env,
        f"""
        import json
        from sqlalchemy import select
        from airflow.models.dagrun import DagRun
        from airflow.utils.session import create_session

        with create_session() as session:
            run = session.scalars(select(DagRun).where(DagRun.run_id == {augment["run_id"]!r})).one()
            print(json.dumps([
                {{"uri": e.asset.uri, "dag": e.source_dag_id, "task": e.source_task_id, "run": e.source_run_id,
                  "extra": e.extra}}
                for e in run.consumed_asset_events
            ]))
        """,
    )
    client = MlflowClient(tracking_uri=env["AIRFLOW_VAR_VAE_MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias(MODEL, "champion")
    # one run, one version: registered and promoted (the first has no champion to beat)
    assert [v.version for v in client.search_model_versions(f"name='{MODEL}'")] == [champion.version]
    assert len(consumed) == 1
    event = consumed[0]
    assert (event["uri"], event["dag"], event["task"], event["run"]) == (
        "vae://models/",
        "vae_retrain",
        "publish_model",
        retrain["run_id"],
    )
    assert {k: event["extra"][k] for k in ("model_name", "version", "promoted", "conditional")} == {
        "model_name": MODEL,
        "version": str(champion.version),
        "promoted": True,
        "conditional": True,
    }

    states = metadata(env, "SELECT task_id, state FROM task_instance WHERE run_id = ?", augment["run_id"])
    assert dict(states) == {"choose_model": "success", "generate": "success"}
    assert f"New champion: {MODEL} version {champion.version}" in task_log(
        env, "vae_augment", augment["run_id"], "choose_model"
    )
    generate_log = task_log(env, "vae_augment", augment["run_id"], "generate")
    assert f"--method conditional --per-label {PER_LABEL}" in generate_log
    assert f"Generated {10 * PER_LABEL} rows (conditional)" in generate_log

    import pyarrow.dataset as ds

    version = Path(env["AIRFLOW_VAR_VAE_WORK_DIR"]) / "synthetic" / MODEL / f"version={champion.version}"
    table = ds.dataset(version / "synthetic" / "conditional", format="parquet").to_table()
    assert table.num_rows == 10 * PER_LABEL
    assert sorted(set(table.column("label").to_pylist())) == list(range(10))


# ----------------------------------------------------- vae_score after it, in the same home (dags test)


def test_a_day_without_pixels_fails_the_score_task_and_replaces_nothing(live_env, asset_flow, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    day = "2026-02-10"
    incoming = tmp_path / "incoming" / f"date={day}"
    incoming.mkdir(parents=True)
    pq.write_table(pa.table({"label": [1, 2, 3], "image": [b"x", b"y", b"z"]}), incoming / "part-0.parquet")
    output_root = tmp_path / "daily"

    result = dags_test(
        live_env, "vae_score", day, {"input_root": str(tmp_path / "incoming"), "output_root": str(output_root)}
    )
    log = log_of(result)
    assert result.returncode != 0, log
    states = task_states(live_env, "vae_score", day)
    # shadow_agreement waits on the failed champion and on the skipped shadow: whichever Airflow sees first
    assert states.pop("shadow_agreement") in ("upstream_failed", "skipped")
    assert states == {
        "find_input": "success",
        "score": "failed",
        "score_result": "upstream_failed",
        "monitor": "upstream_failed",
        "shadow_score": "skipped",  # no challenger_alias
    }
    assert "non-zero exit code 1" in log  # Airflow's own line for a failed command
    start = log.index('{"command": "score"')  # --result-json -: the outcome, printed on failure too
    outcome, length = json.JSONDecoder().raw_decode(log[start:])
    assert (outcome["command"], outcome["status"], outcome["rows_read"], outcome["rows_scored"]) == (
        "score",
        "failed",
        3,
        0,
    )
    rest = log[:start] + log[start + length :]
    assert "Error: " in rest and outcome["reason"] in rest  # vae's own message, in the task log
    assert Path(outcome["rejects_path"]).is_dir() and str(output_root / "_failed") in outcome["rejects_path"]
    assert not (output_root / "scores" / f"date={day}").exists()  # a guard replaces nothing
    assert not (output_root / "rejects" / f"date={day}").exists()


def test_a_good_day_is_scored_checked_and_shadowed_by_the_challenger(live_env, asset_flow, tmp_path):
    import pyarrow.dataset as ds
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=live_env["AIRFLOW_VAR_VAE_MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias(MODEL, "champion")
    client.set_registered_model_alias(MODEL, "challenger", champion.version)  # the same model: full agreement

    day = "2026-02-11"
    output_root = Path(live_env["AIRFLOW_VAR_VAE_WORK_DIR"]) / "daily"  # the default: input_root too (the digits)
    # a one-epoch model on the digits it was trained on may well be out of bounds: warn, not fail
    conf = {"challenger_alias": "challenger", "monitor_on_alarm": "warn"}
    result = dags_test(live_env, "vae_score", day, conf)
    log = log_of(result)
    assert result.returncode == 0, log
    assert task_states(live_env, "vae_score", day) == dict.fromkeys(
        ("find_input", "score", "score_result", "monitor", "shadow_score", "shadow_agreement"), "success"
    )
    assert f"score --model models:/{MODEL}@challenger --input digits --output {output_root}/shadow" in log
    assert f"monitor {output_root} --check --partition date={day}" in log
    assert f"monitor {output_root} --shadow {output_root}/shadow --partition date={day}" in log
    assert f"Scored date={day} with {MODEL} version {champion.version}: 1797 rows read, 1797 scored" in log

    for root in (output_root, output_root / "shadow"):
        assert (root / "rejects" / f"date={day}").is_dir()
        scores = ds.dataset(root / "scores" / f"date={day}", format="parquet").to_table()
        assert scores.num_rows == 1797
        assert set(scores.column("model_version").to_pylist()) == {str(champion.version)}
    rows = ds.dataset(output_root / "monitoring", format="parquet").to_table().to_pylist()
    rows = [row for row in rows if row["partition"] == f"date={day}"]
    assert sorted(row["kind"] for row in rows) == ["score", "shadow"]  # the champion's run, the agreement
    shadow = next(row for row in rows if row["kind"] == "shadow")
    assert (shadow["model_version"], shadow["shadow_model_version"]) == (str(champion.version),) * 2
    assert shadow["shadow_output"] == str(output_root / "shadow")
    assert shadow["agreement"] >= 0.99  # one model scored twice
    assert "agrees with" in log


def test_a_day_out_of_the_monitoring_bounds_fails_the_run(live_env, asset_flow, tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    day = "2026-02-12"
    incoming = tmp_path / "incoming" / f"date={day}"
    incoming.mkdir(parents=True)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 2, size=(200, 64)).astype("float32")  # salt and pepper, 8x8
    labels = rng.integers(0, 10, size=200)  # the model is conditional
    pq.write_table(pa.table({"pixels": list(noise), "label": labels}), incoming / "part-0.parquet")
    conf = {"input_root": str(tmp_path / "incoming"), "output_root": str(tmp_path / "daily")}  # monitor_on_alarm: fail

    result = dags_test(live_env, "vae_score", day, conf)
    log = log_of(result)
    assert result.returncode != 0, log
    states = task_states(live_env, "vae_score", day)
    assert {task: states[task] for task in ("score", "score_result", "monitor")} == {
        "score": "success",  # the day is scored and committed; the check fails the run after it
        "score_result": "success",
        "monitor": "failed",
    }
    assert f"--check --partition date={day}" in log and "--on-alarm fail" in log
    assert "out of bounds: " in log and "non-zero exit code 3" in log  # vae monitor's reason and its exit code
    assert (tmp_path / "daily" / "scores" / f"date={day}").is_dir()


def test_augment_by_hand_for_a_named_version(live_env, asset_flow):
    """``vae_augment`` run by hand (``dags test``) with ``model_name`` and ``model_version``: the prior
    set for that version (a manual run is plain unless ``conditional`` says otherwise), not the event's."""
    import pyarrow.parquet as pq
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=live_env["AIRFLOW_VAR_VAE_MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias(MODEL, "champion")
    day = "2026-02-13"
    result = dags_test(live_env, "vae_augment", day, {"model_name": MODEL, "model_version": str(champion.version)})
    log = log_of(result)
    assert result.returncode == 0, log
    assert task_states(live_env, "vae_augment", day) == {"choose_model": "success", "generate": "success"}
    assert f"Manual run: {MODEL} version {champion.version}" in log
    synthetic = Path(live_env["AIRFLOW_VAR_VAE_WORK_DIR"]) / "synthetic" / MODEL / f"version={champion.version}"
    files = sorted((synthetic / "synthetic" / "prior").rglob("*.parquet"))
    assert sum(pq.read_metadata(f).num_rows for f in files) == 32  # AIRFLOW_VAR_VAE_SYNTHETIC_N
    assert f"Generated 32 rows (prior) with {MODEL} version {champion.version}" in log
