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


def test_a_few_segments_in_a_folder_of_many_are_asked_for_one_by_one(tmp_path):
    """The data of superseded small segments stays during their grace: a plan reading a few
    compacted objects among them asks for those, and lists nothing."""
    store = CountingStore(open_store(f"file://{tmp_path / 'repo'}"))
    folder = [f"binlog/s/data/f/{i:012d}-{i + 1:012d}.binlog.zst" for i in range(800)]
    for k in folder[:500]:
        store.put(k, b"x")
    keys = folder[:pitr.PREFLIGHT_LIST_ABOVE - 1] + [folder[700]]
    store.reset()
    assert pitr._present(store, keys) == [True] * (len(keys) - 1) + [False]
    assert store.counts.get("list", 0) == 0 and store.counts["stat"] == len(keys)


def test_many_segments_are_listed_from_the_first_to_the_last_only(tmp_path):
    store = CountingStore(open_store(f"file://{tmp_path / 'repo'}"))
    folder = [f"binlog/s/data/f/{i:012d}-{i + 1:012d}.binlog.zst" for i in range(1300)]
    for k in folder:
        if k != folder[1100]:
            store.put(k, b"x")
    keys = folder[1000:1200]  # the tail of a long file: the listing starts at its first key
    store.reset()
    assert pitr._present(store, keys) == [k != folder[1100] for k in keys]
    assert store.counts["list"] == 1 and not store.counts.get("stat")
