"""The server namespace of shipped binlog files and the GTID link across a switchover (issue 15.4):
file identities of different servers never collide and sort by epoch; a new server's first
segment continues the old server's run only when its GTID position at start is exactly where the
old one ends; a base of either server plans across the link."""

from __future__ import annotations

import dataclasses

import pytest

from backupkit.errors import PlanError
from backupkit.repo import layout
from backupkit.repo.catalog import BackupManifest, BinlogPoint, GapInfo, SegmentInfo, SourceIdentity
from backupkit.repo.codec import StoredObject
from backupkit.repo.coverage import build_runs, next_binlog_name
from backupkit.repo.servers import epoch_of, epochs, file_id, server_file, split_file_id
from backupkit.restore.plan import Planner
from backupkit.restore.stoppoint import parse_target, time_target

SRC = "shop"


def seg(fid: str, start: int, end: int, t: float, g0: int, g1: int, server: int = 1,
        gtid_start: str = "", next_file: str = "", rid: str = "r1") -> SegmentInfo:
    key = layout.segment_data(SRC, fid, start, end)
    txns = g1 - g0 + 1 if g1 >= g0 else 0
    return SegmentInfo(SRC, fid, start, end, StoredObject(key, end - start + 1, "x", end - start),
                       first_event_time=t, last_event_time=t + 1,
                       first_commit_time=t if txns else 0, last_commit_time=t + 1 if txns else 0,
                       gtid_first=f"0-{server}-{g0}" if txns else "",
                       gtid_last=f"0-{server}-{g1}" if txns else "",
                       gtid_state=f"0-{server}-{g1}" if g1 else "", gtid_start=gtid_start,
                       transactions=txns, events=3 * txns, next_file=next_file,
                       file_closed=bool(next_file), range_id=rid, server_id=server)


def base(bid: str, file: str, pos: int, gtid: str, t: float, server: int) -> BackupManifest:
    return BackupManifest(id=bid, kind="snapshot", source=SourceIdentity(SRC, server_id=server),
                          point=BinlogPoint(file, pos, gtid, t), started_at=t - 1, finished_at=t,
                          objects=[StoredObject(f"backups/{bid}/x", 10, "y", 10)])


E1 = file_id(1, "binlog.000001")
OLD = [seg("binlog.000007", 400, 1000, 100, 1, 10),
       seg("binlog.000007", 1000, 2000, 110, 11, 20)]
# the promoted replica (server 2) logged the same transactions in its own binlog.000001; its
# shipped history starts right after 0-1-20, then its own transactions 0-2-21..
ANCHOR = seg(E1, 3000, 3000, 0, 1, 0, server=2, gtid_start="0-1-20")
ANCHOR = dataclasses.replace(ANCHOR, gtid_state="0-1-20")
NEW = [ANCHOR, seg(E1, 3000, 4000, 130, 21, 30, server=2, gtid_start="0-1-20"),
       seg(E1, 4000, 5000, 140, 31, 40, server=2, gtid_start="0-2-30")]


def test_file_identities_carry_the_epoch_and_sort_after_older_servers():
    assert file_id(0, "binlog.000001") == "binlog.000001"
    assert split_file_id(E1) == (1, "binlog.000001") and epoch_of("binlog.000009") == 0
    assert server_file(E1) == "binlog.000001"
    names = ["mysql-bin.000042", "zz.000001", E1, file_id(2, "a.000001"), file_id(10, "a.000001")]
    assert sorted(names) == names
    assert next_binlog_name(E1) == file_id(1, "binlog.000002")
    # the same server file name in two epochs: two keys, never one
    assert layout.segment_index(SRC, "binlog.000001", 4, 10) != layout.segment_index(SRC, E1, 4, 10)
    assert layout.segment_of(layout.segment_index(SRC, E1, 4, 10)) == (E1, 4, 10)


def test_the_new_servers_first_segment_continues_the_run_by_gtid():
    runs = build_runs(NEW + OLD)
    assert len(runs) == 1 and runs[0].count == 5
    assert [e.server_id for e in epochs(NEW + OLD)] == [1, 2]


@pytest.mark.parametrize("start", ["0-1-19", "0-1-21", "0-2-20", ""])
def test_a_new_server_that_does_not_start_exactly_where_the_old_ended_breaks_the_run(start):
    anchor = dataclasses.replace(ANCHOR, gtid_start=start)
    runs = build_runs([*OLD, anchor, *NEW[1:]])
    assert len(runs) == 2


def test_a_recorded_switchover_gap_breaks_even_a_gtid_link():
    gap = GapInfo(SRC, "binlog.000007", 2000, E1, 3000, 0, "switchover lost transactions")
    assert len(build_runs(OLD + NEW, [gap])) == 2


def test_a_base_before_the_switchover_replays_both_servers_segments_in_order():
    b = base("A", "binlog.000007", 1000, "0-1-10", 105, server=1)
    p = Planner([b], {SRC: OLD + NEW}, {}).plan(time_target(141))
    assert [(s.binlog_file, s.start_pos) for s in p.segments] == [
        ("binlog.000007", 1000), (E1, 3000), (E1, 3000), (E1, 4000)]
    assert p.start == ("binlog.000007", 1000)
    latest = Planner([b], {SRC: OLD + NEW}, {}).plan(parse_target(latest=True))
    assert latest.gap is None and latest.segments[-1].end_pos == 5000


def test_a_base_of_the_new_server_is_found_in_its_own_epoch():
    # the new server's binlog.000001:4000 is not the old server's binlog.000001 (it has none)
    b = base("N", "binlog.000001", 4000, "0-2-30", 139.5, server=2)
    planner = Planner([b], {SRC: OLD + NEW}, {})
    assert planner.base_point(b) == (E1, 4000)
    p = planner.plan(time_target(141))
    assert p.start == (E1, 4000) and [s.start_pos for s in p.segments] == [4000]


def test_a_gap_at_the_switchover_refuses_latest_from_an_old_base():
    gap = GapInfo(SRC, "binlog.000007", 2000, E1, 3000, 0, "the promoted replica lacked 0-1-19..20")
    b = base("A", "binlog.000007", 1000, "0-1-10", 105, server=1)
    planner = Planner([b], {SRC: OLD + NEW}, [gap])
    with pytest.raises(PlanError, match="lacked"):
        planner.plan(parse_target(latest=True))
    with pytest.raises(PlanError, match="gap"):
        planner.plan(time_target(135))
    assert planner.plan(time_target(111)).segments[-1].end_pos == 2000
