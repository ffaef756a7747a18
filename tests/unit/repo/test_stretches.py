"""Stretches (repo/stretches.py) give exactly what the segments give: runs, their times and
positions, the confirmed-through watermark, restorable intervals and the loss report.

Hypothesis draws shipping histories with holes, recorded gaps, new ranges, server epochs joined
by GTID (a failover), empty anchors, commit times that go backwards, compacted segments lying
over the small ones they merged (their grace period), and bases and a watermark at segment
starts and strictly inside segments; every view is computed from the segments and from their
stretches and compared. The catalog tests check the source summary: used when it matches the
listed roll-ups, ignored (the roll-ups read) when it does not, and a base inside a summarized
stretch makes that file read from its roll-up.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backupkit.errors import PlanError
from backupkit.repo import layout
from backupkit.repo.catalog import BackupManifest, BinlogPoint, Catalog, GapInfo, SegmentInfo, SourceIdentity
from backupkit.repo.codec import StoredObject
from backupkit.repo.coverage import build_runs, confirm, in_use
from backupkit.repo.servers import file_id
from backupkit.repo.stretches import Stretch, inside, summarize
from backupkit.restore.loss import NeedSegments, build_loss_report
from backupkit.restore.plan import Planner
from backupkit.storage.local import LocalStore
from backupkit.strategies.binlog.status import switchover_history
from tests.support.scale import SOURCE, build_repository, no_fsync, synthetic_segment

SRC = "src-1"


def _seg(file: str, start: int, end: int, t: float, txns: int, rid: str, server: int, gtid: int,
         created: float, next_file: str = "", gtid_start: str = "", merged: int = 0) -> SegmentInfo:
    obj = StoredObject(layout.segment_data(SRC, file, start, end), end - start + 7, "0" * 64, end - start)
    state = f"0-{server}-{gtid}"
    return SegmentInfo(SRC, file, start, end, obj, first_event_time=t, last_event_time=t + 1,
                       first_commit_time=t if txns else 0.0, last_commit_time=t + 1 if txns else 0.0,
                       gtid_first=state if txns else "", gtid_last=state if txns else "",
                       gtid_state=state, gtid_start=gtid_start, events=max(txns, 1) * 3,
                       transactions=txns, next_file=next_file, file_closed=bool(next_file),
                       range_id=rid, server_id=server, created_at=created, merged=merged)


@dataclass
class History:
    segments: list[SegmentInfo] = field(default_factory=list)  # every listed one
    gaps: list[GapInfo] = field(default_factory=list)
    points: list[tuple[str, int, float]] = field(default_factory=list)  # candidate bases


@st.composite
def histories(draw) -> History:
    h = History()
    epoch, server, fileno, pos, t, rid, gtid = 0, 1, 1, 4, 1_000_000.0, 0, 0
    created = 2_000_000.0
    for r in range(draw(st.integers(1, 5))):
        if r:
            prev = h.segments[-1]
            kind = draw(st.sampled_from(["hole", "gap", "new_range", "failover", "restart"]))
            if kind == "hole":
                pos += draw(st.integers(1, 50))
            elif kind == "gap":
                after = (prev.binlog_file, prev.end_pos)
                fileno, pos, rid = fileno + 1, 4, rid + 1
                h.gaps.append(GapInfo(SRC, *after, file_id(epoch, f"binlog.{fileno:06d}"), 4, t, "purged"))
            elif kind == "new_range":
                fileno, pos, rid = fileno + 1, 4, rid + 1
            elif kind == "failover":  # a new server, linked by GTID (or not, when drawn)
                epoch, server, fileno, pos = epoch + 1, server + 1, 1, 4
            # "restart": the same file goes on (an empty anchor may start it)
        first_of_epoch = not h.segments or h.segments[-1].server_id != server
        anchor = draw(st.booleans())
        f = file_id(epoch, f"binlog.{fileno:06d}")
        if anchor:
            h.segments.append(_seg(f, pos, pos, t, 0, f"r{rid}", server, gtid, created))
        link = ""
        if first_of_epoch and h.segments and draw(st.booleans()):
            link = h.segments[-1].gtid_state if not anchor else h.segments[-2].gtid_state \
                if len(h.segments) > 1 else ""
        for i in range(draw(st.integers(1, 12))):
            n = draw(st.integers(1, 60))
            txns = draw(st.sampled_from([0, 1, 2]))
            rotate = draw(st.integers(0, 5)) == 0
            gtid += txns
            t += draw(st.integers(-3, 6))  # commit times may go backwards
            created += draw(st.integers(0, 3))
            h.segments.append(_seg(f, pos, pos + n, t, txns, f"r{rid}", server, gtid, created,
                                   next_file=file_id(epoch, f"binlog.{fileno + 1:06d}") if rotate else "",
                                   gtid_start=link if i == 0 else ""))
            h.points.append((f, pos, t - 0.5))
            h.points.append((f, pos + n // 2, t))  # strictly inside (when n > 1)
            if rotate:
                fileno, pos = fileno + 1, 4
                f = file_id(epoch, f"binlog.{fileno:06d}")
            else:
                pos += n
    # compaction: a run of contiguous small segments of one file merged into one wide segment,
    # the small ones still listed (the grace period)
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(h.segments) - 1))
        j = i
        while j + 1 < len(h.segments) and h.segments[j + 1].binlog_file == h.segments[i].binlog_file \
                and h.segments[j + 1].start_pos == h.segments[j].end_pos and not h.segments[j].next_file \
                and h.segments[j + 1].range_id == h.segments[i].range_id and j - i < 4:
            j += 1
        if j > i:
            a, z = h.segments[i], h.segments[j]
            part = h.segments[i:j + 1]
            merged = SegmentInfo(SRC, a.binlog_file, a.start_pos, z.end_pos,
                                 StoredObject("m", sum(s.object.size for s in part), "0" * 64, 1),
                                 a.first_event_time, z.last_event_time, a.first_commit_time,
                                 max(s.last_commit_time for s in part), a.gtid_first, z.gtid_last,
                                 z.gtid_state, a.gtid_start, sum(s.events for s in part),
                                 sum(s.transactions for s in part), z.next_file, z.file_closed,
                                 a.range_id, a.server_id, created + 100, merged=j - i + 1)
            h.segments.append(merged)
    return h


def _runs_view(runs) -> list[tuple]:
    """What every command reads of a run, members in the segments' terms."""
    out = []
    for r in runs:
        first = r.first.head if isinstance(r.first, Stretch) else r.first
        last = r.last.tail if isinstance(r.last, Stretch) else r.last
        count = sum(getattr(s, "count", 1) for s in r.segments)
        out.append((r.start, r.end, r.range_id, count, r.stored_bytes, r.first_commit_time,
                    r.end_time(), r.commit_end(), r.confirmed and max(r.confirmed.values()),
                    first.key, last.key, r.last.gtid_state, r.first.gtid_start))
    return out


def _bases(h: History, picks: list[int]) -> list[BackupManifest]:
    out = []
    for i, k in enumerate(picks):
        f, p, t = h.points[k % len(h.points)]
        name = f.rsplit("~", 1)[-1]  # a base records the server's own file name
        out.append(BackupManifest(f"b{i}", "snapshot", SourceIdentity(SRC, server_id=0),
                                  BinlogPoint(name, p, "", t), t - 1, t))
    return out


def _drawn(h: History, picks: list[int], mark: int, seed: int):
    """The listed segments in a random order, the bases, the watermark's point and the stretches
    cut at those points."""
    segs = random.Random(seed).sample(h.segments, len(h.segments))
    bases = _bases(h, picks)
    f, p, _ = h.points[mark % len(h.points)]
    cuts = [(b.point.file, b.point.pos) for b in bases] + [(f, p)]
    return segs, bases, (f, p), summarize(segs, cuts)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.lists(st.integers(0, 10_000), min_size=1, max_size=4), st.integers(0, 10_000),
       st.integers(0, 2**31))
def test_stretches_give_what_segments_give(h: History, picks: list[int], mark: int, seed: int) -> None:
    segs, bases, (f, p), stretches = _drawn(h, picks, mark, seed)
    assert sum(s.listed for s in stretches) == len(segs)
    assert sum(s.listed_bytes for s in stretches) == sum(s.object.size for s in segs)
    assert sum(s.count for s in stretches) == len(in_use(segs))

    by_segs, by_str = build_runs(segs, h.gaps), build_runs(stretches, h.gaps)
    assert confirm(by_segs, (f, p), 3e6) == confirm(by_str, (f, p), 3e6)
    assert _runs_view(by_segs) == _runs_view(by_str)
    assert switchover_history(stretches, h.gaps) == switchover_history(summarize(segs), h.gaps)

    class Mark:
        point, confirmed_at, updated_at = (f, p), 3e6, 0.0

    def planner(items) -> Planner:
        return Planner(bases, {SRC: items}, {SRC: h.gaps}, SRC, confirmed={SRC: Mark()})

    a, b = planner(segs), planner(stretches)
    assert a.intervals() == b.intervals()
    assert [a.reach_end(x) for x in bases] == [b.reach_end(x) for x in bases]
    assert a.newest_commit() == b.newest_commit()
    for at in (3e6, 2_000_000.0 + len(segs)):
        want = build_loss_report(bases, {SRC: segs}, {SRC: h.gaps}, [], at, SRC, {SRC: Mark()})
        try:
            got = build_loss_report(bases, {SRC: stretches}, {SRC: h.gaps}, [], at, SRC, {SRC: Mark()})
        except NeedSegments:
            continue  # the caller reads the segments then
        assert got.to_dict() == want.to_dict()


def test_a_cut_inside_keeps_a_segment_alone() -> None:
    segs = [_seg("binlog.000001", 4 + 10 * i, 14 + 10 * i, 100.0 + i, 1, "r", 1, i, 0.0) for i in range(6)]
    assert [s.count for s in summarize(segs)] == [6]
    parts = summarize(segs, [("binlog.000001", 27)])  # inside the third segment
    assert [(s.start_pos, s.end_pos, s.count) for s in parts] == [(4, 24, 2), (24, 34, 1), (34, 64, 3)]
    assert inside(summarize(segs), [("binlog.000001", 24)]) == {"binlog.000001"}
    assert inside(parts, [("binlog.000001", 24), ("binlog.000001", 27)]) == set()


# -- the source summary in a repository -----------------------------------------------------------
def _repo(tmp_path, n: int = 330, per_file: int = 100) -> Catalog:
    with no_fsync():
        return build_repository(LocalStore(tmp_path / "repo"), n, per_file=per_file)


def _same(cat: Catalog, cuts=()) -> list[Stretch]:
    got = cat.stretches(SOURCE, cuts)
    want = summarize(cat.segments(SOURCE), cuts)
    assert [st.to_dict() for st in got] == [st.to_dict() for st in want]
    return got


def _opened(store) -> list[str]:
    """The keys store.open is called with from now on."""
    reads: list[str] = []
    real = store.open

    def counting(key: str):
        reads.append(key)
        return real(key)

    store.open = counting
    return reads


def test_the_summary_replaces_the_rollups(tmp_path) -> None:
    cat = _repo(tmp_path)
    entries = cat.summary_entries(SOURCE)
    assert sorted(entries) == ["binlog.000001", "binlog.000002", "binlog.000003"]
    got = _same(Catalog(cat.store))
    assert [(s.binlog_file, s.count) for s in got] == [
        ("binlog.000001", 100), ("binlog.000002", 100), ("binlog.000003", 100), ("binlog.000004", 30)]
    reads = _opened(cat.store)
    Catalog(cat.store).stretches(SOURCE)
    assert not [k for k in reads if layout.rollup_file_of(k)]  # no finished file's roll-up read


def test_a_stale_or_damaged_summary_is_not_used(tmp_path) -> None:
    cat = _repo(tmp_path)
    # a file's roll-up rewritten without its last entry (as prune would after editing it): the
    # summary's entry no longer matches the listed roll-up, so the roll-up is read
    segs = [s for s in cat.segments(SOURCE) if s.binlog_file == "binlog.000002"]
    cat.store.delete([segs[-1].key])
    cat.write_rollup(layout.segment_rollup(SOURCE, "binlog.000002"), SOURCE, "binlog.000002", segs[:-1])
    got = _same(Catalog(cat.store))
    assert [s.count for s in got if s.binlog_file == "binlog.000002"] == [99]
    cat.store.put(layout.binlog_summary(SOURCE), b"not zstd")
    _same(Catalog(cat.store))
    cat.store.delete([layout.binlog_summary(SOURCE)])  # a repository of an older backupkit
    _same(Catalog(cat.store))


def test_a_writer_keeps_only_entries_that_match_the_rollups(tmp_path) -> None:
    """A writer publishing its new entry does not put back one another writer made stale, and
    keeps the others' fresh ones (compaction rewrote a roll-up meanwhile)."""
    cat = _repo(tmp_path, 250)
    shipper, compactor = Catalog(cat.store), Catalog(cat.store)
    head = cat.head(SOURCE)
    assert head is not None
    assert shipper.roll_up_file(SOURCE, "binlog.000003", finished=True)
    before = cat.summary_entries(SOURCE)["binlog.000001"]["etag"]
    segs = [s for s in cat.segments(SOURCE) if s.binlog_file == "binlog.000001"]
    compactor.forget_rollups(SOURCE, ["binlog.000001"])  # as prune and compaction edit a file
    cat.store.delete([segs[-1].key])
    assert compactor.roll_up(SOURCE)["written"]
    rollup = layout.segment_rollup(SOURCE, "binlog.000001")
    entries = cat.summary_entries(SOURCE)
    assert entries["binlog.000001"]["etag"] != before
    assert entries["binlog.000001"]["etag"] == cat.store.stat(rollup).etag
    shipper.write_head(head.segment, [*head.rollups, "binlog.000003"])
    entries = cat.summary_entries(SOURCE)
    assert sorted(entries) == ["binlog.000001", "binlog.000002", "binlog.000003"]
    assert entries["binlog.000001"]["etag"] == cat.store.stat(rollup).etag
    _same(Catalog(cat.store))


def test_a_point_inside_a_summarized_stretch_reads_its_file(tmp_path) -> None:
    cat = _repo(tmp_path)
    inner = synthetic_segment(150, 100)
    got = _same(Catalog(cat.store), [(inner.binlog_file, inner.start_pos + 50)])
    assert [(s.binlog_file, s.count) for s in got if s.binlog_file == inner.binlog_file] == [
        ("binlog.000002", 50), ("binlog.000002", 1), ("binlog.000002", 49)]


def test_the_summary_follows_the_head(tmp_path) -> None:
    """Only files the head names are in it; a file rolled up but not yet named waits."""
    cat = _repo(tmp_path, 250)
    assert sorted(cat.summary_entries(SOURCE)) == ["binlog.000001", "binlog.000002"]
    head = cat.head(SOURCE)
    assert head is not None
    fresh = Catalog(cat.store)
    assert fresh.roll_up_file(SOURCE, "binlog.000003", finished=True)  # its entry is made
    fresh.write_head(head.segment, head.rollups)
    assert sorted(cat.summary_entries(SOURCE)) == ["binlog.000001", "binlog.000002"]
    fresh.write_head(head.segment, [*head.rollups, "binlog.000003"])
    assert sorted(cat.summary_entries(SOURCE)) == ["binlog.000001", "binlog.000002", "binlog.000003"]


@pytest.mark.parametrize("per_file", [70, 100])
def test_cuts_at_every_base_of_a_repository(tmp_path, per_file) -> None:
    cat = _repo(tmp_path, 330, per_file)
    points = [(s.binlog_file, s.start_pos + d) for s in map(lambda i: synthetic_segment(i, per_file),
                                                          (0, 99, 123, 299)) for d in (0, 1, 100)]
    _same(Catalog(cat.store), points)


def test_summarizing_commands_never_read_every_segment(tmp_path, monkeypatch) -> None:
    """list, binlog status, report and the status page work on stretches alone (a month of
    one-second segments would not fit in memory as segments)."""
    from backupkit.cli.listing import repository_listing
    from backupkit.monitor.collect import read_repository
    from backupkit.repo.repository import Repository
    from backupkit.restore.loss import loss_report
    from backupkit.strategies.binlog.status import shipping_status
    from tests.support.scale import T0

    cat = _repo(tmp_path)

    def refused(*args, **kwargs):
        raise AssertionError("read every segment")

    monkeypatch.setattr(Catalog, "segments", refused)
    assert repository_listing(Repository(cat.store))["binlog_coverage"][0]["segments"] == 330
    assert shipping_status(Catalog(cat.store), SOURCE, now=T0 + 400)["segments"] == 330
    report = loss_report(Catalog(cat.store), at=T0 + 400, count=False)
    assert report.get("binlog").recovery_point == T0 + 329
    view = read_repository(Catalog(cat.store), targets=False, now=T0 + 400)
    assert not view.error and view.sources[0].segments == 330


# -- restore plans over stretches (restore/plan.py, restore/pitr.py make_plan) ---------------------
def _plan_view(planner: Planner, target) -> tuple:
    """What a plan restores (base, start, stop, every segment once expanded) or why it cannot."""
    try:
        p = planner.plan(target)
    except PlanError as exc:
        return ("error", exc.message)
    return (p.base.id, p.start, p.stop_time, p.expected_end_time, p.segment_count,
            [s.key for s in p.iter_segments()], p.segment_bytes, p.segment_raw_bytes,
            round(p.estimated_seconds, 6), tuple(p.notes))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.lists(st.integers(0, 10_000), min_size=1, max_size=4), st.integers(0, 10_000),
       st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from([-1.0, -0.5, 0.0, 0.5, 1.0])),
                min_size=1, max_size=6),
       st.integers(0, 2**31))
def test_plans_over_stretches_are_the_plans_over_segments(h: History, picks: list[int], mark: int,
                                                          times: list[tuple[int, float]], seed: int) -> None:
    """Time (at, between and around commits: inside compacted segments, at rotations), latest and
    position targets: the same base, start, stop and segments once the stretches are expanded
    (from every listed segment of the file, as Catalog.file_segments gives them), with bases
    inside segments, gaps and failover epochs. GTID targets too (they read the files in order
    up to the one holding the transaction)."""
    from backupkit.repo.stretches import members
    from backupkit.restore.stoppoint import RestoreTarget, parse_target

    segs, bases, (f, p), stretches = _drawn(h, picks, mark, seed)
    by_file: dict[str, list[SegmentInfo]] = {}
    for s in segs:
        by_file.setdefault(s.binlog_file, []).append(s)
    expanded: list[str] = []

    def expand(st_: Stretch):
        expanded.append(st_.binlog_file)
        return members(by_file[st_.binlog_file], st_)

    class Mark:
        point, confirmed_at, updated_at = (f, p), 3e6, 0.0

    a = Planner(bases, {SRC: segs}, {SRC: h.gaps}, SRC, confirmed={SRC: Mark()})
    b = Planner(bases, {SRC: stretches}, {SRC: h.gaps}, SRC, confirmed={SRC: Mark()}, expand=expand)
    commits = sorted({s.last_commit_time for s in segs if s.last_commit_time} | {x[2] for x in h.points})
    targets = [RestoreTarget("latest", accept_gap=True)]
    targets += [RestoreTarget("time", time=commits[k % len(commits)] + d) for k, d in times]
    targets += [RestoreTarget("position", file=h.points[k % len(h.points)][0],
                              pos=h.points[k % len(h.points)][1]) for k, _ in times]
    states = sorted({x.gtid_state for x in segs})
    for k, _ in times:  # GTID targets: a shipped state, and one sequence number past it
        domain, server, seq = states[k % len(states)].split("-")
        for text in (f"{domain}-{server}-{seq}", f"{domain}-{server}-{int(seq) + 1}"):
            targets += [parse_target(to_gtid=text), parse_target(stop_before_gtid=text)]
    for target in targets:
        expanded.clear()
        try:
            b.plan(target)
        except PlanError:
            pass
        if target.kind in ("time", "position", "latest"):  # where each base's replay stops, no more
            assert len(expanded) <= len(bases)
        assert _plan_view(a, target) == _plan_view(b, target), target.describe()


def test_a_stretch_expands_to_the_segments_holding_its_events_after_a_compaction() -> None:
    """A restore reads a stretch's segments when it reaches them: a compaction since the plan
    gives the merged objects where they lie within it, the small ones (their grace period) where
    a merged one reaches past its end, and a prune that left a hole gives None (refused)."""
    from backupkit.repo.stretches import members

    small = [_seg("binlog.000001", 4 + 10 * i, 14 + 10 * i, 100.0 + i, 1, "r", 1, i, 0.0) for i in range(8)]
    a, b = summarize(small, [("binlog.000001", 44)])  # [4, 44) and [44, 84)
    assert [s.key for s in members(small, a)] == [s.key for s in small[:4]]

    def merged(i: int, j: int) -> SegmentInfo:
        m = _seg("binlog.000001", small[i].start_pos, small[j].end_pos, 100.0, 1, "r", 1, j, 9.0)
        m.merged = j - i + 1
        return m

    inner, across = merged(0, 2), merged(3, 5)  # the second reaches past a's end
    now = small + [inner, across]
    assert [(s.start_pos, s.end_pos) for s in members(now, a)] == [(4, 34), (34, 44)]
    assert [(s.start_pos, s.end_pos) for s in members(now, b)] == [(44, 54), (54, 64), (64, 74), (74, 84)]
    after_grace = [s for s in now if s not in small[:3] and s is not small[3]]
    assert members(after_grace, a) is None  # [34, 44) is gone: nothing holds it
    assert members([s for s in small if s is not small[5]], b) is None


@pytest.mark.parametrize("with_head", [True, False])
def test_segments_by_file_gives_what_segments_gives_one_file_at_a_time(tmp_path, with_head) -> None:
    with no_fsync():
        cat = build_repository(LocalStore(tmp_path / "repo"), 330, per_file=100, with_head=with_head)
    got = list(Catalog(cat.store).segments_by_file(SOURCE))
    assert [f for f, _ in got] == ["binlog.000001", "binlog.000002", "binlog.000003", "binlog.000004"]
    assert all({s.binlog_file for s in segs} == {f} for f, segs in got)
    flat = [s.to_dict() for _, segs in got for s in segs]
    assert flat == [s.to_dict() for s in Catalog(cat.store).segments(SOURCE)]


def test_the_summary_is_cut_at_the_bases_so_their_points_read_no_rollup(tmp_path) -> None:
    """A base taken while a file was open has its point inside the file: the summary entry made
    when the file is rolled up is cut there, so restore, report and the status page (which cut
    at every base) read the summary, not the file's roll-up."""
    cat = _repo(tmp_path)
    inner = synthetic_segment(150, 100)
    point = BinlogPoint(inner.binlog_file, inner.start_pos + 50, "", inner.last_commit_time)
    src = SourceIdentity(SOURCE, version="10.11", server_id=1)
    cat.commit_backup(BackupManifest(id="20231114T230000Z-snapshot-0002", kind="snapshot", source=src,
                                     point=point, started_at=point.time, finished_at=point.time))
    cuts = [(point.file, point.pos)]
    reads = _opened(cat.store)
    Catalog(cat.store).stretches(SOURCE, cuts)  # made before the base: the roll-up is read
    assert [k for k in reads if layout.rollup_file_of(k)] == [layout.segment_rollup(SOURCE, "binlog.000002")]
    assert Catalog(cat.store).roll_up_file(SOURCE, "binlog.000002", finished=True)  # as prune would
    reads.clear()
    Catalog(cat.store).stretches(SOURCE, cuts)
    assert not [k for k in reads if layout.rollup_file_of(k)]
    got = _same(Catalog(cat.store), cuts)
    assert [(s.binlog_file, s.count) for s in got if s.binlog_file == "binlog.000002"] == [
        ("binlog.000002", 50), ("binlog.000002", 1), ("binlog.000002", 49)]
    _same(Catalog(cat.store))  # and without the cut: the same as the segments give
