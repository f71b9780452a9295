"""Data loading: every supported source, the split, and a clear error for each kind of bad input."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from training import data
from training.data import DataError


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_digits_are_8x8_grey_in_unit_range_with_labels():
    digits = data.load("digits")
    assert digits.images.shape == (1797, 8, 8, 1) and digits.images.dtype == np.float32
    assert digits.images.min() == 0.0 and digits.images.max() == 1.0
    assert set(digits.labels.tolist()) == set(range(10)) and digits.class_names == [str(i) for i in range(10)]


def test_split_is_seeded_stratified_and_disjoint():
    digits = data.load_digits()
    first, again, other = data.split(digits, seed=1), data.split(digits, seed=1), data.split(digits, seed=2)
    ids = [set(part.example_ids) for part in (first.train, first.validation, first.test)]
    assert sum(map(len, ids)) == len(digits) and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    np.testing.assert_array_equal(first.test.example_ids, again.test.example_ids)
    assert set(first.test.example_ids) != set(other.test.example_ids)
    share = np.bincount(first.test.labels, minlength=10) / len(first.test)
    np.testing.assert_allclose(share, np.bincount(digits.labels) / len(digits), atol=0.02)


def test_split_of_few_rows_per_class_falls_back_to_a_plain_split():
    digits = data.load_digits().subset(np.arange(30))  # 10 classes, 3 rows each: too few to stratify a 5-row part
    parts = data.split(digits, seed=0)
    assert sorted(np.concatenate([p.example_ids for p in (parts.train, parts.validation, parts.test)])) == sorted(
        digits.example_ids
    )


def test_npz_with_labels(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.random.default_rng(0).random((12, 6, 6)), y=np.arange(12) % 3)
    loaded = data.load(str(path))
    assert loaded.images.shape == (12, 6, 6, 1) and loaded.labels.tolist() == (np.arange(12) % 3).tolist()


def test_parquet_pixels_with_shape_columns_and_string_labels(tmp_path):
    rows = 6
    table = pa.table(
        {
            "pixels": [list(np.linspace(0, 1, 16)) for _ in range(rows)],
            "height": [4] * rows,
            "width": [4] * rows,
            "channels": [1] * rows,
            "label": ["cat", "dog"] * 3,
            "example_id": [f"img-{i}" for i in range(rows)],
        }
    )
    pq.write_table(table, tmp_path / "p.parquet")
    loaded = data.load(str(tmp_path / "p.parquet"))
    assert loaded.images.shape == (6, 4, 4, 1) and loaded.class_names == ["cat", "dog"]
    assert loaded.example_ids[0] == "img-0" and loaded.labels.tolist() == [0, 1] * 3


def test_parquet_pixels_need_a_shape(tmp_path):
    pq.write_table(pa.table({"pixels": [[0.0] * 16] * 2}), tmp_path / "p.parquet")
    with pytest.raises(DataError, match="shape"):
        data.load(str(tmp_path / "p.parquet"))
    assert data.load(str(tmp_path / "p.parquet"), shape=(4, 4, 1)).images.shape == (2, 4, 4, 1)


def test_parquet_image_bytes(tmp_path):
    imgs = [png_bytes(np.full((5, 5), v)) for v in (0, 128, 255)]
    pq.write_table(pa.table({"image": imgs, "label": [0, 1, 1]}), tmp_path / "i.parquet")
    loaded = data.load(str(tmp_path / "i.parquet"))
    assert loaded.images.shape == (3, 5, 5, 1)
    np.testing.assert_allclose(loaded.images[:, 0, 0, 0], [0, 128 / 255, 1], atol=1e-6)


def test_png_folder_takes_labels_from_sub_folders(tmp_path):
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(3):
            (tmp_path / label / f"{i}.png").write_bytes(png_bytes(np.full((4, 4), 10 * i)))
    loaded = data.load(str(tmp_path))
    assert loaded.images.shape == (6, 4, 4, 1) and loaded.class_names == ["a", "b"]
    assert loaded.example_ids[0] == "a/0.png"


def test_offline_mnist_says_so(monkeypatch):
    import keras

    def offline():
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)  # no network here
    with pytest.raises(DataError, match="offline"):
        data.load("mnist")


# Bad input: every case names the file or row and the problem.


def test_mixed_shapes_in_a_png_folder(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes(np.zeros((4, 4))))
    (tmp_path / "b.png").write_bytes(png_bytes(np.zeros((5, 5))))
    with pytest.raises(DataError, match=r"b\.png example_id b\.png: wrong shape: 5x5x1 image, the data set \(first"):
        data.load(str(tmp_path))


def test_mixed_shapes_in_parquet(tmp_path):
    table = pa.table({"pixels": [[0.0] * 16, [0.0] * 9], "height": [4, 3], "width": [4, 3]})
    pq.write_table(table, tmp_path / "m.parquet")
    with pytest.raises(DataError, match=r"example_id m\.parquet:1: wrong shape: 3x3x1 image"):
        data.load(str(tmp_path / "m.parquet"))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_infinite_values_name_the_row(tmp_path, bad):
    x = np.zeros((5, 4, 4))
    x[3, 1, 1] = bad
    np.savez(tmp_path / "bad.npz", x=x)
    with pytest.raises(DataError, match=r"example_id bad\.npz:3: not finite: NaN, infinite"):
        data.load(str(tmp_path / "bad.npz"))


@pytest.mark.parametrize("bad", [1.5, -0.25])
def test_values_outside_unit_range_name_the_row(tmp_path, bad):
    x = np.full((4, 4, 4), 0.5)
    x[2, 0, 0] = bad
    np.savez(tmp_path / "r.npz", x=x)
    with pytest.raises(DataError, match=r"example_id r\.npz:2: out of range: values in .*must then lie in \[0, 1\]"):
        data.load(str(tmp_path / "r.npz"))


def test_integer_pixels_are_0_255_values_whatever_their_range(tmp_path, caplog):
    """The scaling rule looks at the column type, never a row's values: a near-black 0-255 image
    (brightest pixel 1) is divided by 255 like any other integer image."""
    x = np.zeros((3, 4, 4), dtype=np.uint8)
    x[0] = 255
    x[1, 0, 0] = 1  # near-black
    np.savez(tmp_path / "u8.npz", x=x)
    loaded = data.load(str(tmp_path / "u8.npz"))
    assert loaded.images[0].max() == 1.0 and loaded.images[1].max() == np.float32(1 / 255)
    np.savez(tmp_path / "mask.npz", x=(x > 0).astype(np.uint8))
    assert data.load(str(tmp_path / "mask.npz"), pixel_scale=1).images[1].max() == 1.0


def test_float_pixels_over_1_are_rejected_with_the_fix_named(tmp_path):
    np.savez(tmp_path / "f.npz", x=np.full((3, 4, 4), 200.0))
    with pytest.raises(DataError, match=r"look like 0-255 values: store them as integers, or train with --pixel-scale"):
        data.load(str(tmp_path / "f.npz"))
    np.testing.assert_allclose(data.load(str(tmp_path / "f.npz"), pixel_scale=255).images, 200 / 255, rtol=1e-6)


def test_empty_data_sets(tmp_path):
    np.savez(tmp_path / "e.npz", x=np.zeros((0, 4, 4)))
    with pytest.raises(DataError, match=r"e\.npz: the data set is empty"):
        data.load(str(tmp_path / "e.npz"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no PNG or JPEG images"):
        data.load(str(tmp_path / "empty"))
    pq.write_table(
        pa.table(
            {
                "pixels": pa.array([], pa.list_(pa.float32())),
                "height": pa.array([], pa.int32()),
                "width": pa.array([], pa.int32()),
            }
        ),
        tmp_path / "e.parquet",
    )
    with pytest.raises(DataError, match="empty"):
        data.load(str(tmp_path / "e.parquet"))


def test_unreadable_image_names_the_file(tmp_path):
    (tmp_path / "ok.png").write_bytes(png_bytes(np.zeros((4, 4))))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"example_id broken\.png: unreadable image"):
        data.load(str(tmp_path))


def test_unreadable_image_bytes_in_parquet_name_the_row(tmp_path):
    pq.write_table(
        pa.table({"image": [png_bytes(np.zeros((4, 4))), b"garbage"], "example_id": ["x1", "x2"]}),
        tmp_path / "g.parquet",
    )
    with pytest.raises(DataError, match=r"g\.parquet example_id x2: unreadable image"):
        data.load(str(tmp_path / "g.parquet"))


def test_missing_path_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        data.load(str(tmp_path / "nope.parquet"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported input"):
        data.load(str(tmp_path / "x.csv"))


def test_training_split_has_a_fixed_hash_chosen_holdout_whatever_the_seed_or_row_order():
    digits = data.load_digits()
    first, other = data.training_split(digits, seed=0), data.training_split(digits, seed=1)
    shuffled = digits.subset(np.random.default_rng(7).permutation(len(digits)))
    again = data.training_split(shuffled, seed=0)
    np.testing.assert_array_equal(first.holdout.example_ids, other.holdout.example_ids)
    np.testing.assert_array_equal(first.holdout.example_ids, again.holdout.example_ids)
    assert data.fingerprint(first.holdout) == data.fingerprint(again.holdout) == data.fingerprint(other.holdout)
    assert data.in_holdout(first.holdout.example_ids).all()
    assert 0.12 < len(first.holdout) / len(digits) < 0.18
    # the seed moves the other three parts, and never into the holdout
    assert set(first.calibration.example_ids) != set(other.calibration.example_ids)
    for a, b in ((first, again), (first, first)):
        np.testing.assert_array_equal(a.calibration.example_ids, b.calibration.example_ids)


@pytest.mark.parametrize("seed", [0, 1])
def test_training_split_partitions_the_data_into_four_disjoint_stratified_parts(seed):
    digits = data.load_digits()
    parts = data.training_split(digits, seed=seed)
    ids = [set(p.example_ids) for p in (parts.train, parts.validation, parts.calibration, parts.holdout)]
    assert sum(map(len, ids)) == len(digits) and set().union(*ids) == set(digits.example_ids)
    assert all(not (ids[i] & ids[j]) for i in range(4) for j in range(i + 1, 4))
    assert all(abs(len(p) - 0.15 * len(digits)) <= 2 for p in (parts.validation, parts.calibration))
    expected = np.bincount(digits.labels) / len(digits)
    for part in (parts.train, parts.validation, parts.calibration):
        np.testing.assert_allclose(np.bincount(part.labels, minlength=10) / len(part), expected, atol=0.02)
        row = {i: k for k, i in enumerate(digits.example_ids)}
        np.testing.assert_array_equal(part.images, digits.images[[row[i] for i in part.example_ids]])
    # the evaluation's three-way split is unchanged
    old = data.split(digits, seed=seed)
    assert [len(p) for p in (old.train, old.validation, old.test)] == [1257, 270, 270]


def test_training_split_refuses_data_too_small_for_four_parts():
    tiny = data.ImageData(np.zeros((12, 4, 4, 1), np.float32), None, np.array([f"r{i}" for i in range(12)]), None, "t")
    with pytest.raises(DataError, match="too few to split into train, validation, calibration and holdout"):
        data.training_split(tiny)
    ids = np.array([f"r{i}" for i in range(400)])
    outside = ids[~data.in_holdout(ids)][:25]  # rows the hash never puts in the holdout
    none_held = data.ImageData(np.zeros((25, 4, 4, 1), np.float32), None, outside, None, "n")
    with pytest.raises(DataError, match="put 0 of 25 images in the holdout"):
        data.training_split(none_held)
    unlabelled = data.training_split(data.ImageData(np.zeros((40, 4, 4, 1), np.float32), None, ids[:40], None, "u"))
    assert min(len(p) for p in (unlabelled.train, unlabelled.validation, unlabelled.calibration)) > 0


def test_conditional_training_on_unlabelled_data_is_refused(tmp_path):
    from training.config import TrainConfig
    from training.train import load_training_data

    np.savez(tmp_path / "nolabels.npz", x=np.random.default_rng(0).random((20, 4, 4)))
    with pytest.raises(DataError, match="--conditional needs labels"):
        load_training_data(TrainConfig(data=str(tmp_path / "nolabels.npz"), conditional=True))


def test_parquet_folder_ids_are_file_and_row_as_the_scorer_gives_them(tmp_path):
    (tmp_path / "sub").mkdir()
    pq.write_table(pa.table({"pixels": [[0.0] * 4] * 2, "height": [2, 2], "width": [2, 2]}), tmp_path / "a.parquet")
    pq.write_table(
        pa.table({"pixels": [[1.0] * 4] * 3, "height": [2] * 3, "width": [2] * 3, "example_id": ["x", None, "z"]}),
        tmp_path / "sub" / "b.parquet",
    )
    (tmp_path / ".staging").mkdir()  # hidden folders are not part of the dataset
    pq.write_table(pa.table({"pixels": [[1.0] * 4]}), tmp_path / ".staging" / "c.parquet")
    loaded = data.load(str(tmp_path))
    assert loaded.example_ids.tolist() == ["a.parquet:0", "a.parquet:1", "x", "sub/b.parquet:1", "z"]

    from training.data.reader import plan_input

    batches = [batch for shard in plan_input(str(tmp_path)).shards for batch in shard.read(1024)]
    scored_ids = [i for batch in batches for i in batch.column("example_id").to_pylist()]
    assert scored_ids == loaded.example_ids.tolist()


def test_grey_levels_are_read_from_the_pixels():
    from training.data import grey_levels, load_digits

    assert grey_levels(load_digits().images) == 17
    assert grey_levels(np.array([0.0, 1.0, 1.0], np.float32)) == 2
    assert grey_levels(np.arange(256, dtype=np.float32) / 255) == 256
    assert grey_levels(np.random.default_rng(0).random(1000, dtype=np.float32)) == 0


def test_auto_likelihood_is_chosen_from_the_data_and_a_set_one_is_kept():
    from training.config import TrainConfig
    from training.fitting import choose_likelihood

    binary = (np.random.default_rng(0).random((5, 8, 8, 1)) > 0.5).astype(np.float32)
    assert choose_likelihood(TrainConfig(), binary)[:2] == ("bernoulli", 0)
    assert choose_likelihood(TrainConfig(), np.arange(17, dtype=np.float32) / 16)[:2] == ("continuous_bernoulli", 17)
    continuous = np.random.default_rng(0).random((5, 8, 8, 1), dtype=np.float32)
    assert choose_likelihood(TrainConfig(), continuous)[:2] == ("continuous_bernoulli", 0)
    assert choose_likelihood(TrainConfig(likelihood="gaussian"), binary)[:2] == ("gaussian", 0)
