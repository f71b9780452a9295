"""Validation of input record batches into float32 images, and a reason for every row rejected.

The scaling rule, the same for every row in every job (training, scoring, generation inputs,
evaluation); it looks at the column's type, never at a row's values:

- ``image`` (PNG/JPEG bytes): divided by the format's maximum, 255 for 8-bit and 65,535 for 16-bit;
- ``pixels`` of an integer type: divided by 255 (0-255 values);
- ``pixels`` of a float type: taken as they are, and must lie in [0, 1];
- a *pixel scale* S (``vae train --pixel-scale S``, e.g. 16 for 0-16 grey levels, 1 for 0/1
  integer masks, 255 for 0-255 floats) replaces the last two: numeric pixels are divided by S. The
  model records the scale its training data was read with (``pixel_scale`` in its config) and
  every job that feeds it scales numeric pixels the same way.

After scaling a row must lie in [0, 1]; a row outside, with NaN, infinite or null values, of the
wrong shape or size, undecodable, with a null or missing column, or (for a conditional model) with
a missing or unknown label is rejected with a reason naming the problem.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from training.data.images import ImageProblem, decode_image
from training.data.labels import class_indices, whole_number

#: a rejected row: where it came from and why (``raw``: its value, shortened, or null); the rejects
#: of ``vae score`` add the run's columns (pipeline.outputs.score_tables.REJECTS_SCHEMA)
REJECTS_SCHEMA = pa.schema(
    [
        pa.field("example_id", pa.string()),
        pa.field("source", pa.string()),
        pa.field("source_row", pa.int64()),
        pa.field("reason", pa.string()),
        pa.field("raw", pa.string()),
    ]
)

UNIT_PIXELS = "_pixels_in_unit_range"  # training.data.reader marks batches whose pixels are in [0, 1]
READ_ERROR = "_read_error"  # the reader's column for image files: why one could not be read (null if it was)

RAW_TEXT_LIMIT = 2_000
RAW_IMAGE_LIMIT = 16_384


# --- validation: record batch -> images + rejects -----------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """What validation needs to know about the model (small and picklable, unlike the model)."""

    image_shape: tuple[int, int, int]
    num_classes: int = 0
    class_names: tuple[str, ...] = ()
    pixel_scale: float | None = None  # numeric pixels are divided by this (None: the default rule)
    shape_owner: str = "the model"  # who expects ``image_shape``, for reject reasons

    @classmethod
    def of(cls, model) -> ModelSpec:
        scale = getattr(model, "pixel_scale", None)
        return cls(
            tuple(int(d) for d in model.image_shape),
            int(model.num_classes),
            tuple(model.class_names or ()),
            None if scale is None else float(scale),
        )

    @property
    def shape_text(self) -> str:
        return "x".join(str(d) for d in self.image_shape)


@dataclass
class ValidRows:
    """The scorable rows of one batch: float32 images in [0, 1] and what travels with them."""

    images: np.ndarray  # float32 (k, H, W, C)
    rows: np.ndarray  # int64 (k,) their positions in the batch
    labels: np.ndarray | None  # int64 (k,) class indices for a conditional model, else None
    label_out: pa.Array  # int64, null where unknown: the ``label`` output column
    example_ids: pa.Array
    sources: pa.Array
    source_rows: pa.Array  # int64: the row's position in its source (null where the reader gave none)

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class RejectedRows:
    example_ids: pa.Array
    sources: pa.Array
    source_rows: pa.Array
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


def _scale_rows(pix: np.ndarray, scale: float, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(float32 values divided by ``scale``, reason per row or None) for (k, P) raw pixel values;
    ``kind`` names the values in reasons (``integer pixels``, ``float pixels``, ``decoded images``)."""
    k = pix.shape[0]
    reasons = np.empty(k, dtype=object)
    if pix.shape[1] == 0:
        return pix.astype(np.float32), reasons
    finite = np.isfinite(pix).all(axis=1) if np.issubdtype(pix.dtype, np.floating) else np.ones(k, bool)
    reasons[~finite] = "not finite: NaN, infinite or null pixel values"
    with np.errstate(invalid="ignore"):
        lo, hi = pix.min(axis=1), pix.max(axis=1)
    bad = finite & ((lo < 0) | (hi > scale))
    for i in np.flatnonzero(bad):
        values = f"values in [{_fmt(lo[i])}, {_fmt(hi[i])}]"
        if (
            scale == 1.0
            and kind == "float pixels"
            and hi[i] <= 255
            and lo[i] >= 0
            and np.all(pix[i] == np.round(pix[i]))
        ):
            reasons[i] = (
                f"out of range: {values}; float pixels must lie in [0, 1]. These look like 0-255 values: store "
                "them as integers, or train with --pixel-scale 255"
            )
        else:
            reasons[i] = f"out of range: {values}; {kind} are divided by {_fmt(scale)} and must then lie in [0, 1]"
    images = pix.astype(np.float32)
    if scale != 1.0:  # a float32 division, as the image path does: the same bits for the same image
        images /= np.float32(scale)
    return images, reasons


def pixel_scale_of(integer_type: bool, pixel_scale: float | None = None) -> float:
    """The divisor the scaling rule (module docstring) applies to a numeric ``pixels`` column:
    ``pixel_scale`` if set, else 255 for an integer column and 1 for a float column."""
    if pixel_scale is not None:
        return float(pixel_scale)
    return 255.0 if integer_type else 1.0


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
        h, w = _dimension(batch.column("height"), -1), _dimension(batch.column("width"), -1)
        c = _dimension(batch.column("channels"), 1) if "channels" in names else np.ones(n, np.int64)
        verdicts.reject(
            (h < 1) | (w < 1) | (c < 1),
            "null value: height, width or channels is null, not a whole number, or not positive",
        )
        wrong = (h != expected[0]) | (w != expected[1]) | (c != expected[2])
        expects = f"{spec.shape_owner} expects {spec.shape_text}"
        verdicts.reject(wrong, _texts(wrong, lambda i: f"wrong shape: {h[i]}x{w[i]}x{c[i]} image, {expects}"))
        wrong_size = lengths != h * w * c
        verdicts.reject(
            wrong_size, _texts(wrong_size, lambda i: f"wrong size: {lengths[i]} pixels do not fit {h[i]}x{w[i]}x{c[i]}")
        )
    else:
        row_shape = tuple(shape_hint) if shape_hint else expected
        if row_shape != expected:
            hint = "x".join(map(str, row_shape))
            verdicts.reject(
                np.ones(n, bool), f"wrong shape: --shape {hint}, {spec.shape_owner} expects {spec.shape_text}"
            )
        wrong_size = lengths != size
        expects = f"{spec.shape_owner} expects {size} ({spec.shape_text})"
        verdicts.reject(wrong_size, _texts(wrong_size, lambda i: f"wrong size: {lengths[i]} pixels, {expects}"))
    good = np.flatnonzero(~verdicts.bad)
    flat = col.take(pa.array(good)).flatten() if len(good) < n else col.flatten()
    integer_type = pa.types.is_integer(value_type)  # by type: a null (read as NaN) does not change the rule
    values = flat.to_numpy(zero_copy_only=False)
    if not integer_type and not np.issubdtype(values.dtype, np.floating):
        values = values.astype(np.float64)
    return good, values.reshape(len(good), size), integer_type


def _dimension(col: pa.Array, null: int) -> np.ndarray:
    """A shape column as int64: ``null`` for a null, -1 for a value that is not a whole number
    (2.5, "two"), which Arrow's cast would raise on for the whole batch."""
    try:
        return pc.cast(col, pa.int64()).fill_null(null).to_numpy(zero_copy_only=False)
    except (pa.ArrowException, ValueError, TypeError):
        values = (null if v is None else whole_number(v) for v in col.to_pylist())
        return np.array([-1 if v is None else v for v in values], np.int64)


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
    read_errors = batch.column(READ_ERROR).to_pylist() if READ_ERROR in batch.schema.names else [None] * n
    for i, blob in enumerate(col.to_pylist()):
        if blob is None:
            reasons[i] = read_errors[i] or "null value: image is null"
            continue
        try:  # the header first: an image of another size is refused before its pixels are decoded
            array = decode_image(blob, "image", spec.image_shape, spec.shape_owner)
        except ImageProblem as exc:
            reasons[i] = exc.reason
            continue
        if array.shape != spec.image_shape:
            shape = "x".join(map(str, array.shape))
            reasons[i] = f"wrong shape: {shape} image, {spec.shape_owner} expects {spec.shape_text}"
            continue
        # the format's maximum: 255 for 8-bit images, 65,535 for 16-bit ones
        top = 65535.0 if array.dtype.itemsize > 1 else 255.0
        decoded.append(array.reshape(-1).astype(np.float32) / np.float32(top))
        good.append(i)
    failed = np.array([r is not None for r in reasons], dtype=bool)
    verdicts.reject(failed, reasons)
    values = np.stack(decoded) if decoded else np.empty((0, size), np.float32)
    return np.asarray(good, dtype=np.int64), values, True


def _labels(col: pa.Array | None, spec: ModelSpec, verdicts: _Verdicts) -> tuple[np.ndarray, np.ndarray]:
    """(int64 label per row, valid mask), by :mod:`training.data.labels`' rule. A conditional model
    rejects rows without one of its classes; a plain model keeps any whole number and leaves the rest
    null."""
    n = len(verdicts.bad)
    conditional = spec.num_classes > 0
    if col is None:
        if conditional:
            verdicts.reject(np.ones(n, bool), "missing label: the model is conditional and the input has no 'label'")
        return np.zeros(n, np.int64), np.zeros(n, bool)
    present = ~col.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):  # the same rule, vectorised
        raw = col.fill_null(0).to_numpy(zero_copy_only=False)
        if pa.types.is_floating(col.type):
            raw = raw.astype(np.float64)
            whole = np.isfinite(raw) & (raw == np.round(raw)) & (np.abs(raw) < 2.0**63)
        else:  # uint64 past int64 is no label
            whole = raw <= np.iinfo(np.int64).max if raw.dtype == np.uint64 else np.ones(len(raw), bool)
        values = np.where(whole, raw, 0).astype(np.int64)
        known = present & whole
        if conditional:
            known &= (values >= 0) & (values < spec.num_classes)
    else:
        classes = (spec.class_names or [str(i) for i in range(spec.num_classes)]) if conditional else ()
        values, known = class_indices(col.to_pylist(), classes)
    if conditional:
        verdicts.reject(~present, "missing label: label is null and the model is conditional", about_label=True)
        unknown = present & ~known
        if unknown.any():
            classes = ", ".join(spec.class_names[:12]) + (", ..." if len(spec.class_names) > 12 else "")
            texts = col.to_pylist()
            reason = np.array(
                [f"unknown label: {t!r} is not one of the model's classes ({classes})" for t in texts], dtype=object
            )
            verdicts.reject(unknown, reason, about_label=True)
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


def _source_rows(batch: pa.RecordBatch) -> pa.Array:
    if "source_row" in batch.schema.names:
        return pc.cast(batch.column("source_row"), pa.int64())
    return pa.nulls(batch.num_rows, pa.int64())


def validate_batch(
    batch: pa.RecordBatch,
    spec: ModelSpec,
    shape_hint: tuple[int, int, int] | None = None,
    pixel_scale: float | None = None,
) -> tuple[ValidRows | None, RejectedRows | None]:
    """Splits a record batch into the rows the model can score and the rows it cannot.

    ``pixel_scale`` overrides ``spec.pixel_scale`` (the scale the model was trained with)."""
    n = batch.num_rows
    verdicts = _Verdicts(n)
    names = batch.schema.names
    if "pixels" in names:
        good, raw, integer_type = _pixel_rows(batch, spec, shape_hint, verdicts)
        scale = pixel_scale_of(integer_type, spec.pixel_scale if pixel_scale is None else pixel_scale)
        if UNIT_PIXELS in names:  # already in [0, 1] (built-in, in-memory, vae generate's synthetic/)
            scale = 1.0
        kind = "integer pixels" if integer_type else "float pixels"
    elif "image" in names:
        good, raw, _ = _image_rows(batch, spec, verdicts)  # already divided by the format's maximum
        scale, kind = 1.0, "decoded images"
    else:
        verdicts.reject(np.ones(n, bool), "missing column: the input has no 'image' or 'pixels' column")
        good, raw = np.empty(0, np.int64), np.empty((0, math.prod(spec.image_shape)))
        scale, kind = 1.0, "pixels"
    images, pixel_reasons = _scale_rows(raw, scale, kind)
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
            rows=rows,
            labels=row_labels if spec.num_classes else None,
            label_out=pa.array(row_labels, pa.int64(), mask=~known),
            example_ids=batch.column("example_id").take(pa.array(rows)),
            sources=batch.column("source").take(pa.array(rows)),
            source_rows=_source_rows(batch).take(pa.array(rows)),
        )
    rejected = None
    if verdicts.bad.any():
        rows = np.flatnonzero(verdicts.bad)
        index = pa.array(rows)
        rejected = RejectedRows(
            example_ids=batch.column("example_id").take(index),
            sources=batch.column("source").take(index),
            source_rows=_source_rows(batch).take(index),
            reasons=pa.array(verdicts.reasons[rows].tolist(), pa.string()),
            raws=pa.array([_raw_text(batch, int(i), bool(verdicts.raw_is_label[i])) for i in rows], pa.string()),
        )
    return valid, rejected


def duplicate_rows(example_ids, sources, source_rows) -> tuple[np.ndarray, list[str]]:
    """The rule for a repeated ``example_id``, the same in every job: of the rows that share an id,
    the one first by (``source``, ``source_row``) is kept and every other is rejected. Returns the
    mask of rows to reject (aligned with the inputs) and a reason for each, in row order."""
    import pandas as pd

    ids = pa.array(example_ids, pa.string()) if not isinstance(example_ids, pa.Array) else example_ids
    counts = pa.table({"id": ids}).group_by("id").aggregate([("id", "count")])
    repeated_ids = counts.filter(pc.greater(counts.column("id_count"), 1)).column("id")
    if len(repeated_ids) == 0:  # the usual case: no Python object per row
        return np.zeros(len(ids), dtype=bool), []
    frame = pd.DataFrame(
        {
            "id": np.asarray(example_ids, dtype=object),
            "source": np.asarray(sources, dtype=object),
            "row": pd.array(source_rows, dtype="Int64").fillna(-1),
        }
    )
    repeated = frame["id"].duplicated(keep=False).to_numpy()
    mask = np.zeros(len(frame), dtype=bool)
    if not repeated.any():
        return mask, []
    group = frame[repeated].sort_values(["id", "source", "row"], kind="stable")
    later = group["id"].duplicated(keep="first")
    kept = group[~later].set_index("id")
    mask[group.index[later.to_numpy()]] = True
    reasons = [
        f"duplicate example_id: {i!r} is kept from {kept.at[i, 'source']} row {kept.at[i, 'row']}"
        for i in frame["id"].to_numpy()[mask]
    ]
    return mask, reasons
