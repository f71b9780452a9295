"""Decoder likelihoods p(x|z) for images in [0, 1], written with ``keras.ops``.

The decoder emits raw parameters; each likelihood turns them into a per-example
negative log-likelihood in nats, a mean image, and a sample.
"""

from __future__ import annotations

import numpy as np
from keras import ops

LIKELIHOODS = ("bernoulli", "continuous_bernoulli", "gaussian")
_MIN_LOG_SCALE = float(np.log(1e-2))  # the Gaussian's scale never drops below 0.01
_MAX_LOG_SCALE = float(np.log(1.0))
_CB_EPS = 1e-4


def check_likelihood(name: str) -> str:
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {', '.join(LIKELIHOODS)}")
    return name


def parameter_channels(name: str, channels: int) -> int:
    """Number of decoder output channels the likelihood needs per image channel."""
    return 2 * channels if check_likelihood(name) == "gaussian" else channels


def _sum_pixels(t):
    return ops.sum(ops.reshape(t, (ops.shape(t)[0], -1)), axis=-1)


def _split_gaussian(params):
    loc_logits, raw_scale = ops.split(params, 2, axis=-1)
    log_scale = ops.clip(raw_scale, _MIN_LOG_SCALE, _MAX_LOG_SCALE)
    return ops.sigmoid(loc_logits), log_scale


def _cb_log_norm(logits):
    """log C(lambda) of the continuous Bernoulli, with lambda = sigmoid(logits).

    C(l) = 2 atanh(1 - 2l) / (1 - 2l), and 2 near l = 1/2 (Loaiza-Ganem & Cunningham, 2019).
    """
    lam = ops.clip(ops.sigmoid(logits), _CB_EPS, 1.0 - _CB_EPS)
    near_half = ops.abs(lam - 0.5) < 1e-2
    safe = ops.where(near_half, ops.ones_like(lam) * 0.4, lam)
    exact = ops.log(ops.abs(2.0 * _atanh(1.0 - 2.0 * safe))) - ops.log(ops.abs(1.0 - 2.0 * safe))
    u = lam - 0.5
    taylor = ops.log(2.0) + (4.0 / 3.0) * u**2 + (104.0 / 45.0) * u**4
    return ops.where(near_half, taylor, exact)


def _atanh(t):
    return 0.5 * (ops.log1p(t) - ops.log1p(-t))


def negative_log_likelihood(x, params, name: str):
    """Per-example -log p(x|z) in nats; ``x`` is (N, H, W, C), ``params`` the decoder output."""
    x = ops.cast(x, params.dtype)
    if name == "bernoulli":
        # -[x log s(l) + (1 - x) log(1 - s(l))] = softplus(l) - x l
        return _sum_pixels(ops.softplus(params) - x * params)
    if name == "continuous_bernoulli":
        return _sum_pixels(ops.softplus(params) - x * params - _cb_log_norm(params))
    if name == "gaussian":
        loc, log_scale = _split_gaussian(params)
        z = (x - loc) * ops.exp(-log_scale)
        return _sum_pixels(0.5 * z**2 + log_scale + 0.5 * np.log(2.0 * np.pi))
    raise ValueError(f"unknown likelihood {name!r}")


def mean_image(params, name: str):
    """The likelihood's mean, an image in [0, 1]."""
    if name == "bernoulli":
        return ops.sigmoid(params)
    if name == "continuous_bernoulli":
        lam = ops.clip(ops.sigmoid(params), _CB_EPS, 1.0 - _CB_EPS)
        near_half = ops.abs(lam - 0.5) < 1e-2
        safe = ops.where(near_half, ops.ones_like(lam) * 0.4, lam)
        exact = safe / (2.0 * safe - 1.0) + 1.0 / (2.0 * _atanh(1.0 - 2.0 * safe))
        return ops.where(near_half, 0.5 + (lam - 0.5) / 3.0, exact)
    if name == "gaussian":
        return _split_gaussian(params)[0]
    raise ValueError(f"unknown likelihood {name!r}")


def sample_image(params, name: str, rng: np.random.Generator) -> np.ndarray:
    """Draws pixels from p(x|z) with a numpy generator (deterministic for a seed), clipped to [0, 1]."""
    if name == "bernoulli":
        p = np.asarray(ops.convert_to_numpy(ops.sigmoid(params)))
        return (rng.random(p.shape) < p).astype(np.float32)
    if name == "continuous_bernoulli":
        lam = np.clip(np.asarray(ops.convert_to_numpy(ops.sigmoid(params)), dtype=np.float64), _CB_EPS, 1 - _CB_EPS)
        u = rng.random(lam.shape)
        # inverse CDF: x = log(1 + u (2l - 1) / (1 - l)) / log(l / (1 - l))
        x = np.log1p(u * (2 * lam - 1) / (1 - lam)) / np.log(lam / (1 - lam))
        return np.clip(x, 0.0, 1.0).astype(np.float32)
    if name == "gaussian":
        loc, log_scale = (np.asarray(ops.convert_to_numpy(t)) for t in _split_gaussian(params))
        return np.clip(loc + np.exp(log_scale) * rng.standard_normal(loc.shape), 0.0, 1.0).astype(np.float32)
    raise ValueError(f"unknown likelihood {name!r}")
