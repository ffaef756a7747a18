"""Roll-ups of the segment index: one object per finished binlog file, read instead of one index
entry per segment; the listed index entries always decide what exists."""

from __future__ import annotations

import pytest

from backupkit.repo import layout
from backupkit.repo.catalog import Catalog, SegmentInfo
from backupkit.repo.codec import StoredObject
from backupkit.storage.local import LocalStore

SRC = "db1"


class CountingStore(LocalStore):
    """A local store that counts whole-object reads (what a GET is on S3)."""

    reads = 0

    def get_bytes(self, key: str) -> bytes:
        CountingStore.reads += 1
        return super().get_bytes(key)


def _seg(file: str, start: int, end: int, *, closed: bool = False, nxt: str = "") -> SegmentInfo:
    obj = StoredObject(layout.segment_data(SRC, file, start, end), 10, "ab" * 32, 100)
    return SegmentInfo(SRC, file, start, end, obj, first_commit_time=start, last_commit_time=end,
                       transactions=1, file_closed=closed, next_file=nxt, range_id="r1")


@pytest.fixture()
def catalog(tmp_path):
    store = CountingStore(tmp_path / "repo")
    cat = Catalog(store)
    cat.ensure_repo()
    for f, n in (("binlog.000001", 30), ("binlog.000002", 20), ("binlog.000003", 5)):
        pos = 4
        for i in range(n):
            last = i == n - 1 and f != "binlog.000003"
            nxt = f"binlog.{int(f[-6:]) + 1:06d}" if last else ""
            cat.commit_segment(_seg(f, pos, pos + 100, closed=last, nxt=nxt))
            pos += 100
    return cat


def _plain(cat: Catalog) -> list[dict]:
    """The segments as read without any roll-up: every index entry itself."""
    keys = [i.key for i in cat.store.list(layout.binlog_prefix(SRC)) if layout.is_segment_index(i.key)]
    segs = [SegmentInfo.from_dict(cat.read_manifest(k)) for k in keys]
    return [s.to_dict() for s in sorted(segs, key=lambda s: (s.binlog_file, s.start_pos))]


def test_roll_up_writes_finished_files_and_reads_equal_segments(catalog):
    want = _plain(catalog)
    out = catalog.roll_up(SRC)
    assert out["written"] == [layout.segment_rollup(SRC, "binlog.000001"),
                              layout.segment_rollup(SRC, "binlog.000002")]  # not the newest file
    CountingStore.reads = 0
    got = [s.to_dict() for s in catalog.segments(SRC)]
    assert got == want
    assert CountingStore.reads == 1 + 2 + 5  # the head (none here), two roll-ups, five entries
    assert catalog.roll_up(SRC)["written"] == []  # up to date: nothing written again


def test_an_entry_missing_from_a_roll_up_is_read_itself_and_a_pruned_one_is_ignored(catalog):
    catalog.roll_up(SRC)
    catalog.commit_segment(_seg("binlog.000001", 100_000, 100_100))  # after the roll-up
    gone = _seg("binlog.000002", 4, 104)
    catalog.store.delete([gone.key])  # pruned after the roll-up
    want = _plain(catalog)
    got = [s.to_dict() for s in catalog.segments(SRC)]
    assert got == want and gone.key not in {s.key for s in catalog.segments(SRC)}
    assert len(catalog.roll_up(SRC)["written"]) == 1  # binlog.000001 again; 000002 still covers


def test_a_damaged_roll_up_is_skipped_and_the_entries_read_one_by_one(catalog, caplog):
    catalog.roll_up(SRC)
    key = layout.segment_rollup(SRC, "binlog.000001")
    path = catalog.store.root / key
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    want = _plain(catalog)
    assert [s.to_dict() for s in catalog.segments(SRC)] == want
    assert "ignoring roll-up" in caplog.text


def test_a_roll_up_whose_file_is_pruned_whole_is_deleted(catalog):
    catalog.roll_up(SRC)
    keys = [s.key for s in catalog.segments(SRC) if s.binlog_file == "binlog.000001"]
    catalog.store.delete(keys)
    out = catalog.roll_up(SRC)
    assert out["deleted"] == [layout.segment_rollup(SRC, "binlog.000001")]
    assert catalog.store.stat(layout.segment_rollup(SRC, "binlog.000001")) is None


def test_roll_up_keys_are_not_index_entries_or_data():
    key = layout.segment_rollup(SRC, "binlog.000001")
    assert not layout.is_segment_index(key) and layout.segment_of(key) is None
    assert layout.commit_marker_of(key) is None and not layout.is_commit_marker(key)
    assert layout.rollup_file_of(key) == "binlog.000001"
    assert layout.rollup_file_of(layout.segment_index(SRC, "binlog.000001", 4, 5)) is None


def test_an_entry_written_again_after_the_roll_up_is_read_itself(catalog):
    """A file pruned and then shipped anew under the same name (a rebuilt server keeping its
    source id) has entries with the same keys: the newer entry wins over the older roll-up."""
    import os
    import time

    catalog.roll_up(SRC)
    old = _seg("binlog.000001", 4, 104)
    catalog.store.delete([old.key])
    new = _seg("binlog.000001", 4, 104)
    new.transactions = 7
    catalog.commit_segment(new)
    path = catalog.store.root / old.key
    later = time.time() + 5  # the storage's clock: newer than the roll-up, whatever the resolution
    os.utime(path, (later, later))
    (got,) = [s for s in catalog.segments(SRC) if s.key == old.key]
    assert got.transactions == 7
    assert [s.to_dict() for s in catalog.segments(SRC)] == _plain(catalog)
