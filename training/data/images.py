"""An image data set in memory, the error every input problem raises, and decoding of image bytes."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def is_remote(path: str | os.PathLike) -> bool:
    """True for URLs such as ``gs://bucket/x`` (any scheme), False for local paths."""
    return "://" in str(path)


class DataError(ValueError):
    """Input that cannot be used, with a message that says where and why."""


@dataclass(frozen=True)
class ImageData:
    images: np.ndarray  # float32 (N, H, W, C) in [0, 1]
    labels: np.ndarray | None  # int64 (N,) indices into class_names
    example_ids: np.ndarray  # str (N,)
    class_names: list[str] | None
    source: str

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, index: np.ndarray) -> ImageData:
        return replace(
            self,
            images=self.images[index],
            labels=None if self.labels is None else self.labels[index],
            example_ids=self.example_ids[index],
        )


def parquet_files(folder: Path) -> list[Path]:
    """Data files of a Parquet dataset folder, sorted, skipping hidden and ``_``-prefixed files and folders."""
    return sorted(
        p
        for p in folder.rglob("*.parquet")
        if not any(part.startswith((".", "_")) for part in p.relative_to(folder).parts)
    )


def decode_image(data: bytes | None, where: str) -> np.ndarray:
    """PNG/JPEG bytes to an (H, W, C) array of raw values (0-255)."""
    from PIL import Image, UnidentifiedImageError

    if data is None:
        raise DataError(f"{where}: image is null")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode not in ("L", "RGB"):
                img = img.convert("RGB" if img.mode in ("RGBA", "P", "CMYK") else "L")
            array = np.asarray(img)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{where}: unreadable image ({exc})") from exc
    return array[..., None] if array.ndim == 2 else array
