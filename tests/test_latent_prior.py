"""Generation's fitted latent prior (the aggregate posterior per label) and its pixel noise."""

from __future__ import annotations

import numpy as np
import pytest

from scoring.latent_prior import LatentPrior, fit_latent_prior
from scoring.likelihoods import sample_image, temper
from scoring.sampling import decode_images, sample_latents, synthesize


class GaussianEncoder:
    """A stand-in VAE: the posterior of an image (1 x D) is N(the image, exp(log_var) I); the decoder
    draws z (plus the label) as Bernoulli logits of a 1 x D image."""

    likelihood = "bernoulli"
    pixel_levels = 0

    def __init__(self, latent_dim: int, num_classes: int = 0, log_var: float = np.log(0.25)) -> None:
        self.latent_dim, self.num_classes, self.log_var = latent_dim, num_classes, log_var
        self.latent_prior = None

    def encode(self, images, one_hot=None):
        flat = np.asarray(images, np.float32).reshape(len(images), -1)
        return flat, np.full_like(flat, self.log_var)

    def decode(self, z, one_hot=None):
        z = np.asarray(z, np.float32)
        shift = 0.0 if one_hot is None else np.argmax(one_hot, axis=1)[:, None].astype(np.float32)
        return (z + shift)[:, None, :, None]


def test_the_fit_is_the_moments_of_the_mixture_of_posteriors_per_label():
    rng = np.random.default_rng(0)
    model = GaussianEncoder(3, num_classes=2)
    centre = {0: np.array([2.0, -1.0, 0.0]), 1: np.array([-3.0, 0.5, 1.0])}
    labels = np.repeat([0, 1], [300, 500])
    means = np.stack([centre[int(y)] + rng.normal(size=3) * [1.0, 0.3, 2.0] for y in labels])
    prior = fit_latent_prior(model, means[:, None, :, None], labels, batch_rows=64)  # batches cross labels
    assert prior.counts.tolist() == [300, 500]
    for g in (0, 1):
        part = means[labels == g]
        # the mixture's covariance: that of the posterior means plus the mean posterior variance
        expected = np.cov(part, rowvar=False) + 0.25 * np.eye(3)
        np.testing.assert_allclose(prior.means[g], part.mean(axis=0), atol=1e-5)
        np.testing.assert_allclose(prior.cholesky[g] @ prior.cholesky[g].T, expected, atol=1e-4)


def test_a_label_without_images_keeps_the_standard_normal():
    model = GaussianEncoder(2, num_classes=3)
    images = np.ones((5, 1, 2, 1), np.float32)
    prior = fit_latent_prior(model, images, np.zeros(5, np.int64))
    assert prior.counts.tolist() == [5, 0, 0]
    np.testing.assert_array_equal(prior.means[1:], 0.0)
    np.testing.assert_array_equal(prior.cholesky[2], np.eye(2))


def test_samples_follow_the_fitted_gaussian_of_their_label_and_repeat_for_a_seed():
    prior = LatentPrior(
        means=np.array([[5.0, 0.0], [-5.0, 1.0]]),
        cholesky=np.array([np.diag([0.5, 2.0]), [[1.0, 0.0], [0.9, 0.1]]]),
        counts=np.array([10, 10]),
    )
    labels = np.repeat([0, 1], 20000)
    z = prior.sample(labels, seed=3)
    np.testing.assert_array_equal(z, prior.sample(labels, seed=3))
    np.testing.assert_allclose(z[labels == 0].mean(axis=0), [5.0, 0.0], atol=0.05)
    np.testing.assert_allclose(np.cov(z[labels == 0], rowvar=False), np.diag([0.25, 4.0]), atol=0.1)
    np.testing.assert_allclose(np.cov(z[labels == 1], rowvar=False), [[1.0, 0.9], [0.9, 0.82]], atol=0.05)
    # temperature scales the spread around the label's mean, not the mean
    hot = prior.sample(labels, seed=3, temperature=2.0)
    np.testing.assert_allclose(hot - prior.means[labels], 2.0 * (z - prior.means[labels]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="2 label"):
        prior.sample(np.array([2]), seed=0)


def test_the_prior_survives_the_models_config_and_falls_back_to_n01_without_one():
    model = GaussianEncoder(2, num_classes=2)
    fitted = LatentPrior(
        means=np.array([[4.0, 4.0], [-4.0, -4.0]]), cholesky=np.zeros((2, 2, 2)), counts=np.array([1, 1])
    )
    labels = np.array([0, 1, 1])
    standard = sample_latents(model, 3, seed=1, labels=labels)  # no fitted prior stored: N(0, I)
    model.latent_prior = fitted.to_config()
    np.testing.assert_array_equal(sample_latents(model, 3, seed=1, labels=labels), [[4, 4], [-4, -4], [-4, -4]])
    np.testing.assert_array_equal(sample_latents(model, 3, seed=1, labels=labels, latent_prior="standard"), standard)
    with pytest.raises(ValueError, match="unknown latent prior"):
        sample_latents(model, 3, seed=1, labels=labels, latent_prior="uniform")


def test_pixels_are_the_mean_or_a_draw_from_the_tempered_likelihood():
    model = GaussianEncoder(2000)
    z = np.full((1, 2000), 0.5, np.float32)  # logits 0.5 everywhere: p = 0.62
    np.testing.assert_array_equal(decode_images(model, z), 1.0)  # binary pixels: the mean on the grid, 0.62 -> 1
    plain = decode_images(model, z, pixel_temperature=1.0, rng=np.random.default_rng(0))
    expected = sample_image(z[:, None, :, None], "bernoulli", np.random.default_rng(0))
    np.testing.assert_array_equal(plain, expected)
    # p(x|z)^(1/T) of a Bernoulli is a Bernoulli with logits / T: sharper below 1
    sharp = decode_images(model, z, pixel_temperature=0.25, rng=np.random.default_rng(0))
    assert set(np.unique(sharp)) == {0.0, 1.0}
    assert sharp.mean() == pytest.approx(1 / (1 + np.exp(-2.0)), abs=0.03) and plain.mean() < sharp.mean()
    with pytest.raises(ValueError, match="temperature"):
        decode_images(model, z, pixel_temperature=-1.0)


def test_tempering_a_gaussian_scales_its_variance_and_keeps_its_mean():
    params = np.concatenate([np.zeros((1, 2, 2, 1)), np.full((1, 2, 2, 1), np.log(0.2))], axis=-1).astype("float32")
    tempered = np.asarray(temper(params, "gaussian", 0.25))
    np.testing.assert_allclose(tempered[..., 0], 0.0)
    np.testing.assert_allclose(np.exp(tempered[..., 1]), 0.2 * 0.5, rtol=1e-5)  # sd * sqrt(T)


def test_a_trained_model_stores_its_prior_and_generation_uses_it(trained_conditional):
    from training import registry

    model = registry.pin(f"models:/{trained_conditional.model_name}/{trained_conditional.version}").load()
    prior = LatentPrior.from_config(model.latent_prior)
    assert prior is not None and prior.means.shape == (model.num_classes, model.latent_dim)
    assert prior.counts.sum() > 0
    labels = np.repeat(np.arange(model.num_classes), 4)
    images, z = synthesize(model, "conditional", len(labels), seed=0, labels=labels, pixel_temperature=0.0)
    np.testing.assert_allclose(z, prior.sample(labels, seed=0), rtol=1e-6)
    np.testing.assert_array_equal(images, decode_images(model, z, labels))
    default, _ = synthesize(model, "conditional", len(labels), seed=0, labels=labels)  # the default: the mean
    np.testing.assert_array_equal(default, images)
    drawn, _ = synthesize(model, "conditional", len(labels), seed=0, labels=labels, pixel_temperature=0.7)
    again, _ = synthesize(model, "conditional", len(labels), seed=0, labels=labels, pixel_temperature=0.7)
    np.testing.assert_array_equal(drawn, again)
    assert not np.array_equal(drawn, images)
