"""The numbers a monitoring row holds about one run's scores: the acceptance bound of its flagged
rate, the drift of its scores from the model's calibration scores, and their quantiles.

**The rate bound.** The threshold has ``k`` of the model's ``n`` calibration scores above it (an
order statistic with enough rows; on small data a tail fit that falls between two of them,
:func:`scoring.calibration.threshold_at`: ``k`` is then counted, and the bound below is the one of
the order statistic just under it, a close and slightly wide approximation). For exchangeable scores
(nothing changed since calibration; for cross-fitted calibration scores, from models like the
deployed one rather than itself, approximately: :mod:`training.cross_fit`) the probability ``p``
that a new score lies above it is itself random, ``Beta(k + 1, n - k)`` (the mass above the (n-k)-th
of n order statistics), so the flagged count of ``m`` new scores follows ``BetaBinomial(m, k + 1, n
- k)`` exactly, whatever the score's distribution (the conformal coverage argument). A plain
``Binomial(m, target_fpr)`` ignores that the threshold was estimated: with 271 calibration rows at 1
% (k = 2; the digits' calibration part) the true rate of a given model lies anywhere between about
0.2 % and 3 %, so on a 100,000-row day a binomial interval (0.9 % to 1.1 %) would raise the alarm
most days for a model that is fine. The beta-binomial interval is as narrow as the binomial one when
the calibration set is large and honest when it is small. The bound is the two-sided acceptance
interval of that count at ``confidence`` (default 0.999: the count falls below its lower end, or
above its upper end, with probability at most 0.0005 each when nothing changed), so a daily alarm is
rare unless something did. Without the calibration scores (only a threshold and a target rate known)
the binomial interval at the target rate is used, and ``bound_method`` says which.

**The drift statistic.** The two-sample Kolmogorov-Smirnov statistic ``D`` (the largest gap between
the two empirical CDFs) of the run's calibrated score column (``anomaly_score``; ``neg_elbo`` for
models calibrated before it) against the calibration scores stored in full with the model
(``model.calibration["scores"]``). KS rather than the population stability index: it needs no bins,
depends only on ranks (so on no unit or scale of the score), lies in [0, 1] whatever the score, and
has a known distribution when nothing changed, so its limit can be set at the same confidence as the
rate bound. The limit is the larger of (a) the critical value of ``D`` at that confidence for the
two sample sizes, ``sqrt(-ln(alpha / 2) / 2) * sqrt((n + m) / (n m))`` with ``alpha = 1 -
confidence`` (what sampling noise alone can reach), and (b) ``min_drift`` (default 0.1, a tenth of
the scores' mass moved): with many rows and a large calibration set (a) shrinks towards zero and
would flag shifts too small to matter. The p-value is recorded beside it (scipy's ``ks_2samp``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_CONFIDENCE = 0.999
DEFAULT_MIN_DRIFT = 0.1
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def quantile_column(q: float) -> str:
    """``score_q05`` for 0.05, ``score_q50`` for the median."""
    return f"score_q{round(q * 100):02d}"


QUANTILE_COLUMNS = tuple(quantile_column(q) for q in QUANTILES)


@dataclass(frozen=True)
class RateBound:
    """The acceptance interval of the flagged rate of ``rows`` scores, and how it was found."""

    lower: float  # rate: lowest acceptable flagged count / rows
    upper: float
    expected: float  # the rate expected when nothing changed
    method: str  # "beta-binomial" (calibration scores known) or "binomial" (target rate only)
    confidence: float

    def holds(self, rate: float) -> bool:
        return self.lower <= rate <= self.upper


@dataclass(frozen=True)
class Drift:
    statistic: float  # two-sample KS D in [0, 1]
    p_value: float
    limit: float  # D above it is drift

    @property
    def drifted(self) -> bool:
        return self.statistic > self.limit


def check_confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"the monitoring confidence must be in (0, 1), got {confidence}")
    return float(confidence)


def flagged_rate_bound(
    rows: int,
    *,
    calibration_scores: np.ndarray | None = None,
    threshold: float | None = None,
    target_fpr: float | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
) -> RateBound | None:
    """The two-sided acceptance interval of the flagged rate of ``rows`` scores at ``confidence``
    (see the module docstring); None when there is nothing to bound (no rows, or no threshold and no
    target rate)."""
    from scipy import stats

    tail = (1.0 - check_confidence(confidence)) / 2.0
    if rows <= 0:
        return None
    if calibration_scores is not None and threshold is not None and len(calibration_scores) > 0:
        reference = np.asarray(calibration_scores, dtype=np.float64)
        n, above = reference.size, int(np.count_nonzero(reference > threshold))
        if above < n:  # a threshold below every calibration score leaves nothing to bound by
            dist = stats.betabinom(rows, above + 1, n - above)
            return _interval(dist, rows, tail, (above + 1) / (n + 1), "beta-binomial", confidence)
    if target_fpr is not None and 0.0 < target_fpr < 1.0:
        return _interval(stats.binom(rows, target_fpr), rows, tail, float(target_fpr), "binomial", confidence)
    return None


def _interval(dist, rows: int, tail: float, expected: float, method: str, confidence: float) -> RateBound:
    # ppf(q): the smallest count whose CDF reaches q, so P(count < low) < tail and P(count > high) <= tail
    low, high = float(dist.ppf(tail)), float(dist.ppf(1.0 - tail))
    return RateBound(max(low, 0.0) / rows, min(high, rows) / rows, expected, method, confidence)


def critical_drift(n: int, m: int, confidence: float = DEFAULT_CONFIDENCE) -> float:
    """The KS statistic that two samples of ``n`` and ``m`` from one distribution exceed with
    probability ``1 - confidence`` (the asymptotic two-sample formula)."""
    alpha = 1.0 - check_confidence(confidence)
    return math.sqrt(-math.log(alpha / 2.0) / 2.0) * math.sqrt((n + m) / (n * m))


def score_drift(
    scores: np.ndarray,
    reference: np.ndarray | None,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    min_drift: float = DEFAULT_MIN_DRIFT,
) -> Drift | None:
    """KS drift of ``scores`` from the ``reference`` (calibration) scores, and its limit; None when
    either side has no finite score."""
    from scipy import stats

    scores = finite(scores)
    if reference is None:
        return None
    reference = finite(reference)
    if scores.size == 0 or reference.size == 0:
        return None
    result = stats.ks_2samp(scores, reference)
    limit = max(float(min_drift), critical_drift(reference.size, scores.size, confidence))
    return Drift(float(result.statistic), float(result.pvalue), limit)


def score_quantiles(scores: np.ndarray) -> dict[str, float | None]:
    """{``score_q01``: ..., ``score_q99``: ...} of the finite ``scores`` (numpy's default, linear
    interpolation); None each when there are none."""
    scores = finite(scores)
    if scores.size == 0:
        return dict.fromkeys(QUANTILE_COLUMNS)
    values = np.quantile(scores, QUANTILES)
    return {name: float(v) for name, v in zip(QUANTILE_COLUMNS, values, strict=True)}


def finite(values: np.ndarray | None) -> np.ndarray:
    values = np.asarray([] if values is None else values, dtype=np.float64)
    return values[np.isfinite(values)]
