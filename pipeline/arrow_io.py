"""Scoring input as Arrow record batches, and their validation into image arrays.

An input (Parquet file or folder, NPZ file, folder of PNG/JPEG files, a built-in data set, or an
in-memory :class:`~training.data.ImageData`) is cut into *shards*: small picklable descriptions of
a slice of it (a few Parquet row groups, a range of NPZ rows, a list of image files). A Beam worker
reads a shard as ``pyarrow.RecordBatch`` es of at most ``batch_size`` rows with the columns

    example_id (string, never null), source (string),
    image (binary: PNG/JPEG bytes) or pixels (list of numbers),
    and where the input has them: height, width, channels, label.

:func:`validate_batch` turns one such batch into float32 images for the rows that can be scored
and a reason for every row that cannot, vectorised over the batch (no Python object per row on the
pixel path). Validation is per row, so a row's fate never depends on its neighbours:

- ``pixels`` of an integer type are 0-255 values and are scaled by 1/255;
- float ``pixels`` must lie in [0, 1], or be whole numbers in 0-255 (then they are scaled);
- decoded images (8-bit PNG/JPEG) are scaled by 1/255;
- NaN, infinite or null pixel values, a wrong shape or size, an undecodable image, a null or
  missing column, and (for a conditional model) a missing or unknown label reject the row.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.atomic import is_remote
from training.data import BUILTIN, IMAGE_SUFFIXES, DataError, ImageData, decode_image, parquet_files

PIXEL_COLUMNS = ("image", "pixels")
INPUT_COLUMNS = ("example_id", "image", "pixels", "height", "width", "channels", "label")
DEFAULT_SHARD_ROWS = 50_000
SPLITS = ("train", "validation", "calibration", "holdout", "test")  # test: the holdout, its older name
RAW_TEXT_LIMIT = 2_000
RAW_IMAGE_LIMIT = 16_384


# --- shards: what one worker reads --------------------------------------------------------------


def _open(path: str):
    """A local path as is; anything else (gs://, s3://, hdfs://) through Beam's file systems."""
    if is_remote(path):
        from apache_beam.io.filesystems import FileSystems

        return FileSystems.open(path)
    return path


def _source_columns(batch: pa.RecordBatch, source: str, id_prefix: str, first_row: int) -> dict[str, pa.Array]:
    """``example_id`` (the input's, or ``<id_prefix><row>`` where it has none) and ``source``."""
    n = batch.num_rows
    rows = pc.cast(pa.array(np.arange(first_row, first_row + n, dtype=np.int64)), pa.string())
    generated = pc.binary_join_element_wise(id_prefix, rows, "")
    if "example_id" in batch.schema.names:
        ids = pc.coalesce(pc.cast(batch.column("example_id"), pa.string()), generated)
    else:
        ids = generated
    return {"example_id": ids, "source": pa.repeat(pa.scalar(source, pa.string()), n)}


def _with_source(batch: pa.RecordBatch, source: str, id_prefix: str, first_row: int) -> pa.RecordBatch:
    columns = _source_columns(batch, source, id_prefix, first_row)
    for name in INPUT_COLUMNS[1:]:
        if name in batch.schema.names:
            columns[name] = batch.column(name)
    return pa.RecordBatch.from_pydict(columns)


@dataclass(frozen=True)
class ParquetShard:
    """Consecutive row groups of one Parquet file; ``first_row`` is the file row of the first."""

    path: str
    row_groups: tuple[int, ...]
    first_row: int
    num_rows: int
    id_prefix: str
    index: int = 0
    total: int = 1

    @property
    def name(self) -> str:
        return f"{self.path} rows {self.first_row}-{self.first_row + self.num_rows - 1}"

    def read(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        import pyarrow.parquet as pq

        try:
            file = pq.ParquetFile(_open(self.path))
            columns = [c for c in INPUT_COLUMNS if c in file.schema_arrow.names]
            row = self.first_row
            if not any(c in columns for c in PIXEL_COLUMNS):  # every row is rejected; read only the ids
                columns = [c for c in columns if c in ("example_id", "label")]
            if not columns:
                for start in range(0, self.num_rows, batch_size):
                    n = min(batch_size, self.num_rows - start)
                    empty = pa.RecordBatch.from_pydict({"_": pa.nulls(n)})
                    yield _with_source(empty, self.path, self.id_prefix, row + start)
                return
            for batch in file.iter_batches(batch_size=batch_size, row_groups=list(self.row_groups), columns=columns):
                yield _with_source(batch, self.path, self.id_prefix, row)
                row += batch.num_rows
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{self.name}: cannot read row groups {list(self.row_groups)} ({exc})") from exc


@dataclass(frozen=True)
class NpzShard:
    """Rows ``start:stop`` of the ``x`` (and ``y``) arrays of an NPZ file."""

    path: str
    start: int
    stop: int
    index: int = 0
    total: int = 1

    @property
    def name(self) -> str:
        return f"{self.path} rows {self.start}-{self.stop - 1}"

    def read(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        with np.load(_open(self.path), allow_pickle=False) as archive:
            x = archive["x"][self.start : self.stop]
            y = archive["y"][self.start : self.stop] if "y" in archive.files else None
        x = x[..., None] if x.ndim == 3 else x
        height, width, channels = x.shape[1:]
        flat = x.reshape(len(x), -1)
        prefix = f"{PurePosixPath(self.path).name}:"
        for start in range(0, len(x), batch_size):
            part = flat[start : start + batch_size]
            n = len(part)
            columns = {
                "pixels": pa.FixedSizeListArray.from_arrays(pa.array(part.ravel()), part.shape[1]),
                "height": pa.repeat(pa.scalar(height, pa.int32()), n),
                "width": pa.repeat(pa.scalar(width, pa.int32()), n),
                "channels": pa.repeat(pa.scalar(channels, pa.int32()), n),
            }
            if y is not None:
                columns["label"] = pa.array(y[start : start + n])
            yield _with_source(pa.RecordBatch.from_pydict(columns), self.path, prefix, self.start + start)


@dataclass(frozen=True)
class ImageFilesShard:
    """PNG/JPEG files under ``root``; with ``labelled`` a file's sub-folder names its label."""

    root: str
    files: tuple[str, ...]  # relative to root, POSIX style
    labelled: bool
    index: int = 0
    total: int = 1

    @property
    def name(self) -> str:
        return f"{self.root}: {self.files[0]} .. {self.files[-1]}"

    def read(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        for start in range(0, len(self.files), batch_size):
            names = self.files[start : start + batch_size]
            paths = [f"{self.root.rstrip('/')}/{name}" for name in names]
            blobs = []
            for path in paths:
                with open(path, "rb") if not is_remote(path) else _open(path) as handle:
                    blobs.append(handle.read())
            columns = {
                "example_id": pa.array(names, pa.string()),
                "source": pa.array(paths, pa.string()),
                "image": pa.array(blobs, pa.binary()),
            }
            if self.labelled:
                columns["label"] = pa.array([str(PurePosixPath(name).parent) for name in names], pa.string())
            yield pa.RecordBatch.from_pydict(columns)


@dataclass(frozen=True)
class ArrowShard:
    """Rows already in memory (built-in data sets, an :class:`ImageData`), as one record batch."""

    batch: pa.RecordBatch = field(repr=False)
    source: str
    index: int = 0
    total: int = 1

    @property
    def name(self) -> str:
        ids = self.batch.column("example_id")
        return f"{self.source}: {ids[0]} .. {ids[-1]}" if len(ids) else self.source

    def read(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        for start in range(0, self.batch.num_rows, batch_size):
            yield self.batch.slice(start, batch_size)


Shard = ParquetShard | NpzShard | ImageFilesShard | ArrowShard


@dataclass(frozen=True)
class InputPlan:
    shards: list[Shard]
    total_rows: int
    description: str


def _numbered(shards: list, rows: int, description: str) -> InputPlan:
    from dataclasses import replace

    total = len(shards)
    return InputPlan([replace(s, index=i, total=total) for i, s in enumerate(shards)], rows, description)


def plan_input(spec: str | ImageData, *, shard_rows: int = DEFAULT_SHARD_ROWS, split_seed: int = 0) -> InputPlan:
    """Cuts an input into shards of about ``shard_rows`` rows (Parquet: whole row groups).

    ``spec``: ``digits`` (all 1,797), ``digits:train|validation|calibration|holdout`` (that part of
    :func:`training.data.training_split` with ``split_seed``, as ``vae train --seed`` splits; the
    holdout is the same rows for every seed; ``test`` is the holdout),
    ``mnist``/``fashion_mnist`` (downloaded), a ``.parquet`` file or a folder of them, an ``.npz``
    file, a folder of PNG/JPEG files, or an :class:`ImageData` already in memory.
    """
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be at least 1, got {shard_rows}")
    if isinstance(spec, ImageData):
        return plan_image_data(spec, shard_rows)
    name, _, part = spec.partition(":")
    if name in BUILTIN and not Path(spec).exists():
        from training import data as data_lib

        data = data_lib.load(name)
        if part:
            if part not in SPLITS:
                raise DataError(f"{spec}: the part must be one of {', '.join(SPLITS)}, e.g. {name}:test")
            data = getattr(data_lib.training_split(data, seed=split_seed), "holdout" if part == "test" else part)
            data = ImageData(data.images, data.labels, data.example_ids, data.class_names, spec)
        return plan_image_data(data, shard_rows)
    if spec.endswith(".npz"):
        return plan_npz(spec, shard_rows)
    if is_remote(spec):
        return plan_parquet(spec, shard_rows)
    path = Path(spec)
    if not path.exists():
        raise DataError(f"{spec}: no such file or folder, and not a built-in data set (digits, digits:test, ...)")
    if path.suffix == ".parquet" or (path.is_dir() and parquet_files(path)):
        return plan_parquet(spec, shard_rows)
    if path.is_dir():
        return plan_image_folder(path, shard_rows)
    raise DataError(f"{spec}: unsupported input; give a .parquet file or folder, an .npz file or a folder of PNGs")


def plan_parquet(spec: str, shard_rows: int) -> InputPlan:
    import pyarrow.parquet as pq

    if is_remote(spec):
        from apache_beam.io.filesystems import FileSystems

        pattern = spec if spec.endswith(".parquet") else spec.rstrip("/") + "/**.parquet"
        files = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
        root = spec if not spec.endswith(".parquet") else spec.rsplit("/", 1)[0]
    else:
        path = Path(spec)
        files = [str(path)] if path.is_file() else [str(p) for p in parquet_files(path)]
        root = str(path if path.is_dir() else path.parent)
    if not files:
        raise DataError(f"{spec}: no Parquet files found")
    shards: list[ParquetShard] = []
    total = 0
    for file in files:
        try:
            meta = pq.ParquetFile(_open(file)).metadata
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{file}: not a readable Parquet file ({exc})") from exc
        rel = file[len(root) :].lstrip("/") if file.startswith(root) else PurePosixPath(file).name
        prefix = f"{rel}:"
        groups: list[int] = []
        first = rows = 0
        for g in range(meta.num_row_groups):
            groups.append(g)
            rows += meta.row_group(g).num_rows
            if rows >= shard_rows or g == meta.num_row_groups - 1:
                if rows:
                    shards.append(ParquetShard(file, tuple(groups), first, rows, prefix))
                first, groups, rows = first + rows, [], 0
        total += meta.num_rows
    return _numbered(shards, total, f"{spec} ({len(files)} Parquet file{'s' * (len(files) != 1)})")


def plan_npz(spec: str, shard_rows: int) -> InputPlan:
    try:
        with np.load(_open(spec), allow_pickle=False) as archive:
            if "x" not in archive.files:
                raise DataError(f"{spec}: no array named 'x' (found: {', '.join(archive.files) or 'none'})")
            x = archive["x"]
            y_len = len(archive["y"]) if "y" in archive.files else None
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{spec}: not a readable .npz file ({exc})") from exc
    if x.ndim not in (3, 4) or not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{spec}: 'x' must be numbers shaped (N, H, W) or (N, H, W, C), got {x.dtype} {x.shape}")
    if y_len is not None and y_len != len(x):
        raise DataError(f"{spec}: 'y' has {y_len} labels for {len(x)} images")
    n = len(x)
    shards = [NpzShard(spec, start, min(start + shard_rows, n)) for start in range(0, n, shard_rows)]
    return _numbered(shards, n, f"{spec} (NPZ, {n} rows)")


def plan_image_folder(path: Path, shard_rows: int) -> InputPlan:
    files = sorted(
        p.relative_to(path).as_posix()
        for p in path.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    if not files:
        raise DataError(f"{path}: no PNG or JPEG images found")
    labelled = all("/" in f for f in files)
    shards = [
        ImageFilesShard(str(path), tuple(files[i : i + shard_rows]), labelled) for i in range(0, len(files), shard_rows)
    ]
    return _numbered(shards, len(files), f"{path} ({len(files)} image files)")


def image_data_batch(data: ImageData) -> pa.RecordBatch:
    """An :class:`ImageData` as one record batch of fixed-size ``pixels`` lists (no copy of the pixels)."""
    n = len(data)
    height, width, channels = data.image_shape
    flat = np.ascontiguousarray(data.images, dtype=np.float32).reshape(-1)
    columns = {
        "example_id": pa.array(data.example_ids.astype(str), pa.string()),
        "source": pa.repeat(pa.scalar(data.source, pa.string()), n),
        "pixels": pa.FixedSizeListArray.from_arrays(pa.array(flat), height * width * channels),
        "height": pa.repeat(pa.scalar(height, pa.int32()), n),
        "width": pa.repeat(pa.scalar(width, pa.int32()), n),
        "channels": pa.repeat(pa.scalar(channels, pa.int32()), n),
    }
    if data.labels is not None:
        columns["label"] = pa.array(np.asarray(data.labels, dtype=np.int64))
    return pa.RecordBatch.from_pydict(columns)


def plan_image_data(data: ImageData, shard_rows: int) -> InputPlan:
    batch = image_data_batch(data)
    shards = [ArrowShard(batch.slice(i, shard_rows), data.source) for i in range(0, batch.num_rows, shard_rows)]
    return _numbered(shards, batch.num_rows, f"{data.source} ({len(data)} rows in memory)")


# --- validation: record batch -> images + rejects -----------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """What validation needs to know about the model (small and picklable, unlike the model)."""

    image_shape: tuple[int, int, int]
    num_classes: int = 0
    class_names: tuple[str, ...] = ()

    @classmethod
    def of(cls, model) -> ModelSpec:
        return cls(tuple(int(d) for d in model.image_shape), int(model.num_classes), tuple(model.class_names or ()))

    @property
    def shape_text(self) -> str:
        return "x".join(str(d) for d in self.image_shape)


@dataclass
class ValidRows:
    """The scorable rows of one batch: float32 images in [0, 1] and what travels with them."""

    images: np.ndarray  # float32 (k, H, W, C)
    labels: np.ndarray | None  # int64 (k,) class indices for a conditional model, else None
    label_out: pa.Array  # int64, null where unknown: the ``label`` output column
    example_ids: pa.Array
    sources: pa.Array

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class RejectedRows:
    example_ids: pa.Array
    sources: pa.Array
    reasons: pa.Array
    raws: pa.Array

    def __len__(self) -> int:
        return len(self.example_ids)


class _Verdicts:
    """One reason per rejected row (the first problem found) and which raw value explains it."""

    def __init__(self, n: int) -> None:
        self.bad = np.zeros(n, dtype=bool)
        self.reasons = np.empty(n, dtype=object)
        self.raw_is_label = np.zeros(n, dtype=bool)

    def reject(self, mask: np.ndarray, reason, about_label: bool = False) -> None:
        """``reason``: one string, or an array of strings aligned with the batch."""
        new = np.asarray(mask, dtype=bool) & ~self.bad
        if not new.any():
            return
        self.reasons[new] = reason if isinstance(reason, str) else np.asarray(reason, dtype=object)[new]
        self.raw_is_label[new] = about_label
        self.bad |= new


def _texts(mask: np.ndarray, text) -> np.ndarray:
    """An object array with ``text(i)`` where ``mask`` is set (only those rows pay for a string)."""
    out = np.empty(len(mask), dtype=object)
    for i in np.flatnonzero(mask):
        out[i] = text(i)
    return out


def _fmt(v: float) -> str:
    return f"{v:g}"


def _check_pixels(pix: np.ndarray, integer_type: bool, decoded: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(float32 values scaled to [0, 1], reason per row or None) for (k, P) raw pixel values;
    ``decoded``: 8-bit values decoded from PNG/JPEG bytes, always scaled by 1/255."""
    k = pix.shape[0]
    reasons = np.empty(k, dtype=object)
    if pix.shape[1] == 0:
        return pix.astype(np.float32), reasons
    if integer_type:
        lo, hi = pix.min(axis=1), pix.max(axis=1)
        bad = (lo < 0) | (hi > 255)
        scale = ~bad & ((hi > 1) | decoded)  # as training (data.as_image_array): 0/1 integers kept, 0-255 scaled
    else:
        finite = np.isfinite(pix).all(axis=1)
        reasons[~finite] = "not finite: NaN, infinite or null pixel values"
        with np.errstate(invalid="ignore"):
            lo, hi = pix.min(axis=1), pix.max(axis=1)
            in_unit = finite & (lo >= 0.0) & (hi <= 1.0)
            outside = finite & ~in_unit
            scale = np.zeros(k, dtype=bool)
            if outside.any():
                rows = np.flatnonzero(outside)
                sub = pix[rows]
                whole = (sub == np.round(sub)).all(axis=1) & (lo[rows] >= 0) & (hi[rows] <= 255)
                scale[rows[whole]] = True
            bad = outside & ~scale
    for i in np.flatnonzero(bad):
        reasons[i] = (
            f"out of range: values in [{_fmt(lo[i])}, {_fmt(hi[i])}]; pixels must be in [0, 1] "
            "or whole numbers 0-255 (which are scaled)"
        )
    images = pix.astype(np.float32)
    if scale.any():
        images[scale] *= np.float32(1.0 / 255.0)
    return images, reasons


def _pixel_rows(batch: pa.RecordBatch, spec: ModelSpec, shape_hint, verdicts: _Verdicts):
    """Reads the ``pixels`` column; returns (row indices still good, (k, P) raw values, integer type)."""
    col = batch.column("pixels")
    n = batch.num_rows
    expected = spec.image_shape
    size = math.prod(expected)
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type)):
        verdicts.reject(np.ones(n, bool), f"bad column: pixels is {col.type}, not a list of numbers")
        return np.empty(0, np.int64), np.empty((0, size)), False
    value_type = col.type.value_type
    if not (pa.types.is_integer(value_type) or pa.types.is_floating(value_type)):
        verdicts.reject(np.ones(n, bool), f"bad column: pixels holds {value_type}, not numbers")
        return np.empty(0, np.int64), np.empty((0, size)), False
    verdicts.reject(col.is_null().to_numpy(zero_copy_only=False), "null value: pixels is null")
    lengths = pc.list_value_length(col).fill_null(-1).to_numpy(zero_copy_only=False)
    names = batch.schema.names
    if "height" in names and "width" in names:
        h = pc.cast(batch.column("height"), pa.int64()).fill_null(-1).to_numpy(zero_copy_only=False)
        w = pc.cast(batch.column("width"), pa.int64()).fill_null(-1).to_numpy(zero_copy_only=False)
        c = (
            pc.cast(batch.column("channels"), pa.int64()).fill_null(1).to_numpy(zero_copy_only=False)
            if "channels" in names
            else np.ones(n, np.int64)
        )
        verdicts.reject((h < 1) | (w < 1) | (c < 1), "null value: height or width is null or not positive")
        wrong = (h != expected[0]) | (w != expected[1]) | (c != expected[2])
        expects = f"the model expects {spec.shape_text}"
        verdicts.reject(wrong, _texts(wrong, lambda i: f"wrong shape: {h[i]}x{w[i]}x{c[i]} image, {expects}"))
        wrong_size = lengths != h * w * c
        verdicts.reject(
            wrong_size, _texts(wrong_size, lambda i: f"wrong size: {lengths[i]} pixels do not fit {h[i]}x{w[i]}x{c[i]}")
        )
    else:
        row_shape = tuple(shape_hint) if shape_hint else expected
        if row_shape != expected:
            hint = "x".join(map(str, row_shape))
            verdicts.reject(np.ones(n, bool), f"wrong shape: --shape {hint}, the model expects {spec.shape_text}")
        wrong_size = lengths != size
        expects = f"the model expects {size} ({spec.shape_text})"
        verdicts.reject(wrong_size, _texts(wrong_size, lambda i: f"wrong size: {lengths[i]} pixels, {expects}"))
    good = np.flatnonzero(~verdicts.bad)
    flat = col.take(pa.array(good)).flatten() if len(good) < n else col.flatten()
    integer_type = pa.types.is_integer(value_type) and flat.null_count == 0
    values = flat.to_numpy(zero_copy_only=False)
    if not integer_type and not np.issubdtype(values.dtype, np.floating):
        values = values.astype(np.float64)
    return good, values.reshape(len(good), size), integer_type


def _image_rows(batch: pa.RecordBatch, spec: ModelSpec, verdicts: _Verdicts):
    """Decodes the ``image`` column (PNG/JPEG bytes), one row at a time (PIL has no batch decode)."""
    col = batch.column("image")
    n = batch.num_rows
    size = math.prod(spec.image_shape)
    if not (pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type)):
        verdicts.reject(np.ones(n, bool), f"bad column: image is {col.type}, not binary PNG/JPEG bytes")
        return np.empty(0, np.int64), np.empty((0, size)), True
    decoded: list[np.ndarray] = []
    good: list[int] = []
    reasons = np.empty(n, dtype=object)
    for i, blob in enumerate(col.to_pylist()):
        if blob is None:
            reasons[i] = "null value: image is null"
            continue
        try:
            array = decode_image(blob, "image")
        except DataError as exc:
            reasons[i] = "unreadable image: " + str(exc).removeprefix("image: ").removeprefix("unreadable image ")
            continue
        if array.shape != spec.image_shape:
            shape = "x".join(map(str, array.shape))
            reasons[i] = f"wrong shape: {shape} image, the model expects {spec.shape_text}"
            continue
        decoded.append(array.reshape(-1))
        good.append(i)
    failed = np.array([r is not None for r in reasons], dtype=bool)
    verdicts.reject(failed, reasons)
    values = np.stack(decoded) if decoded else np.empty((0, size), np.uint8)
    return np.asarray(good, dtype=np.int64), values, True


def _labels(col: pa.Array | None, spec: ModelSpec, verdicts: _Verdicts) -> tuple[np.ndarray, np.ndarray]:
    """(int64 label per row, valid mask). A conditional model rejects rows without a known label;
    a plain model keeps what it can read as an integer and leaves the rest null."""
    n = len(verdicts.bad)
    conditional = spec.num_classes > 0
    if col is None:
        if conditional:
            verdicts.reject(np.ones(n, bool), "missing label: the model is conditional and the input has no 'label'")
        return np.zeros(n, np.int64), np.zeros(n, bool)
    present = ~col.is_null().to_numpy(zero_copy_only=False)
    values = np.zeros(n, np.int64)
    known = present.copy()
    if pa.types.is_integer(col.type):
        values = col.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    elif pa.types.is_floating(col.type):
        raw = col.fill_null(0).to_numpy(zero_copy_only=False)
        whole = np.isfinite(raw) & (raw == np.round(raw))
        known &= whole
        values = np.where(whole, raw, 0).astype(np.int64)
    else:
        index = {name: i for i, name in enumerate(spec.class_names)} if conditional else {}
        for i, v in enumerate(col.to_pylist()):
            if v is None:
                continue
            text = v.decode(errors="replace") if isinstance(v, bytes) else str(v)
            if conditional and text in index:
                values[i] = index[text]
            elif text.strip().lstrip("-").isdigit():
                values[i] = int(text)
            else:
                known[i] = False
    if conditional:
        verdicts.reject(~present, "missing label: label is null and the model is conditional", about_label=True)
        out_of_range = known & ((values < 0) | (values >= spec.num_classes))
        unknown = present & (~known | out_of_range)
        if unknown.any():
            classes = ", ".join(spec.class_names[:12]) + (", ..." if len(spec.class_names) > 12 else "")
            texts = col.to_pylist()
            reason = np.array(
                [f"unknown label: {t!r} is not one of the model's classes ({classes})" for t in texts], dtype=object
            )
            verdicts.reject(unknown, reason, about_label=True)
        known &= ~out_of_range
    return values, known


def _raw_text(batch: pa.RecordBatch, i: int, about_label: bool) -> str | None:
    names = batch.schema.names
    if about_label and "label" in names:
        value = batch.column("label")[i].as_py()
        return None if value is None else str(value)
    if "pixels" in names:
        value = batch.column("pixels")[i].as_py()
        if value is None:
            return None
        text = str(value)
        return text if len(text) <= RAW_TEXT_LIMIT else text[: RAW_TEXT_LIMIT - 1] + "…"
    if "image" in names:
        value = batch.column("image")[i].as_py()
        if value is None:
            return None
        if isinstance(value, bytes) and len(value) <= RAW_IMAGE_LIMIT:
            return "base64:" + base64.b64encode(value).decode()
        return f"<{len(value)} bytes, not kept>"
    return None


def validate_batch(
    batch: pa.RecordBatch, spec: ModelSpec, shape_hint: tuple[int, int, int] | None = None
) -> tuple[ValidRows | None, RejectedRows | None]:
    """Splits a record batch into the rows the model can score and the rows it cannot."""
    n = batch.num_rows
    verdicts = _Verdicts(n)
    names = batch.schema.names
    if "pixels" in names:
        good, raw, integer_type = _pixel_rows(batch, spec, shape_hint, verdicts)
    elif "image" in names:
        good, raw, integer_type = _image_rows(batch, spec, verdicts)
    else:
        verdicts.reject(np.ones(n, bool), "missing column: the input has no 'image' or 'pixels' column")
        good, raw, integer_type = np.empty(0, np.int64), np.empty((0, math.prod(spec.image_shape))), False
    images, pixel_reasons = _check_pixels(raw, integer_type, decoded="pixels" not in names and "image" in names)
    if len(good):
        failed = np.zeros(n, dtype=bool)
        failed[good] = [r is not None for r in pixel_reasons]
        reasons = np.empty(n, dtype=object)
        reasons[good] = pixel_reasons
        verdicts.reject(failed, reasons)
    labels, label_known = _labels(batch.column("label") if "label" in names else None, spec, verdicts)

    ok = ~verdicts.bad
    valid = None
    if ok.any():
        keep_in_good = ok[good]
        rows = good[keep_in_good]
        row_labels = labels[rows]
        known = label_known[rows]
        valid = ValidRows(
            images=images[keep_in_good].reshape(len(rows), *spec.image_shape),
            labels=row_labels if spec.num_classes else None,
            label_out=pa.array(row_labels, pa.int64(), mask=~known),
            example_ids=batch.column("example_id").take(pa.array(rows)),
            sources=batch.column("source").take(pa.array(rows)),
        )
    rejected = None
    if verdicts.bad.any():
        rows = np.flatnonzero(verdicts.bad)
        index = pa.array(rows)
        rejected = RejectedRows(
            example_ids=batch.column("example_id").take(index),
            sources=batch.column("source").take(index),
            reasons=pa.array(verdicts.reasons[rows].tolist(), pa.string()),
            raws=pa.array([_raw_text(batch, int(i), bool(verdicts.raw_is_label[i])) for i in rows], pa.string()),
        )
    return valid, rejected
