"""An image data set in memory, the error every input problem raises, and decoding of image bytes."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
UNLABELLED = -1  # the label of a row without one, in a data set read for a conditional (semi-supervised) model


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


class DataError(ValueError):
    """Input that cannot be used, with a message that says where and why."""


@dataclass(frozen=True)
class ImageData:
    images: np.ndarray  # float32 (N, H, W, C) in [0, 1]
    labels: np.ndarray | None  # int64 (N,) indices into class_names; UNLABELLED (-1) where a row has none
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


# An image whose header declares more pixels than this is never decoded, whatever the job: its
# pixels would cost memory (a 109 KB PNG can declare 30000x30000) for an image no model takes.
MAX_DECODED_PIXELS = 4096 * 4096
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")  # what image bytes may hold; no exotic decoders
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ImageProblem(DataError):
    """An image that cannot be used; ``reason`` is the reject reason (``category: detail``)."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.reason = reason


def _declared_png_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a PNG's IHDR chunk, read before PIL sees the bytes (None if not a PNG)."""
    if len(data) >= 24 and data.startswith(_PNG_SIGNATURE) and data[12:16] == b"IHDR":
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        return height, width
    return None


def _too_large(height: int, width: int, expected: tuple[int, ...] | None, owner: str) -> str:
    takes = f", {owner} takes {expected[0]}x{expected[1]}" if expected else ""
    return f"image too large: {height}x{width}{takes}"


def _unreadable(data: bytes, exc: Exception) -> str:
    """A reason with no Python object in it (PIL names its BytesIO: ``<_io.BytesIO object at 0x...>``)."""
    if not data:
        return "unreadable image: empty (0 bytes)"
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        head = data[:8].hex(" ")
        return f"unreadable image: not a PNG or JPEG image ({len(data):,} bytes, starting {head})"
    text = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the image", str(exc))
    return f"unreadable image: {text or type(exc).__name__}"


def _channels(img) -> int:
    """The channels an image is read with: 1 for grey (a palette of greys included), 3 for colour."""
    if img.mode in ("1", "L", "LA", "I", "F") or img.mode.startswith("I;16"):
        return 1
    if img.mode in ("P", "PA"):
        return 1 if _grey_palette(img) else 3
    return 3


def _grey_palette(img) -> bool:
    palette = img.palette
    if palette is None or palette.mode not in ("RGB", "RGBA"):
        return False
    width = len(palette.mode)
    entries = np.frombuffer(bytes(palette.palette), np.uint8)
    entries = entries[: len(entries) // width * width].reshape(-1, width)[:, :3]
    return bool((entries == entries[:, :1]).all())


def decode_image(
    data: bytes | None,
    where: str,
    expected: tuple[int, ...] | None = None,
    owner: str = "the model",
) -> np.ndarray:
    """PNG/JPEG bytes to an (H, W, C) array of raw values: uint8 (0-255), or uint16 for 16-bit grey PNGs.
    A palette image whose palette is grey is read as grey.

    The header is read first: an image over :data:`MAX_DECODED_PIXELS`, or (with ``expected``, the
    (H, W[, C]) that ``owner`` takes) of another height and width, is refused before a pixel is
    decoded. Raises :class:`ImageProblem` with the reject reason."""
    import warnings

    from PIL import Image

    if data is None:
        raise ImageProblem(where, "null value: image is null")
    declared = _declared_png_size(data)
    if declared and declared[0] * declared[1] > MAX_DECODED_PIXELS:
        raise ImageProblem(where, _too_large(*declared, expected, owner))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # sizes are checked here
            img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        with img:
            width, height = img.size
            if width * height > MAX_DECODED_PIXELS:
                raise ImageProblem(where, _too_large(height, width, expected, owner))
            if expected is not None and (height, width) != tuple(expected[:2]):
                shape = f"{height}x{width}x{_channels(img)}"
                want = "x".join(str(d) for d in expected)
                raise ImageProblem(where, f"wrong shape: {shape} image, {owner} expects {want}")
            img.load()
            if img.mode in ("I", "F"):  # convert("L") would clip them to 0-255 without a word
                kind = "32-bit integer" if img.mode == "I" else "floating-point"
                raise ImageProblem(
                    where,
                    f"unsupported image: {kind} pixels have no fixed maximum to divide by; store 8- or 16-bit "
                    "images, or the values in a pixels column",
                )
            if img.mode.startswith("I;16"):  # 16-bit grey: keep every level (uint16)
                array = np.asarray(img).astype(np.uint16)
            else:
                if img.mode not in ("L", "RGB"):
                    grey = img.mode in ("1", "LA") or (img.mode in ("P", "PA") and _grey_palette(img))
                    img = img.convert("L" if grey else "RGB")
                array = np.asarray(img)
    except ImageProblem:
        raise
    except MemoryError:
        raise
    except Image.DecompressionBombError as exc:  # a format whose size this code could not read first
        raise ImageProblem(where, f"image too large: {_pixels_in(exc)}") from exc
    except Exception as exc:  # noqa: BLE001 - a decoder may raise anything on bad bytes; the row is rejected
        raise ImageProblem(where, _unreadable(data, exc)) from exc
    return array[..., None] if array.ndim == 2 else array


def _pixels_in(exc: Exception) -> str:
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return f"{int(found[1]):,} pixels" if found else "more pixels than PIL will decode"
