"""What the registry holds, read for people: every registered version with its aliases, holdout
scores and calibration (:func:`list_versions`), or one version in full (:func:`describe`).

Everything is read from MLflow: the version (aliases, tags, source run), the run that logged it
(params, metrics, tags) and, for :func:`describe`, the run's ``calibration.json`` and the model's
signature. No model is loaded."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scoring.calibration import size_warning
from training import aliases, registry

RECALIBRATED_FROM = "recalibrated_from"  # version tag of a version made by ``vae calibrate``


@dataclass(frozen=True)
class VersionSummary:
    """One registered version, one row of ``vae models list``."""

    name: str
    version: str
    aliases: list[str]
    created: str  # UTC ISO time
    status: str
    run_id: str | None
    holdout_neg_elbo: float | None
    validation_neg_elbo: float | None
    threshold: float | None
    target_fpr: float | None
    holdout_flagged_rate: float | None
    recalibrated_from: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VersionDetail:
    """One registered version in full, for ``vae models describe``."""

    summary: VersionSummary
    model_uri: str
    source: str  # where the model's files are
    description: str
    run_name: str | None
    run_status: str | None
    experiment_id: str | None
    params: dict[str, str]
    metrics: dict[str, float]
    version_tags: dict[str, str]
    run_tags: dict[str, str]
    calibration: dict[str, Any]  # score, target_fpr, threshold, rows, above_threshold, warning, ...
    signature: dict[str, str] = field(default_factory=dict)  # inputs / outputs, as MLflow prints them
    alias_history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # moves involving it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_versions(name: str | None = None, work: str | os.PathLike | None = None) -> list[VersionSummary]:
    """Every version of every registered model (or of ``name``), by name then version number."""
    mlflow_client = registry.client(work)
    if name is not None:
        names = [aliases.registered_model(name, work).name]
    else:
        names = sorted(m.name for m in mlflow_client.search_registered_models())
    rows = []
    for model_name in names:
        holders = _aliases_by_version(model_name, work)
        for version in aliases.versions(model_name, work):
            rows.append(_summary(version, holders, _run(mlflow_client, version.run_id)))
    return rows


def resolve_version(
    name: str, version: str | None = None, alias: str | None = None, work: str | os.PathLike | None = None
) -> str:
    """The version ``describe`` shows: ``version``, the holder of ``alias``, else ``@champion``'s
    holder, else the newest version."""
    if version is not None and alias is not None:
        raise ValueError("give a version or an alias, not both")
    if version is not None:
        return str(aliases.model_version(name, version, work).version)
    registered = aliases.registered_model(name, work)
    holders = registered.aliases or {}
    if alias is not None:
        if alias not in holders:
            known = ", ".join(f"@{a}" for a in sorted(holders)) or "none"
            raise LookupError(f"{name} has no alias @{alias} (aliases: {known})")
        return str(holders[alias])
    if registry.CHAMPION in holders:
        return str(holders[registry.CHAMPION])
    found = aliases.versions(name, work)
    if not found:
        raise LookupError(f"{name} has no versions")
    return str(found[-1].version)


def describe(
    name: str, version: str | None = None, alias: str | None = None, work: str | os.PathLike | None = None
) -> VersionDetail:
    """One version in full: its run's params, metrics and tags, its calibration, signature and the
    alias moves that involve it."""
    number = resolve_version(name, version, alias, work)
    mlflow_client = registry.client(work)
    found = aliases.model_version(name, number, work)
    run = _run(mlflow_client, found.run_id)
    summary = _summary(found, _aliases_by_version(name, work), run)
    params = dict(run.data.params) if run else {}
    metrics = dict(run.data.metrics) if run else {}
    moves = {
        alias_name: [asdict(m) for m in moves if number in (m.version, m.previous)]
        for alias_name, moves in aliases.histories(name, work).items()
    }
    return VersionDetail(
        summary=summary,
        model_uri=f"models:/{name}/{number}",
        source=str(found.source),
        description=found.description or "",
        run_name=run.info.run_name if run else None,
        run_status=run.info.status if run else None,
        experiment_id=run.info.experiment_id if run else None,
        params=dict(sorted(params.items())),
        metrics=dict(sorted(metrics.items())),
        version_tags=dict(sorted((found.tags or {}).items())),
        run_tags={k: v for k, v in sorted((run.data.tags if run else {}).items()) if not k.startswith("mlflow.")},
        calibration=_calibration(mlflow_client, found, run, params, metrics),
        signature=_signature(name, number, work),
        alias_history={k: v for k, v in moves.items() if v},
    )


def _summary(version, holders: dict[str, list[str]], run) -> VersionSummary:
    metrics = run.data.metrics if run else {}
    params = run.data.params if run else {}
    tags = version.tags or {}
    holdout = metrics.get("holdout_neg_elbo", _float(tags.get("holdout_neg_elbo")))
    return VersionSummary(
        name=version.name,
        version=str(version.version),
        aliases=sorted(holders.get(str(version.version), [])),
        created=_iso(version.creation_timestamp),
        status=str(version.status),
        run_id=version.run_id,
        holdout_neg_elbo=holdout,
        validation_neg_elbo=metrics.get("validation_neg_elbo"),
        threshold=metrics.get("threshold", _float(tags.get("threshold"))),
        target_fpr=_float(params.get("target_fpr", tags.get("target_fpr"))),
        holdout_flagged_rate=metrics.get("holdout_flagged_rate"),
        recalibrated_from=tags.get(RECALIBRATED_FROM),
    )


def _calibration(mlflow_client, version, run, params: dict, metrics: dict) -> dict[str, Any]:
    """The calibration stored with the version: from the run's ``calibration.json`` (the same
    object the model holds) when it can be read, else from the run's metrics and params."""
    stored = _calibration_json(mlflow_client, run.info.run_id) if run else None
    tags = version.tags or {}
    fpr = _float(params.get("target_fpr")) if stored is None else float(stored["target_fpr"])
    rows = int(metrics["calibration_rows"]) if "calibration_rows" in metrics else None
    if stored is not None:
        rows = len(stored.get("scores", [])) or rows
    out: dict[str, Any] = {
        "score": stored.get("score") if stored else None,
        "target_fpr": fpr,
        "threshold": float(stored["threshold"]) if stored else metrics.get("threshold"),
        "calibration_rows": rows,
        "holdout_flagged_rate": metrics.get("holdout_flagged_rate"),
        "calibration_data": tags.get("calibration_data")
        or (run.data.tags.get("calibration_data") if run else None)
        or (f"the calibration part of {params['data']} (seed {params.get('seed', '?')})" if "data" in params else None),
        RECALIBRATED_FROM: tags.get(RECALIBRATED_FROM),
    }
    if rows and fpr and 0.0 < fpr < 1.0:
        out["warning"] = size_warning(rows, fpr)
    return out


def _calibration_json(mlflow_client, run_id: str) -> dict | None:
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as folder:
        try:
            path = mlflow_client.download_artifacts(run_id, "calibration.json", folder)
            return json.loads(Path(path).read_text())
        except (MlflowException, OSError, ValueError):
            return None


def _signature(name: str, version: str, work) -> dict[str, str]:
    """The model's input and output schema as MLflow records it ({} when it cannot be read)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(registry.tracking_uri(work))  # get_model_info reads the process-wide store
    try:
        signature = mlflow.models.get_model_info(f"models:/{name}/{version}").signature
    except (MlflowException, OSError):
        return {}
    if signature is None:
        return {}
    return {"inputs": str(signature.inputs), "outputs": str(signature.outputs)}


def _aliases_by_version(name: str, work) -> dict[str, list[str]]:
    holders: dict[str, list[str]] = {}
    for alias, version in (aliases.registered_model(name, work).aliases or {}).items():
        holders.setdefault(str(version), []).append(alias)
    return holders


def _run(mlflow_client, run_id: str | None):
    """The MLflow run, or None when the version has none or it was deleted."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        return mlflow_client.get_run(run_id)
    except MlflowException:
        return None


def _iso(millis: int | None) -> str:
    if not millis:
        return ""
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None
