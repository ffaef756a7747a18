"""THE definition of continuous binlog coverage: which shipped segments form unbroken runs.

Every view of restorable history is built from ``build_runs``: ``list`` and ``binlog status``
(through ``Catalog.coverage``), the restore plan, the loss report, retention and ``verify``.
There is no second definition, so they cannot disagree.

Rules (pure, no I/O; segments may come in any order):
- Segments are sorted in binlog order (file, start), an empty anchor first, then the widest.
- A segment lying inside one already taken (same file, starting before its end and ending at or
  before it) is left out: the widest committed segment wins. That is how a compacted segment
  (``operations/compact.py``: one object for a run of small segments of one file) replaces the
  small ones it covers while they still exist (its grace period), and the same stretch committed
  twice counts once. An empty anchor segment ``[p, p)`` that starts a range is continued by
  ``[p, q)``.
- A segment continues a run when it starts exactly where the run ends (``continues``: the
  previous segment's ``next_point()``, or position 4 of the next binlog file in the same range).
- Across servers (a switchover: the new server's file identities carry a later epoch,
  repo/servers.py) positions mean nothing; a segment continues a run when it opens a later
  epoch and its GTID position at start (``gtid_start``) is exactly the run's GTID position at
  its end, server ids included (``linked``): the new server's binlog goes on right after the
  last transaction shipped from the old one. The shipper records that anchor only after
  checking the new server's binlog by GTID (strategies/binlog/failover.py).
- A recorded gap whose ``after`` point is the run's end and whose ``resume`` point is the
  segment's start breaks the run even when the positions would join.
- A confirmed-through watermark (the shipper's status object: "every commit at or before
  second W lies before point P") extends the reachable end of the run that holds P as a
  boundary to W (``confirm``): a quiet stretch after the newest commit is restorable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from backupkit.mysql.gtid import normalize_gtid
from backupkit.repo.catalog import GapInfo, SegmentInfo
from backupkit.repo.servers import epoch_of


def next_binlog_name(name: str) -> str:
    """The file the server creates after name: binlog.000041 -> binlog.000042."""
    base, dot, num = name.rpartition(".")
    if not dot or not num.isdigit():
        return ""
    return f"{base}.{int(num) + 1:0{len(num)}d}"


def continues(prev: SegmentInfo, seg: SegmentInfo) -> bool:
    """True when seg starts exactly where prev ends. Across files: a segment at the first event
    (pos 4) of the file after prev's file continues prev's range (same range_id), because the
    shipper streams every file to its end before the server moves it to the next one (after a
    ROTATE, a STOP at shutdown, or a crash)."""
    if prev.next_point() == (seg.binlog_file, seg.start_pos):
        return True
    if linked(prev, seg):
        return True
    return (seg.start_pos == 4 and not prev.next_file and seg.range_id == prev.range_id
            and seg.binlog_file == next_binlog_name(prev.binlog_file))


def linked(prev: SegmentInfo, seg: SegmentInfo) -> bool:
    """True when seg is the first segment of a later server (epoch) and starts at exactly the
    GTID position prev ends at: the switchover lost nothing and doubled nothing."""
    if epoch_of(seg.binlog_file) <= epoch_of(prev.binlog_file):
        return False
    if not seg.gtid_start or not prev.gtid_state:
        return False
    return normalize_gtid(seg.gtid_start) == normalize_gtid(prev.gtid_state)


@dataclass
class Run:
    """An unbroken sequence of segments of one source, in binlog order."""

    segments: list[SegmentInfo]
    _suffix: list[float] | None = field(default=None, repr=False)  # newest commit from i on
    _commit_suffix: list[float] | None = field(default=None, repr=False)  # the same, unconfirmed
    #: boundary index b (before segment b; len = the end) -> confirmed-through time there
    confirmed: dict[int, float] = field(default_factory=dict)

    @property
    def first(self) -> SegmentInfo:
        return self.segments[0]

    @property
    def last(self) -> SegmentInfo:
        return self.segments[-1]

    @property
    def source_id(self) -> str:
        return self.segments[0].source_id

    @property
    def range_id(self) -> str:
        return self.segments[0].range_id

    @property
    def count(self) -> int:
        return len(self.segments)

    @property
    def stored_bytes(self) -> int:
        return sum(s.object.size for s in self.segments)

    @property
    def start(self) -> tuple[str, int]:
        s = self.segments[0]
        return (s.binlog_file, s.start_pos)

    @property
    def end(self) -> tuple[str, int]:
        return self.segments[-1].next_point()

    @property
    def first_commit_time(self) -> float:
        """Oldest commit time in the run (0 when it holds no transaction)."""
        return next((s.first_commit_time or s.first_event_time for s in self.segments
                     if s.transactions or s.first_commit_time), 0.0)

    def commit_time(self, i: int) -> float:
        """Newest commit time in segment i (0 when it holds no transaction)."""
        s = self.segments[i]
        if s.last_commit_time:
            return s.last_commit_time
        return s.last_event_time if s.transactions else 0.0

    def commit_end(self, from_index: int = 0) -> float:
        """Newest commit time from segment from_index to the end of the run (0 if none),
        without the confirmed-through time: a whole second."""
        if self._commit_suffix is None or len(self._commit_suffix) != len(self.segments) + 1:
            n = len(self.segments)
            suffix = [0.0] * (n + 1)
            for i in range(n - 1, -1, -1):
                suffix[i] = max(suffix[i + 1], self.commit_time(i))
            self._commit_suffix = suffix
        return self._commit_suffix[min(max(from_index, 0), len(self.segments))]

    def end_time(self, from_index: int = 0) -> float:
        """Newest commit time from segment from_index to the end of the run (0 if none), or a
        later confirmed-through time at a boundary from there on."""
        if self._suffix is None or len(self._suffix) != len(self.segments) + 1:
            n = len(self.segments)
            suffix = [0.0] * (n + 1)
            suffix[n] = self.confirmed.get(n, 0.0)
            for i in range(n - 1, -1, -1):
                suffix[i] = max(suffix[i + 1], self.commit_time(i), self.confirmed.get(i, 0.0))
            self._suffix = suffix
        return self._suffix[min(max(from_index, 0), len(self.segments))]


def covered_by(s: SegmentInfo, wide: SegmentInfo) -> bool:
    """True when every event of s lies in wide (same file; an empty s strictly inside it)."""
    return (s.binlog_file == wide.binlog_file and wide.start_pos <= s.start_pos < wide.end_pos
            and s.end_pos <= wide.end_pos)


def ends_at(s: SegmentInfo, point: tuple[str, int]) -> bool:
    return s.next_point() == point or (s.binlog_file, s.end_pos) == point


def gap_between(gaps: Sequence[GapInfo], prev: SegmentInfo, nxt: SegmentInfo) -> GapInfo | None:
    """The recorded gap that separates prev from nxt, if any."""
    for g in gaps:
        if ends_at(prev, (g.after_file, g.after_pos)) and \
                (g.resume_file, g.resume_pos) == (nxt.binlog_file, nxt.start_pos) and \
                (g.resume_file, g.resume_pos) != (g.after_file, g.after_pos):
            return g
    return None


def in_use(segments: Iterable[SegmentInfo]) -> list[SegmentInfo]:
    """The segments readers use, in binlog order: every segment lying inside a wider committed
    one (a compacted segment's small ones during their grace period) left out. Whoever reads
    events from segments (``binlog events``, ``undo``) reads these, never one event twice."""
    segs = sorted(segments, key=lambda s: (s.binlog_file, s.start_pos, s.end_pos != s.start_pos,
                                           -s.end_pos))
    out: list[SegmentInfo] = []
    for s in segs:
        if out and covered_by(s, out[-1]):
            continue
        out.append(s)
    return out


def build_runs(segments: Iterable[SegmentInfo], gaps: Sequence[GapInfo] = ()) -> list[Run]:
    """Split a source's segments (any order) into unbroken runs, in binlog order."""
    runs: list[Run] = []
    for s in in_use(segments):  # a segment inside a wider one (compacted) is left out
        if runs:
            prev = runs[-1].segments[-1]
            if continues(prev, s) and gap_between(gaps, prev, s) is None:
                runs[-1].segments.append(s)
                continue
        runs.append(Run([s]))
    return runs


def confirm(runs: Sequence[Run], point: tuple[str, int], confirmed_at: float) -> bool:
    """Attach a confirmed-through watermark (every commit at or before confirmed_at lies before
    point) to the run where point is a segment boundary; False when no run has it (the
    watermark is then unusable: the segments it speaks of are not all there)."""
    if not confirmed_at or not point[0]:
        return False
    for run in reversed(runs):  # the watermark is near the newest end
        for i in range(len(run.segments) - 1, -1, -1):
            s = run.segments[i]
            if s.next_point() == point or (s.binlog_file, s.end_pos) == point:
                b = i + 1
            elif i == 0 and (s.binlog_file, s.start_pos) == point:
                b = 0
            else:
                continue
            run.confirmed[b] = max(run.confirmed.get(b, 0.0), confirmed_at)
            run._suffix = None
            return True
    return False
