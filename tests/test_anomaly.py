"""The anomaly detector: PyOD's face, its statistics live in the model, survive a save and reload, and rank."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from scoring.anomaly import KNN_CHUNK, fit_statistics, knn_distance, knn_distances, reference_rows
from scoring.detector import VAEDetector, model_anomaly_scores, model_method_scores, score_images
from training import data
from training.model import VariationalAutoencoder, compile_model


def test_knn_distance_matches_brute_force_and_can_leave_a_point_out():
    rng = np.random.default_rng(0)
    points, reference = rng.normal(size=(7, 3)), rng.normal(size=(40, 3))
    brute = np.sort(np.linalg.norm(points[:, None] - reference[None], axis=-1), axis=1)
    np.testing.assert_allclose(knn_distance(points, reference, 1), brute[:, 0])
    np.testing.assert_allclose(knn_distance(points, reference, 5), brute[:, 4])
    self_brute = np.sort(np.linalg.norm(reference[:, None] - reference[None], axis=-1), axis=1)
    np.testing.assert_allclose(knn_distance(reference, reference, 2, exclude_self=True), self_brute[:, 2])


def test_knn_distance_is_the_same_across_chunks():
    """More points than one distance matrix holds: leaving each point out, and skipping a scored
    training image's own latent, still find the right neighbours in every chunk."""
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(2 * KNN_CHUNK + 37, 2))
    distances = np.linalg.norm(reference[:, None] - reference[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    leave_out = np.sort(distances, axis=1)
    np.testing.assert_allclose(knn_distance(reference, reference, 3, exclude_self=True), leave_out[:, 2])
    found = knn_distances(reference, reference, (1, 3))  # each point's own latent is skipped as itself
    np.testing.assert_allclose(found[1], leave_out[:, 0])
    np.testing.assert_allclose(found[3], leave_out[:, 2])


@pytest.fixture(scope="module")
def fitted():
    """A small dense VAE trained briefly on 300 digits, with its anomaly score fitted."""
    keras.utils.set_random_seed(0)
    digits = data.load_digits()
    train = digits.images[:300]
    model = VariationalAutoencoder(
        (8, 8, 1),
        latent_dim=4,
        likelihood="continuous_bernoulli",
        pixel_levels=17,
        architecture="dense",
        reference_rows=reference_rows(len(train)),
        score_samples=4,
        seed=0,
    )
    compile_model(model)
    model.fit(train, np.zeros(len(train)), epochs=3, batch_size=64, verbose=0)
    VAEDetector(model).fit(train)
    return model, digits


def test_fitted_statistics_are_stored_in_the_model(fitted):
    model, _ = fitted
    stats = model.anomaly
    assert stats["method"] == "elbo_latent_knn_rarity_rate" and stats["k"] == 5 and stats["reference_count"] == 300
    assert stats["neg_elbo_scale"] > 0 and stats["latent_knn_scale"] > 0
    assert np.any(model.reference_latents_array() != 0)


def test_the_scores_are_sums_of_the_standardised_terms(fitted):
    model, digits = fitted
    images = digits.images[300:400]
    stats = dict(model.anomaly)
    model.anomaly = stats | {"method": "elbo_latent_knn"}
    terms = score_images(model, images, num_samples=4, seed=0)
    model.anomaly = stats
    distance = knn_distance(terms["posterior_mean"], model.reference_latents_array()[:300], 5)
    expected = (terms["neg_elbo"] - stats["neg_elbo_center"]) / stats["neg_elbo_scale"] + (
        distance - stats["latent_knn_center"]
    ) / stats["latent_knn_scale"]
    np.testing.assert_allclose(terms["anomaly_score"], expected)
    methods = model_method_scores(model, terms)
    assert set(methods) == {"neg_elbo", "elbo_latent_knn", "elbo_latent_knn_rarity", "elbo_latent_knn_rarity_rate"}
    floored = np.maximum((terms["neg_elbo"] - stats["neg_elbo_center"]) / stats["neg_elbo_scale"], -1) + np.maximum(
        (distance - stats["latent_knn_center"]) / stats["latent_knn_scale"], -1
    )
    # rarity: the distance to the k_mass-th nearest reference latent, beyond one IQR above its median
    far = knn_distance(terms["posterior_mean"], model.reference_latents_array()[:300], stats["k_mass"])
    rare = np.maximum((far - stats["latent_mass_center"]) / stats["latent_mass_scale"] - 1.0, 0)
    assert stats["k_mass"] == 9  # 3 % of the 300 reference latents
    np.testing.assert_allclose(methods["elbo_latent_knn_rarity"], floored + rare)


def _synthetic_terms(rng: np.random.Generator, n: int, rate: float) -> dict[str, np.ndarray]:
    return {
        "neg_elbo": rng.normal(100.0, 10.0, n),
        "kl": rate * np.exp(rng.normal(0.0, 0.2, n)),
        "posterior_mean": rng.normal(size=(n, 4)),
    }


def test_the_default_adds_an_empty_alarm_for_a_rate_far_below_the_training_images():
    from scoring.anomaly import RATE_MARGIN, RATE_WEIGHT, fit_statistics, method_scores

    rng = np.random.default_rng(0)
    train = _synthetic_terms(rng, 400, rate=20.0)
    stats = fit_statistics(train, "elbo_latent_knn_rarity_rate", train["posterior_mean"])
    assert stats["log_rate_scale"] > 0
    scored = _synthetic_terms(rng, 50, rate=20.0)
    scored["kl"][0] = 2.0  # the encoder found almost nothing to encode: a blank image
    scored["kl"][1] = 200.0  # a rate far *above* the training images' is no alarm of this term
    methods = method_scores(stats, scored, train["posterior_mean"])
    added = methods["elbo_latent_knn_rarity_rate"] - methods["elbo_latent_knn_rarity"]
    below = (stats["log_rate_center"] - np.log(2.0)) / stats["log_rate_scale"]
    np.testing.assert_allclose(added[0], RATE_WEIGHT * (below - RATE_MARGIN))
    assert added[0] > 10 and np.all(added[1:] == 0)


def test_a_flat_rate_gets_a_floor_on_its_spread():
    from scoring.anomaly import MIN_LOG_RATE_SCALE, fit_statistics

    rng = np.random.default_rng(2)
    flat = _synthetic_terms(rng, 300, rate=20.0)
    flat["kl"] = 20.0 + rng.normal(0.0, 0.01, 300)  # an almost constant rate: a dip of 1 % is no alarm
    stats = fit_statistics(flat, "elbo_latent_knn_rarity_rate", flat["posterior_mean"])
    assert stats["log_rate_scale"] == MIN_LOG_RATE_SCALE


def test_no_empty_alarm_for_a_model_without_rate_or_saved_before_the_term():
    from scoring.anomaly import fit_statistics, method_scores

    rng = np.random.default_rng(1)
    collapsed = _synthetic_terms(rng, 300, rate=0.05)  # a posterior that carries nothing: no rate to compare
    stats = fit_statistics(collapsed, "elbo_latent_knn_rarity_rate", collapsed["posterior_mean"])
    assert "log_rate_center" not in stats
    scored = _synthetic_terms(rng, 30, rate=0.001)
    methods = method_scores(stats, scored, collapsed["posterior_mean"])
    np.testing.assert_array_equal(methods["elbo_latent_knn_rarity_rate"], methods["elbo_latent_knn_rarity"])

    train = _synthetic_terms(rng, 300, rate=20.0)
    stats = fit_statistics(train, "elbo_latent_knn_rarity_rate", train["posterior_mean"])
    saved_before = {k: v for k, v in stats.items() if not k.startswith("log_rate")}  # an older model's statistics
    now, before = (method_scores(s, scored, train["posterior_mean"]) for s in (stats, saved_before))
    assert np.all(now["elbo_latent_knn_rarity_rate"] > now["elbo_latent_knn_rarity"])
    np.testing.assert_array_equal(before["elbo_latent_knn_rarity_rate"], before["elbo_latent_knn_rarity"])
    np.testing.assert_array_equal(before["elbo_latent_knn_rarity"], now["elbo_latent_knn_rarity"])


def test_an_image_far_from_the_training_latents_scores_higher(fitted):
    model, digits = fitted
    normal = digits.images[300:350]
    noise = np.random.default_rng(1).random((50, 8, 8, 1)).astype(np.float32)  # nothing like a digit
    scores = score_images(model, np.concatenate([normal, noise]), num_samples=4, seed=0)["anomaly_score"]
    assert scores[50:].min() > np.median(scores[:50])


def test_scores_survive_a_save_and_safe_reload(fitted, tmp_path):
    model, digits = fitted
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    images = digits.images[400:450]
    np.testing.assert_allclose(
        score_images(loaded, images, num_samples=4, seed=0)["anomaly_score"],
        score_images(model, images, num_samples=4, seed=0)["anomaly_score"],
        rtol=1e-6,
    )


def test_a_model_without_fitted_statistics_scores_by_its_negative_elbo():
    model = VariationalAutoencoder((8, 8, 1), latent_dim=2, likelihood="bernoulli", seed=0)
    images = data.load_digits().images[:20]
    terms = score_images(model, images, num_samples=2, seed=0)
    np.testing.assert_array_equal(terms["anomaly_score"], terms["neg_elbo"])
    np.testing.assert_array_equal(model_anomaly_scores(model, terms), terms["neg_elbo"])
    with pytest.raises(ValueError, match="reference latents"):
        VAEDetector(model).fit(images)
    detector = VAEDetector(model, "neg_elbo").fit(images)
    own = score_images(model, images, num_samples=model.score_samples, seed=model.score_seed)  # the model's settings
    np.testing.assert_allclose(detector.decision_scores_, own["neg_elbo"], rtol=1e-6)


def test_a_continuous_bernoulli_model_saved_before_the_density_fix_loses_its_stale_calibration():
    model = VariationalAutoencoder(
        (8, 8, 1), latent_dim=2, likelihood="continuous_bernoulli", calibration={"threshold": 1.0, "target_fpr": 0.01}
    )
    config = model.get_config()
    assert VariationalAutoencoder.from_config(config).calibration is not None  # saved by this code: kept
    del config["pixel_levels"]  # as saved before the fix
    assert VariationalAutoencoder.from_config(config).calibration is None


def test_the_cli_and_the_config_offer_what_the_library_has():
    from pipeline.cli.train import ANOMALY_METHODS, LIKELIHOOD_CHOICES, train_command
    from scoring.anomaly import DEFAULT_METHOD, METHODS
    from scoring.likelihoods import LIKELIHOODS
    from training.config import TrainConfig
    from training.model import ARCHITECTURES

    assert set(ANOMALY_METHODS) == set(METHODS) and TrainConfig().anomaly_score == DEFAULT_METHOD
    assert set(LIKELIHOOD_CHOICES) == {"auto", *LIKELIHOODS}
    architecture = next(p for p in train_command.params if p.name == "architecture")
    assert set(architecture.type.choices) == {"auto", *ARCHITECTURES}


def test_the_detector_has_pyods_face(fitted):
    model, digits = fitted
    train, held_out = digits.images[:300], digits.images[300:700]
    detector = VAEDetector(model, target_fpr=0.05).fit(train, calibration_images=held_out)
    assert detector.decision_scores_.shape == (300,) and np.isfinite(detector.threshold_)
    assert set(np.unique(detector.labels_)) <= {0, 1}
    scores = detector.decision_function(held_out)
    np.testing.assert_array_equal(detector.predict(held_out), (scores > detector.threshold_).astype(int))
    assert np.mean(detector.predict(held_out)) <= 0.05  # the threshold's own calibration images
    assert model.calibration["threshold"] == detector.threshold_  # stored with the model


def test_fitting_does_not_depend_on_call_order(fitted):
    """Fitting reads the model's raw terms, never a score an earlier fit left in it."""
    model, digits = fitted
    train, other = digits.images[:300], digits.images[700:800]
    first = VAEDetector(model, "elbo_latent_knn_rarity").fit(train).decision_function(other)
    VAEDetector(model, "neg_elbo").fit(digits.images[900:1000])  # a different fit in between
    score_images(model, other, num_samples=4, seed=0)  # and scoring
    again = VAEDetector(model, "elbo_latent_knn_rarity").fit(train).decision_function(other)
    np.testing.assert_array_equal(first, again)
    VAEDetector(model).fit(train)  # leave the fixture's default detector in place


def test_a_detector_rebuilt_from_the_model_scores_alike(fitted, tmp_path):
    model, digits = fitted
    detector = VAEDetector(model, target_fpr=0.02).fit(digits.images[:300], calibration_images=digits.images[300:600])
    model.save(tmp_path / "m.keras")
    rebuilt = VAEDetector.from_model(keras.saving.load_model(tmp_path / "m.keras", safe_mode=True))
    assert (rebuilt.method, rebuilt.threshold_, rebuilt.target_fpr) == (detector.method, detector.threshold_, 0.02)
    images = digits.images[600:700]
    np.testing.assert_allclose(rebuilt.decision_function(images), detector.decision_function(images), rtol=1e-6)
    np.testing.assert_array_equal(rebuilt.predict(images), detector.predict(images))
    VAEDetector(model).fit(digits.images[:300])


def test_a_points_distances_do_not_depend_on_its_batch():
    """The same bits scored alone, in a short batch or deep in a long one (BLAS takes other paths
    for other row counts: the product is always computed on KNN_CHUNK rows)."""
    rng = np.random.default_rng(2)
    points, reference = rng.normal(size=(KNN_CHUNK + 88, 16)), rng.normal(size=(513, 16))
    batch = knn_distances(points, reference, (5, 15))
    for i in (0, 7, KNN_CHUNK - 1, KNN_CHUNK, KNN_CHUNK + 87):
        alone = knn_distances(points[i : i + 1], reference, (5, 15))
        assert alone[5][0] == batch[5][i] and alone[15][0] == batch[15][i]
    short = knn_distances(points[:3], reference, (5, 15))
    assert np.array_equal(short[5], batch[5][:3])


def test_k_below_one_is_refused():
    terms = {"neg_elbo": np.arange(10.0), "kl": np.ones(10), "posterior_mean": np.zeros((10, 2))}
    with pytest.raises(ValueError, match="k must be at least 1"):
        fit_statistics(terms, "elbo_latent_knn", np.random.default_rng(0).normal(size=(10, 2)), k=0)
