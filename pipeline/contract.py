"""What a scheduler may rely on from ``vae``: its exit codes and the keys of its result JSON.

Standard library only (and nothing else of the project), so the Airflow DAGs import it at parse
time without TensorFlow, Beam or MLflow; the commands import the same names, so the two sides
cannot drift apart.
"""

from __future__ import annotations

#: The command did what it was asked.
OK = 0
#: The command failed: bad input, a guard (``vae score --max-reject-rate``), a model that is not there.
FAILED = 1
#: The command line itself was wrong (click's usage errors).
USAGE = 2
#: ``vae monitor --check``: the selected scoring run is out of its bounds (``--on-alarm fail``).
CHECK_FAILED = 3
#: ``vae --on-failure skip``: any failure exits with this instead (Airflow's default skip code, so a
#: task that may fail without failing its run, such as a challenger's shadow, shows as skipped).
SKIPPED = 99
#: What coreutils ``timeout`` exits with when it ends a command at its limit.
TIMED_OUT = 124
#: Signals that end a command: SIGABRT and SIGSEGV (a native crash), SIGKILL (``timeout``'s second
#: try, the kernel's OOM killer), SIGTERM.
SIGNALS = (6, 9, 11, 15)
#: A command ended by one of :data:`SIGNALS`, both ways it is reported: -N where bash hands the
#: process over to the command (a task of one simple command, as the DAGs run, seen by Python's
#: ``subprocess``; ``timeout`` passes the signal on), 128 + N where a shell waited for it.
SIGNALLED = (*(-signal for signal in SIGNALS), *(128 + signal for signal in SIGNALS))

#: ``vae monitor --check --on-alarm warn`` exits 0 and prints this, then the alarm, as its last line.
MONITOR_ALARM_PREFIX = "vae-monitor-alarm: "
ON_ALARM = ("fail", "warn")
ON_FAILURE = ("fail", "skip")

#: ``--result-json -`` prints the result as the last line of stdout instead of writing a file.
RESULT_TO_STDOUT = "-"

#: The keys of ``vae score --result-json``, in order (null where a run did not produce one).
SCORE_KEYS = (
    "command",
    "status",
    "reason",
    "model_name",
    "model_version",
    "input",
    "output",
    "partition",
    "run_id",
    "rows_read",
    "rows_scored",
    "rows_rejected",
    "reject_rate",
    "anomalies",
    "anomaly_rate",
    "threshold",
    "target_fpr",
    "scores_path",
    "rejects_path",
    "manifest_path",
)
#: What a scheduler keeps of a score result: the counts of the run and its model, not its paths.
SCORE_COUNT_KEYS = tuple(
    key
    for key in SCORE_KEYS
    if key not in ("command", "status", "reason", "input", "output", "target_fpr") and not key.endswith("_path")
)
#: The keys of ``vae generate --result-json``.
GENERATE_KEYS = (
    "command",
    "status",
    "reason",
    "model_name",
    "model_version",
    "method",
    "rows",
    "output",
    "synthetic_path",
    "run_id",
    "manifest_path",
)
#: The keys of ``vae train --result-json``: the new model version and whether it was promoted.
TRAIN_KEYS = (
    "model_name",
    "version",
    "promoted",
    "run_id",
    "validation_neg_elbo",
    "holdout_neg_elbo",
    "holdout_fingerprint",
    "conditional",
)
