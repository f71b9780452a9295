"""A whole data set in one process, through the same reader and validator as the Beam jobs.

Training and evaluation read their images here: every input is cut into shards
(:func:`training.data.reader.plan_input`), read as Arrow record batches and validated batch by
batch (:func:`training.data.validate.validate_batch`) into one preallocated float32 array, so an
image means the same thing here as in ``vae score``. Rows that cannot be used are quarantined in a
rejects table (``example_id``, ``source``, ``reason``, ``raw``), not dropped silently.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from training.data.images import UNLABELLED, DataError, ImageData, decode_image, take_rows
from training.data.labels import label_classes
from training.data.reader import plan_input
from training.data.validate import REJECTS_SCHEMA, ModelSpec, duplicate_rows, validate_batch

log = logging.getLogger(__name__)

READ_BATCH_ROWS = 4096
RAW_KEPT = 10_000  # rejected rows whose raw value is kept; later ones keep their id, source and reason
Input = str | ImageData


@dataclass(frozen=True)
class ReadResult:
    """The usable images of one or more inputs, and every row that was not usable, with why."""

    data: ImageData | None  # None once a caller has let it go (training keeps only its parts)
    rejects: pa.Table  # REJECTS_SCHEMA
    rows_read: int
    pixel_scale: float | None  # the scale numeric pixels were read with (None: the default rule)

    @property
    def reject_rate(self) -> float:
        return self.rejects.num_rows / self.rows_read if self.rows_read else 0.0

    def reasons(self) -> Counter:
        """How many rows each kind of problem rejected (the text before the first colon)."""
        return Counter(r.split(":", 1)[0] for r in self.rejects.column("reason").to_pylist())

    def describe_rejects(self, examples: int = 3) -> str:
        """``12 rejected of 1,000 (1.2%): 10 x out of range, 2 x duplicate example_id; e.g. ...``"""
        counts = ", ".join(f"{n:,} x {reason}" for reason, n in self.reasons().most_common())
        rows = self.rejects.slice(0, examples).to_pylist()
        shown = "; ".join(f"{r['source']} example_id {r['example_id']}: {r['reason']}" for r in rows)
        share = f"{self.rejects.num_rows:,} rejected of {self.rows_read:,} rows ({self.reject_rate:.1%})"
        return f"{share}: {counts}; e.g. {shown}"


def _as_list(inputs: Input | Sequence[Input]) -> list[Input]:
    if isinstance(inputs, str | ImageData):
        return [inputs]
    return list(inputs)


def _first_shape(
    batch: pa.RecordBatch, shape_hint: tuple[int, int, int] | None
) -> tuple[tuple[int, int, int], int] | None:
    """(the image shape, its row) of the first row of ``batch`` that tells it (None if none does).
    An image too large to decode (:func:`~training.data.images.decode_image`) tells nothing."""
    names = batch.schema.names
    if "pixels" in names:
        if "height" in names and "width" in names:
            for i in range(batch.num_rows):
                h, w = batch.column("height")[i].as_py(), batch.column("width")[i].as_py()
                c = batch.column("channels")[i].as_py() if "channels" in names else 1
                try:
                    shape = int(h), int(w), int(c or 1)
                except (TypeError, ValueError):
                    continue
                if min(shape) > 0:
                    return shape, i
            return None
        if shape_hint is None:
            where = batch.column("source")[0]
            raise DataError(f"{where}: a 'pixels' column needs 'height'/'width' columns or a shape (--shape HxWxC)")
        return tuple(shape_hint), 0  # type: ignore[return-value]
    if "image" in names:
        for i, blob in enumerate(batch.column("image").to_pylist()):
            try:
                return tuple(decode_image(blob, "image").shape), i  # type: ignore[return-value]
            except DataError:
                continue
    return None


def read_images(
    inputs: Input | Sequence[Input],
    *,
    shape: tuple[int, int, int] | None = None,
    pixel_scale: float | None = None,
    require_labels: bool = False,
    split_seed: int = 0,
    batch_rows: int = READ_BATCH_ROWS,
    spill_dir: str | os.PathLike | None = None,
    memory_budget: int | None = None,
) -> ReadResult:
    """Reads every input (see :func:`training.data.reader.plan_input`) into one :class:`ImageData`.

    The first image read fixes the shape; later rows of another shape are rejected. ``example_id``
    must be unique across all inputs: a repeated id rejects every row after its first. With
    ``require_labels`` (a conditional model) a row without a label is kept with label ``UNLABELLED``
    (-1; semi-supervised training), a label that names no class is rejected, and a data set without
    any label is a :class:`DataError`. Labels that are all
    whole numbers keep their values, otherwise classes are the sorted label names. Memory: one
    float32 array of the usable images (4 bytes a pixel), no Python object per pixel; with
    ``spill_dir``, when that array would exceed ``memory_budget`` bytes (or always, if no budget
    is given), it is a memory-mapped ``.npy`` file in ``spill_dir`` instead, filled batch by batch."""
    if pixel_scale is not None and not pixel_scale > 0:
        raise ValueError(f"--pixel-scale must be positive, got {pixel_scale}")
    sources = _as_list(inputs)
    if not sources:
        raise DataError("no input given")
    # several inputs: made-up ids (FILE:ROW, a file's path) carry their input, so that two inputs'
    # part-0.parquet:0 stay apart; ids an input gives are kept as they are
    # (from the second input on: the first keeps the ids a single-input read and vae score give it,
    # so its rows stay in or out of the hash-chosen holdout whatever is added after it)
    spaces = [f"{s}/" if i and isinstance(s, str) else "" for i, s in enumerate(sources)]
    plans = [plan_input(s, split_seed=split_seed, id_namespace=ns) for s, ns in zip(sources, spaces, strict=True)]
    rows = _Rows(sum(p.total_rows for p in plans), shape, pixel_scale, spill_dir, memory_budget)
    for plan in plans:
        for shard in plan.shards:
            for batch in shard.read(batch_rows):
                rows.add(batch)
    rows.finish()
    if require_labels:
        _check_some_labels(rows, sources)
    if rows.rows_read == 0:
        raise DataError(f"{_describe(sources)}: the data set is empty")
    index = np.arange(rows.filled)
    if not len(index):
        raise _nothing_usable(sources, rows.rows_read, rows.rejects_table())
    index, encoded, names = _encode_labels(rows, index, sources, require_labels)
    # a repeated example_id, over the rows scoring would score too (label problems first, as there)
    source_rows = rows.source_rows.take(pa.array(index)).to_pylist()
    repeated, reasons = duplicate_rows(rows.ids[index], rows.sources[index], source_rows)
    if repeated.any():
        rows.quarantine(index[repeated], reasons)
        index = index[~repeated]
        encoded = None if encoded is None else encoded[~repeated]
        if not len(index):
            raise _nothing_usable(sources, rows.rows_read, rows.rejects_table())
    kept = rows.images[: rows.filled]
    if len(index) < rows.filled:
        kept = take_rows(rows.images, index)  # a memory map stays on disk
    data = ImageData(kept, encoded, rows.ids[index].astype(str), names, _describe(sources))
    return ReadResult(data, rows.rejects_table(), rows.rows_read, pixel_scale)


class _Rows:
    """What :func:`read_images` has read: the valid images in one float32 array (allocated once the
    first image tells the shape), their ids, sources, source rows and labels, and the rejects."""

    def __init__(
        self,
        total: int,
        shape: tuple[int, int, int] | None,
        pixel_scale: float | None,
        spill_dir: str | os.PathLike | None,
        memory_budget: int | None,
    ) -> None:
        self.total, self.shape, self.pixel_scale = total, shape, pixel_scale
        self.spill_dir, self.memory_budget = spill_dir, memory_budget
        self.spec: ModelSpec | None = None
        self.images = np.empty((0, 1, 1, 1), dtype=np.float32)
        self.filled = 0
        self.rows_read = 0
        self.has_label_column = False
        self.labels: list = []
        self._pending: list[pa.RecordBatch] = []  # batches read before any row told the shape
        self._ids: list[pa.Array] = []
        self._sources: list[pa.Array] = []
        self._source_rows: list[pa.Array] = []
        self._rejects: list[pa.Table] = []
        # the valid rows' columns, joined by finish()
        self.ids = np.empty(0, dtype=object)
        self.sources = np.empty(0, dtype=object)
        self.source_rows = pa.array([], pa.int64())

    def add(self, batch: pa.RecordBatch) -> None:
        self.rows_read += batch.num_rows
        if self.spec is None:
            first = _first_shape(batch, self.shape)
            if first is None:
                self._pending.append(batch)
                return
            found, row = first
            owner = f"the data set (first image: {batch.column('source')[row].as_py()})"
            self.spec = ModelSpec(found, pixel_scale=self.pixel_scale, shape_owner=owner)
            self.images = _allocate((self.total, *found), self.spill_dir, self.memory_budget)
            self._take_pending()
        self._take(batch)

    def finish(self) -> None:
        """Takes what is left and joins the columns (``ids``, ``sources``: numpy objects;
        ``source_rows``: Arrow int64)."""
        if self.spec is None:  # no row told a shape: every row is rejected for its own reason
            self.spec = ModelSpec(self.shape or (1, 1, 1), pixel_scale=self.pixel_scale)
            self.images = np.empty((0, *self.spec.image_shape), dtype=np.float32)
            self._take_pending()
        self.ids = np.asarray(pa.concat_arrays(self._ids).to_pylist() if self._ids else [], dtype=object)
        self.sources = np.asarray(pa.concat_arrays(self._sources).to_pylist() if self._sources else [], dtype=object)
        self.source_rows = pa.concat_arrays(self._source_rows) if self._source_rows else pa.array([], pa.int64())

    def quarantine(self, rows: np.ndarray, reasons: list[str]) -> None:
        """Rejects valid ``rows`` (indices into the images) for ``reasons``, after :meth:`finish`."""
        self._rejects.append(
            pa.table(
                [
                    pa.array(self.ids[rows].tolist(), pa.string()),
                    pa.array(self.sources[rows].tolist(), pa.string()),
                    self.source_rows.take(pa.array(rows, pa.int64())),
                    pa.array(reasons, pa.string()),
                    pa.nulls(len(rows), pa.string()),
                ],
                schema=REJECTS_SCHEMA,
            )
        )

    def rejects_table(self) -> pa.Table:
        return pa.concat_tables(self._rejects) if self._rejects else REJECTS_SCHEMA.empty_table()

    def _take_pending(self) -> None:
        for held in self._pending:
            self._take(held)
        self._pending = []

    def _take(self, batch: pa.RecordBatch) -> None:
        valid, rejected = validate_batch(batch, self.spec, self.shape, self.pixel_scale)
        if rejected is not None:
            kept_raw = sum(r.num_rows for r in self._rejects)
            raws = rejected.raws if kept_raw < RAW_KEPT else pa.nulls(len(rejected), pa.string())
            self._rejects.append(
                pa.table(
                    [rejected.example_ids, rejected.sources, rejected.source_rows, rejected.reasons, raws],
                    schema=REJECTS_SCHEMA,
                )
            )
        if valid is None:
            return
        k = len(valid)
        self.images[self.filled : self.filled + k] = valid.images
        self.filled += k
        self._ids.append(valid.example_ids)
        self._sources.append(valid.sources)
        self._source_rows.append(valid.source_rows)
        if "label" in batch.schema.names:
            self.has_label_column = True
            self.labels.extend(batch.column("label").take(pa.array(valid.rows)).to_pylist())
        else:
            self.labels.extend([None] * k)


def _check_some_labels(rows: _Rows, sources: list[Input]) -> None:
    if not rows.has_label_column:
        raise DataError(
            f"{_describe(sources)}: --conditional needs labels, and this data set has none "
            "(add a 'label' column, a 'y' array, or sub-folders named by label)"
        )
    if not any(v is not None for v in rows.labels):
        raise DataError(
            f"{_describe(sources)}: --conditional needs labels, and no row has one "
            "(rows without a label are learnt from alongside labelled ones, but not alone)"
        )


def _encode_labels(
    rows: _Rows, index: np.ndarray, sources: list[Input], require_labels: bool
) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """(the rows kept, their encoded labels, the class names); both None for unlabelled data. A
    conditional model (``require_labels``) learns from rows without a label too (label -1) and
    rejects a label that names no class; otherwise such labels make the data set unlabelled."""
    kept_labels = np.asarray(rows.labels, dtype=object)[index]
    present = np.asarray([v is not None for v in kept_labels], dtype=bool)
    if not (rows.has_label_column and (present.all() or (require_labels and present.any()))):
        if rows.has_label_column:
            log.info("%s: some rows have no label; the data set is read as unlabelled", _describe(sources))
        return index, None, None
    try:
        encoded, names, known = _labels_of_present(kept_labels, present, _fixed_classes(sources))
    except DataError as exc:
        if require_labels:
            raise DataError(f"{_describe(sources)}: {exc}") from exc
        log.warning("%s: %s; read as unlabelled", _describe(sources), exc)
        return index, None, None
    if known.all():
        return index, encoded, names
    if not require_labels:
        log.info("%s: some labels are not class names or indices; read as unlabelled", _describe(sources))
        return index, None, None
    rows.quarantine(
        index[~known],
        [
            f"unknown label: {v!r} is neither a class name nor a class index of {names[:12]}"
            for v in kept_labels[~known]
        ],
    )
    if not known.any():
        raise _nothing_usable(sources, rows.rows_read, rows.rejects_table())
    return index[known], encoded[known], names


def _allocate(shape: tuple[int, ...], spill_dir, memory_budget: int | None) -> np.ndarray:
    """The float32 array the images are read into: in memory, or a memory-mapped file in
    ``spill_dir`` when it and the parts a training split copies from it (as much again) would
    exceed ``memory_budget`` bytes."""
    size = math.prod(shape) * 4
    if spill_dir is None or (memory_budget is not None and 2 * size <= memory_budget):
        return np.empty(shape, dtype=np.float32)
    import uuid
    from pathlib import Path

    folder = Path(spill_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"images-{uuid.uuid4().hex[:8]}.npy"
    log.info("%.1f GB of images exceed the memory budget: reading them into %s", size / 1e9, path)
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)


def _labels_of_present(
    labels: np.ndarray, present: np.ndarray, classes: list[str] | None
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """:func:`label_classes` of the rows that have a label; the others get -1 (unlabelled) and count
    as known."""
    values, names, known = label_classes(labels[present].tolist(), classes)
    encoded = np.full(len(labels), UNLABELLED, np.int64)
    encoded[present] = values
    all_known = np.ones(len(labels), bool)
    all_known[present] = known
    return encoded, names, all_known


def _fixed_classes(sources: list[Input]) -> list[str] | None:
    """The class list of the first input that has its own, named classes in a fixed order (an
    in-memory data set, or Fashion-MNIST), else None."""
    from training.data.builtin import FASHION_NAMES

    for source in sources:
        names = source.class_names if isinstance(source, ImageData) else None
        if isinstance(source, str) and source.split(":")[0] == "fashion_mnist":
            names = FASHION_NAMES
        if names and list(names) != [str(i) for i in range(len(names))]:
            return list(names)
    return None


def _nothing_usable(sources: list[Input], rows_read: int, rejects: pa.Table) -> DataError:
    counts = Counter(r.split(":", 1)[0] for r in rejects.column("reason").to_pylist())
    first = rejects.slice(0, 1).to_pylist()
    example = f"; e.g. {first[0]['source']} example_id {first[0]['example_id']}: {first[0]['reason']}" if first else ""
    return DataError(
        f"{_describe(sources)}: no usable image in {rows_read:,} rows ("
        + ", ".join(f"{n:,} x {r}" for r, n in counts.most_common())
        + f"){example}"
    )


def _describe(sources: list[Input]) -> str:
    return " + ".join(s.source if isinstance(s, ImageData) else str(s) for s in sources)


def load(
    inputs: Input | Sequence[Input], shape: tuple[int, int, int] | None = None, pixel_scale: float | None = None
) -> ImageData:
    """Every row of ``inputs`` as an :class:`ImageData`, or a :class:`DataError` naming the rows
    that cannot be read (for callers with no rejects output; training uses :func:`read_images`)."""
    result = read_images(inputs, shape=shape, pixel_scale=pixel_scale)
    if result.rejects.num_rows:
        raise DataError(f"{result.data.source}: {result.describe_rejects()}")
    return result.data
