"""Dataset folders that never flicker: real files, real pyarrow / pandas / DuckDB readers, real
processes killed in the middle of a commit, real concurrent writers.

Layout under test (see :mod:`pipeline.outputs.atomic`): ``OUT/scores -> .versions/current/scores``,
``OUT/.versions/current -> v-...``; a commit builds a new version and switches ``current`` with one
rename."""

from __future__ import annotations

import errno
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipeline.outputs import atomic
from pipeline.outputs.atomic import (
    DatasetLockedError,
    atomic_dataset_dir,
    atomic_datasets,
    replace_dir,
    snapshot,
    snapshots,
)
from pipeline.outputs.atomic import exchange as atomic_exchange
from pipeline.outputs.atomic import locks as atomic_locks
from pipeline.outputs.atomic import remote as atomic_remote
from pipeline.outputs.atomic import versions as atomic_versions

ROOT = Path(__file__).resolve().parents[1]
FILES, ROWS = 3, 40  # a run writes FILES files of ROWS rows into each dataset


def _leftovers(out: Path) -> list[str]:
    """What a finished run must not leave in OUT: anything hidden but ``.versions`` (the staging
    folder included), a public link that leads nowhere, and in ``.versions`` anything but the
    pointer, versions and replaced plain folders (those two kept for their grace period)."""
    found = [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".versions"]
    found += [f"{p.name} (leads nowhere)" for p in out.iterdir() if p.is_symlink() and not p.exists()]
    versions = out / ".versions"
    if versions.exists():
        for p in versions.iterdir():
            kept = (
                p.is_dir()
                and not p.is_symlink()
                and (atomic_versions._VERSION.match(p.name) or p.name.startswith("old-"))
            )
            if not (kept or (p.name == "current" and p.is_symlink())):
                found.append(f".versions/{p.name}")
    return sorted(found)


def _versions(out: Path) -> list[str]:
    return sorted(p.name for p in (out / ".versions").iterdir() if atomic_versions._VERSION.match(p.name))


def _current(out: Path) -> str:
    return os.readlink(out / ".versions" / "current")


def write_run(folder: Path, run: int, files: int = FILES) -> None:
    """One run's dataset: ``files`` files of ROWS rows, every row carrying the run id. File names
    carry the run, as ``score_dataset`` writes them."""
    for i in range(files):
        table = pa.table({"run": pa.array([run] * ROWS, pa.int64()), "row": pa.array(range(i * ROWS, (i + 1) * ROWS))})
        pq.write_table(table, folder / f"part-{run:04d}-{i:05d}.parquet")


def runs_in(path: Path, files: int = FILES) -> int:
    """The one run whose complete dataset ``path`` holds (fails on a missing, partial or mixed one)."""
    runs = pq.read_table(path).column("run").to_pylist()
    assert len(runs) == files * ROWS and len(set(runs)) == 1, (len(runs), sorted(set(runs)))
    return runs[0]


def commit_run(out: Path, run: int, partition: str | None = None) -> None:
    targets = [out / "scores", out / "rejects"]
    if partition:
        targets = [t / partition for t in targets]
    with atomic_datasets(*targets, staging=out / ".staging") as tmps:
        for tmp in tmps:
            write_run(tmp, run)


def write_plain(out: Path, run: int, *datasets: str) -> None:
    """Plain dataset folders, as earlier versions of the module (or a person) left them."""
    for name in datasets:
        (out / name).mkdir(parents=True)
        write_run(out / name, run)


def _exchange_works(tmp_path) -> bool:
    a, b = tmp_path / "probe-a", tmp_path / "probe-b"
    a.mkdir(), b.mkdir()
    try:
        return atomic_exchange._exchange(a, b)
    finally:
        a.rmdir(), b.rmdir()


def _no_symlinks(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "symlink", refuse)


# --- the contract: all or nothing, in one switch ---------------------------------------------------


def test_a_commit_publishes_a_link_to_an_immutable_version(tmp_path):
    out = tmp_path / "out"
    target = out / "scores"
    with atomic_dataset_dir(target) as tmp:
        assert tmp.is_relative_to(out / ".staging") and tmp.is_dir() and not os.path.lexists(target)
        (tmp / "part-0.parquet").write_text("new")
    assert os.readlink(target) == ".versions/current/scores" and _current(out) in _versions(out)
    assert (target / "part-0.parquet").read_text() == "new"
    assert snapshot(target) == out / ".versions" / _current(out) / "scores"
    assert snapshot(target) == Path(os.path.realpath(target))
    assert _leftovers(out) == [] and not (out / ".staging").exists()
    assert target.stat().st_mode & 0o055, "the dataset folder should not be private"


def test_a_new_commit_replaces_the_dataset_entirely_and_keeps_the_old_version_readable(tmp_path):
    out = tmp_path / "out"
    commit_run(out, 1)
    before = snapshot(out / "scores")
    commit_run(out, 2)
    assert runs_in(out / "scores") == runs_in(out / "rejects") == 2
    assert sorted(p.name for p in (out / "scores").iterdir()) == [f"part-0002-{i:05d}.parquet" for i in range(FILES)]
    assert sorted(p.name for p in before.iterdir()) == [f"part-0001-{i:05d}.parquet" for i in range(FILES)]
    assert runs_in(before) == 1  # the old version, as it was
    assert len(_versions(out)) == 2 and _leftovers(out) == []


def test_failure_keeps_the_old_dataset_and_removes_the_temporary_one(tmp_path):
    out = tmp_path / "out"
    commit_run(out, 1)
    versions = _versions(out)
    with pytest.raises(RuntimeError, match="boom"), atomic_datasets(out / "scores", staging=out / ".staging") as (tmp,):
        write_run(tmp, 2)
        raise RuntimeError("boom")
    assert runs_in(out / "scores") == 1 and _versions(out) == versions
    assert _leftovers(out) == []


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
    new = tmp_path / "new"
    new.mkdir()
    (new / "keep").write_text("new")
    replace_dir(new, target)
    assert (target / "keep").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["scores"]


def test_one_rename_switches_all_the_datasets_of_a_commit(tmp_path, monkeypatch):
    """The public links stay as they are (same inodes); only ``current`` is replaced, once per
    commit, after the new version is complete. If that rename fails nothing has changed."""
    out = tmp_path / "out"
    commit_run(out, 1)
    links = {name: os.lstat(out / name).st_ino for name in ("scores", "rejects")}
    real, switches = atomic_versions._switch, []

    def switch(versions, version, previous):
        assert [runs_in(versions / version / name) for name in ("scores", "rejects")] == [2, 2]
        assert [runs_in(out / name) for name in ("scores", "rejects")] == [1, 1], "switched before the switch"
        switches.append(version)
        real(versions, version, previous)
        assert [runs_in(out / name) for name in ("scores", "rejects")] == [2, 2]

    monkeypatch.setattr(atomic_versions, "_switch", switch)
    commit_run(out, 2)
    assert len(switches) == 1 and _current(out) == switches[0]
    assert {name: os.lstat(out / name).st_ino for name in ("scores", "rejects")} == links

    def failing(versions, version, previous):
        raise OSError("the switch fails")

    monkeypatch.setattr(atomic_versions, "_switch", failing)
    with pytest.raises(OSError, match="the switch fails"):
        commit_run(out, 3)
    assert [runs_in(out / name) for name in ("scores", "rejects")] == [2, 2]
    assert _current(out) == switches[0] and len(_versions(out)) == 2 and _leftovers(out) == []


def test_the_first_commit_makes_both_datasets_appear_together(tmp_path, monkeypatch):
    """Before the first switch the links exist but lead nowhere (as if absent): scores never
    appears without rejects."""
    out = tmp_path / "out"
    real, seen = atomic_versions._switch, []

    def switch(versions, version, previous):
        seen.append([(out / name).exists() for name in ("scores", "rejects")])
        real(versions, version, previous)

    monkeypatch.setattr(atomic_versions, "_switch", switch)
    commit_run(out, 1)
    assert seen == [[False, False]] and [runs_in(out / n) for n in ("scores", "rejects")] == [1, 1]


def test_partitions_are_plain_folders_in_a_version_and_every_reader_sees_the_hive_layout(tmp_path):
    """Only OUT/scores is a link; partitions are real folders inside the version, so pyarrow,
    pandas, DuckDB (``*/*.parquet`` and ``**``), ``rglob`` and ``os.walk`` all find them, with the
    partition column."""
    out = tmp_path / "out"
    commit_run(out, 1, "date=1")
    commit_run(out, 2, "date=2")
    scores = out / "scores"
    assert scores.is_symlink() and not (scores / "date=1").is_symlink() and (scores / "date=1").is_dir()
    expected = [(1, 1)] * FILES * ROWS + [(2, 2)] * FILES * ROWS
    table = ds.dataset(scores, format="parquet", partitioning="hive").to_table(columns=["date", "run"])
    assert sorted(zip(table.column("date").to_pylist(), table.column("run").to_pylist(), strict=True)) == expected
    frame = pd.read_parquet(scores, columns=["date", "run"])
    assert sorted(zip(frame["date"].astype(int), frame["run"], strict=True)) == expected
    for glob in ("*/*.parquet", "**/*.parquet"):
        query = f"SELECT date, run FROM read_parquet('{scores}/{glob}', hive_partitioning = true) ORDER BY ALL"
        assert duckdb.sql(query).fetchall() == expected, glob
    assert len(list(scores.rglob("*.parquet"))) == 2 * FILES
    assert sum(len(files) for _, _, files in os.walk(scores)) == 2 * FILES
    assert snapshot(scores / "date=1") == out / ".versions" / _current(out) / "scores" / "date=1"
    assert runs_in(snapshot(out / "rejects" / "date=2")) == 2
    assert _leftovers(out) == []


def test_a_partition_is_staged_outside_its_dataset_root(tmp_path):
    """While a partition is written, nothing half-written sits under the dataset root, where a
    glob such as DuckDB's out/scores/*/*.parquet would find it; the other partitions are carried
    over."""
    out = tmp_path / "out"
    commit_run(out, 1, "date=1")
    commit_run(out, 2, "date=2")
    with atomic_dataset_dir(out / "scores" / "date=1", staging=out / ".staging") as tmp:
        assert tmp.is_relative_to(out / ".staging")
        write_run(tmp, 3)
        assert sorted(p.name for p in (out / "scores").iterdir()) == ["date=1", "date=2"]
        assert runs_in(out / "scores" / "date=1") == 1
    assert [runs_in(out / "scores" / d) for d in ("date=1", "date=2")] == [3, 2]
    assert _leftovers(out) == []


def test_partition_paths_need_the_output_folders_staging_and_versions_are_not_targets(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="looks like a partition: pass staging=OUT/.staging"):
        atomic_dataset_dir(out / "scores" / "date=1").__enter__()
    for inside in (out / ".versions" / "x", out / ".staging" / "x"):
        with pytest.raises(ValueError, match="belongs to the atomic commit"):
            atomic_dataset_dir(inside, staging=out / ".staging").__enter__()
    assert not out.exists()


def test_snapshots_resolve_through_one_reading_of_the_pointer(tmp_path, monkeypatch):
    out = tmp_path / "out"
    commit_run(out, 1)
    real_current, reads = atomic_versions._current, []

    def current(versions):
        reads.append(versions)
        commit = len(reads) == 1
        name = real_current(versions)
        if commit:  # a commit lands right after the pointer was read
            monkeypatch.setattr(atomic_versions, "_current", real_current)
            commit_run(out, 2)
            monkeypatch.setattr(atomic_versions, "_current", current)
        return name

    monkeypatch.setattr(atomic_versions, "_current", current)
    scores, rejects = snapshots(out / "scores", out / "rejects")
    assert len(reads) == 1 and runs_in(scores) == runs_in(rejects) == 1
    assert runs_in(out / "scores") == 2

    plain = tmp_path / "plain"
    plain.mkdir()
    assert snapshot(plain) == plain.resolve()  # not in the layout: resolved, no guarantee
    with pytest.raises(FileNotFoundError):
        snapshot(out / "scores" / "date=9")
    with pytest.raises(FileNotFoundError):
        snapshot(tmp_path / "nothing")


# --- adopting plain folders of earlier versions ------------------------------------------------------


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_plain_folders_are_adopted_without_losing_data(tmp_path, monkeypatch, caplog, exchange):
    """OUT/scores and OUT/rejects are plain folders with partitions (an earlier version of the tool).
    A partition commit adopts them: the other partitions are kept, the folders become links. With
    the exchange, a read that listed the plain folder and opens the names after the exchange still
    finds the same files; without it, the path is missing for a moment (warned), nothing is lost."""
    out = tmp_path / "out"
    if exchange and not _exchange_works(tmp_path):
        pytest.skip("this file system has no RENAME_EXCHANGE")
    if not exchange:
        monkeypatch.setattr(atomic_exchange, "_RENAMEAT2", None)
        monkeypatch.setattr(atomic_exchange, "_warned", set())
    write_plain(out, 1, "scores/date=1", "scores/date=2", "rejects/date=1")
    real, straddles = atomic_versions._swap_into_place, []

    def swap(new, target, aside):
        listed = {name: runs_in(target / name) for name in sorted(os.listdir(target))}
        real(new, target, aside)
        assert target.is_symlink()
        straddles.append({name: runs_in(target / name) for name in listed} == listed)

    monkeypatch.setattr(atomic_versions, "_swap_into_place", swap)  # the adoption's exchange
    with caplog.at_level(logging.WARNING, logger="pipeline.outputs.atomic"):
        commit_run(out, 2, "date=2")
    assert straddles == [True, True]
    assert [runs_in(out / p) for p in ("scores/date=1", "scores/date=2", "rejects/date=1", "rejects/date=2")] == [
        1,
        2,
        1,
        2,
    ]
    assert all((out / name).is_symlink() for name in ("scores", "rejects"))
    assert ("two renames" in caplog.text) is not exchange
    assert _leftovers(out) == [] and not list((out / ".versions").glob("migrate-*"))
    assert len(list((out / ".versions").glob("old-*"))) == 2  # the plain folders, kept for the grace period

    monkeypatch.setattr(atomic_versions, "VERSION_GRACE", 0.0)
    commit_run(out, 3, "date=1")
    assert not list((out / ".versions").glob("old-*")) and len(_versions(out)) == 2
    assert [runs_in(out / p) for p in ("scores/date=1", "scores/date=2", "rejects/date=1")] == [3, 2, 3]


def test_a_dataset_whose_link_was_removed_is_not_resurrected(tmp_path):
    out = tmp_path / "out"
    commit_run(out, 1)
    with atomic_dataset_dir(out / "other", staging=out / ".staging") as tmp:
        write_run(tmp, 5)
    (out / "scores").unlink()  # someone deletes the dataset
    commit_run(out, 2, "date=1")
    assert [p.name for p in (out / "scores").iterdir()] == ["date=1"] and runs_in(out / "other") == 5
    with atomic_dataset_dir(out / "other", staging=out / ".staging") as tmp:
        write_run(tmp, 6)
    (out / "rejects").unlink()
    os.unlink(out / "other")
    commit_run(out, 3, "date=2")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["rejects", "scores"]
    assert [p.name for p in (out / "rejects").iterdir()] == ["date=2"]
    assert _leftovers(out) == []


# --- where links cannot be made: the exchange, one folder at a time -----------------------------------


def test_without_symlinks_it_falls_back_to_exchanging_folders_with_a_warning(tmp_path, monkeypatch, caplog):
    _no_symlinks(monkeypatch)
    monkeypatch.setattr(atomic_versions, "_warned", set())
    out = tmp_path / "out"
    for run in (1, 2):
        with caplog.at_level(logging.WARNING, logger="pipeline.outputs.atomic"):
            commit_run(out, run)
    assert runs_in(out / "scores") == runs_in(out / "rejects") == 2
    assert not (out / "scores").is_symlink() and not (out / ".versions").exists()
    assert "symbolic links cannot be made" in caplog.text and _leftovers(out) == []


def test_the_fallback_switches_the_datasets_of_a_commit_together_or_not_at_all(tmp_path, monkeypatch):
    """Both folders are complete before the first switch; if the second switch fails, the first
    one is undone, so scores and rejects never end up from different runs."""
    _no_symlinks(monkeypatch)
    out = tmp_path / "out"
    commit_run(out, 1)
    real, switched = atomic_exchange._swap_into_place, []

    def swap(new, target, aside):
        if switched:
            raise OSError("the second switch fails")
        assert runs_in(new) == 2, "a folder was switched before both were complete"
        switched.append(target)
        return real(new, target, aside)

    monkeypatch.setattr(atomic_exchange, "_swap_into_place", swap)  # the fallback commit's
    with pytest.raises(OSError, match="second switch"):
        commit_run(out, 2)
    assert switched == [out / "scores"]
    assert [runs_in(out / name) for name in ("scores", "rejects")] == [1, 1]
    assert _leftovers(out) == []


def test_without_symlinks_or_renameat2_it_uses_two_renames_with_a_warning(tmp_path, monkeypatch, caplog):
    _no_symlinks(monkeypatch)
    monkeypatch.setattr(atomic_exchange, "_RENAMEAT2", None)
    monkeypatch.setattr(atomic_exchange, "_warned", set())
    monkeypatch.setattr(atomic_versions, "_warned", set())
    target = tmp_path / "scores"
    for run in (1, 2):
        with caplog.at_level(logging.WARNING, logger="pipeline.outputs.atomic"), atomic_dataset_dir(target) as tmp:
            write_run(tmp, run)
    assert runs_in(target) == 2 and _leftovers(tmp_path) == []
    assert "two renames" in caplog.text


# --- readers polling during commits ------------------------------------------------------------------
#
# Three kinds of reader. A *snapshot* reader resolves the public paths once (``snapshots``) and reads
# the version folders: it must never fail, never see a short or mixed dataset, and its scores and
# rejects are always of the same run. A *pinned* reader opens the public folder once and reads every
# file relative to that open folder: one version, never a failure. pyarrow, pandas and DuckDB
# instead list the folder and then open each file by its full path again (through the pointer
# again): a read that overlaps a switch resolves names listed in one version inside the next. With
# run-named files (as ``score_dataset`` writes them) such a read fails with "file not found", or
# comes back short (pyarrow skips listed names it cannot find), always with rows of one run only:
# never mixed, never more rows than one dataset. These straddles are the only failures allowed.


def read_pinned(folder: Path) -> list[int]:
    """The ``run`` column of every Parquet file of ``folder``, read as one directory state."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        runs: list[int] = []
        for name in sorted(n for n in os.listdir(fd) if n.endswith(".parquet")):
            with open(name, "rb", opener=lambda path, flags: os.open(path, flags, dir_fd=fd)) as file:
                runs += pq.read_table(file).column("run").to_pylist()
        return runs
    finally:
        os.close(fd)


def _straddled(exc: BaseException) -> bool:
    """A library read that overlapped a switch and found the (run-named) files it listed gone."""
    if isinstance(exc, FileNotFoundError):
        return True
    text = str(exc)
    return isinstance(exc, duckdb.IOException) and ("No such file or directory" in text or "No files found" in text)


def _column(table_or_frame, name="run") -> list:
    """A column, or no rows where a read found no files at all (then there is no schema either)."""
    if isinstance(table_or_frame, pd.DataFrame):
        return table_or_frame[name].tolist() if name in table_or_frame.columns else []
    return table_or_frame.column(name).to_pylist() if name in table_or_frame.column_names else []


class Poller(threading.Thread):
    """Reads in a loop until stopped. ``check`` returns None for a complete read, "short" for a
    read that overlapped a switch, or a failure. ``strict``: every error and short read is a failure."""

    def __init__(self, name, read, check, strict=False):
        super().__init__(name=name, daemon=True)
        self.read, self.check, self.strict = read, check, strict
        self.stop, self.reads, self.complete, self.straddled, self.failures = False, 0, 0, 0, []

    def run(self):
        while not self.stop:
            try:
                outcome = self.check(self.read())
            except Exception as exc:  # noqa: BLE001 - every error is a finding unless it is a straddle
                outcome = "short" if _straddled(exc) and not self.strict else f"{type(exc).__name__}: {exc}"
            if outcome is None:
                self.complete += 1
            elif outcome == "short" and not self.strict:
                self.straddled += 1
            else:
                self.failures.append(outcome)
            self.reads += 1


def _commit_while_polling(pollers, commit, commits=30):
    """Runs ``commit(run)`` for runs 1..commits while the pollers read; after each commit it waits
    (bounded) until every poller has read again, so reads and commits interleave."""
    for poller in pollers:
        poller.start()
    try:
        for run in range(1, commits + 1):
            before = [p.reads for p in pollers]
            commit(run)
            deadline = time.monotonic() + 10
            while any(p.reads <= b for p, b in zip(pollers, before, strict=True)) and time.monotonic() < deadline:
                time.sleep(0.001)
    finally:
        for poller in pollers:
            poller.stop = True
        for poller in pollers:
            poller.join(30)
    for poller in pollers:
        assert poller.failures == [], (poller.name, poller.failures[:5])
        assert poller.complete > 0, poller.name


def _whole(runs) -> str | None:
    """None for one run's complete dataset; "short" for fewer rows of one run; else what is wrong."""
    runs = list(runs)
    if len(set(runs)) > 1:
        return f"rows of runs {sorted(set(runs))} mixed"
    if len(runs) == FILES * ROWS:
        return None
    return "short" if len(runs) < FILES * ROWS else f"{len(runs)} rows"


def _duckdb():
    con = duckdb.connect()
    con.execute("SET threads = 1")
    return con


def duckdb_runs(con, folder) -> list[int]:
    return [run for (run,) in con.sql(f"SELECT run FROM read_parquet('{folder}/*.parquet')").fetchall()]


def _library_pollers(folder: Path, label: str = "") -> list[Poller]:
    con = _duckdb()
    return [
        Poller(f"pyarrow {label}", lambda: _column(pq.read_table(folder)), _whole),
        Poller(f"pandas {label}", lambda: _column(pd.read_parquet(folder)), _whole),
        Poller(f"duckdb {label}", lambda: duckdb_runs(con, folder), _whole),
    ]


def _same_run(pair) -> str | None:
    scores, rejects = pair
    problem = _whole(scores) or _whole(rejects)
    if problem is None and scores[0] != rejects[0]:
        return f"scores of run {scores[0]} with rejects of run {rejects[0]}"
    return problem


def test_readers_polling_during_commits_never_see_a_missing_or_mixed_dataset(tmp_path):
    """30 runs commit OUT/scores and OUT/rejects while readers poll. Snapshot readers always get
    scores and rejects of one run, complete; pinned readers one complete dataset; pyarrow, pandas
    and DuckDB never rows of two runs, and fail only by a straddle (see above)."""
    out = tmp_path / "out"
    scores, rejects = out / "scores", out / "rejects"
    commit_run(out, 0)

    def read_snapshots():
        return [pq.read_table(path).column("run").to_pylist() for path in snapshots(scores, rejects)]

    pollers = [Poller("snapshots", read_snapshots, _same_run, strict=True)]
    for path in (scores, rejects):
        pollers.append(Poller(f"pinned {path.name}", lambda p=path: read_pinned(p), _whole, strict=True))
        pollers += _library_pollers(path, path.name)
    _commit_while_polling(pollers, lambda run: commit_run(out, run))
    assert runs_in(scores) == runs_in(rejects) == 30
    assert _leftovers(out) == []


def test_readers_polling_a_partitioned_dataset_never_see_a_missing_or_mixed_partition(tmp_path):
    """OUT/scores/date=1 is replaced 20 times beside a fixed date=2, as ``vae score --partition``
    does, while pyarrow, pandas and DuckDB (``*/*.parquet`` and ``**`` with hive partitioning)
    read the whole dataset, a pinned reader the partition, and a snapshot reader both datasets'
    partitions: both partitions always there, date=2 untouched, date=1 one run's (complete and the
    same in scores and rejects, for the snapshot reader)."""
    out = tmp_path / "out"
    dataset = out / "scores"
    commit_run(out, 0, "date=1")
    commit_run(out, 1000, "date=2")

    def check(pairs):
        by_day: dict[str, list[int]] = {}
        for day, run in pairs:
            by_day.setdefault(str(day), []).append(run)
        if by_day.get("2") != [1000] * FILES * ROWS:
            return "the partition that was not rewritten changed or went missing"
        if set(by_day) - {"1", "2"}:
            return f"partitions {sorted(by_day)}"
        return _whole(by_day.get("1", []))

    def arrow_pairs():
        table = ds.dataset(dataset, format="parquet", partitioning="hive").to_table(columns=["date", "run"])
        return zip(table.column("date").to_pylist(), table.column("run").to_pylist(), strict=True)

    def pandas_pairs():
        frame = pd.read_parquet(dataset, columns=["date", "run"])
        return zip(frame["date"].astype(str), frame["run"], strict=True)

    def read_snapshots():
        paths = snapshots(dataset / "date=1", out / "rejects" / "date=1", dataset / "date=2")
        runs = [pq.read_table(path).column("run").to_pylist() for path in paths]
        return _same_run(runs[:2]) or (None if runs[2] == [1000] * FILES * ROWS else "date=2 changed")

    con = _duckdb()
    pollers = [
        Poller("snapshots", read_snapshots, lambda outcome: outcome, strict=True),
        Poller("pinned", lambda: read_pinned(dataset / "date=1"), _whole, strict=True),
        Poller("pyarrow", arrow_pairs, check),
        Poller("pandas", pandas_pairs, check),
    ]
    for glob in ("*/*.parquet", "**/*.parquet"):
        query = f"SELECT date, run FROM read_parquet('{dataset}/{glob}', hive_partitioning = true)"
        pollers.append(Poller(f"duckdb {glob}", lambda q=query: con.cursor().sql(q).fetchall(), check))
    _commit_while_polling(pollers, lambda run: commit_run(out, run, "date=1"), commits=20)
    assert runs_in(dataset / "date=1") == runs_in(out / "rejects" / "date=1") == 20
    assert sorted(p.name for p in dataset.iterdir()) == ["date=1", "date=2"]
    assert _leftovers(out) == []


# --- a process killed in the middle of a commit; concurrent writers --------------------------------

WRITER = """
import logging
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.outputs import atomic
from pipeline.outputs.atomic import versions

out, run, pause, files, partition = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
real = {name: getattr(versions, name) for name in ("_version_name", "_switch", "_swap_into_place")}
swaps = []


def pause_at(point):
    if pause == point:
        print("paused", flush=True)
        sys.stdin.readline()  # the test kills us here, or lets us go on


def version_name():
    pause_at("building")  # the new version is assembled under a temporary name
    return real["_version_name"]()


def switch(*args):
    pause_at("switch")  # the new version is complete, current not yet switched
    real["_switch"](*args)
    pause_at("switched")


def swap(*args):
    swaps.append(args)
    if len(swaps) == 2:
        pause_at("adopting")  # one plain folder exchanged for its link, the other not yet
    return real["_swap_into_place"](*args)


class SayWaiting(logging.Handler):
    def emit(self, record):
        if record.getMessage().startswith("waiting for the commit of another run"):
            print("waiting", flush=True)


logging.getLogger("pipeline.outputs.atomic").addHandler(SayWaiting(logging.INFO))
logging.getLogger("pipeline.outputs.atomic").setLevel(logging.INFO)
versions._version_name, versions._switch, versions._swap_into_place = version_name, switch, swap
targets = [out / "scores", out / "rejects"]
if partition != "-":
    targets = [target / partition for target in targets]
try:
    with atomic.atomic_datasets(*targets, staging=out / ".staging") as tmps:
        for tmp in tmps:
            for i in range(files):
                table = pa.table({"run": pa.array([run] * 40, pa.int64()), "row": pa.array(range(i * 40, i * 40 + 40))})
                pq.write_table(table, tmp / f"part-{run:04d}-{i:05d}.parquet")
        pause_at("writing")
except atomic.DatasetLockedError as exc:
    print(f"locked: {exc}", flush=True)
    sys.exit(3)
print("committed", flush=True)
"""


def start_writer(
    out: Path, run: int, pause: str = "none", files: int = FILES, partition: str = "-"
) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(out), str(run), pause, str(files), partition],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(proc: subprocess.Popen, timeout: float = 60) -> str:
    """The writer's next line of output (bounded: a writer that hangs fails the test)."""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            proc.kill()
            pytest.fail(f"the writer said nothing for {timeout} s")
    line = proc.stdout.readline()
    if not line:
        pytest.fail(f"the writer ended: {proc.wait()} {proc.stderr.read()}")
    return line.strip()


def _close(proc: subprocess.Popen) -> None:
    proc.stdin.close(), proc.stdout.close(), proc.stderr.close()


@pytest.mark.parametrize(
    ("pause", "after_kill"),
    [
        ("writing", 1),  # not committed: thrown away
        ("building", 1),  # a half-built version under a temporary name: thrown away
        ("switch", 1),  # a complete version, never switched to: thrown away
        ("switched", 2),  # committed; only the run's own folders and locks are left
        ("adopting", 1),  # plain folders: one exchanged for its link, the other not: finished by the next run
    ],
)
def test_a_writer_killed_mid_commit_leaves_complete_datasets_and_the_next_run_cleans_up(tmp_path, pause, after_kill):
    out = tmp_path / "out"
    if pause == "adopting":
        write_plain(out, 1, "scores", "rejects")
    else:
        commit_run(out, 1)
    writer = start_writer(out, 2, pause, files=20)
    assert wait_for_line(writer) == "paused"
    writer.send_signal(signal.SIGKILL)
    writer.wait(30)
    _close(writer)

    scores, rejects = out / "scores", out / "rejects"
    files = {1: FILES, 2: 20}[after_kill]
    con = _duckdb()
    for path in (scores, rejects):
        assert runs_in(path, files) == after_kill
        assert con.sql(f"SELECT count(*), min(run), max(run) FROM '{path}/*.parquet'").fetchall() == [
            (files * ROWS, after_kill, after_kill)
        ]
        assert pd.read_parquet(path)["run"].tolist() == [after_kill] * files * ROWS
    if pause != "switched":
        assert [runs_in(p, files) for p in snapshots(scores, rejects)] == [after_kill] * 2
    assert _leftovers(out), "the killed writer should have left its run folder, locks or half-built version"

    # The next run that writes into OUT (here another dataset) cleans up (and finishes an adoption).
    with atomic_dataset_dir(out / "other", staging=out / ".staging") as tmp:
        write_run(tmp, 7)
    assert [runs_in(p, files) for p in (scores, rejects)] == [after_kill] * 2
    assert all(p.is_symlink() for p in (scores, rejects)) and _leftovers(out) == []
    assert not list((out / ".versions").glob("tmp-*")) and not list((out / ".versions").glob("migrate-*"))

    commit_run(out, 3)
    assert runs_in(scores) == runs_in(rejects) == 3 and runs_in(out / "other") == 7
    assert _leftovers(out) == []


def test_a_second_writer_is_refused_at_once_and_the_first_one_commits(tmp_path):
    """Non-blocking: the second writer fails at once, naming the lock and its holder, and changes
    nothing; the first commits; a writer that comes after it succeeds."""
    out = tmp_path / "out"
    commit_run(out, 1)
    first = start_writer(out, 2, pause="writing")
    assert wait_for_line(first) == "paused"

    started = time.monotonic()
    with pytest.raises(DatasetLockedError) as refused:
        commit_run(out, 3)
    assert time.monotonic() - started < atomic.LOCK_RETRY + 0.5  # at once: a few retries, then refused
    message = str(refused.value)
    lock = out.absolute() / ".staging" / "scores.lock"
    assert f"{out.absolute() / 'scores'} is being written by another run: its lock {lock} is held by" in message
    assert f"pid {first.pid} on host {socket.gethostname()} since 20" in message
    assert runs_in(out / "scores") == runs_in(out / "rejects") == 1

    first.stdin.write("\n")
    first.stdin.flush()
    assert wait_for_line(first) == "committed"
    assert first.wait(30) == 0
    _close(first)
    assert runs_in(out / "scores") == runs_in(out / "rejects") == 2

    commit_run(out, 3)
    assert runs_in(out / "scores") == runs_in(out / "rejects") == 3
    assert _leftovers(out) == []


def test_two_writers_started_together_end_with_one_consistent_dataset(tmp_path):
    out = tmp_path / "out"
    commit_run(out, 1)
    writers = {run: start_writer(out, run, files=30) for run in (2, 3)}
    outcomes = {}
    for run, writer in writers.items():
        stdout, stderr = writer.communicate(timeout=120)
        outcomes[run] = writer.returncode
        assert writer.returncode in (0, 3), stderr
        assert ("committed" if writer.returncode == 0 else "is being written by another run") in stdout
    final = runs_in(out / "scores", 30)
    assert final == runs_in(out / "rejects", 30) and outcomes[final] == 0
    assert [runs_in(p, 30) for p in snapshots(out / "scores", out / "rejects")] == [final, final]
    assert _leftovers(out) == []


def test_commits_of_different_partitions_wait_for_each_other_and_keep_each_others_partition(tmp_path):
    """The first writer stops just before its switch, its version built (without date=2) and the
    commit lock held; the second, for date=2, waits for that lock (it says so) instead of switching
    in between, then builds on the first one's version: both partitions end up in the dataset."""
    out = tmp_path / "out"
    first = start_writer(out, 1, pause="switch", files=20, partition="date=1")
    assert wait_for_line(first) == "paused"
    second = start_writer(out, 2, files=20, partition="date=2")
    assert wait_for_line(second) == "waiting"
    first.stdin.write("\n")
    first.stdin.flush()
    assert wait_for_line(first) == "committed" and wait_for_line(second) == "committed"
    assert first.wait(30) == second.wait(30) == 0
    _close(first), _close(second)
    for dataset in ("scores", "rejects"):
        assert sorted(p.name for p in (out / dataset).iterdir()) == ["date=1", "date=2"]
        assert [runs_in(out / dataset / f"date={run}", 20) for run in (1, 2)] == [1, 2]
    assert _leftovers(out) == []


def test_partitions_are_written_side_by_side_but_never_twice_or_under_a_whole_dataset_rewrite(tmp_path):
    out = tmp_path / "out"
    dataset, staging = out / "scores", out / ".staging"
    with atomic_dataset_dir(dataset / "date=1", staging=staging) as tmp:
        write_run(tmp, 1)
        with atomic_dataset_dir(dataset / "date=2", staging=staging) as other:  # another partition: fine
            write_run(other, 2)
        with pytest.raises(DatasetLockedError, match=r"date=1 is being written by another run: its lock .*pid"):
            atomic_dataset_dir(dataset / "date=1", staging=staging).__enter__()
        with pytest.raises(DatasetLockedError, match="other runs are writing partitions of it"):
            atomic_dataset_dir(dataset, staging=staging).__enter__()
    assert runs_in(dataset / "date=1") == 1 and runs_in(dataset / "date=2") == 2

    with atomic_dataset_dir(dataset, staging=staging) as tmp:
        (tmp / "date=3").mkdir()
        write_run(tmp / "date=3", 3)
        with pytest.raises(DatasetLockedError, match=r"another run is replacing the whole dataset .*scores; its lock"):
            atomic_dataset_dir(dataset / "date=4", staging=staging).__enter__()
    assert sorted(p.name for p in dataset.iterdir()) == ["date=3"]
    assert _leftovers(out) == []


def test_leftovers_of_killed_runs_are_removed_but_live_runs_are_left_alone(tmp_path):
    out = tmp_path / "out"
    staging = out / ".staging"
    dead = staging / "run-20200101T000000Z-elsewhere-1-abcdef"
    (dead / "0-scores").mkdir(parents=True)
    write_run(dead / "0-scores", 9)
    (staging / "run-20200101T000000Z-elsewhere-2-abcdef.lock").write_text("")  # a run lock nobody holds
    (staging / "scores.lock").write_text('{"pid": 1}')  # a killed run's target lock
    legacy = staging / ".scores.tmp-x1y2"  # from an earlier version of this module
    legacy.mkdir()
    os.utime(legacy, (time.time() - 2 * atomic.LEGACY_STALE_AFTER,) * 2)
    with atomic_dataset_dir(out / "other", staging=staging) as other:
        mine = sorted(p.name for p in staging.iterdir())
        assert len(mine) == 3 and "other.lock" in mine, mine  # its run lock and folder; the debris is gone
        write_run(other, 5)
        commit_run(out, 1)  # another run commits while this one is still writing
        assert sorted(p.name for p in staging.iterdir()) == mine and runs_in(other) == 5
    assert runs_in(out / "scores") == 1 and runs_in(out / "other") == 5
    assert _leftovers(out) == []


def test_what_killed_commits_leave_in_versions_is_removed_by_the_next_commit(tmp_path):
    out = tmp_path / "out"
    commit_run(out, 1)
    versions = out / ".versions"
    current = _current(out)
    debris = {
        "tmp-run-20200101T000000Z-elsewhere-1-abcdef": "dir",  # a half-built version
        "current.tmp-1a2b3c4d": "link",  # a new pointer never renamed into place
        "old-run-20200101T000000Z-elsewhere-1-abcdef-scores": "link",  # an adoption that never happened
        "v-29991231T235959.999999Z-abcdef": "dir",  # built after the current version, never switched to
    }
    for name, kind in debris.items():
        if kind == "dir":
            (versions / name / "scores").mkdir(parents=True)
            write_run(versions / name / "scores", 9)
            long_ago = time.time() - 2 * atomic.VERSION_GRACE  # built by a commit that died long ago
            os.utime(versions / name, (long_ago, long_ago))
        else:
            os.symlink(current, versions / name)
    os.symlink(".versions/current/gone", out / "gone")  # a link made for a first commit that died
    assert _leftovers(out) == sorted(
        ["gone (leads nowhere)", *(f".versions/{name}" for name in debris if not name.startswith("v-"))]
    )
    commit_run(out, 2)
    assert sorted(p.name for p in versions.iterdir()) == sorted(["current", current, _current(out)])
    assert not os.path.lexists(out / "gone") and _leftovers(out) == []


def test_replaced_versions_are_kept_for_the_grace_period_then_deleted_by_a_later_commit(tmp_path, monkeypatch):
    out = tmp_path / "out"
    commit_run(out, 1)
    first = snapshot(out / "scores")
    commit_run(out, 2)
    commit_run(out, 3)
    assert runs_in(first) == 1 and len(_versions(out)) == 3  # within the grace period: all readable
    monkeypatch.setattr(atomic_versions, "VERSION_GRACE", 0.0)
    commit_run(out, 4)  # deletes those replaced before it; the one it replaces is kept until the next
    assert not first.exists() and len(_versions(out)) == 2
    assert runs_in(out / ".versions" / _versions(out)[0] / "scores") == 3
    assert _leftovers(out) == []


def test_a_wall_clock_stepping_back_never_deletes_the_version_just_replaced(tmp_path, monkeypatch):
    """Version names carry the wall-clock time; the version that was current a moment ago must keep
    its grace period even when the clock stepped back and the newer version's name sorts first."""
    from datetime import UTC, datetime

    clock = [datetime(2026, 1, 1, 12, 0, tzinfo=UTC)]

    class Clock(datetime):
        @classmethod
        def now(cls, tz=None):
            return clock[0]

    monkeypatch.setattr(atomic_versions, "datetime", Clock)
    out = tmp_path / "out"
    commit_run(out, 1)
    first = snapshot(out / "scores")
    clock[0] = datetime(2026, 1, 1, 11, 0, tzinfo=UTC)  # the clock steps back an hour
    commit_run(out, 2)
    assert _current(out) < first.parent.name  # the current version's name now sorts first
    clock[0] = datetime(2026, 1, 1, 11, 0, 1, tzinfo=UTC)
    commit_run(out, 3)  # tidies: the version of run 1 was replaced a moment ago
    assert runs_in(first) == 1 and len(_versions(out)) == 3
    assert runs_in(out / "scores") == 3 and _leftovers(out) == []


def test_a_lock_held_for_a_moment_by_a_cleaner_or_a_finishing_run_is_waited_for(tmp_path):
    """A run that lets its locks go, or a cleaner that locks a free lock file to delete it, holds it
    for microseconds: a run starting then is not refused. A real holder still is, at once."""
    out = tmp_path / "out"
    staging = out / ".staging"
    staging.mkdir(parents=True)
    cleaner = atomic_locks._try_lock(staging / "scores.lock", exclusive=True)
    timer = threading.Timer(atomic.LOCK_RETRY / 5, atomic_locks._release, [cleaner])
    timer.start()
    try:
        commit_run(out, 1)  # asks for scores.lock while the cleaner holds it
    finally:
        timer.join()
    assert runs_in(out / "scores") == runs_in(out / "rejects") == 1

    with atomic_dataset_dir(out / "scores", staging=staging) as tmp:  # a real holder
        write_run(tmp, 2)
        started = time.monotonic()
        with pytest.raises(DatasetLockedError, match="is being written by another run"):
            commit_run(out, 3)
        assert time.monotonic() - started < atomic.LOCK_RETRY + 0.5
    assert runs_in(out / "scores") == 2 and runs_in(out / "rejects") == 1
    assert _leftovers(out) == []


def test_a_symbolic_link_of_ones_own_as_a_dataset_root_is_refused(tmp_path):
    out, big = tmp_path / "out", tmp_path / "big"
    (big / "scores").mkdir(parents=True)
    write_run(big / "scores", 1)
    out.mkdir()
    (out / "scores").symlink_to(big / "scores")
    for targets in ([out / "scores", out / "rejects"], [out / "scores" / "date=1"]):
        refused = f"{out / 'scores'} is a symbolic link \\(to {big / 'scores'}\\)"
        with pytest.raises(ValueError, match=refused), atomic_datasets(*targets, staging=out / ".staging") as tmps:
            pytest.fail(f"the run started: {tmps}")
    assert os.readlink(out / "scores") == str(big / "scores") and runs_in(big / "scores") == 1
    assert sorted(p.name for p in out.iterdir()) == ["scores"]

    linked = tmp_path / "linked-out"  # what to do instead: the output folder itself may be a link
    linked.symlink_to(big, target_is_directory=True)
    commit_run(linked, 2, partition="date=1")
    assert runs_in(big / "scores" / "date=1") == 2 and (big / "scores").is_symlink()
    assert len(list((big / "scores").glob("part-0001-*.parquet"))) == FILES  # the plain folder was adopted


# --- object stores, through Beam's file systems on a local path ----------------------------------


def test_the_beam_filesystems_variant_keeps_the_same_contract(tmp_path):
    """``atomic_filesystem_dir`` is for gs://, s3:// ... outputs; Beam's local file system runs it here."""
    from pipeline.outputs.atomic import atomic_filesystem_dir, committed_files

    target = tmp_path / "scores"
    target.mkdir()
    (target / "old.parquet").write_text("old")
    with pytest.raises(RuntimeError), atomic_filesystem_dir(str(target)) as tmp:
        assert tmp.startswith(f"{tmp_path}/.staging/")
        (Path(tmp) / "half.parquet").write_text("half")
        raise RuntimeError
    assert [p.name for p in target.iterdir()] == ["old.parquet"]
    assert _leftovers(tmp_path) == []
    with pytest.raises(FileNotFoundError):
        committed_files(str(target))

    with atomic_filesystem_dir(str(target)) as tmp:
        for i in range(2):
            (Path(tmp) / f"part-{i}.parquet").write_text(f"new {i}")
    assert sorted(p.name for p in target.iterdir()) == ["_manifest.json", "part-0.parquet", "part-1.parquet"]
    assert committed_files(str(target)) == [f"{target}/part-0.parquet", f"{target}/part-1.parquet"]
    assert _leftovers(tmp_path) == []


def test_the_object_store_commit_puts_new_files_in_place_before_deleting_old_ones(tmp_path, monkeypatch):
    """A partition on an object store: staged under OUT/.staging (not under the dataset root), the
    new files copied into place first, then the manifest, then the old ones deleted, for scores and
    rejects alike."""
    from apache_beam.io.filesystems import FileSystems

    from pipeline.outputs.atomic import atomic_filesystem_datasets, committed_files

    out = tmp_path / "out"
    targets = [str(out / "scores" / "date=1"), str(out / "rejects" / "date=1")]
    staging = f"{out}/.staging"
    with atomic_filesystem_datasets(*targets, staging=staging) as tmps:
        for tmp in tmps:
            write_run(Path(tmp), 1)

    deletes, real_delete = [], FileSystems.delete

    def delete(paths):
        if any(p.endswith(".parquet") for p in paths):
            deletes.append({t: (sorted(p.name for p in Path(t).iterdir()), committed_files(t)) for t in targets})
        return real_delete(paths)

    monkeypatch.setattr(FileSystems, "delete", delete)
    with atomic_filesystem_datasets(*targets, staging=staging) as tmps:
        for tmp in tmps:
            assert tmp.startswith(f"{staging}/run-")
            write_run(Path(tmp), 2)
        assert sorted(p.name for p in (out / "scores").iterdir()) == ["date=1"]
    old = [f"part-0001-{i:05d}.parquet" for i in range(FILES)]
    new = [f"part-0002-{i:05d}.parquet" for i in range(FILES)]
    assert deletes[0] == {t: (sorted([*old, *new, "_manifest.json"]), [f"{t}/{n}" for n in new]) for t in targets}, (
        "old files were deleted before all new ones and the manifest were in"
    )
    assert [runs_in(Path(t)) for t in targets] == [2, 2]
    assert json.loads((Path(targets[0]) / "_manifest.json").read_text())["run"].startswith("run-")
    assert _leftovers(out) == [] and sorted(p.name for p in (out / "scores").iterdir()) == ["date=1"]


def test_a_failed_object_store_commit_takes_the_new_files_out_again(tmp_path, monkeypatch):
    from apache_beam.io.filesystems import FileSystems

    from pipeline.outputs.atomic import atomic_filesystem_datasets, committed_files

    out = tmp_path / "out"
    targets = [str(out / "scores"), str(out / "rejects")]
    with atomic_filesystem_datasets(*targets, staging=f"{out}/.staging") as tmps:
        for tmp in tmps:
            write_run(Path(tmp), 1)
    manifests = [committed_files(t) for t in targets]
    calls, real_rename = [], FileSystems.rename

    def rename(sources, destinations):
        calls.append(destinations)
        if len(calls) == 2:  # scores are in place, the rejects' copy fails
            real_rename(sources[:1], destinations[:1])
            raise OSError("the copy failed")
        return real_rename(sources, destinations)

    monkeypatch.setattr(FileSystems, "rename", rename)
    with (
        pytest.raises(OSError, match="copy failed"),
        atomic_filesystem_datasets(*targets, staging=f"{out}/.staging") as t,
    ):
        for tmp in t:
            write_run(Path(tmp), 2)
    assert [runs_in(Path(t)) for t in targets] == [1, 1]
    assert [committed_files(t) for t in targets] == manifests
    assert _leftovers(out) == []


def test_object_store_prefixes_of_dead_runs_are_removed_by_age_or_by_this_machines_free_lock(tmp_path):
    """On an object store nobody can tell whether another machine's run is alive: its temporary
    prefix is removed once older than REMOTE_STALE_AFTER; this machine's as soon as its lock is free."""
    stage = tmp_path / ".staging"
    now = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    here = atomic_locks._host()
    prefixes = {
        "old, elsewhere": "run-20200101T000000Z-elsewhere-1-abcdef",
        "new, elsewhere": f"run-{now}-elsewhere-1-abcdef",
        "new, here, dead": f"run-{now}-{here}-1-abcdef",
    }
    for name in prefixes.values():
        (stage / name / "0-scores").mkdir(parents=True)
        (stage / name / "0-scores" / "part.parquet").write_bytes(b"x")
    run = atomic_locks._Run.start(tmp_path / "locks")
    try:
        atomic_remote._clean_remote(str(stage), run)
    finally:
        run.close()
    assert sorted(p.name for p in stage.iterdir()) == [prefixes["new, elsewhere"]]


def test_an_object_store_reader_never_finds_the_dataset_missing(tmp_path):
    """The object store commit is not a switch: for a moment a lister may see the old files and the
    new ones side by side (documented), but never fewer than a complete dataset; a reader of the
    manifest always gets one run's complete list (a file of it may be deleted under it: retried)."""
    from pipeline.outputs.atomic import atomic_filesystem_dir, committed_files

    target = tmp_path / "scores"
    with atomic_filesystem_dir(str(target)) as tmp:
        write_run(Path(tmp), 0)

    def at_least_one_dataset(runs):
        runs = list(runs)
        return None if len(runs) >= FILES * ROWS else f"{len(runs)} rows"

    def library(runs):
        return None if _whole(runs) is None else "short"  # two runs side by side are allowed here

    def manifest_runs():
        return pq.read_table(committed_files(str(target))).column("run").to_pylist()

    pollers = [
        Poller("pinned", lambda: read_pinned(target), at_least_one_dataset),  # files deleted under it: retried
        Poller("manifest", manifest_runs, _whole),  # never mixed or short; may straddle the deletes
        *[Poller(p.name, p.read, library) for p in _library_pollers(target)],
    ]

    def commit(run):
        with atomic_filesystem_dir(str(target)) as tmp:
            write_run(Path(tmp), run)

    _commit_while_polling(pollers, commit, commits=15)
    assert runs_in(target) == 15 and _leftovers(tmp_path) == []


def test_a_shard_file_appears_whole_and_an_unfinished_one_is_cleared(tmp_path):
    """The one-branch job's shard files use the same temporary names as every other write: hidden
    until complete, and what a killed worker left is removed before the commit."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.beam.score_shards import _ParquetFile, remove_unfinished
    from pipeline.outputs.files import is_temporary, temporary_beside

    schema = pa.schema([("x", pa.int64())])
    done = _ParquetFile(str(tmp_path / "part-00000.parquet"), schema, always=False)
    done.write(pa.table({"x": [1, 2]}, schema=schema))
    assert [p.name for p in tmp_path.iterdir() if is_temporary(p.name)] and not (
        tmp_path / "part-00000.parquet"
    ).exists()
    done.close()
    assert pq.read_table(tmp_path / "part-00000.parquet")["x"].to_pylist() == [1, 2]
    aborted = _ParquetFile(str(tmp_path / "part-00001.parquet"), schema, always=False)
    aborted.write(pa.table({"x": [3]}, schema=schema))
    aborted.abort()
    temporary_beside(tmp_path / "part-00002.parquet").write_bytes(b"PAR1")  # a worker killed mid-shard
    assert remove_unfinished(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-00000.parquet"]
