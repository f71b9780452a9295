"""Whole-data-set loading (to be replaced by the reader + validator)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from training.data.builtin import BUILTIN, load_digits, load_keras_dataset, load_mnist5k
from training.data.images import IMAGE_SUFFIXES, DataError, ImageData, decode_image, parquet_files

log = logging.getLogger(__name__)


def load(spec: str, shape: tuple[int, int, int] | None = None) -> ImageData:
    """Loads a built-in data set by name, or a Parquet file or folder, an NPZ file, or a PNG folder."""
    if spec == "digits":
        return load_digits()
    if spec == "mnist5k":
        return load_mnist5k()
    if spec in ("mnist", "fashion_mnist"):
        return load_keras_dataset(spec)
    path = Path(spec)
    if not path.exists():
        raise DataError(f"{spec}: no such file or folder, and not a built-in data set ({', '.join(BUILTIN)})")
    if path.suffix == ".npz":
        return load_npz(path)
    if path.suffix == ".parquet" or (path.is_dir() and any(path.rglob("*.parquet"))):
        return load_parquet(path, shape)
    if path.is_dir():
        return load_image_folder(path)
    raise DataError(f"{spec}: unsupported input; give a .parquet file or folder, an .npz file or a folder of PNGs")


def load_npz(path: Path) -> ImageData:
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from exc
    if "x" not in archive:
        raise DataError(f"{path}: no array named 'x' (found: {', '.join(archive.files) or 'none'})")
    images = as_image_array(archive["x"], str(path))
    labels, names = encode_labels(archive["y"], str(path)) if "y" in archive else (None, None)
    ids = np.array([f"{path.name}:{i}" for i in range(len(images))])
    return check(ImageData(images, labels, ids, names, str(path)))


def load_parquet(path: Path, shape: tuple[int, int, int] | None = None) -> ImageData:
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = [path] if path.is_file() else parquet_files(path)
    if not files:
        raise DataError(f"{path}: no Parquet files found")
    tables, ids = [], []
    for file in files:
        try:
            part = pq.read_table(file)
        except Exception as exc:
            raise DataError(f"{file}: not a readable Parquet file ({exc})") from exc
        rel = file.name if file == path else file.relative_to(path).as_posix()
        given = part.column("example_id").to_pylist() if "example_id" in part.column_names else [None] * part.num_rows
        # the same ids as the Beam scorer gives: the input's, else FILE:ROW within that file
        ids += [f"{rel}:{i}" if v is None else str(v) for i, v in enumerate(given)]
        tables.append(part)
    table = pa.concat_tables(tables, promote_options="permissive")
    ids = np.array(ids)
    columns = set(table.column_names)
    if "image" in columns:
        images = [
            decode_image(b, f"{path} row {i} (example_id {ids[i]})")
            for i, b in enumerate(table.column("image").to_pylist())
        ]
        images = stack_same_shape(images, ids, str(path))
    elif "pixels" in columns:
        pixels = table.column("pixels").to_pylist()
        shapes = _row_shapes(table, shape, str(path))
        images = []
        for i, (row, row_shape) in enumerate(zip(pixels, shapes, strict=True)):
            where = f"{path} row {i} (example_id {ids[i]})"
            if row is None:
                raise DataError(f"{where}: pixels is null")
            if len(row) != int(np.prod(row_shape)):
                raise DataError(f"{where}: {len(row)} pixels do not fit the shape {row_shape}")
            images.append(np.asarray([np.nan if v is None else v for v in row], dtype=np.float64).reshape(row_shape))
        images = stack_same_shape(images, ids, str(path))
    else:
        raise DataError(f"{path}: needs an 'image' column (PNG/JPEG bytes) or a 'pixels' column (list of numbers)")
    images = as_image_array(images, str(path), ids)
    labels, names = (
        encode_labels(table.column("label").to_numpy(zero_copy_only=False), str(path))
        if "label" in columns
        else (None, None)
    )
    return check(ImageData(images, labels, ids, names, str(path)))


def _row_shapes(table, shape: tuple[int, int, int] | None, where: str) -> list[tuple[int, int, int]]:
    names = set(table.column_names)
    if {"height", "width"} <= names:
        heights = table.column("height").to_pylist()
        widths = table.column("width").to_pylist()
        channels = table.column("channels").to_pylist() if "channels" in names else [1] * table.num_rows
        return [(int(h), int(w), int(c or 1)) for h, w, c in zip(heights, widths, channels, strict=True)]
    if shape is None:
        raise DataError(f"{where}: a 'pixels' column needs 'height'/'width' columns or a shape (--shape HxWxC)")
    return [shape] * table.num_rows


def load_image_folder(path: Path) -> ImageData:
    """PNG/JPEG files; files in sub-folders take the sub-folder's name as their label."""
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{path}: no PNG or JPEG images found")
    images = [decode_image(f.read_bytes(), str(f)) for f in files]
    ids = np.array([str(f.relative_to(path)) for f in files])
    images = as_image_array(stack_same_shape(images, ids, str(path)), str(path), ids)
    label_names = [f.parent.relative_to(path).as_posix() for f in files]
    labels, names = (None, None)
    if all(name != "." for name in label_names):
        labels, names = encode_labels(np.array(label_names), str(path))
    return check(ImageData(images, labels, ids, names, str(path)))


def stack_same_shape(images: list[np.ndarray], ids: np.ndarray, where: str) -> np.ndarray:
    if not images:
        raise DataError(f"{where}: the data set is empty")
    first = images[0].shape
    for i, img in enumerate(images):
        if img.shape != first:
            raise DataError(f"{where}: mixed image shapes: example {ids[i]} (row {i}) is {img.shape}, row 0 is {first}")
    return np.stack(images)


def as_image_array(raw: np.ndarray, where: str, ids: np.ndarray | None = None) -> np.ndarray:
    """Validates raw values and returns float32 (N, H, W, C) in [0, 1]; 0-255 integers are scaled."""
    array = np.asarray(raw)
    if array.size == 0 or array.shape[0] == 0:
        raise DataError(f"{where}: the data set is empty")
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise DataError(f"{where}: expected images shaped (N, H, W) or (N, H, W, C), got {array.shape}")
    if array.shape[-1] not in (1, 3):
        raise DataError(f"{where}: images need 1 (grey) or 3 (RGB) channels, got {array.shape[-1]}")
    if not np.issubdtype(array.dtype, np.number):
        raise DataError(f"{where}: pixel values must be numbers, got dtype {array.dtype}")

    def row_name(i: int) -> str:
        return f"row {i}" + (f" (example_id {ids[i]})" if ids is not None else "")

    flat = array.reshape(array.shape[0], -1)
    finite = np.isfinite(flat).all(axis=1) if np.issubdtype(array.dtype, np.floating) else np.ones(len(flat), bool)
    if not finite.all():
        i = int(np.argmin(finite))
        raise DataError(f"{where}: {row_name(i)} has NaN or infinite pixel values")
    low, high = flat.min(axis=1), flat.max(axis=1)
    integer_like = np.issubdtype(array.dtype, np.integer) or bool(np.all(flat == np.round(flat)))
    if high.max() > 1.0 and integer_like and low.min() >= 0 and high.max() <= 255:
        log.warning("%s: pixel values are 0-255 integers; scaling them to [0, 1]", where)
        return (array / 255.0).astype(np.float32)
    bad = (low < 0.0) | (high > 1.0)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"{where}: {row_name(i)} has values in [{low[i]:g}, {high[i]:g}]; pixels must be in [0, 1] "
            "(or integers 0-255, which are scaled)"
        )
    return array.astype(np.float32)


def encode_labels(raw: np.ndarray, where: str) -> tuple[np.ndarray, list[str]]:
    """Labels to int indices and their names; integer labels 0..K-1 keep their values."""
    values = np.asarray(raw)
    if values.dtype == object and any(v is None for v in values):
        i = next(i for i, v in enumerate(values) if v is None)
        raise DataError(f"{where}: row {i} has no label; give every row a label or drop the column")
    if np.issubdtype(values.dtype, np.floating):
        if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
            raise DataError(f"{where}: labels must be integers or strings")
        values = values.astype(np.int64)
    if np.issubdtype(values.dtype, np.integer):
        if values.min() < 0:
            raise DataError(f"{where}: labels must be non-negative, found {values.min()}")
        count = int(values.max()) + 1
        return values.astype(np.int64), [str(i) for i in range(count)]
    names = sorted({str(v) for v in values})
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[str(v)] for v in values], dtype=np.int64), names


def check(data: ImageData) -> ImageData:
    if len(data) == 0:
        raise DataError(f"{data.source}: the data set is empty")
    if len(set(data.example_ids.tolist())) != len(data):
        raise DataError(f"{data.source}: example_id values are not unique")
    return data
