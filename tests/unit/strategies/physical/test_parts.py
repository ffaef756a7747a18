"""Pure parts of physical backups: chains, retention of chains, base choice, the log watch."""

from __future__ import annotations

import pytest

from backupkit.errors import IntegrityError
from backupkit.operations.retention import RetentionRules, plan_prune
from backupkit.repo.catalog import BackupManifest, BinlogPoint, SegmentInfo, SourceIdentity
from backupkit.repo.chain import chain_of, chain_raw_bytes, needed_by
from backupkit.repo.codec import StoredObject
from backupkit.restore.plan import Planner
from backupkit.restore.stoppoint import time_target
from backupkit.strategies.physical.tool import LogWatch, parse_binlog_pos

SRC = "db1"
T0 = 1_780_000_000.0
MIB = 1024 * 1024


def physical(bid: str, t: float, parent: BackupManifest | None = None, raw: int = 100 * MIB,
             pos: int = 4) -> BackupManifest:
    lsn_from = parent.details["lsn"]["to"] if parent else 0
    chain = [*parent.details["chain"], bid] if parent else [bid]
    chain_raw = (parent.details["chain_raw_bytes"] if parent else 0) + raw
    return BackupManifest(
        id=bid, kind="physical", source=SourceIdentity(SRC), point=BinlogPoint("binlog.000001", pos, "", t),
        started_at=t - 1, finished_at=t + 1,
        objects=[StoredObject(f"backups/{bid}/physical.00000.mbstream.zst", raw // 4, "0" * 64, raw)],
        details={"parent": parent.id if parent else None, "chain": chain, "chain_raw_bytes": chain_raw,
                 "lsn": {"from": lsn_from, "to": lsn_from + 1000, "last": lsn_from + 1500},
                 "incremental": parent is not None})


def snapshot(bid: str, t: float, raw: int, pos: int = 4) -> BackupManifest:
    return BackupManifest(id=bid, kind="snapshot", source=SourceIdentity(SRC),
                          point=BinlogPoint("binlog.000001", pos, "", t), started_at=t - 1, finished_at=t + 1,
                          objects=[StoredObject(f"backups/{bid}/x", raw // 4, "0" * 64, raw)])


def test_chain_runs_from_the_full_backup_to_the_incremental():
    full = physical("f", T0)
    inc1 = physical("i1", T0 + 60, full)
    inc2 = physical("i2", T0 + 120, inc1)
    by_id = {b.id: b for b in (full, inc1, inc2)}
    assert [b.id for b in chain_of(inc2, by_id)] == ["f", "i1", "i2"]
    assert chain_of(full, by_id) == [full]
    assert chain_raw_bytes([full, inc1, inc2]) == 300 * MIB
    assert needed_by(by_id.values())["i2"] == {"f", "i1", "i2"}


def test_missing_link_is_an_integrity_error_naming_it():
    full = physical("f", T0)
    inc1 = physical("i1", T0 + 60, full)
    inc2 = physical("i2", T0 + 120, inc1)
    with pytest.raises(IntegrityError, match="link i1") as err:
        chain_of(inc2, {"f": full, "i2": inc2})
    assert err.value.exit_code == 5


def test_lsn_mismatch_breaks_the_chain():
    full = physical("f", T0)
    inc = physical("i1", T0 + 60, full)
    inc.details["lsn"]["from"] = 5
    with pytest.raises(IntegrityError, match="LSN"):
        chain_of(inc, {"f": full})


def test_prune_keeps_every_link_a_kept_incremental_needs():
    full = physical("f", T0)
    inc1 = physical("i1", T0 + 60, full)
    inc2 = physical("i2", T0 + 120, inc1)
    plan = plan_prune([full, inc1, inc2], {}, RetentionRules(keep_last=1), now=T0 + 200)
    assert set(plan.keep_backups) == {"f", "i1", "i2"}
    assert any("chain of kept incremental i2" in r for r in plan.keep_backups["f"])
    # a newer full backup frees the old chain as a unit
    full2 = physical("f2", T0 + 180)
    plan = plan_prune([full, inc1, inc2, full2], {}, RetentionRules(keep_last=1), now=T0 + 200)
    assert set(plan.keep_backups) == {"f2"} and set(plan.remove_backups) == {"f", "i1", "i2"}


def _segments(t0: float, t1: float) -> list[SegmentInfo]:
    return [SegmentInfo(source_id=SRC, binlog_file="binlog.000001", start_pos=4, end_pos=1000,
                        object=StoredObject("binlog/db1/binlog.000001/a", 1000, "0" * 64, 4000),
                        first_event_time=t0, last_event_time=t1, first_commit_time=t0,
                        last_commit_time=t1, events=10, transactions=5)]


def test_plan_prefers_the_base_with_the_smallest_estimated_restore_time_and_says_why():
    # a big logical snapshot taken just now, and an older physical backup of the same data:
    # the physical base plus a little replay is estimated faster than loading every row
    phys = physical("p", T0, raw=2000 * MIB, pos=4)
    snap = snapshot("s", T0 + 5, raw=2000 * MIB, pos=500)
    segs = _segments(T0 + 1, T0 + 30)
    plan = Planner([phys, snap], {SRC: segs}, source_id=SRC).plan(time_target(T0 + 20))
    assert plan.base.id == "p"
    assert any("smallest estimated restore time" in n and "snapshot s" in n for n in plan.notes)
    # with equal estimates the newest base wins, as before
    small = snapshot("s", T0 + 5, raw=1, pos=500)
    plan = Planner([phys, small], {SRC: segs}, source_id=SRC).plan(time_target(T0 + 20))
    assert plan.base.id == "s"


def _seg(start: int, end: int, t0: float, t1: float, raw: int) -> SegmentInfo:
    return SegmentInfo(source_id=SRC, binlog_file="binlog.000001", start_pos=start, end_pos=end,
                       object=StoredObject(f"binlog/db1/binlog.000001/{start}", raw // 4, "0" * 64, raw),
                       first_event_time=t0, last_event_time=t1, first_commit_time=t0,
                       last_commit_time=t1, events=10, transactions=5, range_id="r")


def test_plan_estimates_a_physical_incremental_by_its_whole_chain():
    full = physical("f", T0, raw=1000 * MIB)
    inc = physical("i", T0 + 10, full, raw=10 * MIB, pos=500)
    # 400 MiB of binlog between the two: replaying it costs more than the incremental's 10 MiB
    segs = [_seg(4, 500, T0 + 1, T0 + 9, 400 * MIB), _seg(500, 1000, T0 + 11, T0 + 30, MIB)]
    plan = Planner([full, inc], {SRC: segs}, source_id=SRC).plan(time_target(T0 + 20))
    assert plan.base.id == "i" and plan.base_raw_bytes == 1010 * MIB
    assert any("physical f" in n for n in plan.notes)


def test_log_watch_measures_the_commit_block_and_reads_the_binlog_position():
    w = LogWatch()
    w.feed("[00] 2026-11-30 21:13:49 Starting BACKUP STAGE BLOCK_COMMIT")
    w.feed("[00] 2026-11-30 21:13:49 Acquired locks for BACKUP STAGE BLOCK_COMMIT")
    w.feed("[00] 2026-11-30 21:13:49 All tables unlocked")
    w.feed("[00] 2026-11-30 21:13:49 completed OK!")
    assert w.blocked_ms() is not None and w.blocked_ms() >= 0
    assert w.point_time() is not None and "completed" in w.marks
    assert parse_binlog_pos("filename 'binlog.000001', position '392395', GTID of the last change "
                            "'0-1-3,1-2-9'") == ("binlog.000001", 392395, "0-1-3,1-2-9")
    assert parse_binlog_pos("filename 'b.000002', position '4'") == ("b.000002", 4, "")
    w.feed("[00] 2026-11-30 21:13:50 Error: failed to read page")
    assert w.error_line() == "Error: failed to read page"
