"""Results cross from Ray workers to the driver as Arrow blocks and come back unchanged."""

from __future__ import annotations

import json

import pytest

from components.curate.execute import ROWS_PER_OUTPUT_BLOCK, _ResultColumns, from_table, read_bytes
from components.storage import NotFound
from tipsv2_core.data.curation.records import Accepted, Rejected


def _accepted(i: int) -> Accepted:
    meta = {"key": f"src-{i}", "split": "train", "classes": ["a"], "width": 3, "height": 2}
    doc = json.dumps(meta, sort_keys=True).encode()
    files = {"jpg": bytes([i % 256]) * (i + 1), "json": doc}
    return Accepted(f"src-{i}", "src", f"{i}.jpg", files, meta, f"{i:064x}", f"{i:016x}")


def test_round_trip_keeps_every_field_and_the_order() -> None:
    results = [
        _accepted(i) if i % 3 else Rejected(f"src-{i}", "src", f"{i}.jpg", "too_small", "")
        for i in range(40)
    ]
    results.append(Rejected("src-x", "src", "x.png", "undecodable", "broken ünïcode detail"))
    cols = _ResultColumns()
    for r in results:
        cols.append(r)
    table = cols.table()
    assert table.num_rows == len(results) and cols.rows == 0  # the next block starts empty
    assert list(from_table(table)) == results
    assert ROWS_PER_OUTPUT_BLOCK >= 1


def test_read_bytes_local_and_missing(tmp_path) -> None:
    (tmp_path / "a.txt").write_bytes(b"hello")
    assert read_bytes(str(tmp_path / "a.txt")) == b"hello"
    assert read_bytes(f"file://{tmp_path}/a.txt") == b"hello"  # through components.storage
    with pytest.raises(NotFound, match="no such file") as err:
        read_bytes(str(tmp_path / "nope.jpg"))
    assert isinstance(err.value, FileNotFoundError)  # read as `missing_image` by tasks.py
