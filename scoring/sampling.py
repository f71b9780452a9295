"""Decoding latents into images: prior, conditional and posterior samples from a trained VAE."""

from __future__ import annotations

import numpy as np
from keras import ops

from scoring import likelihoods
from scoring.elbo import ScorableModel, one_hot


def decode_images(
    model: ScorableModel,
    z: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    sample_pixels: bool = False,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Images for latents ``z`` (N, D): the likelihood's mean, or a draw from it with ``sample_pixels``."""
    params = ops.cast(model.decode(np.asarray(z, np.float32), one_hot(labels, model.num_classes)), "float32")
    if sample_pixels:
        return likelihoods.sample_image(params, model.likelihood, rng or np.random.default_rng(0))
    return np.asarray(ops.convert_to_numpy(likelihoods.mean_image(params, model.likelihood)), dtype=np.float32)


def prior_latents(n: int, latent_dim: int, seed: int, temperature: float = 1.0) -> np.ndarray:
    """z ~ N(0, temperature^2 I), reproducible for a seed."""
    rng = np.random.default_rng(seed)
    return (temperature * rng.standard_normal((n, latent_dim))).astype(np.float32)


def posterior_latents(
    model: ScorableModel, images: np.ndarray, labels: np.ndarray | None, seed: int, temperature: float = 1.0
) -> np.ndarray:
    """z ~ q(z|x) with the posterior's standard deviation scaled by ``temperature``."""
    mean, log_var = (
        np.asarray(ops.convert_to_numpy(t))
        for t in model.encode(np.asarray(images, np.float32), one_hot(labels, model.num_classes))
    )
    eps = np.random.default_rng(seed).standard_normal(mean.shape)
    return (mean + temperature * np.exp(0.5 * log_var) * eps).astype(np.float32)


def posterior_means(model: ScorableModel, images: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    mean, _ = model.encode(np.asarray(images, np.float32), one_hot(labels, model.num_classes))
    return np.asarray(ops.convert_to_numpy(mean))
