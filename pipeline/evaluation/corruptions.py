"""Broken versions of images: what a pipeline upstream of the detector gets wrong.

Every function takes a batch ``(N, H, W, C)`` of pixels in [0, 1] and returns a new batch of the
same shape and dtype, pixels still in [0, 1]. Random choices (noise, the direction of a shift,
which half is occluded) come from ``rng``, so :func:`corrupt` with the same seed gives the same
images. Images on a grid of grey levels (``levels``: 2 for binary, 17 for the digits, 256 for
8-bit images) stay on it, as a broken image decoded from a PNG would: blurred, rotated and noisy
pixels are rounded to the nearest level (binary ones thresholded at 0.5), so a corruption does not
change the likelihood the VAE's ``auto`` setting picks from the grid. ``wrong-scale`` stays
``x / 255``, off the grid, as the bug it mimics would.

Sizes scale with the width W: a shift of round(W / 4) pixels (2 on 8x8, 7 on 28x28), a stripe
round(3 W / 28) pixels wide (1 on 8x8, 3 on 28x28), a blur of sigma W / 8 (1 on 8x8, 3.5 on 28x28).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from scipy import ndimage

IMPULSE_SHARE = 0.2
NOISE_SIGMA = 0.3
ROTATION_DEGREES = 60.0

Corruption = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def is_binary(images: np.ndarray) -> bool:
    """True when every pixel is exactly 0 or 1."""
    return bool(np.isin(images, (0.0, 1.0)).all())


def _width(images: np.ndarray) -> int:
    return int(images.shape[2])


def blank(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.zeros_like(images)


def saturated(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.ones_like(images)


def inverted(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return 1.0 - images


def wrong_scale(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``x / 255``: pixels already in [0, 1] divided by 255 again (almost black)."""
    return images / 255.0


def impulse_noise(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Salt and pepper: ``IMPULSE_SHARE`` of the pixels set to 0 or 1, half each."""
    out = images.copy()
    hit = rng.random(images.shape) < IMPULSE_SHARE
    out[hit] = (rng.random(int(hit.sum())) < 0.5).astype(images.dtype)
    return out


def gaussian_noise(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise of standard deviation ``NOISE_SIGMA``, clipped to [0, 1]."""
    return images + rng.normal(0.0, NOISE_SIGMA, images.shape).astype(images.dtype)


def shifted(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Moved round(W / 4) pixels left, right, up or down (one direction per image, seeded), zero fill."""
    step = max(1, round(_width(images) / 4))
    out = np.zeros_like(images)
    for i, direction in enumerate(rng.integers(0, 4, len(images))):
        offset = [0, 0, 0]  # rows, columns, channels
        offset[direction // 2] = step if direction % 2 == 0 else -step
        out[i] = ndimage.shift(images[i], offset, order=0, cval=0.0)
    return out


def rotated(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotated ``ROTATION_DEGREES`` counter-clockwise about the centre (bilinear, zero fill)."""
    return ndimage.rotate(images, ROTATION_DEGREES, axes=(1, 2), reshape=False, order=1, cval=0.0)


def stripe(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A bright bar (value 1) through the middle, vertical or horizontal (seeded per image)."""
    height, width = images.shape[1:3]
    out = images.copy()
    for i, vertical in enumerate(rng.random(len(images)) < 0.5):
        size = width if vertical else height
        thick = max(1, round(3 * size / 28))
        start = (size - thick) // 2
        if vertical:
            out[i, :, start : start + thick] = 1.0
        else:
            out[i, start : start + thick, :] = 1.0
    return out


def half_occluded(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The left, right, top or bottom half set to 0 (seeded per image)."""
    height, width = images.shape[1:3]
    out = images.copy()
    for i, side in enumerate(rng.integers(0, 4, len(images))):
        if side == 0:
            out[i, :, : width // 2] = 0.0
        elif side == 1:
            out[i, :, width // 2 :] = 0.0
        elif side == 2:
            out[i, : height // 2] = 0.0
        else:
            out[i, height // 2 :] = 0.0
    return out


def blurred(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur of sigma W / 8 pixels in the image plane."""
    sigma = _width(images) / 8.0
    return ndimage.gaussian_filter(images, sigma=(0, sigma, sigma, 0), mode="constant", cval=0.0)


#: name -> function, in table order
CORRUPTIONS: dict[str, Corruption] = {
    "blank": blank,
    "saturated": saturated,
    "inverted": inverted,
    "wrong-scale": wrong_scale,
    "impulse-noise": impulse_noise,
    "gaussian-noise": gaussian_noise,
    "shifted": shifted,
    "rotated": rotated,
    "stripe": stripe,
    "half-occluded": half_occluded,
    "blurred": blurred,
}
KINDS = tuple(CORRUPTIONS)
KEPT_GREY = ("wrong-scale",)  # not thresholded back to binary: the grey is the point


def check_kinds(kinds: Iterable[str]) -> list[str]:
    """The kinds in :data:`KINDS` order; raises ``ValueError`` on an unknown one."""
    wanted = list(kinds)
    unknown = [k for k in wanted if k not in CORRUPTIONS]
    if unknown:
        raise ValueError(f"unknown corruption(s) {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    return [k for k in KINDS if k in wanted]


def on_grid(images: np.ndarray, levels: int) -> np.ndarray:
    """Pixels rounded to the nearest of ``levels`` evenly spaced grey levels (half up: binary
    images are thresholded at 0.5); unchanged for ``levels`` < 2 (continuous pixels)."""
    if levels < 2:
        return images
    steps = levels - 1
    return (np.floor(images * steps + 0.5) / steps).astype(images.dtype)


def corrupt(images: np.ndarray, kind: str, seed: int = 0, levels: int | None = None) -> np.ndarray:
    """``images`` broken by ``kind`` (one of :data:`KINDS`), seeded by ``seed``; clipped to [0, 1].

    ``levels``: the data set's grey levels (:func:`training.data.grey_levels`; 0: continuous;
    default: 2 if ``images`` are binary, else 0); the broken images are put back on that grid,
    except for ``wrong-scale``."""
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}; choose from {', '.join(KINDS)}")
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected a batch (N, H, W, C), got shape {images.shape}")
    levels = (2 if is_binary(images) else 0) if levels is None else levels
    out = np.clip(CORRUPTIONS[kind](images, np.random.default_rng(seed)), 0.0, 1.0).astype(images.dtype)
    return out if kind in KEPT_GREY else on_grid(out, levels)


def corrupt_mixed(
    images: np.ndarray, kinds: list[str], seed: int = 0, levels: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Each image broken by one of ``kinds``, assigned in turn after a seeded shuffle (so every
    kind gets ``len(images) / len(kinds)`` images, give or take one); returns the images and
    the kind of each."""
    images = np.asarray(images)
    levels = (2 if is_binary(images) else 0) if levels is None else levels
    rng = np.random.default_rng(seed)
    assigned = np.array(kinds)[rng.permutation(len(images)) % len(kinds)] if len(images) else np.array([], str)
    out = images.copy()
    for j, kind in enumerate(kinds):
        rows = np.flatnonzero(assigned == kind)
        if rows.size:
            out[rows] = corrupt(images[rows], kind, seed=seed * 1000 + j, levels=levels)
    return out, assigned
