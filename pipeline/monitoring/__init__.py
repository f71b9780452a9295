"""Monitoring of scoring runs: one row per committed run in ``OUTPUT/monitoring/`` (Parquet).

Each row records the run (time, model and version, rows read, scored and rejected), its flagged
rate beside the target false positive rate and the rate's acceptance bound, quantiles of the
calibrated score, and the drift of that score from the model's calibration scores; the row is also
logged to MLflow. A flagged rate far outside its bound is the cheapest drift alarm there is.

    summary = score_dataset(options)
    record_scoring_run(summary, output=options.output, partition=options.partition,
                       target_fpr=options.fpr, model=registry.pin(options.model, options.work_dir))

Modules, one job each: :mod:`~pipeline.monitoring.statistics` (the bound, the drift statistic,
quantiles, and why these), :mod:`~pipeline.monitoring.row` (the columns, the status),
:mod:`~pipeline.monitoring.scores` (reading a committed run back), :mod:`~pipeline.monitoring.store`
(the dataset), :mod:`~pipeline.monitoring.record` (a scoring run's row),
:mod:`~pipeline.monitoring.shadow` (a challenger's flags against the champion's),
:mod:`~pipeline.monitoring.tracking` (MLflow), :mod:`~pipeline.monitoring.trend` and
:mod:`~pipeline.monitoring.plot` (what ``vae monitor`` prints and draws).
"""

from pipeline.monitoring.record import record_scoring_run
from pipeline.monitoring.row import MONITORING_SCHEMA, judge
from pipeline.monitoring.shadow import record_shadow
from pipeline.monitoring.store import MONITORING, monitoring_path, read_rows

__all__ = [
    "MONITORING",
    "MONITORING_SCHEMA",
    "judge",
    "monitoring_path",
    "read_rows",
    "record_scoring_run",
    "record_shadow",
]
