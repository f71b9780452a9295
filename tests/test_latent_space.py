"""Pictures of the latent space: the decoded grid over its leading directions, and interpolation."""

from __future__ import annotations

import numpy as np
import pytest

from scoring.latent_space import interpolate, latent_grid
from scoring.sampling import decode_images, posterior_means


class LinearModel:
    """A stand-in VAE whose posterior mean is an image's first ``latent_dim`` pixels and whose decoder
    draws the latent (plus the label, for a conditional one) as a 1 x D image of Bernoulli logits."""

    likelihood = "bernoulli"
    pixel_levels = 0

    def __init__(self, latent_dim: int, num_classes: int = 0) -> None:
        self.latent_dim, self.num_classes = latent_dim, num_classes

    def encode(self, images, one_hot=None):
        flat = np.asarray(images, np.float32).reshape(len(images), -1)[:, : self.latent_dim]
        return flat, np.zeros_like(flat)

    def decode(self, z, one_hot=None):
        z = np.asarray(z, np.float32)
        shift = 0.0 if one_hot is None else np.argmax(one_hot, axis=1)[:, None].astype(np.float32)
        return (z + shift)[:, None, :, None]


def images_with_means(means: np.ndarray) -> np.ndarray:
    """Images (N, 1, D, 1) whose stand-in posterior means are ``means``."""
    return means.astype(np.float32)[:, None, :, None]


def test_a_2d_latent_grid_spans_the_percentiles_of_the_latent_axes_themselves():
    rng = np.random.default_rng(0)
    means = rng.normal(size=(400, 2)) * [1.0, 3.0] + [0.5, -1.0]
    grid = latent_grid(LinearModel(2), images_with_means(means), n=7, span=(5, 95))
    assert grid.images.shape == (7, 7, 1, 2, 1) and grid.latents.shape == (7, 7, 2)
    assert not grid.principal and np.array_equal(grid.directions, np.eye(2))
    x_lo, x_hi = np.percentile(means[:, 0], [5, 95])
    y_lo, y_hi = np.percentile(means[:, 1], [5, 95])
    # laid out like a scatter plot: x grows to the right, y grows upwards (row 0 is the top)
    np.testing.assert_allclose(grid.latents[0, 0], [x_lo, y_hi], rtol=1e-5)
    np.testing.assert_allclose(grid.latents[0, -1], [x_hi, y_hi], rtol=1e-5)
    np.testing.assert_allclose(grid.latents[-1, 0], [x_lo, y_lo], rtol=1e-5)
    np.testing.assert_allclose(grid.latents[-1, -1], [x_hi, y_lo], rtol=1e-5)
    flat = grid.latents.reshape(-1, 2)
    np.testing.assert_allclose(grid.images.reshape(-1, 1, 2, 1), decode_images(LinearModel(2), flat))


def test_a_wider_latent_grid_runs_over_the_two_leading_principal_directions_with_the_rest_at_the_mean():
    rng = np.random.default_rng(1)
    centre = np.array([1.0, -2.0, 0.5, 3.0, 0.0])
    # most spread along latent axis 3, then axis 1; little along the others
    means = centre + rng.normal(size=(500, 5)) * [0.05, 2.0, 0.05, 5.0, 0.05]
    grid = latent_grid(LinearModel(5), images_with_means(means), n=5, span=(10, 90))
    assert grid.principal and grid.images.shape[:2] == (5, 5)
    np.testing.assert_allclose(np.abs(grid.directions[0]), np.eye(5)[3], atol=0.05)
    np.testing.assert_allclose(np.abs(grid.directions[1]), np.eye(5)[1], atol=0.05)
    np.testing.assert_allclose(grid.centre, means.mean(axis=0))
    projections = (means - grid.centre) @ grid.directions.T
    x_lo, x_hi = np.percentile(projections[:, 0], [10, 90])
    y_lo, y_hi = np.percentile(projections[:, 1], [10, 90])
    corners = {(0, 0): (x_lo, y_hi), (-1, -1): (x_hi, y_lo), (2, 2): ((x_lo + x_hi) / 2, (y_lo + y_hi) / 2)}
    for (i, j), (x, y) in corners.items():
        expected = grid.centre + x * grid.directions[0] + y * grid.directions[1]
        np.testing.assert_allclose(grid.latents[i, j], expected, rtol=1e-5, atol=1e-5)
    # off the two directions, every latent of the grid stays at the means' mean
    off_plane = (grid.latents.reshape(-1, 5) - grid.centre) @ np.linalg.svd(means - grid.centre)[2][2:].T
    np.testing.assert_allclose(off_plane, 0.0, atol=1e-5)


def test_a_conditional_grid_decodes_with_one_label():
    means = np.random.default_rng(2).normal(size=(50, 2))
    labels = np.array([1] * 20 + [2] * 30)
    model = LinearModel(2, num_classes=3)
    grid = latent_grid(model, images_with_means(means), labels, n=3)
    assert grid.label == 2  # the most common label
    expected = decode_images(model, grid.latents.reshape(-1, 2), np.full(9, 2))
    np.testing.assert_allclose(grid.images.reshape(-1, 1, 2, 1), expected)
    assert latent_grid(model, images_with_means(means), labels, n=3, label=0).label == 0
    with pytest.raises(ValueError, match="labels"):
        latent_grid(model, images_with_means(means), n=3)


def test_interpolation_runs_from_one_posterior_mean_to_the_other():
    model = LinearModel(3)
    a, b = images_with_means(np.array([[0.1, -2.0, 3.3], [1.7, 0.4, -0.9]]))
    decoded, latents = interpolate(model, a, b, steps=6)
    ends = posterior_means(model, np.stack([a, b]))
    assert decoded.shape == (6, 1, 3, 1) and latents.shape == (6, 3)
    assert np.array_equal(latents[0], ends[0]) and np.array_equal(latents[-1], ends[1])
    np.testing.assert_allclose(decoded[[0, -1]], decode_images(model, ends), rtol=1e-6)
    np.testing.assert_allclose(np.diff(latents, axis=0), np.tile((ends[1] - ends[0]) / 5, (5, 1)), atol=1e-6)
    with pytest.raises(ValueError, match="steps"):
        interpolate(model, a, b, steps=1)


def test_interpolation_of_a_conditional_model_decodes_with_one_label():
    model = LinearModel(2, num_classes=4)
    a, b = images_with_means(np.array([[0.0, 1.0], [1.0, 0.0]]))
    decoded, latents = interpolate(model, a, b, steps=3, label_a=1, label_b=3)
    np.testing.assert_allclose(decoded, decode_images(model, latents, np.full(3, 1)))
    decoded, _ = interpolate(model, a, b, steps=3, label_a=1, label_b=3, label=3)
    np.testing.assert_allclose(decoded, decode_images(model, latents, np.full(3, 3)))
    with pytest.raises(ValueError, match="labels"):
        interpolate(model, a, b)
