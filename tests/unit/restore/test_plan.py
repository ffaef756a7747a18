"""Restore planning: base choice, segment runs, refusals with the nearest reachable times."""

from __future__ import annotations

import dataclasses
import math
import time

import pytest

from backupkit.errors import PlanError
from backupkit.repo.catalog import BackupManifest, BinlogPoint, GapInfo, SegmentInfo, SourceIdentity
from backupkit.repo.codec import StoredObject
from backupkit.repo.coverage import build_runs
from backupkit.restore.plan import (
    Planner,
    is_restorable,
    plan_restore,
    restorable_intervals,
)
from backupkit.restore.stoppoint import parse_target, time_target
from backupkit.util.units import format_time

SRC = "src"


def seg(file: str, start: int, end: int, t0: float, t1: float, g0: int, g1: int,
        next_file: str = "", source: str = SRC) -> SegmentInfo:
    return SegmentInfo(source_id=source, binlog_file=file, start_pos=start, end_pos=end,
                       object=StoredObject(f"binlog/{source}/{file}/{start}", end - start, "x",
                                           (end - start) * 3),
                       first_event_time=t0, last_event_time=t1, first_commit_time=t0,
                       last_commit_time=t1, gtid_first=f"0-1-{g0}", gtid_last=f"0-1-{g1}",
                       gtid_state=f"0-1-{g1}", events=10, transactions=g1 - g0 + 1,
                       next_file=next_file)


def base(bid: str, kind: str, file: str, pos: int, gtid: str, t: float, size: int = 1000,
         source: str = SRC) -> BackupManifest:
    return BackupManifest(id=bid, kind=kind, source=SourceIdentity(source),
                          point=BinlogPoint(file, pos, gtid, t), started_at=t - 1, finished_at=t + 1,
                          objects=[StoredObject(f"backups/{bid}/x", size, "y", size * 4)])


S1 = seg("binlog.000001", 4, 1000, 100, 110, 1, 10)
S2 = seg("binlog.000001", 1000, 2000, 111, 120, 11, 20)
S3 = seg("binlog.000001", 2000, 3000, 121, 130, 21, 30, next_file="binlog.000002")
S4 = seg("binlog.000002", 4, 1000, 131, 140, 31, 40)
# binlog.000003 was never shipped
S5 = seg("binlog.000004", 4, 1000, 200, 210, 61, 70)
S6 = seg("binlog.000004", 1000, 2000, 211, 220, 71, 80)
SEGS = {SRC: [S6, S1, S4, S2, S5, S3]}  # any order

A = base("A", "snapshot", "binlog.000001", 500, "0-1-5", 105.5)
D = base("D", "snapshot", "binlog.000001", 1500, "0-1-15", 115.5)
B = base("B", "cold", "binlog.000002", 4, "0-1-30", 130.5)
C = base("C", "snapshot", "binlog.000004", 1000, "0-1-70", 210.5)
BASES = [C, A, B, D]


def plan(target, bases=BASES, segs=SEGS, gaps=()):
    return plan_restore(bases, segs, gaps, target)


def ends(p):
    return [(s.binlog_file, s.start_pos) for s in p.segments]


def test_runs_break_where_positions_do():
    runs = build_runs(SEGS[SRC])
    assert [[s.start_pos for s in r.segments] for r in runs] == [[4, 1000, 2000, 4], [4, 1000]]
    assert runs[0].end == ("binlog.000002", 1000) and runs[0].end_time() == 140


def test_recorded_gap_breaks_a_run_even_where_positions_meet():
    gap = GapInfo(SRC, "binlog.000001", 3000, "binlog.000002", 4, detected_at=0, reason="purged")
    runs = build_runs(SEGS[SRC], [gap])
    assert len(runs) == 3


def test_time_target_uses_newest_base_at_or_before_and_stops_at_first_later_commit():
    p = plan(time_target(112))
    assert p.base.id == "A"
    assert ends(p) == [("binlog.000001", 4), ("binlog.000001", 1000)]
    assert p.start == ("binlog.000001", 500) and p.stop_time == 112
    assert plan(time_target(118)).base.id == "D"
    assert ends(plan(time_target(118))) == [("binlog.000001", 1000)]


def test_base_at_a_rotation_point_starts_in_the_next_file():
    p = plan(time_target(135))
    assert p.base.id == "B" and ends(p) == [("binlog.000002", 4)]


def test_target_equal_to_newest_commit_is_reachable():
    assert ends(plan(time_target(140))) == [("binlog.000002", 4)]
    assert plan(time_target(220)).base.id == "C"


def test_base_time_exactly_needs_no_later_commit():
    p = plan(time_target(105.5))
    assert p.base.id == "A"


def test_target_before_oldest_base_is_refused_with_nearest_times():
    with pytest.raises(PlanError) as err:
        plan(time_target(50))
    msg = err.value.one_line()
    assert "earlier than the oldest base" in msg
    assert f"none before, {format_time(105.5)} after" in msg
    assert err.value.exit_code == 2


def test_target_after_newest_commit_is_refused():
    with pytest.raises(PlanError) as err:
        plan(time_target(300))
    msg = err.value.one_line()
    assert "later than the newest shipped commit" in msg and format_time(220) in msg
    assert f"{format_time(220)} before, none after" in msg


def test_target_behind_a_gap_is_refused_naming_the_gap():
    with pytest.raises(PlanError) as err:
        plan(time_target(145))
    msg = err.value.one_line()
    assert "behind a gap" in msg
    assert "binlog.000002:1000 to binlog.000004:4 was never shipped" in msg
    assert f"{format_time(140)} before, {format_time(210.5)} after" in msg
    assert "\n" not in msg


def test_target_after_gap_but_before_next_base_is_refused():
    with pytest.raises(PlanError, match="behind a gap"):
        plan(time_target(205))


def test_restorable_intervals_merge_and_answer_membership():
    ivs = restorable_intervals(BASES, SEGS, [])
    assert ivs == [(105.5, 140), (210.5, 220)]
    assert is_restorable(ivs, 105.5) and is_restorable(ivs, 140) and is_restorable(ivs, 215)
    assert not is_restorable(ivs, 105.4) and not is_restorable(ivs, 141) and not is_restorable(ivs, 221)


def test_every_restorable_second_plans_and_every_other_refuses():
    planner = Planner(BASES, SEGS, [])
    ivs = planner.intervals()
    for t in range(90, 230):
        if is_restorable(ivs, t):
            assert planner.plan(time_target(t)).base.point.time <= t
        else:
            with pytest.raises(PlanError):
                planner.plan(time_target(t))


def test_gtid_targets():
    p = plan(parse_target(to_gtid="0-1-25"))
    assert p.base.id == "D" and ends(p) == [("binlog.000001", 1000), ("binlog.000001", 2000)]
    p = plan(parse_target(stop_before_gtid="0-1-31"))
    assert p.base.id == "B" and ends(p) == [("binlog.000002", 4)]
    p = plan(parse_target(to_gtid="0-1-30"))
    assert p.base.id == "B" and p.segments == []
    # the base holding the bad transaction is never used for --stop-before-gtid
    p = plan(parse_target(stop_before_gtid="0-1-30"))
    assert p.base.id == "D" and ends(p)[-1] == ("binlog.000001", 2000)


def test_gtid_not_shipped_or_unreachable():
    with pytest.raises(PlanError, match="not in the shipped binlog"):
        plan(parse_target(to_gtid="0-1-50"))
    with pytest.raises(PlanError, match="no base before it"):
        plan(parse_target(to_gtid="0-1-65"))


def test_position_targets():
    p = plan(parse_target(to_position="binlog.000001:2500"))
    assert p.base.id == "D" and ends(p) == [("binlog.000001", 1000), ("binlog.000001", 2000)]
    p = plan(parse_target(to_position="binlog.000001:1500"))
    assert p.base.id == "D" and p.segments == []
    with pytest.raises(PlanError, match="not in the shipped binlog"):
        plan(parse_target(to_position="binlog.000003:10"))


def test_latest_replays_to_the_end_of_the_newest_run():
    p = plan(parse_target(latest=True))
    assert p.base.id == "C" and ends(p) == [("binlog.000004", 1000)]
    with pytest.raises(PlanError, match="a gap follows the newest reachable point") as err:
        plan(parse_target(latest=True), bases=[A, B, D])
    assert "binlog.000002:1000 to binlog.000004:4 was never shipped" in err.value.one_line()
    assert "including 20 shipped transaction(s)" in err.value.one_line()
    assert "--accept-gap" in (err.value.hint or "")


def test_latest_without_binlog_is_the_newest_base():
    p = plan(parse_target(latest=True), segs={})
    assert p.base.id == "C" and p.segments == []


def test_no_base_at_all():
    with pytest.raises(PlanError, match="no base backup"):
        plan(time_target(112), bases=[])


def test_other_sources_are_ignored_when_one_is_named():
    other = base("O", "snapshot", "binlog.000001", 500, "0-1-5", 111, source="other")
    p = plan_restore(BASES + [other], SEGS, [], time_target(112), source_id=SRC)
    assert p.base.id == "A"


def test_plan_is_printable_with_bytes_and_estimate():
    p = plan(time_target(112))
    text = "\n".join(p.lines())
    assert "snapshot A" in text and "2 segment(s)" in text and "estimate" in text
    assert p.fetch_bytes == 1000 + 996 + 1000
    d = p.to_dict()
    assert d["base"]["id"] == "A" and d["segment_count"] == 2 and d["estimated_seconds"] > 0
    assert [(r["file"], r["segments"]) for r in d["segments"]] == [("binlog.000001", 2)]  # folded


def _many(n: int) -> tuple[list[BackupManifest], list[SegmentInfo]]:
    """n segments of 10 s, ten to a binlog file, and a base every 50 segments."""
    segs = []
    pos_file = 1
    t = 1000.0
    for i in range(n):
        f = f"binlog.{pos_file:06d}"
        start = 4 + (i % 10) * 1000
        nxt = f"binlog.{pos_file + 1:06d}" if i % 10 == 9 else ""
        segs.append(seg(f, start, start + 1000, t, t + 9, i * 10 + 1, i * 10 + 10, next_file=nxt))
        t += 10
        if nxt:
            pos_file += 1
    bases = [base(f"b{i}", "snapshot", f"binlog.{i * 5 + 1:06d}", 500, f"0-1-{i * 500}",
                  1000 + i * 500 + 2) for i in range(n // 50)]
    return bases, segs


def _fastest(fn, rounds: int = 5) -> float:
    best = math.inf
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def test_planning_grows_no_faster_than_the_catalog():
    """How the planner's cost grows, not a timing: ten times the segments and bases may cost
    ten to twenty times as much to index (n log n; quadratic would be a hundred), but one plan()
    must not cost ten times more (it bisects; a scan per call made 2,000 restores over 5,000
    segments take minutes). Each figure is the fastest of five, so a loaded machine skews both
    sizes alike."""
    calls = 200

    def costs(n: int) -> tuple[float, float]:
        bases, segs = _many(n)
        span = n * 10 - 600
        planner = Planner(bases, segs, [])
        assert len(planner.intervals()) == 1
        build = _fastest(lambda: Planner(bases, segs, []).intervals())
        plans = _fastest(lambda: [planner.plan(time_target(1500 + k * span / calls))
                                  for k in range(calls)])
        return build, plans

    small_build, small_plans = costs(500)
    big_build, big_plans = costs(5000)
    assert big_build < 60 * small_build, (small_build, big_build)
    assert big_plans < 4 * small_plans, (small_plans, big_plans)


def test_a_restart_continues_into_the_next_file_within_one_range():
    a = seg("binlog.000007", 4, 900, 300, 310, 100, 110)
    b = seg("binlog.000008", 4, 800, 320, 330, 111, 120)
    a.range_id = b.range_id = "r1"
    a.file_closed = True
    cold = base("K", "cold", "binlog.000007", 900, "0-1-110", 315)
    p = plan_restore([cold], {SRC: [a, b]}, [], time_target(325))
    assert ends(p) == [("binlog.000008", 4)]
    b.range_id = "r2"  # a new range after a gap: no longer reachable
    with pytest.raises(PlanError, match="gap"):
        plan_restore([cold], {SRC: [a, b]}, [], time_target(325))


# -- issue 14, defect 2: a partial snapshot never starts a whole-server restore ------------------
def _partial(bid: str, pos: int, gtid: str, t: float, details: dict) -> BackupManifest:
    m = base(bid, "snapshot", "binlog.000001", pos, gtid, t)
    m.details = details
    return m


SHOP_ONLY = {"scope": {"full": False, "databases": ["shop"], "tables": []}}


def test_whole_server_restore_skips_a_newer_partial_snapshot_for_an_older_full_one():
    p = _partial("P", 1500, "0-1-15", 115.5, SHOP_ONLY)
    got = plan(parse_target(latest=True), bases=[A, p], segs={SRC: [S1, S2, S3, S4]})
    assert got.base.id == "A"
    assert got.to_dict()["base"]["scope"]["full"] is True
    assert any("scope full" in line for line in got.lines())
    got_t = plan(time_target(116), bases=[A, p], segs={SRC: [S1, S2, S3, S4]})
    assert got_t.base.id == "A"


def test_only_partial_snapshots_refuse_a_whole_server_restore_naming_them():
    p = _partial("P", 1500, "0-1-15", 115.5, SHOP_ONLY)
    with pytest.raises(PlanError, match="partial snapshots cannot start a whole-server restore: P"):
        plan(parse_target(latest=True), bases=[p], segs={SRC: [S1, S2, S3, S4]})


def test_a_restore_limited_to_databases_may_start_from_a_partial_base_covering_them():
    p = _partial("P", 1500, "0-1-15", 115.5, SHOP_ONLY)
    segs = {SRC: [S1, S2, S3, S4]}
    got = Planner([A, p], segs, (), databases=["shop"]).plan(parse_target(latest=True))
    assert got.base.id == "P"
    got = Planner([A, p], segs, (), databases=["shop", "gamma"]).plan(parse_target(latest=True))
    assert got.base.id == "A"


def test_scope_of_old_manifests_comes_from_their_recorded_filters():
    old_db = _partial("O1", 1500, "0-1-15", 115.5, {"options": {"databases": ["shop"], "tables": []}})
    old_tables = _partial("O2", 1500, "0-1-15", 115.5, {"options": {"databases": [],
                                                                   "tables": ["shop.orders"]}})
    old_plain = _partial("O3", 1500, "0-1-15", 115.5, {"options": {"databases": [], "tables": []}})
    no_options = _partial("O4", 1500, "0-1-15", 115.5, {})
    assert not old_db.scope.full and old_db.scope.covers(["shop"])
    assert not old_tables.scope.full and not old_tables.scope.covers(["shop"])
    assert old_plain.scope.full and no_options.scope.full
    assert B.scope.full  # cold backups are always full
    assert old_db.scope.describe() == "partial: databases shop"


# -- the confirmed-through watermark -----------------------------------------------------------
class _Status:
    def __init__(self, point, confirmed_at):
        self.point, self.confirmed_at = point, confirmed_at


def test_watermark_extends_the_run_ending_at_its_point_and_the_plan_replays_it_all():
    wm = {SRC: _Status(("binlog.000004", 2000), 260)}
    p = plan_restore(BASES, SEGS, (), time_target(250), confirmed=wm)
    assert p.base.id == "C" and ends(p) == [("binlog.000004", 1000)] and p.stop_time == 250
    assert restorable_intervals(BASES, SEGS, (), confirmed=wm)[-1] == (210.5, 260)
    with pytest.raises(PlanError) as err:
        plan_restore(BASES, SEGS, (), time_target(261), confirmed=wm)
    msg = err.value.one_line()
    assert "later than the confirmed-through watermark" in msg and format_time(260) in msg


def test_watermark_before_a_gap_reaches_into_the_quiet_time_but_not_across_the_gap():
    wm = {SRC: _Status(("binlog.000002", 1000), 150)}  # the first run ends at 140, quiet until 150
    assert plan_restore(BASES, SEGS, (), time_target(150), confirmed=wm).base.id == "B"
    with pytest.raises(PlanError, match="behind a gap"):
        plan_restore(BASES, SEGS, (), time_target(151), confirmed=wm)


def test_watermark_at_a_point_no_segment_ends_at_is_ignored():
    wm = {SRC: _Status(("binlog.000004", 1500), 400)}
    with pytest.raises(PlanError, match="later than the newest shipped commit"):
        plan_restore(BASES, SEGS, (), time_target(300), confirmed=wm)


def test_base_at_the_watermark_point_reaches_the_watermark():
    e = base("E", "snapshot", "binlog.000004", 2000, "0-1-80", 230)
    wm = {SRC: _Status(("binlog.000004", 2000), 260)}
    p = plan_restore([*BASES, e], SEGS, (), time_target(255), confirmed=wm)
    assert p.base.id == "E" and p.segments == []


def test_latest_before_a_recorded_gap_that_was_not_resumed_names_it_and_needs_accept_gap():
    gap = GapInfo(SRC, "binlog.000004", 2000, "", 0, detected_at=0,
                  reason="binlog.000004 was purged from the source before it was shipped")
    with pytest.raises(PlanError) as err:
        plan(parse_target(latest=True), gaps=[gap])
    msg = err.value.one_line()
    assert "a gap follows the newest reachable point" in msg and "binlog.000004:2000" in msg
    assert "purged" in msg
    accepted = dataclasses.replace(parse_target(latest=True), accept_gap=True)
    p = plan(accepted, gaps=[gap])
    assert p.base.id == "C" and p.gap is not None and p.gap["after"] == "binlog.000004:2000"
    assert p.to_dict()["gap"]["recorded"] is True and p.gap["resume"] is None


def test_any_moment_of_the_newest_commit_second_is_reachable():
    """Commit times are whole seconds and replay applies every commit of T's second, so the
    fraction after the newest commit's second is as reachable as the second itself."""
    p = plan(time_target(220.999))
    assert p.base.id == "C" and ends(p) == [("binlog.000004", 1000)]
    with pytest.raises(PlanError, match="later than the newest shipped commit"):
        plan(time_target(221.0))


def test_a_base_time_typed_back_as_printed_is_at_the_base():
    """A manifest holds sub-microsecond digits; the printed (rounded) time is the base's time."""
    fine = base("F", "snapshot", "binlog.000001", 500, "0-1-5", 105.5000004)
    p = plan(time_target(105.5), bases=[fine])
    assert p.base.id == "F"
    with pytest.raises(PlanError, match="earlier than the oldest base"):
        plan(time_target(105.499998), bases=[fine])
# -- physical chains ------------------------------------------------------------------------------
def _physical(bid: str, file: str, pos: int, gtid: str, t: float, parent: str | None,
              lsn: tuple[int, int]) -> BackupManifest:
    b = base(bid, "physical", file, pos, gtid, t)
    b.details = {"parent": parent, "chain": [], "lsn": {"from": lsn[0], "to": lsn[1]},
                 "incremental": parent is not None}
    return b


PF = _physical("PF", "binlog.000001", 500, "0-1-5", 105.5, None, (0, 100))
PI1 = _physical("PI1", "binlog.000001", 1500, "0-1-15", 115.5, "PF", (100, 200))
PI2 = _physical("PI2", "binlog.000002", 4, "0-1-30", 130.5, "GONE", (300, 400))  # parent pruned/lost


def test_an_incremental_with_a_broken_chain_is_skipped_for_the_next_base_and_the_plan_says_why():
    p = plan(time_target(135), bases=[PF, PI1, PI2])
    assert p.base.id == "PI1"
    assert ends(p)[0] == ("binlog.000001", 1000)
    assert any("skipped physical backup PI2" in n and "GONE" in n for n in p.notes)
    assert any("PI2" in line and "GONE" in line for line in p.lines())  # --dry-run prints it
    # a target the skipped incremental does not concern plans without the note
    p = plan(time_target(112), bases=[PF, PI1, PI2])
    assert p.base.id == "PF" and not any("PI2" in n for n in p.notes)
    # --latest as well
    p = plan(dataclasses.replace(parse_target(latest=True), accept_gap=True), bases=[PF, PI1, PI2])
    assert p.base.id == "PI1" and any("skipped physical backup PI2" in n for n in p.notes)


def test_a_chain_whose_lsn_does_not_join_is_broken_too():
    bad = _physical("PI3", "binlog.000002", 4, "0-1-30", 130.5, "PI1", (250, 400))
    p = plan(time_target(135), bases=[PF, PI1, bad])
    assert p.base.id == "PI1" and any("PI3" in n and "LSN" in n for n in p.notes)


def test_when_only_a_broken_chain_reaches_the_target_the_missing_link_is_exit_5():
    from backupkit.errors import IntegrityError

    with pytest.raises(IntegrityError) as err:
        plan(time_target(135), bases=[PI2])
    assert err.value.exit_code == 5 and "GONE" in str(err.value)
    # a target no base could reach even with the chain whole stays a plan error naming times
    with pytest.raises(PlanError, match="earlier than the oldest base"):
        plan(time_target(50), bases=[PI2])
    # the parent is looked up among every manifest (restore --backup ID plans with that one alone)
    p = Planner([PI1], SEGS, (), links=[PF, PI1]).plan(time_target(118))
    assert p.base.id == "PI1" and not p.notes
    with pytest.raises(IntegrityError, match="PF"):
        Planner([PI1], SEGS, (), links=[PI1]).plan(time_target(118))


def test_a_commit_in_the_bases_own_second_does_not_make_later_moments_reachable():
    """The base is at 220.5 and the newest shipped commit is in second 220 (it may lie before the
    base's position): 220.8 is not proven, so it is refused; the base's own time is reachable."""
    late = base("L", "snapshot", "binlog.000004", 1500, "0-1-75", 220.5)
    assert plan(time_target(220.5), bases=[late]).base.id == "L"
    with pytest.raises(PlanError, match="later than the newest shipped commit"):
        plan(time_target(220.8), bases=[late])
