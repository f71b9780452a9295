"""The VAE's anomaly detector, with PyOD's face: ``fit``, ``decision_function``, ``predict``,
``threshold_``, ``decision_scores_``.

One object for every job: ``vae train`` fits it (the score's statistics on the train part, the
threshold on held-out rows) and stores what it fitted *inside the model*, so the Beam job, a
notebook and ``vae evaluate`` rebuild the same detector from the model alone
(:meth:`VAEDetector.from_model`) and score alike. ``vae evaluate`` runs it in the same loop as
PyOD's detectors.

Fitting reads the model's raw per-example terms (:func:`scoring.elbo.score_terms`), never a
score that an earlier fit left in the model, so fitting twice, or after scoring, gives the same
detector."""

from __future__ import annotations

from typing import Any

import numpy as np

from scoring import anomaly
from scoring.blas_threads import one_blas_thread
from scoring.calibration import Calibration
from scoring.elbo import score_terms


def model_reference(model: Any) -> np.ndarray | None:
    """The reference latents stored in ``model`` (None for a model that keeps none)."""
    if not int(getattr(model, "reference_rows", 0)):
        return None
    return model.reference_latents_array()


def model_anomaly_scores(model: Any, terms: dict[str, np.ndarray]) -> np.ndarray:
    """``anomaly_score`` of ``terms`` with the statistics fitted into ``model`` (``neg_elbo`` if none)."""
    stats = getattr(model, "anomaly", None)
    return anomaly.anomaly_scores(stats, terms, model_reference(model) if stats else None)


def model_method_scores(model: Any, terms: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every method's score that the statistics fitted into ``model`` support, by name."""
    stats = getattr(model, "anomaly", None)
    return anomaly.method_scores(stats, terms, model_reference(model) if stats else None)


def score_images(
    model: Any,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    num_samples: int = 16,
    seed: int = 0,
    iwae_k: int | None = None,
    batch_size: int = 1024,
    pixel_scores: bool = False,
) -> dict[str, np.ndarray]:
    """All per-example scores for a data set, the library entry point: the terms of
    :func:`scoring.elbo.score_terms` and ``anomaly_score`` from the detector fitted into the model,
    with numpy's BLAS on one thread meanwhile (:mod:`scoring.blas_threads`)."""
    with one_blas_thread():
        terms = score_terms(
            model,
            images,
            labels,
            num_samples=num_samples,
            seed=seed,
            iwae_k=iwae_k,
            batch_size=batch_size,
            pixel_scores=pixel_scores,
        )
        terms["anomaly_score"] = model_anomaly_scores(model, terms)
    return terms


class VAEDetector:
    """A trained VAE as an anomaly detector; higher scores are more anomalous (PyOD's convention).

    ``method``: one of :data:`scoring.anomaly.METHODS`; ``k``: the latent term's neighbour;
    ``target_fpr``: the false positive rate the threshold aims at on normal images.

    After :meth:`fit`: ``decision_scores_`` (the fit images' scores, leave-one-out in the latent
    term), ``threshold_`` and ``calibration_`` (from the held-out images given to ``fit``, or
    from the fit images' own scores when none are given, as PyOD does), and ``labels_`` (1 for the
    fit images above the threshold)."""

    def __init__(
        self,
        model: Any,
        method: str = anomaly.DEFAULT_METHOD,
        *,
        k: int = anomaly.DEFAULT_K,
        target_fpr: float = 0.01,
        seed: int = 0,
    ) -> None:
        self.model = model
        self.method = anomaly.check_method(method)
        self.k = int(k)
        self.target_fpr = float(target_fpr)
        self.seed = int(seed)
        self.calibration_: Calibration | None = None
        self.decision_scores_: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"VAEDetector(method={self.method!r}, k={self.k}, target_fpr={self.target_fpr:g})"

    @classmethod
    def from_model(cls, model: Any) -> VAEDetector:
        """The detector that was fitted into ``model`` (its method, and its threshold if calibrated)."""
        stats = getattr(model, "anomaly", None) or {}
        calibration = Calibration.from_dict(model.calibration) if getattr(model, "calibration", None) else None
        detector = cls(
            model,
            stats.get("method", "neg_elbo"),
            k=stats.get("k", anomaly.DEFAULT_K),
            target_fpr=calibration.target_fpr if calibration else 0.01,
        )
        detector.calibration_ = calibration
        return detector

    @property
    def threshold_(self) -> float | None:
        return None if self.calibration_ is None else self.calibration_.threshold

    @property
    def labels_(self) -> np.ndarray | None:
        if self.decision_scores_ is None or self.calibration_ is None:
            return None
        return self.calibration_.is_anomaly(self.decision_scores_).astype(np.int64)

    def _terms(self, images: np.ndarray, labels: np.ndarray | None) -> dict[str, np.ndarray]:
        labels = labels if self.model.num_classes else None
        with one_blas_thread():
            return score_terms(
                self.model, images, labels, num_samples=self.model.score_samples, seed=self.model.score_seed
            )

    def fit(
        self,
        images: np.ndarray,
        y: Any = None,
        *,
        labels: np.ndarray | None = None,
        calibration_images: np.ndarray | None = None,
        calibration_labels: np.ndarray | None = None,
        held_out_scores: np.ndarray | None = None,
    ) -> VAEDetector:
        """Fits the score's statistics on ``images`` (the model's training images) and the
        threshold on ``calibration_images`` (normal images that fitted neither the weights nor
        these statistics), or on ``held_out_scores`` already computed (by cross-fitted models, each for rows
        it never saw: :mod:`training.cross_fit`); stores both *in the model* (its ``anomaly``
        and ``calibration`` and the reference weight), so fit a model of your own, not one a running
        job shares. ``y`` is ignored, as in PyOD; ``labels`` are the class labels a conditional model needs."""
        terms = self._terms(images, labels)
        capacity = int(getattr(self.model, "reference_rows", 0))
        reference = None
        if capacity >= 2:
            pick = np.sort(np.random.default_rng(self.seed).permutation(len(images))[:capacity])
            reference = terms["posterior_mean"][pick]
        stats = anomaly.fit_statistics(terms, self.method, reference, self.k)
        if reference is not None:
            self.model.set_reference_latents(reference)
        self.model.anomaly = stats
        self.decision_scores_ = model_anomaly_scores(self.model, terms)
        if held_out_scores is not None:
            held_out = np.asarray(held_out_scores, dtype=np.float64)
        elif calibration_images is not None:
            held_out = self.decision_function(calibration_images, calibration_labels)
        else:
            held_out = self.decision_scores_
        self.calibration_ = Calibration.fit(held_out, self.target_fpr, score="anomaly_score")
        self.model.calibration = self.calibration_.to_dict()
        return self

    def decision_function(self, images: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """``anomaly_score`` of ``images``, float64 (N,)."""
        with one_blas_thread():
            return model_anomaly_scores(self.model, self._terms(images, labels))

    def predict(self, images: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """1 for images above the threshold, 0 otherwise (PyOD's labels)."""
        if self.calibration_ is None:
            raise RuntimeError("this detector has no threshold: fit it, or load a calibrated model")
        return self.calibration_.is_anomaly(self.decision_function(images, labels)).astype(np.int64)
