"""Binlog compaction on synthetic but valid segments (real binlog framing, positions and CRC32):
the merged object holds every event byte, readers prefer it, the small ones go only after the
grace period, a run stopped between commit and delete is finished by the next, and a day of
one-second segments ends as a few dozen objects."""

from __future__ import annotations

import struct

import pytest

from backupkit.errors import IntegrityError
from backupkit.mysql import binlog_events as be
from backupkit.operations import compact as cp
from backupkit.repo import layout
from backupkit.repo.catalog import Catalog, SegmentInfo
from backupkit.repo.codec import StoredObject, put_object, read_object
from backupkit.repo.coverage import build_runs
from backupkit.storage import open_store

SRC = "src"
FILE = "binlog.000001"
T0 = 1_700_000_000.0


def _event(etype: int, pos: int, body: bytes, ts: int = int(T0)) -> bytes:
    size = be.HEADER_LEN + len(body) + 4
    hdr = struct.pack("<IBIIIH", ts, etype, 1, size, pos + size, 0)
    raw = hdr + body
    return raw + struct.pack("<I", be.crc32(raw))


def _fde(pos: int = 4) -> bytes:
    body = struct.pack("<H", 4) + b"10.11.6-MariaDB".ljust(50, b"\0") + struct.pack("<I", 0) \
        + bytes([19]) + bytes(40) + bytes([be.CHECKSUM_CRC32])
    size = be.HEADER_LEN + len(body) + 4
    raw = struct.pack("<IBIIIH", int(T0), be.FORMAT_DESCRIPTION_EVENT, 1, size, pos + size, 0) + body
    return raw + struct.pack("<I", be.crc32(raw))


class Repo:
    """A repository of n one-second segments of one file, written by the catalog's own writer."""

    def __init__(self, tmp_path, n: int, per_segment: int = 3, t0: float = T0) -> None:
        self.store = open_store(f"file://{tmp_path / 'repo'}")
        self.catalog = Catalog(self.store)
        self.fde = _fde()
        self.events = b""  # every event of the file from position 4 on (the FDE first)
        pos = 4
        self.segments: list[SegmentInfo] = []
        for i in range(n):
            start = pos
            body = b""
            if i == 0:
                body += self.fde
                pos += len(self.fde)
            for j in range(per_segment):
                ev = _event(be.QUERY_EVENT, pos, f"txn {i}.{j} ".encode() * (j + 1), int(t0) + i)
                body += ev
                pos += len(ev)
            head = be.MAGIC + (b"" if start == 4 else self.fde)
            self.events += body
            obj = put_object(self.store, layout.segment_data(SRC, FILE, start, pos), head + body)
            seg = SegmentInfo(SRC, FILE, start, pos, obj, first_event_time=t0 + i,
                              last_event_time=t0 + i, first_commit_time=t0 + i,
                              last_commit_time=t0 + i, gtid_first=f"0-1-{i * per_segment + 1}",
                              gtid_last=f"0-1-{(i + 1) * per_segment}",
                              gtid_state=f"0-1-{(i + 1) * per_segment}", events=per_segment,
                              transactions=per_segment, range_id="r1", server_id=1,
                              created_at=t0 + i)
            self.catalog.commit_segment(seg)
            self.segments.append(seg)
        self.end = pos


def test_merged_segment_holds_every_event_byte_and_the_aggregated_index_fields(tmp_path):
    r = Repo(tmp_path, 30)
    res = cp.compact_source(r.catalog, SRC, older_than=60, grace=3600, now=T0 + 3600)
    # the newest segment is never merged (the head and the shipper's resume point stay)
    assert [m["segments"] for m in res.merged] == [29]
    segs = r.catalog.segments(SRC)
    runs = build_runs(segs)
    assert len(runs) == 1 and len(runs[0].segments) == 2  # the merged one, then the newest
    merged = runs[0].segments[0]
    assert (merged.start_pos, merged.end_pos) == (4, r.segments[28].end_pos)
    assert merged.merged == 29 and merged.transactions == 29 * 3 and merged.events == 29 * 3
    assert merged.first_commit_time == T0 and merged.last_commit_time == T0 + 28
    assert (merged.gtid_first, merged.gtid_last, merged.gtid_state) == ("0-1-1", "0-1-87", "0-1-87")
    data = read_object(r.store, merged.object)
    assert data == be.MAGIC + r.events[:merged.end_pos - 4]
    # a valid binlog: mariadb-binlog's framing (checksums verified by iter_events)
    import io
    evs = list(be.iter_events(io.BytesIO(data), verify_checksums=True))
    assert len(evs) == 1 + 29 * 3
    # the small ones' entries are gone but the last (readers list two entries, not 30); their
    # data stays, inside the grace period, for a restore that planned with them
    assert res.waiting == 29 and len(segs) == 3 and segs[1].key == r.segments[28].key
    assert all(read_object(r.store, s.object) for s in r.segments)
    again = cp.compact_source(r.catalog, SRC, older_than=60, grace=3600, now=T0 + 3601)
    assert again.merged == [] and again.deleted == [] and again.waiting == 29


def test_small_segments_go_only_after_the_grace_then_the_rollup_is_rewritten(tmp_path):
    r = Repo(tmp_path, 20)
    r.catalog.roll_up_file(SRC, FILE)
    cp.compact_source(r.catalog, SRC, older_than=0, grace=600, now=T0 + 100)
    # the roll-up names the compacted entry at once, the last small one it covers and the newest
    body = r.catalog.read_rollup(layout.segment_rollup(SRC, FILE))
    assert sorted(d.get("merged", 0) for d in body["segments"]) == [0, 0, 19]
    before = {i.key for i in r.store.list(layout.BINLOG)}
    # inside the grace: a reader that planned with the small segments still reads them
    early = cp.compact_source(r.catalog, SRC, older_than=0, grace=600, now=T0 + 100 + 599)
    assert early.deleted == [] and early.waiting == 19
    for s in r.segments:
        assert read_object(r.store, s.object)
    late = cp.compact_source(r.catalog, SRC, older_than=0, grace=600, now=T0 + 100 + 600)
    assert late.waiting == 0 and len(late.deleted) == 2 * 19
    after = {i.key for i in r.store.list(layout.BINLOG)}
    # the last small entry, the 19 data objects and the record
    assert before - after == {r.segments[18].key, *(s.object.key for s in r.segments[:19]),
                              layout.compaction_record(SRC, FILE, 4, r.segments[18].end_pos,
                                                       T0 + 100 + 600, 19)}
    segs = r.catalog.segments(SRC)
    assert len(segs) == 2
    body = r.catalog.read_rollup(layout.segment_rollup(SRC, FILE))
    assert sorted(d["end_pos"] for d in body["segments"]) == sorted(s.end_pos for s in segs)


class Crash(Exception):
    pass


def _events_whole(r: Repo, segs) -> bool:
    runs = build_runs(segs)
    return len(runs) == 1 and runs[0].end == (FILE, r.end) and b"".join(
        read_object(r.store, s.object)[4 + (len(r.fde) if s.start_pos != 4 else 0):]
        for s in runs[0].segments) == r.events


@pytest.mark.parametrize("where", ["committed", "recorded", "entries deleted", "published"])
def test_a_run_stopped_at_any_step_leaves_a_readable_repository_and_a_rerun_finishes(tmp_path, where):
    """Killed after the commit, after the record, after the early deletes or after the roll-up
    rewrite: readers see one whole run (the merged segment or the small ones), every byte
    readable; the next run finishes, and after the grace nothing superseded is left."""
    r = Repo(tmp_path, 12)
    r.catalog.roll_up_file(SRC, FILE)  # a roll-up written before the merge names the small ones

    def crash(*_a):
        raise Crash

    hook = {"after_commit": crash} if where == "committed" else \
        {"step": lambda s: crash() if s == where else None}
    with pytest.raises(Crash):
        cp.compact_source(r.catalog, SRC, older_than=0, grace=600, now=T0 + 100, **hook)
    assert _events_whole(r, r.catalog.segments(SRC))
    res = cp.compact_source(r.catalog, SRC, older_than=0, grace=600, now=T0 + 200)
    assert res.merged == [] and res.waiting == 11
    segs = r.catalog.segments(SRC)
    assert [s.merged for s in segs] == [11, 0, 0] and _events_whole(r, segs)
    assert all(read_object(r.store, s.object) for s in r.segments)  # inside the grace
    res = cp.compact_source(r.catalog, SRC, older_than=0, grace=600, now=T0 + 100 + 600)
    assert res.waiting == 0
    keys = {i.key for i in r.store.list(layout.BINLOG)}
    assert not any(s.object.key in keys or s.key in keys for s in r.segments[:11])
    assert not any(layout.is_compaction_record(k) for k in keys)
    segs = r.catalog.segments(SRC)
    assert [s.merged for s in segs] == [11, 0] and _events_whole(r, segs)


@pytest.mark.parametrize("cached", [False, True])
def test_a_listing_that_races_the_merge_is_read_again_never_neither(tmp_path, cached):
    """A reader's listing passes the compacted entry's key before it is committed (a LIST page),
    and reaches the small entries after they are deleted (the next page): it reads again and
    sees the compacted segment, never a hole. Found by a listed entry gone when read, or (cached:
    the entries read from the file's roll-up) by the hole before the last small entry, which
    compaction keeps until the grace ends."""
    from tests.support.scale import CountingStore

    r = Repo(tmp_path, 12)
    if cached:
        r.catalog.roll_up_file(SRC, FILE)
    inner = r.store
    state = {"armed": True}

    class Racing(CountingStore):
        def list(self, prefix: str = ""):
            return self._race(prefix, self.inner.list(prefix))

        def list_after(self, prefix: str, after: str):
            return self._race(prefix, self.inner.list_after(prefix, after))

        def _race(self, prefix, listing):
            if not (state["armed"] and prefix == layout.index_prefix(SRC)):
                yield from listing
                return
            state["armed"] = False
            last = ""
            for n, info in enumerate(listing):
                if n == 2:  # the first page ends here; compaction runs before the next
                    cp.compact_source(Catalog(inner), SRC, older_than=0, grace=600, now=T0 + 100)
                    break
                last = info.key
                yield info
            yield from self.inner.list_after(prefix, last)

    reader = Catalog(Racing(inner))
    segs = reader.segments(SRC)
    assert not state["armed"]  # the race happened
    assert [s.merged for s in segs] == [11, 0, 0] and _events_whole(r, segs)


def test_a_damaged_small_segment_stops_the_merge_and_commits_nothing(tmp_path):
    r = Repo(tmp_path, 6)
    bad = r.segments[2]
    # a segment whose events do not continue where the previous one ended
    data = be.MAGIC + r.fde + _event(be.QUERY_EVENT, bad.start_pos + 1, b"x" * 30)
    data += b"\0" * (bad.object.raw_size - len(data))
    obj = put_object(r.store, bad.object.key, data[:bad.object.raw_size])
    r.store.delete([bad.key])
    bad.object = obj
    r.catalog.commit_segment(bad)
    with pytest.raises(IntegrityError, match="no event starts"):
        cp.compact_source(r.catalog, SRC, older_than=0, grace=0, now=T0 + 100)
    assert all(not s.merged for s in r.catalog.segments(SRC))


def test_a_dry_run_changes_nothing(tmp_path):
    r = Repo(tmp_path, 8)
    before = sorted(i.key for i in r.store.list(""))
    res = cp.compact_source(r.catalog, SRC, older_than=0, grace=0, now=T0 + 100, dry_run=True)
    assert res.merged and res.merged[0]["segments"] == 7
    assert sorted(i.key for i in r.store.list("")) == before


def _day(n: int = 86_400) -> list[SegmentInfo]:
    """A day of one-second segments (index entries only), rotating the binlog file every 40,000."""
    segs, pos, f = [], 4, 1
    for i in range(n):
        if i and i % 40_000 == 0:
            segs[-1].next_file = f"binlog.{f + 1:06d}"
            f, pos = f + 1, 4
        end = pos + 500
        segs.append(SegmentInfo(SRC, f"binlog.{f:06d}", pos, end,
                                StoredObject(f"k{i}", 200, "", 500 + 100), last_commit_time=T0 + i,
                                first_commit_time=T0 + i, transactions=1, range_id="r",
                                created_at=T0 + i + 1))
        pos = end
    return segs


def test_a_day_of_one_second_segments_compacts_to_under_2000_objects():
    segs = _day()
    now = T0 + 86_400 + 3600
    groups = cp.plan_merges(segs, now=now)
    merged = sum(len(g) for g in groups)
    live = len(segs) - merged + len(groups)
    # one object per hour of commits of each binlog file (plus the newest, never merged)
    assert live < 2000, live
    assert live <= 24 + 3 + 1
    assert max(len(g) for g in groups) <= 3600


def test_event_readers_see_a_compacted_stretch_once_while_its_small_segments_remain(tmp_path):
    from backupkit.repo.coverage import in_use

    r = Repo(tmp_path, 10)
    cp.compact_source(r.catalog, SRC, older_than=0, grace=3600, now=T0 + 100)
    segs = r.catalog.segments(SRC)
    assert len(segs) == 3  # the merged one, the last small one it covers, the newest
    used = in_use(segs)
    assert [(s.start_pos, s.end_pos, s.merged) for s in used] == [
        (4, r.segments[8].end_pos, 9), (r.segments[9].start_pos, r.end, 0)]


def test_a_compacted_entry_the_readers_cache_does_not_name_yet_is_asked_for_by_the_sweep(
        tmp_path, monkeypatch):
    """When the pieces are due and the segments read do not hold the compacted entry (a roll-up
    written before it), the sweep asks for the entry itself: the pieces go after the grace; a
    record whose compacted entry is gone (pruned) loses only itself, its pieces' data stays."""
    r = Repo(tmp_path, 10)
    cp.compact_source(r.catalog, SRC, older_than=0, grace=600, now=T0 + 100)
    real = Catalog.segments
    monkeypatch.setattr(Catalog, "segments", lambda self, sid: [s for s in real(self, sid) if not s.merged])
    res = cp.compact_source(r.catalog, SRC, older_than=0, grace=600, now=T0 + 800)
    assert res.merged == []  # not merged again
    assert len(res.deleted) == 2 * 9
    monkeypatch.setattr(Catalog, "segments", real)
    assert [s.merged for s in r.catalog.segments(SRC)] == [9, 0]

    r = Repo(tmp_path / "b", 10)
    cp.compact_source(r.catalog, SRC, older_than=0, grace=600, now=T0 + 100)
    merged = r.catalog.segments(SRC)[0]
    r.store.delete([merged.key])
    res = cp.compact_source(r.catalog, SRC, older_than=0, grace=600, now=T0 + 800)
    assert res.deleted == [] and not list(r.store.list(layout.compaction_prefix(SRC)))
    assert all(read_object(r.store, s.object) for s in r.segments)


# -- levels ---------------------------------------------------------------------------------------
T1 = 1_700_000_040.0  # a whole minute: the windows below start at T1
L1, L2 = cp.Level(10.0, 2.0, grace=30.0), cp.Level(60.0, 60.0, grace=300.0)
SWEEP = [cp.Level(10.0, float("inf"), grace=30.0), cp.Level(60.0, float("inf"), grace=300.0)]


def _shapes(segs) -> list[tuple[int, int]]:
    """(level, shipped segments held) of each segment readers use."""
    return [(cp.level_of(s, [L1, L2]), max(1, s.merged)) for s in build_runs(segs)[0].segments]


def _events_of(r: Repo, segs) -> bytes:
    return b"".join(read_object(r.store, s.object)[4 + (len(r.fde) if s.start_pos != 4 else 0):]
                    for s in build_runs(segs)[0].segments)


def test_levels_merge_whole_windows_the_highest_first_and_keep_every_event_byte(tmp_path):
    r = Repo(tmp_path, 200, t0=T1)  # segment i commits at T1 + i
    res = cp.compact_source(r.catalog, SRC, levels=[L1, L2], now=T1 + 200)
    segs = r.catalog.segments(SRC)
    shapes = _shapes(segs)
    # hours (60 s) that ended 60 s ago: [0, 60) and [60, 120); minutes (10 s) that ended 2 s ago
    # after them: [120, 190); the rest small, and the newest is never merged
    assert shapes == [(2, 60), (2, 60), *[(1, 10)] * 7, *[(0, 1)] * 10], shapes
    assert [m["window"] for m in res.merged] == [60.0, 60.0, *[10.0] * 7]
    assert _events_of(r, segs) == r.events
    # a second run at the same moment has nothing to do: a window is merged once
    again = cp.compact_source(r.catalog, SRC, levels=[L1, L2], now=T1 + 200)
    assert again.merged == []


def test_level_two_merges_level_one_objects_and_each_level_has_its_grace(tmp_path):
    r = Repo(tmp_path, 130, t0=T1)
    only1 = [L1, cp.Level(60.0, float("inf"), grace=300.0)]
    cp.compact_source(r.catalog, SRC, levels=only1, now=T1 + 130)
    assert _shapes(r.catalog.segments(SRC)) == [*[(1, 10)] * 12, *[(0, 1)] * 10]
    # inside level 1's grace (30 s) the small ones stay; after it they go
    early = cp.compact_source(r.catalog, SRC, levels=SWEEP, now=T1 + 159)
    assert early.deleted == [] and early.waiting == 120
    late = cp.compact_source(r.catalog, SRC, levels=SWEEP, now=T1 + 160)
    assert late.waiting == 0 and len(late.deleted) == 2 * 120
    # level 2 merges level-1 objects: six pieces of ten segments each per window
    res = cp.compact_source(r.catalog, SRC, levels=[L1, L2], now=T1 + 180)
    # (and level 1 the window [120, 130) that ended meanwhile, its newest segment left out)
    assert [(m["pieces"], m["segments"]) for m in res.merged] == [(6, 60), (6, 60), (9, 9)]
    segs = r.catalog.segments(SRC)
    assert _shapes(segs)[:2] == [(2, 60), (2, 60)] and _events_of(r, segs) == r.events
    merged = build_runs(segs)[0].segments[1]
    assert merged.first_commit_time == T1 + 60 and merged.last_commit_time == T1 + 119
    assert merged.transactions == 60 * 3 and merged.gtid_last == "0-1-360"
    # the level-1 objects go only after level 2's grace (300 s), not level 1's (30 s)
    inside = cp.compact_source(r.catalog, SRC, levels=SWEEP, now=T1 + 180 + 299)
    assert inside.waiting == 12 and len(inside.deleted) == 2 * 9  # those 9 small ones: level 1's
    after = cp.compact_source(r.catalog, SRC, levels=SWEEP, now=T1 + 180 + 300)
    assert after.waiting == 0 and len(after.deleted) == 2 * 12
    assert _events_of(r, r.catalog.segments(SRC)) == r.events


def test_a_crash_between_a_levels_commit_and_its_deletes_is_finished_by_the_next_run(tmp_path):
    r = Repo(tmp_path, 40, t0=T1)
    grace0 = [cp.Level(10.0, 0.0, grace=0.0), cp.Level(60.0, 60.0, grace=0.0)]

    class Crash(Exception):
        pass

    def crash(_info):
        raise Crash

    with pytest.raises(Crash):
        cp.compact_source(r.catalog, SRC, levels=grace0, now=T1 + 41, after_commit=crash)
    segs = r.catalog.segments(SRC)
    assert len([s for s in segs if s.merged]) == 1 and len(segs) == 41
    assert _events_of(r, segs) == r.events
    cp.compact_source(r.catalog, SRC, levels=grace0, now=T1 + 41)
    segs = r.catalog.segments(SRC)
    assert _shapes(segs) == [(1, 10)] * 3 + [(1, 9), (0, 1)]
    assert len(segs) == len(build_runs(segs)[0].segments)  # nothing superseded is left
    assert _events_of(r, segs) == r.events


def test_bad_levels_are_refused_with_one_line(tmp_path):
    from backupkit.config import load_policy
    from backupkit.errors import ConfigError

    p = tmp_path / "p.toml"
    p.write_text('[binlog]\ncompact_levels = [{ window = "1m" }, { window = "90s" }]\n')
    with pytest.raises(ConfigError) as exc:
        load_policy(p)
    assert "whole multiple" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(ValueError, match="whole multiple"):
        cp.check_levels([cp.Level(60, 0), cp.Level(90, 0)])


def test_readers_of_the_open_file_see_a_compacted_entry_at_once_though_chunks_name_the_small_ones(
        tmp_path):
    """The shipper's chunks of the open file name the small entries: a reader following them
    would never list the compacted entry that starts inside them. The merge rewrites the file's
    roll-up with it and removes the chunks, so a plan reads the compacted object at once (inside
    the grace), not the small ones."""
    from backupkit.repo.rollups import OpenFileRollups

    r = Repo(tmp_path, 70, t0=T1)
    chunks = OpenFileRollups(r.catalog, SRC)
    for s in r.segments:
        chunks.add(s)
    r.catalog.write_head(r.segments[-1], [])
    assert chunks.written >= 4
    assert len(build_runs(r.catalog.segments(SRC))[0].segments) == 70  # the chunks' small entries
    cp.compact_source(r.catalog, SRC, levels=[L1, L2], now=T1 + 70)
    segs = r.catalog.segments(SRC)
    assert _shapes(segs) == [(1, 10)] * 6 + [(0, 1)] * 10
    assert len(segs) == 6 + 6 + 10  # of each merged ten, only the last small entry is left
    assert _events_of(r, segs) == r.events


def test_a_day_of_one_second_segments_under_the_default_levels_is_about_150_live_objects():
    segs = _day()
    now = T0 + 86_400
    live = list(segs)
    for lv in reversed(cp.DEFAULT_LEVELS):  # as compact_source runs them: the highest first
        for group in cp.plan_merges(live, now=now, older_than=lv.after, window=lv.window, whole=True):
            keys = {s.key for s in group}
            live = [s for s in live if s.key not in keys] + [cp.merged_info(
                group, StoredObject("m", 0, "", sum(s.object.raw_size for s in group)), now)]
        live.sort(key=lambda s: (s.binlog_file, s.start_pos))
    used = build_runs(live)
    shapes = [cp.level_of(s, cp.DEFAULT_LEVELS) for r in used for s in r.segments]
    # hours that ended an hour ago, then minutes, then the small segments of the last ~70 s
    # (measured: 25 hour objects, the files rotating twice; 73 minute objects, 20 small ones)
    assert shapes.count(2) <= 24 + 3 and shapes.count(1) <= 120 + 3 and shapes.count(0) <= 75, \
        (shapes.count(2), shapes.count(1), shapes.count(0))
    assert len(shapes) < 2000


def test_grace_zero_by_the_real_clock_deletes_in_the_same_run(tmp_path):
    """Without a test clock a merged entry is stamped when it is committed, after the run began:
    grace 0 still deletes what it replaced in the same run."""
    r = Repo(tmp_path, 8)
    r.catalog.roll_up_file(SRC, FILE)
    res = cp.compact_source(r.catalog, SRC, older_than=0, grace=0)
    assert res.waiting == 0 and len(res.deleted) == 2 * 7
    # the roll-up names what is listed: not the last piece, deleted in this run too
    body = r.catalog.read_rollup(layout.segment_rollup(SRC, FILE))
    assert sorted(d["end_pos"] for d in body["segments"]) == [r.segments[6].end_pos, r.end]
    res = cp.compact_source(Repo(tmp_path / "b", 30, t0=T1).catalog, SRC, levels=[
        cp.Level(10.0, 0.0, grace=0.0)])
    assert res.merged and res.waiting == 0 and res.deleted


def test_prune_never_takes_the_pieces_data_inside_the_grace_for_orphans(tmp_path):
    """The pieces' entries are gone at once, their data stays for the grace: prune's orphan
    sweep (data without an entry, older than a day) must leave it, even when the small segments
    were shipped long before; a record it cannot read keeps every orphan of its source."""
    import time

    from backupkit.repo.repository import Repository

    r = Repo(tmp_path, 10)
    cp.compact_source(r.catalog, SRC, older_than=0, grace=3600)
    repo = Repository(r.store)
    stray = put_object(r.store, layout.segment_data(SRC, "binlog.000002", 4, 90), b"x")
    assert repo.orphans(time.time() + 1) == [stray.key]  # not one piece of the compacted segment
    (rec,) = list(r.store.list(layout.compaction_prefix(SRC)))
    r.store.put(rec.key, b"{damaged")
    assert repo.orphans(time.time() + 1) == []


class _Recording:
    """Which keys a command reads (GET), over tests/support/scale.py's request counter."""

    def __init__(self, store) -> None:
        from tests.support.scale import CountingStore

        outer = self

        class Store(CountingStore):
            def open(self, key: str):
                outer.opened.append(key)
                return super().open(key)

        self.opened: list[str] = []
        self.store = Store(store)


@pytest.mark.parametrize("levels", [[], None])
def test_a_run_with_nothing_due_reads_no_segment_and_its_requests_do_not_grow(tmp_path, levels):
    """Every file younger than the compaction age: the run reads the stretches (summary, head,
    open file) and no file's roll-up or index entry; the same requests at 1,000 and 3,000
    segments (3x the files)."""
    from tests.support.scale import SOURCE, build_repository
    from tests.support.scale import T0 as S0

    # levels: windows of an hour and two, merged 2 h after they end
    lv = [cp.Level(3600, 7200), cp.Level(7200, 7200)] if levels is None else levels
    totals = []
    for n in (1_000, 3_000):
        build_repository(open_store(f"file://{tmp_path / str(n)}"), n, per_file=250)
        rec = _Recording(open_store(f"file://{tmp_path / str(n)}"))
        # the newest segment is at S0 + n - 1: every segment and window younger than its age
        res = cp.compact_source(Catalog(rec.store), SOURCE, older_than=7200, levels=lv,
                                dry_run=True, now=S0 + n)
        assert res.merged == [] and res.files_read == 0
        assert not [k for k in rec.opened if layout.is_segment_index(k) or "/rollup" in k], rec.opened
        assert res.segments_before == res.segments_after == n
        totals.append(rec.store.total())
    assert totals[0] == totals[1], totals


def test_pending_records_are_read_only_once_due_their_key_says_when(tmp_path):
    """Three compacted segments inside their grace: a run GETs none of their records (the key
    holds the due time and the number of pieces); a record under a key of an older backupkit
    (no due time) is still read, kept inside its grace and swept after it."""
    r = Repo(tmp_path, 13)
    res = cp.compact_source(r.catalog, SRC, older_than=0, grace=600, window=4, now=T0 + 100)
    assert len(res.merged) == 3 and res.waiting == 12
    keys = sorted(p.key for p in cp.pending(r.catalog, SRC))
    assert len(keys) == 3 and all(".due-1700000700.n-4.json" in k for k in keys)
    old = keys[0].split(".due-")[0] + ".json"  # the same record as an older backupkit named it
    r.store.put(old, r.store.open(keys[0]).read())
    r.store.delete([keys[0]])
    rec = _Recording(r.store)
    cat = Catalog(rec.store)
    res = cp.compact_source(cat, SRC, older_than=0, grace=600, window=4, now=T0 + 300)
    assert res.merged == [] and res.deleted == [] and res.waiting == 12
    assert [k for k in rec.opened if layout.is_compaction_record(k)] == [old]
    rec.opened.clear()
    res = cp.compact_source(cat, SRC, older_than=0, grace=600, window=4, now=T0 + 700)
    assert res.waiting == 0 and len(res.deleted) == 2 * 12
    assert sorted(k for k in rec.opened if layout.is_compaction_record(k)) == sorted([old, *keys[1:]])
    assert cp.pending(r.catalog, SRC) == []
    assert _events_whole(r, r.catalog.segments(SRC))


@pytest.mark.parametrize("where", ["committed", "recorded"])
def test_what_a_stopped_run_left_is_finished_though_nothing_is_due_by_age(tmp_path, where):
    """A file with nothing old enough is skipped unless its covered segments are not one last
    piece per record: a run stopped after the commit (no record) or after the record (early
    entries still listed) is finished by a run that merges nothing (the open file, with head and
    chunks as the shipper leaves them)."""
    from backupkit.repo.rollups import OpenFileRollups

    r = Repo(tmp_path, 12)
    chunks = OpenFileRollups(r.catalog, SRC)
    for s in r.segments:
        chunks.add(s)
    r.catalog.write_head(r.segments[-1], [])

    def crash(*_a):
        raise Crash

    hook = {"after_commit": crash} if where == "committed" else \
        {"step": lambda s: crash() if s == where else None}
    with pytest.raises(Crash):
        cp.compact_source(r.catalog, SRC, older_than=0, grace=600, now=T0 + 100, **hook)
    assert len(cp.superseded(r.catalog.segments(SRC))) == 11
    res = cp.compact_source(r.catalog, SRC, older_than=10 ** 6, grace=600, now=T0 + 200)
    assert res.merged == [] and res.files_read == 1 and res.waiting == 11
    assert len(cp.pending(r.catalog, SRC)) == 1
    assert [s.end_pos for s, _ in cp.superseded(r.catalog.segments(SRC))] == [r.segments[10].end_pos]
    # settled: the next run reads nothing of the file (its one covered segment is the last piece)
    res = cp.compact_source(r.catalog, SRC, older_than=10 ** 6, grace=600, now=T0 + 300)
    assert res.files_read == 0 and res.waiting == 11
    assert _events_whole(r, r.catalog.segments(SRC))
