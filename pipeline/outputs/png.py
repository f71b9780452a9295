"""PNG encoding for images in [0, 1]: 8-bit greyscale or RGB, readable by any viewer."""

from __future__ import annotations

import io

import numpy as np


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Quantises images in [0, 1] to 0-255: ``round(pixels * 255)``, clipped."""
    return np.clip(np.rint(np.asarray(images, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    """One (H, W, C) image in [0, 1], C = 1 or 3, as PNG bytes (deterministic: no timestamps)."""
    from PIL import Image

    pixels = to_uint8(image)
    if pixels.ndim != 3 or pixels.shape[-1] not in (1, 3):
        raise ValueError(f"expected an (H, W, 1) or (H, W, 3) image, got shape {pixels.shape}")
    buffer = io.BytesIO()  # a 2-D uint8 array becomes mode "L", (H, W, 3) becomes "RGB"
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_pngs(images: np.ndarray) -> list[bytes]:
    return [encode_png(image) for image in images]


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes to an (H, W, C) uint8 array."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        array = np.asarray(img)
    return array[..., None] if array.ndim == 2 else array
