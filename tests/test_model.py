"""Model behaviour: shapes for every supported input, the likelihoods, the KL term, the bounds."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from scoring import detector, elbo, likelihoods
from training.model import VariationalAutoencoder, compile_model, downsampling_steps, model_inputs


@pytest.mark.parametrize("shape", [(8, 8, 1), (16, 16, 1), (28, 28, 1), (28, 28, 3), (32, 32, 3)])
@pytest.mark.parametrize("conditional", [False, True])
def test_encoder_and_decoder_shapes(shape, conditional):
    model = VariationalAutoencoder(shape, latent_dim=3, num_classes=4 if conditional else 0, seed=0)
    images = np.random.default_rng(0).random((5, *shape), dtype=np.float32)
    labels = np.array([0, 1, 2, 3, 0])
    one_hot = elbo.one_hot(labels, model.num_classes)
    mean, log_var = model.encode(images, one_hot)
    assert tuple(mean.shape) == (5, 3) and tuple(log_var.shape) == (5, 3)
    params = model.decode(ops.convert_to_tensor(np.zeros((5, 3), np.float32)), one_hot)
    assert tuple(params.shape) == (5, *shape)
    terms = model(model_inputs(images, labels, conditional))
    assert tuple(terms.shape) == (5, 2)


def test_downsampling_keeps_feature_maps_at_least_four_pixels():
    assert downsampling_steps((8, 8, 1)) == 1
    assert downsampling_steps((28, 28, 1)) == 2
    assert downsampling_steps((32, 32, 3)) == 3


def test_conditional_model_refuses_images_without_labels():
    model = VariationalAutoencoder((8, 8, 1), num_classes=10)
    with pytest.raises(ValueError, match="conditional"):
        model(np.zeros((2, 8, 8, 1), np.float32))


def test_kl_matches_closed_form_and_monte_carlo():
    rng = np.random.default_rng(1)
    mean = rng.normal(size=(6, 4))
    log_var = rng.normal(scale=0.5, size=(6, 4))
    ours = np.asarray(ops.convert_to_numpy(elbo.kl_divergence(mean, log_var)))
    var = np.exp(log_var)
    closed = 0.5 * np.sum(var + mean**2 - 1.0 - log_var, axis=1)
    np.testing.assert_allclose(ours, closed, rtol=1e-6)
    # and against E_q[log q(z) - log p(z)] by Monte Carlo
    z = mean + np.sqrt(var) * rng.standard_normal((200_000, 6, 4))
    log_q = -0.5 * np.sum((z - mean) ** 2 / var + log_var + np.log(2 * np.pi), axis=-1)
    log_p = -0.5 * np.sum(z**2 + np.log(2 * np.pi), axis=-1)
    np.testing.assert_allclose(ours, (log_q - log_p).mean(axis=0), atol=0.02)


def test_bernoulli_nll_is_binary_cross_entropy_in_nats():
    rng = np.random.default_rng(2)
    x = (rng.random((3, 4, 4, 1)) > 0.5).astype(np.float32)
    logits = rng.normal(size=(3, 4, 4, 1)).astype(np.float32)
    p = 1 / (1 + np.exp(-logits))
    expected = -np.sum(x * np.log(p) + (1 - x) * np.log(1 - p), axis=(1, 2, 3))
    got = ops.convert_to_numpy(likelihoods.negative_log_likelihood(x, logits, "bernoulli"))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize(
    "logit", [-50.0, -30.0, -10.0, -9.3, -3.0, -0.05, -1e-5, 0.0, 0.02, 0.09, 0.11, 2.5, 10.0, 50.0]
)
def test_continuous_bernoulli_density_integrates_to_one_and_matches_its_mean_and_samples(logit):
    grid = np.linspace(0, 1, 400_001)
    params = np.full((grid.size, 1, 1, 1), logit, np.float32)
    nll = ops.convert_to_numpy(
        likelihoods.negative_log_likelihood(grid.reshape(-1, 1, 1, 1), params, "continuous_bernoulli")
    ).astype(np.float64)
    density = np.exp(-nll)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-3)
    mean = float(
        np.asarray(ops.convert_to_numpy(likelihoods.mean_image(np.float32([logit]), "continuous_bernoulli")))[0]
    )
    assert mean == pytest.approx(np.trapezoid(density * grid, grid), abs=1e-4)
    drawn = likelihoods.sample_image(
        np.full(100_000, logit, np.float32), "continuous_bernoulli", np.random.default_rng(0)
    )
    assert drawn.mean() == pytest.approx(mean, abs=5e-3)


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_binned_continuous_bernoulli_is_a_probability_over_the_grey_levels(levels):
    values = (np.arange(levels) / (levels - 1)).astype(np.float32).reshape(-1, 1, 1, 1)
    for logit in (-50.0, -8.0, -1e-5, 0.0, 0.4, 12.0, 50.0):
        params = np.full(values.shape, logit, np.float32)
        nll = ops.convert_to_numpy(likelihoods.negative_log_likelihood(values, params, "continuous_bernoulli", levels))
        assert np.all(nll >= -1e-6)  # a probability: never more than 1
        assert np.exp(-nll.astype(np.float64)).sum() == pytest.approx(1.0, abs=1e-4)


def test_gaussian_nll_matches_normal_density():
    x = np.array([[[[0.3]]]], np.float32)
    loc_logit, log_scale = 0.0, np.log(0.2)
    params = np.array([[[[loc_logit, log_scale]]]], np.float32)
    got = float(ops.convert_to_numpy(likelihoods.negative_log_likelihood(x, params, "gaussian"))[0])
    expected = 0.5 * ((0.3 - 0.5) / 0.2) ** 2 + np.log(0.2) + 0.5 * np.log(2 * np.pi)
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", likelihoods.LIKELIHOODS)
def test_each_likelihood_trains_and_gives_images_in_unit_range(name):
    keras.utils.set_random_seed(0)
    model = VariationalAutoencoder((8, 8, 1), latent_dim=2, likelihood=name, seed=0)
    compile_model(model)
    x = np.random.default_rng(0).random((64, 8, 8, 1), dtype=np.float32)
    history = model.fit(x, np.zeros(64), epochs=2, batch_size=32, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    params = model.decode(np.zeros((3, 2), np.float32))
    mean = ops.convert_to_numpy(likelihoods.mean_image(params, name))
    drawn = likelihoods.sample_image(params, name, np.random.default_rng(0))
    for image in (mean, drawn):
        assert image.shape == (3, 8, 8, 1) and image.min() >= 0 and image.max() <= 1
    assert np.all(np.isfinite(detector.score_images(model, x[:5])["neg_elbo"]))


def test_unknown_likelihood_is_refused():
    with pytest.raises(ValueError, match="unknown likelihood"):
        VariationalAutoencoder((8, 8, 1), likelihood="poisson")


class LinearGaussian:
    """p(z) = N(0, I), p(x|z) = N(Wz + b, s^2 I): log p(x) is exactly N(x; b, WW' + s^2 I).

    The encoder gives the exact posterior's mean with only its covariance's diagonal; W's columns
    are correlated, so the posterior is not diagonal, the ELBO is a strict lower bound, and the
    IWAE bound must close the gap as K grows.
    """

    likelihood = "gaussian"
    num_classes = 0
    latent_dim = 2

    def __init__(self, scale: float = 0.02) -> None:
        w = np.random.default_rng(0).normal(scale=0.05, size=(4, self.latent_dim))
        w[:, 1] = 0.9 * w[:, 0] + 0.3 * w[:, 1]
        self.w, self.b, self.scale = w, np.full(4, 0.5), scale
        self.post_cov = np.linalg.inv(np.eye(self.latent_dim) + w.T @ w / scale**2)

    def encode(self, images, one_hot=None):
        x = np.asarray(images, np.float64).reshape(len(images), -1)
        mean = (x - self.b) @ self.w @ self.post_cov.T / self.scale**2
        log_var = np.broadcast_to(np.log(np.diag(self.post_cov)), mean.shape)
        return mean.astype(np.float32), log_var.astype(np.float32)

    def decode(self, z, one_hot=None):
        loc = np.asarray(z, np.float64) @ self.w.T + self.b
        assert loc.min() > 0 and loc.max() < 1  # so sigmoid(logit(loc)) == loc exactly
        logits = np.log(loc) - np.log1p(-loc)
        log_scale = np.full_like(logits, np.log(self.scale))
        return np.stack([logits, log_scale], axis=-1).reshape(len(z), 1, -1, 2).astype(np.float32)

    def sample(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((n, self.latent_dim)) @ self.w.T + self.b + self.scale * rng.standard_normal((n, 4))
        return x.reshape(n, 1, 4, 1)

    def log_marginal(self, images):
        x = np.asarray(images, np.float64).reshape(len(images), -1) - self.b
        cov = self.w @ self.w.T + self.scale**2 * np.eye(x.shape[1])
        _, logdet = np.linalg.slogdet(cov)
        quad = np.einsum("ni,ij,nj->n", x, np.linalg.inv(cov), x)
        return -0.5 * (quad + logdet + x.shape[1] * np.log(2 * np.pi))


def test_elbo_and_iwae_bound_the_exact_marginal_likelihood():
    model = LinearGaussian()
    images = model.sample(32, seed=3)
    exact_nll = -model.log_marginal(images)
    elbo_gap = elbo.neg_elbo_terms(model, images, num_samples=4000, seed=0)["neg_elbo"] - exact_nll
    assert np.all(elbo_gap > 0.5)  # -ELBO > -log p(x) for every example: a strict bound here
    # the IWAE gap, averaged over seeds, shrinks towards 0 as K grows
    gaps = {
        k: np.mean([np.mean(elbo.iwae_nll(model, images, k=k, seed=s) - exact_nll) for s in range(8)])
        for k in (1, 10, 100, 1000)
    }
    assert gaps[1] == pytest.approx(elbo_gap.mean(), rel=0.3)  # K = 1 is the ELBO
    assert gaps[1] > gaps[10] > gaps[1000]
    assert abs(gaps[100]) < 0.1 * elbo_gap.mean()
    assert abs(gaps[1000]) < 0.05 * elbo_gap.mean()


def test_scores_are_deterministic_and_independent_of_batching():
    model = VariationalAutoencoder((8, 8, 1), latent_dim=3, seed=0)
    x = np.random.default_rng(4).random((23, 8, 8, 1), dtype=np.float32)
    first = detector.score_images(model, x, seed=7, iwae_k=5)
    again = detector.score_images(model, x, seed=7, iwae_k=5, batch_size=4)
    for key in first:
        np.testing.assert_allclose(first[key], again[key], rtol=1e-5, atol=1e-6)
    other_seed = detector.score_images(model, x, seed=8)
    assert not np.allclose(first["reconstruction_nll"], other_seed["reconstruction_nll"])


def test_saved_model_reloads_in_safe_mode_with_identical_scores(tmp_path):
    model = VariationalAutoencoder(
        (8, 8, 1),
        latent_dim=3,
        num_classes=10,
        seed=0,
        calibration={"threshold": 1.0, "target_fpr": 0.01, "scores": [0.5, 1.0]},
    )
    compile_model(model)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = np.random.default_rng(5).random((6, 8, 8, 1), dtype=np.float32)
    labels = np.arange(6)
    np.testing.assert_array_equal(
        detector.score_images(model, x, labels)["neg_elbo"], detector.score_images(loaded, x, labels)["neg_elbo"]
    )
    assert loaded.calibration == model.calibration and loaded.class_names == model.class_names


@pytest.mark.parametrize(
    "likelihood, levels",
    [("bernoulli", 0), ("continuous_bernoulli", 0), ("continuous_bernoulli", 256), ("gaussian", 0)],
)
@pytest.mark.parametrize("conditional", [False, True])
def test_pixel_nll_sums_to_the_reconstruction_nll(likelihood, levels, conditional, monkeypatch):
    model = VariationalAutoencoder(
        (8, 8, 1), latent_dim=3, likelihood=likelihood, num_classes=4 if conditional else 0, pixel_levels=levels, seed=0
    )
    x = np.random.default_rng(6).random((5, 8, 8, 1), dtype=np.float32)
    if levels:
        x = np.round(x * (levels - 1)) / (levels - 1)
    labels = np.array([0, 1, 2, 3, 1]) if conditional else None
    terms = elbo.neg_elbo_terms(model, x, labels, num_samples=6, seed=3)
    with_pixels = elbo.neg_elbo_terms(model, x, labels, num_samples=6, seed=3, pixel_scores=True)
    for key in terms:  # asking for the pixels changes no score
        np.testing.assert_array_equal(with_pixels[key], terms[key])
    monkeypatch.setattr(elbo, "MAX_DECODE", 10)  # several decoder calls: the running sum over samples
    pixels = elbo.pixel_nll(model, x, labels, num_samples=6, seed=3)
    assert pixels.shape == x.shape and pixels.dtype == np.float64
    # the pixels come from eager ops, the scores from the compiled step: float32 sums of 64 terms of order 1
    np.testing.assert_allclose(pixels.sum(axis=(1, 2, 3)), terms["reconstruction_nll"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(pixels, with_pixels["pixel_nll"], rtol=1e-5, atol=1e-6)
    batched = detector.score_images(model, x, labels, num_samples=6, seed=3, batch_size=2, pixel_scores=True)
    np.testing.assert_allclose(batched["pixel_nll"], pixels, rtol=1e-5, atol=1e-6)  # nor batching
    if likelihood == "bernoulli":  # by hand: the mean over the samples of each pixel's cross-entropy
        oh = elbo.one_hot(labels, model.num_classes)
        mean, log_var = (np.asarray(ops.convert_to_numpy(t)) for t in model.encode(x, oh))
        eps = elbo.posterior_noise(3, 6, 3)
        expected = np.zeros(x.shape)
        for e in eps:
            logits = np.asarray(ops.convert_to_numpy(model.decode(mean + np.exp(0.5 * log_var) * e, oh)), np.float64)
            expected += (np.logaddexp(0.0, logits) - x * logits) / 6
        np.testing.assert_allclose(pixels, expected, rtol=1e-4, atol=1e-5)
