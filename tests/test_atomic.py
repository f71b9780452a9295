"""Dataset folders that never flicker: real files, real pyarrow / pandas / DuckDB readers, real
processes killed in the middle of a commit, real concurrent writers."""

from __future__ import annotations

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
from pipeline.outputs.atomic import DatasetLockedError, atomic_dataset_dir, atomic_datasets, replace_dir

ROOT = Path(__file__).resolve().parents[1]
FILES, ROWS = 3, 40  # a run writes FILES files of ROWS rows into each dataset


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


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


def _exchange_works(tmp_path) -> bool:
    a, b = tmp_path / "probe-a", tmp_path / "probe-b"
    a.mkdir(), b.mkdir()
    try:
        return atomic._exchange(a, b)
    finally:
        a.rmdir(), b.rmdir()


# --- the contract: all or nothing ----------------------------------------------------------------


def test_success_moves_the_folder_into_place(tmp_path):
    target = tmp_path / "out" / "scores"
    with atomic_dataset_dir(target) as tmp:
        assert tmp.is_relative_to(target.parent / ".staging") and tmp.is_dir() and not target.exists()
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
    new = tmp_path / "new"
    new.mkdir()
    (new / "keep").write_text("new")
    replace_dir(new, target)
    assert (target / "keep").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["scores"]


def test_a_partition_is_staged_outside_its_dataset_root(tmp_path):
    """While a partition is written, nothing half-written sits under the dataset root, where a
    glob such as DuckDB's out/scores/*/*.parquet would find it."""
    dataset = tmp_path / "scores"
    (dataset / "date=1").mkdir(parents=True)
    (dataset / "date=1" / "old.parquet").write_bytes(b"old")
    with atomic_dataset_dir(dataset / "date=1", staging=tmp_path / ".staging") as tmp:
        assert tmp.is_relative_to(tmp_path / ".staging")
        (tmp / "new.parquet").write_bytes(b"new")
        assert sorted(p.name for p in dataset.iterdir()) == ["date=1"]
        assert [p.name for p in (dataset / "date=1").iterdir()] == ["old.parquet"]
    assert [p.name for p in (dataset / "date=1").iterdir()] == ["new.parquet"]
    assert sorted(p.name for p in dataset.iterdir()) == ["date=1"]
    assert not (tmp_path / ".staging").exists()


def test_the_datasets_of_one_commit_are_switched_together_or_not_at_all(tmp_path, monkeypatch):
    """Both folders are complete before the first switch; if the second switch fails, the first
    one is undone, so scores and rejects never end up from different runs."""
    out = tmp_path / "out"
    targets = (out / "scores", out / "rejects")
    with atomic_datasets(*targets, staging=out / ".staging") as tmps:
        for tmp in tmps:
            write_run(tmp, 1)

    real, switched = atomic._swap_into_place, []

    def swap(new, target, aside):
        if not switched:
            assert [runs_in(tmp) for tmp in tmps] == [2, 2], "a folder was switched before both were complete"
        else:
            raise OSError("the second switch fails")
        switched.append(target)
        return real(new, target, aside)

    monkeypatch.setattr(atomic, "_swap_into_place", swap)
    with pytest.raises(OSError, match="second switch"), atomic_datasets(*targets, staging=out / ".staging") as tmps:
        for tmp in tmps:
            write_run(tmp, 2)
    assert switched == [targets[0]]
    assert [runs_in(t) for t in targets] == [1, 1]
    assert _leftovers(out) == []


def test_without_renameat2_it_falls_back_to_two_renames_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(atomic, "_RENAMEAT2", None)
    monkeypatch.setattr(atomic, "_warned", set())
    target = tmp_path / "scores"
    for run in (1, 2):
        with caplog.at_level(logging.WARNING, logger="pipeline.outputs.atomic"), atomic_dataset_dir(target) as tmp:
            write_run(tmp, run)
    assert runs_in(target) == 2 and _leftovers(tmp_path) == []
    assert "two renames" in caplog.text


# --- (a) readers polling during commits ----------------------------------------------------------
#
# Two kinds of reader. A *pinned* reader opens the folder once and reads every file relative to that
# open folder: it sees exactly one state of the public path, so it checks the switch itself, and
# must never see a missing, partial or mixed dataset. pyarrow, pandas and DuckDB instead list the
# folder and then stat and open each file by its full path again (strace shows getdents, then
# stat("OUT/scores/NAME") per file, then open): a read that overlaps a switch resolves names listed
# in the old folder inside the new one. With run-named files (as ``score_dataset`` writes them) such
# a read fails with "file not found" or comes back short (the libraries skip names that vanish
# while they list), always with rows of one run only: never mixed. No folder switch (exchange or
# symlink) can do better for these readers without a manifest.


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
    """Reads a public path in a loop until stopped. ``check`` returns None for a complete read,
    "short" for a read that overlapped a switch, or a failure."""

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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RENAME_EXCHANGE is Linux only")
def test_readers_polling_during_commits_never_see_a_missing_partial_or_mixed_dataset(tmp_path):
    """30 runs commit OUT/scores and OUT/rejects while readers poll both. Every state of each public
    path is one run's complete dataset (pinned readers, strict: no error, no short read at all);
    pyarrow, pandas and DuckDB never see rows of two runs and never fail other than by a straddle."""
    if not _exchange_works(tmp_path):
        pytest.skip("this file system has no RENAME_EXCHANGE")
    out = tmp_path / "out"
    scores, rejects = out / "scores", out / "rejects"
    with atomic_datasets(scores, rejects, staging=out / ".staging") as tmps:
        for tmp in tmps:
            write_run(tmp, 0)
    pollers = []
    for path in (scores, rejects):
        pollers.append(Poller(f"pinned {path.name}", lambda p=path: read_pinned(p), _whole, strict=True))
        pollers += _library_pollers(path, path.name)

    def commit(run):
        with atomic_datasets(scores, rejects, staging=out / ".staging") as tmps:
            for tmp in tmps:
                write_run(tmp, run)

    _commit_while_polling(pollers, commit)
    assert runs_in(scores) == runs_in(rejects) == 30
    assert _leftovers(out) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RENAME_EXCHANGE is Linux only")
def test_readers_polling_a_partitioned_dataset_never_see_a_missing_or_mixed_partition(tmp_path):
    """OUT/scores/date=1 is replaced 20 times beside a fixed date=2, as ``vae score --partition``
    does, while pyarrow, pandas and DuckDB (``scores/*/*.parquet`` with hive partitioning) read the
    whole dataset and a pinned reader reads the partition: both partitions always there, date=2
    untouched, date=1 one run's (complete, for the pinned reader)."""
    if not _exchange_works(tmp_path):
        pytest.skip("this file system has no RENAME_EXCHANGE")
    out = tmp_path / "out"
    dataset, staging = out / "scores", out / ".staging"
    for day, run in (("1", 0), ("2", 1000)):
        with atomic_datasets(dataset / f"date={day}", out / "rejects" / f"date={day}", staging=staging) as tmps:
            for tmp in tmps:
                write_run(tmp, run)

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

    con = _duckdb()
    glob = f"read_parquet('{dataset}/*/*.parquet', hive_partitioning = true)"
    pollers = [
        Poller("pinned", lambda: read_pinned(dataset / "date=1"), _whole, strict=True),
        Poller("pyarrow", arrow_pairs, check),
        Poller("pandas", pandas_pairs, check),
        Poller("duckdb", lambda: con.sql(f"SELECT date, run FROM {glob}").fetchall(), check),
    ]

    def commit(run):
        with atomic_datasets(dataset / "date=1", out / "rejects" / "date=1", staging=staging) as tmps:
            for tmp in tmps:
                write_run(tmp, run)

    _commit_while_polling(pollers, commit, commits=20)
    assert runs_in(dataset / "date=1") == runs_in(out / "rejects" / "date=1") == 20
    assert sorted(p.name for p in dataset.iterdir()) == ["date=1", "date=2"]
    assert _leftovers(out) == []


# --- (b) a process killed in the middle of a commit; (c) concurrent writers -----------------------

WRITER = """
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.outputs import atomic

out, run, pause, files = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
real_swap, switched = atomic._swap_into_place, []


def wait_here():
    print("paused", flush=True)
    sys.stdin.readline()  # the test kills us here, or lets us go on


def swap(new, target, aside):
    if pause == f"switch {len(switched) + 1}":
        wait_here()
    switched.append(target)
    return real_swap(new, target, aside)


atomic._swap_into_place = swap
try:
    with atomic.atomic_datasets(out / "scores", out / "rejects", staging=out / ".staging") as tmps:
        for tmp in tmps:
            for i in range(files):
                table = pa.table({"run": pa.array([run] * 40, pa.int64()), "row": pa.array(range(i * 40, i * 40 + 40))})
                pq.write_table(table, tmp / f"part-{run:04d}-{i:05d}.parquet")
        if pause == "writing":
            wait_here()
except atomic.DatasetLockedError as exc:
    print(f"locked: {exc}", flush=True)
    sys.exit(3)
print("committed", flush=True)
"""


def start_writer(out: Path, run: int, pause: str = "none", files: int = FILES) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(out), str(run), pause, str(files)],
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


def commit_run(out: Path, run: int) -> None:
    with atomic_datasets(out / "scores", out / "rejects", staging=out / ".staging") as tmps:
        for tmp in tmps:
            write_run(tmp, run)


@pytest.mark.parametrize(
    ("pause", "after_kill", "after_recovery"),
    [
        ("writing", (1, 1), (1, 1)),  # not committed: thrown away
        ("switch 1", (1, 1), (2, 2)),  # commit decided, nothing switched yet: finished by the next run
        ("switch 2", (2, 1), (2, 2)),  # killed between the two switches: finished by the next run
    ],
)
def test_a_writer_killed_mid_commit_leaves_complete_datasets_and_the_next_run_cleans_up(
    tmp_path, pause, after_kill, after_recovery
):
    out = tmp_path / "out"
    commit_run(out, 1)
    writer = start_writer(out, 2, pause, files=20)
    assert wait_for_line(writer) == "paused"
    writer.send_signal(signal.SIGKILL)
    writer.wait(30)
    writer.stdin.close(), writer.stdout.close(), writer.stderr.close()

    scores, rejects = out / "scores", out / "rejects"
    files = {1: FILES, 2: 20}
    assert [runs_in(p, files[r]) for p, r in zip((scores, rejects), after_kill, strict=True)] == list(after_kill)
    con = _duckdb()
    for path, run in zip((scores, rejects), after_kill, strict=True):
        assert con.sql(f"SELECT count(*), min(run), max(run) FROM '{path}/*.parquet'").fetchall() == [
            (files[run] * ROWS, run, run)
        ]
        assert pd.read_parquet(path)["run"].tolist() == [run] * files[run] * ROWS
    assert any((out / ".staging").iterdir()), "the killed writer should have left its run folder and locks"

    # The next run that writes into OUT (here another dataset) finishes or throws away the killed commit.
    with atomic_dataset_dir(out / "other", staging=out / ".staging") as tmp:
        write_run(tmp, 7)
    assert [runs_in(p, files[r]) for p, r in zip((scores, rejects), after_recovery, strict=True)] == list(
        after_recovery
    )
    assert _leftovers(out) == []

    commit_run(out, 3)
    assert runs_in(scores) == runs_in(rejects) == 3
    assert _leftovers(out) == []


def test_a_second_writer_is_refused_at_once_and_the_first_one_commits(tmp_path):
    """Non-blocking: the second writer fails at once, naming the lock and its holder, and changes
    nothing; the first commits; a writer that comes after it succeeds."""
    out = tmp_path / "out"
    commit_run(out, 1)
    first = start_writer(out, 2, pause="writing")
    assert wait_for_line(first) == "paused"

    with pytest.raises(DatasetLockedError) as refused:
        commit_run(out, 3)
    message = str(refused.value)
    lock = out.absolute() / ".staging" / "scores.lock"
    assert f"{out.absolute() / 'scores'} is being written by another run: its lock {lock} is held by" in message
    assert f"pid {first.pid} on host {socket.gethostname()} since 20" in message
    assert runs_in(out / "scores") == runs_in(out / "rejects") == 1

    first.stdin.write("\n")
    first.stdin.flush()
    assert wait_for_line(first) == "committed"
    assert first.wait(30) == 0
    first.stdin.close(), first.stdout.close(), first.stderr.close()
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


# --- object stores, through Beam's file systems on a local path ----------------------------------


def test_the_beam_filesystems_variant_keeps_the_same_contract(tmp_path):
    """``atomic_filesystem_dir`` is for gs://, s3:// ... outputs; Beam's local file system runs it here."""
    from pipeline.outputs.atomic import atomic_filesystem_dir

    target = tmp_path / "scores"
    target.mkdir()
    (target / "old.parquet").write_text("old")
    with pytest.raises(RuntimeError), atomic_filesystem_dir(str(target)) as tmp:
        assert tmp.startswith(f"{tmp_path}/.staging/")
        (Path(tmp) / "half.parquet").write_text("half")
        raise RuntimeError
    assert [p.name for p in target.iterdir()] == ["old.parquet"]
    assert _leftovers(tmp_path) == []

    with atomic_filesystem_dir(str(target)) as tmp:
        for i in range(2):
            (Path(tmp) / f"part-{i}.parquet").write_text(f"new {i}")
    assert sorted(p.name for p in target.iterdir()) == ["part-0.parquet", "part-1.parquet"]
    assert _leftovers(tmp_path) == []


def test_the_object_store_commit_puts_new_files_in_place_before_deleting_old_ones(tmp_path, monkeypatch):
    """A partition on an object store: staged under OUT/.staging (not under the dataset root), the
    new files copied into place first, then the old ones deleted, for scores and rejects alike."""
    from apache_beam.io.filesystems import FileSystems

    from pipeline.outputs.atomic import atomic_filesystem_datasets

    out = tmp_path / "out"
    targets = [str(out / "scores" / "date=1"), str(out / "rejects" / "date=1")]
    staging = f"{out}/.staging"
    with atomic_filesystem_datasets(*targets, staging=staging) as tmps:
        for tmp in tmps:
            write_run(Path(tmp), 1)

    deletes, real_delete = [], FileSystems.delete

    def delete(paths):
        if any(p.endswith(".parquet") for p in paths):
            deletes.append({t: sorted(p.name for p in Path(t).iterdir()) for t in targets})
        return real_delete(paths)

    monkeypatch.setattr(FileSystems, "delete", delete)
    with atomic_filesystem_datasets(*targets, staging=staging) as tmps:
        for tmp in tmps:
            assert tmp.startswith(f"{staging}/run-")
            write_run(Path(tmp), 2)
        assert sorted(p.name for p in (out / "scores").iterdir()) == ["date=1"]
    old = [f"part-0001-{i:05d}.parquet" for i in range(FILES)]
    new = [f"part-0002-{i:05d}.parquet" for i in range(FILES)]
    assert deletes[0] == {t: sorted(old + new) for t in targets}, "old files were deleted before all new ones were in"
    assert [runs_in(Path(t)) for t in targets] == [2, 2]
    assert _leftovers(out) == [] and sorted(p.name for p in (out / "scores").iterdir()) == ["date=1"]


def test_a_failed_object_store_commit_takes_the_new_files_out_again(tmp_path, monkeypatch):
    from apache_beam.io.filesystems import FileSystems

    from pipeline.outputs.atomic import atomic_filesystem_datasets

    out = tmp_path / "out"
    targets = [str(out / "scores"), str(out / "rejects")]
    with atomic_filesystem_datasets(*targets, staging=f"{out}/.staging") as tmps:
        for tmp in tmps:
            write_run(Path(tmp), 1)
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
    assert _leftovers(out) == []


def test_object_store_prefixes_of_dead_runs_are_removed_by_age_or_by_this_machines_free_lock(tmp_path):
    """On an object store nobody can tell whether another machine's run is alive: its temporary
    prefix is removed once older than REMOTE_STALE_AFTER; this machine's as soon as its lock is free."""
    stage = tmp_path / ".staging"
    now = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    here = atomic._host()
    prefixes = {
        "old, elsewhere": "run-20200101T000000Z-elsewhere-1-abcdef",
        "new, elsewhere": f"run-{now}-elsewhere-1-abcdef",
        "new, here, dead": f"run-{now}-{here}-1-abcdef",
    }
    for name in prefixes.values():
        (stage / name / "0-scores").mkdir(parents=True)
        (stage / name / "0-scores" / "part.parquet").write_bytes(b"x")
    run = atomic._Run.start(tmp_path / "locks")
    try:
        atomic._clean_remote(str(stage), run)
    finally:
        run.close()
    assert sorted(p.name for p in stage.iterdir()) == [prefixes["new, elsewhere"]]


def test_an_object_store_reader_never_finds_the_dataset_missing(tmp_path):
    """The object store commit is not a switch: for a moment a reader may see the old files and
    the new ones side by side (documented), but never fewer than a complete dataset."""
    from pipeline.outputs.atomic import atomic_filesystem_dir

    target = tmp_path / "scores"
    with atomic_filesystem_dir(str(target)) as tmp:
        write_run(Path(tmp), 0)

    def at_least_one_dataset(runs):
        runs = list(runs)
        return None if len(runs) >= FILES * ROWS else f"{len(runs)} rows"

    def library(runs):
        return None if _whole(runs) is None else "short"  # two runs side by side are allowed here

    pollers = [
        Poller("pinned", lambda: read_pinned(target), at_least_one_dataset),  # files deleted under it: retried
        *[Poller(p.name, p.read, library) for p in _library_pollers(target)],
    ]

    def commit(run):
        with atomic_filesystem_dir(str(target)) as tmp:
            write_run(Path(tmp), run)

    _commit_while_polling(pollers, commit, commits=15)
    assert runs_in(target) == 15 and _leftovers(tmp_path) == []
