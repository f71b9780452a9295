"""Every job's input as Arrow record batches: the reader half of the input contract.

An input (Parquet file or folder, NPZ file, folder of PNG/JPEG files, a built-in data set, or an
in-memory :class:`~training.data.ImageData`) is cut into *shards*: small picklable descriptions of
a slice of it (a few Parquet row groups, a range of NPZ rows, a list of image files). A Beam worker,
or :func:`training.data.load.read_images` in one process, reads a shard as ``pyarrow.RecordBatch``
es of at most ``batch_size`` rows with the columns

    example_id (string, never null), source (string),
    image (binary: PNG/JPEG bytes) or pixels (list of numbers),
    and where the input has them: height, width, channels, label (hive ``label=V`` folders too).

:func:`training.data.validate.validate_batch`, the other half, turns a batch into float32 images
and a reason for every row it rejects; the scaling rule is written down there.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from training.data.builtin import BUILTIN
from training.data.images import IMAGE_SUFFIXES, DataError, ImageData, parquet_files
from training.data.validate import READ_ERROR, UNIT_PIXELS
from training.limits import DEFAULT_SHARD_ROWS  # also vae score's default (pipeline.beam.defaults)
from training.paths import is_remote

PIXEL_COLUMNS = ("image", "pixels")
INPUT_COLUMNS = ("example_id", "image", "pixels", "height", "width", "channels", "label")
ID_COLUMNS = ("example_id", "sample_id")  # sample_id: the id of a row of vae generate's synthetic/
LABEL_NAME = "label_name"  # vae generate's class name for `label`; read as the label where present
# Inputs whose pixels are already in [0, 1] whatever the reading model's pixel scale: the built-in
# and in-memory data sets, and Parquet files whose schema metadata carries UNIT_PIXELS_KEY (vae
# generate's synthetic/). The reader marks their batches with the UNIT_PIXELS column.
UNIT_PIXELS_KEY = b"vae.pixels_in_unit_range"

SPLITS = ("train", "validation", "calibration", "holdout", "test")  # test: the holdout, its older name


# --- shards: what one worker reads --------------------------------------------------------------


def _open(path: str):
    """A local path as is; a URL (gs://, s3://, hdfs://) as a file opened through pyarrow's file systems."""
    if is_remote(path):
        from pyarrow import fs

        filesystem, inner = fs.FileSystem.from_uri(path)
        return filesystem.open_input_file(inner)
    return path


def _list_remote(spec: str) -> list[str]:
    """The Parquet files under a URL (or the URL itself if it names one), skipping hidden and
    ``_``-prefixed files and folders as :func:`training.data.images.parquet_files` does locally."""
    from pyarrow import fs

    filesystem, inner = fs.FileSystem.from_uri(spec)
    if spec.endswith(".parquet"):
        return [spec]
    root = inner.rstrip("/")
    infos = filesystem.get_file_info(fs.FileSelector(root, recursive=True, allow_not_found=True))
    prefix = _url_prefix(spec, inner)
    files = []
    for info in infos:
        rel = info.path[len(root) :].lstrip("/")
        if info.is_file and rel.endswith(".parquet") and not any(p.startswith((".", "_")) for p in rel.split("/")):
            files.append(prefix + info.path.lstrip("/") if prefix.endswith("/") else prefix + info.path)
    return sorted(files)


def _url_prefix(spec: str, inner: str) -> str:
    """What goes before a file system path to make it a URL again: ``s3://`` (the bucket is in the
    path), or ``hdfs://HOST:PORT/``, whose file system paths leave the host out."""
    scheme, rest = spec.split("://", 1)
    rest, tail = rest.split("?", 1)[0].rstrip("/"), inner.strip("/")
    authority = rest[: len(rest) - len(tail)].strip("/") if rest.endswith(tail) else ""
    return f"{scheme}://{authority}/" if authority else f"{scheme}://"


HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


def hive_partitions(relative_path: str) -> tuple[tuple[str, str | None], ...]:
    """The ``KEY=VALUE`` folder names on a file's path below its dataset root, as (key, value)
    pairs; ``__HIVE_DEFAULT_PARTITION__`` is a null value. ``label=3/part-0.parquet`` -> (("label", "3"),)."""
    pairs = []
    for part in PurePosixPath(relative_path).parts[:-1]:
        key, sep, value = part.partition("=")
        if sep and key:
            pairs.append((key, None if value == HIVE_NULL else value))
    return tuple(pairs)


def _source_columns(batch: pa.RecordBatch, source: str, id_prefix: str, first_row: int) -> dict[str, pa.Array]:
    """``example_id`` (the input's, or ``<id_prefix><row>`` where it has none), ``source`` and
    ``source_row`` (the row's position in its source: the file row, or 0 for an image file)."""
    n = batch.num_rows
    rows = pc.cast(pa.array(np.arange(first_row, first_row + n, dtype=np.int64)), pa.string())
    generated = pc.binary_join_element_wise(id_prefix, rows, "")
    given = next((c for c in ID_COLUMNS if c in batch.schema.names), None)
    ids = generated if given is None else pc.coalesce(pc.cast(batch.column(given), pa.string()), generated)
    return {
        "example_id": ids,
        "source": pa.repeat(pa.scalar(source, pa.string()), n),
        "source_row": pa.array(np.arange(first_row, first_row + n, dtype=np.int64)),
    }


def _with_source(
    batch: pa.RecordBatch, source: str, id_prefix: str, first_row: int, unit_pixels: bool = False
) -> pa.RecordBatch:
    columns = _source_columns(batch, source, id_prefix, first_row)
    names = batch.schema.names
    for name in INPUT_COLUMNS[1:]:
        if name in names:
            columns[name] = batch.column(name)
    if LABEL_NAME in names:  # the class name, where the writer gave one
        given = batch.column(LABEL_NAME)
        columns["label"] = (
            given if "label" not in names else pc.coalesce(given, pc.cast(batch.column("label"), pa.string()))
        )
    if unit_pixels or UNIT_PIXELS in names:
        columns[UNIT_PIXELS] = pa.repeat(pa.scalar(True), batch.num_rows)
    return pa.RecordBatch.from_pydict(columns)


@dataclass(frozen=True)
class ParquetShard:
    """Consecutive row groups of one Parquet file; ``first_row`` is the file row of the first."""

    path: str
    row_groups: tuple[int, ...]
    first_row: int
    num_rows: int
    id_prefix: str
    partitions: tuple[tuple[str, str | None], ...] = ()  # hive KEY=VALUE folders, read as columns
    index: int = 0
    total: int = 1

    @property
    def name(self) -> str:
        return f"{self.path} rows {self.first_row}-{self.first_row + self.num_rows - 1}"

    def _with_partitions(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Adds the hive partition values as columns the file does not have itself."""
        extra = [(k, v) for k, v in self.partitions if k in INPUT_COLUMNS and k not in batch.schema.names]
        for key, value in extra:
            batch = batch.append_column(key, pa.repeat(pa.scalar(value, pa.string()), batch.num_rows))
        return batch

    def read(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        import pyarrow.parquet as pq

        try:
            file = pq.ParquetFile(_open(self.path))
            columns = [c for c in INPUT_COLUMNS + ID_COLUMNS[1:] + (LABEL_NAME,) if c in file.schema_arrow.names]
            unit = UNIT_PIXELS_KEY in (file.schema_arrow.metadata or {})
            row = self.first_row
            if not any(c in columns for c in PIXEL_COLUMNS):  # every row is rejected; read only the ids
                columns = [c for c in columns if c in ("label", LABEL_NAME, *ID_COLUMNS)]
            if not columns:
                for start in range(0, self.num_rows, batch_size):
                    n = min(batch_size, self.num_rows - start)
                    empty = self._with_partitions(pa.RecordBatch.from_pydict({"_": pa.nulls(n)}))
                    yield _with_source(empty, self.path, self.id_prefix, row + start)
                return
            for batch in file.iter_batches(batch_size=batch_size, row_groups=list(self.row_groups), columns=columns):
                yield _with_source(self._with_partitions(batch), self.path, self.id_prefix, row, unit)
                row += batch.num_rows
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{self.name}: cannot read row groups {list(self.row_groups)} ({exc})") from exc


@dataclass(frozen=True)
class NpzShard:
    """Rows ``start:stop`` of the ``x`` (and ``y``) arrays of an NPZ file."""

    path: str
    start: int
    stop: int
    id_namespace: str = ""
    index: int = 0
    total: int = 1

    @property
    def name(self) -> str:
        return f"{self.path} rows {self.start}-{self.stop - 1}"

    def read(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        with np.load(_open(self.path), allow_pickle=False) as archive:
            x = archive["x"][self.start : self.stop]
            y = archive["y"][self.start : self.stop].reshape(-1) if "y" in archive.files else None
        x = x[..., None] if x.ndim == 3 else x
        height, width, channels = x.shape[1:]
        flat = x.reshape(len(x), -1)
        prefix = f"{self.id_namespace}{PurePosixPath(self.path).name}:"
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


def _folder_label(relative_path: str) -> str | None:
    """The label a file's folder names: ``cat/x.png`` -> ``cat``; hive style ``label=3/x.png`` -> ``3``."""
    labels = dict(hive_partitions(relative_path))
    return labels["label"] if "label" in labels else str(PurePosixPath(relative_path).parent)


@dataclass(frozen=True)
class ImageFilesShard:
    """PNG/JPEG files under ``root``; with ``labelled`` a file's sub-folder names its label."""

    root: str
    files: tuple[str, ...]  # relative to root, POSIX style
    labelled: bool
    id_namespace: str = ""
    index: int = 0
    total: int = 1

    @property
    def name(self) -> str:
        return f"{self.root}: {self.files[0]} .. {self.files[-1]}"

    def read(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        for start in range(0, len(self.files), batch_size):
            names = self.files[start : start + batch_size]
            paths = [f"{self.root.rstrip('/')}/{name}" for name in names]
            blobs, errors = [], []
            for path in paths:
                try:
                    with open(path, "rb") if not is_remote(path) else _open(path) as handle:
                        blobs.append(handle.read())
                    errors.append(None)
                except OSError as exc:  # a broken link, no permission: that row is rejected, not the run
                    blobs.append(None)
                    errors.append(f"unreadable image: cannot read the file ({exc.strerror or exc})")
            columns = {
                "example_id": pa.array([self.id_namespace + name for name in names], pa.string()),
                "source": pa.array(paths, pa.string()),
                "source_row": pa.array(np.zeros(len(names), np.int64)),
                "image": pa.array(blobs, pa.binary()),
                READ_ERROR: pa.array(errors, pa.string()),
            }
            if self.labelled:
                columns["label"] = pa.array([_folder_label(name) for name in names], pa.string())
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


def plan_input(
    spec: str | ImageData, *, shard_rows: int = DEFAULT_SHARD_ROWS, split_seed: int = 0, id_namespace: str = ""
) -> InputPlan:
    """Cuts an input into shards of about ``shard_rows`` rows (Parquet: whole row groups).

    ``spec``: ``digits`` (all 1,797), ``digits:train|validation|calibration|holdout`` (that part of
    :func:`training.data.training_split` with ``split_seed``, as ``vae train --seed`` splits; the
    holdout is the same rows for every seed; ``test`` is the holdout),
    ``mnist``/``fashion_mnist`` (downloaded), a ``.parquet`` file or a folder of them, an ``.npz``
    file, a folder of PNG/JPEG files, or an :class:`ImageData` already in memory.

    ``id_namespace`` is put before the ids the reader makes up (``FILE:ROW``, a file's relative
    path), never before ids the input gives: reading several inputs as one, it keeps two inputs'
    ``part-0.parquet:0`` apart.
    """
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be at least 1, got {shard_rows}")
    if isinstance(spec, ImageData):
        return plan_image_data(spec, shard_rows)
    name, _, part = spec.partition(":")
    if name in BUILTIN and not Path(spec).exists():
        from training.data.builtin import load_builtin
        from training.data.splits import training_split

        data = load_builtin(name)
        if part:
            if part not in SPLITS:
                raise DataError(f"{spec}: the part must be one of {', '.join(SPLITS)}, e.g. {name}:test")
            data = getattr(training_split(data, seed=split_seed), "holdout" if part == "test" else part)
            data = ImageData(data.images, data.labels, data.example_ids, data.class_names, spec)
        return plan_image_data(data, shard_rows)
    if spec.endswith(".npz"):
        return plan_npz(spec, shard_rows, id_namespace)
    if is_remote(spec):
        return plan_parquet(spec, shard_rows, id_namespace)
    path = Path(spec)
    if not path.exists():
        raise DataError(f"{spec}: no such file or folder, and not a built-in data set (digits, digits:test, ...)")
    if path.suffix == ".parquet" or (path.is_dir() and parquet_files(path)):
        return plan_parquet(spec, shard_rows, id_namespace)
    if path.is_dir():
        return plan_image_folder(path, shard_rows, id_namespace)
    raise DataError(f"{spec}: unsupported input; give a .parquet file or folder, an .npz file or a folder of PNGs")


def plan_parquet(spec: str, shard_rows: int, id_namespace: str = "") -> InputPlan:
    import pyarrow.parquet as pq

    if is_remote(spec):
        files = _list_remote(spec)
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
        prefix = f"{id_namespace}{rel}:"
        groups: list[int] = []
        first = rows = 0
        for g in range(meta.num_row_groups):
            groups.append(g)
            rows += meta.row_group(g).num_rows
            if rows >= shard_rows or g == meta.num_row_groups - 1:
                if rows:
                    shards.append(ParquetShard(file, tuple(groups), first, rows, prefix, hive_partitions(rel)))
                first, groups, rows = first + rows, [], 0
        total += meta.num_rows
    return _numbered(shards, total, f"{spec} ({len(files)} Parquet file{'s' * (len(files) != 1)})")


def plan_npz(spec: str, shard_rows: int, id_namespace: str = "") -> InputPlan:
    try:
        with np.load(_open(spec), allow_pickle=False) as archive:
            if "x" not in archive.files:
                raise DataError(f"{spec}: no array named 'x' (found: {', '.join(archive.files) or 'none'})")
            x = archive["x"]
            y_shape = archive["y"].shape if "y" in archive.files else None
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{spec}: not a readable .npz file ({exc})") from exc
    real = np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)
    if x.ndim not in (3, 4) or not real:
        raise DataError(f"{spec}: 'x' must be real numbers shaped (N, H, W) or (N, H, W, C), got {x.dtype} {x.shape}")
    if y_shape is not None and (len(y_shape) not in (1, 2) or y_shape[1:] not in ((), (1,))):
        raise DataError(f"{spec}: 'y' must hold one label per image, shaped (N,) or (N, 1), got {y_shape}")
    if y_shape is not None and y_shape[0] != len(x):
        raise DataError(f"{spec}: 'y' has {y_shape[0]} labels for {len(x)} images")
    n = len(x)
    shards = [NpzShard(spec, start, min(start + shard_rows, n), id_namespace) for start in range(0, n, shard_rows)]
    return _numbered(shards, n, f"{spec} (NPZ, {n} rows)")


def plan_image_folder(path: Path, shard_rows: int, id_namespace: str = "") -> InputPlan:
    files = sorted(
        p.relative_to(path).as_posix()
        for p in path.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not any(s.startswith((".", "_")) for s in p.relative_to(path).parts)
        and not p.is_dir()  # a folder named x.png holds images, it is not one
    )
    if not files:
        raise DataError(f"{path}: no PNG or JPEG images found")
    labelled = all("/" in f for f in files)
    shards = [
        ImageFilesShard(str(path), tuple(files[i : i + shard_rows]), labelled, id_namespace)
        for i in range(0, len(files), shard_rows)
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
        "source_row": pa.array(np.arange(n, dtype=np.int64)),
        "pixels": pa.FixedSizeListArray.from_arrays(pa.array(flat), height * width * channels),
        "height": pa.repeat(pa.scalar(height, pa.int32()), n),
        "width": pa.repeat(pa.scalar(width, pa.int32()), n),
        "channels": pa.repeat(pa.scalar(channels, pa.int32()), n),
    }
    if data.labels is not None:  # class indices; read_images keeps the data set's own class order
        columns["label"] = pa.array(np.asarray(data.labels, dtype=np.int64))
    columns[UNIT_PIXELS] = pa.repeat(pa.scalar(True), n)  # ImageData holds images in [0, 1]
    return pa.RecordBatch.from_pydict(columns)


def plan_image_data(data: ImageData, shard_rows: int) -> InputPlan:
    batch = image_data_batch(data)
    shards = [ArrowShard(batch.slice(i, shard_rows), data.source) for i in range(0, batch.num_rows, shard_rows)]
    return _numbered(shards, batch.num_rows, f"{data.source} ({len(data)} rows in memory)")
