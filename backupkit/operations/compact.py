"""Binlog compaction: runs of small shipped segments merged into one object, as Litestream does
with its levels, so that a day of one-second segments is a few dozen objects, not 86,400.

A compacted segment is an ordinary segment (repo/layout.py ``segment_data``/``segment_index``)
covering a wider ``[start, end)`` of one binlog file: a valid binlog segment holding every event
byte of the segments it replaces, and an index entry with their aggregated fields (first and last
event and commit times, first and last GTID, the GTID state after it, event and transaction
counts, the rotation it ends with), plus ``merged``, the number of shipped segments it holds.
Nothing finer is needed for exact restores: the planner picks segments by these fields and the
replay stops inside a segment by reading its events (restore/replay/parse.py), so ``--to-time``,
``--to-gtid`` and ``--to-position`` inside a compacted stretch are as exact as before.

One run (``compact_source``) goes one binlog file at a time. It reads the source's stretches
(Catalog.stretches: the summary, a few objects per file, and the open file) and the keys of its
compaction records (each key holds its due time and number of pieces); a file's segments only
when those say there may be something to do there (``_needs_read``: a segment old enough for a
pass, a record due, or covered segments other than one last piece per record, what a stopped run
leaves), and a record's body only when it is due (or its file shows a stopped run). So a run
with nothing due holds and requests what ``list`` does, whatever the number of segments; a run
that works holds one file's segments at a time. In each file read:
1. Settle and sweep: what a stopped run left is finished (a compacted entry committed without
   its record gets one; a record whose early entries are still listed has them deleted). Each
   record whose grace has ended loses its pieces: the last piece's entry (the open file's chunks
   first), the file's roll-up rewritten, then the pieces' data, then the record. A record whose
   compacted segment is gone (pruned) loses only itself.
2. Merge: the file's segments as readers see them (repo/coverage.py ``build_runs``: the widest
   committed segment wins) are cut into groups: contiguous, one binlog file, one range, one
   ``window`` of commit time (aligned, default one hour), at most ``max_bytes``, every segment
   older than ``older_than`` and never the source's newest (the head and the shipper's resume
   point stay where they are). Each group of two or more is streamed into one object (data
   checked event by event: positions contiguous, CRC32 where the binlog has it), the stored
   object is read back and verified, then its index entry is committed, recording its level.
3. Supersede: for each compacted segment a record (layout.compaction_record) names its pieces
   (entries and data) and when they may go (its commit plus the grace of its level); then the
   pieces' entries are deleted at once, all but the last; then each file's roll-up is rewritten
   and the open file's chunks are removed. Readers list and decode two entries, not thousands.

So:
- a reader never sees neither: the pieces' entries go only after the compacted entry is
  committed. A listing that passed the compacted entry's key before its commit and reached the
  pieces after their deletion either finds a listed entry gone when it reads it, or (entries
  read from a roll-up) a hole before the last piece, which stays until the grace ends; the
  catalog reads again then (catalog.inner_hole, tested with such a race);
- a reader seeing both uses one (the widest);
- a restore that planned with the pieces keeps reading them for ``grace`` seconds after they
  were superseded: only their entries went, and prune's orphan sweep leaves data a record names;
- crash-safe: every step is repeated or finished by the next run (tested at each step).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from backupkit.errors import IntegrityError, StorageError
from backupkit.mysql import binlog_events as be
from backupkit.repo import layout
from backupkit.repo.catalog import Catalog, SegmentInfo, encode_manifest
from backupkit.repo.codec import StoredObject, put_object, verify_object
from backupkit.repo.coverage import build_runs, covered_by
from backupkit.repo.stretches import Stretch, summarize
from backupkit.restore.replay.fetch import Fetcher

log = logging.getLogger(__name__)

#: Segments older than this are merged ([binlog] compact_after).
DEFAULT_AFTER = 3600.0
#: Superseded segments are deleted only this long after the merged one was committed
#: ([binlog] compact_grace): a restore that planned with them before keeps reading them.
DEFAULT_GRACE = 3600.0
#: A compacted segment holds the segments of at most one aligned window of commit time.
DEFAULT_WINDOW = 3600.0
#: ... and at most this many bytes of binlog.
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Level:
    """One compaction level ([binlog] compact_levels): the segments of each aligned ``window`` of
    commit time are merged into one object once the window ended ``after`` seconds ago; the
    pieces a merged segment of this level replaced are deleted ``grace`` seconds after its
    commit. A level merges the segments spanning less than its window: the small ones and those
    of the levels below (Litestream's L1, L2, ...)."""

    window: float
    after: float
    grace: float = DEFAULT_GRACE


#: [binlog] compact_levels by default: one-minute objects of what ended 10 s ago, then one-hour
#: objects of those once the hour ended compact_after (1h) ago.
DEFAULT_LEVELS = (Level(60.0, 10.0), Level(3600.0, DEFAULT_AFTER))


def check_levels(levels: Sequence[Level]) -> None:
    """ValueError naming what is wrong: windows ascending, each a whole multiple of the one
    below (a window of a level then holds whole windows of the level below)."""
    for i, lv in enumerate(levels, 1):
        if lv.window < 1 or lv.window != int(lv.window):
            raise ValueError(f"level {i}: the window must be a whole number of seconds, at least 1s")
        if lv.after < 0 or lv.grace < 0:
            raise ValueError(f"level {i}: after and grace must not be negative")
        if i > 1:
            below = levels[i - 2].window
            if lv.window <= below or lv.window % below:
                raise ValueError(f"level {i}: its window ({lv.window:g}s) must be a whole multiple "
                                 f"of level {i - 1}'s ({below:g}s), and larger")


def level_of(seg: SegmentInfo, levels: Sequence[Level]) -> int:
    """The level (1-based) a compacted segment belongs to: the one recorded in its entry; for an
    entry without one (written before levels were recorded, or by a pass without levels), the
    lowest level that merges it (_fits); 0 for a shipped segment."""
    if not seg.merged:
        return 0
    if 0 < seg.level <= len(levels):
        return seg.level
    return next((i for i, lv in enumerate(levels, 1) if _fits(seg, lv.window)), len(levels))


@dataclass
class CompactResult:
    """What one compaction run of one source did (or, dry, would do)."""

    source_id: str
    dry_run: bool = False
    merged: list[dict[str, Any]] = field(default_factory=list)  # one per compacted segment
    deleted: list[str] = field(default_factory=list)  # keys removed (entries and data)
    waiting: int = 0  # superseded segments still inside their grace period
    files_read: int = 0  # binlog files whose segments were read (the others had nothing due)
    segments_before: int = 0
    segments_after: int = 0  # segments readers use afterwards (superseded ones not counted)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"source_id": self.source_id, "dry_run": self.dry_run, "merged": self.merged,
                "merged_segments": sum(m["segments"] for m in self.merged),
                "deleted": len(self.deleted), "waiting_for_grace": self.waiting,
                "files_read": self.files_read,
                "segments_before": self.segments_before, "segments_after": self.segments_after,
                "seconds": round(self.seconds, 3)}


# -- planning (pure) ---------------------------------------------------------------------------
def _when(s: SegmentInfo) -> float:
    return s.created_at or s.last_event_time or s.first_event_time


def _last(s: SegmentInfo) -> float:
    return s.last_commit_time or s.last_event_time or _when(s)


def _span(s: SegmentInfo) -> float:
    """Seconds of commit time a segment spans."""
    first = s.first_commit_time or s.first_event_time or _last(s)
    return max(0.0, _last(s) - first)


def _fits(s: SegmentInfo, window: float) -> bool:
    """True when a level of this window merges s: s spans less than the window, give or take the
    segment that crosses into it (a merged window's first piece may begin in the window before:
    windows are by last commit), so not an object of a higher level."""
    return _span(s) < 1.5 * window


def _bucket(s: SegmentInfo, window: float) -> int:
    return int(math.floor(_last(s) / window)) if window > 0 else 0


def plan_merges(segments: Sequence[SegmentInfo], gaps: Sequence = (), *, now: float,
                older_than: float = DEFAULT_AFTER, window: float = DEFAULT_WINDOW,
                max_bytes: int = DEFAULT_MAX_BYTES, whole: bool = False,
                hold_newest: bool = True) -> list[list[SegmentInfo]]:
    """Groups of two or more contiguous segments to merge, each into one (see the module doc).

    whole (a level): only segments spanning less than window (not those of a higher level), and
    only windows that ended older_than ago, so that a window is merged once, whole, and not
    rewritten each time another of its segments becomes old enough. hold_newest: the newest of
    segments is the source's (it is left as it is); False for the segments of an earlier file."""
    runs = build_runs(segments, gaps)
    if not runs:
        return []
    newest = max((s for r in runs for s in r.segments),
                 key=lambda s: (s.binlog_file, s.start_pos, s.end_pos)) if hold_newest else None
    cutoff = now - older_than
    out: list[list[SegmentInfo]] = []
    for run in runs:
        group: list[SegmentInfo] = []
        size = 0
        for s in run.segments:
            # an empty anchor (where a shipped range begins, with its GTID state) stays as it is
            ok = s is not newest and s.end_pos > s.start_pos
            if whole:  # by commit time: a merged piece was created later than its commits
                ok = ok and _fits(s, window) and (_bucket(s, window) + 1) * window <= cutoff
            else:
                ok = ok and _when(s) <= cutoff
            if group:
                last = group[-1]
                joins = (ok and s.binlog_file == last.binlog_file and s.range_id == last.range_id
                         and s.server_id == last.server_id and s.start_pos == last.end_pos
                         and not last.next_file
                         and _bucket(s, window) == _bucket(group[0], window)
                         and size + s.object.raw_size <= max_bytes)
                if not joins:
                    if len(group) >= 2:
                        out.append(group)
                    group, size = [], 0
            if ok:
                group.append(s)
                size += s.object.raw_size
        if len(group) >= 2:
            out.append(group)
    return out


def superseded(segments: Sequence[SegmentInfo], gaps: Sequence = (),
               grace_of: Callable[[SegmentInfo], float] | None = None
               ) -> list[tuple[SegmentInfo, SegmentInfo]]:
    """(small, compacted) pairs: listed segments readers no longer use because a compacted
    segment covers them. Of several compacted segments covering one (a level-1 object, then the
    level-2 object holding it), the one whose grace ends first (grace_of; else the oldest):
    from its commit on, no new plan reads the small one."""
    used = [s for r in build_runs(segments, gaps) for s in r.segments]
    by_file: dict[str, list[SegmentInfo]] = {}
    for s in segments:
        if s.merged:
            by_file.setdefault(s.binlog_file, []).append(s)
    keys = {s.key for s in used}
    due = grace_of or (lambda _w: 0.0)
    out = []
    for s in segments:
        if s.key in keys:
            continue
        wide = [w for w in by_file.get(s.binlog_file, ()) if w is not s and covered_by(s, w)]
        if wide:
            out.append((s, min(wide, key=lambda w: (w.created_at + due(w), w.created_at))))
    return out


def merged_info(group: Sequence[SegmentInfo], obj, now: float, tier: int = 0) -> SegmentInfo:
    """The index entry of the compacted segment holding group (its object stored as obj); tier:
    the level that merged it (0: a pass without levels)."""
    first, last = group[0], group[-1]
    return SegmentInfo(
        source_id=first.source_id, binlog_file=first.binlog_file, start_pos=first.start_pos,
        end_pos=last.end_pos, object=obj,
        first_event_time=min((s.first_event_time for s in group if s.first_event_time), default=0.0),
        last_event_time=max(s.last_event_time for s in group),
        first_commit_time=next((s.first_commit_time for s in group if s.first_commit_time), 0.0),
        last_commit_time=max(s.last_commit_time for s in group),
        gtid_first=next((s.gtid_first for s in group if s.gtid_first), ""),
        gtid_last=next((s.gtid_last for s in reversed(group) if s.gtid_last), ""),
        gtid_state=next((s.gtid_state for s in reversed(group) if s.gtid_state), ""),
        gtid_start=first.gtid_start,
        events=sum(s.events for s in group), transactions=sum(s.transactions for s in group),
        next_file=last.next_file, file_closed=last.file_closed, range_id=first.range_id,
        server_id=first.server_id, created_at=now, merged=sum(max(1, s.merged) for s in group),
        level=tier)


# -- merging (streams, bounded memory) ----------------------------------------------------------
class _EventCheck:
    """Walks the event bytes of a stretch of one binlog file as they stream past: every event
    must start where the previous ended, and carry a good CRC32 when the binlog has them."""

    def __init__(self, key: str, pos: int, checksums: bool) -> None:
        self.key = key
        self.pos = pos
        self.checksums = checksums
        self.buf = bytearray()

    def feed(self, data: bytes | memoryview) -> None:
        self.buf += data
        off = 0
        n = len(self.buf)
        while n - off >= be.HEADER_LEN:
            hdr = be.parse_header(self.buf, off)
            if hdr.event_size < be.HEADER_LEN or (hdr.log_pos and hdr.log_pos - hdr.event_size != self.pos):
                raise IntegrityError(f"segment {self.key!r}: no event starts at {self.pos} "
                                     "(the merged binlog would not be contiguous)")
            if n - off < hdr.event_size:
                break
            if self.checksums and hdr.type != be.FORMAT_DESCRIPTION_EVENT and \
                    not be.event_crc_ok(bytes(self.buf[off:off + hdr.event_size])):
                raise IntegrityError(f"segment {self.key!r}: bad CRC32 in the event at {self.pos}")
            self.pos += hdr.event_size
            off += hdr.event_size
        del self.buf[:off]

    def end(self, expected: int) -> None:
        if self.buf or self.pos != expected:
            raise IntegrityError(f"segment {self.key!r} ends at {self.pos}, not at {expected}")


def _merged_chunks(store, group: Sequence[SegmentInfo], parallel: int) -> Iterator[bytes]:
    """The bytes of the compacted segment: the first segment whole (magic, the file's format
    description, its events), then the events of each following one (its magic and format
    description copy left out), fetched ahead in parallel and checked event by event."""
    fetcher = Fetcher(store, group, ahead=max(2, parallel * 2), workers=parallel)
    fetcher.start()
    fde = b""
    check: _EventCheck | None = None
    try:
        while (item := fetcher.get()) is not None:
            s = item.seg
            span = s.end_pos - s.start_pos
            prefix = item.size - span
            with item.spool as fh:
                head = fh.read(prefix)
                if prefix < 4 or head[:4] != be.MAGIC:
                    raise IntegrityError(f"segment {s.object.key!r} is not a binlog segment")
                if check is None:  # the first segment: its head is the merged one's head
                    yield head
                    if s.start_pos == 4:  # the file's own FDE is the first event
                        first = fh.read(be.HEADER_LEN)
                        size = be.parse_header(first).event_size if len(first) == be.HEADER_LEN else 0
                        fde = first + fh.read(max(0, size - be.HEADER_LEN))
                        fh.seek(prefix)
                    else:
                        fde = head[4:]
                    if len(fde) < be.HEADER_LEN or \
                            be.parse_header(fde).type != be.FORMAT_DESCRIPTION_EVENT:
                        raise IntegrityError(f"segment {s.object.key!r} has no format description")
                    check = _EventCheck(s.object.key, s.start_pos,
                                        be.fde_checksum_alg(fde) == be.CHECKSUM_CRC32)
                elif s.start_pos != check.pos or \
                        (span and be.parse_header(head, 4).type != be.FORMAT_DESCRIPTION_EVENT):
                    raise IntegrityError(f"segment {s.object.key!r} does not continue at {check.pos}")
                check.key = s.object.key
                while block := fh.read(1 << 20):
                    check.feed(block)
                    yield block
                check.end(s.end_pos)
    finally:
        fetcher.stop()


def merge_group(catalog: Catalog, group: Sequence[SegmentInfo], *, level: int = 1,
                parallel: int = 8, now: float | None = None, tier: int = 0) -> SegmentInfo:
    """Store one compacted segment for group, verify it, commit its index entry; returns it.
    An entry an earlier run committed for the same stretch is kept (its data too). level: zstd;
    tier: the compaction level recorded in the entry."""
    first, last = group[0], group[-1]
    key = layout.segment_data(first.source_id, first.binlog_file, first.start_pos, last.end_pos)
    entry = layout.segment_index(first.source_id, first.binlog_file, first.start_pos, last.end_pos)
    if catalog.store.stat(entry) is not None:  # a run that stopped before deleting anything
        return SegmentInfo.from_dict(catalog.read_manifest(entry))
    obj = put_object(catalog.store, key, _merged_chunks(catalog.store, group, parallel), level=level)
    expected = obj.raw_size - (last.end_pos - first.start_pos)
    if expected != first.object.raw_size - (first.end_pos - first.start_pos):
        raise IntegrityError(f"compacted segment {key!r} has {obj.raw_size} bytes, not the events "
                             f"[{first.start_pos}, {last.end_pos}) and one head")
    verify_object(catalog.store, obj)  # the stored copy, read back
    info = merged_info(group, obj, now or time.time(), tier)
    catalog.commit_segment(info)
    return info


# -- one run -------------------------------------------------------------------------------------
@dataclass
class Record:
    """A compaction record (layout.compaction_record): the pieces a compacted segment replaced,
    whose data stays until ``due`` (its commit plus the grace of its level)."""

    key: str
    merged: str  # the compacted segment's index entry
    binlog_file: str
    start_pos: int
    end_pos: int
    due: float
    pieces: list[tuple[str, str]]  # (index entry, data object) in binlog order

    @property
    def early(self) -> list[str]:
        """The entries deleted at once: all but the last piece's (see the module doc)."""
        return [e for e, _ in self.pieces[:-1]]

    def to_dict(self) -> dict[str, Any]:
        return {"type": "compaction", "merged": self.merged, "binlog_file": self.binlog_file,
                "start_pos": self.start_pos, "end_pos": self.end_pos, "due": self.due,
                "pieces": [{"entry": e, "data": d} for e, d in self.pieces]}

    @classmethod
    def from_dict(cls, key: str, d: dict[str, Any]) -> Record:
        return cls(key, str(d["merged"]), str(d["binlog_file"]), int(d["start_pos"]),
                   int(d["end_pos"]), float(d["due"]),
                   [(str(p["entry"]), str(p["data"])) for p in d["pieces"]])


def record_for(info: SegmentInfo, group: Sequence[SegmentInfo], grace: float) -> Record:
    """The record of the compacted segment info that replaced group (its due time and number of
    pieces in its key)."""
    due = (info.created_at or time.time()) + grace
    pieces = [(s.key, s.object.key) for s in sorted(group, key=lambda s: (s.start_pos, s.end_pos))]
    return Record(layout.compaction_record(info.source_id, info.binlog_file, info.start_pos,
                                           info.end_pos, due, len(pieces)),
                  info.key, info.binlog_file, info.start_pos, info.end_pos, due, pieces)


@dataclass(frozen=True)
class Pending:
    """A compaction record as its key names it (layout.compaction_record_of), not read."""

    key: str
    merged: str  # the compacted segment's index entry
    binlog_file: str
    due: float | None  # None: a key written before the due time was in it (read to learn it)
    pieces: int

    def read_now(self, now: float) -> bool:
        return self.due is None or self.due <= now


def pending(catalog: Catalog, source_id: str) -> list[Pending]:
    """The source's compaction records as their keys name them: one LIST of a small prefix,
    no GET."""
    out = []
    for i in catalog.store.list(layout.compaction_prefix(source_id)):
        got = layout.compaction_record_of(i.key)
        if got is not None:
            f, a, z, due, n = got
            out.append(Pending(i.key, layout.segment_index(source_id, f, a, z), f, due, n))
    return out


def read_records(catalog: Catalog, keys: Sequence[str]) -> list[Record]:
    """The records stored at keys (one GET each). A record that cannot be read is skipped with a
    warning: its pieces' data then stays (prune's orphans)."""
    keys = list(keys)
    out = []
    for key, body in zip(keys, catalog._read_many(keys, missing_ok=True) if keys else [], strict=True):
        if body is None:
            continue
        try:
            out.append(Record.from_dict(key, body))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring compaction record %s: %s", key, exc)
    return out


def records(catalog: Catalog, source_id: str) -> list[Record]:
    """Every compaction record of the source, read (one LIST, one GET each)."""
    return read_records(catalog, [p.key for p in pending(catalog, source_id)])


def _needs_read(sts: Sequence[Stretch], pend: Sequence[Pending],
                passes: Sequence[tuple[float, float, int]], now: float) -> bool:
    """False when the stretches of one binlog file and its records' keys show that a run has
    nothing to do there, so its segments are not read: no record due, nothing a stopped run
    left (each pending record leaves exactly its last piece listed and covered: any other
    covered segment is a stopped run's), and no segment old enough for any pass (the oldest
    creation time; for a level, the oldest last commit's window). Never False when unsure."""
    if any(p.read_now(now) for p in pend):
        return True
    if sum(st.hidden for st in sts) != len(pend):
        return True
    if sum(st.count for st in sts) < 2:
        return False
    for win, after, tier in passes:
        cutoff = now - after
        if tier:  # a segment without a commit time is merged once the file's commits are old
            oldest = min((st.min_last_commit for st in sts if st.min_last_commit), default=0.0)
            if not oldest or (math.floor(oldest / win) + 1) * win <= cutoff:
                return True
        else:
            oldest = min(st.created_min for st in sts)
            if not oldest or oldest <= cutoff:
                return True
    return False


def compact_source(catalog: Catalog, source_id: str, *, older_than: float = DEFAULT_AFTER,
                   grace: float = DEFAULT_GRACE, window: float = DEFAULT_WINDOW,
                   max_bytes: int = DEFAULT_MAX_BYTES, levels: Sequence[Level] | None = None,
                   dry_run: bool = False, level: int = 1, parallel: int = 8,
                   now: float | None = None, report: Callable[[str], None] | None = None,
                   after_commit: Callable[[SegmentInfo], None] | None = None,
                   step: Callable[[str], None] | None = None) -> CompactResult:
    """Settle and sweep, then merge (see the module doc), one binlog file at a time. levels:
    merge level by level, the highest first (each merges whole windows; see Level), each
    superseded piece's data deleted after the grace of the level that replaced it; without
    levels, one pass as older_than, window and grace say (every segment older_than, partial
    windows too). level: the zstd level of merged objects. after_commit: called after each
    compacted segment is committed, step with the name of each later step ("recorded",
    "entries deleted", "published"; tests inject crashes there).

    Reads the source's stretches (Catalog.stretches: the summary, a few objects per file) and
    the records' keys; a file's segments only when its stretches or records say there may be
    something to do there (_needs_read), and a record only when it is due (its key says when)
    or its file shows a stopped run. Memory holds one file's segments at a time."""
    t0 = time.monotonic()
    stamp = now  # a merged entry's created_at: its commit's moment, unless a test sets the clock
    now = time.time() if now is None else now
    say = report or (lambda _m: None)
    at = step or (lambda _s: None)
    res = CompactResult(source_id, dry_run=dry_run)
    if levels:
        check_levels(levels)
        passes = [(lv.window, lv.after, len(levels) - i) for i, lv in enumerate(reversed(levels))]

        def grace_of(wide: SegmentInfo) -> float:
            return levels[level_of(wide, levels) - 1].grace
    else:
        passes = [(window, older_than, 0)]

        def grace_of(wide: SegmentInfo) -> float:
            return grace
    gaps = catalog.gaps(source_id)
    by_file: dict[str, list[Stretch]] = {}
    listed: dict[str, list[SegmentInfo]] | None = None
    if catalog.head(source_id) is None:  # an index without a head (older): listed once, whole
        listed = {}
        for s in catalog.segments(source_id):
            listed.setdefault(s.binlog_file, []).append(s)
        stretches = [st for segs in listed.values() for st in summarize(segs)]
    else:  # the summary and the open file: a few objects per file
        stretches = catalog.stretches(source_id)
    for st in stretches:
        by_file.setdefault(st.binlog_file, []).append(st)
    # the source's newest segment is never merged (plan_merges): it lies in the last file
    newest = max(by_file, default=None)
    recs: dict[str, list[Pending]] = {}
    for p in pending(catalog, source_id):
        recs.setdefault(p.binlog_file, []).append(p)

    def one_file(f: str, segs: list[SegmentInfo], pend: list[Pending]) -> list[SegmentInfo]:
        segs = _settle(catalog, source_id, f, segs, gaps, pend, grace_of, now, dry_run, res, say)
        # the merges, level by level: a higher level's objects are whole to the levels below
        live = list(segs)
        made: list[tuple[SegmentInfo, list[SegmentInfo]]] = []
        for win, after, tier in passes:
            groups = plan_merges(live, gaps, now=now, older_than=after, window=win,
                                 max_bytes=max_bytes, whole=bool(tier), hold_newest=f == newest)
            for group in groups:
                made.append((_merge(catalog, group, win, tier, res, dry_run=dry_run, level=level,
                                    parallel=parallel, now=now, stamp=stamp, say=say,
                                    after_commit=after_commit), list(group)))
            gone = {s.key for _, g in made for s in g}  # sets made once a pass: not quadratic
            have = {s.key for s in live}
            live = [s for s in live if s.key not in gone] + [m for m, _ in made if m.key not in have]
        if made and not dry_run:
            new = [record_for(info, group, grace_of(info)) for info, group in made]
            _supersede(catalog, source_id, new, at)
            # no grace: the pieces go in this run (by the clock now: the merged entries were
            # committed after the run began)
            later = now if stamp is not None else max(now, time.time())
            live = _sweep(catalog, source_id, live, [r for r in new if r.due <= later], dry_run,
                          res, say)
            res.waiting += sum(len(r.pieces) for r in new if r.due > later)
        return live

    for f in list(by_file) + sorted(set(recs) - set(by_file)):
        sts, pend = by_file.get(f, []), recs.get(f, [])
        if not _needs_read(sts, pend, passes, now):
            res.segments_before += sum(st.listed for st in sts)
            res.segments_after += sum(st.count for st in sts)
            res.waiting += sum(p.pieces for p in pend)
            continue
        res.files_read += 1
        segs = (listed.get(f, []) if listed is not None
                else catalog.file_segments(source_id, f) if sts else [])
        res.segments_before += len(segs)
        live = one_file(f, segs, pend)
        res.segments_after += len([s for r in build_runs(live, gaps) for s in r.segments])
    res.seconds = time.monotonic() - t0
    return res


def _merge(catalog: Catalog, group: Sequence[SegmentInfo], win: float, tier: int, res: CompactResult,
           *, dry_run: bool, level: int, parallel: int, now: float, stamp: float | None,
           say: Callable[[str], None], after_commit: Callable[[SegmentInfo], None] | None
           ) -> SegmentInfo:
    """One planned group merged (dry: what the next pass would see); its row in res."""
    first, last = group[0], group[-1]
    row = {"file": first.binlog_file, "start_pos": first.start_pos, "end_pos": last.end_pos,
           "segments": sum(max(1, s.merged) for s in group), "pieces": len(group),
           "window": win, "level": tier, "raw_bytes": sum(s.object.raw_size for s in group),
           "key": layout.segment_index(first.source_id, first.binlog_file, first.start_pos,
                                       last.end_pos)}
    if dry_run:  # what the next pass would see
        raw = sum(s.object.raw_size for s in group) - \
            sum(s.object.raw_size - (s.end_pos - s.start_pos) for s in group[1:])
        info = merged_info(group, StoredObject(row["key"], 0, "", raw), now, tier)
    else:
        info = merge_group(catalog, group, level=level, parallel=parallel, now=stamp, tier=tier)
        row["stored_bytes"] = info.object.size
        say(f"compacted {len(group)} segments of {first.binlog_file} "
            f"[{first.start_pos}, {last.end_pos}) ({win:g}s window)")
        if after_commit is not None:
            after_commit(info)
    res.merged.append(row)
    return info


def _supersede(catalog: Catalog, source_id: str, new: Sequence[Record],
               at: Callable[[str], None]) -> None:
    """After the compacted entries are committed: their records, then the pieces' entries but
    the last of each (readers stop listing them; a listing that missed the compacted entry still
    shows that last one, so a hole, and reads again: catalog.inner_hole), then the files'
    roll-ups rewritten and the open file's chunks removed (they name the pieces). The pieces'
    data stays for the grace period: a restore that planned with them keeps reading them."""
    for rec in new:
        catalog.store.put(rec.key, encode_manifest(rec.to_dict()))
    at("recorded")
    catalog.store.delete([e for rec in new for e in rec.early])
    at("entries deleted")
    _publish(catalog, source_id, {rec.binlog_file for rec in new})
    at("published")


def _publish(catalog: Catalog, source_id: str, files: set[str]) -> None:
    """Make readers see each file's entries as they now are: its roll-up is rewritten from its
    listed entries (also for the file still open: readers use it for the entries they list),
    then the open file's chunks are removed (a chunk names the entries of its interval as they
    were, and a reader that follows the chunks never lists the compacted entry that starts
    inside them)."""
    rolled = {i.key for i in catalog.store.list(layout.rollup_prefix(source_id))}
    for f in sorted(files):
        chunks = [k for k in rolled if (c := layout.rollup_chunk_of(k)) is not None and c[0] == f]
        if layout.segment_rollup(source_id, f) not in rolled and not chunks:
            continue
        try:
            _roll_up_listed(catalog, source_id, f)
        except StorageError as exc:
            log.warning("roll-up of %s not rewritten after compaction: %s", f, exc.message)
            continue
        if chunks:
            catalog.forget_chunks(source_id, [f])


def _index_keys(catalog: Catalog, source_id: str, binlog_file: str) -> set[str]:
    return {i.key for i in catalog.store.list(layout.segment_file_prefix(source_id, binlog_file))
            if layout.is_segment_index(i.key)}


def _roll_up_listed(catalog: Catalog, source_id: str, binlog_file: str, tries: int = 4) -> None:
    """Write the roll-up of a file from its listed entries, then list again: the shipper may
    have finished the file meanwhile (its last entry, then its own roll-up, which this one must
    not replace with fewer entries). Written again until a listing after the write holds nothing
    it lacks; after `tries` writes (a busy open file) it is removed: readers list the file.
    A file with no entry left loses its roll-up."""
    for _ in range(tries):
        keys = _index_keys(catalog, source_id, binlog_file)
        if catalog.roll_up_file(source_id, binlog_file, keys=keys, finished=True) is None:
            break
        if _index_keys(catalog, source_id, binlog_file) <= keys:
            return
    catalog.store.delete([layout.segment_rollup(source_id, binlog_file)])


def _settle(catalog: Catalog, source_id: str, binlog_file: str, segs: list[SegmentInfo],
            gaps: Sequence, pend: Sequence[Pending], grace_of: Callable[[SegmentInfo], float],
            now: float, dry_run: bool, res: CompactResult, say: Callable[[str], None]
            ) -> list[SegmentInfo]:
    """Finish what a stopped run left in one binlog file, then sweep its records that are due;
    returns the file's segments readers see afterwards.
    - A compacted segment committed without its record (a run stopped right after the commit):
      its record is written now, with the visible segments it covers as its pieces.
    - A record whose early entries are still listed (stopped before deleting them): deleted now.
    - A compacted entry readers do not see yet (a roll-up or chunks written before it) is not
      looked for: the merge is planned again, finds the committed entry and goes on from there.
    Records are read when due; all of the file's only when its covered segments are not
    exactly one last piece per record (what a stopped run leaves)."""
    recorded = {p.merged for p in pend}
    pairs = superseded(segs, gaps)
    everything = len(pairs) != len(pend) or any(w.key not in recorded for _, w in pairs)
    recs = read_records(catalog, [p.key for p in pend if everything or p.read_now(now)])
    read = {r.key for r in recs}
    named = {e for r in recs for e, _ in r.pieces}
    new: dict[str, tuple[SegmentInfo, list[SegmentInfo]]] = {}
    for small, wide in pairs:
        if small.key not in named and wide.key not in recorded:
            new.setdefault(wide.key, (wide, []))[1].append(small)
    fresh = [record_for(w, g, grace_of(w)) for w, g in new.values()]
    visible = {s.key for s in segs}
    stale = [r for r in recs if any(e in visible for e in r.early)]
    if (fresh or stale) and not dry_run:
        _supersede(catalog, source_id, fresh + stale, lambda _s: None)
        say(f"finished {len(fresh) + len(stale)} compaction(s) a stopped run left")
        segs = catalog.file_segments(source_id, binlog_file)  # the roll-up names them now
    recs = recs + fresh
    due = [r for r in recs if r.due <= now]
    res.waiting += sum(len(r.pieces) for r in recs if r.due > now) + \
        sum(p.pieces for p in pend if p.key not in read)
    return _sweep(catalog, source_id, segs, due, dry_run, res, say)


def _sweep(catalog: Catalog, source_id: str, segs: list[SegmentInfo], due: Sequence[Record],
           dry_run: bool, res: CompactResult, say: Callable[[str], None]) -> list[SegmentInfo]:
    """Delete the pieces of the records that are due, and the records: the entries left (the
    last piece's; the open file's chunks first), each file's roll-up rewritten without them (a
    roll-up read meanwhile names the compacted entry beside them, and readers use that one),
    then the data, then the record. A record whose compacted segment is gone (pruned) loses
    only itself: its pieces' data is left to prune (orphans). Returns the segments readers see
    afterwards."""
    if not due:
        return segs
    merged = [s for s in segs if s.merged]
    # its compacted segment (or a wider one) still there: seen, else its entry asked for (a
    # roll-up written before it may not name it yet)
    ok = [r for r in due if any(w.binlog_file == r.binlog_file and w.start_pos <= r.start_pos
                                and r.end_pos <= w.end_pos for w in merged)
          or catalog.store.stat(r.merged) is not None]
    entries = sorted({e for r in ok for e, _ in r.pieces})
    data = sorted({d for r in ok for _, d in r.pieces})
    drop = {r.key for r in due}
    if not dry_run:
        files = {r.binlog_file for r in ok}  # the roll-ups name the last pieces
        catalog.forget_chunks(source_id, files)  # an open file's chunks name them too
        catalog.store.delete(entries)
        _publish(catalog, source_id, files)
        catalog.store.delete(data)
        catalog.store.delete(sorted(drop))
        say(f"deleted the {len(data)} piece(s) of {len(ok)} compacted segment(s) of {source_id} "
            "after their grace period")
    res.deleted += entries + data
    gone = set(entries)
    return [s for s in segs if s.key not in gone]


def compact_repository(catalog: Catalog, source_ids: Sequence[str] | None = None,
                       **kw: Any) -> list[CompactResult]:
    """compact_source for each source (every source of the repository when None)."""
    return [compact_source(catalog, sid, **kw) for sid in (source_ids or catalog.sources())]
