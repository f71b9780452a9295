"""Ranking metrics for anomaly scores: AUROC and average precision.

Both take ``is_anomaly`` (true for the positives) and ``scores`` (higher = more anomalous).
They differ from calling scikit-learn directly in three ways that matter for a detector table:

- infinite scores are fine (a detector that is certain says ``inf``): only the order counts,
  so the scores are replaced by their ranks first, ties kept as ties;
- a NaN score is an error, never silently ranked;
- with only one class present the metric is undefined and the answer is ``nan``, not an exception,
  so one degenerate cell does not sink a whole evaluation.
"""

from __future__ import annotations

import math

import numpy as np


def _prepare(is_anomaly: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    y = np.asarray(is_anomaly).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    if np.isnan(s).any():
        raise ValueError(f"{int(np.isnan(s).sum())} scores are NaN; a detector must score every example")
    if y.size == 0 or y.all() or not y.any():
        return None
    # dense ranks: the same order and ties as the scores, and finite even where a score is +-inf
    _, ranks = np.unique(s, return_inverse=True)
    return y, ranks.astype(np.float64)


def auroc(is_anomaly: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the chance an anomaly outscores a normal example (ties count half).

    1.0 for a perfect ranking, 0.5 for chance, 0.0 for a reversed one; ``nan`` with one class only.
    """
    prepared = _prepare(is_anomaly, scores)
    if prepared is None:
        return math.nan
    from sklearn.metrics import roc_auc_score

    y, ranks = prepared
    return float(roc_auc_score(y, ranks))


def average_precision(is_anomaly: np.ndarray, scores: np.ndarray) -> float:
    """Average precision (area under the precision-recall curve, step-wise, as in scikit-learn).

    1.0 for a perfect ranking; a random ranking scores about the anomaly rate; ``nan`` with one class only.
    """
    prepared = _prepare(is_anomaly, scores)
    if prepared is None:
        return math.nan
    from sklearn.metrics import average_precision_score

    y, ranks = prepared
    return float(average_precision_score(y, ranks))
