"""Improved precision and recall (Kynkäänniemi et al., 2019) and diversity on toy cases whose figures
are known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from scoring.fidelity import (
    diversity,
    improved_precision_recall,
    knn_radii,
    mean_pairwise_distance,
    per_label_fidelity,
    prdc,
)

# 1-D, by hand. k = 1: real radii 2, 2, 2, 6; fake radii 2, 2, 1, 1, 13.
#   precision: 1 (in 0's ball), 3 (in 2's), 16 (|16 - 10| = 6, on the edge of 10's ball: inside); 17, 30 out -> 3/5
#   recall: 0, 2, 4 (in the balls of 1 and 3); 10 in no ball (6 > 1 from 16, 20 > 13 from 30) -> 3/4
# k = 2: real radii 4, 2, 4, 8; fake radii 15, 13, 13, 13, 14.
#   precision: 1, 3, 16, 17 (7 <= 8 from 10) inside; 30 out -> 4/5; recall: every real point within 15 of 1 -> 1
# mean pairwise distance: real 32 / 6, fake 144 / 10 -> diversity 14.4 / (16 / 3) = 2.7
REAL_1D = np.array([0.0, 2.0, 4.0, 10.0])[:, None]
FAKE_1D = np.array([1.0, 3.0, 16.0, 17.0, 30.0])[:, None]


def digits_like(n: int = 60, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 8, 8, 1))


def test_a_hand_made_1d_case_gives_the_figures_worked_out_by_hand():
    np.testing.assert_array_equal(knn_radii(REAL_1D, k=1), np.array([2, 2, 2, 6]) ** 2)
    assert improved_precision_recall(REAL_1D, FAKE_1D, k=1) == (0.6, 0.75)
    assert improved_precision_recall(REAL_1D, FAKE_1D, k=2) == (0.8, 1.0)
    assert mean_pairwise_distance(REAL_1D) == pytest.approx(32 / 6)
    assert diversity(REAL_1D, FAKE_1D) == pytest.approx(2.7)


def test_a_hand_made_2d_case():
    # a unit square of real points: with k = 1 every radius is 1; fake points at the centre (inside),
    # at (1, 2) (on the edge of (1, 1)'s ball) and at (3, 3) (out)
    real = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
    fake = np.array([[0.5, 0.5], [1, 2], [3, 3]], dtype=float)
    precision, recall = improved_precision_recall(real, fake, k=1)
    assert precision == pytest.approx(2 / 3)
    # fake radii (k = 1): sqrt(2.5) = 1.58 for (0.5, 0.5) and (1, 2), sqrt(5) for (3, 3): every corner
    # of the square is within 0.71 of the centre
    assert recall == 1.0


def test_identical_sets_give_one_everywhere():
    real = digits_like()
    assert improved_precision_recall(real, real.copy(), k=3) == (1.0, 1.0)
    assert diversity(real, real.copy()) == pytest.approx(1.0)


def test_mode_collapse_onto_the_mean_loses_recall_and_diversity():
    real = digits_like()
    fake = np.repeat(real.mean(axis=0, keepdims=True), 50, axis=0)
    _, recall = improved_precision_recall(real, fake, k=3)
    assert recall == 0.0  # the fake manifold is one point of radius 0, and no real image is the mean
    assert diversity(real, fake) == 0.0


def test_samples_far_from_the_real_images_have_no_precision():
    real = digits_like()
    fake = digits_like(seed=1) + 100.0
    precision, recall = improved_precision_recall(real, fake, k=3)
    assert (precision, recall) == (0.0, 0.0)


def test_blocks_do_not_change_the_figures():
    real, fake = digits_like(70, 0), digits_like(90, 1) * 0.9
    whole = improved_precision_recall(real, fake, k=3, block=4096)
    assert improved_precision_recall(real, fake, k=3, block=7) == whole
    assert prdc(real, fake, k=3, block=7) == prdc(real, fake, k=3, block=4096)
    assert diversity(real, fake, block=7) == pytest.approx(diversity(real, fake, block=4096))
    assert 0.0 < whole[0] <= 1.0 and 0.0 < whole[1] <= 1.0


def test_too_few_images_for_k_are_refused():
    with pytest.raises(ValueError, match="no 3-th nearest neighbour"):
        knn_radii(np.zeros((3, 2)), k=3)


def test_per_label_figures_average_over_labels_and_name_the_worst():
    same = digits_like(10)
    real_labels = np.array([0] * 10 + [1] * 4)
    # label 0: the same ten images on both sides; label 1: the 1-D case, padded to 64 pixels
    real = np.concatenate([same.reshape(10, -1), np.pad(REAL_1D, ((0, 0), (0, 63)))])
    fake = np.concatenate([same.reshape(10, -1), np.pad(FAKE_1D, ((0, 0), (0, 63)))])
    fake_labels = np.array([0] * 10 + [1] * 5)
    out = per_label_fidelity(real, real_labels, fake, fake_labels, k=1)
    assert out["labels"][0]["precision"] == out["labels"][0]["recall"] == 1.0
    assert out["labels"][1] == {
        **{"precision": 0.6, "recall": 0.75, "density": 1.0, "coverage": 1.0, "diversity": pytest.approx(2.7)},
        **{"real": 4, "fake": 5},
    }
    assert out["precision"] == pytest.approx(0.8) and out["recall"] == pytest.approx(0.875)
    assert out["diversity"] == pytest.approx((1.0 + 2.7) / 2)
    assert out["worst"]["precision"] == (1, 0.6) and out["worst"]["recall"] == (1, 0.75)
    assert out["skipped"] == []


def test_per_label_skips_labels_with_too_few_images_and_pools_without_labels():
    real, fake = digits_like(20, 0), digits_like(20, 1)
    out = per_label_fidelity(real, np.array([0] * 17 + [1] * 3), fake, np.array([0] * 10 + [1] * 10), k=3)
    assert list(out["labels"]) == [0] and out["skipped"] == [1]
    pooled = per_label_fidelity(real, None, fake, None, k=3)
    assert list(pooled["labels"]) == [None]
    assert (pooled["precision"], pooled["recall"]) == improved_precision_recall(real, fake, k=3)


def test_density_and_coverage_by_hand():
    # k = 1, real radii 2, 2, 2, 6: fake 1 lies in the balls of 0 and 2, fake 3 in those of 2 and 4, fake 16
    # on the edge of 10's; 17 and 30 in none. 5 memberships / (k * 5 fakes) = 1; every real ball holds a fake
    assert prdc(REAL_1D, FAKE_1D, k=1) == {"precision": 0.6, "recall": 0.75, "density": 1.0, "coverage": 1.0}
    # one fake at 2 (in the balls of 0, 2 and 4, each of radius 2) and one far out (in none):
    # density 3 / (k * 2 fakes) = 1.5, coverage 3 of the 4 real balls
    figures = prdc(REAL_1D, np.array([[2.0], [100.0]]), k=1)
    assert figures["density"] == 1.5 and figures["coverage"] == 0.75


def test_outliers_inflate_recall_but_not_coverage():
    """Recall counts real images inside the *fake* balls: a few samples far out have huge balls and cover
    everything. Coverage counts real balls with a sample inside, so those samples do not help it."""
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 2))
    fake = np.concatenate([rng.normal(size=(5, 2)) * 0.1, rng.normal(size=(5, 2)) * 50])
    figures = prdc(real, fake, k=3)
    assert figures["recall"] > 0.9
    assert figures["coverage"] < 0.2


@pytest.fixture(scope="module")
def dense_digits():
    """Half of scikit-learn's digits as a dense reference (about 90 per digit) and a judge trained on a
    quarter, clean real digits from the last quarter, and the same digits with speckle."""
    from scoring.judge import Judge
    from training.data import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits))
    reference, judge_rows, clean = np.array_split(order, [len(order) // 2, 3 * len(order) // 4])
    judge = Judge(digits.images[judge_rows], digits.labels[judge_rows], seed=0)
    images, labels = digits.images[clean], digits.labels[clean]
    rng = np.random.default_rng(1)
    speckled = np.where(rng.random(images.shape) < 0.15, rng.integers(0, 17, images.shape) / 16.0, images)
    return digits.images[reference], digits.labels[reference], images, speckled.astype(np.float32), labels, judge


def test_the_measure_ranks_speckled_samples_below_clean_ones(dense_digits):
    """The trick of the last round: pixel noise on top of digits. Against a dense reference, precision,
    density and coverage all fall, in pixel space and in the judge's feature space."""
    reference, reference_labels, clean, speckled, labels, judge = dense_digits
    for space in (lambda x: x, judge.features):
        real_side = space(reference)
        good = per_label_fidelity(real_side, reference_labels, space(clean), labels)
        noisy = per_label_fidelity(real_side, reference_labels, space(speckled), labels)
        for metric in ("precision", "density", "coverage"):
            assert noisy[metric] < good[metric] - 0.1, (metric, noisy[metric], good[metric])
    assert judge.accuracy(clean, labels) > 0.9


def test_the_judge_is_a_classifier_of_real_images_with_a_feature_space(dense_digits):
    reference, reference_labels, clean, _, labels, judge = dense_digits
    assert judge.accuracy(reference, reference_labels) > 0.9  # images it never saw
    features = judge.features(clean)
    assert features.shape == (len(clean), 128) and (features >= 0).all() and features.std() > 0
    np.testing.assert_array_equal(features, judge.features(clean.copy()))
