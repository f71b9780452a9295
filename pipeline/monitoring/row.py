"""One monitoring row: its columns (one schema for scoring runs and shadow comparisons, so the
dataset reads back as one table), and its status against its bounds."""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa

from pipeline.monitoring.statistics import QUANTILE_COLUMNS

SCORE = "score"  # a scoring run (record_scoring_run)
SHADOW = "shadow"  # a champion/challenger comparison (record_shadow)

OK, ALARM, UNCHECKED = "ok", "alarm", "unchecked"

MONITORING_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),  # score | shadow
        ("run_at", pa.timestamp("us", tz="UTC")),  # the scoring run's scored_at
        ("recorded_at", pa.timestamp("us", tz="UTC")),
        ("output", pa.string()),
        ("partition", pa.string()),  # KEY=VALUE, or null for a whole-dataset run
        ("run_id", pa.string()),  # the run tag in the scores' file names
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("input", pa.string()),
        ("rows_read", pa.int64()),
        ("rows_scored", pa.int64()),
        ("rows_rejected", pa.int64()),
        ("reject_rate", pa.float64()),
        ("anomalies", pa.int64()),
        ("anomaly_rate", pa.float64()),
        ("score_column", pa.string()),  # what the threshold applies to: anomaly_score (neg_elbo: older models)
        ("threshold", pa.float64()),
        ("target_fpr", pa.float64()),
        ("calibration_rows", pa.int64()),
        ("expected_rate", pa.float64()),  # the flagged rate expected when nothing changed
        ("rate_lower", pa.float64()),
        ("rate_upper", pa.float64()),
        ("rate_confidence", pa.float64()),
        ("bound_method", pa.string()),  # beta-binomial | binomial
        ("score_mean", pa.float64()),
        *[(name, pa.float64()) for name in QUANTILE_COLUMNS],
        ("drift_statistic", pa.float64()),  # two-sample KS D against the calibration scores
        ("drift_p_value", pa.float64()),
        ("drift_limit", pa.float64()),
        ("status", pa.string()),  # ok | alarm | unchecked
        ("reason", pa.string()),
        # shadow rows: the challenger's flags against the champion's (the row's model) on the same rows
        ("shadow_output", pa.string()),
        ("shadow_model_name", pa.string()),
        ("shadow_model_version", pa.string()),
        ("shadow_rows", pa.int64()),  # rows in both outputs (by example_id) with a flag from each model
        ("shadow_unmatched", pa.int64()),  # rows in only one of the two outputs
        ("shadow_anomaly_rate", pa.float64()),
        ("both_flagged", pa.int64()),
        ("champion_only", pa.int64()),
        ("shadow_only", pa.int64()),
        ("agreement", pa.float64()),  # share of rows both flag or both pass
        ("cohen_kappa", pa.float64()),  # agreement beyond chance
        ("mlflow_run_id", pa.string()),
    ]
)
COLUMNS = tuple(MONITORING_SCHEMA.names)


def empty_row(kind: str) -> dict[str, Any]:
    return dict.fromkeys(COLUMNS) | {"kind": kind}


def present(value: Any) -> bool:
    """Not None and not NaN (pandas reads a null double as NaN)."""
    if value is None:
        return False
    try:
        return not math.isnan(float(value))
    except (TypeError, ValueError):
        return True


def judge(row: dict[str, Any]) -> tuple[str, str | None]:
    """(status, reason): ``alarm`` with a one-line reason when the flagged rate lies outside its
    bound or the drift statistic is above its limit; ``unchecked`` when neither can be checked (an
    uncalibrated model, no rows); else ``ok``."""
    reasons = []
    checked = False
    rate = row.get("anomaly_rate")
    if present(rate) and present(row.get("rate_lower")) and present(row.get("rate_upper")):
        checked = True
        if not row["rate_lower"] <= rate <= row["rate_upper"]:
            side = "above" if rate > row["rate_upper"] else "below"
            reasons.append(
                f"anomaly rate {rate:.2%} ({row.get('anomalies')} of {row.get('rows_scored')}) is {side} its "
                f"{row.get('rate_confidence') or 0:g} bound [{row['rate_lower']:.2%}, {row['rate_upper']:.2%}] "
                f"(target FPR {_rate(row.get('target_fpr'))})"
            )
    if present(row.get("drift_statistic")) and present(row.get("drift_limit")):
        checked = True
        if row["drift_statistic"] > row["drift_limit"]:
            reasons.append(
                f"drift KS {row['drift_statistic']:.3f} of {row.get('score_column')} against the calibration scores "
                f"is above its limit {row['drift_limit']:.3f} (p = {row.get('drift_p_value', float('nan')):.2g})"
            )
    if reasons:
        return ALARM, "; ".join(reasons)
    return (OK, None) if checked else (UNCHECKED, "no threshold or calibration scores: nothing to check")


def _rate(value: Any) -> str:
    return f"{value:.2%}" if present(value) else "unknown"
