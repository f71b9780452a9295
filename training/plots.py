"""Figures logged with every training run (and reused by reports), built without pyplot."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from scoring import latent_space, sampling


def new_figure(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], squeeze: bool = True):
    """(figure, axes) outside pyplot: no backend is chosen and nothing needs closing, so importing
    this module changes nothing for a notebook's own plots."""
    figure = Figure(figsize=figsize)
    return figure, figure.subplots(nrows, ncols, squeeze=squeeze)


def image_grid(
    images: np.ndarray, ncols: int = 10, title: str | None = None, row_labels: list[str] | None = None
) -> Figure:
    """A grid of (N, H, W, C) images in [0, 1]."""
    n = len(images)
    nrows = max(1, int(np.ceil(n / ncols)))
    fig, axes = new_figure(nrows, ncols, figsize=(ncols * 0.8, nrows * 0.8 + (0.4 if title else 0)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():  # a thin frame: an all-white image is still seen against the page
            spine.set_visible(i < n)
            spine.set_color("#bbbbbb")
            spine.set_linewidth(0.6)
        if i < n:
            img = images[i]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        if row_labels and i % ncols == 0 and i // ncols < len(row_labels):
            ax.set_ylabel(row_labels[i // ncols], rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def learning_curves(history: dict[str, list[float]]) -> Figure:
    fig, axes = new_figure(1, 3, figsize=(12, 3.2))
    for ax, key in zip(axes, ("neg_elbo", "reconstruction", "kl"), strict=True):
        for prefix, style in (("", "-"), ("val_", "--")):
            if prefix + key in history:
                ax.plot(
                    np.arange(1, len(history[prefix + key]) + 1),
                    history[prefix + key],
                    style,
                    label=("validation" if prefix else "train"),
                )
        ax.set_title(f"{key} (nats)")
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    return fig


def reconstructions(model, images: np.ndarray, labels: np.ndarray | None, n: int = 10) -> Figure:
    images, labels = images[:n], None if labels is None else labels[:n]
    z = sampling.posterior_means(model, images, labels)
    decoded = sampling.decode_images(model, z, labels)
    return image_grid(
        np.concatenate([images, decoded]),
        ncols=len(images),
        title="inputs (top), reconstructions",
    )


def prior_grid(model, n: int = 100, seed: int = 0) -> Figure:
    """Samples as ``vae generate --method prior`` writes them (its default prior and pixel noise)."""
    labels = np.arange(n) % model.num_classes if model.num_classes else None
    images, _ = sampling.synthesize(model, "prior", n, seed=seed, labels=labels)
    return image_grid(images, title="samples from the prior")


def per_label_grid(model, per_label: int = 10, seed: int = 0) -> Figure:
    labels = np.repeat(np.arange(model.num_classes), per_label)
    images, _ = sampling.synthesize(model, "conditional", len(labels), seed=seed, labels=labels)
    return image_grid(
        images,
        ncols=per_label,
        row_labels=model.class_names,
        title="conditional samples, one row per label",
    )


def latent_map(model, images: np.ndarray, labels: np.ndarray | None) -> Figure:
    """Posterior means in 2-D (the first two principal components when the latent is wider)."""
    means = sampling.posterior_means(model, images, labels if model.num_classes else None)
    if means.shape[1] > 2:
        centred = means - means.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        means = centred @ vt[:2].T
    fig, ax = new_figure(figsize=(5, 4.5))
    points = ax.scatter(means[:, 0], means[:, 1], c=labels if labels is not None else "C0", cmap="tab10", s=6)
    if labels is not None:
        fig.colorbar(points, ax=ax, label="label")
    ax.set_title("posterior means" + (" (first 2 PCs)" if model.latent_dim > 2 else ""))
    fig.tight_layout()
    return fig


def latent_grid_figure(model, images: np.ndarray, labels: np.ndarray | None, n: int = 15) -> Figure:
    """Decoder outputs on an ``n x n`` grid over the latent (its two leading principal directions when
    it is wider than 2), spanning the 5th to 95th percentiles of the posterior means of ``images``."""
    grid = latent_space.latent_grid(model, images, labels if model.num_classes else None, n=n)
    # a one-pixel grey line after each tile, so that neighbouring digits read as separate images
    tiles = np.pad(grid.images, ((0, 0), (0, 0), (0, 1), (0, 1), (0, 0)), constant_values=0.5)
    rows, cols, height, width, channels = tiles.shape
    mosaic = tiles.transpose(0, 2, 1, 3, 4).reshape(rows * height, cols * width, channels)
    fig, ax = new_figure(figsize=(6, 6 * rows / cols + 0.6))
    top, bottom = (grid.y[0], grid.y[-1]) if len(grid.y) else (0.5, -0.5)
    ax.imshow(
        mosaic[..., 0] if channels == 1 else mosaic,
        cmap="gray",
        vmin=0,
        vmax=1,
        extent=(grid.x[0], grid.x[-1], bottom, top),
        aspect="auto",
    )
    names = ("principal direction 1", "principal direction 2") if grid.principal else ("z[0]", "z[1]")
    ax.set_xlabel(names[0])
    if len(grid.y):
        ax.set_ylabel(names[1])
    else:
        ax.set_yticks([])
    label = "" if grid.label is None else f", label {_class_name(model, grid.label)}"
    ax.set_title("decoder over the latent" + (" (leading principal directions)" if grid.principal else "") + label)
    fig.tight_layout()
    return fig


def interpolation_figure(
    model,
    image_a: np.ndarray,
    image_b: np.ndarray,
    steps: int = 10,
    *,
    label_a: int | None = None,
    label_b: int | None = None,
    title: str | None = None,
) -> Figure:
    """The two images at the ends and, between them, ``steps`` decoded points on the straight line
    between their posterior means."""
    decoded, _ = latent_space.interpolate(model, image_a, image_b, steps, label_a=label_a, label_b=label_b)
    row = np.concatenate([image_a[None], decoded, image_b[None]]).astype(np.float32)
    return image_grid(row, ncols=len(row), title=title or "input, interpolation between posterior means, input")


def _class_name(model, label: int) -> str:
    names = getattr(model, "class_names", None)
    return str(names[label]) if names is not None and label < len(names) else str(label)


def score_histogram(
    scores: np.ndarray, threshold: float, title: str = "calibration anomaly_score", label: str = "anomaly_score"
) -> Figure:
    fig, ax = new_figure(figsize=(6, 3.5))
    ax.hist(scores, bins=40, color="C0", alpha=0.8)
    ax.axvline(threshold, color="C3", linestyle="--", label=f"threshold {threshold:.2f}")
    ax.set_xlabel(label)
    ax.set_ylabel("examples")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig
