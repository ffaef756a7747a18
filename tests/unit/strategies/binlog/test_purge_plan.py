"""plan_purge: only a prefix of files the repository holds completely, older than keep."""

from __future__ import annotations

from backupkit.repo.catalog import GapInfo, SegmentInfo
from backupkit.repo.codec import StoredObject
from backupkit.strategies.binlog.purge import plan_purge


def seg(file: str, start: int, end: int, t: float, next_file: str = "", closed: bool = False,
        rid: str = "r1") -> SegmentInfo:
    return SegmentInfo("src", file, start, end, StoredObject(f"k/{file}/{start}", 1, "x", 1),
                       last_event_time=t, last_commit_time=t, next_file=next_file,
                       file_closed=closed or bool(next_file), range_id=rid, transactions=1)


FILES = ["binlog.000001", "binlog.000002", "binlog.000003", "binlog.000004"]
SEGS = [seg("binlog.000001", 500, 900, 100, "binlog.000002"),
        seg("binlog.000002", 4, 800, 200, "binlog.000003"),
        seg("binlog.000003", 4, 300, 300)]  # binlog.000003 is still being shipped


def test_purges_the_closed_files_only_and_stops_at_the_first_unshipped():
    p = plan_purge("src", FILES, "binlog.000004", SEGS, [], now=1000, keep_seconds=0)
    assert p.files == ["binlog.000001", "binlog.000002"] and p.purge_to == "binlog.000003"
    assert p.stops_at == {"file": "binlog.000003", "reason": "not shipped completely yet"}


def test_keep_holds_back_recent_files():
    p = plan_purge("src", FILES, "binlog.000004", SEGS, [], now=250, keep_seconds=100)
    assert p.files == ["binlog.000001"] and p.stops_at["reason"].startswith("newer than --keep")


def test_files_before_shipping_began_may_go_but_nothing_when_nothing_is_shipped():
    p = plan_purge("src", ["binlog.000000", *FILES], "binlog.000004", SEGS, [], now=1000, keep_seconds=0)
    assert p.files[:1] == ["binlog.000000"]
    p = plan_purge("src", FILES, "binlog.000004", [], [], now=1000, keep_seconds=0)
    assert p.files == [] and p.purge_to is None and p.stops_at["reason"] == "nothing shipped yet"


def test_the_current_file_always_stays():
    segs = [*SEGS[:2], seg("binlog.000003", 4, 300, 300, "binlog.000004")]
    p = plan_purge("src", FILES, "binlog.000003", segs, [], now=1000, keep_seconds=0)
    assert p.files == ["binlog.000001", "binlog.000002"] and p.stops_at["file"] == "binlog.000003"


def test_a_file_closed_after_a_gap_in_its_run_counts_only_from_where_shipping_resumed():
    gap = GapInfo("src", "binlog.000001", 900, "binlog.000002", 4, 0, "purged")
    p = plan_purge("src", FILES, "binlog.000004", SEGS, [gap], now=1000, keep_seconds=0)
    assert p.files == ["binlog.000001", "binlog.000002"]

