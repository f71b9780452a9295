"""How faithful and how varied synthetic images are: precision, recall, density, coverage, diversity.

Plain numpy, with Euclidean distances between the rows given (pixels, or an independent
classifier's features: :mod:`scoring.judge`), computed in blocks of rows so that memory stays
bounded (a block of ``BLOCK_ROWS`` rows against the other set at a time) whatever the set sizes.

- **Precision and recall** are the "improved" ones of Kynkäänniemi, Karras, Laine, Lehtinen and Aila,
  *Improved Precision and Recall Metric for Assessing Generative Models*, NeurIPS 2019
  (arXiv:1904.06991). Each set of images stands for a manifold: the union of balls, one around each of
  its images, whose radius is the distance from that image to its ``k``-th nearest neighbour in the
  same set (itself not counted). **Precision** is the share of synthetic images that fall inside the
  real manifold (are the samples realistic?); **recall** is the share of real images that fall inside
  the synthetic manifold (do the samples cover what the real images do?). Both lie in [0, 1]. A
  generator that collapses onto a few good images keeps a high precision but loses its recall.
- **Density and coverage** (Naeem et al., 2020; :func:`prdc`) count only the real balls, so
  outlying samples cannot inflate them: coverage is the share of real images with a sample nearby.
- **Diversity** is the mean pairwise distance between synthetic images over the mean pairwise
  distance between real ones: 1 when the samples vary as much as the real images, 0 when they are all
  the same image, above 1 when they vary more (e.g. noise).

:func:`per_label_fidelity` measures each label's samples against the real images of that label and
averages over the labels (the headline figures). The sets should be of comparable size: a smaller
set has larger k-NN radii, which inflates the share of the other set's points that fall inside it.
The real set should also be *dense* (hundreds of images per label): with a few dozen, the balls are
so wide that speckled noise around a digit counts as realistic. Read every figure beside the same
figure for real images against the same reference (``benchmarks/synthetic_quality.py``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

DEFAULT_K = 3
BLOCK_ROWS = 1024  # rows per block: a block's distance matrix is BLOCK_ROWS x (the other set's rows)


def _flat(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images, dtype=np.float64)
    return x.reshape(len(x), -1)


def _squared_distances(
    a: np.ndarray, b: np.ndarray, b_norms: np.ndarray, block: int = BLOCK_ROWS
) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, squared Euclidean distances from ``a[first:first+block]`` to every row of ``b``),
    block by block; float64, clipped at 0 (exact for small whole numbers)."""
    for start in range(0, len(a), block):
        rows = a[start : start + block]
        d2 = (rows * rows).sum(axis=1)[:, None] + b_norms[None, :] - 2.0 * rows @ b.T
        yield start, np.maximum(d2, 0.0)


def knn_radii(points: np.ndarray, k: int = DEFAULT_K, block: int = BLOCK_ROWS) -> np.ndarray:
    """Squared distance from each point to its ``k``-th nearest neighbour among the *other* points of
    the set (a duplicate of a point counts as a neighbour at distance 0)."""
    x = _flat(points)
    n = len(x)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if n <= k:
        raise ValueError(f"a set of {n} images has no {k}-th nearest neighbour: give at least {k + 1}")
    norms = (x * x).sum(axis=1)
    radii = np.empty(n)
    for start, d2 in _squared_distances(x, x, norms, block):
        rows = np.arange(len(d2))
        d2[rows, start + rows] = np.inf  # not its own neighbour
        radii[start : start + len(d2)] = np.partition(d2, k - 1, axis=1)[:, k - 1]
    return radii


def inside_manifold(points: np.ndarray, manifold: np.ndarray, radii: np.ndarray, block: int = BLOCK_ROWS) -> np.ndarray:
    """True for each of ``points`` within the ball of some point of ``manifold``: distance <= that
    point's radius (``radii``: squared, from :func:`knn_radii`)."""
    p, m = _flat(points), _flat(manifold)
    norms = (m * m).sum(axis=1)
    inside = np.empty(len(p), dtype=bool)
    for start, d2 in _squared_distances(p, m, norms, block):
        inside[start : start + len(d2)] = (d2 <= radii[None, :]).any(axis=1)
    return inside


def improved_precision_recall(
    real: np.ndarray, fake: np.ndarray, k: int = DEFAULT_K, block: int = BLOCK_ROWS
) -> tuple[float, float]:
    """(precision, recall) of Kynkäänniemi et al. (2019) in pixel space.

    precision: the share of ``fake`` images inside the real manifold (the union of balls around each
    real image reaching its ``k``-th nearest real neighbour); recall: the share of ``real`` images
    inside the fake manifold, built the same way from the fake images. Each set needs more than ``k``
    images."""
    figures = prdc(real, fake, k, block)
    return figures["precision"], figures["recall"]


def prdc(real: np.ndarray, fake: np.ndarray, k: int = DEFAULT_K, block: int = BLOCK_ROWS) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake`` against ``real``.

    Precision and recall as in :func:`improved_precision_recall`. **Density** and **coverage** are
    those of Naeem, Oh, Uh, Choi and Yoo, *Reliable Fidelity and Diversity Metrics for Generative
    Models*, ICML 2020 (arXiv:2002.09797), built on the real balls only, so a few outlying samples
    cannot inflate them the way they inflate the fake manifold of recall: density is the mean number
    of real balls a sample falls in, over ``k`` (about 1 for samples spread like the real images,
    above 1 where they crowd into dense real regions, 0 for samples outside every ball); coverage is
    the share of real images whose ball holds at least one sample."""
    real_radii = knn_radii(real, k, block)
    fake_radii = knn_radii(fake, k, block)
    r, f = _flat(real), _flat(fake)
    norms = (r * r).sum(axis=1)
    in_some_ball, memberships, covered = 0, 0, np.zeros(len(r), dtype=bool)
    for _, d2 in _squared_distances(f, r, norms, block):  # a block of samples against every real ball
        inside = d2 <= real_radii[None, :]
        in_some_ball += int(inside.any(axis=1).sum())
        memberships += int(inside.sum())
        covered |= inside.any(axis=0)
    return {
        "precision": in_some_ball / len(f),
        "recall": float(inside_manifold(real, fake, fake_radii, block).mean()),
        "density": memberships / (k * len(f)),
        "coverage": float(covered.mean()),
    }


def mean_pairwise_distance(images: np.ndarray, block: int = BLOCK_ROWS) -> float:
    """The mean Euclidean distance over all pairs of distinct images of a set (at least two)."""
    x = _flat(images)
    n = len(x)
    if n < 2:
        raise ValueError(f"a mean pairwise distance needs at least 2 images, got {n}")
    norms = (x * x).sum(axis=1)
    total = 0.0
    for start, d2 in _squared_distances(x, x, norms, block):
        rows = np.arange(len(d2))
        d2[rows, start + rows] = 0.0  # the diagonal: rounding must not add to the sum
        total += float(np.sqrt(d2).sum())
    return total / (n * (n - 1))


def diversity(real: np.ndarray, fake: np.ndarray, block: int = BLOCK_ROWS) -> float:
    """The mean pairwise distance of ``fake`` over that of ``real``: 1 when the samples vary as much as
    the real images, 0 when they are all one image; NaN when the real images are all one image."""
    spread = mean_pairwise_distance(real, block)
    return mean_pairwise_distance(fake, block) / spread if spread > 0 else float("nan")


METRICS = ("precision", "recall", "density", "coverage", "diversity")


def per_label_fidelity(
    real_images: np.ndarray,
    real_labels: np.ndarray | None,
    fake_images: np.ndarray,
    fake_labels: np.ndarray | None,
    k: int = DEFAULT_K,
    block: int = BLOCK_ROWS,
) -> dict:
    """Precision, recall, density, coverage (:func:`prdc`) and :func:`diversity` of each label's
    synthetic images against the real images of the same label, and their means over the labels.

    Without labels on either side (``None``) the sets are compared whole, as one label ``None``. A
    label whose real or synthetic images are too few (``k`` or fewer) is left out and listed in
    ``skipped``. Returns ``{"k", "labels": {label: {metric: value for each of METRICS, "real",
    "fake"}}, metric: the mean over labels for each of METRICS, "worst": {metric: (label, value)} (the
    lowest), "skipped": [labels]}``; the means are NaN when no label could be measured."""
    real_images, fake_images = np.asarray(real_images), np.asarray(fake_images)
    if real_labels is None or fake_labels is None:
        real_labels = np.zeros(len(real_images), dtype=np.int64)
        fake_labels = np.zeros(len(fake_images), dtype=np.int64)
        groups: list = [None]
        keys = {None: 0}
    else:
        real_labels, fake_labels = np.asarray(real_labels), np.asarray(fake_labels)
        groups = sorted({int(v) for v in np.unique(fake_labels)})
        keys = {g: g for g in groups}
    per_label: dict = {}
    skipped: list = []
    for label in groups:
        real = real_images[real_labels == keys[label]]
        fake = fake_images[fake_labels == keys[label]]
        if len(real) <= k or len(fake) <= k:
            skipped.append(label)
            continue
        per_label[label] = {
            **prdc(real, fake, k, block),
            "diversity": diversity(real, fake, block),
            "real": len(real),
            "fake": len(fake),
        }
    out: dict = {"k": k, "labels": per_label, "skipped": skipped, "worst": {}}
    for metric in METRICS:
        values = {label: v[metric] for label, v in per_label.items()}
        out[metric] = float(np.mean(list(values.values()))) if values else float("nan")
        if values:
            label = min(values, key=values.get)
            out["worst"][metric] = (label, values[label])
    return out
