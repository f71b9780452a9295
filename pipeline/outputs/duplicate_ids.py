"""Repeated ``example_id``s in a written dataset, found without holding every id at once.

The launcher checks every run before its commit (:func:`pipeline.outputs.score_tables.reject_duplicates`).
Holding every id at once cost it 336 MiB at a million rows (the digits' ids, ``FILE:ROW``), more than
any worker holds. Instead each id is hashed to 64 bits, a record batch at a time, in passes that each
keep the hashes of one hash bucket (:data:`HASHES_PER_PASS` of them on average, 8 bytes each): the
hashes seen twice name the candidates, and a last pass reads the three columns the rule needs and
keeps only the candidates' rows, to which the contract's rule
(:func:`training.data.validate.duplicate_rows`) is applied exactly. A hash collision between two
different ids only adds a candidate that the rule then keeps.

Memory therefore grows with the number of *repeated* rows, not with the rows: a few in the usual
run; a run over an input that holds the same rows twice holds them all, as the check always did.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

BATCH_ROWS = 65_536
# hashes held in one pass, on average (twice that while they are joined): 8,000,000 x 8 bytes = 61 MiB
HASHES_PER_PASS = 8_000_000


@dataclass(frozen=True)
class Duplicates:
    """The rows to move from a dataset to the rejects: global row numbers in file order, each with
    its reason, and each file's path and row count (the order of the numbering)."""

    rows: dict[int, str]
    files: list[tuple[str, int]]


def hash_ids(ids: pa.Array) -> np.ndarray:
    """64-bit hashes of string ids (pandas' SipHash of each value)."""
    import pandas as pd

    return pd.util.hash_array(ids.fill_null("").to_numpy(zero_copy_only=False), categorize=False)


def _batches(fragments: list, columns: list[str]) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(fragment index, record batch) over every fragment, in order."""
    for index, fragment in enumerate(fragments):
        # one batch at a time: the scanner's read-ahead threads held 68 MiB at a million rows
        for batch in fragment.to_batches(columns=columns, batch_size=BATCH_ROWS, batch_readahead=1, use_threads=False):
            yield index, batch


def _repeated_hashes(fragments: list, total_rows: int, hashes_per_pass: int) -> np.ndarray:
    """The hash values that occur more than once (sorted within each bucket), one bucket per pass."""
    passes = max(1, math.ceil(total_rows / hashes_per_pass))
    repeated = []
    for bucket in range(passes):
        kept = []
        for _, batch in _batches(fragments, ["example_id"]):
            hashes = hash_ids(batch.column(0))
            kept.append(hashes[hashes % passes == bucket] if passes > 1 else hashes)
        values = np.concatenate(kept) if kept else np.empty(0, np.uint64)
        del kept
        values.sort()  # in place: no second copy
        repeated.append(np.unique(values[1:][values[1:] == values[:-1]]))
    return np.concatenate(repeated)


def find_duplicates(dataset, hashes_per_pass: int = HASHES_PER_PASS) -> Duplicates:
    """The rows of ``dataset`` (a ``pyarrow.dataset.Dataset`` with ``example_id``, ``source``,
    ``source_row``) that the contract's rule for a repeated id rejects."""
    from training.data.validate import duplicate_rows

    fragments = list(dataset.get_fragments())
    files = [(fragment.path, fragment.count_rows()) for fragment in fragments]
    candidates = _repeated_hashes(fragments, sum(rows for _, rows in files), hashes_per_pass)
    if len(candidates) == 0:  # the usual case: one pass over one column
        return Duplicates({}, files)
    starts = np.cumsum([0] + [rows for _, rows in files])
    offsets = dict.fromkeys(range(len(files)), 0)
    numbers, parts = [], []
    for index, batch in _batches(fragments, ["example_id", "source", "source_row"]):
        local = np.flatnonzero(np.isin(hash_ids(batch.column(0)), candidates))
        numbers.append(starts[index] + offsets[index] + local)
        parts.append(batch.take(pa.array(local)))
        offsets[index] += batch.num_rows
    numbers = np.concatenate(numbers)
    table = pa.Table.from_batches(parts)
    mask, reasons = duplicate_rows(
        table.column("example_id").to_pylist(),
        table.column("source").to_pylist(),
        table.column("source_row").to_pylist(),
    )
    return Duplicates(dict(zip(numbers[mask].tolist(), reasons, strict=True)), files)
