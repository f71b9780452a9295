"""The anomaly score's maths: plain numpy on the per-example terms of a VAE, no model, no backend.

:class:`scoring.detector.VAEDetector` fits these statistics on a model's training images and
stores them in the model (the dict in its config, the reference latents in a weight), so every
Beam worker computes the same score; this module only turns terms into scores.

Methods, higher = more anomalous (``vae evaluate`` reports them side by side, docs/detection.md):

- ``neg_elbo``: the negative ELBO in nats.
- ``elbo_latent_knn``: the negative ELBO plus the distance from the image's posterior mean to its
  ``k``-th nearest posterior mean of the training images, each robustly standardised on the
  training images ((value - median) / IQR), then summed. The latent term catches new kinds of
  image the likelihood ranks as normal (the complexity bias); it is fooled by a cluster of
  anomalies inside the training data, whose members are each other's nearest neighbours.
- ``elbo_latent_knn_rarity`` (the previous default): three kinds of evidence, each robustly standardised
  on the training images. The image is *improbable* (the negative ELBO) or *new* (the latent
  distance to the 5th-nearest training image), summed as in ``elbo_latent_knn`` but each floored
  at -1 IQR, so a term that calls an image extremely typical (a blank image has a high
  likelihood; a planted cluster's members are each other's nearest latents) cannot cancel the
  other's alarm; plus *rare*: the distance to the posterior mean ``k_mass``-th nearest (3 % of
  the reference latents), counted beyond one IQR above its median. An image of a mode holding
  less than about 3 % of the training images (anomalies clustered inside the training data, a
  batch of identical broken images) has no such neighbour near it, however tight its own cluster.
- ``elbo_latent_knn_rarity_rate`` (the default): ``elbo_latent_knn_rarity`` plus an *empty*
  alarm: the image's rate (its KL term, the nats the encoder needs to describe it) far below the
  training images', measured on a log scale and robustly standardised (IQR at least
  ``MIN_LOG_RATE_SCALE``), counted beyond ``RATE_MARGIN`` IQRs under the median and weighted
  ``RATE_WEIGHT``. Under a Bernoulli decoder a blank image, or 0/1 pixels divided by 255 once too
  often, is as likely as the thinnest training digit and its encoding sits among the training
  latents, but the encoder finds almost nothing in it to encode.

Chosen by ``vae evaluate`` and ``benchmarks/anomaly_candidates.py`` (docs/detection.md, "How the
defaults were chosen").
"""

from __future__ import annotations

from typing import Any

import numpy as np

METHODS = ("neg_elbo", "elbo_latent_knn", "elbo_latent_knn_rarity", "elbo_latent_knn_rarity_rate")
DEFAULT_METHOD = "elbo_latent_knn_rarity_rate"
PREVIOUS_METHOD = "elbo_latent_knn_rarity"  # the default it replaced: vae evaluate compares them, same fits
LATENT_METHODS = METHODS[1:]  # the methods that need reference latents
DEFAULT_K = 5
MASS_SHARE = 0.03  # the mass term's neighbour: 3 % of the reference latents (at least DEFAULT_K)
MASS_MARGIN = 1.0  # the rarity term speaks only this many IQRs above its median
FLOOR = -1.0  # how far (in IQRs) a term that calls an image typical can pull the score down
RATE_MARGIN = 2.0  # the empty alarm speaks only this many IQRs below the median log-rate
RATE_WEIGHT = 2.0
MIN_RATE = 1.0  # nats: a model whose median training image costs less has no rate to compare
MIN_LOG_RATE_SCALE = 0.1  # the log-rate's IQR at least this (about 10 %): no alarm from tiny dips of a flat rate
MAX_REFERENCE = 5000  # training posterior means kept in the model for the latent term


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown anomaly score {method!r}; choose one of {', '.join(METHODS)}")
    return method


def reference_rows(train_rows: int) -> int:
    """How many reference latents a model trained on ``train_rows`` images stores."""
    return min(int(train_rows), MAX_REFERENCE)


def fit_statistics(
    terms: dict[str, np.ndarray], method: str, reference: np.ndarray | None, k: int = DEFAULT_K
) -> dict[str, Any]:
    """The statistics ``method`` needs, fitted on the training images' ``terms``.

    ``reference``: the posterior means the latent term measures against (training images, at
    least 2), or None for a model that keeps none (then only ``neg_elbo`` can be fitted)."""
    check_method(method)
    if int(k) < 1:
        raise ValueError(f"k must be at least 1 (the k-th nearest reference latent), got {k}")
    stats: dict[str, Any] = {"method": method, "k": int(k)}
    stats |= _robust_scale(terms["neg_elbo"], "neg_elbo")
    if "kl" in terms and np.median(terms["kl"]) >= MIN_RATE:
        stats |= _robust_scale(_log_rate(terms["kl"]), "log_rate", min_scale=MIN_LOG_RATE_SCALE)
    if reference is not None and len(reference) >= 2:
        k = min(int(k), len(reference) - 1)
        k_mass = min(max(k, int(MASS_SHARE * len(reference))), len(reference) - 1)
        stats |= {"k": k, "k_mass": k_mass, "reference_count": len(reference)}
        stats |= _robust_scale(knn_distance(reference, reference, k, exclude_self=True), "latent_knn")
        stats |= _robust_scale(knn_distance(reference, reference, k_mass, exclude_self=True), "latent_mass")
    elif method in LATENT_METHODS:
        raise ValueError(f"{method} needs reference latents: build the model with reference_rows >= 2")
    return stats


def method_scores(
    stats: dict[str, Any] | None, terms: dict[str, np.ndarray], reference: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Every method's score that ``stats`` supports, by method name (``neg_elbo`` always)."""
    stats = stats or {}
    out = {"neg_elbo": np.asarray(terms["neg_elbo"], dtype=np.float64)}
    if "latent_knn_center" in stats and reference is not None:
        reference = reference[: int(stats["reference_count"])]
        k, k_mass = int(stats["k"]), int(stats.get("k_mass", 0))  # no k_mass: saved before the rarity term
        distance = knn_distances(terms["posterior_mean"], reference, (k, k_mass) if k_mass else (k,))
        elbo = _standardise(out["neg_elbo"], stats, "neg_elbo")
        latent = _standardise(distance[k], stats, "latent_knn")
        out["elbo_latent_knn"] = elbo + latent
        if k_mass:
            rare = np.maximum(_standardise(distance[k_mass], stats, "latent_mass") - MASS_MARGIN, 0.0)
            out["elbo_latent_knn_rarity"] = np.maximum(elbo, FLOOR) + np.maximum(latent, FLOOR) + rare
            empty = 0.0
            if "log_rate_center" in stats:  # absent: the model's rate is too small to compare
                below = -_standardise(_log_rate(terms["kl"]), stats, "log_rate")
                empty = RATE_WEIGHT * np.maximum(below - RATE_MARGIN, 0.0)
            out["elbo_latent_knn_rarity_rate"] = out["elbo_latent_knn_rarity"] + empty
    return out


def anomaly_scores(
    stats: dict[str, Any] | None, terms: dict[str, np.ndarray], reference: np.ndarray | None = None
) -> np.ndarray:
    """Per-example ``anomaly_score``: the fitted method's (``neg_elbo`` when nothing is fitted)."""
    method = (stats or {}).get("method", "neg_elbo")
    scores = method_scores(stats, terms, reference)
    if method not in scores:
        raise ValueError(
            f"the model's anomaly score {method!r} cannot be computed from what it stores (this version computes "
            f"{', '.join(scores)} for it): retrain it with --anomaly-score {DEFAULT_METHOD}"
        )
    return scores[method]


SAME_POINT = 1e-4  # a reference latent this close to the scored one is that image itself


def knn_distances(points: np.ndarray, reference: np.ndarray, ks: tuple[int, ...]) -> dict[int, np.ndarray]:
    """:func:`knn_distance` with ``skip_identical`` for several ``k`` from one distance matrix."""
    return dict(zip(ks, _knn(points, reference, ks, exclude_self=False, skip_identical=True), strict=True))


def knn_distance(
    points: np.ndarray, reference: np.ndarray, k: int, exclude_self: bool = False, skip_identical: bool = False
) -> np.ndarray:
    """Euclidean distance from each point to its ``k``-th nearest reference point (in chunks).

    ``exclude_self``: ``points`` is ``reference`` and row i never counts itself. ``skip_identical``:
    a reference point at (numerically) zero distance is taken to be the scored image itself (a
    training image scored again) and skipped, so training images are scored leave-one-out, as the
    statistics were fitted, and new images as usual."""
    return _knn(points, reference, (k,), exclude_self, skip_identical)[0]


KNN_CHUNK = 512  # points per distance matrix: 512 x 5,000 float64 is 20 MB, and stays in cache better


def _knn(
    points: np.ndarray, reference: np.ndarray, ks: tuple[int, ...], exclude_self: bool, skip_identical: bool
) -> list[np.ndarray]:
    points = np.asarray(points, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    squared_norms = np.sum(reference**2, axis=1)
    out = [np.empty(len(points)) for _ in ks]
    top = max(ks)
    for start in range(0, len(points), KNN_CHUNK):
        chunk = points[start : start + KNN_CHUNK]
        # |a|^2 + |b|^2 - 2 a.b in place, in that order: two matrices per chunk, not five. The product
        # always has KNN_CHUNK rows (a short chunk padded with zeros): BLAS takes another path for
        # other row counts (one row: gemv), and a point's distances must not depend on its batch.
        product = np.pad(chunk, ((0, KNN_CHUNK - len(chunk)), (0, 0))) @ reference.T
        product = product[: len(chunk)]
        product *= 2.0
        squared = np.add(np.sum(chunk**2, axis=1)[:, None], squared_norms[None])
        np.subtract(squared, product, out=squared)
        np.maximum(squared, 0.0, out=squared)
        del product
        if exclude_self:
            rows = np.arange(len(chunk))
            squared[rows, start + rows] = np.inf
        last = min(top, squared.shape[1] - 1)  # the top+1 nearest, in order, when there are that many
        squared.partition(last, axis=1)
        nearest = np.sort(squared[:, : last + 1], axis=1)
        same = nearest[:, 0] < SAME_POINT**2 if skip_identical else None
        for i, k in enumerate(ks):
            kth = nearest[:, k - 1]
            if same is not None:
                kth = np.where(same, nearest[:, min(k, last)], kth)
            out[i][start : start + len(chunk)] = np.sqrt(kth)
    return out


def _log_rate(kl: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(np.asarray(kl, dtype=np.float64), 1e-3))


def _robust_scale(values: np.ndarray, name: str, min_scale: float = 1e-9) -> dict[str, float]:
    q25, median, q75 = np.percentile(np.asarray(values, dtype=np.float64), [25, 50, 75])
    return {f"{name}_center": float(median), f"{name}_scale": float(max(q75 - q25, min_scale))}


def _standardise(values: np.ndarray, stats: dict[str, Any], name: str) -> np.ndarray:
    return (np.asarray(values, dtype=np.float64) - stats[f"{name}_center"]) / stats[f"{name}_scale"]
