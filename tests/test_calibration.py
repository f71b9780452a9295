"""The anomaly threshold and conformal p-values."""

from __future__ import annotations

import numpy as np
import pytest

from scoring.calibration import Calibration, exceedances, rows_needed, size_warning, tail_threshold


@pytest.mark.parametrize(("n", "fpr"), [(1000, 0.01), (20, 0.05), (200, 0.05), (1000, 0.05), (7, 0.5)])
def test_with_enough_scores_above_it_the_threshold_leaves_exactly_the_target_share(n, fpr):
    scores = np.random.default_rng(n).normal(size=n)
    calibration = Calibration.fit(scores, fpr)
    assert np.sum(scores > calibration.threshold) == int(np.floor(n * fpr + 1e-9))
    assert calibration.threshold in scores  # a held-out score, not an interpolation


def test_with_few_scores_above_it_the_threshold_comes_from_the_tail():
    scores = np.sort(np.random.default_rng(3).normal(size=270))  # digits' calibration part at 1 %: 2 above
    calibration = Calibration.fit(scores, 0.01)
    assert calibration.threshold == tail_threshold(scores, 0.01)
    m = 27  # the largest tenth exceeds the 28th largest score by a mean excess; the tail falls exponentially
    u = scores[-m - 1]
    assert calibration.threshold == pytest.approx(u + np.mean(scores[-m:] - u) * np.log(m / 2.7))


@pytest.mark.parametrize("distribution", ["normal", "gumbel", "student_t5"])
def test_small_data_thresholds_hold_their_rate_and_move_less_than_the_order_statistic(distribution):
    """Calibration coverage in simulation: 1,000 calibrations from 270 scores at 1 %; the true false
    positive rate of each threshold is known from the distribution."""
    from scipy import stats

    dist = {"normal": stats.norm(), "gumbel": stats.gumbel_r(), "student_t5": stats.t(5)}[distribution]
    rng = np.random.default_rng(0)
    tail, order = [], []
    for _ in range(1000):
        scores = np.sort(dist.rvs(270, random_state=rng))
        tail.append(Calibration.fit(scores, 0.01).threshold)
        order.append(np.quantile(scores, 0.99, method="inverted_cdf"))
    rate = dist.sf(np.array(tail))
    assert 0.007 <= rate.mean() <= 0.013  # on target on average
    assert np.quantile(rate, 0.95) < np.quantile(dist.sf(np.array(order)), 0.95)  # a smaller worst case
    assert np.std(tail) < 0.9 * np.std(order)  # and a steadier threshold


def test_p_values_are_conformal_and_monotone():
    calibration = Calibration.fit(np.arange(1.0, 100.0), 0.01)  # 99 held-out scores 1..99
    p = calibration.p_values(np.array([0.0, 50.0, 99.0, 1000.0]))
    np.testing.assert_allclose(p, [1.0, 51 / 100, 2 / 100, 1 / 100])
    assert np.all(np.diff(calibration.p_values(np.linspace(0, 120, 50))) <= 0)


def test_refitting_at_another_rate_and_round_trip():
    calibration = Calibration.fit(np.arange(100.0), 0.01)
    looser = calibration.with_fpr(0.1)
    assert looser.threshold < calibration.threshold and np.sum(looser.scores > looser.threshold) == 10
    assert calibration.threshold > 99  # 1 % of 100 scores: from the tail, beyond the largest score
    assert Calibration.from_dict(calibration.to_dict()).threshold == calibration.threshold
    with pytest.raises(ValueError, match="false positive rate"):
        calibration.with_fpr(1.5)
    with pytest.raises(ValueError, match="finite"):
        Calibration.fit(np.array([1.0, np.nan]), 0.1)


def test_the_calibration_names_its_score_and_old_dicts_read_as_neg_elbo():
    calibration = Calibration.fit(np.arange(100.0), 0.05)
    assert calibration.score == "anomaly_score" and calibration.to_dict()["score"] == "anomaly_score"
    assert Calibration.from_dict(calibration.to_dict()).score == "anomaly_score"
    assert calibration.with_fpr(0.1).score == "anomaly_score"
    old = {k: v for k, v in calibration.to_dict().items() if k != "score"}  # saved before the field existed
    assert Calibration.from_dict(old).score == "neg_elbo"


@pytest.mark.parametrize(("n", "fpr"), [(1000, 0.01), (200, 0.05), (5000, 0.01), (100, 0.1)])
def test_no_size_warning_with_at_least_ten_scores_above_the_threshold(n, fpr):
    assert size_warning(n, fpr) is None
    assert Calibration.fit(np.arange(float(n)), fpr).size_warning() is None


def test_size_warning_when_few_calibration_scores_lie_above_the_threshold():
    warning = size_warning(270, 0.01)  # digits' calibration part at the default 1 %
    assert "only 2 of 270 calibration scores" in warning and "noisy" in warning and "about 1000" in warning
    assert "about 1000" in size_warning(999, 0.01)  # 9.99 expected above: still too few
    assert "about 334" in size_warning(300, 0.03)
    assert Calibration.fit(np.arange(270.0), 0.01).size_warning() == warning


def test_size_warning_when_the_threshold_is_the_largest_score():
    calibration = Calibration.fit(np.arange(20.0), 0.01)  # too few even for the tail rule
    assert calibration.threshold == calibration.scores.max()
    warning = calibration.size_warning()
    assert "the threshold is the largest calibration score" in warning and "cannot be reached" in warning
    assert "about 1000 calibration rows" in warning
    assert "extrapolated from the upper tail" in size_warning(50, 0.01)  # no score above: the tail rule
    assert exceedances(50, 0.01) == 0 and exceedances(100, 0.01) == 1 and rows_needed(0.05) == 200
    with pytest.raises(ValueError, match="false positive rate"):
        size_warning(100, 0.0)


def test_a_looser_rate_never_gives_a_higher_threshold_where_the_rules_meet():
    """Around n * fpr = 10 the empirical rule takes over from the tail fit; the threshold must not jump up."""
    rng = np.random.default_rng(1)
    for _ in range(100):
        scores = np.sort(rng.standard_t(3, size=270))
        rates = np.linspace(0.002, 0.06, 80)
        thresholds = [Calibration.fit(scores, r).threshold for r in rates]
        assert np.all(np.diff(thresholds) <= 1e-12)


def test_the_warning_says_how_the_threshold_was_found():
    assert "extrapolated from the upper tail" in size_warning(270, 0.01)
    assert "too few scores to fit their tail" in size_warning(15, 0.1)  # 1 above, no tail fit
