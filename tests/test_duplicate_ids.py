"""Repeated ``example_id``s found in bounded memory (:mod:`pipeline.outputs.duplicate_ids`): the same
rows and reasons as the contract's rule applied to every row at once, in one pass or in many, and
whatever the hashes collide on."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipeline.outputs import duplicate_ids
from training.data.validate import duplicate_rows

# three files (their order is the numbering's), ids repeated within a file and across files
FILES = {
    "part-0.parquet": ["a", "b", "c", "a", "d"],
    "part-1.parquet": ["e", "b", "f"],
    "part-2.parquet": ["g", "a", "h", "h", "i", "j"],
}


@pytest.fixture
def dataset(tmp_path):
    for name, ids in FILES.items():
        sources = [f"in/{name}"] * len(ids)
        table = pa.table({"example_id": ids, "source": sources, "source_row": list(range(len(ids)))})
        pq.write_table(table, tmp_path / name, row_group_size=2)
    return ds.dataset(str(tmp_path), format="parquet")


def expected(dataset) -> dict[int, str]:
    """The rule on every row at once."""
    table = dataset.to_table(columns=["example_id", "source", "source_row"])
    mask, reasons = duplicate_rows(*(table.column(c).to_pylist() for c in ("example_id", "source", "source_row")))
    return dict(zip(np.flatnonzero(mask).tolist(), reasons, strict=True))


@pytest.mark.parametrize("hashes_per_pass", [1_000, 4, 1])  # 14 rows: one pass; four; fourteen
def test_the_rows_and_reasons_of_the_rule_in_any_number_of_passes(dataset, hashes_per_pass):
    found = duplicate_ids.find_duplicates(dataset, hashes_per_pass=hashes_per_pass)
    assert found.rows == expected(dataset)
    assert sorted(found.rows) == [3, 6, 9, 11]  # a (twice), b, h
    assert [rows for _, rows in found.files] == [5, 3, 6]
    assert found.rows[6] == "duplicate example_id: 'b' is kept from in/part-0.parquet row 1"


def test_hash_collisions_add_candidates_but_reject_nothing_more(dataset, monkeypatch):
    monkeypatch.setattr(duplicate_ids, "hash_ids", lambda ids: np.zeros(len(ids), np.uint64))  # all collide
    assert duplicate_ids.find_duplicates(dataset).rows == expected(dataset)


def test_no_repeated_id_is_one_pass_over_one_column_and_nothing_to_move(tmp_path, monkeypatch):
    pq.write_table(pa.table({"example_id": ["x", "y"], "source": ["s", "s"], "source_row": [0, 1]}), tmp_path / "p")
    reads = []
    batches = duplicate_ids._batches
    monkeypatch.setattr(
        duplicate_ids, "_batches", lambda fragments, columns: reads.append(columns) or batches(fragments, columns)
    )
    found = duplicate_ids.find_duplicates(ds.dataset(str(tmp_path), format="parquet"))
    assert found.rows == {} and [rows for _, rows in found.files] == [2]
    assert reads == [["example_id"]]
