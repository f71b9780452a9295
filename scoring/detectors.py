"""Classical anomaly detectors to compare the VAE with: thin wrappers over PyOD (``pyod.models``).

Every detector is PyOD's own class with its default parameters, what a user would type
(``IForest()``, ``OCSVM()``, ``PCA()``, ``KDE()``, ``KNN()``, ``LOF()``, ``HBOS()``, ``ECOD()``),
plus ``random_state=seed`` where the class takes one (IForest and PCA), so a table is reproducible.
Scores follow PyOD's convention, *higher = more anomalous*, like the VAE's negative ELBO, so one
metric function ranks them all. The wrappers only rank: PyOD's ``contamination`` threshold and
labels are never used.

Pre-processing, the same for every detector:

- images are flattened to float64 vectors of pixels in [0, 1]; nothing is scaled (PyOD's PCA
  standardises by itself, as it does for any user);
- pixel columns that are constant on the *fit* images are dropped, on the fit images and on every
  image scored later. PyOD's PCA standardises each column and turns a zero-variance one into NaN
  or inf scores; the always-blank border pixels of the 8x8 digits are such columns. A constant
  column tells no detector anything about the fit images, but for the distance-based detectors
  (KNN, LOF, KDE, OCSVM) dropping it also hides ink that a scored image has where no fit image
  has any. The rule is applied to every detector all the same, so that they all see the same input.

:meth:`PyODDetector.fit` then :meth:`PyODDetector.score` is the semi-supervised setting (PyOD's
``fit`` and ``decision_function``); :meth:`PyODDetector.fit_score` is the unsupervised one, where
the scored images are the fit images, and returns PyOD's ``decision_scores_``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

DETECTOR_NAMES = ("iforest", "ocsvm", "pca", "kde", "knn", "lof", "hbos", "ecod")


def _factory(name: str, seed: int) -> Callable[[], Any]:
    """The PyOD detector behind ``name``, with its defaults (``random_state=seed`` where it takes one)."""
    if name == "iforest":
        from pyod.models.iforest import IForest

        return lambda: IForest(random_state=seed)
    if name == "ocsvm":
        from pyod.models.ocsvm import OCSVM

        return OCSVM
    if name == "pca":
        from pyod.models.pca import PCA

        return lambda: PCA(random_state=seed)
    if name == "kde":
        from pyod.models.kde import KDE

        return KDE
    if name == "knn":
        from pyod.models.knn import KNN

        return KNN
    if name == "lof":
        from pyod.models.lof import LOF

        return LOF
    if name == "hbos":
        from pyod.models.hbos import HBOS

        return HBOS
    if name == "ecod":
        from pyod.models.ecod import ECOD

        return ECOD
    raise ValueError(f"unknown detector {name!r}; choose from {', '.join(DETECTOR_NAMES)}")


def flatten(images: np.ndarray) -> np.ndarray:
    """(N, ...) images to (N, D) float64 vectors."""
    x = np.asarray(images, dtype=np.float64)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty batch of images, got shape {x.shape}")
    return x.reshape(x.shape[0], -1)


def varying_columns(x: np.ndarray) -> np.ndarray:
    """Boolean mask of the columns of ``x`` (N, D) that are not constant; raises if none varies."""
    keep = np.ptp(x, axis=0) > 0
    if not keep.any():
        raise ValueError(f"all {x.shape[1]} pixels are constant on the {x.shape[0]} fit images; nothing to fit")
    return keep


class PyODDetector:
    """One PyOD detector behind the shared pre-processing (see the module docstring).

    ``factory`` builds a fresh, unfitted PyOD detector; every :meth:`fit` starts from a new one.
    After fitting, ``model`` is the PyOD object and ``columns`` the mask of the pixels it sees.
    """

    def __init__(self, name: str, factory: Callable[[], Any]) -> None:
        self.name = name
        self.factory = factory
        self.model: Any = None
        self.columns: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"PyODDetector({self.name!r})"

    def fit(self, images: np.ndarray) -> PyODDetector:
        """Fits on ``images`` (N, ...) after dropping the pixel columns constant on them."""
        x = flatten(images)
        self.columns = varying_columns(x)
        self.model = self.factory().fit(x[:, self.columns])
        return self

    def score(self, images: np.ndarray) -> np.ndarray:
        """PyOD's ``decision_function`` on new images: (N,) float64, higher = more anomalous."""
        if self.model is None or self.columns is None:
            raise RuntimeError(f"{self.name}: call fit() before score()")
        x = flatten(images)
        if x.shape[1] != self.columns.size:
            raise ValueError(f"{self.name}: fitted on {self.columns.size} pixels, got images with {x.shape[1]}")
        return np.asarray(self.model.decision_function(x[:, self.columns]), dtype=np.float64).ravel()

    def fit_score(self, images: np.ndarray) -> np.ndarray:
        """Fits on ``images`` and returns their own scores (PyOD's ``decision_scores_``): the
        unsupervised setting, where the fit images are the ones being ranked."""
        self.fit(images)
        return np.asarray(self.model.decision_scores_, dtype=np.float64).ravel()


def make_detector(name: str, seed: int = 0) -> PyODDetector:
    """The wrapper for one of :data:`DETECTOR_NAMES`, seeded where PyOD's class takes a seed."""
    return PyODDetector(name, _factory(name, seed))


def classical_detectors(seed: int = 0, names: Iterable[str] = DETECTOR_NAMES) -> list[PyODDetector]:
    """Fresh wrappers for ``names`` (all eight by default), in :data:`DETECTOR_NAMES` order."""
    wanted = list(names)
    unknown = [n for n in wanted if n not in DETECTOR_NAMES]
    if unknown:
        raise ValueError(f"unknown detector(s) {', '.join(unknown)}; choose from {', '.join(DETECTOR_NAMES)}")
    return [make_detector(name, seed) for name in DETECTOR_NAMES if name in wanted]
