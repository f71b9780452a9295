"""Per-example scores of a trained VAE: negative ELBO, its two terms, and the IWAE bound.

Every estimate uses *common random numbers*: the posterior noise is a fixed ``(S, latent_dim)``
matrix drawn from ``seed`` and shared by every example. A row's score therefore depends only on
the row, the model and the seed, never on its batch or its position in it, so a Beam worker and
a notebook agree to float precision.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable
from typing import Any, Protocol

import keras
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
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = int(labels.min()) if labels.min() < 0 else int(labels.max())
        raise ValueError(f"label {bad} is not one of this model's {num_classes} classes (-1: a row without a label)")
    return np.eye(num_classes, dtype=np.float32)[labels]


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
    steps = _compiled(model)
    if steps is not None:
        return _compiled_latent_nll(steps, images, z, oh)
    out = np.empty(z.shape[:2], dtype=np.float32)
    for start, nll, _ in _decode_chunks(model, images, z, oh, per_pixel=False):
        out[start : start + len(nll)] = nll
    return out


COMPILED = True  # score Keras models on TensorFlow and JAX with one compiled (XLA) step per block


def _latent_nll(model: ScorableModel, images, oh, z):
    """-log p(x|z) of latents ``z`` (k, r, D) for ``r`` images, (k, r); traced, never eager."""
    k, r, d = z.shape
    flat_oh = None if oh is None else ops.reshape(ops.broadcast_to(oh[None], (k, *oh.shape)), (k * r, oh.shape[-1]))
    params = ops.cast(model.decode(ops.reshape(z, (k * r, d)), flat_oh), "float32")
    params = ops.reshape(params, (k, r, *params.shape[1:]))
    levels = getattr(model, "pixel_levels", 0)
    pixels = likelihoods.pixel_negative_log_likelihood(images[None], params, model.likelihood, levels)
    return ops.sum(pixels, axis=tuple(range(2, len(pixels.shape))))


def _elbo_block(model: ScorableModel, images, oh, eps):
    """Encode, sample with the common noise ``eps`` (k, D), decode, likelihood: ((k, r) nll, mean, log_var)."""
    mean, log_var = (ops.cast(t, "float32") for t in model.encode(images, oh))
    z = mean[None] + ops.exp(0.5 * log_var)[None] * eps[:, None, :]
    return _latent_nll(model, images, oh, z), mean, log_var


class _Compiled:
    """A model's two scoring steps, compiled for its backend: ``elbo(images, oh, eps)`` and
    ``latent(images, oh, z)`` (see :func:`_elbo_block`, :func:`_latent_nll`). They read the
    model's variables at each call, so training after scoring is seen."""

    def __init__(self, model: keras.Model) -> None:
        ref = weakref.ref(model)  # the cache must not keep the model alive
        self.elbo = _FirstCallLock(self._compile(model, lambda images, oh, eps: _elbo_block(ref(), images, oh, eps)))
        self.latent = _FirstCallLock(self._compile(model, lambda images, oh, z: _latent_nll(ref(), images, oh, z)))

    @staticmethod
    def _compile(model: keras.Model, fn: Callable) -> Callable:
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            return tf.function(fn, jit_compile=True)
        import jax

        variables = list(model.encoder.variables) + list(model.decoder.variables)

        def pure(values, *args):
            with keras.StatelessScope(state_mapping=list(zip(variables, values, strict=True))):
                return fn(*args)

        jitted = jax.jit(pure)
        return lambda *args: jitted([v.value for v in variables], *args)


class _FirstCallLock:
    """A compiled step whose first call per argument shape runs alone: two scoring threads (the
    DirectRunner's, Dask's) must not trace and compile the same step at once. Later calls with a
    shape already compiled run concurrently, unlocked."""

    def __init__(self, step: Callable) -> None:
        self._step = step
        self._lock = threading.Lock()
        self._compiled: set[tuple] = set()

    def __call__(self, *args: Any) -> Any:
        shape = tuple(None if a is None else np.shape(a) for a in args)
        if shape in self._compiled:
            return self._step(*args)
        with self._lock:
            out = self._step(*args)
            self._compiled.add(shape)
            return out


_COMPILED_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_COMPILE_LOCK = threading.Lock()


def _compiled(model: ScorableModel) -> _Compiled | None:
    """The model's compiled steps (built once per model), or None where scoring stays eager: not a
    Keras VAE, a backend other than TensorFlow or JAX, or :data:`COMPILED` off."""
    if not (COMPILED and isinstance(model, keras.Model) and keras.backend.backend() in ("tensorflow", "jax")):
        return None
    with _COMPILE_LOCK:
        steps = _COMPILED_STEPS.get(model)
        if steps is None:
            steps = _COMPILED_STEPS[model] = _Compiled(model)
        return steps


def _block_shape(num_samples: int) -> tuple[int, int]:
    """(posterior samples, rows) per compiled call: at most :data:`MAX_DECODE` latents."""
    k = max(1, min(num_samples, MAX_DECODE))
    return k, max(1, MAX_DECODE // k)


def _bucket(rows: int, block: int) -> int:
    """Rows a call of ``rows`` real rows is padded to: a quarter, a half or all of ``block``, so
    that the compiled steps see at most three shapes, each compiled once (about 0.5 s each)."""
    return next(size for size in (max(1, block // 4), max(1, block // 2), block) if rows <= size)


def _pad(a: np.ndarray | None, rows: int) -> np.ndarray | None:
    """``a`` with zero rows appended up to ``rows`` (itself, not a copy, when it has them)."""
    if a is None or len(a) == rows:
        return a
    out = np.zeros((rows, *a.shape[1:]), a.dtype)
    out[: len(a)] = a
    return out


def _compiled_terms(
    steps: _Compiled, images: np.ndarray, oh: np.ndarray | None, eps: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(nll (S, N) float32, mean, log_var) of ``images`` with the common noise ``eps`` (S, D)."""
    n, s = len(images), len(eps)
    k, r = _block_shape(s)
    nll = np.empty((s, n), np.float32)
    mean = np.empty((n, eps.shape[1]), np.float32)
    log_var = np.empty_like(mean)
    for start in range(0, n, r):
        stop = min(start + r, n)
        rows = _bucket(stop - start, r)
        x, o = _pad(images[start:stop], rows), _pad(None if oh is None else oh[start:stop], rows)
        for first in range(0, s, k):
            last = min(first + k, s)
            block, m, lv = steps.elbo(x, o, _pad(eps[first:last], k))
            nll[first:last, start:stop] = np.asarray(block)[: last - first, : stop - start]
        mean[start:stop], log_var[start:stop] = np.asarray(m)[: stop - start], np.asarray(lv)[: stop - start]
    return nll, mean, log_var


def _compiled_latent_nll(steps: _Compiled, images: np.ndarray, z: np.ndarray, oh: np.ndarray | None) -> np.ndarray:
    """-log p(x|z) for latents ``z`` (S, N, D), (S, N), with the compiled step."""
    s, n, _ = z.shape
    k, r = _block_shape(s)
    out = np.empty((s, n), np.float32)
    for start in range(0, n, r):
        stop = min(start + r, n)
        rows = _bucket(stop - start, r)
        x, o = _pad(images[start:stop], rows), _pad(None if oh is None else oh[start:stop], rows)
        for first in range(0, s, k):
            last = min(first + k, s)
            block = np.zeros((k, rows, z.shape[2]), np.float32)
            block[: last - first, : stop - start] = z[first:last, start:stop]
            out[first:last, start:stop] = np.asarray(steps.latent(x, o, block))[: last - first, : stop - start]
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
    eps = posterior_noise(seed, num_samples, model.latent_dim)
    steps = _compiled(model)
    if steps is not None:
        nll, mean, log_var = _compiled_terms(steps, images, oh, eps)
    else:
        mean, log_var = (_np(t) for t in model.encode(images, oh))
    out: dict[str, np.ndarray] = {}
    if pixel_scores or steps is None:
        z = mean[None] + np.exp(0.5 * log_var)[None] * eps[:, None, :]
    if pixel_scores:  # eager; the scores stay those of the compiled step where there is one
        eager_nll = np.empty(z.shape[:2], dtype=np.float32)
        pixel_sum = np.zeros(images.shape, dtype=np.float64)
        for start, chunk_nll, pixels in _decode_chunks(model, images, z, oh, per_pixel=True):
            eager_nll[start : start + len(chunk_nll)] = chunk_nll
            pixel_sum += pixels.astype(np.float64).sum(axis=0)
        out["pixel_nll"] = pixel_sum / num_samples
        nll = eager_nll if steps is None else nll
    elif steps is None:
        nll = _decode_nll(model, images, z, oh)
    reconstruction = nll.astype(np.float64).mean(axis=0)
    kl = prior_kl(model, mean.astype(np.float64), log_var.astype(np.float64), labels)
    terms = {"neg_elbo": reconstruction + kl, "reconstruction_nll": reconstruction, "kl": kl, "posterior_mean": mean}
    return terms | out


_PRIOR_FACTORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def scoring_prior(model: ScorableModel) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(means (G, D), inverse Cholesky factors L^-1 (G, D, D), log-determinants of the covariances
    (G,)) of the prior p(z|y) that the KL term of a model's scores is taken against, or None for N(0, I).

    A conditional model trained since its per-label fitted prior (:mod:`scoring.latent_prior`, the
    aggregate posterior of each label) joined the score (``score_prior == "fitted"``) is scored
    against it: a learnt prior p(z|y), so an image whose latent is typical of another label costs
    KL even when the decoder reconstructs it well. Everything else, plain models included, keeps N(0, I).
    Computed once per model and stored prior (not per batch)."""
    config = getattr(model, "latent_prior", None)
    if getattr(model, "score_prior", "standard") != "fitted" or not config:
        return None
    cached = _PRIOR_FACTORS.get(model) if _weakly_referable(model) else None
    if cached is not None and cached[0] is config:
        return cached[1]
    means = np.asarray(config["means"], np.float64)
    cholesky = np.asarray(config["cholesky"], np.float64)
    factors = (means, np.linalg.inv(cholesky), 2.0 * np.log(np.diagonal(cholesky, axis1=1, axis2=2)).sum(axis=1))
    if _weakly_referable(model):
        _PRIOR_FACTORS[model] = (config, factors)
    return factors


def _weakly_referable(obj: object) -> bool:
    try:
        weakref.ref(obj)
    except TypeError:
        return False
    return True


def prior_kl(model: ScorableModel, mean: np.ndarray, log_var: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """KL(q(z|x) || p(z|y)) per row, float64, analytic: against N(0, I) or :func:`scoring_prior`'s Gaussians."""
    prior = scoring_prior(model)
    if prior is None or labels is None:
        return 0.5 * np.sum(np.exp(log_var) + mean**2 - 1.0 - log_var, axis=-1)
    means, inverses, log_dets = prior
    groups = np.asarray(labels, np.int64)
    out = np.empty(len(mean))
    for g in np.unique(groups):
        rows = groups == g
        trace = np.exp(log_var[rows]) @ np.sum(inverses[g] ** 2, axis=0)  # sum_j s_j^2 (Sigma^-1)_jj
        whitened = (mean[rows] - means[g]) @ inverses[g].T
        out[rows] = 0.5 * (
            trace + np.sum(whitened**2, axis=-1) - mean.shape[1] + log_dets[g] - np.sum(log_var[rows], axis=-1)
        )
    return out


def prior_log_density(model: ScorableModel, z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """log p(z|y) of latents ``z`` (..., N, D), float64: N(0, I) or :func:`scoring_prior`'s Gaussians."""
    prior = scoring_prior(model)
    log_2pi = math.log(2.0 * math.pi)
    if prior is None or labels is None:
        return -0.5 * np.sum(z**2 + log_2pi, axis=-1)
    means, inverses, log_dets = prior
    groups = np.asarray(labels, np.int64)
    out = np.empty(z.shape[:-1])
    for g in np.unique(groups):
        rows = groups == g
        whitened = (z[..., rows, :] - means[g]) @ inverses[g].T
        out[..., rows] = -0.5 * (np.sum(whitened**2, axis=-1) + z.shape[-1] * log_2pi + log_dets[g])
    return out


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
        log_pz = prior_log_density(model, z, labels)
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
