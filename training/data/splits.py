"""How a training run divides its data: the seeded, stratified parts and the fixed, hash-chosen
holdout; the grey-level grid of the pixels; a content fingerprint."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from training.data.images import DataError, ImageData


@dataclass(frozen=True)
class Split:
    train: ImageData
    validation: ImageData
    test: ImageData


@dataclass(frozen=True)
class TrainingSplit:
    """The four parts of a training run's data, one job each.

    ``train`` fits the weights, ``validation`` only decides early stopping, ``calibration`` only
    sets the anomaly threshold and p-values (when it is large enough; else every non-holdout row is
    scored by cross-fitted models, :mod:`training.cross_fit`), and ``holdout`` is chosen by a hash
    of each ``example_id`` (:func:`in_holdout`), not by the seed: the same rows in every run and
    retrain, never trained on, and the data on which ``--promote if-better`` compares challenger and
    champion."""

    train: ImageData
    validation: ImageData
    calibration: ImageData
    holdout: ImageData


def split(data: ImageData, seed: int = 0, validation: float = 0.15, test: float = 0.15) -> Split:
    """A seeded train / validation / test split, stratified by label when there are labels (and
    enough rows per label for it)."""
    n = len(data)
    if n < 10:
        raise DataError(f"{data.source}: {n} images are too few to split into train, validation and test")
    index = np.arange(n)
    stratify = _stratify_by(data.labels)
    rest, test_idx = _split_part(index, test, seed, stratify)
    rest_stratify = None if stratify is None else stratify[rest]
    train_idx, val_idx = _split_part(rest, validation / (1.0 - test), seed, rest_stratify)
    return Split(data.subset(np.sort(train_idx)), data.subset(np.sort(val_idx)), data.subset(np.sort(test_idx)))


HOLDOUT_FRACTION = 0.15
HOLDOUT_SALT = "vae-pipeline holdout v1"  # changing it moves every example in or out of the holdout
_BUCKETS = 10_000
MIN_TRAINING_ROWS = 20


def in_holdout(example_ids: np.ndarray, fraction: float = HOLDOUT_FRACTION) -> np.ndarray:
    """True for the examples in the fixed holdout: sha256(salt + example_id), first 8 bytes mod 10,000,
    below ``fraction`` * 10,000. It depends on the id alone, never on the seed or the row order."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the holdout fraction must be in (0, 1), got {fraction}")
    cut = round(fraction * _BUCKETS)
    salt = HOLDOUT_SALT.encode()
    buckets = [
        int.from_bytes(hashlib.sha256(salt + str(i).encode()).digest()[:8], "big") % _BUCKETS for i in example_ids
    ]
    return np.asarray(buckets, dtype=np.int64) < cut


def _by_id(data: ImageData, index: np.ndarray) -> np.ndarray:
    """``index`` ordered by example_id, so that a part does not depend on the order of the input rows."""
    return index[np.argsort(data.example_ids[index], kind="stable")]


def _stratify_by(labels: np.ndarray | None) -> np.ndarray | None:
    if labels is None:
        return None
    _, counts = np.unique(labels, return_counts=True)
    return labels if counts.min() >= 3 else None


def _seeded_split(
    index: np.ndarray, labels: np.ndarray | None, size: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(rest, part) with ``size`` of ``index`` in ``part``; stratified by label when sklearn can."""
    return _split_part(index, size, seed, _stratify_by(None if labels is None else labels[index]))


def _split_part(
    index: np.ndarray, size: float, seed: int, stratify: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    try:
        rest, part = train_test_split(index, test_size=size, random_state=seed, stratify=stratify)
    except ValueError:  # too few rows per class for a stratified part of this size
        rest, part = train_test_split(index, test_size=size, random_state=seed)
    return np.asarray(rest), np.asarray(part)


def training_split(
    data: ImageData,
    seed: int = 0,
    holdout: float = HOLDOUT_FRACTION,
    validation: float = 0.15,
    calibration: float = 0.15,
) -> TrainingSplit:
    """Train / validation / calibration / holdout (55 / 15 / 15 / 15 % of the rows by default).

    The holdout is :func:`in_holdout` of the example ids, the same rows whatever the seed; the rest
    is split by the seed, stratified by label when there are labels. Every part is ordered by
    example_id, so a shuffled copy of the data gives the same parts."""
    n = len(data)
    if min(validation, calibration) <= 0.0 or validation + calibration + holdout >= 1.0:
        raise ValueError("validation, calibration and holdout must be positive shares summing to less than 1")
    if n < MIN_TRAINING_ROWS:
        raise DataError(
            f"{data.source}: {n} images are too few to split into train, validation, calibration and holdout "
            f"parts (at least {MIN_TRAINING_ROWS} are needed)"
        )
    held = in_holdout(data.example_ids, holdout)
    holdout_idx = _by_id(data, np.flatnonzero(held))
    rest = _by_id(data, np.flatnonzero(~held))
    if holdout_idx.size == 0 or rest.size < 3:
        raise DataError(
            f"{data.source}: the example_id hash put {holdout_idx.size} of {n} images in the holdout and "
            f"{rest.size} outside it; too few for four parts (train, validation, calibration, holdout): "
            "add more images"
        )
    share = 1.0 - holdout
    rest, calibration_idx = _seeded_split(rest, data.labels, calibration / share, seed)
    train_idx, validation_idx = _seeded_split(rest, data.labels, validation / (share - calibration), seed)
    parts = [_by_id(data, i) for i in (train_idx, validation_idx, calibration_idx)]
    if min(p.size for p in parts) == 0:
        raise DataError(f"{data.source}: {n} images are too few for non-empty train, validation and calibration parts")
    return TrainingSplit(*(data.subset(p) for p in parts), data.subset(holdout_idx))


MAX_LEVELS = 256
CHUNK_ROWS = 8192


def grey_levels(images: np.ndarray, sample: int = 1_000_000, tolerance: float = 0.01) -> int:
    """How many evenly spaced grey levels the pixels sit on: 2 for binary images, 17 for the
    0-16 digits, 256 for 8-bit images; 0 when the values are not on such a grid (continuous).

    Looks at about ``sample`` values from rows drawn at random over the whole data set (reading
    only those rows of a memory map), and allows ``tolerance`` of the values strictly between 0
    and 1 off the grid (a few synthetic likelihood means among quantised images)."""
    flat = images.reshape(len(images), -1)
    rows = max(1, sample // max(1, flat.shape[1]))
    if len(flat) > rows:
        pick = np.sort(np.random.default_rng(0).choice(len(flat), rows, replace=False))
        flat = flat[pick]
    values, counts = np.unique(np.asarray(flat, dtype=np.float64), return_counts=True)
    # the tolerance counts only values strictly between 0 and 1: a mostly black (or black and
    # white) data set must not pass for binary on the strength of its background
    inside = (values > 0.0) & (values < 1.0)
    total = counts[inside].sum()
    for steps in range(1, MAX_LEVELS):
        scaled = values * steps
        on_grid = np.abs(scaled - np.round(scaled)) < 1e-3
        if counts[inside & ~on_grid].sum() <= tolerance * total:
            return steps + 1
    return 0


def typical_brightest(images: np.ndarray) -> float:
    """The median over the images of each image's brightest pixel (read in chunks: a memory map stays on disk)."""
    peaks = [
        np.asarray(images[start : start + CHUNK_ROWS]).reshape(min(CHUNK_ROWS, len(images) - start), -1).max(axis=1)
        for start in range(0, len(images), CHUNK_ROWS)
    ]
    return float(np.median(np.concatenate(peaks))) if peaks else 0.0


def levels_reason(images: np.ndarray, levels: int, sample: int = 1_000_000) -> str:
    """Why the pixels sit on ``levels`` grey levels, in words that do not claim more levels than the
    pixels use: 0/1 integers read as 0-255 values sit on the 256-level grid but take two values."""
    flat = np.asarray(images[: max(1, sample // max(1, int(np.prod(images.shape[1:]))))]).reshape(-1)
    used = np.unique(flat)
    if len(used) <= 4 and levels > len(used):
        values = ", ".join(f"{v:.4g}" for v in used)
        return (
            f"the pixels take only {len(used)} values ({values}) of a grid of {levels} evenly spaced grey levels; "
            "integer pixels are divided by 255: for 0/1 masks train with --pixel-scale 1"
        )
    return f"the pixels take {levels} evenly spaced grey levels"


def fingerprint(data: ImageData) -> str:
    """A content hash of the images and labels, logged with every training run."""
    digest = hashlib.sha256()
    digest.update(str(data.images.shape).encode())
    for start in range(0, len(data), CHUNK_ROWS):  # in chunks: the images may be a memory map on disk
        digest.update(np.ascontiguousarray(data.images[start : start + CHUNK_ROWS]).tobytes())
    if data.labels is not None:
        digest.update(np.ascontiguousarray(data.labels).tobytes())
    return digest.hexdigest()[:16]
