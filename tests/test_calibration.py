"""The anomaly threshold and conformal p-values."""

from __future__ import annotations

import numpy as np
import pytest

from scoring.calibration import Calibration


@pytest.mark.parametrize(("n", "fpr"), [(100, 0.01), (20, 0.05), (270, 0.01), (1000, 0.05), (7, 0.5)])
def test_threshold_leaves_exactly_the_target_share_of_held_out_scores_above_it(n, fpr):
    scores = np.random.default_rng(n).normal(size=n)
    calibration = Calibration.fit(scores, fpr)
    assert np.sum(scores > calibration.threshold) == int(np.floor(n * fpr + 1e-9))
    assert calibration.threshold in scores  # a held-out score, not an interpolation


def test_p_values_are_conformal_and_monotone():
    calibration = Calibration.fit(np.arange(1.0, 100.0), 0.01)  # 99 held-out scores 1..99
    p = calibration.p_values(np.array([0.0, 50.0, 99.0, 1000.0]))
    np.testing.assert_allclose(p, [1.0, 51 / 100, 2 / 100, 1 / 100])
    assert np.all(np.diff(calibration.p_values(np.linspace(0, 120, 50))) <= 0)


def test_refitting_at_another_rate_and_round_trip():
    calibration = Calibration.fit(np.arange(100.0), 0.01)
    looser = calibration.with_fpr(0.1)
    assert looser.threshold < calibration.threshold and np.sum(looser.scores > looser.threshold) == 10
    assert Calibration.from_dict(calibration.to_dict()).threshold == calibration.threshold
    with pytest.raises(ValueError, match="false positive rate"):
        calibration.with_fpr(1.5)
    with pytest.raises(ValueError, match="finite"):
        Calibration.fit(np.array([1.0, np.nan]), 0.1)
