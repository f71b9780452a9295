"""The anomaly threshold and conformal p-values, fitted once on held-out scores and stored
with the model (the score stays separate from the threshold, as in PyOD)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Calibration:
    """Held-out ``neg_elbo`` scores of normal data and the threshold at ``target_fpr``."""

    scores: np.ndarray = field(repr=False)
    target_fpr: float
    threshold: float

    @classmethod
    def fit(cls, held_out_scores: np.ndarray, target_fpr: float = 0.01) -> Calibration:
        scores = np.sort(np.asarray(held_out_scores, dtype=np.float64))
        if scores.size == 0 or not np.all(np.isfinite(scores)):
            raise ValueError("calibration needs a non-empty set of finite held-out scores")
        return cls(scores=scores, target_fpr=target_fpr, threshold=threshold_at(scores, target_fpr))

    def with_fpr(self, target_fpr: float) -> Calibration:
        return Calibration(self.scores, target_fpr, threshold_at(self.scores, target_fpr))

    def p_values(self, scores: np.ndarray) -> np.ndarray:
        """Conformal p-value: (1 + #{held-out >= s}) / (n + 1); small means unusual."""
        scores = np.asarray(scores, dtype=np.float64)
        at_least = self.scores.size - np.searchsorted(self.scores, scores, side="left")
        return (1.0 + at_least) / (self.scores.size + 1.0)

    def is_anomaly(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {"target_fpr": self.target_fpr, "threshold": self.threshold, "scores": self.scores.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        return cls(np.asarray(data["scores"], dtype=np.float64), float(data["target_fpr"]), float(data["threshold"]))


def threshold_at(sorted_scores: np.ndarray, target_fpr: float) -> float:
    """The smallest held-out score with at most ``target_fpr`` of held-out scores above it."""
    if not 0.0 < target_fpr < 1.0:
        raise ValueError(f"the false positive rate must be in (0, 1), got {target_fpr}")
    # the inverted empirical CDF: index n - floor(n * fpr) - 1, so exactly floor(n * fpr) scores lie above
    return float(np.quantile(sorted_scores, 1.0 - target_fpr, method="inverted_cdf"))
