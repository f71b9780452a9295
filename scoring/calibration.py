"""The anomaly threshold and conformal p-values, fitted once on held-out scores and stored
with the model (the score stays separate from the threshold, as in PyOD).

Training calibrates on the ``anomaly_score`` (:mod:`scoring.anomaly`) of its calibration part:
data that neither fitted the weights nor chose the epoch; or, when that part is small, on every
non-holdout row's score from a cross-fitted model that never saw it (:mod:`training.cross_fit`).
``Calibration.score`` names the score column the threshold and p-values apply to."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MIN_EXCEEDANCES = 10  # calibration scores above the threshold for a threshold that is not noise
LEGACY_SCORE = "neg_elbo"  # what calibrations stored before ``score`` existed were fitted on


@dataclass(frozen=True)
class Calibration:
    """Held-out scores of normal data (``score``: the score's name) and the threshold at ``target_fpr``."""

    scores: np.ndarray = field(repr=False)
    target_fpr: float
    threshold: float
    score: str = "anomaly_score"

    @classmethod
    def fit(cls, held_out_scores: np.ndarray, target_fpr: float = 0.01, score: str = "anomaly_score") -> Calibration:
        scores = np.sort(np.asarray(held_out_scores, dtype=np.float64))
        if scores.size == 0 or not np.all(np.isfinite(scores)):
            raise ValueError("calibration needs a non-empty set of finite held-out scores")
        return cls(scores=scores, target_fpr=target_fpr, threshold=threshold_at(scores, target_fpr), score=score)

    def with_fpr(self, target_fpr: float) -> Calibration:
        return Calibration(self.scores, target_fpr, threshold_at(self.scores, target_fpr), self.score)

    def p_values(self, scores: np.ndarray) -> np.ndarray:
        """Conformal p-value: (1 + #{held-out >= s}) / (n + 1); small means unusual."""
        scores = np.asarray(scores, dtype=np.float64)
        at_least = self.scores.size - np.searchsorted(self.scores, scores, side="left")
        return (1.0 + at_least) / (self.scores.size + 1.0)

    @property
    def above(self) -> int:
        """How many calibration scores lie above the threshold."""
        return int(np.count_nonzero(self.scores > self.threshold))

    def is_anomaly(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold

    def size_warning(self) -> str | None:
        """:func:`size_warning` for these scores and this rate."""
        return size_warning(self.scores.size, self.target_fpr)

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "target_fpr": self.target_fpr,
            "threshold": self.threshold,
            "scores": self.scores.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        return cls(
            np.asarray(data["scores"], dtype=np.float64),
            float(data["target_fpr"]),
            float(data["threshold"]),
            str(data.get("score", LEGACY_SCORE)),
        )


def threshold_at(sorted_scores: np.ndarray, target_fpr: float) -> float:
    """The score above which ``target_fpr`` of normal images lie, from held-out normal scores.

    With at least :data:`MIN_EXCEEDANCES` held-out scores above it, the empirical quantile: the
    smallest held-out score with at most ``target_fpr`` of them above it. With fewer (small data:
    1 % of 270 rows is 2 scores), that order statistic is one of the two or three largest scores
    and moves by a factor of 2 to 3 between equivalent retrains, so the threshold comes from the
    upper tail instead (:func:`tail_threshold`), which every one of the largest scores informs."""
    if not 0.0 < target_fpr < 1.0:
        raise ValueError(f"the false positive rate must be in (0, 1), got {target_fpr}")
    sorted_scores = np.asarray(sorted_scores, dtype=np.float64)
    n = sorted_scores.size
    if exceedances(n, target_fpr) < MIN_EXCEEDANCES and n > 2 * MIN_EXCEEDANCES:
        # never below the empirical threshold with MIN_EXCEEDANCES above it: a looser rate never
        # gives a higher threshold where the two rules meet
        floor = np.quantile(sorted_scores, 1.0 - MIN_EXCEEDANCES / n, method="inverted_cdf")
        return max(tail_threshold(sorted_scores, target_fpr), float(floor))
    # the inverted empirical CDF: index n - floor(n * fpr) - 1, so exactly floor(n * fpr) scores lie above
    return float(np.quantile(sorted_scores, 1.0 - target_fpr, method="inverted_cdf"))


TAIL_SHARE = 0.1  # the largest tenth of the held-out scores (at least MIN_EXCEEDANCES) fits the tail


def tail_threshold(sorted_scores: np.ndarray, target_fpr: float) -> float:
    """Peaks over threshold with an exponential tail: the m = max(10, n / 10) largest of ``n``
    sorted scores exceed u, the next largest, by a mean of s; beyond u the tail is taken to fall
    as exp(-(x - u) / s), so the score exceeded by ``target_fpr`` of normal images is
    u + s * log(m / (n * target_fpr)). Its error comes from the mean of m excesses, not from one
    or two order statistics."""
    n = sorted_scores.size
    m = min(n - 1, max(MIN_EXCEEDANCES, int(math.ceil(TAIL_SHARE * n))))
    u = float(sorted_scores[n - m - 1])
    scale = float(np.mean(sorted_scores[n - m :] - u))
    return u + scale * math.log(m / (n * target_fpr))


def exceedances(n: int, target_fpr: float) -> int:
    """How many of ``n`` calibration scores lie above the threshold at ``target_fpr``: floor(n * fpr)."""
    return int(math.floor(n * target_fpr + 1e-9))


def rows_needed(target_fpr: float, above: int = MIN_EXCEEDANCES) -> int:
    """Calibration rows for ``above`` scores above the threshold at ``target_fpr``: ceil(above / fpr)."""
    return int(math.ceil(above / target_fpr - 1e-9))


def size_warning(n: int, target_fpr: float) -> str | None:
    """Why ``n`` calibration scores are too few for ``target_fpr``, or None when they are enough.

    The threshold is an order statistic with floor(n * fpr) scores above it; with fewer than
    ``MIN_EXCEEDANCES`` of them it moves a lot from one calibration sample to the next, and with
    none it is the largest score, so the target rate cannot be reached."""
    if not 0.0 < target_fpr < 1.0:
        raise ValueError(f"the false positive rate must be in (0, 1), got {target_fpr}")
    above = exceedances(n, target_fpr)
    needed = rows_needed(target_fpr)
    if above == 0 and n <= 2 * MIN_EXCEEDANCES:
        return (
            f"{n} calibration scores are too few for a false positive rate of {target_fpr:g}: the threshold is "
            f"the largest calibration score and the target rate cannot be reached; about {needed} calibration "
            f"rows are needed ({MIN_EXCEEDANCES} above the threshold)"
        )
    if above < MIN_EXCEEDANCES:
        how = (
            "so it is extrapolated from the upper tail of the scores"
            if n > 2 * MIN_EXCEEDANCES
            else "and too few scores to fit their tail"
        )
        return (
            f"only {above} of {n} calibration scores lie above the threshold at a false positive rate of "
            f"{target_fpr:g}, fewer than {MIN_EXCEEDANCES}: the threshold is noisy, {how}; about {needed} "
            "calibration rows are needed for an empirical one"
        )
    return None
