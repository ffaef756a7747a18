"""Preflight: every object a plan reads exists; many segments of one file cost a LIST, not a HEAD each."""

from __future__ import annotations

from backupkit.restore import pitr
from backupkit.storage import open_store
from tests.support.scale import CountingStore


def test_many_keys_of_one_file_are_listed_and_a_missing_one_is_found(tmp_path):
    store = CountingStore(open_store(f"file://{tmp_path / 'repo'}"))
    keys = [f"binlog/s/binlog.000001/{i:012d}-{i + 1:012d}.binlog.zst" for i in range(200)]
    keys += ["backups/b1/data/db/t/000000.tsv.zst", "backups/b1/schema/db.json.zst"]
    for k in keys:
        if k != keys[57]:
            store.put(k, b"x")
    store.reset()
    present = pitr._present(store, keys)
    assert present == [k != keys[57] for k in keys]
    assert store.counts["stat"] == 2  # the two base objects; the segments by one listing
    assert store.total() <= 4
