"""The scoring path as it was before the compiled scoring step (issue 22), frozen here as the
baseline that ``benchmarks/score_rate.py`` measures in the same run: the encoder called eagerly,
posterior samples in numpy, the decoder in eager calls of at most 4,096 latents, and the binned
continuous Bernoulli as it was written then (two ``log1mexp``, each computing both branches).
Same samples and the same scores to float precision; not used by the pipeline."""

from __future__ import annotations

import numpy as np
from keras import ops

from scoring import likelihoods
from scoring.elbo import one_hot, posterior_noise

MAX_DECODE = 4096


def _np(t) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(t))


def _log1mexp(t):
    return ops.where(t < 0.6931, ops.log(-ops.expm1(-t)), ops.log1p(-ops.exp(-t)))


def _binned_cb_log_mass(x, logits, levels: int):
    half = 0.5 / (levels - 1)
    a = ops.maximum(x - half, 0.0)
    b = ops.minimum(x + half, 1.0)
    t = ops.abs(logits)
    near_zero = t < 1e-4
    safe = ops.where(near_zero, ops.ones_like(t), t)
    gap = ops.where(logits > 0, 1.0 - b, a)
    exact = -safe * gap + _log1mexp(safe * (b - a)) - _log1mexp(safe)
    return ops.where(near_zero, ops.log(b - a), exact)


def negative_log_likelihood(x, params, name: str, levels: int):
    if name == "continuous_bernoulli" and levels >= 2:
        return likelihoods.sum_pixels(-_binned_cb_log_mass(ops.cast(x, params.dtype), params, levels))
    return likelihoods.negative_log_likelihood(x, params, name, levels)


def neg_elbo_terms(model, images, labels=None, *, num_samples: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    images = np.asarray(images, dtype=np.float32)
    oh = one_hot(labels, model.num_classes)
    mean, log_var = (_np(t) for t in model.encode(images, oh))
    eps = posterior_noise(seed, num_samples, model.latent_dim)
    z = mean[None] + np.exp(0.5 * log_var)[None] * eps[:, None, :]
    s, n, d = z.shape
    nll = np.empty((s, n), dtype=np.float32)
    per_call = max(1, MAX_DECODE // max(n, 1))
    for start in range(0, s, per_call):
        chunk = z[start : start + per_call]
        k = chunk.shape[0]
        tiled_x = np.broadcast_to(images, (k, *images.shape)).reshape(k * n, *images.shape[1:])
        tiled_oh = None if oh is None else np.broadcast_to(oh, (k, *oh.shape)).reshape(k * n, -1)
        params = ops.cast(model.decode(chunk.reshape(k * n, d), tiled_oh), "float32")
        chunk_nll = negative_log_likelihood(tiled_x, params, model.likelihood, model.pixel_levels)
        nll[start : start + k] = _np(chunk_nll).reshape(k, n)
    reconstruction = nll.astype(np.float64).mean(axis=0)
    mean64, log_var64 = mean.astype(np.float64), log_var.astype(np.float64)
    kl = 0.5 * np.sum(np.exp(log_var64) + mean64**2 - 1.0 - log_var64, axis=-1)
    return {"neg_elbo": reconstruction + kl, "reconstruction_nll": reconstruction, "kl": kl, "posterior_mean": mean}


def score_terms(model, images, labels=None, *, num_samples: int = 16, seed: int = 0, batch_size: int = 1024):
    parts = []
    for start in range(0, len(images), batch_size):
        batch_labels = None if labels is None else labels[start : start + batch_size]
        parts.append(
            neg_elbo_terms(model, images[start : start + batch_size], batch_labels, num_samples=num_samples, seed=seed)
        )
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def score_images(model, images, labels=None, *, num_samples: int = 16, seed: int = 0, batch_size: int = 1024):
    """The default score as ``scoring.detector.score_images`` computed it: these terms, then the
    (unchanged) anomaly score fitted into the model."""
    from scoring.detector import model_anomaly_scores

    terms = score_terms(model, images, labels, num_samples=num_samples, seed=seed, batch_size=batch_size)
    terms["anomaly_score"] = model_anomaly_scores(model, terms)
    return terms
