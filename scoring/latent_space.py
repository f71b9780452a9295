"""Pictures of the latent space: decoder outputs on a grid over the latent's two leading directions,
and the decoded path between two images' posterior means."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scoring.elbo import ScorableModel
from scoring.sampling import decode_images, posterior_means


@dataclass(frozen=True)
class LatentGrid:
    """Decoder outputs on an ``rows x n`` grid of latents ``centre + x[j] * directions[0] + y[i] * directions[1]``.

    ``images`` (rows, n, H, W, C) and ``latents`` (rows, n, D) are laid out like a scatter plot:
    ``x`` grows left to right, ``y`` grows bottom to top (row 0 is the highest ``y``). ``principal``:
    whether the directions are principal directions of the posterior means (latent wider than 2) or
    the latent's own axes (``centre`` zero). A 1-D latent gives one row and no ``y``."""

    images: np.ndarray
    latents: np.ndarray
    x: np.ndarray
    y: np.ndarray
    centre: np.ndarray
    directions: np.ndarray
    principal: bool
    label: int | None


def leading_directions(means: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(centre, directions, principal)`` for posterior means (N, D): the latent's own axes around
    zero when D <= 2, else the two leading principal directions around the means' mean. A principal
    direction's sign is fixed so its largest component is positive (reproducible pictures)."""
    means = np.asarray(means, dtype=np.float64)
    dim = means.shape[1]
    if dim <= 2:
        return np.zeros(dim), np.eye(dim), False
    centre = means.mean(axis=0)
    _, _, vt = np.linalg.svd(means - centre, full_matrices=False)
    directions = vt[:2].copy()
    for d in directions:
        if d[np.argmax(np.abs(d))] < 0:
            d *= -1
    return centre, directions, True


def latent_grid(
    model: ScorableModel,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    n: int = 15,
    span: tuple[float, float] = (5.0, 95.0),
    *,
    label: int | None = None,
) -> LatentGrid:
    """Decoder outputs on an ``n x n`` grid over the two leading directions of the posterior means of
    ``images`` (exactly the 2-D latent when ``latent_dim`` is 2), from the ``span`` percentiles of the
    means' projections on each direction to the other; the remaining directions stay at the means'
    mean. A conditional model encodes each image with its ``labels`` and decodes the whole grid with
    one ``label`` (default: the most common of ``labels``)."""
    if n < 2:
        raise ValueError(f"a latent grid needs n >= 2, got {n}")
    low, high = span
    if not 0 <= low < high <= 100:
        raise ValueError(f"span must be two increasing percentiles in [0, 100], got {span}")
    if model.num_classes:
        if labels is None:
            raise ValueError("this is a conditional VAE: the latent grid needs the images' labels")
        labels = np.asarray(labels, dtype=np.int64)
        if label is None:
            label = int(np.bincount(labels).argmax())
    else:
        labels, label = None, None
    means = posterior_means(model, images, labels)
    centre, directions, principal = leading_directions(means)
    projections = (means - centre) @ directions.T
    ranges = [np.linspace(*np.percentile(projections[:, k], [low, high]), n) for k in range(len(directions))]
    x = ranges[0]
    y = ranges[1][::-1] if len(ranges) > 1 else np.zeros(0)
    ys = y if len(y) else np.zeros(1)
    coords = np.zeros((len(ys), n, len(directions)))
    coords[..., 0] = x[None, :]
    if len(y):
        coords[..., 1] = y[:, None]
    latents = (centre + coords @ directions).astype(np.float32)
    flat = latents.reshape(-1, latents.shape[-1])
    decoded = decode_images(model, flat, None if label is None else np.full(len(flat), label))
    return LatentGrid(
        images=decoded.reshape(*latents.shape[:2], *decoded.shape[1:]),
        latents=latents,
        x=x,
        y=y,
        centre=centre,
        directions=directions,
        principal=principal,
        label=label,
    )


def interpolate(
    model: ScorableModel,
    image_a: np.ndarray,
    image_b: np.ndarray,
    steps: int = 10,
    *,
    label_a: int | None = None,
    label_b: int | None = None,
    label: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(images, latents)``: ``steps`` decoded points on the straight line between the posterior means
    of ``image_a`` and ``image_b``, both ends included (the first and last latents are the two means).
    A conditional model encodes each image with its own label and decodes the path with ``label``
    (default ``label_a``)."""
    latents = interpolation_latents(model, image_a, image_b, steps, label_a=label_a, label_b=label_b)
    label = None if not model.num_classes else (label_a if label is None else label)
    decoded = decode_images(model, latents, None if label is None else np.full(steps, label))
    return decoded, latents


def interpolation_latents(
    model: ScorableModel,
    image_a: np.ndarray,
    image_b: np.ndarray,
    steps: int = 10,
    *,
    label_a: int | None = None,
    label_b: int | None = None,
) -> np.ndarray:
    """(steps, D): the straight line from the posterior mean of ``image_a`` to that of ``image_b``, both
    ends exactly; a conditional model encodes each image with its own label."""
    if steps < 2:
        raise ValueError(f"an interpolation needs steps >= 2, got {steps}")
    labels = None
    if model.num_classes:
        if label_a is None or label_b is None:
            raise ValueError("this is a conditional VAE: interpolation needs both images' labels")
        labels = np.array([label_a, label_b], dtype=np.int64)
    ends = posterior_means(model, np.stack([image_a, image_b]), labels).astype(np.float32)
    t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
    latents = (1 - t) * ends[0] + t * ends[1]
    latents[0], latents[-1] = ends[0], ends[1]
    return latents
