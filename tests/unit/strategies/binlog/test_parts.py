"""Pure parts of the shipper: the spill buffer, the lease on a local store, and
continuity of segments across binlog files."""

from __future__ import annotations

import time

import pytest

from backupkit.repo import layout
from backupkit.repo.catalog import SegmentInfo
from backupkit.repo.codec import StoredObject
from backupkit.repo.coverage import build_runs, continues, next_binlog_name
from backupkit.repo.lease import Lease, LeaseLost
from backupkit.storage.local import LocalStore
from backupkit.strategies.binlog.spill import SpillBuffer


@pytest.mark.parametrize("limit", [1 << 20, 10])
def test_spill_buffer_keeps_bytes_in_memory_or_on_disk(limit):
    buf = SpillBuffer(limit)
    buf.append(b"abcdef")
    buf.append(b"ghijkl")
    assert (buf.file is not None) == (limit == 10)
    assert b"".join(buf.chunks(8, size=3)) == b"abcdefgh"
    buf.drop_front(4)
    assert len(buf) == 8 and b"".join(buf.chunks(8)) == b"efghijkl"
    buf.truncate(3)
    buf.append(b"X")
    assert b"".join(buf.chunks(len(buf))) == b"efgX"
    buf.close()


def test_lease_is_exclusive_renewable_and_taken_over_only_after_expiry(tmp_path):
    store = LocalStore(tmp_path)
    a = Lease(store, "src", lease_seconds=1.5, holder="a", grace=0.1)
    b = Lease(store, "src", lease_seconds=1.5, holder="b", grace=0.1)
    assert a.try_acquire()
    assert not b.try_acquire()
    assert a.renew() and a.valid()
    a.ensure()
    time.sleep(1.8)  # a stops renewing: its lease expires
    assert not a.valid()
    assert b.try_acquire()
    assert not a.renew() and a.lost  # fencing: a finds out and must not write
    with pytest.raises(LeaseLost):
        a.ensure()
    b.release()
    assert a.try_acquire()  # a released lease is free at once


def test_lease_of_a_dead_process_on_this_host_is_free(tmp_path):
    import json
    import os
    import socket

    store = LocalStore(tmp_path)
    rec = {"source_id": "src", "holder": "dead", "host": socket.gethostname(), "pid": 2 ** 22 + 17,
           "acquired_at": time.time(), "renewed_at": time.time(), "expires_at": time.time() + 600,
           "lease_seconds": 600, "pidns": os.readlink("/proc/self/ns/pid")}
    store.put(layout.shipper_lease("src"), json.dumps(rec).encode())
    assert Lease(store, "src", lease_seconds=5).try_acquire()


def _seg(file: str, start: int, end: int, next_file: str = "", range_id: str = "r") -> SegmentInfo:
    obj = StoredObject(layout.segment_data("s", file, start, end), 1, "0" * 64, 1)
    return SegmentInfo("s", file, start, end, obj, next_file=next_file, range_id=range_id)


def test_continuity_across_rotation_stop_and_new_ranges(tmp_path):
    assert next_binlog_name("binlog.000041") == "binlog.000042"
    assert next_binlog_name("mysql-bin.999999") == "mysql-bin.1000000"
    a = _seg("binlog.000001", 4, 500)
    assert continues(a, _seg("binlog.000001", 500, 900))
    assert not continues(a, _seg("binlog.000001", 600, 900))
    assert continues(a, _seg("binlog.000002", 4, 100))  # after a STOP or a crash
    assert not continues(a, _seg("binlog.000003", 4, 100))
    assert not continues(a, _seg("binlog.000002", 4, 100, range_id="other"))
    rot = _seg("binlog.000001", 4, 500, next_file="binlog.000002")
    assert continues(rot, _seg("binlog.000002", 4, 100, range_id="x"))
    runs = build_runs([a, _seg("binlog.000002", 4, 100), _seg("binlog.000002", 300, 400)])
    assert [(r.start, r.end, r.count) for r in runs] == [
        (("binlog.000001", 4), ("binlog.000002", 100), 2),
        (("binlog.000002", 300), ("binlog.000002", 400), 1)]


def test_segment_keys_parse_back():
    key = layout.segment_index("db/1", "binlog.000007", 4, 1234)
    assert layout.segment_of(key) == ("binlog.000007", 4, 1234)
    assert layout.segment_of(layout.gap_record("db/1", "binlog.000007", 4)) is None


def test_lease_of_a_process_in_another_pid_namespace_waits_for_expiry(tmp_path):
    import json
    import socket

    store = LocalStore(tmp_path)
    rec = {"source_id": "src", "holder": "other", "host": socket.gethostname(), "pid": 2 ** 22 + 17,
           "acquired_at": time.time(), "renewed_at": time.time(), "expires_at": time.time() + 600,
           "lease_seconds": 600, "pidns": "pid:[1]"}
    store.put(layout.shipper_lease("src"), json.dumps(rec).encode())
    assert not Lease(store, "src", lease_seconds=5).try_acquire()
