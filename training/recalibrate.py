"""A registered model at a new false positive rate, without retraining: ``vae calibrate``.

The weights, the anomaly score's statistics and everything else stay as they are; only the
calibration changes: the ``anomaly_score`` of held-out normal images (by default the calibration
part of the data the version was trained on, re-read and checked against the run's fingerprint;
for a version whose threshold was cross-fitted, the out-of-fold scores stored with it) and the
threshold at the new rate. The result is a NEW version of the same registered model,
logged in its own MLflow run (a child of the source run, with its params and holdout scores), so
the old version stays as it was and an alias can be moved to the new one and back."""

from __future__ import annotations

import ast
import logging
import os
import tempfile
from dataclasses import dataclass

import numpy as np

from scoring.calibration import Calibration, rows_needed
from training import aliases, registry
from training import data as data_lib
from training.catalog import RECALIBRATED_FROM
from training.config import TrainConfig

log = logging.getLogger(__name__)

CARRIED_METRICS = ("validation_neg_elbo", "holdout_neg_elbo")  # depend on the weights alone
CARRIED_RUN_TAGS = ("data_fingerprint", "holdout_fingerprint", "data_source", "model_name", "likelihood_reason")
CALIBRATION_TAGS = ("calibration_warning",)  # about the old calibration: not carried


@dataclass(frozen=True)
class RecalibrationResult:
    name: str
    source_version: str
    version: str  # the new one
    run_id: str
    source_run_id: str | None
    target_fpr: float
    threshold: float
    previous_target_fpr: float | None
    previous_threshold: float | None
    score: str  # the score the threshold applies to
    calibration_rows: int
    calibration_data: str  # what the scores came from, in words
    holdout_flagged_rate: float | None  # at the new threshold; None with other data than the training data's
    warning: str | None  # scoring.calibration.size_warning
    alias_move: aliases.AliasMove | None

    def to_dict(self) -> dict:
        """The outcome for ``--result-json``: named like ``vae score``'s (``model_name``, and
        ``model_version`` for the new version)."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("name", "version", "alias_move")}
        out = {"model_name": self.name, "model_version": self.version} | out
        move = self.alias_move
        out["alias"] = None if move is None else move.alias
        out["alias_previous_version"] = None if move is None else move.previous
        return out


def recalibrate(
    model_uri: str,
    target_fpr: float,
    *,
    data: str | None = None,
    alias: str | None = None,
    max_reject_rate: float = TrainConfig.max_reject_rate,
    work: str | os.PathLike | None = None,
) -> RecalibrationResult:
    """Registers a new version of ``model_uri``'s model with the same weights and the threshold at
    ``target_fpr``, fitted on ``data`` (any input ``vae score`` reads; labels are read as the
    model's classes) or, by default, on the calibration part of the data the version was trained
    on (re-read and checked against its fingerprint, the holdout too), or, for a version calibrated by
    cross-fitting, on the out-of-fold scores stored with it (the training data is still re-read for
    the holdout's flagged rate). ``alias``: then points that alias at the new version (recorded, so
    it can be rolled back)."""
    if not 0.0 < target_fpr < 1.0:
        raise ValueError(f"--fpr must be in (0, 1), got {target_fpr:g}")
    if alias is not None:
        aliases.check_alias(alias)
    if model_uri.endswith(".keras"):
        raise ValueError(f"{model_uri}: vae calibrate works on registered models (models:/NAME@ALIAS or /VERSION)")
    name, version = registry.resolve(model_uri, work)
    source = aliases.model_version(name, version, work)
    mlflow_client = registry.client(work)
    run = mlflow_client.get_run(source.run_id) if source.run_id else None
    params = dict(run.data.params) if run else {}
    ref = registry.pin(f"models:/{name}/{version}", work)
    model = ref._load()  # a copy of its own, not the process-wide one: its calibration is replaced below
    before = Calibration.from_dict(model.calibration) if model.calibration else None
    score = before.score if before else "anomaly_score"

    if data is None:
        part, holdout, described = _training_parts(model, params, run, max_reject_rate, work)
    else:
        split_seed = int(params.get("seed", 0))
        part, holdout, described = read_for_model(data, model, split_seed, max_reject_rate), None, data
    folds = int(run.data.metrics.get("calibration_folds", 0)) if run and data is None and before else 0
    if folds:  # its out-of-fold scores of every non-holdout row, from models that no longer exist
        calibration = before.with_fpr(target_fpr)
        described = (
            f"the out-of-fold scores stored with version {version} (every non-holdout row, cross-fitted by {folds} "
            "models)"
        )
    else:
        calibration = Calibration.fit(_scores(model, part)[score], target_fpr, score=score)
    flagged = None
    if holdout is not None:
        flagged = float(calibration.is_anomaly(_scores(model, holdout)[score]).mean())
    model.calibration = calibration.to_dict()
    warning = calibration.size_warning()
    if warning:
        log.warning("%s: %s", name, warning)

    new_version, run_id = _log_and_register(
        model, name, source, run, calibration, before, described, flagged, warning, work, folds
    )
    move = None
    if alias is not None:
        why = f"vae calibrate: v{version} at FPR {target_fpr:g}"
        move = aliases.promote(name, new_version, alias, work, reason=why)
    return RecalibrationResult(
        name=name,
        source_version=str(version),
        version=new_version,
        run_id=run_id,
        source_run_id=source.run_id,
        target_fpr=float(target_fpr),
        threshold=calibration.threshold,
        previous_target_fpr=None if before is None else before.target_fpr,
        previous_threshold=None if before is None else before.threshold,
        score=score,
        calibration_rows=calibration.scores.size,
        calibration_data=described,
        holdout_flagged_rate=flagged,
        warning=warning,
        alias_move=move,
    )


def _scores(model, part: data_lib.ImageData) -> dict[str, np.ndarray]:
    from training.fitting import part_scores

    return part_scores(model, part)


def _training_parts(
    model, params: dict[str, str], run, max_reject_rate: float, work
) -> tuple[data_lib.ImageData, data_lib.ImageData, str]:
    """(calibration part, holdout, description) of the data the version was trained on: read the
    way ``vae train`` read it and split with its seed, after checking that the train part is the
    one the run fitted (its ``data_fingerprint``): otherwise the "calibration part" could hold rows
    the weights were fitted on."""
    from training.fitting import labelled_parts, unlabelled_rows
    from training.train import read_training_data

    if "data" not in params:
        raise LookupError("the version's MLflow run does not say what data it was trained on; pass --data INPUT")
    inputs = tuple(params["data"].split(" + "))
    seed = int(params.get("seed", 0))
    cfg = TrainConfig(
        data=inputs if len(inputs) > 1 else inputs[0],
        seed=seed,
        conditional=bool(model.num_classes),
        shape=_shape(params.get("shape")),
        pixel_scale=model.pixel_scale,
        max_reject_rate=float(params.get("max_reject_rate", max_reject_rate)),
        memory_budget_mb=_int(params.get("memory_budget_mb")),
        work_dir=None if work is None else str(work),
    )
    described = f"the calibration part of {params['data']} (seed {seed})"
    with tempfile.TemporaryDirectory(prefix="calibrate-", dir=registry.work_dir(work)) as spill:
        split = data_lib.training_split(read_training_data(cfg, spill).data, seed=seed)
        expected = run.data.tags.get("data_fingerprint") if run else None
        found = data_lib.fingerprint(split.train)
        if expected is None:
            log.warning("the source run has no data_fingerprint: the calibration part cannot be checked")
        elif found != expected:
            raise data_lib.DataError(
                f"{params['data']} is not the data the model was trained on (train part fingerprint {found}, "
                f"the run's {expected}): its calibration part may hold rows the weights were fitted on; "
                "pass --data with held-out normal images"
            )
        if cfg.conditional and any(unlabelled_rows(part) for part in (split.calibration, split.holdout)):
            split = labelled_parts(split)  # a semi-supervised model is calibrated on its labelled rows
        # copies in memory: the spill folder is removed when this block ends
        return _in_memory(split.calibration), _in_memory(split.holdout), described


def _shape(text: str | None) -> tuple[int, int, int] | None:
    """The ``shape`` param as ``vae train`` logged it: ``(8, 8, 1)`` or ``None``."""
    if not text or text == "None":
        return None
    return tuple(int(d) for d in ast.literal_eval(text))  # type: ignore[return-value]


def _int(text: str | None) -> int | None:
    return None if not text or text == "None" else int(text)


def _in_memory(part: data_lib.ImageData) -> data_lib.ImageData:
    return data_lib.ImageData(np.array(part.images), part.labels, part.example_ids, part.class_names, part.source)


def read_for_model(
    spec: str, model, split_seed: int = 0, max_reject_rate: float = TrainConfig.max_reject_rate
) -> data_lib.ImageData:
    """Every usable row of ``spec`` the way ``vae score`` reads it for ``model`` (its shape, pixel
    scale and classes; a repeated example_id keeps its first row); more than ``max_reject_rate`` of
    the rows unusable stops with a :class:`DataError` naming the first ones."""
    import pyarrow as pa

    from training.data.reader import plan_input
    from training.data.validate import ModelSpec, duplicate_rows, validate_batch

    spec_of_model = ModelSpec.of(model)
    images, labels, ids, sources, source_rows, reasons = [], [], [], [], [], []
    rows_read = 0
    for shard in plan_input(spec, split_seed=split_seed).shards:
        for batch in shard.read(4096):
            rows_read += batch.num_rows
            valid, rejected = validate_batch(batch, spec_of_model)
            if rejected is not None:
                reasons.extend(
                    f"{s} example_id {i}: {r}"
                    for s, i, r in zip(
                        rejected.sources.to_pylist(),
                        rejected.example_ids.to_pylist(),
                        rejected.reasons.to_pylist(),
                        strict=True,
                    )
                )
            if valid is not None:
                images.append(valid.images)
                labels.append(valid.labels)
                ids.extend(valid.example_ids.to_pylist())
                sources.extend(valid.sources.to_pylist())
                source_rows.extend(valid.source_rows.to_pylist())
    keep = np.ones(len(ids), dtype=bool)
    if ids:
        repeated, why = duplicate_rows(pa.array(ids, pa.string()), sources, source_rows)
        keep = ~repeated
        where = zip(np.asarray(sources)[repeated], np.asarray(ids)[repeated], why, strict=True)
        reasons.extend(f"{s} example_id {i}: {r}" for s, i, r in where)
    if rows_read == 0:
        raise data_lib.DataError(f"{spec}: the data set is empty")
    rate = len(reasons) / rows_read
    if not keep.any() or rate > max_reject_rate:
        raise data_lib.DataError(
            f"{spec}: {len(reasons):,} of {rows_read:,} rows cannot be scored by the model ({rate:.1%}, above "
            f"--max-reject-rate {max_reject_rate:g}); e.g. " + "; ".join(reasons[:3])
        )
    if reasons:
        log.warning("%s: %d of %d rows left out of the calibration, e.g. %s", spec, len(reasons), rows_read, reasons[0])
    all_images = np.concatenate(images)[keep]
    all_labels = np.concatenate(labels)[keep] if model.num_classes else None
    return data_lib.ImageData(all_images, all_labels, np.asarray(ids, dtype=str)[keep], model.class_names, spec)


def _log_and_register(
    model,
    name: str,
    source,
    run,
    calibration: Calibration,
    before: Calibration | None,
    described: str,
    flagged: float | None,
    warning: str | None,
    work,
    folds: int = 0,
) -> tuple[str, str]:
    """Logs the recalibrated model in a new run (a child of the source run) and registers it as a
    new version of ``name``; returns (version, run id)."""
    import mlflow
    import mlflow.keras

    from training import plots

    registry.configure(work)
    source_uri = f"models:/{name}/{source.version}"
    signature = mlflow.models.get_model_info(source_uri).signature
    params = dict(run.data.params) if run else {}
    params = {k: v for k, v in params.items() if k != "target_fpr"} | {"target_fpr": calibration.target_fpr}
    tags = {k: run.data.tags[k] for k in CARRIED_RUN_TAGS if run and k in run.data.tags}
    tags |= {
        RECALIBRATED_FROM: str(source.version),
        "recalibrated_from_model_uri": source_uri,
        "calibration_data": described,
    }
    if run:
        tags |= {"source_run_id": run.info.run_id, "mlflow.parentRunId": run.info.run_id}
    experiment = run.info.experiment_id if run else None
    run_name = f"calibrate-v{source.version}-fpr{calibration.target_fpr:g}"
    with mlflow.start_run(experiment_id=experiment, run_name=run_name, tags=tags) as new_run:
        mlflow.log_params(params)
        metrics = {k: run.data.metrics[k] for k in CARRIED_METRICS if run and k in run.data.metrics}
        metrics |= {
            "threshold": calibration.threshold,
            "calibration_rows": calibration.scores.size,
            "calibration_folds": folds,
            "calibration_above_threshold": calibration.above,
            "calibration_rows_needed": rows_needed(calibration.target_fpr),
        }
        if flagged is not None:
            metrics["holdout_flagged_rate"] = flagged
        mlflow.log_metrics(metrics)
        if warning:
            mlflow.set_tag("calibration_warning", warning)
        mlflow.log_dict(calibration.to_dict(), "calibration.json")
        figure = plots.score_histogram(
            calibration.scores, calibration.threshold, title=f"calibration {calibration.score}"
        )
        mlflow.log_figure(figure, "plots/score_histogram.png")
        version = registry.log_and_register(model, name, signature)
        mlflow.set_tag("model_version", version)
    _describe_version(name, version, source, calibration, before, described, work)
    return version, new_run.info.run_id


def _describe_version(name: str, version: str, source, calibration: Calibration, before, described, work):
    """The recalibrated version's tags (the source's, carried) and its registry description."""
    carried = {k: v for k, v in (source.tags or {}).items() if k not in (RECALIBRATED_FROM, "calibration_data")}
    registry.set_version_tags(
        name,
        version,
        carried
        | {
            RECALIBRATED_FROM: source.version,
            "calibration_data": described,
            "target_fpr": repr(calibration.target_fpr),
            "threshold": repr(calibration.threshold),
        },
        work=work,
    )
    was = "" if before is None else f" (was {before.threshold:.6g} at FPR {before.target_fpr:g})"
    registry.client(work).update_model_version(
        name,
        version,
        description=(
            f"Recalibration of version {source.version} at FPR {calibration.target_fpr:g}: threshold "
            f"{calibration.threshold:.6g}{was}, from the {calibration.score} of {calibration.scores.size:,} rows: "
            f"{described}. "
            "Same weights, no retraining."
        ),
    )
