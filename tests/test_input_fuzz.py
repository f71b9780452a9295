"""The input contract under generated input: random bytes as images, random Parquet schemas and
types, huge declared sizes, nested and null lists, odd encodings. Whatever comes in, the reader and
the validator raise nothing but a ``DataError`` naming the file, and every row read is either
scored or rejected with a reason (scored + rejected = read).

The examples are derandomised and their number fixed, so CI runs the same ones every time (about
half a minute on 2 cores)."""

from __future__ import annotations

import io
import re
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from training.data import DataError  # noqa: E402
from training.data.reader import plan_input  # noqa: E402
from training.data.validate import ModelSpec, validate_batch  # noqa: E402

SHAPE = (4, 4, 1)
SPECS = (ModelSpec(SHAPE), ModelSpec(SHAPE, 3, ("a", "b", "c")), ModelSpec((4, 4, 3), pixel_scale=16.0))
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ADDRESS = re.compile(r"object at|\bat 0x[0-9a-fA-F]+")  # a Python object's repr


# --- generated images ---------------------------------------------------------------------------


def _png(mode: str, width: int, height: int, seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    elif mode == "P-grey":
        image = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)).convert("P")
        image.putpalette([v for i in range(256) for v in (i, i, i)])
    else:
        channels = {"L": 1, "1": 1, "LA": 2, "RGB": 3, "RGBA": 4, "P": 3}[mode]
        array = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
        image = Image.fromarray(array[..., 0] if channels == 1 else array[..., :3] if mode == "P" else array)
        image = image.convert(mode) if mode in ("1", "P") else image
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _declared_png(width: int, height: int, tail: bytes) -> bytes:
    """A PNG signature and IHDR that declare any size, followed by anything."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + tail


image_bytes = st.one_of(
    st.binary(max_size=64),
    st.just(b""),
    st.builds(
        _png,
        st.sampled_from(["L", "1", "LA", "RGB", "RGBA", "P", "P-grey", "I;16"]),
        st.integers(1, 12),
        st.integers(1, 12),
        st.integers(0, 2**16),
    ),
    st.builds(
        lambda b, n: b[:n], st.builds(_png, st.just("L"), st.just(4), st.just(4), st.integers(0, 9)), st.integers(0, 80)
    ),
    st.builds(_declared_png, st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1), st.binary(max_size=32)),
)


def _check(batch: pa.RecordBatch, spec: ModelSpec) -> tuple[int, int]:
    """Validates one batch; asserts the property on it; returns (scored, rejected)."""
    valid, rejected = validate_batch(batch, spec)
    scored = 0 if valid is None else len(valid)
    refused = 0 if rejected is None else len(rejected)
    assert scored + refused == batch.num_rows
    if valid is not None:
        assert valid.images.dtype == np.float32 and valid.images.shape[1:] == spec.image_shape
        assert np.isfinite(valid.images).all() and valid.images.min() >= 0 and valid.images.max() <= 1
    if rejected is not None:
        for reason in rejected.reasons.to_pylist():
            assert reason and ":" in reason, reason
            assert not ADDRESS.search(reason), reason
    return scored, refused


@FUZZ
@given(blobs=st.lists(st.one_of(st.none(), image_bytes), min_size=1, max_size=6), spec=st.sampled_from(SPECS))
def test_any_image_bytes_are_scored_or_rejected_with_a_reason(blobs, spec):
    labels = pa.array(["a", None, "c", "b", "x", "0"][: len(blobs)], pa.string())
    batch = pa.RecordBatch.from_pydict(
        {
            "example_id": [str(i) for i in range(len(blobs))],
            "source": ["fuzz"] * len(blobs),
            "image": pa.array(blobs, pa.binary()),
            "label": labels,
        }
    )
    _check(batch, spec)


# --- generated Parquet files --------------------------------------------------------------------

NUMBERS = [pa.uint8(), pa.int8(), pa.int64(), pa.float16(), pa.float32(), pa.float64()]
NUMBER_VALUES = st.one_of(
    st.none(),
    st.integers(-300, 70000),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
)


@st.composite
def pixel_columns(draw, rows: int) -> pa.Array:
    """A ``pixels`` column of any type: lists of numbers of any length (nulls inside and out),
    nested lists, fixed-size lists, strings, plain numbers."""
    kind = draw(st.sampled_from(["list", "large_list", "fixed", "nested", "strings", "scalar", "list_of_strings"]))
    value_type = draw(st.sampled_from(NUMBERS))
    lengths = st.sampled_from([0, 1, 15, 16, 17, 48])

    def numbers(n: int) -> list:
        values = draw(st.lists(NUMBER_VALUES, min_size=n, max_size=n))
        if pa.types.is_integer(value_type):
            info = np.iinfo(value_type.to_pandas_dtype())
            return [None if v is None or not np.isfinite(v) else int(min(max(v, info.min), info.max)) for v in values]
        return [None if v is None else float(v) for v in values]

    if kind in ("list", "large_list"):
        rows_values = [
            None if draw(st.booleans()) and draw(st.booleans()) else numbers(draw(lengths)) for _ in range(rows)
        ]
        list_type = pa.list_(value_type) if kind == "list" else pa.large_list(value_type)
        return pa.array(rows_values, list_type)
    if kind == "fixed":
        return pa.array([numbers(16) for _ in range(rows)], pa.list_(value_type, 16))
    if kind == "nested":
        return pa.array([[numbers(4) for _ in range(4)] for _ in range(rows)], pa.list_(pa.list_(value_type)))
    if kind == "strings":
        return pa.array(draw(st.lists(st.one_of(st.none(), st.text(max_size=8)), min_size=rows, max_size=rows)))
    if kind == "list_of_strings":
        return pa.array([[str(i)] * 16 for i in range(rows)], pa.list_(pa.string()))
    return pa.array(numbers(rows), value_type)


def _any_column(draw, rows: int) -> pa.Array:
    """A column of a random simple type: ints, floats, strings (any unicode), binary, booleans, nulls."""
    kind = draw(st.sampled_from(["int", "float", "text", "binary", "bool", "null", "dict"]))
    if kind == "int":
        return pa.array(
            draw(st.lists(st.one_of(st.none(), st.integers(-(2**40), 2**40)), min_size=rows, max_size=rows))
        )
    if kind == "float":
        return pa.array(draw(st.lists(st.one_of(st.none(), st.floats()), min_size=rows, max_size=rows)), pa.float64())
    if kind == "text":
        return pa.array(draw(st.lists(st.one_of(st.none(), st.text(max_size=6)), min_size=rows, max_size=rows)))
    if kind == "binary":
        return pa.array(draw(st.lists(st.binary(max_size=6), min_size=rows, max_size=rows)), pa.binary())
    if kind == "bool":
        return pa.array(draw(st.lists(st.booleans(), min_size=rows, max_size=rows)))
    if kind == "dict":
        return pa.array(
            draw(st.lists(st.sampled_from(["a", "b", "7"]), min_size=rows, max_size=rows))
        ).dictionary_encode()
    return pa.nulls(rows)


@st.composite
def parquet_tables(draw) -> pa.Table:
    rows = draw(st.integers(0, 5))
    columns: dict[str, pa.Array] = {}
    image_kind = draw(st.sampled_from(["pixels", "image", "image_as_text", "both", "neither"]))
    if image_kind in ("pixels", "both"):
        columns["pixels"] = draw(pixel_columns(rows))
    if image_kind in ("image", "both"):
        columns["image"] = pa.array(
            draw(st.lists(st.one_of(st.none(), image_bytes), min_size=rows, max_size=rows)), pa.binary()
        )
    if image_kind == "image_as_text":
        columns["image"] = pa.array(["not bytes"] * rows)
    for name in ("height", "width", "channels", "label", "example_id", "label_name", "sample_id"):
        if draw(st.booleans()):
            columns[name] = _any_column(draw, rows)
    if "height" in columns and draw(st.booleans()):  # the right shape, sometimes
        columns["height"] = pa.array([4] * rows, pa.int32())
        columns["width"] = pa.array([4] * rows, pa.int32())
    return pa.table(columns) if columns else pa.table({"unrelated": pa.array(range(rows))})


@FUZZ
@given(table=parquet_tables(), spec=st.sampled_from(SPECS), cut=st.sampled_from([None, 0.5]))
def test_any_parquet_file_is_read_row_for_row_or_refused_by_name(table, spec, cut):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.parquet"
        pq.write_table(table, path, row_group_size=2)
        if cut:  # a truncated file
            data = path.read_bytes()
            path.write_bytes(data[: int(len(data) * cut)])
        try:
            plan = plan_input(str(path), shard_rows=3)
        except DataError as exc:
            assert str(path) in str(exc) and not ADDRESS.search(str(exc))
            return
        scored = rejected = 0
        for shard in plan.shards:
            try:
                batches = list(shard.read(2))
            except DataError as exc:
                assert str(path) in str(exc)
                return
            for batch in batches:
                s, r = _check(batch, spec)
                scored, rejected = scored + s, rejected + r
        assert scored + rejected == plan.total_rows == table.num_rows


@FUZZ
@given(table=parquet_tables(), conditional=st.booleans())
def test_training_reads_any_parquet_file_or_says_why_not(table, conditional):
    """The training path (one process, labels turned into classes, duplicate ids): every row is
    kept or quarantined, or the whole read is a ``DataError`` with a message."""
    from training.data.load import read_images

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.parquet"
        pq.write_table(table, path)
        try:
            result = read_images(str(path), shape=SHAPE, require_labels=conditional)
        except DataError as exc:
            assert str(exc) and not ADDRESS.search(str(exc))
            return
        assert len(result.data) + result.rejects.num_rows == result.rows_read == table.num_rows
        assert all(":" in r and not ADDRESS.search(r) for r in result.rejects.column("reason").to_pylist())
