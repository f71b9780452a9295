"""The default anomaly score, ``anomaly_score``, built from the VAE's own outputs.

Two calls, PyOD-style: :func:`fit_anomaly` fits what the score needs on the model's training
images and stores it *inside the model* (scalars in its config, the reference latents in a
weight), so every Beam worker computes the same score; :func:`anomaly_scores` turns the
per-example terms of :func:`scoring.elbo.neg_elbo_terms` into the score, higher = more anomalous.

Methods (``vae evaluate`` reports each side by side, see the README):

- ``neg_elbo``: the negative ELBO in nats.
- ``elbo_latent_knn``: the negative ELBO plus the distance from the image's posterior mean to its
  ``k``-th nearest posterior mean of the training images, each term robustly standardised on
  the training images ((value - median) / IQR), then summed. The ELBO term catches images the
  decoder explains badly; the latent term catches images the model explains well but places
  away from every training image (a new class that shares strokes with the known ones, which the
  likelihood alone ranks as normal: the complexity bias of likelihood scores).

A model with no fitted statistics (saved before the score existed) scores by its negative ELBO.
"""

from __future__ import annotations

from typing import Any

import numpy as np

METHODS = ("neg_elbo", "elbo_latent_knn")
DEFAULT_METHOD = "elbo_latent_knn"
DEFAULT_K = 5
MAX_REFERENCE = 5000  # training posterior means kept in the model for the latent term


def reference_rows(train_rows: int) -> int:
    """How many reference latents a model trained on ``train_rows`` images stores."""
    return min(int(train_rows), MAX_REFERENCE)


def fit_anomaly(
    model: Any,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    method: str = DEFAULT_METHOD,
    *,
    k: int = DEFAULT_K,
    seed: int = 0,
) -> None:
    """Fits the score's statistics on the training ``images`` and stores them in the model."""
    from scoring.elbo import score_images

    if method not in METHODS:
        raise ValueError(f"unknown anomaly score {method!r}; choose one of {', '.join(METHODS)}")
    model.anomaly = None  # score the training images by their terms alone
    terms = score_images(model, images, labels, num_samples=model.score_samples, seed=model.score_seed)
    stats: dict[str, Any] = {"method": method, "k": int(k)}
    stats |= _robust_scale(terms["neg_elbo"], "neg_elbo")
    capacity = int(getattr(model, "reference_rows", 0))
    if capacity >= 2:
        pick = np.sort(np.random.default_rng(seed).permutation(len(images))[:capacity])
        reference = terms["posterior_mean"][pick]
        model.set_reference_latents(reference)
        k = min(int(k), len(reference) - 1)
        stats |= {"k": k, "reference_count": len(reference)}
        stats |= _robust_scale(knn_distance(reference, reference, k, exclude_self=True), "latent_knn")
    elif method != "neg_elbo":
        raise ValueError(f"{method} needs reference latents: build the model with reference_rows >= 2")
    model.anomaly = stats


def method_scores(model: Any, terms: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every method's score that the model's fitted statistics support, by method name."""
    stats = getattr(model, "anomaly", None) or {}
    out = {"neg_elbo": np.asarray(terms["neg_elbo"], dtype=np.float64)}
    if "latent_knn_center" in stats:
        reference = model.reference_latents_array()[: int(stats["reference_count"])]
        distance = knn_distance(terms["posterior_mean"], reference, int(stats["k"]), skip_identical=True)
        out["elbo_latent_knn"] = _standardise(out["neg_elbo"], stats, "neg_elbo") + _standardise(
            distance, stats, "latent_knn"
        )
    return out


def anomaly_scores(model: Any, terms: dict[str, np.ndarray]) -> np.ndarray:
    """Per-example ``anomaly_score``: the model's fitted method (``neg_elbo`` if none)."""
    stats = getattr(model, "anomaly", None) or {}
    return method_scores(model, terms)[stats.get("method", "neg_elbo")]


SAME_POINT = 1e-4  # a reference latent this close to the scored one is that image itself


def knn_distance(
    points: np.ndarray, reference: np.ndarray, k: int, exclude_self: bool = False, skip_identical: bool = False
) -> np.ndarray:
    """Euclidean distance from each point to its ``k``-th nearest reference point (in chunks).

    ``exclude_self``: ``points`` is ``reference`` and row i never counts itself. ``skip_identical``:
    a reference point at (numerically) zero distance is taken to be the scored image itself (a
    training image scored again) and skipped, so training images are scored leave-one-out, as the
    statistics were fitted, and new images as usual."""
    points = np.asarray(points, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    squared_norms = np.sum(reference**2, axis=1)
    out = np.empty(len(points))
    for start in range(0, len(points), 1024):
        chunk = points[start : start + 1024]
        squared = np.maximum(np.sum(chunk**2, axis=1)[:, None] + squared_norms[None] - 2.0 * chunk @ reference.T, 0.0)
        if exclude_self:
            rows = np.arange(len(chunk))
            squared[rows, start + rows] = np.inf
        last = min(k, squared.shape[1] - 1)  # the k+1 nearest, in order, when there are that many
        nearest = np.sort(np.partition(squared, last, axis=1)[:, : last + 1], axis=1)
        kth = nearest[:, k - 1]
        if skip_identical:
            kth = np.where(nearest[:, 0] < SAME_POINT**2, nearest[:, last], kth)
        out[start : start + len(chunk)] = np.sqrt(kth)
    return out


def _robust_scale(values: np.ndarray, name: str) -> dict[str, float]:
    q25, median, q75 = np.percentile(np.asarray(values, dtype=np.float64), [25, 50, 75])
    return {f"{name}_center": float(median), f"{name}_scale": float(max(q75 - q25, 1e-9))}


def _standardise(values: np.ndarray, stats: dict[str, Any], name: str) -> np.ndarray:
    return (np.asarray(values, dtype=np.float64) - stats[f"{name}_center"]) / stats[f"{name}_scale"]
