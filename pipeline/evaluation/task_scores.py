"""One task of the evaluation: the VAE fitted fresh on its fit images and every detector's scores
of its test images, as metrics rows."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import numpy as np

from pipeline.evaluation.results import CLASSICAL, DETECTORS, VAE_DETECTORS
from pipeline.evaluation.tasks import Task
from scoring import metrics
from scoring.detectors import classical_detectors
from training import data as data_lib
from training.config import TrainConfig

log = logging.getLogger(__name__)
TARGET_FPR = 0.01  # the VAE's threshold: the product's calibration rule
ONE_CLASS_EPOCH_FACTOR = 4
IWAE_K = 0  # the IWAE bound ranked no better than the ELBO (README); --iwae-k 100 adds it
#: ``score_fit(model, task)``: fits the anomaly score's statistics after the VAE fit.


ScoreFit = Callable[[Any, Task], None]


def vae_config(base: TrainConfig, task: Task) -> TrainConfig:
    """The VAE settings for one task: the base settings, with the warm-up capped at a third of
    the epochs; no early stopping where the VAE fits and scores the same images (contaminated);
    and for one-class fits, whose epochs hold a tenth of the images, ``ONE_CLASS_EPOCH_FACTOR``
    times the epochs, warm-up and patience, so they get a comparable number of gradient steps."""
    factor = ONE_CLASS_EPOCH_FACTOR if task.protocol == "one-class" else 1
    epochs = base.epochs * factor
    cfg = replace(
        base,
        conditional=False,
        epochs=epochs,
        kl_warmup=min(base.kl_warmup * factor, max(1, epochs // 3)),
        early_stopping=base.early_stopping * factor,
    )
    if task.unsupervised:
        cfg = replace(cfg, early_stopping=0)
    return cfg


def score_with_vae(
    task: Task, cfg: TrainConfig, iwae_k: int | None = IWAE_K, score_fit: ScoreFit | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Fits a fresh plain VAE on the task's images, fits its anomaly score (``score_fit``, by
    default :class:`scoring.detector.VAEDetector` with ``cfg.anomaly_score``) and scores the test images: the dict of
    :func:`scoring.detector.score_images` (``anomaly_score``, ``neg_elbo``, ``reconstruction_nll``,
    ``kl``, and ``iwae_nll`` when ``iwae_k``), and a summary of the fit (epochs, seconds, the
    normal test examples' mean scores, and ``threshold``: the default score's threshold from the
    validation images, as ``vae train`` calibrates, where they are unseen by the fit)."""
    import keras

    from scoring.detector import model_method_scores, score_images
    from training.fitting import build_model, fit, set_seeds

    keras.backend.clear_session()
    set_seeds(cfg.seed)
    split = data_lib.Split(task.fit, task.validation, task.test)
    model = build_model(cfg, task.fit)
    started = time.perf_counter()
    epoch_log = logging.getLogger("training.callbacks")  # one line per task, not per epoch of every fit
    level = epoch_log.level
    epoch_log.setLevel(max(level, logging.WARNING))
    try:
        history, seconds_per_epoch = fit(cfg, model, split)
    finally:
        epoch_log.setLevel(level)
    fit_seconds = time.perf_counter() - started
    threshold = None
    if score_fit is None:  # the product's detector; its threshold from the normal, unseen validation images
        from scoring.detector import VAEDetector

        detector = VAEDetector(model, cfg.anomaly_score, target_fpr=TARGET_FPR)
        detector.fit(task.fit.images, calibration_images=None if task.unsupervised else task.validation.images)
        threshold = None if task.unsupervised else detector.threshold_
    else:
        score_fit(model, task)
    scores = score_images(
        model, task.test.images, num_samples=cfg.score_samples, seed=cfg.seed, iwae_k=iwae_k or None, batch_size=128
    )
    scores |= {m: v for m, v in model_method_scores(model, scores).items() if m != "neg_elbo"}  # every method
    normal = ~task.is_anomaly
    summary: dict[str, Any] = {
        "protocol": task.protocol,
        "task": task.target,
        "likelihood": getattr(model, "likelihood", cfg.likelihood),  # what "auto" chose for these images
        "epochs_run": len(history.get("loss", [])),
        "seconds": round(time.perf_counter() - started, 2),
        "fit_seconds": round(fit_seconds, 2),
        "seconds_per_epoch": round(seconds_per_epoch, 3),
        "normal_kl": float(scores["kl"][normal].mean()),
        "normal_neg_elbo": float(scores["neg_elbo"][normal].mean()),
        "anomalous_neg_elbo": float(scores["neg_elbo"][task.is_anomaly].mean()),
        "normal_anomaly_score": float(scores["anomaly_score"][normal].mean()),
        "anomalous_anomaly_score": float(scores["anomaly_score"][task.is_anomaly].mean()),
    }
    if "iwae_nll" in scores:
        summary["normal_iwae_nll"] = float(scores["iwae_nll"][normal].mean())
    if threshold is not None:
        summary["threshold"] = threshold
    return scores, summary


def classical_scores(detector: Any, task: Task) -> dict[str, np.ndarray | None]:
    """One PyOD wrapper's scores per part of the task (:attr:`Task.subtasks`): ``decision_scores_``
    where the test images are the fit images, else ``decision_function`` on each part's images
    (each part scored on its own: ECOD's scores of a batch depend on the whole batch); None for
    every part, with a warning logged, if it raised, and for a part with a non-finite score."""
    parts = task.subtasks
    try:
        if task.unsupervised:
            return {parts[0][0]: _finite_or_none(detector.name, task, detector.fit_score(task.fit.images))}
        detector.fit(task.fit.images)
        return {
            name: _finite_or_none(detector.name, task, detector.score(task.test.images[rows]), len(rows))
            for name, rows in parts
        }
    except Exception as exc:  # whatever a third-party detector raises costs one NaN cell, not the run
        log.warning("%s failed (%s: %s); its metrics are NaN", _where(detector.name, task), type(exc).__name__, exc)
        return dict.fromkeys((name for name, _ in parts), None)


def _where(name: str, task: Task) -> str:
    return f"{name} on {task.protocol} {task.target}"


def _finite_or_none(name: str, task: Task, scores: np.ndarray, expected: int | None = None) -> np.ndarray | None:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    expected = len(task.test) if expected is None else expected
    if scores.shape != (expected,):
        log.warning("%s: %d scores for %d images; its metrics are NaN", _where(name, task), scores.size, expected)
        return None
    bad = int((~np.isfinite(scores)).sum())
    if bad:
        log.warning("%s: %d of %d scores are not finite; its metrics are NaN", _where(name, task), bad, scores.size)
        return None
    return scores


def flagged_rate(is_anomaly: np.ndarray, scores: np.ndarray | None, threshold: float | None) -> float:
    """The share of the anomalies scored above ``threshold`` (NaN without a threshold, scores or anomalies)."""
    anomalous = np.asarray(is_anomaly, bool)
    if threshold is None or scores is None or not anomalous.any():
        return math.nan
    return float((np.asarray(scores)[anomalous] > threshold).mean())


def evaluate_task(
    task: Task,
    cfg: TrainConfig,
    iwae_k: int | None = IWAE_K,
    detectors: Iterable[str] = DETECTORS,
    score_fit: ScoreFit | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Every requested detector on one task: rows (``protocol, task, detector, auroc,
    average_precision, flagged_rate, seconds`` and the counts), per part of the task (one part,
    ``task.target``, unless it has ``parts``) in :data:`DETECTORS` order, and the VAE fit summary
    (None when no VAE detector was asked for). ``cfg.seed`` seeds the detectors too.

    ``flagged_rate`` needs a threshold per detector: ``vae_anomaly_score`` takes the VAE
    summary's ``threshold`` when there is one; every other detector has none (NaN)."""
    wanted = [d for d in DETECTORS if d in set(detectors)]
    if not iwae_k:
        wanted = [d for d in wanted if d != "vae_iwae_nll"]
    scores: dict[str, dict[str, np.ndarray | None]] = {}  # detector -> part -> scores of the part's rows
    thresholds: dict[str, float] = {}
    seconds: dict[str, float] = {}
    summary = None
    vae_wanted = [d for d in wanted if d in VAE_DETECTORS]
    if vae_wanted:
        k = iwae_k if "vae_iwae_nll" in vae_wanted else None
        vae_scores, summary = score_with_vae(task, cfg, k, score_fit)
        for name in vae_wanted:
            whole = vae_scores.get(name.removeprefix("vae_"))
            whole = None if whole is None else _finite_or_none(name, task, whole)
            scores[name] = {part: None if whole is None else whole[rows] for part, rows in task.subtasks}
            seconds[name] = summary["seconds"]
        if summary.get("threshold") is not None:
            thresholds[VAE_DETECTORS[0]] = float(summary["threshold"])
    for detector in classical_detectors(cfg.seed, [d for d in wanted if d in CLASSICAL]):
        started = time.perf_counter()
        scores[detector.name] = classical_scores(detector, task)
        seconds[detector.name] = round(time.perf_counter() - started, 3)
    rows = []
    for part, index in task.subtasks:
        y = task.is_anomaly[index]
        for name in wanted:
            s = scores[name][part]
            rows.append(
                {
                    "protocol": task.protocol,
                    "task": part,
                    "detector": name,
                    "auroc": math.nan if s is None else metrics.auroc(y, s),
                    "average_precision": math.nan if s is None else metrics.average_precision(y, s),
                    "flagged_rate": flagged_rate(y, s, thresholds.get(name)),
                    "seconds": seconds[name],
                    **task.part_counts(index),
                }
            )
    return rows, summary
