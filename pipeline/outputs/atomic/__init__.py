"""Dataset folders that never flicker: a run's outputs appear whole, together, in one step, or not at all.

    with atomic_datasets(out / "scores", out / "rejects", staging=out / ".staging") as (scores, rejects):
        write_parquet_files_into(scores, rejects)
    # out/scores and out/rejects now hold exactly what was written, switched by one rename together;
    # on an exception they are untouched

    scores, rejects = snapshots(out / "scores", out / "rejects")  # a reader's fixed, consistent view

What "atomic" means here
------------------------
A run writes into private folders under ``OUT/.staging/run-ID/``, outside every dataset root (a
glob such as DuckDB's ``OUT/scores/*/*.parquet`` also matches hidden folders, and ``**`` any depth,
so nothing half-written or old may ever sit under ``OUT/scores``). ``OUT`` is the folder that holds
the staging folder. Only when the body of the ``with`` succeeded are the folders *committed*.

**Local disk: immutable versions behind one pointer.** The datasets of ``OUT`` live in version
folders that are never changed once built; each public dataset path is a symbolic link through one
pointer per ``OUT``::

    OUT/scores             -> .versions/current/scores
    OUT/rejects            -> .versions/current/rejects
    OUT/.versions/current  -> v-20260101T120000.123456Z-1a2b3c
    OUT/.versions/v-20260101T120000.123456Z-1a2b3c/scores/...   (partitions: plain folders inside)
    OUT/.versions/v-20260101T120000.123456Z-1a2b3c/rejects/...

A commit assembles a complete new version (the run's folders moved in; every other file of every
dataset of ``OUT`` carried over as a hard link, no data copied), then replaces ``current`` with a
new link by one ``rename()``. That one system call switches every dataset of the commit (``scores``
and ``rejects``, or the partitions ``scores/date=D`` and ``rejects/date=D``) at once: before it,
each public path leads to the previous version, after it to the new one. There is no moment in
which a dataset or partition is missing, empty or half-written, or in which ``scores`` and
``rejects`` come from different runs. Only the dataset roots are links; partitions are real
folders inside a version, so whoever opens ``OUT/scores`` finds a plain hive layout (pyarrow,
pandas, DuckDB with ``*/*.parquet`` or ``**``, Python's ``rglob`` and ``os.walk``: all tested; a
link per partition would hide it from ``rglob``, ``os.walk`` and DuckDB's ``**``). Commits to one
``OUT`` are serialised by a short lock (``.versions/commit.lock``), held only while a version is
assembled and switched, so runs writing different partitions still run side by side, and each
commit carries over what the others committed. The cost is one hard link per file of the datasets
of ``OUT`` per commit (tens of microseconds each). Files are shared between versions: never modify
a dataset file in place.

What a reader sees.

* A reader that resolves the pointer once reads one complete, unchanging version: use
  :func:`snapshot` (one path) or :func:`snapshots` (several paths, e.g. scores and rejects, from
  the same commit), which give the version folder, e.g. ``OUT/.versions/v-.../scores/date=D``.
  A version stays intact for :data:`VERSION_GRACE` seconds after it has been replaced; after that,
  a later commit to ``OUT`` deletes it (commits never wait for readers; nothing runs in the
  background, so the version before the latest stays until the next commit). The grace period
  counts from the moment each version was replaced (its folder's time stamp, set then), never from
  the time in its name: a wall clock that steps backwards cannot make a version that was current a
  moment ago look like debris. (A version a killed commit built but never switched to is removed
  the same way, once its grace period from when it was built has passed.)
* A reader of the public path that opens the folder once and reads its files relative to it (a
  directory file descriptor, ``os.scandir`` then ``openat``) sees one version, complete.
* pyarrow, pandas and DuckDB, given the public path, list the folder and then open every file again
  by its full path, which goes through the pointer again. A read that overlaps a commit (a window as
  long as the read) may list one version and look the names up in the next. With file names that
  differ from run to run (as ``vae score`` and ``vae generate`` write them:
  ``part-RUN-SSSSS-of-NNNNN.parquet``) such a read fails with "file not found", or, since pyarrow
  skips listed names that are gone, comes back with fewer rows (or none) of the one run it listed;
  it never combines rows of two runs. Retry it, check the row count, or read a snapshot. A writer
  whose file names repeat from run to run (neither of those two) would let a straddling read
  combine files of two versions: read a snapshot. No switch of a folder (exchange or link) can do
  better for such readers; only a reader that resolves once can. A file already open keeps its
  contents until it is closed.

**Adopting a plain folder.** A dataset root that is still a plain folder (from an earlier version
of this module, or made by hand) is adopted by the first commit that writes it: a version holding
hard links of its files (same names, same bytes) is made current, and the folder is exchanged for
the link with ``renameat2(RENAME_EXCHANGE)``. Readers find the same files before and after, even a
read that lists across the exchange; then the commit proceeds as above. Where the exchange is not
available the folder is renamed away and the link renamed in: for that one moment, once per
dataset, the path does not exist. A commit killed between these steps is finished from its journal
(``.versions/migrate-RUN.json``) by the next commit. The replaced folder is kept for the grace
period as ``.versions/old-...``.

**A symbolic link of one's own as a dataset root** (``OUT/scores -> /big/scores``) is refused
with a :class:`ValueError` before the run writes anything: adopting it would copy or hard-link its
files into ``OUT/.versions`` and replace the link. To keep the data elsewhere, let ``OUT`` itself
be (or lie on) that place: ``--output /big/out``, or ``OUT`` a link to it. Only the layout's own
links (to ``.versions/current/NAME``) may stand at a dataset root.

**Fallback.** Where symbolic links cannot be made (a file system that refuses them), or a final
path does not lie inside ``OUT``, each public folder is switched by its own
``renameat2(RENAME_EXCHANGE)`` (Linux 3.15+): never missing, but ``scores`` and ``rejects`` are
switched by two calls microseconds apart, not one (a journal in ``run-ID/commit.json`` rolls a
killed commit forward), and the replaced folder is kept :data:`OLD_VERSION_GRACE` seconds before it
is deleted. Where even the exchange is missing, two renames, with a moment in which the folder does
not exist. A warning is logged in both cases.

**Locks.** A run holds ``fcntl.flock`` locks on files in the staging folder from the moment it
starts until it has committed (or failed): exclusive on each target (``scores.lock``,
``scores+date=D.lock``), shared on the dataset a partition belongs to (``scores.lock``), so any
number of runs may write different partitions at once, but a second run writing the same dataset or
partition, or replacing a dataset while a partition of it is written, is refused at once (after
:data:`LOCK_RETRY` seconds of retries: a finishing run or a cleaner holds a free lock file for
microseconds) with a :class:`DatasetLockedError` naming the lock file and the holder's pid, host
and start time. Two runs started together for the same dataset: one writes, the other is
refused, and the dataset ends up as the one run's. The kernel releases the locks of a process that
dies, so there is never a stale lock. Every writer of ``OUT`` must use the same staging folder, ``OUT/.staging``.

**Leftovers.** Each run also holds a lock on its own ``run-ID.lock``. When a run starts it removes
the run folders of runs whose lock is no longer held (killed runs) and lock files nobody holds;
each commit removes what killed commits left in ``.versions`` (half-built versions, links made for
a switch that never came) and versions past their grace. A killed run leaves the previous data
readable: before the switch nothing public has changed, after it the commit is complete. A
successful or failed run leaves nothing in ``.staging``, not even the folder; ``.versions`` holds
the current version and those still in their grace period.

Nothing is fsync'ed: the guarantees hold against crashed processes and concurrent readers, not
against a power cut.

**Object stores** (``gs://``, ``s3://``, through Apache Beam's file systems): see
:func:`atomic_filesystem_datasets`. They cannot rename a folder or switch a pointer, so the best they
allow is weaker: new files are copied in next to the old ones before any old one is deleted, and a
``_manifest.json`` names the files of the last commit (:func:`committed_files`).

Where the code is
-----------------
:mod:`~pipeline.outputs.atomic.versions` the local commit through the pointer (and
:func:`output_folder`); :mod:`~pipeline.outputs.atomic.exchange` the switch of one folder
(``renameat2``, two renames) and the fallback commit; :mod:`~pipeline.outputs.atomic.locks` the
locks and the clean-up after killed runs; :mod:`~pipeline.outputs.atomic.remote` object stores;
:mod:`~pipeline.outputs.atomic.failed` what a run that must not commit keeps (``OUT/_failed/RUN_ID/``).
This package re-exports their public names.
"""

from pipeline.outputs.atomic.exchange import JOURNAL, OLD_VERSION_GRACE, replace_dir
from pipeline.outputs.atomic.failed import FAILED, failed_dir, keep_failed
from pipeline.outputs.atomic.locks import LEGACY_STALE_AFTER, LOCK_RETRY, DatasetLockedError
from pipeline.outputs.atomic.remote import (
    MANIFEST,
    REMOTE_STALE_AFTER,
    atomic_filesystem_datasets,
    atomic_filesystem_dir,
    committed_files,
)
from pipeline.outputs.atomic.versions import (
    COMMIT_WAIT,
    CURRENT,
    STAGING,
    VERSION_GRACE,
    VERSIONS,
    atomic_dataset_dir,
    atomic_datasets,
    output_folder,
    snapshot,
    snapshots,
)
from training.paths import is_remote

DatasetLockedError.__module__ = __name__  # its public name: pipeline.outputs.atomic.DatasetLockedError

__all__ = [
    "COMMIT_WAIT",
    "CURRENT",
    "FAILED",
    "JOURNAL",
    "LEGACY_STALE_AFTER",
    "LOCK_RETRY",
    "MANIFEST",
    "OLD_VERSION_GRACE",
    "REMOTE_STALE_AFTER",
    "STAGING",
    "VERSIONS",
    "VERSION_GRACE",
    "DatasetLockedError",
    "atomic_dataset_dir",
    "atomic_datasets",
    "atomic_filesystem_datasets",
    "atomic_filesystem_dir",
    "committed_files",
    "failed_dir",
    "is_remote",
    "keep_failed",
    "output_folder",
    "replace_dir",
    "snapshot",
    "snapshots",
]
