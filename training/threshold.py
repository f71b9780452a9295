"""The anomaly threshold of a trained model: the detector fitted on the train part and calibrated
on held-out scores, from the calibration part or cross-fitted (:mod:`training.cross_fit`)."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from scoring.anomaly import DEFAULT_METHOD
from scoring.calibration import Calibration, rows_needed
from scoring.detector import VAEDetector
from training import cross_fit
from training import data as data_lib
from training.config import TrainConfig
from training.fitting import build_model, fit, fit_priors, neg_elbo_scores, part_scores, set_seeds

log = logging.getLogger(__name__)


def calibrate(
    model,
    split: data_lib.TrainingSplit,
    target_fpr: float,
    method: str = DEFAULT_METHOD,
    held_out_scores: np.ndarray | None = None,
) -> Calibration:
    """Fits the anomaly detector (:class:`scoring.detector.VAEDetector`): the score's statistics on
    the train part, the threshold and p-values on the calibration part's ``anomaly_score`` (data
    that neither fitted the weights nor chose the epoch), or on ``held_out_scores`` when given
    (cross-fitted: :mod:`training.cross_fit`). Stores both in the model."""
    conditional = bool(model.num_classes)
    detector = VAEDetector(model, method, target_fpr=target_fpr).fit(
        split.train.images,
        labels=split.train.labels if conditional else None,
        calibration_images=split.calibration.images,
        calibration_labels=split.calibration.labels if conditional else None,
        held_out_scores=held_out_scores,  # when given, VAEDetector.fit uses these instead
    )
    return detector.calibration_


def cross_fitted_calibration_scores(
    cfg: TrainConfig, split: data_lib.TrainingSplit, folds: int, like=None
) -> np.ndarray:
    """Out-of-fold ``anomaly_score`` of the train, validation and calibration rows
    (:mod:`training.cross_fit`): ``folds`` models trained as this one was (``like``: the trained
    model, whose likelihood and grey levels they keep), their weights initialised and their batches
    shuffled by seeds of their own (the posterior noise and the scores' seed stay ``cfg.seed``)."""
    conditional = bool(cfg.conditional)
    if like is not None:
        cfg = replace(cfg, likelihood=like.likelihood, pixel_levels=int(like.pixel_levels))

    def fit_fold(train: data_lib.ImageData, validation: data_lib.ImageData, k: int) -> VAEDetector:
        set_seeds((cfg.seed + 1) * 1_000 + k)
        model = build_model(cfg, train, semi_supervised=False)
        fit(cfg, model, data_lib.Split(train, validation, validation), report=False)
        fit_priors(cfg, model, train)
        detector = VAEDetector(model, cfg.anomaly_score, target_fpr=cfg.target_fpr)
        return detector.fit(train.images, labels=train.labels if conditional else None)

    def score_rows(detector: VAEDetector, rows: data_lib.ImageData) -> np.ndarray:
        return detector.decision_function(rows.images, rows.labels if conditional else None)

    tf_log = logging.getLogger("tensorflow")
    level = tf_log.level
    tf_log.setLevel(logging.ERROR)  # each fold model retraces its own steps: warned about, expected
    try:
        scores = cross_fit.cross_fitted_scores(split, folds, cfg.seed, fit_fold, score_rows)
    finally:
        tf_log.setLevel(level)
    set_seeds(cfg.seed)
    return scores


def fit_scoring(cfg: TrainConfig, model, split: data_lib.TrainingSplit, seconds_per_epoch: float, folds: int):
    """After training: the latent prior, the anomaly calibration (cross-fitted when the calibration
    part is small: :mod:`training.cross_fit`) and the run's summary metrics (logged); returns
    (calibration, summary, the calibration's size warning or None)."""
    import mlflow

    fit_priors(cfg, model, split.train)
    validation_neg_elbo = float(neg_elbo_scores(model, split.validation).mean())
    held_out = None
    if folds:
        why = "too few for a stable threshold" if cfg.calibration_folds is None else "--calibration-folds"
        log.info(
            "%d calibration rows at a false positive rate of %g (%s): cross-fitting %d more models so that every "
            "non-holdout row is scored by one that never saw it",
            len(split.calibration),
            cfg.target_fpr,
            why,
            folds,
        )
        held_out = cross_fitted_calibration_scores(cfg, split, folds, like=model)
        mlflow.set_tag(
            "calibration_data",
            f"every non-holdout row of {split.train.source} (seed {cfg.seed}), {held_out.size:,} scores cross-fitted "
            f"by {folds} models that each left a fold out",
        )
    calibration = calibrate(model, split, cfg.target_fpr, cfg.anomaly_score, held_out)
    warning = calibration.size_warning()
    if warning:
        log.warning("%s: %s", cfg.model_name, warning)
        mlflow.set_tag("calibration_warning", warning)
    holdout_scores = part_scores(model, split.holdout)
    summary = {
        "validation_neg_elbo": validation_neg_elbo,
        "holdout_neg_elbo": float(holdout_scores["neg_elbo"].mean()),
        "threshold": calibration.threshold,
        "holdout_flagged_rate": float(calibration.is_anomaly(holdout_scores[calibration.score]).mean()),
        "calibration_rows": calibration.scores.size,
        "calibration_folds": folds,
        "calibration_above_threshold": calibration.above,
        "calibration_rows_needed": rows_needed(cfg.target_fpr),
        "seconds_per_epoch": seconds_per_epoch,
    }
    mlflow.log_metrics(summary)
    mlflow.log_dict(calibration.to_dict(), "calibration.json")
    return calibration, summary, warning
