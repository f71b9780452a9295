"""Decoding latents into images: prior, conditional and posterior samples from a trained VAE."""

from __future__ import annotations

import numpy as np
from keras import ops

from scoring import likelihoods
from scoring.elbo import ScorableModel, one_hot
from scoring.latent_prior import LatentPrior
from scoring.sampling_choices import (  # noqa: F401  (the module's choices, re-exported)
    DEFAULT_LATENT_PRIOR,
    DEFAULT_PIXEL_TEMPERATURE,
    LATENT_PRIORS,
    SAMPLE_METHODS,
)


def decode_images(
    model: ScorableModel,
    z: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    pixel_temperature: float = 0.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Images for latents ``z`` (N, D): the likelihood's mean (``pixel_temperature`` 0), or a draw
    from the likelihood tempered to p(x|z)^(1/T) (:func:`scoring.likelihoods.temper`; T = 1 is a
    plain draw, T < 1 a sharper one with less speckle).

    A model of quantised pixels (``pixel_levels`` grey levels, the binned likelihood) gives its
    images on those levels too, and a Bernoulli model (binary pixels) gives binary images, the mean
    rounded to 0 or 1 (the most probable image): in the form of the data it learnt from, so that
    synthetic images that go back into training (augmentation) keep the data's grid."""
    if pixel_temperature < 0.0:
        raise ValueError(f"the pixel temperature must be non-negative, got {pixel_temperature}")
    params = ops.cast(model.decode(np.asarray(z, np.float32), one_hot(labels, model.num_classes)), "float32")
    levels = int(getattr(model, "pixel_levels", 0))
    if pixel_temperature > 0.0:
        tempered = likelihoods.temper(params, model.likelihood, pixel_temperature)
        return likelihoods.sample_image(tempered, model.likelihood, rng or np.random.default_rng(0), levels)
    mean = np.asarray(ops.convert_to_numpy(likelihoods.mean_image(params, model.likelihood)), dtype=np.float32)
    if model.likelihood == "bernoulli":
        levels = 2
    if levels > 1:
        steps = np.float32(levels - 1)
        mean = np.round(mean * steps) / steps
    return mean


def prior_latents(n: int, latent_dim: int, seed: int, temperature: float = 1.0) -> np.ndarray:
    """z ~ N(0, temperature^2 I), reproducible for a seed."""
    rng = np.random.default_rng(seed)
    return (temperature * rng.standard_normal((n, latent_dim))).astype(np.float32)


def fitted_prior(model: ScorableModel) -> LatentPrior | None:
    """The model's stored aggregate-posterior prior (:mod:`scoring.latent_prior`), or None."""
    return LatentPrior.from_config(getattr(model, "latent_prior", None))


def sample_latents(
    model: ScorableModel,
    n: int,
    seed: int,
    *,
    labels: np.ndarray | None = None,
    temperature: float = 1.0,
    latent_prior: str = DEFAULT_LATENT_PRIOR,
) -> np.ndarray:
    """``n`` latents from ``latent_prior`` (:data:`LATENT_PRIORS`), per label for a conditional model;
    the spread around the prior's mean is scaled by ``temperature``."""
    if latent_prior not in LATENT_PRIORS:
        raise ValueError(f"unknown latent prior {latent_prior!r}; choose one of {', '.join(LATENT_PRIORS)}")
    fitted = fitted_prior(model) if latent_prior == "fitted" else None
    if fitted is None:
        return prior_latents(n, model.latent_dim, seed=seed, temperature=temperature)
    groups = np.zeros(n, np.int64) if labels is None or not model.num_classes else np.asarray(labels)[:n]
    return fitted.sample(groups, seed=seed, temperature=temperature)


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


def stream_seed(seed: int, *key: int) -> int:
    """A 64-bit seed for the random stream named by ``(seed, *key)`` (numpy ``SeedSequence``), e.g. one
    per block of samples, so a block's draws depend only on the run's seed and the block's index."""
    return int(np.random.SeedSequence([int(seed), *(int(k) for k in key)]).generate_state(1, np.uint64)[0])


def synthesize(
    model: ScorableModel,
    method: str,
    count: int,
    *,
    seed: int,
    labels: np.ndarray | None = None,
    images: np.ndarray | None = None,
    temperature: float = 1.0,
    pixel_temperature: float = DEFAULT_PIXEL_TEMPERATURE,
    latent_prior: str = DEFAULT_LATENT_PRIOR,
) -> tuple[np.ndarray, np.ndarray]:
    """``(images, latents)`` for ``count`` synthetic samples, reproducible for a seed.

    ``prior`` and ``conditional``: z from ``latent_prior`` (:func:`sample_latents`); a conditional
    model decodes with ``labels``. ``posterior``: z ~ q(z|x) of ``images`` (and their ``labels`` for
    a conditional model) with the standard deviation scaled by ``temperature``. Images are decoded
    with ``pixel_temperature`` (:func:`decode_images`; pixels are a second stream of the same seed).
    """
    if method not in SAMPLE_METHODS:
        raise ValueError(f"unknown sampling method {method!r}; choose one of {', '.join(SAMPLE_METHODS)}")
    conditional = bool(model.num_classes)
    if conditional and labels is None:
        raise ValueError("this is a conditional VAE: sampling needs a label per sample")
    cond_labels = np.asarray(labels, dtype=np.int64)[:count] if conditional else None
    if method == "posterior":
        if images is None or len(images) != count:
            raise ValueError("posterior sampling needs one source image per sample")
        z = posterior_latents(model, images, cond_labels, seed=seed, temperature=temperature)
    else:
        z = sample_latents(model, count, seed, labels=cond_labels, temperature=temperature, latent_prior=latent_prior)
    pixel_rng = np.random.default_rng([seed, 1])
    decoded = decode_images(model, z, cond_labels, pixel_temperature=pixel_temperature, rng=pixel_rng)
    return np.asarray(decoded, dtype=np.float32), z
