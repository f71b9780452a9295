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


def check_likelihood(name: str) -> str:
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {', '.join(LIKELIHOODS)}")
    return name


def parameter_channels(name: str, channels: int) -> int:
    """Number of decoder output channels the likelihood needs per image channel."""
    return 2 * channels if check_likelihood(name) == "gaussian" else channels


def sum_pixels(t):
    return ops.sum(ops.reshape(t, (ops.shape(t)[0], -1)), axis=-1)


def _split_gaussian(params):
    loc_logits, raw_scale = ops.split(params, 2, axis=-1)
    log_scale = ops.clip(raw_scale, _MIN_LOG_SCALE, _MAX_LOG_SCALE)
    return ops.sigmoid(loc_logits), log_scale


_TINY_LOGIT = 1e-30  # a normal float32 whose expm1 is exact: the binned mass's limit at logit 0
_CB_SERIES = 0.1  # |logit| below this uses the Taylor series (error below 1e-9)


def _cb_log_norm(logits):
    """log C of the continuous Bernoulli at logit l: C = l / tanh(l / 2), exact for every l.

    (Loaiza-Ganem & Cunningham, 2019 write C = 2 atanh(1 - 2 lambda) / (1 - 2 lambda); with
    lambda = sigmoid(l) that is l / tanh(l / 2).) Near 0 the series log 2 + l^2/12 - 7 l^4/1440.
    No clipping: the density integrates to one at any logit.
    """
    a = ops.abs(logits)
    small = a < _CB_SERIES
    safe = ops.where(small, ops.ones_like(a), a)
    exact = ops.log(safe) - ops.log(ops.tanh(0.5 * safe))
    series = float(np.log(2.0)) + a**2 / 12.0 - 7.0 * a**4 / 1440.0
    return ops.where(small, series, exact)


def _binned_cb_log_mass(x, logits, levels: int):
    """log P(bin of x) under the continuous Bernoulli, for pixels quantised to ``levels`` grey levels.

    The continuous Bernoulli at logit l is the exponential density l e^(l x) / (e^l - 1) on
    [0, 1], so a bin [a, b] has mass (e^(l b) - e^(l a)) / (e^l - 1). The bins are centred on
    the levels k / (levels - 1) (half-width at 0 and 1), so their masses sum to one: a proper
    probability for quantised pixels, bounded above by zero nats, where a density on quantised
    data is unbounded (the fitted density can pile onto the blank background).

    Measured from the heavy end (the mass of [a, b] at l equals that of [1 - b, 1 - a] at -l), with
    t = |l| the log mass is -t gap + log(expm1(-t (b - a)) / expm1(-t)): two expm1 and one log per
    pixel, each term accurate to float precision (both expm1 are in [-1, 0), their ratio in (0, 1]),
    down to t = 0, where it tends to log(b - a); no branch, so that it compiles to one tight loop.
    """
    half = 0.5 / (levels - 1)
    a = ops.maximum(x - half, 0.0)
    b = ops.minimum(x + half, 1.0)
    t = ops.maximum(ops.abs(logits), _TINY_LOGIT)  # at 0 the ratio is 0 / 0; at _TINY_LOGIT it is b - a
    gap = ops.where(logits > 0, 1.0 - b, a)
    return ops.log(ops.expm1(-t * (b - a)) / ops.expm1(-t)) - t * gap


def pixel_negative_log_likelihood(x, params, name: str, levels: int = 0):
    """Per-pixel -log p(x|z) in nats, shaped like ``x`` (N, H, W, C); ``params`` the decoder output.

    Pixels are independent given z, so these sum to :func:`negative_log_likelihood`. ``levels``:
    as there."""
    x = ops.cast(x, params.dtype)
    if name == "continuous_bernoulli" and levels >= 2:
        return -_binned_cb_log_mass(x, params, levels)
    if name == "bernoulli":
        # -[x log s(l) + (1 - x) log(1 - s(l))] = softplus(l) - x l
        return ops.softplus(params) - x * params
    if name == "continuous_bernoulli":
        return ops.softplus(params) - x * params - _cb_log_norm(params)
    if name == "gaussian":
        loc, log_scale = _split_gaussian(params)
        z = (x - loc) * ops.exp(-log_scale)
        return 0.5 * z**2 + log_scale + 0.5 * np.log(2.0 * np.pi)
    raise ValueError(f"unknown likelihood {name!r}")


def negative_log_likelihood(x, params, name: str, levels: int = 0):
    """Per-example -log p(x|z) in nats; ``x`` is (N, H, W, C), ``params`` the decoder output.

    ``levels`` >= 2 (continuous Bernoulli only): the pixels are quantised to that many grey
    levels and the result is the negative log *probability* of their bins (see
    :func:`_binned_cb_log_mass`); 0 means a density on [0, 1].
    """
    return sum_pixels(pixel_negative_log_likelihood(x, params, name, levels))


def mean_image(params, name: str):
    """The likelihood's mean, an image in [0, 1]."""
    if name == "bernoulli":
        return ops.sigmoid(params)
    if name == "continuous_bernoulli":
        # sigmoid(l) / tanh(l / 2) - 1 / l, and its series 1/2 + l/12 - l^3/720 near 0
        small = ops.abs(params) < _CB_SERIES
        safe = ops.where(small, ops.ones_like(params), params)
        exact = ops.sigmoid(safe) / ops.tanh(0.5 * safe) - 1.0 / safe
        return ops.where(small, 0.5 + params / 12.0 - params**3 / 720.0, exact)
    if name == "gaussian":
        return _split_gaussian(params)[0]
    raise ValueError(f"unknown likelihood {name!r}")


def temper(params, name: str, temperature: float):
    """Parameters of p(x|z)^(1/T), normalised: the same family for every likelihood here. Bernoulli and
    continuous Bernoulli: logits / T; Gaussian: the variance times T."""
    if temperature <= 0.0:
        raise ValueError(f"the temperature must be positive, got {temperature}")
    if temperature == 1.0:
        return params
    if name in ("bernoulli", "continuous_bernoulli"):
        return params / temperature
    if name == "gaussian":
        loc_logits, raw_scale = ops.split(params, 2, axis=-1)
        return ops.concatenate([loc_logits, raw_scale + 0.5 * float(np.log(temperature))], axis=-1)
    raise ValueError(f"unknown likelihood {name!r}")


def sample_image(params, name: str, rng: np.random.Generator, levels: int = 0) -> np.ndarray:
    """Draws pixels from p(x|z) with a numpy generator (deterministic for a seed), clipped to [0, 1].

    ``levels`` >= 2 (continuous Bernoulli): a draw from the binned likelihood, whose bins are
    centred on the grey levels, i.e. the continuous draw rounded to the nearest level."""
    if name == "bernoulli":
        p = np.asarray(ops.convert_to_numpy(ops.sigmoid(params)))
        return (rng.random(p.shape) < p).astype(np.float32)
    if name == "continuous_bernoulli":
        logits = np.asarray(ops.convert_to_numpy(params), dtype=np.float64)
        u = rng.random(logits.shape)
        # inverse CDF x = log(1 + u (e^l - 1)) / l, as a log-sum-exp so that no e^l overflows
        with np.errstate(divide="ignore", invalid="ignore"):
            x = np.logaddexp(np.log(u) + logits, np.log1p(-u)) / logits
        x = np.clip(np.where(np.abs(logits) < 1e-6, u, x), 0.0, 1.0)
        if levels >= 2:
            x = np.round(x * (levels - 1)) / (levels - 1)
        return x.astype(np.float32)
    if name == "gaussian":
        loc, log_scale = (np.asarray(ops.convert_to_numpy(t)) for t in _split_gaussian(params))
        return np.clip(loc + np.exp(log_scale) * rng.standard_normal(loc.shape), 0.0, 1.0).astype(np.float32)
    raise ValueError(f"unknown likelihood {name!r}")
