"""Per-example scores of a trained VAE: negative ELBO, its two terms, and the IWAE bound.

Every estimate uses *common random numbers*: the posterior noise is a fixed ``(S, latent_dim)``
matrix drawn from ``seed`` and shared by every example. A row's score therefore depends only on
the row, the model and the seed, never on its batch or its position in it, so a Beam worker and
a notebook agree to float precision.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np
from keras import ops

from scoring import likelihoods


class ScorableModel(Protocol):
    latent_dim: int
    likelihood: str
    num_classes: int
    pixel_levels: int

    def encode(self, images: Any, one_hot: Any = None) -> Any: ...
    def decode(self, z: Any, one_hot: Any = None) -> Any: ...


def kl_divergence(mean, log_var):
    """Analytic KL(N(mean, diag(exp(log_var))) || N(0, I)) per example, in nats."""
    return -0.5 * ops.sum(1.0 + log_var - ops.square(mean) - ops.exp(log_var), axis=-1)


def posterior_noise(seed: int, num_samples: int, latent_dim: int, stream: int = 0) -> np.ndarray:
    return np.random.default_rng([seed, stream]).standard_normal((num_samples, latent_dim)).astype(np.float32)


def one_hot(labels: np.ndarray | None, num_classes: int) -> np.ndarray | None:
    if not num_classes:
        return None
    if labels is None:
        raise ValueError("this is a conditional VAE: scores need the labels")
    return np.eye(num_classes, dtype=np.float32)[np.asarray(labels, dtype=np.int64)]


def _np(t) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(t))


MAX_DECODE = 4096  # latents per decoder call: bounds activation memory whatever the batch size


def _decode_chunks(model: ScorableModel, images: np.ndarray, z: np.ndarray, oh: np.ndarray | None, per_pixel: bool):
    """Decodes ``z`` (S, N, D) in calls of at most :data:`MAX_DECODE` latents; yields ``(start, nll,
    pixels)`` per call: -log p(x|z) of posterior samples ``start`` to ``start + k``, (k, N), and with
    ``per_pixel`` its per-pixel terms, (k, N, H, W, C), whose sums ``nll`` is (else None)."""
    s, n, d = z.shape
    per_call = max(1, MAX_DECODE // max(n, 1))  # posterior samples per decoder call
    levels = getattr(model, "pixel_levels", 0)
    for start in range(0, s, per_call):
        chunk = z[start : start + per_call]
        k = chunk.shape[0]
        tiled_x = np.broadcast_to(images, (k, *images.shape)).reshape(k * n, *images.shape[1:])
        tiled_oh = None if oh is None else np.broadcast_to(oh, (k, *oh.shape)).reshape(k * n, -1)
        params = ops.cast(model.decode(chunk.reshape(k * n, d), tiled_oh), "float32")
        if per_pixel:  # the same tensor negative_log_likelihood sums: nll is the same either way
            pixels = likelihoods.pixel_negative_log_likelihood(tiled_x, params, model.likelihood, levels)
            nll = likelihoods.sum_pixels(pixels)
            yield start, _np(nll).reshape(k, n), _np(pixels).reshape(k, *images.shape)
        else:
            nll = likelihoods.negative_log_likelihood(tiled_x, params, model.likelihood, levels)
            yield start, _np(nll).reshape(k, n), None


def _decode_nll(model: ScorableModel, images: np.ndarray, z: np.ndarray, oh: np.ndarray | None) -> np.ndarray:
    """-log p(x|z) for S latents per example: ``z`` is (S, N, D); returns (S, N)."""
    out = np.empty(z.shape[:2], dtype=np.float32)
    for start, nll, _ in _decode_chunks(model, images, z, oh, per_pixel=False):
        out[start : start + len(nll)] = nll
    return out


def neg_elbo_terms(
    model: ScorableModel,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    num_samples: int = 16,
    seed: int = 0,
    pixel_scores: bool = False,
) -> dict[str, np.ndarray]:
    """``reconstruction_nll`` (Monte Carlo over ``num_samples``), analytic ``kl`` and their sum
    ``neg_elbo``, each a float64 array of one value per example, in nats; and the
    ``posterior_mean`` of q(z|x), (N, latent_dim).

    With ``pixel_scores`` also ``pixel_nll``: each pixel's share of ``reconstruction_nll`` (the same
    posterior samples), float64 (N, H, W, C), summing over the pixels to it (see :func:`pixel_nll`)."""
    images = np.asarray(images, dtype=np.float32)
    oh = one_hot(labels, model.num_classes)
    mean, log_var = (_np(t) for t in model.encode(images, oh))
    eps = posterior_noise(seed, num_samples, model.latent_dim)
    z = mean[None] + np.exp(0.5 * log_var)[None] * eps[:, None, :]
    out: dict[str, np.ndarray] = {}
    if pixel_scores:
        nll = np.empty(z.shape[:2], dtype=np.float32)
        pixel_sum = np.zeros(images.shape, dtype=np.float64)
        for start, chunk_nll, pixels in _decode_chunks(model, images, z, oh, per_pixel=True):
            nll[start : start + len(chunk_nll)] = chunk_nll
            pixel_sum += pixels.astype(np.float64).sum(axis=0)
        out["pixel_nll"] = pixel_sum / num_samples
    else:
        nll = _decode_nll(model, images, z, oh)
    reconstruction = nll.astype(np.float64).mean(axis=0)
    mean64, log_var64 = mean.astype(np.float64), log_var.astype(np.float64)
    kl = 0.5 * np.sum(np.exp(log_var64) + mean64**2 - 1.0 - log_var64, axis=-1)
    terms = {"neg_elbo": reconstruction + kl, "reconstruction_nll": reconstruction, "kl": kl, "posterior_mean": mean}
    return terms | out


def pixel_nll(
    model: ScorableModel,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    num_samples: int = 16,
    seed: int = 0,
) -> np.ndarray:
    """Where an image is anomalous: each pixel's -log p(x_pixel|z) in nats, averaged over the same
    ``num_samples`` posterior samples (from ``seed``) as :func:`neg_elbo_terms`, float64 (N, H, W, C).

    Pixels are independent given z, so a row's values sum to its ``reconstruction_nll`` (to float
    precision); high values are the pixels the model found least probable. Pass the model's
    ``score_samples`` and ``score_seed`` to match ``vae score``."""
    return neg_elbo_terms(model, images, labels, num_samples=num_samples, seed=seed, pixel_scores=True)["pixel_nll"]


def iwae_nll(
    model: ScorableModel,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    k: int = 100,
    seed: int = 0,
    chunk: int = 256,
) -> np.ndarray:
    """-log of the importance-weighted bound with ``k`` samples (Burda et al., 2016), in nats.

    With k = 1 it is the single-sample negative ELBO; it decreases towards -log p(x) as k grows.
    """
    images = np.asarray(images, dtype=np.float32)
    oh = one_hot(labels, model.num_classes)
    mean, log_var = (_np(t).astype(np.float64) for t in model.encode(images, oh))
    std = np.exp(0.5 * log_var)
    eps = posterior_noise(seed, k, model.latent_dim, stream=1).astype(np.float64)
    log_w = np.empty((k, images.shape[0]))
    log_2pi = math.log(2.0 * math.pi)
    for start in range(0, k, chunk):
        e = eps[start : start + chunk, None, :]
        z = mean[None] + std[None] * e
        log_pz = -0.5 * np.sum(z**2 + log_2pi, axis=-1)
        log_qz = -0.5 * np.sum(e**2 + log_2pi + log_var[None], axis=-1)
        log_px = -_decode_nll(model, images, z.astype(np.float32), oh).astype(np.float64)
        log_w[start : start + chunk] = log_px + log_pz - log_qz
    top = log_w.max(axis=0)
    log_mean_w = top + np.log(np.mean(np.exp(log_w - top), axis=0))
    return -log_mean_w


def score_terms(
    model: ScorableModel,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    num_samples: int = 16,
    seed: int = 0,
    iwae_k: int | None = None,
    batch_size: int = 1024,
    pixel_scores: bool = False,
) -> dict[str, np.ndarray]:
    """Every per-example term of a data set, in batches: ``neg_elbo``, ``reconstruction_nll``,
    ``kl``, ``posterior_mean``, with ``iwae_k`` ``iwae_nll``, and with ``pixel_scores``
    ``pixel_nll`` (N, H, W, C) (see :func:`pixel_nll`). The anomaly score built on them is
    :func:`scoring.detector.score_images`'s."""
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, len(images), batch_size):
        stop = start + batch_size
        batch_labels = None if labels is None else labels[start:stop]
        part = neg_elbo_terms(
            model, images[start:stop], batch_labels, num_samples=num_samples, seed=seed, pixel_scores=pixel_scores
        )
        if iwae_k:
            part["iwae_nll"] = iwae_nll(model, images[start:stop], batch_labels, k=iwae_k, seed=seed)
        parts.append(part)
    if not parts:
        keys = ["neg_elbo", "reconstruction_nll", "kl"] + (["iwae_nll"] if iwae_k else [])
        empty = {key: np.empty(0) for key in keys} | {"posterior_mean": np.empty((0, model.latent_dim), np.float32)}
        if pixel_scores:
            empty["pixel_nll"] = np.empty((0, *np.shape(images)[1:]))
        return empty
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
