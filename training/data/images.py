"""An image data set in memory, the error every input problem raises, and decoding of image bytes."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


SPILL_CHUNK_ROWS = 8192


def take_rows(images: np.ndarray, index: np.ndarray) -> np.ndarray:
    if not isinstance(images, np.memmap) or images.filename is None:
        return images[index]
    import uuid

    path = Path(images.filename).with_name(f"part-{uuid.uuid4().hex[:8]}.npy")
    out = np.lib.format.open_memmap(path, mode="w+", dtype=images.dtype, shape=(len(index), *images.shape[1:]))
    for start in range(0, len(index), SPILL_CHUNK_ROWS):
        rows = index[start : start + SPILL_CHUNK_ROWS]
        order = np.argsort(rows, kind="stable")  # read the source in file order
        chunk = np.empty((len(rows), *images.shape[1:]), images.dtype)
        chunk[order] = images[rows[order]]
        out[start : start + len(rows)] = chunk
    out.flush()
    return out


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
        """The rows ``index``; images held in a memory-mapped file stay on disk (a new file beside it)."""
        return replace(
            self,
            images=take_rows(self.images, np.asarray(index)),
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
    """PNG/JPEG bytes to an (H, W, C) array of raw values: uint8 (0-255), or uint16 for 16-bit grey PNGs."""
    from PIL import Image, UnidentifiedImageError

    if data is None:
        raise DataError(f"{where}: image is null")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode.startswith("I;16"):  # 16-bit grey: keep every level (uint16)
                array = np.asarray(img).astype(np.uint16)
            else:
                if img.mode not in ("L", "RGB"):
                    img = img.convert("RGB" if img.mode in ("RGBA", "P", "CMYK") else "L")
                array = np.asarray(img)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{where}: unreadable image ({exc})") from exc
    return array[..., None] if array.ndim == 2 else array
