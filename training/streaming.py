"""Training batches streamed from images held in a memory-mapped file (data larger than memory)."""

from __future__ import annotations

import math

import keras
import numpy as np

from training.data import ImageData
from training.model import model_inputs


class MemmapBatches(keras.utils.PyDataset):
    """``(x, y)`` batches of an :class:`ImageData` whose images are a ``np.memmap``: each batch
    reads only its own rows (in file order) from disk, so memory holds one batch, not the data set.
    With ``shuffle`` the order is a seeded permutation, drawn again at the end of every epoch."""

    def __init__(self, data: ImageData, batch_size: int, conditional: bool, shuffle: bool = False, seed: int = 0):
        super().__init__()
        self.data = data
        self.batch_size = int(batch_size)
        self.conditional = conditional
        self.shuffle = shuffle
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(data)) if shuffle else np.arange(len(data))

    def __len__(self) -> int:
        return math.ceil(len(self.data) / self.batch_size)

    def __getitem__(self, index: int):
        rows = np.sort(self.order[index * self.batch_size : (index + 1) * self.batch_size])
        images = np.asarray(self.data.images[rows])
        labels = None if self.data.labels is None else self.data.labels[rows]
        return model_inputs(images, labels, self.conditional), np.zeros(len(rows), np.float32)

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self.order = self.rng.permutation(len(self.data))
