"""The anomaly score: its statistics live in the model, survive a save and reload, and rank."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from scoring.anomaly import anomaly_scores, fit_anomaly, knn_distance, method_scores, reference_rows
from scoring.elbo import score_images
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
    fit_anomaly(model, train)
    return model, digits


def test_fitted_statistics_are_stored_in_the_model(fitted):
    model, _ = fitted
    stats = model.anomaly
    assert stats["method"] == "elbo_latent_knn" and stats["k"] == 5 and stats["reference_count"] == 300
    assert stats["neg_elbo_scale"] > 0 and stats["latent_knn_scale"] > 0
    assert np.any(model.reference_latents_array() != 0)


def test_the_score_is_the_sum_of_the_standardised_terms(fitted):
    model, digits = fitted
    images = digits.images[300:400]
    terms = score_images(model, images, num_samples=4, seed=0)
    stats = model.anomaly
    distance = knn_distance(terms["posterior_mean"], model.reference_latents_array()[:300], 5)
    expected = (terms["neg_elbo"] - stats["neg_elbo_center"]) / stats["neg_elbo_scale"] + (
        distance - stats["latent_knn_center"]
    ) / stats["latent_knn_scale"]
    np.testing.assert_allclose(terms["anomaly_score"], expected)
    assert set(method_scores(model, terms)) == {"neg_elbo", "elbo_latent_knn"}


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
    np.testing.assert_array_equal(anomaly_scores(model, terms), terms["neg_elbo"])
    with pytest.raises(ValueError, match="reference latents"):
        fit_anomaly(model, images)


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
    assert set(architecture.type.choices) == set(ARCHITECTURES)
