"""The portable path that the Flink and Spark runners use, offline: ``vae score`` through Beam's
``PortableRunner`` against Beam's own Python job service (the Job API) with an external worker pool
(the Fn API). The job service runs the pipeline; the pool starts SDK worker processes that unpickle
the DoFns, import this package and load the model themselves: nothing is shared with the launcher's
process but the files.

    python -m apache_beam.runners.portability.local_job_service_main --port 0 --port_file F
    python -m apache_beam.runners.worker.worker_pool_main --service_port M
    vae score ... --runner PortableRunner -- --job_endpoint localhost:N \\
        --environment_type EXTERNAL --environment_config localhost:M
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from pipeline.beam.options import ScoreOptions
from pipeline.beam.score_job import score_dataset

ROOT = Path(__file__).resolve().parent.parent
WHEN = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the service exited with {process.returncode}"
        with socket.socket() as probe:
            if probe.connect_ex(("localhost", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port} after {seconds} s")


def _stop(process: subprocess.Popen) -> None:
    """Stops a service this test started and the worker processes it started."""
    import psutil

    if process.poll() is None:
        children = psutil.Process(process.pid).children(recursive=True)
        process.terminate()
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.terminate()
        psutil.wait_procs(children, timeout=10)
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def beam_services(tmp_path_factory):
    """Beam's job service and an external worker pool, in their own processes; yields their ports and
    the pool's log. The pool starts workers as ``python -c ...``: ``python`` must be this environment's."""
    folder = tmp_path_factory.mktemp("beam-services")
    env = {
        **os.environ,
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    port_file = folder / "job.port"
    job_log, pool_log = folder / "job_service.log", folder / "worker_pool.log"
    module = "apache_beam.runners.portability.local_job_service_main"
    command = [sys.executable, "-m", module, "--port", "0", "--port_file", str(port_file)]
    with open(job_log, "w") as out:
        job_service = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    pool_port = _free_port()
    command = [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", "--service_port", str(pool_port)]
    with open(pool_log, "w") as out:
        pool = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not port_file.exists():
            assert job_service.poll() is None and time.monotonic() < deadline, job_log.read_text()
            time.sleep(0.2)
        _wait_for_port(pool_port, pool)
        yield int(port_file.read_text()), pool_port, pool_log
    finally:
        _stop(pool)
        _stop(job_service)


def read(path) -> pa.Table:
    return ds.dataset(path, format="parquet").to_table().sort_by("example_id")


@pytest.mark.slow
def test_score_through_the_job_api_and_an_external_worker_pool(beam_services, trained_plain, tmp_path):
    job_port, pool_port, pool_log = beam_services
    model = f"models:/{trained_plain.model_name}/{trained_plain.version}"
    portable = [
        f"--job_endpoint=localhost:{job_port}",
        "--environment_type=EXTERNAL",
        f"--environment_config=localhost:{pool_port}",
    ]
    common = {"model": model, "input": "digits:holdout", "shard_rows": 100, "batch_size": 64}
    options = ScoreOptions.of(portable, output=tmp_path / "portable", runner="PortableRunner", **common)
    summary = score_dataset(options, scored_at=WHEN)
    direct = score_dataset(
        ScoreOptions.of(output=tmp_path / "direct", direct_running_mode="in_memory", direct_num_workers=1, **common),
        scored_at=WHEN,
    )
    assert summary.rows_read == summary.rows_scored == direct.rows_scored > 0 and summary.rows_rejected == 0
    assert "Starting worker with command" in pool_log.read_text()  # the pool's own processes did the work
    for dataset in ("scores", "rejects"):  # both sinks, the same rows
        a, b = read(tmp_path / "direct" / dataset), read(tmp_path / "portable" / dataset)
        assert a.schema.equals(b.schema) and a.num_rows == b.num_rows, dataset
        for name in a.column_names:
            if pa.types.is_floating(a.schema.field(name).type):
                np.testing.assert_allclose(b[name].to_numpy(), a[name].to_numpy(), rtol=1e-6, err_msg=name)
            else:
                assert b[name].equals(a[name]), name
