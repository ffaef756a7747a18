"""Stretches: runs of contiguous segments of one binlog file folded into one summary, so that the
commands that only summarize coverage (list, binlog status, report, the status page) hold a few
objects per binlog file rather than one per segment (issue 16: 2.6M one-second segments a month).

A Stretch stands where its segments stood for the coverage code (repo/coverage.py): it has
their first start, last end and next file, the range, server and GTID positions of its ends,
and for ``Run`` the aggregates a run reads of its members (the newest commit, the first commit,
the stored bytes). ``summarize`` makes them from segments (or stretches) of any files, exactly as
``build_runs`` sees them: it keeps what ``in_use`` keeps and folds a member into the one before
only when the coverage rules join them anyway (same file, the member starts where the one before
ends, same range, source and server: no gap, GTID link or rotation is decided inside a stretch).
So runs over stretches have the same boundaries, times, positions and GTID states as runs over
the segments (tests/unit/repo/test_stretches.py compares them).

What a stretch cannot answer (an event inside it, a point strictly inside it, per-segment
creation times) needs its segments: ``inside`` tells when a point lies strictly within one, and
the callers read the real segments then.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from backupkit.errors import BackupkitError

#: Segments here are SegmentInfo (repo/catalog.py), which builds on this module: any object with
#: its fields will do.
SegmentInfo = Any
_EPOCH = re.compile(r"^~\d{4,}~(.+)$")  # a file identity after a switchover (repo/servers.py)


def _server_name(fid: str) -> str:
    """The server's own file name of a file identity (repo/servers.py server_file)."""
    m = _EPOCH.match(fid)
    return m.group(1) if m else fid


@dataclass(frozen=True, slots=True)
class Bytes:
    """What a stretch says of its objects: their stored size (``s.object.size``) and their size
    before compression (``s.object.raw_size``; the stored size when the summary entry predates it)."""

    size: int
    raw_size: int = 0


@dataclass(slots=True)
class Stretch:
    """Contiguous segments of one binlog file (same source, range and server), folded."""

    head: SegmentInfo  # its first segment (the one in use)
    tail: SegmentInfo  # its last segment
    count: int = 1  # segments in use it holds
    stored: int = 0  # their stored bytes
    events_sum: int = 0
    transactions_sum: int = 0
    #: newest commit of a member as Run.commit_time takes it (0 when none)
    newest_commit: float = 0.0
    #: Run.first_commit_time of its members (the first member with a commit), and whether any
    first_commit: float = 0.0
    has_first: bool = False
    #: The figures below are over every listed segment in it, covered ones included (what a
    #: command reading the listed segments sees), the ones above over its members in use.
    #: newest last_commit_time of a segment as stored (status's "last shipped commit")
    max_last_commit: float = 0.0
    #: the member with the newest (last_commit_time, end_pos) among those with one: its
    #: last_commit_time, end_pos and gtid_last (the loss report names it)
    best: tuple[float, int, str] = (0.0, 0, "")
    created_min: float = 0.0
    created_max: float = 0.0
    merged_sum: int = 0  # shipped segments its compacted members hold
    #: listed segments left out because a wider one in it covers them (a compacted segment's
    #: small ones during their grace period), and their stored bytes
    hidden: int = 0
    hidden_stored: int = 0
    #: the oldest last_commit_time of a member that has one (0: none has)
    min_last_commit: float = 0.0
    #: its members' bytes before compression (a restore's estimate); -1: not known (a summary
    #: entry written before it was recorded)
    raw: int = -1

    # -- the segment interface the coverage code reads -------------------------------------
    @property
    def source_id(self) -> str:
        return self.head.source_id

    @property
    def binlog_file(self) -> str:
        return self.head.binlog_file

    @property
    def start_pos(self) -> int:
        return self.head.start_pos

    @property
    def end_pos(self) -> int:
        return self.tail.end_pos

    @property
    def next_file(self) -> str:
        return self.tail.next_file

    @property
    def file_closed(self) -> bool:
        return self.tail.file_closed

    @property
    def range_id(self) -> str:
        return self.head.range_id

    @property
    def server_id(self) -> int:
        return self.head.server_id

    @property
    def gtid_start(self) -> str:
        return self.head.gtid_start

    @property
    def gtid_first(self) -> str:
        return self.head.gtid_first

    @property
    def gtid_last(self) -> str:
        return self.tail.gtid_last

    @property
    def gtid_state(self) -> str:
        return self.tail.gtid_state

    @property
    def transactions(self) -> int:
        return self.transactions_sum

    @property
    def events(self) -> int:
        return self.events_sum

    @property
    def last_commit_time(self) -> float:
        # Run.commit_time: this, else last_event_time when it holds transactions
        return self.newest_commit

    @property
    def last_event_time(self) -> float:
        return 0.0  # newest_commit already says all Run.commit_time needs

    @property
    def first_commit_time(self) -> float:
        # Run.first_commit_time: the first member with transactions or a first commit time
        return self.first_commit if self.has_first else 0.0

    @property
    def first_event_time(self) -> float:
        return self.first_commit

    @property
    def created_at(self) -> float:
        return self.head.created_at

    @property
    def merged(self) -> int:
        return self.merged_sum

    @property
    def object(self) -> Bytes:
        return Bytes(self.stored, self.raw if self.raw >= 0 else self.stored)

    def next_point(self) -> tuple[str, int]:
        return self.tail.next_point()

    # -- folding -------------------------------------------------------------------------
    def joins(self, nxt: Stretch) -> bool:
        """True when nxt goes on right where this ends, in the same file, range and server: the
        coverage rules join them whatever else is recorded."""
        return (not self.tail.next_file and nxt.head.binlog_file == self.tail.binlog_file
                and nxt.head.start_pos == self.tail.end_pos and nxt.head.range_id == self.head.range_id
                and nxt.head.server_id == self.head.server_id
                and nxt.head.source_id == self.head.source_id)

    def extend(self, nxt: Stretch) -> None:
        self.tail = nxt.tail
        self.count += nxt.count
        self.stored += nxt.stored
        self.events_sum += nxt.events_sum
        self.transactions_sum += nxt.transactions_sum
        self.newest_commit = max(self.newest_commit, nxt.newest_commit)
        if not self.has_first and nxt.has_first:
            self.first_commit, self.has_first = nxt.first_commit, True
        self.merged_sum += nxt.merged_sum
        self.raw = self.raw + nxt.raw if self.raw >= 0 and nxt.raw >= 0 else -1
        self._listed(nxt)

    def hide(self, covered: Stretch) -> None:
        """covered lies inside a member: left out of the run, still a listed segment (what the
        segments' counts, newest commit, creation times and the report's newest commit see)."""
        self.hidden += covered.count
        self.hidden_stored += covered.stored
        self._listed(covered)

    def _listed(self, other: Stretch) -> None:
        """The figures over every listed segment, other's included."""
        self.hidden += other.hidden
        self.hidden_stored += other.hidden_stored
        self.max_last_commit = max(self.max_last_commit, other.max_last_commit)
        self.min_last_commit = min((t for t in (self.min_last_commit, other.min_last_commit) if t),
                                   default=0.0)
        self.best = max(self.best, other.best, key=lambda b: (b[0], b[1]))
        self.created_min = min(self.created_min, other.created_min)
        self.created_max = max(self.created_max, other.created_max)

    @property
    def listed(self) -> int:
        """Segments listed in it, covered ones included (what a count of index entries says)."""
        return self.count + self.hidden

    @property
    def listed_bytes(self) -> int:
        return self.stored + self.hidden_stored

    def to_dict(self) -> dict[str, Any]:
        return {"head": self.head.to_dict(), "tail": self.tail.to_dict(), "count": self.count,
                "stored": self.stored, "events": self.events_sum,
                "transactions": self.transactions_sum, "newest_commit": self.newest_commit,
                "first_commit": self.first_commit, "has_first": self.has_first,
                "max_last_commit": self.max_last_commit, "best": list(self.best),
                "created_min": self.created_min, "created_max": self.created_max,
                "merged": self.merged_sum, "hidden": self.hidden,
                "hidden_stored": self.hidden_stored, "min_last_commit": self.min_last_commit,
                "raw": self.raw}

    @classmethod
    def from_dict(cls, d: dict[str, Any], segment: Callable[[dict[str, Any]], Any]) -> Stretch:
        """segment: SegmentInfo.from_dict."""
        best = d.get("best") or (0.0, 0, "")
        return cls(segment(d["head"]), segment(d["tail"]),
                   int(d["count"]), int(d["stored"]), int(d["events"]), int(d["transactions"]),
                   float(d["newest_commit"]), float(d["first_commit"]), bool(d["has_first"]),
                   float(d["max_last_commit"]), (float(best[0]), int(best[1]), str(best[2])),
                   float(d["created_min"]), float(d["created_max"]), int(d.get("merged", 0)),
                   int(d.get("hidden", 0)), int(d.get("hidden_stored", 0)),
                   float(d.get("min_last_commit", 0.0)), int(d.get("raw", -1)))


def of_segment(s: SegmentInfo) -> Stretch:
    """The stretch of one segment."""
    commit = s.last_commit_time or (s.last_event_time if s.transactions else 0.0)
    has_first = bool(s.transactions or s.first_commit_time)
    return Stretch(s, s, 1, s.object.size, s.events, s.transactions, commit,
                   (s.first_commit_time or s.first_event_time) if has_first else 0.0, has_first,
                   s.last_commit_time, (s.last_commit_time, s.end_pos, s.gtid_last) if s.last_commit_time
                   else (0.0, 0, ""), s.created_at, s.created_at, s.merged,
                   min_last_commit=s.last_commit_time, raw=s.object.raw_size)


def _order(s: SegmentInfo | Stretch) -> tuple:
    # repo/coverage.py in_use: binlog order, an empty anchor first, then the widest
    return (s.binlog_file, s.start_pos, s.end_pos != s.start_pos, -s.end_pos)


def _covered(s: SegmentInfo | Stretch, wide: SegmentInfo | Stretch) -> bool:
    # repo/coverage.py covered_by
    return (s.binlog_file == wide.binlog_file and wide.start_pos <= s.start_pos < wide.end_pos
            and s.end_pos <= wide.end_pos)


def _copy(st: Stretch) -> Stretch:
    return Stretch(**{f: getattr(st, f) for f in Stretch.__slots__})


def summarize(items: Iterable[SegmentInfo | Stretch], cuts: Iterable[tuple[str, int]] = ()
              ) -> list[Stretch]:
    """Segments and stretches (any files, any order) as stretches in binlog order: what in_use
    leaves out is left out (counted in the stretch that covers it), members that the coverage
    rules join are folded together.

    cuts: binlog points (file as the server names it, position) that must stay where a segment
    puts them: a stretch never goes on across one, and a segment holding one is a stretch of its
    own, so that locating the point (a base's, a watermark's) finds what the segments give."""
    at: dict[str, set[int]] = {}
    for f, p in cuts:
        at.setdefault(_server_name(f), set()).add(p)
    out: list[Stretch] = []
    last: SegmentInfo | Stretch | None = None  # the last item kept (in_use compares with it)
    for s in sorted(items, key=_order):
        if last is not None and _covered(s, last):
            out[-1].hide(s if isinstance(s, Stretch) else of_segment(s))
            continue
        last = s
        st = _copy(s) if isinstance(s, Stretch) else of_segment(s)  # never change the caller's
        if out and out[-1].joins(st) and not _cut_between(at, out[-1], st):
            out[-1].extend(st)
        else:
            out.append(st)
    return out


def _cut_between(at: dict[str, set[int]], prev: Stretch, nxt: Stretch) -> bool:
    """True when a cut lies where nxt begins or inside prev's last or nxt's first member."""
    points = at.get(_server_name(nxt.binlog_file))
    if not points:
        return False
    return any(p == nxt.start_pos or prev.tail.start_pos < p < prev.tail.end_pos
               or nxt.head.start_pos < p < nxt.head.end_pos for p in points)


def inside(stretches: Iterable[Stretch], cuts: Iterable[tuple[str, int]]) -> set[str]:
    """The binlog files with a cut strictly inside a stretch of several segments (not at its start
    or end): only their segments tell where it falls."""
    at: dict[str, set[int]] = {}
    for f, p in cuts:
        at.setdefault(_server_name(f), set()).add(p)
    return {st.binlog_file for st in stretches if st.count > 1
            and any(st.start_pos < p < st.end_pos for p in at.get(_server_name(st.binlog_file), ()))}


def _in_use(segments: Iterable[SegmentInfo]) -> list[SegmentInfo]:
    # repo/coverage.py in_use (which this module cannot import: it builds on repo/catalog.py)
    out: list[SegmentInfo] = []
    for s in sorted(segments, key=_order):
        if not (out and _covered(s, out[-1])):
            out.append(s)
    return out


def members(segments: Iterable[SegmentInfo], st: Stretch) -> list[SegmentInfo] | None:
    """The segments that hold exactly the events of st, from the listed segments of its binlog
    file (covered ones included): its members (the segments in use from its head to its tail)
    while the index is as it was when st was made; else, after a compaction or a prune since, the
    widest listed segment at each point that ends within st (the same events, other objects).
    None when no listed segments hold them all (the caller refuses: never a silent hole)."""
    segs = [s for s in segments if s.binlog_file == st.binlog_file]
    a, z = st.start_pos, st.end_pos
    used = _in_use(segs)
    ends = [(s.start_pos, s.end_pos) for s in used]
    head, tail = (st.head.start_pos, st.head.end_pos), (st.tail.start_pos, st.tail.end_pos)
    if head in ends and tail in ends:
        i, j = ends.index(head), len(ends) - 1 - ends[::-1].index(tail)
        got = used[i:j + 1]
        if len(got) == st.count and all(x.end_pos == y.start_pos for x, y in zip(got, got[1:], strict=False)):
            return got
    widest: dict[int, SegmentInfo] = {}
    for s in segs:
        if a <= s.start_pos and s.end_pos <= z and s.end_pos > s.start_pos and \
                (s.start_pos not in widest or s.end_pos > widest[s.start_pos].end_pos):
            widest[s.start_pos] = s
    out: list[SegmentInfo] = []
    pos = a
    while pos < z:
        s = widest.get(pos)
        if s is None:
            return None
        out.append(s)
        pos = s.end_pos
    if not out:  # an empty stretch: its anchor
        out = [s for s in segs if s.start_pos == s.end_pos == a][:1]
    return out or None


class FileMembers:
    """Stretches' segments read one binlog file at a time: ``read(source_id, binlog_file)`` gives
    the listed segments of a file (Catalog.file_segments), the last file read is kept (callers go
    through a file's stretches in order), ``members`` picks each stretch's. A reader's error is
    raised naming the file."""

    def __init__(self, read: Callable[[str, str], list[SegmentInfo]]) -> None:
        self.read = read
        self._file: tuple[str, str] | None = None
        self._segs: list[SegmentInfo] = []

    def __call__(self, st: Stretch) -> list[SegmentInfo] | None:
        at = (st.source_id, st.binlog_file)
        if at != self._file:
            self._file, self._segs = None, []
            try:
                self._segs = self.read(*at)
            except BackupkitError as exc:
                exc.message = f"reading the index of binlog file {st.binlog_file}: {exc.message}"
                exc.args = (exc.message,)
                raise
            self._file = at
        return members(self._segs, st)
