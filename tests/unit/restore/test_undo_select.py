"""Undo reads only the segments that can hold the chosen GTIDs (by each entry's GTID state)."""

from __future__ import annotations

from backupkit.repo.catalog import SegmentInfo
from backupkit.repo.codec import StoredObject
from backupkit.restore.undo import segments_holding


def seg(n: int, state: str) -> SegmentInfo:
    return SegmentInfo(source_id="s", binlog_file="binlog.000001", start_pos=n * 100 + 4,
                       end_pos=n * 100 + 104, object=StoredObject(f"k{n}", 100, "x", 100),
                       first_event_time=n, last_event_time=n, gtid_state=state)


SEGS = [seg(0, "0-1-10"), seg(1, "0-1-20"), seg(2, "0-1-30,1-1-5"), seg(3, "0-1-40,1-1-9"),
        seg(4, "0-1-50,1-1-9")]


def picked(gtids):
    return [s.start_pos // 100 for s in segments_holding(SEGS, set(gtids))]


def test_a_gtid_is_read_from_the_one_segment_whose_state_first_covers_it():
    assert picked(["0-1-25"]) == [0, 2]  # the first segment is always read (nothing before it)
    assert picked(["0-1-41"]) == [0, 4]
    assert picked(["1-1-7"]) == [0, 3]
    assert picked(["0-1-25", "1-1-3"]) == [0, 2]


def test_a_missing_state_reads_conservatively_and_an_unknown_domain_reads_only_the_first():
    assert picked(["7-1-3"]) == [0]  # no state covers it: not in the shipped binlog
    holes = [seg(0, "0-1-10"), seg(1, ""), seg(2, "0-1-30")]
    assert [s.start_pos // 100 for s in segments_holding(holes, {"0-1-5"})] == [0, 1, 2]


def test_a_gtid_past_every_state_reads_only_the_first():
    assert picked(["0-1-99"]) == [0]
