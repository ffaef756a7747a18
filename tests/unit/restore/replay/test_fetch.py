"""The fetcher: parallel, in plan order, bounded, and the first failure stops it promptly."""

from __future__ import annotations

import threading
import time

import pytest

from backupkit.errors import IntegrityError
from backupkit.repo.catalog import SegmentInfo
from backupkit.repo.codec import put_object
from backupkit.restore.replay import fetch
from backupkit.storage import open_store


def _segments(tmp_path, n: int) -> tuple[object, list[SegmentInfo]]:
    store = open_store(f"file://{tmp_path / 'repo'}")
    segs = []
    for i in range(n):
        data = f"segment {i} ".encode() * (i + 1)
        obj = put_object(store, f"binlog/s/f.000001/{i:012d}.binlog.zst", data)
        segs.append(SegmentInfo("s", "f.000001", i, i + 1, obj))
    return store, segs


def test_segments_come_in_plan_order_with_several_fetched_at_once(tmp_path, monkeypatch):
    store, segs = _segments(tmp_path, 40)
    real = fetch.iter_object
    busy, peak = [0], [0]
    lock = threading.Lock()

    def slow(store_, obj, **kw):
        with lock:
            busy[0] += 1
            peak[0] = max(peak[0], busy[0])
        time.sleep(0.02)
        try:
            yield from real(store_, obj, **kw)
        finally:
            with lock:
                busy[0] -= 1

    monkeypatch.setattr(fetch, "iter_object", slow)
    f = fetch.Fetcher(store, segs, ahead=6, workers=4)
    f.start()
    got = []
    while (item := f.get()) is not None:
        got.append((item.index, item.spool.read()))
        item.spool.close()
    assert [i for i, _ in got] == list(range(40))
    assert got[7][1] == b"segment 7 " * 8
    assert 2 <= peak[0] <= 4
    f.stop()


def test_waiting_segments_never_exceed_the_window(tmp_path):
    store, segs = _segments(tmp_path, 30)
    f = fetch.Fetcher(store, segs, ahead=5, workers=3)
    f.start()
    time.sleep(0.5)  # the parser is slow: the workers fill the window and wait
    assert len(f._done) <= 5 and f._next_claim <= 5
    first = f.get()
    assert first is not None and first.index == 0
    first.spool.close()
    f.stop()
    deadline = time.monotonic() + 5
    while f.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not f.is_alive()


def test_a_failing_fetch_worker_hands_on_what_came_before_then_raises_and_stops(tmp_path, monkeypatch):
    store, segs = _segments(tmp_path, 50)
    real = fetch.iter_object
    fetched_after = []

    def broken(store_, obj, **kw):
        if obj.key == segs[10].object.key:
            raise IntegrityError(f"checksum mismatch in object {obj.key!r}")
        idx = int(obj.key.rsplit("/", 1)[1].split(".")[0])
        if idx > 10 + 8:
            fetched_after.append(idx)
        return real(store_, obj, **kw)

    monkeypatch.setattr(fetch, "iter_object", broken)
    f = fetch.Fetcher(store, segs, ahead=8, workers=4)
    f.start()
    got = []
    t0 = time.monotonic()
    with pytest.raises(IntegrityError, match=segs[10].object.key):
        while (item := f.get()) is not None:
            got.append(item.index)
            item.spool.close()
    assert got == list(range(10))
    assert time.monotonic() - t0 < 5
    deadline = time.monotonic() + 5
    while f.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not f.is_alive()
    assert not fetched_after  # nothing past the window after the failure


def test_fetching_ahead_stops_at_the_byte_budget_but_always_takes_the_next_segment(tmp_path):
    store, segs = _segments(tmp_path, 12)
    size = segs[5].object.raw_size
    f = fetch.Fetcher(store, segs, ahead=10, workers=3, max_bytes=size * 2)
    f.start()
    time.sleep(0.5)
    assert f._out_bytes <= size * 2 and f._next_claim < 10
    got = []
    while (item := f.get()) is not None:
        got.append(item.index)
        item.spool.close()
    assert got == list(range(12))
    f = fetch.Fetcher(store, segs, ahead=4, workers=2, max_bytes=1)  # every segment is too big
    f.start()
    assert [i.index for i in iter(f.get, None)] == list(range(12))
