"""Figures of synthetic samples: a grid with one row per label, and that grid saved as a PNG beside
the dataset (``vae generate``, ``vae run``; :func:`training.registry.log_artifact` logs it to MLflow)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from pipeline.outputs.files import write_atomically
from pipeline.outputs.synthetic import DATASET, images_of, read_synthetic

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def grid_figure(
    table: pa.Table, class_names: Sequence[str] = (), per_label: int = 10, title: str | None = None
) -> Figure:
    """A matplotlib figure of synthetic samples: one row of ``per_label`` images per label, or the first
    ``per_label**2`` samples in rows of ``per_label`` when there are no labels."""
    from training.plots import image_grid

    labels = np.array([-1 if v is None else v for v in table.column("label").to_pylist()], dtype=np.int64)
    present = sorted(set(labels.tolist()) - {-1})
    if present:
        rows_of_grid, row_labels = [], []
        for label in present:
            block = images_of(table.take(pa.array(np.flatnonzero(labels == label)[:per_label])))
            pad = np.zeros((per_label - len(block), *block.shape[1:]), np.float32)  # each label starts a row
            rows_of_grid.append(np.concatenate([block, pad]))
            row_labels.append(class_names[label] if label < len(class_names) else str(label))
        grid = np.concatenate(rows_of_grid)
    else:
        grid, row_labels = images_of(table.slice(0, per_label * per_label)), None
    return image_grid(grid, ncols=per_label, title=title, row_labels=row_labels)


def save_grid(
    dataset: str | os.PathLike,
    method: str,
    *,
    class_names: Sequence[str] = (),
    title: str | None = None,
    path: str | os.PathLike | None = None,
    per_label: int = 10,
) -> Path:
    """Renders one method's samples in ``dataset`` (``OUTPUT/synthetic``) as a PNG grid, by default
    beside it (``OUTPUT/synthetic-METHOD.png``); returns its path."""
    import matplotlib.pyplot as plt

    target = Path(path) if path else Path(dataset).parent / f"{DATASET}-{method}.png"
    table = read_synthetic(dataset, method, columns=("label", "sample_id", "height", "width", "channels", "pixels"))
    figure = grid_figure(table, class_names, per_label=per_label, title=title or f"{method} samples")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomically(target, lambda tmp: figure.savefig(tmp, format="png", dpi=100))  # readers: old or new
    finally:
        plt.close(figure)
    return target
