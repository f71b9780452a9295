"""The all-or-nothing dataset folder: a new dataset appears whole, a failed one leaves no trace."""

from __future__ import annotations

import pytest

from pipeline.atomic import atomic_dataset_dir, replace_dir


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_success_moves_the_folder_into_place(tmp_path):
    target = tmp_path / "out" / "scores"
    with atomic_dataset_dir(target) as tmp:
        assert tmp.parent == target.parent and tmp.is_dir() and not target.exists()
        (tmp / "part-0.parquet").write_text("new")
    assert (target / "part-0.parquet").read_text() == "new"
    assert _leftovers(target.parent) == []
    assert target.stat().st_mode & 0o055, "the dataset folder should not be private"


def test_success_replaces_an_older_dataset_entirely(tmp_path):
    target = tmp_path / "scores"
    target.mkdir()
    (target / "old-only.parquet").write_text("old")
    with atomic_dataset_dir(target) as tmp:
        (tmp / "part-0.parquet").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["part-0.parquet"]
    assert _leftovers(tmp_path) == []


def test_failure_keeps_the_old_dataset_and_removes_the_temporary_one(tmp_path):
    target = tmp_path / "scores"
    target.mkdir()
    (target / "part-0.parquet").write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_dataset_dir(target) as tmp:
        (tmp / "part-0.parquet").write_text("half")
        raise RuntimeError("boom")
    assert (target / "part-0.parquet").read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_failure_with_no_older_dataset_leaves_nothing(tmp_path):
    target = tmp_path / "scores"
    with pytest.raises(KeyboardInterrupt), atomic_dataset_dir(target):
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_replace_dir_puts_the_old_folder_back_when_the_move_fails(tmp_path):
    target = tmp_path / "scores"
    target.mkdir()
    (target / "keep").write_text("old")
    with pytest.raises(OSError):
        replace_dir(tmp_path / "does-not-exist", target)
    assert (target / "keep").read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_the_beam_filesystems_variant_keeps_the_same_contract(tmp_path):
    """``atomic_filesystem_dir`` is for gs://, s3:// ... outputs; Beam's local file system runs it here."""
    from pipeline.atomic import atomic_filesystem_dir

    target = tmp_path / "scores"
    target.mkdir()
    (target / "old.parquet").write_text("old")
    with pytest.raises(RuntimeError), atomic_filesystem_dir(str(target)) as tmp:
        (tmp_path / tmp.rsplit("/", 1)[1] / "half.parquet").write_text("half")
        raise RuntimeError
    assert [p.name for p in target.iterdir()] == ["old.parquet"]
    assert _leftovers(tmp_path) == []

    with atomic_filesystem_dir(str(target)) as tmp:
        for i in range(2):
            (tmp_path / tmp.rsplit("/", 1)[1] / f"part-{i}.parquet").write_text(f"new {i}")
    assert sorted(p.name for p in target.iterdir()) == ["part-0.parquet", "part-1.parquet"]
    assert _leftovers(tmp_path) == []


def test_a_partition_is_staged_outside_its_dataset_root(tmp_path):
    """While a partition is written, nothing half-written sits under the dataset root, where a
    glob such as DuckDB's out/scores/*/*.parquet would find it."""
    dataset = tmp_path / "scores"
    (dataset / "date=1").mkdir(parents=True)
    (dataset / "date=1" / "old.parquet").write_bytes(b"old")
    with atomic_dataset_dir(dataset / "date=1", staging=tmp_path / ".staging") as tmp:
        assert tmp.parent == tmp_path / ".staging"
        (tmp / "new.parquet").write_bytes(b"new")
        assert sorted(p.name for p in dataset.iterdir()) == ["date=1"]
    assert [p.name for p in (dataset / "date=1").iterdir()] == ["new.parquet"]
    assert sorted(p.name for p in dataset.iterdir()) == ["date=1"]
    assert list((tmp_path / ".staging").iterdir()) == []
