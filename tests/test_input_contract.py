"""One input contract for every job: the same images in any form read and score the same; hive
folders are columns; training quarantines bad rows; real plus synthetic images train a model."""

from __future__ import annotations

import io
import json
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.cli.main import main
from training import data
from training.data import DataError, read_images

FAST = ["--direct-running-mode", "in_memory", "--direct-num-workers", "1"]


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def digit_bytes() -> np.ndarray:
    """40 digits as 8-bit grey images (0-255), the form a PNG file holds."""
    return (data.load_digits().images[:40, ..., 0] * 255).round().astype(np.uint8)


def write_every_form(images: np.ndarray, folder) -> dict[str, str]:
    """The same images as a PNG folder, Parquet uint8 pixels, Parquet float pixels, Parquet PNG
    bytes and an NPZ file; ids are the PNG file names in every form that can carry ids."""
    n, h, w = images.shape
    ids = [f"img-{i:02d}.png" for i in range(n)]
    png_dir = folder / "png"
    png_dir.mkdir()
    for name, image in zip(ids, images, strict=True):
        (png_dir / name).write_bytes(png_bytes(image))
    (png_dir / ".hidden.png").write_bytes(b"not an image: hidden files are skipped")
    shape = {"height": [h] * n, "width": [w] * n, "channels": [1] * n}
    flat = images.reshape(n, -1)
    forms = {"png folder": str(png_dir)}
    for name, pixels in {
        "parquet uint8 pixels": pa.array(flat.tolist(), pa.list_(pa.uint8())),
        "parquet float pixels": pa.array((flat / np.float32(255)).astype(np.float32).tolist(), pa.list_(pa.float32())),
    }.items():
        path = folder / f"{name.replace(' ', '_')}.parquet"
        pq.write_table(pa.table({"example_id": ids, "pixels": pixels, **shape}), path)
        forms[name] = str(path)
    pq.write_table(pa.table({"example_id": ids, "image": [png_bytes(i) for i in images]}), folder / "bytes.parquet")
    forms["parquet png bytes"] = str(folder / "bytes.parquet")
    np.savez(folder / "u8.npz", x=images)
    forms["npz uint8"] = str(folder / "u8.npz")
    return forms


def test_the_same_images_in_every_form_read_identically(digit_bytes, tmp_path):
    forms = write_every_form(digit_bytes, tmp_path)
    read = {form: read_images(path) for form, path in forms.items()}
    expected = digit_bytes[..., None].astype(np.float32) / np.float32(255)
    for form, result in read.items():
        assert result.rejects.num_rows == 0, form
        np.testing.assert_array_equal(result.data.images, expected, err_msg=form)
    assert read["png folder"].data.example_ids.tolist() == read["parquet png bytes"].data.example_ids.tolist()


def test_hive_partition_folders_are_read_as_columns(tmp_path):
    digits = data.load_digits()
    for label in (3, 7):
        folder = tmp_path / "set" / "method=real" / f"label={label}"
        folder.mkdir(parents=True)
        rows = digits.images[digits.labels == label][:5]
        pixels = pa.array(rows.reshape(len(rows), -1).tolist(), pa.list_(pa.float32()))
        pq.write_table(pa.table({"pixels": pixels, "height": [8] * 5, "width": [8] * 5}), folder / "part-0.parquet")
    (tmp_path / "set" / "_SUCCESS").write_text("")
    result = read_images(str(tmp_path / "set"), require_labels=True)
    assert result.rejects.num_rows == 0
    assert sorted(result.data.labels.tolist()) == [3] * 5 + [7] * 5
    assert result.data.class_names == [str(i) for i in range(8)]


def test_repeated_example_ids_keep_the_row_first_by_source_and_row(tmp_path):
    pixels = pa.array([[0.5] * 4] * 3, pa.list_(pa.float32()))
    table = pa.table({"example_id": ["a", "b", "a"], "pixels": pixels, "height": [2] * 3, "width": [2] * 3})
    pq.write_table(table, tmp_path / "d.parquet")
    result = read_images(str(tmp_path / "d.parquet"))
    assert result.data.example_ids.tolist() == ["a", "b"]
    reject = result.rejects.to_pylist()[0]
    assert (
        reject["source_row"] == 2
        and reject["reason"] == f"duplicate example_id: 'a' is kept from {tmp_path}/d.parquet row 0"
    )
    with pytest.raises(DataError, match=r"1 rejected of 3 rows .*duplicate example_id"):
        data.load(str(tmp_path / "d.parquet"))


def test_several_inputs_are_one_data_set_and_keep_their_sources(digit_bytes, tmp_path):
    forms = write_every_form(digit_bytes[:10], tmp_path)
    result = read_images([forms["npz uint8"], "digits"])
    assert len(result.data) == 10 + 1797 and result.data.source == f"{forms['npz uint8']} + digits"


def test_a_pixel_scale_never_rescales_images_already_in_unit_range(tmp_path):
    """A model trained with --pixel-scale 16 still reads built-in, in-memory and vae generate's
    images as they are: the scale is for numeric pixels of the user's own files."""
    from training.data.reader import UNIT_PIXELS_KEY, image_data_batch
    from training.data.validate import ModelSpec, validate_batch

    digits = data.load_digits()
    valid, rejected = validate_batch(image_data_batch(digits), ModelSpec((8, 8, 1), pixel_scale=16.0))
    assert rejected is None and np.array_equal(valid.images, digits.images)
    pixels = pa.array(digits.images[:4].reshape(4, -1).tolist(), pa.list_(pa.float32()))
    table = pa.table({"pixels": pixels, "height": [8] * 4, "width": [8] * 4})
    pq.write_table(table.replace_schema_metadata({UNIT_PIXELS_KEY: b"1"}), tmp_path / "synthetic.parquet")
    raw = (digits.images[4:8] * 16).round().astype(np.uint8)
    np.savez(tmp_path / "raw.npz", x=raw)
    both = read_images([str(tmp_path / "synthetic.parquet"), str(tmp_path / "raw.npz")], pixel_scale=16)
    np.testing.assert_array_equal(both.data.images[:4], digits.images[:4])
    np.testing.assert_array_equal(both.data.images[4:], raw / np.float32(16))


def test_labels_mean_the_same_class_in_training_and_scoring(tmp_path):
    """Names make the classes (sorted) and whole numbers index them, in training as in scoring;
    a label that is neither is rejected for a conditional model, not turned into a new class."""
    from training.data.load import label_classes
    from training.data.validate import ModelSpec, validate_batch

    values, names, known = label_classes(["cat", "dog", "cat", -1, 2.5])
    assert names == ["cat", "dog"] and values[known].tolist() == [0, 1, 0]
    assert known.tolist() == [True, True, True, False, False]
    values, names, known = label_classes([3, "10", 2.0])
    assert names == [str(i) for i in range(11)] and values.tolist() == [3, 10, 2] and known.all()
    fashion = data.FASHION_NAMES  # a data set's own class order is kept, not sorted
    values, names, known = label_classes([0, "bag", 9], fashion)
    assert names == fashion and values.tolist() == [0, 8, 9] and known.all()

    batch = pa.RecordBatch.from_pydict(
        {
            "example_id": ["a", "b", "c"],
            "source": ["t"] * 3,
            "pixels": pa.array([[0.5] * 4] * 3, pa.list_(pa.float32())),
            "height": [2] * 3,
            "width": [2] * 3,
            "label": ["dog", "0", "7"],
        }
    )
    valid, rejected = validate_batch(batch, ModelSpec((2, 2, 1), 2, ("cat", "dog")))
    assert valid.labels.tolist() == [1, 0] and rejected.example_ids.to_pylist() == ["c"]  # as label_classes


def _scored_labels(labels: list, spec, label_type: pa.DataType | None = None) -> list:
    from training.data.validate import validate_batch

    n = len(labels)
    batch = pa.RecordBatch.from_pydict(
        {
            "example_id": [str(i) for i in range(n)],
            "source": ["t"] * n,
            "pixels": pa.array([[0.5] * 4] * n, pa.list_(pa.float32())),
            "height": [2] * n,
            "width": [2] * n,
            "label": pa.array(labels, label_type or pa.string()),
        }
    )
    valid, _ = validate_batch(batch, spec)
    out = [None] * n
    if valid is None:  # every row rejected
        return out
    for row, label in zip(valid.rows.tolist(), valid.label_out.to_pylist(), strict=True):
        out[row] = label
    return out


def test_one_label_rule_reads_odd_labels_without_a_traceback():
    """Signed digits are numbers (around them any whitespace, control characters such as \\x1f
    included), other digit-like text (superscripts, doubled signs) is not, nor is a number past
    int64, in training and scoring alike; a plain model carries any whole number through; True and
    False are names."""
    from training.data.labels import label_classes
    from training.data.validate import ModelSpec

    odd = ["-3", "+4", " 5 ", "--7", "\u00b2", "5\x1f", "99999999999999999999", "1.5", "nan", None]
    assert _scored_labels(odd, ModelSpec((2, 2, 1))) == [-3, 4, 5, None, None, 5, None, None, None, None]
    assert _scored_labels([1e20, -2.0, 3.0], ModelSpec((2, 2, 1)), pa.float64()) == [None, -2, 3]
    assert _scored_labels([7.0, 1e4], ModelSpec((2, 2, 1)), pa.float16()) == [7, 10000]
    assert _scored_labels([2**64 - 1, 2**63 - 1], ModelSpec((2, 2, 1)), pa.uint64()) == [None, 2**63 - 1]
    assert _scored_labels(["1" * 5000, "0" * 5000 + "1"], ModelSpec((2, 2, 1))) == [None, 1]
    decimals = [Decimal("3.00"), Decimal("3.50"), None]
    assert _scored_labels(decimals, ModelSpec((2, 2, 1)), pa.decimal128(10, 2)) == [3, None, None]
    values, names, known = label_classes(["+4", " 5 ", "-3", "1.5", "nan", "5\x1f", "99999999999999999999"])
    assert names == [str(i) for i in range(6)] and values[known].tolist() == [4, 5, 5] and known.sum() == 3
    values, names, known = label_classes([True, False, True])
    assert names == ["False", "True"] and values.tolist() == [1, 0, 1] and known.all()
    bools = ModelSpec((2, 2, 1), 2, ("False", "True"))
    assert _scored_labels([True, False, None], bools, pa.bool_()) == [1, 0, None]
    with pytest.raises(DataError, match="more than 100,000"):
        label_classes(["1000000000"])


_LABEL_KINDS = {
    "string": (
        pa.string(),
        st.one_of(st.text(max_size=4), st.integers(-3, 12).map(str), st.sampled_from(["cat", "dog"])),
    ),
    "int64": (pa.int64(), st.integers(-3, 12)),
    "float64": (pa.float64(), st.one_of(st.integers(-3, 12).map(float), st.floats(allow_nan=True))),
}


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(sorted(_LABEL_KINDS)).flatmap(
        lambda kind: st.tuples(
            st.just(kind), st.lists(st.one_of(st.none(), _LABEL_KINDS[kind][1]), min_size=1, max_size=12)
        )
    )
)
def test_training_and_scoring_read_every_label_alike(case):
    """A conditional model's classes, as training made them, read back the same per row in scoring,
    whatever the label column's type (scoring's numeric columns take a vectorised path)."""
    from training.data.labels import label_classes
    from training.data.validate import ModelSpec

    kind, labels = case
    classes = ["0", "1", "2", "cat", "dog"] if kind == "string" else [str(i) for i in range(10)]
    present = [v for v in labels if v is not None]
    values, _, known = label_classes(present, classes)
    expected = iter([int(v) if k else None for v, k in zip(values, known, strict=True)])
    trained = [None if v is None else next(expected) for v in labels]
    spec = ModelSpec((2, 2, 1), len(classes), tuple(classes))
    assert _scored_labels(labels, spec, _LABEL_KINDS[kind][0]) == trained


def test_several_inputs_keep_made_up_ids_apart(tmp_path):
    for day in ("day1", "day2"):
        (tmp_path / day).mkdir()
        pixels = pa.array([[0.5] * 4] * 3, pa.list_(pa.float32()))
        pq.write_table(
            pa.table({"pixels": pixels, "height": [2] * 3, "width": [2] * 3}), tmp_path / day / "part-0.parquet"
        )
    result = read_images([str(tmp_path / "day1"), str(tmp_path / "day2")])
    assert result.rejects.num_rows == 0 and len(result.data) == 6
    # the first input keeps the ids scoring gives it (and so its holdout); later ones carry their input
    assert result.data.example_ids[0] == "part-0.parquet:0"
    assert result.data.example_ids[3] == f"{tmp_path / 'day2'}/part-0.parquet:0"


def test_sparse_continuous_images_are_not_taken_for_binary_ones():
    from training.data import grey_levels

    rng = np.random.default_rng(0)
    images = np.zeros((1000, 28, 28, 1), np.float32)
    ink = rng.random(images.shape) < 0.008
    images[ink] = rng.random(int(ink.sum()))  # 99.2 % background, the ink continuous
    assert grey_levels(images) == 0
    digits = data.load_digits().images
    assert grey_levels(digits) == 17 and grey_levels((digits > 0.5).astype(np.float32)) == 2


def test_a_repeated_id_is_judged_after_the_label_checks_as_in_scoring(tmp_path):
    pixels = pa.array([[0.5] * 4] * 2, pa.list_(pa.float32()))
    table = pa.table({"example_id": ["a", "a"], "pixels": pixels, "height": [2, 2], "width": [2, 2], "label": [-3, 1]})
    pq.write_table(table, tmp_path / "l.parquet")
    result = read_images(str(tmp_path / "l.parquet"), require_labels=True)
    assert result.data.labels.tolist() == [1]  # row 1 stays: row 0 was rejected for its unknown label
    assert [r.split(":")[0] for r in result.rejects.column("reason").to_pylist()] == ["unknown label"]


def test_a_conditional_read_keeps_rows_without_a_label_as_unlabelled(tmp_path):
    """Semi-supervised training: a row with no label is kept, with label -1, not rejected; a label that
    names no class is still a reject; a data set with no label at all cannot train a conditional model."""
    pixels = pa.array([[0.5] * 4] * 4, pa.list_(pa.float32()))
    table = pa.table(
        {"example_id": list("abcd"), "pixels": pixels, "height": [2] * 4, "width": [2] * 4, "label": [None, 1, 0, -3]}
    )
    pq.write_table(table, tmp_path / "l.parquet")
    result = read_images(str(tmp_path / "l.parquet"), require_labels=True)
    assert result.data.labels.tolist() == [data.UNLABELLED, 1, 0]
    assert result.rejects.column("example_id").to_pylist() == ["d"]
    assert result.rejects.column("reason").to_pylist()[0].startswith("unknown label")
    plain = read_images(str(tmp_path / "l.parquet"))  # not conditional: labels that cannot all be read
    assert plain.data.labels is None and plain.rejects.num_rows == 0
    pq.write_table(table.set_column(4, "label", pa.array([None] * 4, pa.int64())), tmp_path / "none.parquet")
    with pytest.raises(DataError, match="no row has one"):
        read_images(str(tmp_path / "none.parquet"), require_labels=True)


@pytest.fixture
def bad_rows_parquet(tmp_path):
    """60 good digits and 2 bad rows (a NaN, a wrong size)."""
    digits = data.load_digits()
    rows = digits.images[:62].reshape(62, -1).astype(np.float32).tolist()
    rows[10][3] = float("nan")
    rows[20] = rows[20][:10]
    table = pa.table(
        {
            "example_id": [f"r{i}" for i in range(62)],
            "pixels": pa.array(rows, pa.list_(pa.float32())),
            "height": [8] * 62,
            "width": [8] * 62,
            "label": digits.labels[:62].tolist(),
        }
    )
    pq.write_table(table, tmp_path / "bad.parquet")
    return tmp_path / "bad.parquet"


def test_training_quarantines_bad_rows_and_logs_them_with_the_run(mlflow_store, bad_rows_parquet):
    import mlflow

    from training.config import TrainConfig
    from training.train import train

    quick = {"epochs": 1, "kl_warmup": 0, "early_stopping": 0, "score_samples": 2, "promote": "never"}
    with pytest.raises(DataError, match=r"2 rejected of 62 rows \(3\.2%\).*above --max-reject-rate 0\.01"):
        train(TrainConfig(data=str(bad_rows_parquet), model_name="vae-test-rejects", **quick))
    result = train(
        TrainConfig(data=str(bad_rows_parquet), model_name="vae-test-rejects", max_reject_rate=0.05, **quick)
    )
    run = mlflow.get_run(result.run_id)
    assert run.data.metrics["rows_read"] == 62 and run.data.metrics["rows_rejected"] == 2
    rejects = pq.read_table(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="rejects.parquet"))
    assert sorted(rejects.column("example_id").to_pylist()) == ["r10", "r20"]
    assert {r.split(":")[0] for r in rejects.column("reason").to_pylist()} == {"not finite", "wrong size"}


def test_data_beyond_the_memory_budget_is_streamed_from_disk(mlflow_store, tmp_path):
    """With a budget of 0 MiB the images go to a memory-mapped file and training streams batches
    from it; the parts and their fingerprints are those of the in-memory read."""
    from training.config import TrainConfig
    from training.data import fingerprint, training_split
    from training.train import train

    spilled = read_images("digits", spill_dir=tmp_path / "spill", memory_budget=0)
    assert isinstance(spilled.data.images, np.memmap)
    split = training_split(spilled.data, seed=0)
    assert all(isinstance(getattr(split, p).images, np.memmap) for p in ("train", "validation", "holdout"))
    in_memory = training_split(read_images("digits").data, seed=0)
    assert fingerprint(split.holdout) == fingerprint(in_memory.holdout)
    np.testing.assert_array_equal(split.train.images, in_memory.train.images)

    quick = {"epochs": 1, "kl_warmup": 0, "early_stopping": 0, "score_samples": 2, "promote": "never"}
    result = train(TrainConfig(model_name="vae-test-streamed", memory_budget_mb=0, **quick))
    assert isinstance(result.split.train.images, np.memmap) and np.isfinite(result.holdout_neg_elbo)
    from training import registry
    from training.train import _spill_folder

    assert result.split.holdout.subset(np.arange(3)).images.shape == (3, 8, 8, 1)  # still readable after training
    import socket

    dead = registry.work_dir() / f"spill-{socket.gethostname().replace('-', '_')}-999999999-x"  # a killed run's
    dead.mkdir()
    _spill_folder(registry.work_dir()).rmdir()
    assert not dead.exists()


@pytest.mark.slow
def test_the_augmentation_loop_closes(trained_conditional, mlflow_store, tmp_path):
    """generate -> train a conditional model on real + synthetic -> score synthetic/: no rejects."""
    runner = CliRunner()
    out = tmp_path / "out"
    uri = f"models:/{trained_conditional.model_name}/{trained_conditional.version}"
    generated = runner.invoke(
        main, ["generate", "--model", uri, "--method", "conditional", "--per-label", "6", "--output", str(out), *FAST]
    )
    assert generated.exit_code == 0, generated.output
    synthetic = read_images(str(out / "synthetic"), require_labels=True)
    assert synthetic.rejects.num_rows == 0 and len(synthetic.data) == 60
    assert sorted(set(synthetic.data.labels.tolist())) == list(range(10))

    result_json = tmp_path / "train.json"
    trained = runner.invoke(
        main,
        [
            "train",
            "--conditional",
            "--data",
            "digits",
            "--data",
            str(out / "synthetic"),
            "--model-name",
            "vae-test-augmented",
            "--epochs",
            "2",
            "--kl-warmup",
            "0",
            "--early-stopping",
            "0",
            "--score-samples",
            "2",
            "--result-json",
            str(result_json),
        ],
    )
    assert trained.exit_code == 0, trained.output
    outcome = json.loads(result_json.read_text())
    import mlflow

    run = mlflow.get_run(outcome["run_id"])
    assert run.data.metrics["rows_read"] == 1797 + 60 and run.data.metrics["rows_rejected"] == 0

    scored = runner.invoke(
        main,
        [
            "score",
            "--model",
            f"models:/vae-test-augmented/{outcome['version']}",
            "--input",
            str(out / "synthetic"),
            "--output",
            str(tmp_path / "scored"),
            *FAST,
        ],
    )
    assert scored.exit_code == 0, scored.output
    assert pq.read_table(tmp_path / "scored" / "rejects").num_rows == 0
    scores = pq.read_table(tmp_path / "scored" / "scores")
    assert scores.num_rows == 60 and scores.column("label").null_count == 0


@pytest.mark.slow
def test_the_same_images_in_every_form_get_identical_scores(trained_plain, mlflow_store, digit_bytes, tmp_path):
    forms = write_every_form(digit_bytes, tmp_path)
    uri = f"models:/{trained_plain.model_name}/{trained_plain.version}"
    runner = CliRunner()
    scores = {}
    for form in ("png folder", "parquet uint8 pixels", "parquet float pixels", "parquet png bytes"):
        out = tmp_path / form.replace(" ", "_")
        result = runner.invoke(main, ["score", "--model", uri, "--input", forms[form], "--output", str(out), *FAST])
        assert result.exit_code == 0, result.output
        table = pq.read_table(out / "scores").sort_by("example_id")
        assert table.num_rows == len(digit_bytes), form
        scores[form] = table
    first = scores["png folder"]
    for form, table in scores.items():
        assert table.column("example_id").to_pylist() == first.column("example_id").to_pylist(), form
        for column in ("anomaly_score", "neg_elbo", "reconstruction_nll", "kl"):
            np.testing.assert_array_equal(table.column(column).to_numpy(), first.column(column).to_numpy(), form)


@pytest.mark.slow
def test_scoring_and_training_keep_the_same_row_of_a_repeated_id(trained_plain, mlflow_store, tmp_path):
    digits = data.load_digits()
    rows = digits.images[:6].reshape(6, -1).tolist()
    ids = ["a", "b", "a", "c", "b", "a"]
    table = pa.table(
        {"example_id": ids, "pixels": pa.array(rows, pa.list_(pa.float32())), "height": [8] * 6, "width": [8] * 6}
    )
    pq.write_table(table, tmp_path / "dups.parquet", row_group_size=2)  # repeats across shards too
    uri = f"models:/{trained_plain.model_name}/{trained_plain.version}"
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        [
            "score",
            "--model",
            uri,
            "--input",
            str(tmp_path / "dups.parquet"),
            "--output",
            str(out),
            "--shard-rows",
            "2",
            "--max-reject-rate",
            "1",
        ]
        + FAST,
    )
    assert result.exit_code == 0, result.output
    scores = pq.read_table(out / "scores").sort_by("example_id")
    rejects = pq.read_table(out / "rejects").sort_by("source_row")
    assert scores.column("example_id").to_pylist() == ["a", "b", "c"]
    assert scores.column("source_row").to_pylist() == [0, 1, 3]  # the first row of each id
    assert rejects.column("source_row").to_pylist() == [2, 4, 5]
    assert all(r.startswith("duplicate example_id:") for r in rejects.column("reason").to_pylist())
    read = read_images(str(tmp_path / "dups.parquet"))
    assert sorted(read.rejects.column("source_row").to_pylist()) == [2, 4, 5]
    assert read.rejects.column("reason").to_pylist() == rejects.column("reason").to_pylist()


# --- inputs that cannot hurt (issue 21) ---------------------------------------------------------


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of one colour and any size, built a row at a time: a decompression bomb
    of about 109 KB at 30000x30000 (900 million pixels), with no big array to make it."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte, then the row's bits
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def image_batch(blobs: list) -> pa.RecordBatch:
    n = len(blobs)
    return pa.RecordBatch.from_pydict(
        {"example_id": [f"r{i}" for i in range(n)], "source": ["t"] * n, "image": pa.array(blobs, pa.binary())}
    )


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> bytes:
    return bomb_png(30000, 30000)


def test_a_decompression_bomb_is_quarantined_and_the_rest_scored(bomb, tmp_path):
    from training.data.validate import ModelSpec, validate_batch

    good = png_bytes(np.full((16, 16), 200, np.uint8))
    valid, rejected = validate_batch(image_batch([good, bomb, good]), ModelSpec((16, 16, 1)))
    assert valid.rows.tolist() == [0, 2]
    assert rejected.reasons.to_pylist() == ["image too large: 30000x30000, the model takes 16x16"]
    # training: the bomb first of a PNG folder neither fixes the shape nor stops the read
    folder = tmp_path / "pngs"
    folder.mkdir()
    (folder / "a-bomb.png").write_bytes(bomb)
    for i in range(3):
        (folder / f"d{i}.png").write_bytes(good)
    result = read_images(str(folder))
    assert len(result.data) == 3 and result.data.image_shape == (16, 16, 1)
    assert result.rejects.column("reason").to_pylist() == [
        f"image too large: 30000x30000, the data set (first image: {folder}/d0.png) takes 16x16"
    ]


MAX_RSS = """
import resource, sys
import numpy as np, pyarrow as pa
from training.data.validate import ModelSpec, validate_batch
blob = open(sys.argv[1], "rb").read()
batch = pa.RecordBatch.from_pydict({"example_id": ["x"], "source": ["t"], "image": pa.array([blob], pa.binary())})
validate_batch(batch, ModelSpec((16, 16, 1)))  # imports and warms up
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for _ in range(3):
    validate_batch(batch, ModelSpec((16, 16, 1)))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_a_decompression_bomb_costs_no_more_memory_than_a_normal_image(bomb, tmp_path):
    """Peak memory (KiB) while validating each, in a fresh process: the bomb's 900 million pixels
    (112 MB at one bit each, 900 MB as 8-bit grey) are never decoded."""
    import subprocess
    import sys

    grown = {}
    for name, blob in (("normal", png_bytes(np.full((16, 16), 9, np.uint8))), ("bomb", bomb)):
        (tmp_path / name).write_bytes(blob)
        run = subprocess.run(
            [sys.executable, "-c", MAX_RSS, str(tmp_path / name)], capture_output=True, text=True, check=True
        )
        grown[name] = int(run.stdout.split()[-1])
    assert grown["bomb"] <= grown["normal"] + 8 * 1024, grown


def test_grey_palettes_read_as_grey_and_bad_bytes_say_which_problem_without_addresses():
    from training.data.validate import ModelSpec, validate_batch

    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    palette = Image.fromarray(grey).convert("P")
    palette.putpalette([v for i in range(256) for v in (i, i, i)])
    palette.putdata(grey.ravel().tolist())
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    coloured = Image.new("P", (16, 16))
    coloured.putpalette([255, 0, 0] * 256)
    out = io.BytesIO()
    coloured.save(out, format="PNG")
    blobs = [buffer.getvalue(), png_bytes(grey), b"", b"not an image at all", out.getvalue()]
    valid, rejected = validate_batch(image_batch(blobs), ModelSpec((16, 16, 1)))
    assert valid.rows.tolist() == [0, 1]
    np.testing.assert_array_equal(valid.images[0], valid.images[1])  # the palette image is its grey levels
    reasons = rejected.reasons.to_pylist()
    assert reasons[0] == "unreadable image: empty (0 bytes)"
    assert reasons[1].startswith("unreadable image: not a PNG or JPEG image (19 bytes, starting 6e 6f 74")
    assert reasons[2] == "wrong shape: 16x16x3 image, the model expects 16x16x1"
    assert not any("0x" in r or "object at" in r for r in reasons)


def test_labels_mixing_names_and_numbers_are_an_error_naming_both_kinds(tmp_path):
    path = tmp_path / "mixed.parquet"
    labels = ["cat", "dog", "bird", "fish", "frog"] * 4 + ["0", "1", "2", "3", "4"] * 4
    pixels = pa.array([[0.5] * 4] * len(labels), pa.list_(pa.float32()))
    pq.write_table(pa.table({"pixels": pixels, "height": [2] * 40, "width": [2] * 40, "label": labels}), path)
    with pytest.raises(DataError) as error:
        read_images(str(path), require_labels=True)
    message = str(error.value)
    assert message.startswith(f"{path}: the labels mix two kinds: 5 class name(s) ('bird', 'cat', 'dog', 'fish',")
    assert "20 whole number(s) ('0', '1', '2', '3', '4')" in message
    plain = read_images(str(path))  # a plain model only carries labels: it reads the rows unlabelled
    assert len(plain.data) == 40 and plain.data.labels is None


def test_the_likelihood_reason_of_0_1_masks_read_as_0_255_values():
    from training.data import grey_levels, levels_reason

    masks = (np.random.default_rng(0).random((50, 4, 4, 1)) > 0.5).astype(np.float32) / 255
    levels = grey_levels(masks)
    assert levels == 256
    reason = levels_reason(masks, levels)
    assert (
        reason.startswith("the pixels take only 2 values (0, 0.003922) of a grid of 256")
        and "--pixel-scale 1" in reason
    )
    digits = data.load_digits().images
    assert levels_reason(digits, grey_levels(digits)) == "the pixels take 17 evenly spaced grey levels"


def test_the_pixel_range_check_stops_implausibly_dark_input_before_scoring(tmp_path):
    from pipeline.beam.guards import PixelRangeError, check_pixel_range
    from training.data.reader import plan_input
    from training.data.validate import ModelSpec

    masks = (np.random.default_rng(0).random((20, 16)) > 0.5).astype(np.uint8)
    path = tmp_path / "masks.parquet"
    pq.write_table(pa.table({"pixels": pa.array(masks.tolist(), pa.list_(pa.uint8()))}), path)
    plan, spec = plan_input(str(path)), ModelSpec((4, 4, 1))
    with pytest.raises(
        PixelRangeError, match=r"every one of the 20 images checked is at most 0.003922.*--pixel-scale 1"
    ):
        check_pixel_range(plan, spec, 0.9, 1 / 16)
    assert check_pixel_range(plan, spec, 0.9, 1 / 16, pixel_scale=1.0) == 20  # the fix
    assert check_pixel_range(plan, spec, 0.9, 0.0) == 0  # the guard off
    assert check_pixel_range(plan, spec, None, 1 / 16) == 0  # a model saved before it kept its brightness
    few = tmp_path / "few.parquet"
    pq.write_table(pa.table({"pixels": pa.array(masks[:3].tolist(), pa.list_(pa.uint8()))}), few)
    assert check_pixel_range(plan_input(str(few)), spec, 0.9, 1 / 16) == 3  # too few images to judge


def test_odd_shape_columns_reject_their_rows_and_score_the_rest():
    from training.data.validate import ModelSpec, validate_batch

    pixels = pa.array([[0.5] * 4] * 4, pa.list_(pa.float32()))
    for height in (
        pa.array([2.0, 2.5, None, 2.0]),
        pa.array(["2", "two", None, "+2"]),
    ):
        batch = pa.RecordBatch.from_pydict(
            {"example_id": list("abcd"), "source": ["t"] * 4, "pixels": pixels, "height": height, "width": [2] * 4}
        )
        valid, rejected = validate_batch(batch, ModelSpec((2, 2, 1)))
        assert valid.rows.tolist() == [0, 3]
        assert (
            rejected.reasons.to_pylist()
            == ["null value: height, width or channels is null, not a whole number, or not positive"] * 2
        )


def test_npz_labels_shaped_n_by_one_are_read_and_other_shapes_refused(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (12, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "column.npz", x=x, y=np.arange(12).reshape(12, 1) % 3)  # Keras' CIFAR labels
    result = read_images(str(tmp_path / "column.npz"))
    assert result.data.labels.tolist() == (np.arange(12) % 3).tolist()
    np.savez(tmp_path / "one_hot.npz", x=x, y=np.eye(3)[np.arange(12) % 3])
    with pytest.raises(DataError, match=r"'y' must hold one label per image, shaped \(N,\) or \(N, 1\), got \(12, 3\)"):
        read_images(str(tmp_path / "one_hot.npz"))
    np.savez(tmp_path / "complex.npz", x=x.astype(np.complex64))
    with pytest.raises(DataError, match="'x' must be real numbers"):
        read_images(str(tmp_path / "complex.npz"))


def test_an_unreadable_file_in_an_image_folder_is_a_reject_and_a_folder_named_png_is_skipped(tmp_path):
    folder = tmp_path / "pngs"
    folder.mkdir()
    good = png_bytes(np.full((4, 4), 200, np.uint8))
    for i in range(3):
        (folder / f"d{i}.png").write_bytes(good)
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (folder / "album.png").mkdir()
    (folder / "album.png" / "inside.png").write_bytes(good)
    result = read_images(str(folder))
    assert sorted(result.data.example_ids.tolist()) == ["album.png/inside.png", "d0.png", "d1.png", "d2.png"]
    assert result.rejects.column("reason").to_pylist() == [
        "unreadable image: cannot read the file (No such file or directory)"
    ]


def test_remote_parquet_folders_keep_the_host_of_their_url(tmp_path, monkeypatch):
    """hdfs:// file systems list paths without the host: the files' URLs must keep it (and so their
    hive labels and distinct ids)."""
    from pyarrow import fs

    from training.data import reader

    for label in (0, 1):
        (tmp_path / f"label={label}").mkdir()
        table = pa.table(
            {"pixels": pa.array([[0.5] * 4] * 2, pa.list_(pa.float32())), "height": [2] * 2, "width": [2] * 2}
        )
        pq.write_table(table, tmp_path / f"label={label}" / "part-0.parquet")
    root = f"hdfs://namenode:8020{tmp_path}"

    class HostlessFileSystem:
        @staticmethod
        def from_uri(uri):
            assert uri.startswith("hdfs://namenode:8020/"), uri  # the host reaches every open
            return fs.LocalFileSystem(), uri.removeprefix("hdfs://namenode:8020")

    monkeypatch.setattr(fs, "FileSystem", HostlessFileSystem)
    plan = reader.plan_input(root, shard_rows=100)
    assert [shard.path for shard in plan.shards] == [f"{root}/label={i}/part-0.parquet" for i in (0, 1)]
    batches = [batch for shard in plan.shards for batch in shard.read(100)]
    table = pa.Table.from_batches(batches)
    assert table.column("label").to_pylist() == ["0", "0", "1", "1"]
    assert len(set(table.column("example_id").to_pylist())) == 4


def test_32_bit_tiffs_are_refused_rather_than_clipped_to_black():
    from training.data.validate import ModelSpec, validate_batch

    blobs = []
    for values in (
        np.full((4, 4), 0.5, np.float32),
        np.full((4, 4), 70000, np.int32),
        np.full((4, 4), 40000, np.uint16),
    ):
        buffer = io.BytesIO()
        Image.fromarray(values).save(buffer, format="TIFF")
        blobs.append(buffer.getvalue())
    valid, rejected = validate_batch(image_batch(blobs), ModelSpec((4, 4, 1)))
    assert valid.rows.tolist() == [2]  # 16-bit: divided by 65,535
    np.testing.assert_allclose(valid.images[0], 40000 / 65535, rtol=1e-6)
    reasons = rejected.reasons.to_pylist()
    assert reasons[0].startswith("unsupported image: floating-point pixels have no fixed maximum")
    assert reasons[1].startswith("unsupported image: 32-bit integer pixels have no fixed maximum")
