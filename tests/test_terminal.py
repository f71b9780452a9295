"""The terminal of the ``vae`` command: no framework noise, one log format (timed for scheduled
runs, plain for people), a traceback with ``-v``, progress as a bar or as log lines. The command
runs as users run it: the installed entry point, in a subprocess."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli.progress import Progress
from pipeline.logging_setup import PlainFormatter, TimedFormatter, quiet_native_stderr
from pipeline.steps import Step

VAE = str(Path(sys.executable).with_name("vae"))
# what TensorFlow, absl, CUDA, Beam and MLflow print by themselves
NOISE = re.compile(
    r"I0000|E0000|W0000|cuInit|oneDNN|apitools|absl::InitializeLog|cuda drivers|Successfully registered model"
    r"|Created version|Worker: severity|semi_persistent_directory|Discarding unparseable"
)
TIMED_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")
HEAVY = ("tensorflow", "keras", "apache_beam", "mlflow", "jax", "sklearn", "pandas")


def _vae(*args: str, env: dict[str, str] | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("VAE_LOG_FORMAT", "VAE_VERBOSE")}
    environment.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the command's own default, not the test session's
    return subprocess.run(
        [VAE, *args], capture_output=True, text=True, env=environment | (env or {}), timeout=timeout, check=False
    )


def _noise(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if NOISE.search(line)]


def test_the_command_imports_no_framework_before_logging_is_set_up():
    """The environment that TensorFlow and MLflow read once is set in the group callback, so no
    command module may import them (or Beam) at import time."""
    code = f"import sys, pipeline.cli.main; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
def test_user_error_is_one_line_and_a_traceback_with_verbose(tmp_path):
    """A ValueError a user can fix (a bad --partition, found once Beam's options are built) is one
    line; with -v its traceback comes first. Neither TensorFlow's start-up lines nor Beam's import
    warning (apitools) show by default; -v shows everything."""
    args = ["score", "--input", "digits:test", "--output", str(tmp_path / "out"), "--partition", "not-a-pair"]
    quiet = _vae("--work-dir", str(tmp_path), *args)
    assert quiet.returncode == 1, quiet.stderr
    assert "Error: --partition 'not-a-pair': expected KEY=VALUE" in quiet.stderr
    assert "Traceback" not in quiet.stderr
    assert _noise(quiet.stderr) == []
    assert quiet.stderr.strip().splitlines() == [
        "Error: --partition 'not-a-pair': expected KEY=VALUE, e.g. date=2026-11-20"
    ]

    verbose = _vae("--work-dir", str(tmp_path), "-v", *args)
    assert verbose.returncode == 1, verbose.stderr
    assert "Traceback (most recent call last)" in verbose.stderr
    assert "ValueError: --partition 'not-a-pair': expected KEY=VALUE" in verbose.stderr
    assert verbose.stderr.rstrip().splitlines()[-1].startswith("Error: --partition 'not-a-pair': expected KEY=VALUE")


@pytest.mark.slow
def test_a_model_name_the_registry_refuses_is_one_line_before_training(tmp_path):
    result = _vae("--work-dir", str(tmp_path), "train", "--epochs", "1", "--model-name", "a/b")
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: --model-name 'a/b': Invalid model name 'a/b'. Names cannot contain '/' or ':'."
    )
    assert "epoch" not in result.stderr.lower()


@pytest.mark.slow
def test_a_terminated_training_fails_its_mlflow_run_and_removes_its_spill_folder(tmp_path):
    """A scheduler's timeout sends SIGTERM: the run must not stay RUNNING, nor its files behind."""
    import signal
    import sqlite3
    import time

    environment = {k: v for k, v in os.environ.items() if k not in ("VAE_LOG_FORMAT", "VAE_VERBOSE")}
    args = ["--work-dir", str(tmp_path), "train", "--epochs", "3000", "--early-stopping", "0"]
    proc = subprocess.Popen([VAE, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=environment)
    query = (
        "select r.status, count(m.key) from runs r left join metrics m on m.run_uuid = r.run_uuid group by r.run_uuid"
    )
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:  # until the run logs its first epochs
            rows = []
            if (tmp_path / "mlflow.db").exists():
                try:
                    with sqlite3.connect(tmp_path / "mlflow.db") as db:
                        rows = db.execute(query).fetchall()
                except sqlite3.OperationalError:  # the tables are not there yet
                    pass
            if rows and rows[0][0] == "RUNNING" and rows[0][1] > 0:
                break
            time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        stderr = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        assert [row[0] for row in db.execute("select status from runs")] == ["FAILED"]
    assert not list(tmp_path.glob("spill-*"))


def test_log_format_choice_is_checked(tmp_path):
    result = _vae("--work-dir", str(tmp_path), "--log-format", "fancy", "report", "--help")
    assert result.returncode == 2
    assert "'fancy' is not one of 'auto', 'plain', 'timed'" in result.stderr


@pytest.mark.slow
def test_train_then_score_with_workers_print_only_their_own_lines(tmp_path):
    """``vae train`` (TensorFlow, MLflow) with the timed format that the DAGs set, then ``vae
    score`` with a worker process (Beam's SDK harness, TensorFlow again) in the plain format."""
    work = str(tmp_path / "work")
    timed = {"VAE_LOG_FORMAT": "timed"}
    # 2 cross-fitted folds: the folds' training is as quiet as the model's (tests/test_cross_fit.py covers 5)
    train = ("train", "--epochs", "1", "--model-name", "vae-quiet", "--calibration-folds", "2")
    trained = _vae("--work-dir", work, *train, env=timed)
    assert trained.returncode == 0, trained.stderr
    assert "registered:          vae-quiet version 1" in trained.stdout
    assert _noise(trained.stderr) == []
    lines = [line for line in trained.stderr.splitlines() if line.strip()]
    assert lines and all(TIMED_LINE.match(line) for line in lines), lines
    assert any(re.search(r" INFO training\.train: training vae-quiet on digits", line) for line in lines)

    scored = _vae(
        "--work-dir", work, "--log-format", "plain", "score", "--model", "models:/vae-quiet@champion",
        "--input", "digits:holdout", "--output", str(tmp_path / "out"),
        "--direct-running-mode", "multi_processing", "--direct-num-workers", "1",
    )  # fmt: skip
    assert scored.returncode == 0, scored.stderr
    assert _noise(scored.stderr) == []
    assert not any(TIMED_LINE.match(line) for line in scored.stderr.splitlines())
    # the worker's own line, from another process, in the same plain format
    worker = [line for line in scored.stderr.splitlines() if line.startswith("shard 1/1 done:")]
    assert len(worker) == 1, scored.stderr
    assert "scored:     265" in scored.stdout


def test_timed_format_is_utc_iso_with_level_and_logger():
    record = logging.LogRecord("pipeline.beam.score_job", logging.INFO, __file__, 1, "shard %d/%d", (1, 3), None)
    record.created = 1_800_000_000.25  # 2027-01-15T08:00:00.250Z
    assert TimedFormatter().format(record) == "2027-01-15T08:00:00.250Z INFO pipeline.beam.score_job: shard 1/3"
    assert PlainFormatter().format(record) == "shard 1/3"
    record.levelno, record.levelname = logging.WARNING, "WARNING"
    assert PlainFormatter().format(record) == "warning: shard 1/3"


def test_native_start_up_lines_are_dropped_and_the_rest_kept(capfd):
    """What C++ code writes to descriptor 2 while TensorFlow loads: its absl lines go, anything else
    (a real error message) is passed on."""
    with quiet_native_stderr():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 00:00:1795285010.948702   23682 cudart_stub.cc:31] Could not find cuda drivers\n")
        os.write(2, b"W0000 00:00:1795285010.948702   23682 cpu_feature_guard.cc:227] optimized\n")
        os.write(2, b"E0000 00:00:1795285011.1   23682 cuda_fft.cc:467] Unable to register cuFFT factory\n")
        os.write(2, b"E0000 00:00:1795285011.1   23682 loader.cc:12] libfoo.so: cannot open shared object\n")
        os.write(2, b"a plain line\n")
    err = capfd.readouterr().err
    assert err.splitlines() == [
        "E0000 00:00:1795285011.1   23682 loader.cc:12] libfoo.so: cannot open shared object",
        "a plain line",
    ]


def test_progress_off_a_terminal_logs_one_line_per_step(caplog):
    with caplog.at_level(logging.INFO, logger="pipeline.cli.progress"), Progress("evaluate", bar=False) as progress:
        progress(Step(0, 2, "digits seed 0 held-out 0", finished=False))  # a started step: no line
        progress(Step(1, 2, "digits seed 0 held-out 0: vae AUROC 0.910"))
        progress(Step(2, 2, "digits seed 0 held-out 1: vae AUROC 0.870"))
    with caplog.at_level(logging.INFO, logger="pipeline.cli.progress"), Progress("shards", bar=False) as progress:
        progress.advance("shard a")
        progress.advance("shard b")
    assert caplog.messages == [
        "evaluate [1/2] digits seed 0 held-out 0: vae AUROC 0.910",
        "evaluate [2/2] digits seed 0 held-out 1: vae AUROC 0.870",
        "shards [1] shard a",
        "shards [2] shard b",
    ]


def test_progress_at_a_terminal_draws_a_bar_on_stderr(capsys):
    with Progress("evaluate", unit="task", bar=True) as progress:
        progress(Step(1, 4, "digits seed 0 held-out 0: vae AUROC 0.910"))
        progress(Step(3, 4, "digits seed 0 held-out 2: vae AUROC 0.800"))
        assert (progress._bar.n, progress._bar.total) == (3, 4)
        assert progress._bar.postfix == "digits seed 0 held-out 2: vae AUROC 0.800"
        progress(Step(3, 4, "digits seed 0 held-out 3", finished=False))  # started: the note, not the count
        assert (progress._bar.n, progress._bar.postfix) == (3, "digits seed 0 held-out 3")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "evaluate" in captured.err and "3/4" in captured.err and "held-out 3" in captured.err


def test_a_scoring_run_on_worker_threads_moves_a_bar_by_its_shards(trained_plain, tmp_path, capsys):
    """The DirectRunner's default runs shards on threads of this process: the steps their "shard k/N
    done" log records carry advance the bar that `vae score` draws at a terminal, one step per shard."""
    from pipeline.beam.options import ScoreOptions
    from pipeline.beam.score_job import score_dataset
    from pipeline.cli.progress import shard_progress

    options = ScoreOptions.of(
        model=f"models:/{trained_plain.model_name}/{trained_plain.version}",
        input="digits:holdout",
        output=str(tmp_path / "out"),
        shard_rows=100,  # 265 rows: 3 shards
        direct_running_mode="multi_threading",
        direct_num_workers=2,
    )
    with shard_progress("score", "pipeline.beam.score_job", bar=True) as progress:
        summary = score_dataset(options)
        assert (progress._bar.n, progress._bar.total) == (3, 3)
    assert summary.rows_scored == 265
    assert "score" in capsys.readouterr().err
    # off a terminal the lines are the progress: no bar and no handler left behind
    with shard_progress("score", "pipeline.beam.score_job", bar=False) as progress:
        assert progress._bar is None
    assert not [h for h in logging.getLogger("pipeline.beam.score_job").handlers if type(h).__name__ == "_ShardLines"]


# --- a command that answers at once (issue 21) --------------------------------------------------

CHECK_BEFORE_IMPORTS = """
import sys
from click.testing import CliRunner
from pipeline.cli.main import main
result = CliRunner().invoke(main, sys.argv[1:])
print(result.exit_code, [m for m in ("tensorflow", "keras", "mlflow", "apache_beam") if m in sys.modules])
print(result.output.strip().splitlines()[-1])
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["score", "--model", "models:/m@champion", "--input", "no/such/path", "--output", "out"],
        ["train", "--data", "no/such/path"],
        ["generate", "--model", "no/such/model.keras", "--method", "prior", "--output", "out"],
        ["score", "--model", "models:/m/not-a-version", "--input", "digits", "--output", "out"],
        ["score", "--model", "models:/m@champion", "--output", "out"],
    ],
)
def test_a_bad_path_or_option_is_an_error_before_tensorflow_or_mlflow_is_imported(argv):
    run = subprocess.run(
        [sys.executable, "-c", CHECK_BEFORE_IMPORTS, *argv], capture_output=True, text=True, check=True
    )
    status, last = run.stdout.strip().splitlines()
    assert status in ("1 []", "2 []"), run.stdout
    assert last.startswith("Error: ")


def test_score_without_input_is_refused_and_names_the_demo():
    run = _vae("score", "--output", "out")
    assert run.returncode == 2
    assert "--input is required for scoring" in run.stderr and "`vae run`" in run.stderr


def test_version_and_shell_completion():
    from importlib.metadata import version

    run = _vae("--version")
    assert run.returncode == 0 and run.stdout.strip() == f"vae {version('vae-pipeline')}"
    completion = _vae(env={"_VAE_COMPLETE": "bash_source"})
    assert completion.returncode == 0 and "_vae_completion" in completion.stdout
