"""Cross-fitted calibration: the anomaly threshold from every non-holdout row, each scored by a
model that never saw it.

With a small calibration part the 1 % threshold rests on the few largest of about 200 scores, and
on *which* rows the seed happened to put there. Over five equivalent retrains on the digits it
moved by 37 % (max - min over the median), while the 99th percentile of one fixed set of rows,
scored by each retrain's model, moved by 8 %: the models agree, the samples do not
(``benchmarks/threshold_stability.py``, docs/detection.md). Cross-fitting cuts the train,
validation and calibration parts into K folds (stratified by label when every row has one) and trains one
model per fold as ``vae train`` trains (its own train and validation parts, early stopping, the
same settings and likelihood) on the other folds; at K = 5 each sees 68 % of the data less its
validation part, about as many rows as the final model's train part. Each fold's rows are then
scored by the model that left them out, so every row gets an out-of-fold score and the threshold
comes from all of them: the same rows in every retrain, about 5.7 times as many.

The scores come from models like the deployed one, not from it, so the p-values and the monitoring
bound treat them as its own scores of unseen images: an approximation, measured in
docs/detection.md (the observed false positive rate on clean rows stayed inside its interval).

It costs K more fits, so ``auto`` cross-fits only when the calibration part is too small for an
empirical threshold (:func:`scoring.calibration.rows_needed`), and never for data too large for
memory (read to a memory map) or a semi-supervised model (calibrated on its labelled rows)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from scoring.calibration import rows_needed
from training import data as data_lib

log = logging.getLogger(__name__)

DEFAULT_FOLDS = 5
VALIDATION_SHARE = 0.15 / 0.85  # of a fold model's rows: validation's share of the non-holdout rows

#: (train rows, validation rows, fold index) -> a fitted model whose anomaly detector is fitted on its
#: train rows; and (that model, rows) -> their anomaly scores.
FitFold = Callable[[data_lib.ImageData, data_lib.ImageData, int], object]
ScoreRows = Callable[[object, data_lib.ImageData], np.ndarray]


def check_folds(folds: int | None) -> None:
    """``folds`` is None (auto), 0 (off) or at least 2; raises ValueError otherwise."""
    if folds is not None and (folds < 0 or folds == 1):
        raise ValueError(f"{folds} calibration folds: use 0 (no cross-fitting), 2 or more, or auto")


MIN_ROWS_PER_FOLD = 4  # below it a fold model has almost nothing to train or stop early on


def resolve_folds(
    folds: int | None,
    calibration_rows: int,
    target_fpr: float,
    semi_supervised: bool = False,
    on_disk: bool = False,
    rows: int | None = None,
) -> int:
    """How many folds to cross-fit: ``folds`` as set, or (None, ``auto``) :data:`DEFAULT_FOLDS` when
    ``calibration_rows`` are fewer than an empirical threshold at ``target_fpr`` needs and the
    non-holdout ``rows`` are enough for the folds, else 0 (the calibration part alone). Never for a
    semi-supervised model (calibrated on its labelled rows) or for images ``on_disk`` (a memory map:
    the folds would read them into memory), whatever was set. Raises ValueError for a set number of
    folds that ``rows`` cannot fill."""
    check_folds(folds)
    if semi_supervised or on_disk:
        if folds:
            why = (
                "a semi-supervised model is calibrated on its labelled rows"
                if semi_supervised
                else ("the images are memory-mapped on disk, too large to copy into folds")
            )
            log.warning("--calibration-folds %d ignored: %s; calibrating on the calibration part", folds, why)
        return 0
    if folds is None:
        enough = rows is None or rows >= MIN_ROWS_PER_FOLD * DEFAULT_FOLDS
        return DEFAULT_FOLDS if calibration_rows < rows_needed(target_fpr) and enough else 0
    if folds and rows is not None:
        _check_rows(folds, rows)
    return int(folds)


def _check_rows(folds: int, rows: int) -> None:
    if rows < MIN_ROWS_PER_FOLD * folds:
        raise ValueError(f"--calibration-folds {folds}: {rows} non-holdout rows are too few; use fewer folds, or 0")


def fold_of_rows(n: int, folds: int, seed: int, labels: np.ndarray | None = None) -> np.ndarray:
    """The fold (0 .. folds - 1) of each of ``n`` rows: a seeded permutation dealt round-robin, so the
    folds differ in size by at most one; with ``labels``, dealt label by label in turn (stratified), so
    every fold holds each label's rows in proportion."""
    order = np.random.default_rng([seed, folds]).permutation(n)
    if labels is not None:
        order = order[np.argsort(np.asarray(labels)[order], kind="stable")]
    fold = np.empty(n, np.int64)
    fold[order] = np.arange(n) % folds
    return fold


def cross_fitted_scores(
    split: data_lib.TrainingSplit, folds: int, seed: int, fit_fold: FitFold, score_rows: ScoreRows
) -> np.ndarray:
    """Out-of-fold anomaly scores of every row of ``split``'s train, validation and calibration parts
    (in that order), each from the fold model trained without it."""
    parts = (split.train, split.validation, split.calibration)
    rows = _concatenate(parts)
    _check_rows(folds, len(rows))
    labels = None if rows.labels is None or (rows.labels < 0).any() else rows.labels
    fold = fold_of_rows(len(rows), folds, seed, labels)
    scores = np.empty(len(rows), np.float64)
    for k in range(folds):
        others = rows.subset(np.flatnonzero(fold != k))
        order = np.random.default_rng([seed, folds, k]).permutation(len(others))
        validation = max(1, round(VALIDATION_SHARE * len(others)))
        model = fit_fold(others.subset(np.sort(order[validation:])), others.subset(np.sort(order[:validation])), k)
        held = np.flatnonzero(fold == k)
        scores[held] = score_rows(model, rows.subset(held))
        log.info("calibration fold %d/%d: %d rows scored by a model that left them out", k + 1, folds, held.size)
        del model
    return scores


def _concatenate(parts: tuple[data_lib.ImageData, ...]) -> data_lib.ImageData:
    first = parts[0]
    labels = None if first.labels is None else np.concatenate([p.labels for p in parts])
    return data_lib.ImageData(
        images=np.concatenate([np.asarray(p.images) for p in parts]),
        labels=labels,
        example_ids=np.concatenate([p.example_ids for p in parts]),
        class_names=first.class_names,
        source=first.source,
    )
