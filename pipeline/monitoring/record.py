""":func:`record_scoring_run`: the monitoring row of one committed scoring run."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np

from pipeline.monitoring import statistics, tracking
from pipeline.monitoring.row import SCORE, empty_row, judge
from pipeline.monitoring.scores import read_run_scores
from pipeline.monitoring.store import append_row
from pipeline.outputs.atomic import output_folder


class ScoringRun(Protocol):
    """What a scoring run's monitoring row needs of its summary (``pipeline.beam.score_job.ScoreSummary``,
    a frozen dataclass; monitoring never imports the Beam job). ``status``, ``reason``,
    ``calibrated_score``, ``target_fpr`` and ``run_id`` are read when present."""

    @property
    def rows_scored(self) -> int: ...
    @property
    def rows_read(self) -> int: ...
    @property
    def rows_rejected(self) -> int: ...
    @property
    def threshold(self) -> float | None: ...
    @property
    def model_name(self) -> str: ...
    @property
    def model_version(self) -> str: ...
    @property
    def input(self) -> str: ...


log = logging.getLogger(__name__)


def model_calibration(model: Any) -> dict[str, Any] | None:
    """The calibration stored with the model (threshold, target rate, the calibration scores), or
    None. ``model``: a pinned :class:`training.registry.ModelRef` (loaded through its per-process
    cache, so inside ``vae score`` this costs nothing), a loaded model, or None."""
    if model is None:
        return None
    loaded = model.load() if callable(getattr(model, "load", None)) else model
    calibration = getattr(loaded, "calibration", None)
    return calibration or None


def _score_column(calibration: dict[str, Any] | None, summary: ScoringRun) -> str:
    """The scores column the run was thresholded on (the one its calibration names)."""
    if calibration and "score" not in calibration:
        return "neg_elbo"  # calibrated before the score was named (scoring.calibration.LEGACY_SCORE)
    return (calibration or {}).get("score") or getattr(summary, "calibrated_score", None) or "anomaly_score"


def _target_fpr(given: float | None, summary: ScoringRun, calibration: dict[str, Any] | None) -> float | None:
    """The rate the run was thresholded at: ``given``, else the summary's, else the calibration's."""
    if given is None:
        given = getattr(summary, "target_fpr", None)
    if given is None and calibration:
        given = float(calibration["target_fpr"])
    return given


def _checks(
    rows_scored: int,
    scores: np.ndarray,
    reference: np.ndarray | None,
    threshold: float,
    target_fpr: float | None,
    confidence: float,
    min_drift: float,
) -> dict[str, Any]:
    """The row's rate bound and drift columns (those that can be computed); ``scores``: the finite ones."""
    out: dict[str, Any] = {}
    bound = statistics.flagged_rate_bound(
        rows_scored, calibration_scores=reference, threshold=threshold, target_fpr=target_fpr, confidence=confidence
    )
    if bound is not None:
        out |= {
            "expected_rate": bound.expected,
            "rate_lower": bound.lower,
            "rate_upper": bound.upper,
            "rate_confidence": bound.confidence,
            "bound_method": bound.method,
        }
    drift = statistics.score_drift(scores, reference, confidence=confidence, min_drift=min_drift)
    if drift is not None:
        out |= {"drift_statistic": drift.statistic, "drift_p_value": drift.p_value, "drift_limit": drift.limit}
    return out


def record_scoring_run(
    summary: ScoringRun,
    *,
    output: str | os.PathLike,
    partition: str | None,
    target_fpr: float | None,
    model: Any,
    confidence: float = statistics.DEFAULT_CONFIDENCE,
    min_drift: float = statistics.DEFAULT_MIN_DRIFT,
    work_dir: str | os.PathLike | None = None,
    log_to_mlflow: bool = True,
    recorded_at: datetime | None = None,
) -> dict[str, Any]:
    """Appends the monitoring row of a committed scoring run to ``OUTPUT/monitoring/`` and returns it.

    The run's scores are read back from ``OUTPUT/scores`` (its ``partition``), not taken from the
    caller, so the row describes what was committed. ``summary``: the run's
    :class:`~pipeline.beam.score_job.ScoreSummary` (rows read and rejected, the threshold used, the
    input); one whose ``status`` is not ``ok`` (stopped by a guard, nothing committed) is refused.
    ``target_fpr``: the rate the run was thresholded at (``vae score --fpr``), or None for the
    summary's ``target_fpr``, else the model's stored one. ``model``: the pinned
    :class:`~training.registry.ModelRef` the run scored with (or the loaded model), for its
    calibration scores: the reference of the drift statistic and of the rate bound. A model with no
    calibration (a null threshold) gets a row with null bound and drift, status ``unchecked``.
    ``confidence`` and ``min_drift``: see :mod:`pipeline.monitoring.statistics`. The row is also
    logged to MLflow (experiment ``vae-monitoring``, on the model's store, else ``work_dir``'s)
    unless ``log_to_mlflow`` is False; a failure there is a warning, never an error.
    """
    statistics.check_confidence(confidence)
    if getattr(summary, "status", "ok") != "ok":
        raise ValueError(f"the scoring run did not commit ({getattr(summary, 'reason', None)}): nothing to record")
    calibration = model_calibration(model)
    column = _score_column(calibration, summary)
    run = read_run_scores(output, partition, column)
    if len(run) != summary.rows_scored:
        log.warning(
            "monitoring: %s holds %d rows but the run scored %d: another run has replaced it since; "
            "recording what is there",
            run.path,
            len(run),
            summary.rows_scored,
        )
    threshold = summary.threshold
    reference = np.asarray(calibration["scores"], dtype=np.float64) if calibration and threshold is not None else None
    # the calibration's rate counts only when the run was thresholded
    target_fpr = _target_fpr(target_fpr, summary, calibration if threshold is not None else None)
    rows_scored = len(run)
    anomalies = run.anomalies if threshold is not None else None
    scores = statistics.finite(run.scores)
    row = empty_row(SCORE) | {
        "run_at": run.scored_at,
        "recorded_at": recorded_at or datetime.now(UTC),
        "output": str(output_folder(output)),
        "partition": partition,
        "run_id": getattr(summary, "run_id", None) or ",".join(run.run_ids) or None,
        "model_name": run.model_name or summary.model_name,
        "model_version": run.model_version or summary.model_version,
        "input": summary.input,
        "rows_read": summary.rows_read,
        "rows_scored": rows_scored,
        "rows_rejected": summary.rows_rejected,
        "reject_rate": summary.rows_rejected / summary.rows_read if summary.rows_read else None,
        "anomalies": anomalies,
        "anomaly_rate": anomalies / rows_scored if anomalies is not None and rows_scored else None,
        "score_column": column,
        "threshold": threshold,
        "target_fpr": target_fpr if threshold is not None else None,
        "calibration_rows": None if reference is None else int(reference.size),
        "score_mean": float(scores.mean()) if scores.size else None,
        **statistics.score_quantiles(scores),
    }
    if threshold is not None:
        row |= _checks(rows_scored, scores, reference, threshold, target_fpr, confidence, min_drift)
    row["status"], row["reason"] = judge(row)
    if log_to_mlflow:
        row["mlflow_run_id"] = tracking.log_row_quietly(row, tracking.resolve_tracking_uri(model, work_dir))
    append_row(output, row)
    if row["status"] == "alarm":
        log.warning("monitoring: %s%s: %s", row["output"], f" {partition}" if partition else "", row["reason"])
    return row
