"""Monitoring rows as MLflow runs: one run per row in the experiment ``vae-monitoring``, named after
the output and partition, tagged with the model, its numbers logged as metrics (so MLflow's run
comparison charts the trend too). The store is :func:`training.registry.tracking_uri`'s."""

from __future__ import annotations

import logging
import math
import numbers
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EXPERIMENT = "vae-monitoring"
TAGS = ("kind", "output", "partition", "model_name", "model_version", "input", "run_id", "status", "bound_method")
TAGS += ("score_column", "shadow_output", "shadow_model_name", "shadow_model_version")


def run_name(row: dict[str, Any]) -> str:
    """``OUTPUT_NAME/PARTITION`` (``OUTPUT_NAME`` for a whole-dataset run), ``shadow:`` before a comparison."""
    name = Path(str(row.get("output") or "output").rstrip("/")).name
    name = f"{name}/{row['partition']}" if row.get("partition") else name
    return f"shadow:{name}" if row.get("kind") == "shadow" else name


def metrics_of(row: dict[str, Any]) -> dict[str, float]:
    """The row's numbers (not its booleans, strings or nulls)."""
    return {
        key: float(value)
        for key, value in row.items()
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(float(value))
    }


def log_row(row: dict[str, Any], tracking_uri: str) -> str:
    """Logs ``row`` as a finished MLflow run; returns the run id."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        location = None
        if tracking_uri.startswith("sqlite:///"):  # artifacts beside the database, as registry.configure does
            location = (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
        experiment_id = client.create_experiment(EXPERIMENT, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    tags = {key: str(row[key]) for key in TAGS if row.get(key) is not None}
    run = client.create_run(experiment_id, run_name=run_name(row), tags=tags)
    when = row.get("run_at") or row.get("recorded_at")
    stamp = int(when.timestamp() * 1000) if when is not None else None
    metrics = [Metric(key, value, stamp or 0, 0) for key, value in metrics_of(row).items()]
    client.log_batch(
        run.info.run_id, metrics=metrics, tags=[RunTag("reason", row["reason"])] if row.get("reason") else []
    )
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def log_row_quietly(row: dict[str, Any], tracking_uri: str) -> str | None:
    """:func:`log_row`, or None with a warning when MLflow cannot take it: the Parquet row is the
    record; an unreachable tracking server must not fail a run that has already committed."""
    try:
        return log_row(row, tracking_uri)
    except Exception as exc:  # noqa: BLE001  anything MLflow or its store raises
        log.warning("monitoring: could not log to MLflow at %s: %s", tracking_uri, exc)
        return None


def resolve_tracking_uri(model: Any, work_dir: str | os.PathLike | None) -> str:
    """The store of the pinned model (``ModelRef.tracking_uri``), else
    :func:`training.registry.tracking_uri` of ``work_dir``."""
    from training import registry

    return getattr(model, "tracking_uri", None) or registry.tracking_uri(work_dir)
