"""Classical anomaly detectors to compare the VAE with, on the same split.

Each detector is fitted on training images and scores others with *higher = more anomalous*,
like the VAE's negative ELBO, so one metric function ranks them all. Images are flattened to
vectors of pixels in [0, 1]; nothing else is scaled, so every detector sees the same input.
The score is kept apart from any threshold (as in PyOD): these classes only rank.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Detector(Protocol):
    name: str

    def fit(self, images: np.ndarray) -> Detector: ...
    def score(self, images: np.ndarray) -> np.ndarray: ...
    def fit_score(self, images: np.ndarray) -> np.ndarray: ...


def flatten(images: np.ndarray) -> np.ndarray:
    """(N, ...) images to (N, D) float64 vectors."""
    x = np.asarray(images, dtype=np.float64)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty batch of images, got shape {x.shape}")
    return x.reshape(x.shape[0], -1)


class IsolationForestDetector:
    """Isolation Forest (Liu et al., 2008): anomalies take fewer random splits to isolate."""

    name = "isolation_forest"

    def fit_score(self, images: np.ndarray) -> np.ndarray:
        """Fits on ``images`` and scores them (the unsupervised setting)."""
        return self.fit(images).score(images)

    def __init__(self, n_estimators: int = 200, seed: int = 0) -> None:
        self.n_estimators = n_estimators
        self.seed = seed
        self._model = None

    def fit(self, images: np.ndarray) -> IsolationForestDetector:
        from sklearn.ensemble import IsolationForest

        self._model = IsolationForest(n_estimators=self.n_estimators, random_state=self.seed).fit(flatten(images))
        return self

    def score(self, images: np.ndarray) -> np.ndarray:
        return -_fitted(self._model, self.name).score_samples(flatten(images))


class OneClassSVMDetector:
    """One-Class SVM with an RBF kernel (Schoelkopf et al., 2001); ``gamma="scale"`` = 1 / (D var(x))."""

    name = "one_class_svm"

    def fit_score(self, images: np.ndarray) -> np.ndarray:
        return self.fit(images).score(images)

    def __init__(self, nu: float = 0.1, gamma: str | float = "scale") -> None:
        self.nu = nu
        self.gamma = gamma
        self._model = None

    def fit(self, images: np.ndarray) -> OneClassSVMDetector:
        from sklearn.svm import OneClassSVM

        self._model = OneClassSVM(kernel="rbf", nu=self.nu, gamma=self.gamma).fit(flatten(images))
        return self

    def score(self, images: np.ndarray) -> np.ndarray:
        return -_fitted(self._model, self.name).decision_function(flatten(images))


class PCADetector:
    """Squared error of the reconstruction from the principal components that keep ``variance`` of
    the training variance (Shyu et al., 2003, in its simplest form)."""

    name = "pca_reconstruction"

    def fit_score(self, images: np.ndarray) -> np.ndarray:
        return self.fit(images).score(images)

    def __init__(self, variance: float = 0.9) -> None:
        self.variance = variance
        self._model = None

    def fit(self, images: np.ndarray) -> PCADetector:
        from sklearn.decomposition import PCA

        self._model = PCA(n_components=self.variance, svd_solver="full").fit(flatten(images))
        return self

    def score(self, images: np.ndarray) -> np.ndarray:
        model = _fitted(self._model, self.name)
        x = flatten(images)
        return np.sum((x - model.inverse_transform(model.transform(x))) ** 2, axis=1)


class KDEDetector:
    """Gaussian kernel density; the bandwidth maximises the held-out log-likelihood in k-fold
    cross-validation on the training images. Score: -log density.

    Computed exactly from pairwise distances (N is small here), not with scikit-learn's tree
    estimator, whose answer drifts by nats at the small bandwidths that cross-validation picks
    on 64-pixel digits, where every density is a sum of vanishing kernel values.
    """

    name = "kde"

    def __init__(self, bandwidths: np.ndarray | None = None, folds: int = 5, seed: int = 0) -> None:
        self.bandwidths = np.logspace(-1.5, 0.5, 41) if bandwidths is None else np.asarray(bandwidths, float)
        self.folds = folds
        self.seed = seed
        self.bandwidth: float | None = None
        self.cv_log_likelihood: np.ndarray | None = None  # mean held-out log density per bandwidth
        self._train: np.ndarray | None = None

    def fit(self, images: np.ndarray) -> KDEDetector:
        x = flatten(images)
        folds = min(self.folds, len(x))
        if folds >= 2:
            from sklearn.model_selection import KFold

            totals = np.zeros(len(self.bandwidths))
            for fit_index, held_index in KFold(folds, shuffle=True, random_state=self.seed).split(x):
                squared = squared_distances(x[held_index], x[fit_index])
                totals += [log_density(squared, h, x.shape[1]).sum() for h in self.bandwidths]
            self.cv_log_likelihood = totals / len(x)
            self.bandwidth = float(self.bandwidths[int(np.argmax(self.cv_log_likelihood))])
        else:
            self.bandwidth = float(np.median(self.bandwidths))
        self._train = x
        return self

    def score(self, images: np.ndarray) -> np.ndarray:
        train = _fitted(self._train, self.name)
        return -log_density(squared_distances(flatten(images), train), float(self.bandwidth), train.shape[1])

    def fit_score(self, images: np.ndarray) -> np.ndarray:
        """Fits on ``images`` and scores each by the density of the *others* (leave-one-out).

        Scoring the fitted points with their own kernel in the sum would give every point about
        the same score, ``-log(K(0) / N)``, once the bandwidth is below the distance between
        neighbours, which is where cross-validation puts it on 64-pixel digits.
        """
        x = flatten(images)
        self.fit(x)
        if len(x) < 2:
            return np.zeros(len(x))
        squared = squared_distances(x, x)
        np.fill_diagonal(squared, np.inf)
        return -log_density(squared, float(self.bandwidth), x.shape[1])


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) squared Euclidean distances, never negative."""
    return np.maximum(np.sum(a**2, 1)[:, None] + np.sum(b**2, 1)[None, :] - 2.0 * a @ b.T, 0.0)


def log_density(squared: np.ndarray, bandwidth: float, dim: int) -> np.ndarray:
    """log of the Gaussian KDE at each row's point, from its squared distances to the kernel
    centres (an ``inf`` distance drops a centre: the leave-one-out case)."""
    from scipy.special import logsumexp

    centres = np.isfinite(squared).sum(axis=1)
    log_kernel = -squared / (2.0 * bandwidth**2) - 0.5 * dim * np.log(2.0 * np.pi * bandwidth**2)
    return logsumexp(log_kernel, axis=1) - np.log(centres)


def _fitted(model, name: str):
    if model is None:
        raise RuntimeError(f"{name}: call fit() before score()")
    return model


def classical_detectors(seed: int = 0) -> list[Detector]:
    """The four baselines, in table order, seeded where they are random."""
    return [IsolationForestDetector(seed=seed), OneClassSVMDetector(), PCADetector(), KDEDetector(seed=seed)]
