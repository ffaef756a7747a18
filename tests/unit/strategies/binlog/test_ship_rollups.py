"""The shipper's roll-up of a binlog file open for long (strategies/binlog/upload.py,
repo/rollups.py): it holds the entries of no chunk written, whatever the file's length, and a
shipper started anew in the middle of the file leaves the same chunks and roll-up as one run."""

from __future__ import annotations

import gc
from dataclasses import fields

from backupkit.mysql.connection import ConnSpec
from backupkit.repo import layout
from backupkit.repo.catalog import Catalog, SegmentInfo
from backupkit.repo.lease import Lease
from backupkit.repo.rollups import CHUNK
from backupkit.storage.local import LocalStore
from backupkit.strategies.binlog.options import ShipOptions, ShipResult
from backupkit.strategies.binlog.shipper import Shipper
from backupkit.strategies.binlog.upload import PendingSegment
from tests.support.scale import SOURCE, no_fsync, synthetic_segment

FILE = "binlog.000001"


def _shipper(store) -> Shipper:
    """A shipper's storing half, as after it connected (no server: segments are handed to it)."""
    Catalog(store).ensure_repo()
    shipper = Shipper(store, ConnSpec(), ShipOptions(source_id=SOURCE))
    shipper.source_id, shipper.result = SOURCE, ShipResult(SOURCE, 1)
    shipper.lease = Lease(store, SOURCE, lease_seconds=600, holder="test")
    assert shipper.lease.try_acquire()
    return shipper


def _store(shipper: Shipper, i: int, n: int) -> None:
    """Upload and commit the i-th one-second segment of a file of n segments (the last ends it)."""
    seg = synthetic_segment(i, n)
    f = {x.name: getattr(seg, x.name) for x in fields(seg) if x.name != "object"}
    shipper._store(PendingSegment(b"", b"segment %d" % i, 9, f))


def _stop(shipper: Shipper) -> None:
    """The end of a run, once a finished file's roll-up landed: the head names it."""
    for t in shipper._rollups:
        t.join()
    if shipper._last_info is not None:
        shipper._write_head(shipper._last_info)
    shipper.lease.release()


def _held() -> int:
    gc.collect()
    return sum(isinstance(o, SegmentInfo) for o in gc.get_objects())


def _chunk_state(store) -> tuple[list[str], dict]:
    cat = Catalog(store)
    keys = sorted(i.key for i in store.list(layout.rollup_chunk_prefix(SOURCE, FILE)))
    summary = cat.read_rollup(layout.chunk_summary(SOURCE, FILE))["chunks"]
    return keys, {k: v["stretches"] for k, v in summary.items()}


def _finished(store) -> tuple[list[dict], dict]:
    cat = Catalog(store)
    entries = [s.to_dict() for s in cat.rollup_segments(layout.segment_rollup(SOURCE, FILE))]
    return entries, cat.summary_entries(SOURCE)[FILE]["stretches"]


def test_the_shipper_holds_one_chunk_of_entries_of_a_long_open_file(tmp_path):
    n = 3_000  # 11 chunks of 256, 11 of 16, 8 entries: two levels of merges, read back
    before = _held()
    with no_fsync():
        shipper = _shipper(LocalStore(tmp_path / "repo"))
        most = 0
        for i in range(n - 1):
            _store(shipper, i, n)
            most = max(most, shipper._open_rollups.held())
            if i % 500 == 499:  # every entry object alive, the shipper's or not
                assert _held() - before <= CHUNK + 2, i
        assert most == CHUNK - 1  # a chunk is written at its 16th entry
        assert len(shipper._open_rollups.levels) == 11 + 11
        _store(shipper, n - 1, n)  # the file ends: its whole roll-up, from the chunks
        _stop(shipper)
    entries, _ = _finished(shipper.store)
    assert [e["start_pos"] for e in entries] == [synthetic_segment(i, n).start_pos for i in range(n)]
    assert entries == [s.to_dict() for s in Catalog(shipper.store)._file_listed(SOURCE, FILE)]


def test_a_shipper_started_anew_mid_file_leaves_the_same_chunks_and_roll_up(tmp_path):
    n = 1_400
    with no_fsync():
        one = _shipper(LocalStore(tmp_path / "one"))
        for i in range(n - 1):
            _store(one, i, n)
        one_open = _chunk_state(one.store)
        _store(one, n - 1, n)
        _stop(one)
        two = _shipper(LocalStore(tmp_path / "two"))
        start = 0
        for stop in (300, 1_030, n - 1):  # 300 = 18 chunks + 12 entries; 1,030: 64 chunks + 6
            for i in range(start, stop):
                _store(two, i, n)
            _stop(two)
            two, start = _shipper(two.store), stop  # a new process: nothing of the run before
        assert _chunk_state(two.store) == one_open
        _store(two, n - 1, n)
        _stop(two)
    assert _finished(two.store) == _finished(one.store)
