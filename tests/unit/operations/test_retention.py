"""Retention over random histories: the window stays restorable, nothing else is kept."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backupkit.errors import PlanError
from backupkit.operations.retention import RetentionRules, plan_prune
from backupkit.repo.catalog import BackupManifest, BinlogPoint, GapInfo, SegmentInfo, SourceIdentity
from backupkit.repo.codec import StoredObject
from backupkit.restore.plan import Planner
from backupkit.restore.stoppoint import time_target
from backupkit.util.units import human_duration, parse_duration

SRC = "db1"
EPOCH = 1_780_000_000.0  # 2026-05-28
HOUR = 3600.0


def seg(file: str, start: int, end: int, t0: float, t1: float, next_file: str = "",
        source: str = SRC, range_id: str = "r0") -> SegmentInfo:
    return SegmentInfo(source_id=source, binlog_file=file, start_pos=start, end_pos=end,
                       object=StoredObject(f"binlog/{source}/{file}/{start:012d}-{end:012d}.binlog.zst",
                                           end - start, "0" * 64, (end - start) * 3),
                       first_event_time=t0, last_event_time=t1, first_commit_time=t0,
                       last_commit_time=t1, events=4, transactions=2, next_file=next_file,
                       file_closed=bool(next_file), range_id=range_id)


def base(bid: str, file: str, pos: int, t: float, kind: str = "snapshot",
         source: str = SRC) -> BackupManifest:
    return BackupManifest(id=bid, kind=kind, source=SourceIdentity(source),
                          point=BinlogPoint(file, pos, "", t), started_at=t - 1, finished_at=t + 1,
                          objects=[StoredObject(f"backups/{bid}/x", 10, "0" * 64, 40)])


# -- a random history ---------------------------------------------------------------------------
@st.composite
def histories(draw):
    """Segments of one binlog history (rotations, unrecorded and recorded gaps) and bases in it."""
    n = draw(st.integers(1, 40))
    t = EPOCH
    file_no, pos = 1, 4
    segs: list[SegmentInfo] = []
    gaps: list[GapInfo] = []
    slots: list[tuple[str, int, float]] = []  # candidate base points: (file, pos, time)
    ranges = 0
    for _ in range(n):
        t += draw(st.sampled_from([1, 2, 30, 600, 3 * HOUR, 13 * HOUR, 30 * HOUR]))
        dur = draw(st.sampled_from([0, 1, 5, 60, 2 * HOUR]))
        file = f"binlog.{file_no:06d}"
        end = pos + draw(st.integers(50, 500))
        rotate = draw(st.integers(0, 9)) == 0
        # 0: never shipped (the shipper starts a new range after it), 1: the same with a gap
        # record, 2: shipped but its index entry was lost (same range), else shipped.
        fate = draw(st.integers(0, 24))
        slots.append((file, pos, t - 0.5))
        if dur >= 2:
            slots.append((file, (pos + end) // 2, t + dur / 2 + 0.25))
        s = seg(file, pos, end, t, t + dur, f"binlog.{file_no + 1:06d}" if rotate else "",
                range_id=f"r{ranges}")
        if fate > 2 and (not segs or segs[-1].range_id != s.range_id) and draw(st.booleans()):
            # The shipper starts a range with an empty anchor segment [p, p).
            anchor = seg(file, pos, pos, 0, 0, range_id=s.range_id)
            anchor.transactions = anchor.events = 0
            anchor.first_commit_time = anchor.last_commit_time = 0.0
            segs.append(anchor)
        if fate > 2:
            segs.append(s)
        if fate in (0, 1):
            ranges += 1
        if fate == 1 and segs:
            prev = segs[-1]
            nf, npos = (f"binlog.{file_no + 1:06d}", 4) if rotate else (file, end)
            gaps.append(GapInfo(SRC, prev.binlog_file, prev.end_pos, nf, npos, detected_at=t,
                                reason="purged"))
        t += dur
        if rotate:
            file_no, pos = file_no + 1, 4
        else:
            pos = end
    slots.append((f"binlog.{file_no:06d}", pos, t + 0.5))
    picks = draw(st.lists(st.integers(0, len(slots) - 1), min_size=0, max_size=12, unique=True))
    bases = []
    for k, i in enumerate(sorted(picks)):
        f, p, bt = slots[i]
        no_binlog = draw(st.integers(0, 9)) == 0
        bases.append(base(f"b{k:02d}", "" if no_binlog else f, 0 if no_binlog else p, bt,
                          kind=draw(st.sampled_from(["snapshot", "snapshot", "cold"]))))
    now = t + draw(st.sampled_from([0, 10, 2 * HOUR, 5 * 86400]))
    return bases, segs, gaps, now


rules_st = st.builds(
    RetentionRules,
    keep_last=st.sampled_from([None, 0, 1, 2, 5]),
    keep_daily=st.sampled_from([None, 0, 1, 3]),
    keep_weekly=st.sampled_from([None, 1, 2]),
    keep_monthly=st.sampled_from([None, 1]),
    window=st.sampled_from([None, 60.0, 3 * HOUR, 86400.0, 7 * 86400.0]),
)


# -- an independent reading of the policy --------------------------------------------------------
def required_by_rules(bases: list[BackupManifest], rules: RetentionRules, now: float) -> set[str]:
    """The bases the rules name outright (not counting window coverage extras)."""
    newest_first = sorted(bases, key=lambda b: (b.point.time, b.id), reverse=True)
    out = {b.id for b in newest_first[: rules.keep_last or 0]}
    for fmt, n in (("%Y-%m-%d", rules.keep_daily), ("%G-W%V", rules.keep_weekly),
                   ("%Y-%m", rules.keep_monthly)):
        newest_of: dict[str, BackupManifest] = {}
        for b in bases:
            k = datetime.fromtimestamp(b.point.time, UTC).strftime(fmt)
            if k not in newest_of or (b.point.time, b.id) > (newest_of[k].point.time, newest_of[k].id):
                newest_of[k] = b
        for k in sorted(newest_of, reverse=True)[: n or 0]:
            out.add(newest_of[k].id)
    if rules.window:
        ws = now - rules.window
        out |= {b.id for b in bases if b.point.time > ws}
        older = [b for b in newest_first if b.point.time <= ws]
        if older:
            out.add(older[0].id)
    return out


def probes(bases, segs, lo: float, hi: float) -> list[float]:
    """Moments that sample every piece of the restorable set in [lo, hi] (it changes only at
    base times and commit times)."""
    pts = {lo, hi}
    for b in bases:
        pts.add(b.point.time)
    for s in segs:
        pts.update((s.first_commit_time, s.last_commit_time))
    edges = sorted(p for p in pts if lo <= p <= hi)
    out = set(edges)
    for a, z in zip(edges, edges[1:], strict=False):
        out.update(((a + z) / 2, a + 1e-3, z - 1e-3))
    return sorted(p for p in out if lo <= p <= hi)


def restorable(planner: Planner, t: float) -> bool:
    try:
        planner.plan(time_target(t))
        return True
    except PlanError:
        return False


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), rules_st)
def test_after_prune_the_window_is_restorable_and_only_what_the_policy_keeps_remains(history, rules):
    bases, segs, gaps, now = history
    plan = plan_prune(bases, {SRC: segs}, rules, now, UTC, {SRC: gaps})
    kept_bases = [b for b in bases if b.id not in plan.remove_backups]
    removed_keys = {s.key for s, _ in plan.remove_segments}
    kept_segs = [s for s in segs if s.key not in removed_keys]
    assert set(plan.keep_backups) | set(plan.remove_backups) == {b.id for b in bases}
    assert not set(plan.keep_backups) & set(plan.remove_backups)
    before = Planner(bases, {SRC: segs}, {SRC: gaps}, source_id=SRC)
    after = Planner(kept_bases, {SRC: kept_segs}, {SRC: gaps}, source_id=SRC)

    if not rules.active():
        assert not plan.remove_backups and not plan.remove_segments
        return

    # 1. Every moment of the recovery window restorable before prune still is: the real planner
    #    finds a plan for it after prune.
    if rules.window:
        ws = now - rules.window
        for t in probes(bases, segs, ws, now):
            if restorable(before, t):
                assert restorable(after, t), f"{t - EPOCH} lost (window from {ws - EPOCH})"

    # 2. The bases: every base a rule names remains; any other remaining base is one without
    #    which some moment of the window would be lost.
    named = required_by_rules(bases, rules, now)
    assert named <= {b.id for b in kept_bases}
    for extra in [b for b in kept_bases if b.id not in named]:
        assert rules.window
        without = Planner([b for b in kept_bases if b is not extra], {SRC: kept_segs},
                          {SRC: gaps}, source_id=SRC)
        ws = now - rules.window
        assert any(restorable(after, t) and not restorable(without, t)
                   for t in probes(bases, segs, ws, now)), f"{extra.id} kept for nothing"

    # 3. The segments: each kept base replays exactly as far as before; every remaining segment
    #    is on the replay path of a kept base, or is the newest one (the shipper's resume point).
    newest = max(segs, key=lambda s: (s.binlog_file, s.start_pos, s.end_pos)) if segs else None
    on_path: set[str] = set()
    for b in kept_bases:
        assert after.reach_end(b) == before.reach_end(b), b.id
        loc = after.base_location(b)
        if loc is not None:
            run = after.runs[loc.run].segments
            on_path |= {s.key for s in run[max(loc.index - 1, 0):]}
    for s in kept_segs:
        if not bases:
            continue
        why = plan.keep_segments[s.key]
        assert s.key in on_path or s is newest or why.startswith("separates"), \
            f"{s.key} kept for nothing"
    # 4. Removing segments never makes two stretches look contiguous when they were not.
    run_before = {s.key: i for i, r in enumerate(before.runs) for s in r.segments}
    for r in after.runs:
        assert len({run_before[s.key] for s in r.segments}) == 1


@settings(max_examples=50, deadline=None)
@given(histories())
def test_binlog_of_a_source_without_any_base_is_left_alone(history):
    _, segs, gaps, now = history
    plan = plan_prune([], {SRC: segs}, RetentionRules(keep_last=1, window=3600), now, UTC,
                      {SRC: gaps})
    assert not plan.remove_segments and len(plan.keep_segments) == len(segs)


# -- examples ------------------------------------------------------------------------------------
def _week_of_dailies() -> tuple[list[BackupManifest], list[SegmentInfo]]:
    """A snapshot every day at 01:00 for 10 days; binlog shipped all along (one segment an hour)."""
    day0 = datetime(2026, 3, 1, tzinfo=UTC).timestamp()
    segs, bases = [], []
    pos = 4
    for h in range(10 * 24):
        t = day0 + h * HOUR
        segs.append(seg("binlog.000001", pos, pos + 100, t + 1, t + HOUR - 1))
        if h % 24 == 1:
            bases.append(base(f"d{h // 24}", "binlog.000001", pos, t - 0.5 + 1))
        pos += 100
    return bases, segs


def test_recovery_window_keeps_the_anchor_and_the_binlog_from_it():
    bases, segs = _week_of_dailies()
    now = segs[-1].last_commit_time
    plan = plan_prune(bases, {SRC: segs}, RetentionRules(window=3 * 86400), now, UTC)
    assert sorted(plan.keep_backups) == ["d6", "d7", "d8", "d9"]
    assert "before the recovery window" in plan.keep_backups["d6"][0]
    assert plan.keep_backups["d7"] == ["inside the recovery window"]
    assert sorted(plan.remove_backups) == ["d0", "d1", "d2", "d3", "d4", "d5"]
    assert plan.remove_backups["d0"] == "kept by no rule (recovery_window=3 days)"
    anchor_pos = plan.backups["d6"].point.pos
    assert all(s.start_pos < anchor_pos for s, _ in plan.remove_segments)
    kept = [s for s in segs if s.key in plan.keep_segments]
    assert all(s.end_pos > anchor_pos for s in kept[1:])
    assert kept[0].end_pos == anchor_pos and "locates kept base d6" in plan.keep_segments[kept[0].key]
    assert "ends before kept base d6" in plan.remove_segments[0][1]


def test_keep_daily_and_last_name_their_reasons():
    bases, segs = _week_of_dailies()
    now = segs[-1].last_commit_time
    plan = plan_prune(bases, {SRC: segs}, RetentionRules(keep_last=1, keep_daily=3), now, UTC)
    assert sorted(plan.keep_backups) == ["d7", "d8", "d9"]
    assert plan.keep_backups["d9"] == ["keep_last (1 of 1)", "keep_daily (newest of 2026-03-10)"]
    # Binlog before the oldest kept base goes; from it on, everything stays (PITR from any kept base).
    first_kept = min(s.start_pos for s in segs if s.key in plan.keep_segments)
    assert first_kept <= plan.backups["d7"].point.pos


def test_an_older_base_whose_replay_covers_the_window_is_kept():
    # b0 has binlog from it through the window; the anchor b1 is a cold backup without coordinates.
    t0 = EPOCH
    segs = [seg("binlog.000001", 4 + 100 * i, 104 + 100 * i, t0 + 10 * i + 1, t0 + 10 * i + 9)
            for i in range(30)]
    b0 = base("b0", "binlog.000001", 4, t0 + 0.5)
    b1 = base("b1", "", 0, t0 + 100.5, kind="cold")
    now = t0 + 300
    plan = plan_prune([b0, b1], {SRC: segs}, RetentionRules(keep_last=1, window=150), now, UTC)
    assert set(plan.keep_backups) == {"b0", "b1"}
    assert "reaches into the recovery window" in plan.keep_backups["b0"][0]
    assert not plan.remove_segments


def test_no_rules_keeps_everything():
    bases, segs = _week_of_dailies()
    plan = plan_prune(bases, {SRC: segs}, RetentionRules(), segs[-1].last_commit_time, UTC)
    assert not plan.remove_backups and not plan.remove_segments


@pytest.mark.parametrize("text,seconds", [("7 days", 604800), ("36h", 129600), ("1d 12h", 129600),
                                          ("90 min", 5400), ("2 weeks", 1209600), ("45s", 45),
                                          (3600, 3600), ("1.5 hours", 5400)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "7", "seven days", "7 dyas", "0 days", "-1 h", "3 months"])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_human_duration():
    assert human_duration(7 * 86400) == "7 days" and human_duration(86400) == "1 day"
    assert human_duration(36 * 3600) == "36 h" and human_duration(90) == "90 s"
    assert human_duration(5400) == "90 min"


def test_gaps_before_every_kept_segment_go_with_them():
    bases, segs = _week_of_dailies()
    g = GapInfo(SRC, "binlog.000001", 104, "binlog.000001", 204, detected_at=0, reason="x")
    late = GapInfo(SRC, "binlog.000001", 100000, "binlog.000001", 100100, detected_at=0, reason="x")
    plan = plan_prune(bases, {SRC: segs}, RetentionRules(keep_last=1), segs[-1].last_commit_time,
                      UTC, {SRC: [g, late]})
    assert [x for x, _ in plan.remove_gaps] == [g]
    per = defaultdict(int)
    for s, _ in plan.remove_segments:
        per[s.binlog_file] += 1
    assert per["binlog.000001"] > 0


def test_prune_leaves_small_segments_a_kept_compacted_one_covers_to_binlog_compact():
    """Deleting them is compaction's job, after its grace period: a restore may be reading them."""
    f = "binlog.000001"
    t = EPOCH
    small = [seg(f, 4 + 100 * i, 104 + 100 * i, t + i, t + i) for i in range(10)]
    wide = seg(f, 4, 1004, t, t + 9)
    wide.merged = 10
    tail = seg(f, 1004, 1104, t + 20, t + 20)
    b = base("b1", f, 4, t - 1)
    plan = plan_prune([b], {SRC: [*small, wide, tail]}, RetentionRules(keep_last=1), t + 30, UTC)
    assert wide.key in plan.keep_segments and tail.key in plan.keep_segments
    for s in small:
        assert "superseded by compacted segment" in plan.keep_segments[s.key]
    assert plan.remove_segments == []
