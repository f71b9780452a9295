"""The default anomaly score, ``anomaly_score``, built from the VAE's own outputs.

Two calls, PyOD-style: :func:`fit_anomaly` fits whatever the score needs from the model's
training images (statistics that are stored inside the model, so every Beam worker computes
the same score), and :func:`anomaly_scores` turns per-example ELBO terms into the score
(higher = more anomalous). A model without fitted statistics (saved before the score existed)
scores by its negative ELBO.
"""

from __future__ import annotations

from typing import Any

import numpy as np

METHODS = ("neg_elbo",)
DEFAULT_METHOD = "neg_elbo"


def fit_anomaly(model: Any, images: np.ndarray, labels: np.ndarray | None = None, method: str = DEFAULT_METHOD) -> None:
    """Fits the score's statistics on training images and stores them in ``model.anomaly``."""
    if method not in METHODS:
        raise ValueError(f"unknown anomaly score {method!r}; choose one of {', '.join(METHODS)}")
    model.anomaly = {"method": method}


def anomaly_scores(
    model: Any, terms: dict[str, np.ndarray], images: np.ndarray, labels: np.ndarray | None = None
) -> np.ndarray:
    """Per-example ``anomaly_score`` from the ELBO ``terms`` of :func:`scoring.elbo.neg_elbo_terms`."""
    return np.asarray(terms["neg_elbo"], dtype=np.float64)
