"""Pure restore planning: which base and which binlog segments reach a target.

No I/O: every function takes manifests already read from the catalog, so a plan can be printed
(``--dry-run``), unit-tested, and computed many times a second by retention checks. Given
stretches (a few per binlog file: a month of one-second segments), the planner reads the segments
of the stretch it stops in through the ``expand`` it is given (restore/pitr.py reads the catalog).

- ``plan_restore(backups, segments_by_source, gaps, target) -> RestorePlan``: of the bases
  (snapshot, cold or physical) whose consistent point is at or before the target, the one with
  the smallest estimated restore time (the newest on a tie), plus the unbroken run of
  segments from the base's binlog coordinates to the target. Raises PlanError (one line, with
  the nearest reachable times on either side) when the target is earlier than the oldest base,
  later than the newest shipped commit, or behind a gap.
- ``restorable_intervals(backups, segments, gaps) -> list[(start, end)]``: the closed UTC epoch
  intervals of --to-time targets that can be reached, merged and sorted. ``start`` is a base's
  consistent point; ``end`` is the newest shipped commit time reachable from it (whole seconds),
  or the base's own time when no binlog follows it. T is restorable iff start <= T <= end for
  one interval. ``is_restorable(intervals, T)`` answers that with a binary search.
- ``Planner(backups, segments_by_source, gaps)``: the same with the segment runs indexed once,
  for callers that plan many targets (``planner.plan(target)``, ``planner.intervals()``).
- ``confirmed`` (source id -> the shipper's status: ``point`` and ``confirmed_at``): the
  confirmed-through watermark extends the reachable end of the run holding that point
  (``coverage.confirm``), so a quiet stretch after the newest commit is restorable, exactly.

Rules:
- Runs of segments come from ``repo.coverage.build_runs``, the one definition of coverage
  (contiguous when one starts exactly where the previous ends, ``coverage.continues``:
  ``SegmentInfo.next_point()``, or position 4 of the next file in the same range); a break in
  positions or a recorded gap ends a run.
- A base is usable for time T when its consistent point time <= T; replay applies every
  transaction whose commit second is <= T. Binlog commit times are whole seconds, so the newest
  reachable moment of a run is the commit time of its newest transaction.
- After a switchover (repo/servers.py) segments of later servers carry an epoch in their file
  identity. A base's point is in its own server's file names: ``base_point`` finds it in the
  epoch(s) of that server (by server id) where a segment holds it, so a base from before the
  switchover replays the old server's segments, then (linked by GTID) the new server's.
- GTID targets compare by domain (MariaDB) or source uuid (MySQL) and sequence number; a base
  whose GTID position already holds a --stop-before-gtid transaction cannot be used.

Over 500 lines on purpose: one job (the planner), whose target kinds (time, latest, position,
GTID) all plan against the same index of runs; split apart, each would need that index's insides.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from backupkit.errors import IntegrityError, PlanError
from backupkit.mysql.gtid import Gtid, GtidSet, try_parse_gtid
from backupkit.repo.catalog import BackupManifest, GapInfo, SegmentInfo
from backupkit.repo.chain import broken_chains
from backupkit.repo.coverage import Run, build_runs, confirm, ends_at, gap_between
from backupkit.repo.servers import epochs, file_id
from backupkit.repo.stretches import Stretch, summarize
from backupkit.restore.stoppoint import RestoreTarget
from backupkit.util.units import format_time, human_bytes, human_seconds

#: Throughput assumed when no restore has been measured yet (bytes per second of raw data).
DEFAULT_RATES = {
    "snapshot": 40 * 1024 * 1024,  # LOAD DATA of the snapshot's rows (FACTS.md: 256 MB in ~6.7 s)
    "cold": 150 * 1024 * 1024,  # tar extraction of a datadir
    "physical": 80 * 1024 * 1024,  # mbstream -x + mariadb-backup --prepare (FACTS.md: 270 MB in ~3 s)
    "replay": 4 * 1024 * 1024,  # mariadb-binlog | mariadb: 53.6 MB of row events in ~12.5 s
    "fixed": 3.0,  # server start, connections, bookkeeping
}


#: What a plan replays: segments, or stretches of contiguous segments of one file
#: (repo/stretches.py) that ``Expand`` turns into their segments when they are read.
Item = SegmentInfo | Stretch
#: A stretch's segments, read from the catalog (restore/pitr.py FileSegments); None when the
#: index no longer holds its events.
Expand = Callable[[Stretch], "list[SegmentInfo] | None"]


def _commit(s: Item) -> float:
    """Newest commit time of a segment as Run.commit_time takes it (0 when none)."""
    return s.last_commit_time or (s.last_event_time if s.transactions else 0.0)


def _state(s: SegmentInfo) -> GtidSet | None:
    try:
        return GtidSet.parse(s.gtid_state) if s.gtid_state else None
    except Exception:  # an odd state string only costs GTID lookups, never the plan
        return None


@dataclass(frozen=True)
class Location:
    """Where a binlog point falls: run index, segment index, and whether it lies inside it."""

    run: int
    index: int  # the first segment that holds events after the point (== len if at the end)


#: Bases a plan compares (newest first) when several reach the target.
MAX_CANDIDATES = 8
#: Times are printed (and typed back) to the microsecond; manifests hold more digits.
TIME_SLACK = 0.5e-6


# -- the plan ---------------------------------------------------------------------------------
@dataclass
class RestorePlan:
    """A base, the segments to replay after it, and where to stop. Printable and executable.

    ``segments`` holds segments, or stretches of one file's contiguous segments (a plan over a
    month of one-second segments holds a few per binlog file); ``iter_segments()`` gives the
    segments themselves, reading one file's at a time (``expand``)."""

    target: RestoreTarget
    source_id: str
    base: BackupManifest
    segments: list[Item]
    start: tuple[str, int]  # replay from here: the base's binlog coordinates
    stop_time: float | None = None  # newest commit second to apply (time targets)
    expected_end_time: float | None = None  # newest commit time the replay can reach
    base_bytes: int = 0
    segment_bytes: int = 0
    base_raw_bytes: int = 0
    segment_raw_bytes: int = 0
    estimated_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    #: --latest --accept-gap: the break after the newest reachable point and what it costs
    gap: dict[str, Any] | None = None
    #: reads a stretch's segments (None: the plan holds segments, or stretches of one segment)
    expand: Expand | None = field(default=None, repr=False, compare=False)

    @property
    def segment_count(self) -> int:
        """Segments the replay reads (as planned)."""
        return sum(s.count if isinstance(s, Stretch) else 1 for s in self.segments)

    def iter_segments(self) -> Iterator[SegmentInfo]:
        """The segments to replay, in order: a stretch's read when it is reached (one binlog file
        held at a time). IntegrityError naming the file when the index no longer holds them."""
        for item in self.segments:
            if not isinstance(item, Stretch):
                yield item
            elif item.count == 1:
                yield item.head
            else:
                yield from expand_stretch(self.expand, item)

    @property
    def fetch_bytes(self) -> int:
        return self.base_bytes + self.segment_bytes

    @property
    def needs_replay(self) -> bool:
        return bool(self.segments)

    def to_dict(self) -> dict[str, Any]:
        b = self.base
        return {
            "target": self.target.to_dict(),
            "source_id": self.source_id,
            "base": {"id": b.id, "kind": b.kind, "scope": b.scope.to_dict(),
                     "point": {"file": b.point.file, "pos": b.point.pos,
                               "gtid": b.point.gtid, "time": b.point.time,
                               "time_text": format_time(b.point.time)},
                     "stored_bytes": self.base_bytes, "raw_bytes": self.base_raw_bytes},
            "segment_count": self.segment_count,
            # one row per stretch of contiguous segments of a file (a key when it is one segment)
            "segments": [{"file": s.binlog_file, "start_pos": s.start_pos, "end_pos": s.end_pos,
                          "segments": s.count, "key": s.head.object.key if s.count == 1 else None,
                          "bytes": s.stored, "raw_bytes": s.object.raw_size,
                          "first_commit_time": s.first_commit_time,
                          "last_commit_time": s.max_last_commit,
                          "gtid_first": s.gtid_first, "gtid_last": s.gtid_last,
                          "merged": s.merged}
                         for s in self.rows()],
            "start": {"file": self.start[0], "pos": self.start[1]},
            "stop_time": self.stop_time,
            "fetch_bytes": self.fetch_bytes,
            "segment_bytes": self.segment_bytes,
            "estimated_seconds": round(self.estimated_seconds, 1),
            "notes": list(self.notes),
            "gap": self.gap,
        }

    def rows(self) -> list[Stretch]:
        """The replayed segments folded per stretch of contiguous segments of one file (what
        --dry-run prints: a few rows per binlog file however many segments)."""
        return summarize(self.segments)

    def lines(self) -> list[str]:
        """The plan for people (--dry-run)."""
        b = self.base
        out = [f"target:    {self.target.describe()}",
               f"base:      {b.kind} {b.id} at {format_time(b.point.time)} "
               f"({b.point.file}:{b.point.pos}, GTID {b.point.gtid or '-'}), "
               f"{human_bytes(self.base_bytes)} stored, scope {b.scope.describe()}"]
        if self.segments:
            last = self.segments[-1]
            out.append(f"replay:    {self.segment_count} segment(s) from {self.start[0]}:{self.start[1]} "
                       f"to {last.binlog_file}:{last.end_pos} ({human_bytes(self.segment_bytes)} stored, "
                       f"{human_bytes(self.segment_raw_bytes)} of binlog)")
            for s in self.rows():
                out.append(f"           {s.binlog_file} [{s.start_pos}, {s.end_pos}) {s.count} segment(s) "
                           f"{human_bytes(s.stored)} commits {format_time(s.first_commit_time or None)}"
                           f" .. {format_time(s.max_last_commit or None)}")
        else:
            out.append("replay:    none (the base is the target)")
        out.append(f"fetch:     {human_bytes(self.fetch_bytes)}")
        out.append(f"estimate:  {human_seconds(self.estimated_seconds)}")
        out.extend(f"note:      {n}" for n in self.notes)
        return out


# -- the planner --------------------------------------------------------------------------------
def _by_source(segments: Mapping[str, Sequence[SegmentInfo]] | Iterable[SegmentInfo] | None
               ) -> dict[str, list[SegmentInfo]]:
    if segments is None:
        return {}
    if isinstance(segments, Mapping):
        return {k: list(v) for k, v in segments.items()}
    out: dict[str, list[SegmentInfo]] = {}
    for s in segments:
        out.setdefault(s.source_id, []).append(s)
    return out


def _gaps_by_source(gaps: Mapping[str, Sequence[GapInfo]] | Iterable[GapInfo] | None
                    ) -> dict[str, list[GapInfo]]:
    if gaps is None:
        return {}
    if isinstance(gaps, Mapping):
        return {k: list(v) for k, v in gaps.items()}
    out: dict[str, list[GapInfo]] = {}
    for g in gaps:
        out.setdefault(g.source_id, []).append(g)
    return out


class Planner:
    """Plans restores for one repository snapshot of manifests; index once, plan many times."""

    def __init__(self, backups: Sequence[BackupManifest],
                 segments_by_source: Mapping[str, Sequence[SegmentInfo]] | Iterable[SegmentInfo] | None,
                 gaps: Mapping[str, Sequence[GapInfo]] | Iterable[GapInfo] | None = None,
                 source_id: str | None = None, rates: Mapping[str, float] | None = None,
                 databases: Sequence[str] | None = None,
                 confirmed: Mapping[str, Any] | None = None,
                 links: Sequence[BackupManifest] | None = None,
                 expand: Expand | None = None) -> None:
        """databases: a restore limited to these (a partial base holding them whole may start
        it); None, a whole-server restore: only full bases (repo/scope.py). confirmed: the
        shippers' watermarks by source (see the module docstring). links: every manifest of the
        repository, where the parents of physical incrementals are looked up (default: backups);
        an incremental whose chain is broken is no base (``self.broken`` says why).

        segments_by_source may hold stretches (repo/stretches.py) made with every base's point
        and the watermark's as cuts: a plan is then the same as over the segments, reading
        through expand the segments of the one stretch where the replay stops (a GTID target:
        of each stretch in order up to the one holding the transaction)."""
        self.expand = expand
        segs = _by_source(segments_by_source)
        gap_map = _gaps_by_source(gaps)
        self.rates = {**DEFAULT_RATES, **(rates or {})}
        self.notes: list[str] = []
        sources = sorted({b.source.source_id for b in backups} | {k for k, v in segs.items() if v})
        if source_id is None:
            if len(sources) > 1:
                newest = max(backups, key=lambda b: (b.point.time, b.id), default=None)
                source_id = newest.source.source_id if newest else sources[-1]
                self.notes.append(f"the repository holds {len(sources)} sources; planning for "
                                  f"{source_id}")
            elif sources:
                source_id = sources[0]
            else:
                source_id = ""
        self.source_id = source_id
        own = [b for b in backups if b.source.source_id == source_id]
        usable = sorted((b for b in own if b.scope.covers(databases)),
                        key=lambda b: (b.point.time, b.id))
        #: physical incrementals whose chain back to the full backup is broken: id -> why
        self.broken: dict[str, IntegrityError] = broken_chains(
            usable, {b.id: b for b in (links if links is not None else backups)})
        self.bases = [b for b in usable if b.id not in self.broken]
        self._with_broken = usable
        #: bases left out because they do not cover what is restored (named in errors)
        self.partial = [b for b in own if not b.scope.covers(databases)]
        self.runs: list[Run] = build_runs(segs.get(source_id, []), gap_map.get(source_id, []))
        #: the shipper's confirmed-through watermark (0 when none or not on a shipped boundary)
        self.confirmed_at = 0.0
        st = (confirmed or {}).get(source_id)
        if st is not None and confirm(self.runs, tuple(st.point), float(st.confirmed_at)):
            self.confirmed_at = float(st.confirmed_at)
        # GTID position after each segment of each run (None when unknown)
        self.states = [[_state(s) for s in r.segments] for r in self.runs]
        self.gaps = gap_map.get(source_id, [])
        # file -> sorted [(start_pos, end_pos, run, index)] for locating points
        self._by_file: dict[str, list[tuple[int, int, int, int]]] = {}
        for ri, run in enumerate(self.runs):
            for si, s in enumerate(run.segments):
                self._by_file.setdefault(s.binlog_file, []).append((s.start_pos, s.end_pos, ri, si))
        for lst in self._by_file.values():
            lst.sort()
        self._loc_cache: dict[str, Location | None] = {}
        self._point_cache: dict[str, tuple[str, int]] = {}
        self._after_rotation: dict[tuple[str, int], Location] | None = None
        #: epochs by server id, newest first (0: entries that do not record a server)
        self._epochs: list[tuple[int, int]] = [(e.epoch, e.server_id) for e in
                                               reversed(epochs(segs.get(source_id, [])))]
        self._intervals: list[tuple[float, float]] | None = None

    # -- locating ---------------------------------------------------------------------------
    def locate(self, file: str, pos: int) -> Location | None:
        """The run and first segment holding events after (file, pos), or None if uncovered."""
        lst = self._by_file.get(file)
        if lst:
            i = bisect.bisect_right(lst, (pos, math.inf, math.inf, math.inf)) - 1
            if i >= 0:
                start, end, ri, si = lst[i]
                if start <= pos < end:
                    return Location(ri, si)
                if pos == end:
                    return Location(ri, si + 1)
        return self._rotated().get((file, pos))  # the end of a file that rotated: next_point differs

    def _rotated(self) -> dict[tuple[str, int], Location]:
        """(next file, 4) -> the location after each segment that ends with a rotation (built once:
        base_point asks for a point in every epoch of the base's server)."""
        if self._after_rotation is None:
            out: dict[tuple[str, int], Location] = {}
            for ri, run in enumerate(self.runs):
                for si, s in enumerate(run.segments):
                    if s.next_file:
                        out.setdefault(s.next_point(), Location(ri, si + 1))
            self._after_rotation = out
        return self._after_rotation

    def base_point(self, base: BackupManifest) -> tuple[str, int]:
        """The base's binlog point as a repository file identity: in the epoch of the server it
        was taken on where a shipped segment holds that point (its own name without one)."""
        if base.id not in self._point_cache:
            p = base.point
            found = (p.file, p.pos)
            if p.file and self._epochs and any(e for e, _ in self._epochs):
                sid = base.source.server_id
                for e, server in self._epochs:
                    if server and sid and server != sid:
                        continue
                    fid = file_id(e, p.file)
                    if self.locate(fid, p.pos) is not None:
                        found = (fid, p.pos)
                        break
            self._point_cache[base.id] = found
        return self._point_cache[base.id]

    def base_location(self, base: BackupManifest) -> Location | None:
        if base.id not in self._loc_cache:
            p = self.base_point(base)
            self._loc_cache[base.id] = self.locate(*p) if p[0] else None
        return self._loc_cache[base.id]

    def reach_end(self, base: BackupManifest) -> float:
        """The newest moment reachable from a base: its newest following commit, or its own time."""
        loc = self.base_location(base)
        if loc is None:
            return base.point.time
        return max(base.point.time, self.runs[loc.run].end_time(loc.index))

    # -- intervals ----------------------------------------------------------------------------
    def intervals(self) -> list[tuple[float, float]]:
        """Merged closed intervals of reachable --to-time targets (UTC epoch seconds)."""
        if self._intervals is None:
            spans = sorted((b.point.time, self.reach_end(b)) for b in self.bases)
            merged: list[list[float]] = []
            for a, z in spans:
                if merged and a <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], z)
                else:
                    merged.append([a, z])
            self._intervals = [(a, z) for a, z in merged]
        return self._intervals

    def newest_commit(self) -> float:
        return max((r.end_time() for r in self.runs), default=0.0)

    def _nearest(self, t: float) -> str:
        ivs = self.intervals()
        before = max((z for a, z in ivs if z < t), default=None)
        after = min((a for a, z in ivs if a > t), default=None)
        return (f"nearest reachable: {format_time(before) if before is not None else 'none'} before, "
                f"{format_time(after) if after is not None else 'none'} after")

    def _gap_near(self, t: float) -> str:
        """Which break in the shipped binlog keeps t out of reach."""
        for ri, run in enumerate(self.runs):
            if run.end_time() >= t:
                if ri == 0:
                    s0 = run.segments[0]
                    s0 = s0.head if isinstance(s0, Stretch) else s0
                    first = s0.first_commit_time or s0.first_event_time
                    return (f" (the shipped binlog begins at {run.start[0]}:{run.start[1]}, "
                            f"{format_time(first or None)}, with no base before it)")
                a = self.runs[ri - 1]
                why = gap_between(self.gaps, a.segments[-1], run.segments[0])
                if why is not None:  # a recorded gap: say what it is (a purge, an in-place restore)
                    return (f" (a gap is recorded at {why.after_file}:{why.after_pos} -> "
                            f"{why.resume_file}:{why.resume_pos}: {why.reason})")
                return f" ({a.end[0]}:{a.end[1]} to {run.start[0]}:{run.start[1]} was never shipped)"
        return ""

    # -- planning -------------------------------------------------------------------------------
    def plan(self, target: RestoreTarget) -> RestorePlan:
        """The plan reaching target, or PlanError saying why none can.

        A physical incremental whose chain is broken is skipped for the next base that reaches
        the target, and the plan says so; when no other base does, the broken link is the error
        (IntegrityError, exit 5, naming it)."""
        try:
            plan = self._plan(target)
        except PlanError as exc:
            if self.broken:
                raise self._broken_error(target, exc) from None
            raise
        for b in self._with_broken:
            if b.id in self.broken and b.point.time >= plan.base.point.time and \
                    (target.kind != "time" or b.point.time <= float(target.time or 0.0)):
                plan.notes.append(f"skipped physical backup {b.id}: {self.broken[b.id]}")
        return plan

    def _broken_error(self, target: RestoreTarget, exc: PlanError) -> Exception:
        """No usable base reaches target: if a broken chain would have, its missing link is the
        error; else the plan error with the broken chains counted in (it names the times)."""
        usable, self.bases, self._intervals = self.bases, self._with_broken, None
        try:
            plan = self._plan(target)
        except PlanError as other:
            return other
        finally:
            self.bases, self._intervals = usable, None
        return self.broken[plan.base.id]

    def _plan(self, target: RestoreTarget) -> RestorePlan:
        if not self.bases:
            if self.partial:
                names = ", ".join(f"{b.id} ({b.scope.describe()})" for b in self.partial[-3:])
                raise PlanError("no full base backup in the repository"
                                + (f" for source {self.source_id}" if self.source_id else "")
                                + f"; partial snapshots cannot start a whole-server restore: {names}",
                                "take a full one with 'backupkit snapshot' (no --databases/--tables)")
            raise PlanError("no base backup (snapshot, cold or physical) in the repository"
                            + (f" for source {self.source_id}" if self.source_id else ""),
                            "take one with 'backupkit snapshot' or 'backupkit cold'")
        if target.kind == "time":
            return self._plan_time(target)
        if target.kind in ("gtid", "before_gtid"):
            return self._plan_gtid(target)
        if target.kind == "position":
            return self._plan_position(target)
        return self._plan_latest(target)

    def _make(self, target: RestoreTarget, base: BackupManifest, segs: list[SegmentInfo],
              stop_time: float | None = None, expected_end: float | None = None) -> RestorePlan:
        base_bytes = sum(o.size for o in base.objects)
        base_raw = sum(o.raw_size for o in base.objects)
        if base.kind == "physical":  # a chain restores every link: the full backup and its incrementals
            base_raw = int(base.details.get("chain_raw_bytes", base_raw))
        seg_bytes = sum(s.object.size for s in segs)
        seg_raw = sum(s.object.raw_size for s in segs)
        rate = self.rates.get(base.kind, self.rates["snapshot"])
        est = self.rates["fixed"] + base_raw / max(rate, 1) + seg_raw / max(self.rates["replay"], 1)
        return RestorePlan(target=target, source_id=self.source_id, base=base, segments=segs,
                           start=self.base_point(base), stop_time=stop_time,
                           expected_end_time=expected_end, base_bytes=base_bytes,
                           segment_bytes=seg_bytes, base_raw_bytes=base_raw,
                           segment_raw_bytes=seg_raw, estimated_seconds=est,
                           notes=list(self.notes), expand=self.expand)

    def _upto(self, item: Item, hit: Callable[[SegmentInfo], bool]) -> list[Item]:
        """item's segments up to and including the first that hit (a stretch read through expand
        and folded again), where the replay stops: what a plan over the segments holds."""
        if not isinstance(item, Stretch) or item.count == 1:
            return [item]
        segs = expand_stretch(self.expand, item)
        k = next((i for i, s in enumerate(segs) if hit(s)), None)
        if k is None:
            raise IntegrityError(f"the index of binlog file {item.binlog_file} changed while planning "
                                 f"(no segment of [{item.start_pos}, {item.end_pos}) holds the stop)",
                                 "plan again (a compaction or prune ran meanwhile)")
        return list(summarize(segs[:k + 1]))

    def _choose(self, plans: list[RestorePlan]) -> RestorePlan:
        """Among the newest reaching base of each kind (cold, snapshot, physical), the plan with
        the smallest estimated restore time. Within one kind the newest base always wins: it needs
        the least replay, and rates measured on small restores (fixed costs dominate) must not
        talk the planner into an older base of the same kind. Plans come newest base first, so a
        tie keeps the newest. The plan says why (--dry-run prints it)."""
        newest_of_kind: dict[str, RestorePlan] = {}
        for p in plans:
            newest_of_kind.setdefault(p.base.kind, p)
        best = min(newest_of_kind.values(), key=lambda p: p.estimated_seconds)
        others = [p for p in plans if p is not best]
        if others:
            alt = ", ".join(f"{p.base.kind} {p.base.id} ~{p.estimated_seconds:.1f} s" for p in others)
            best.notes.append(f"{best.base.kind} base chosen: the smallest estimated restore time "
                              f"(~{best.estimated_seconds:.1f} s); other bases reaching the target: {alt}")
        return best

    def _fail(self, target: RestoreTarget, why: str, hint: str | None = None) -> PlanError:
        return PlanError(f"cannot restore to {target.describe()}: {why}", hint)

    def _plan_time(self, target: RestoreTarget) -> RestorePlan:
        t = float(target.time or 0.0)
        # A base's time is compared at the microsecond it is printed with (its manifest holds
        # more digits, so typing the printed time back must not land "before" it). Commit times
        # are whole seconds, and replay applies every commit of T's second: the whole second of
        # the newest commit is reachable, like the commit second itself.
        t_base = t + TIME_SLACK
        t_second = float(math.floor(t))
        plans: list[RestorePlan] = []
        for base in reversed(self.bases):
            if base.point.time > t_base or len(plans) >= MAX_CANDIDATES:
                continue
            loc = self.base_location(base)
            if loc is None:
                if abs(base.point.time - t) <= TIME_SLACK:
                    plans.append(self._make(target, base, [], t, base.point.time))
                continue
            run = self.runs[loc.run]
            newest = run.commit_end(loc.index)
            # the newest commit's whole second counts only when that second began after the
            # base: a commit in the base's own second may lie before the base's position, and
            # then nothing proves what happened between the base and T
            if base.point.time < t and run.end_time(loc.index) < t and \
                    not (newest >= t_second and newest > base.point.time):
                continue
            stop = loc.index
            while stop < len(run.segments) and not run.commit_time(stop) > t:
                stop += 1
            # segments loc.index..stop inclusive; stop may be len (everything to the end)
            segs = run.segments[loc.index:min(stop + 1, len(run.segments))]
            if stop < len(run.segments):  # a stretch: its segments up to the first after T
                segs = segs[:-1] + self._upto(segs[-1], lambda s: _commit(s) > t)
            plans.append(self._make(target, base, segs, t, run.end_time(loc.index)))
        if plans:
            return self._choose(plans)
        oldest = self.bases[0].point.time
        newest = max(self.newest_commit(), self.bases[-1].point.time)
        if t_base < oldest:
            why = f"it is earlier than the oldest base ({format_time(oldest)})"
        elif t > newest and self.confirmed_at and self.confirmed_at >= newest:
            why = (f"it is later than the confirmed-through watermark ({format_time(newest)}): the "
                   "shipper confirmed the binlog complete up to then and not since (it is down or "
                   "behind)")
        elif t > newest:
            why = f"it is later than the newest shipped commit ({format_time(newest)})"
        else:
            why = "it is behind a gap in the shipped binlog" + self._gap_near(t)
        raise self._fail(target, f"{why}; {self._nearest(t)}")

    def _plan_latest(self, target: RestoreTarget) -> RestorePlan:
        end = max(self.reach_end(b) for b in self.bases)
        plans: list[RestorePlan] = []
        for base in reversed(self.bases):  # every base reaching the newest moment, newest first
            if self.reach_end(base) < end or len(plans) >= MAX_CANDIDATES:
                continue
            loc = self.base_location(base)
            segs = self.runs[loc.run].segments[loc.index:] if loc else []
            plans.append(self._make(target, base, segs, None, end))
        plan = self._choose(plans)
        gap = self.gap_after(plan.base)
        if gap is not None and not target.accept_gap:
            err = self._fail(target, gap["text"],
                             "--accept-gap restores the newest reachable point anyway; to close the "
                             "gap take a snapshot (docs/operations.md, 'After a gap')")
            err.details = {"gap": gap}
            raise err
        if gap is not None:
            plan.gap = gap
            plan.notes.append(gap["text"])
        return plan

    def gap_after(self, base: BackupManifest) -> dict[str, Any] | None:
        """The break after the newest point reachable from base, and what it costs: a recorded
        gap at or after the end of its run, or later shipped binlog it cannot reach. None when
        the repository holds nothing past that point."""
        loc = self.base_location(base)
        if loc is not None:
            run = self.runs[loc.run]
            end_point, later = run.end, self.runs[loc.run + 1:]
        else:
            end_point = self.base_point(base)
            later = [r for r in self.runs if r.start > end_point]
        reach = self.reach_end(base)
        recorded = [g for g in self.gaps if (g.after_file, g.after_pos) >= end_point
                    or (loc is not None and ends_at(self.runs[loc.run].last, (g.after_file, g.after_pos)))]
        if not recorded and not later:
            return None
        g = recorded[0] if recorded else None
        resume = later[0].start if later else ((g.resume_file, g.resume_pos) if g and g.resume_file
                                                else None)
        shipped_after = sum(s.transactions for r in later for s in r.segments)
        newest = max((r.end_time() for r in later), default=0.0)
        where = f"{end_point[0]}:{end_point[1]}"
        text = (f"a gap follows the newest reachable point, {format_time(reach)} ({where}): "
                + (f"{where} to {resume[0]}:{resume[1]}" if resume else "the binlog")
                + " was never shipped" + (f" ({g.reason})" if g else "")
                + ": everything committed after it is missing from this restore")
        if shipped_after:
            text += (f", including {shipped_after} shipped transaction(s) up to {format_time(newest)} "
                     "that no base before the gap can reach")
        return {"after": where, "after_time": reach,
                "resume": f"{resume[0]}:{resume[1]}" if resume else None,
                "reason": g.reason if g else "the shipped positions do not join",
                "recorded": g is not None, "shipped_transactions_after": shipped_after,
                "newest_shipped_commit": newest or None, "text": text}

    def _plan_position(self, target: RestoreTarget) -> RestorePlan:
        want = (target.file or "", int(target.pos or 0))
        tloc = self._locate_target_pos(*want)
        plans: list[RestorePlan] = []
        for base in reversed(self.bases):
            p = self.base_point(base)
            if not base.point.file or p > want or len(plans) >= MAX_CANDIDATES:
                continue
            if p == want:
                plans.append(self._make(target, base, [], None, base.point.time))
                continue
            loc = self.base_location(base)
            if loc is None or tloc is None or loc.run != tloc.run or loc.index > tloc.index:
                continue
            run = self.runs[loc.run]
            segs = run.segments[loc.index:tloc.index + 1]
            segs = segs[:-1] + self._upto(segs[-1], lambda s: s.start_pos <= want[1] <= s.end_pos)
            plans.append(self._make(target, base, segs, None, None))
        if plans:
            return self._choose(plans)
        if tloc is None:
            cover = ", ".join(f"{r.start[0]}:{r.start[1]}..{r.end[0]}:{r.end[1]}" for r in self.runs)
            raise self._fail(target, "that position is not in the shipped binlog"
                             + (f" (shipped: {cover})" if cover else " (nothing shipped)"))
        raise self._fail(target, "no base lies at or before it with an unbroken binlog run to it; "
                         f"oldest base at {self.bases[0].point.file}:{self.bases[0].point.pos}")

    def _locate_target_pos(self, file: str, pos: int) -> Location | None:
        for start, end, ri, si in self._by_file.get(file, []):
            if start <= pos <= end:
                return Location(ri, si)
        return None

    def _gtid_segment(self, g: Gtid) -> tuple[Location, list[Item], SegmentInfo] | None:
        """The segment holding transaction g: the first whose GTID state holds it. With its
        location (the item holding it), the items that replace that item in a plan (a
        stretch's segments up to it, folded) and the segment itself. A stretch is read as its
        segments (expand) to be searched: a GTID target reads the files in order up to the one
        holding g, one at a time."""
        for ri, run in enumerate(self.runs):
            k = 0  # the segment's index in the run
            for si, item in enumerate(run.segments):
                segs = [item.head] if isinstance(item, Stretch) and item.count == 1 else \
                    expand_stretch(self.expand, item) if isinstance(item, Stretch) else [item]
                for mi, s in enumerate(segs):
                    first, last = try_parse_gtid(s.gtid_first), try_parse_gtid(s.gtid_last)
                    hit = bool(first and last and first.key == last.key == g.key
                               and first.seq <= g.seq <= last.seq)
                    if not hit:
                        st = self.states[ri][si] if segs[mi] is item else _state(s)
                        if st is None or not st.contains(g):
                            k += 1
                            continue
                        if k == 0 and first is not None and first.key == g.key and first.seq > g.seq:
                            break  # g is older than this run
                    upto = [item] if segs[mi] is item else list(summarize(segs[:mi + 1]))
                    return Location(ri, si), upto, s
                else:
                    continue
                break  # the run's first segment is after g: the next run
        return None

    def _plan_gtid(self, target: RestoreTarget) -> RestorePlan:
        g = target.gtid
        assert g is not None
        before = target.kind == "before_gtid"
        found = self._gtid_segment(g)
        tloc = found[0] if found else None
        plans: list[RestorePlan] = []
        for base in reversed(self.bases):
            if len(plans) >= MAX_CANDIDATES:
                break
            pos = GtidSet.parse(base.point.gtid)
            has = pos.contains(g)
            if has and (before or pos.last_seq(g.key) != g.seq):
                continue  # the base already holds the transaction (or later ones of its domain)
            if has:  # --to-gtid exactly at the base
                plans.append(self._make(target, base, [], None, base.point.time))
                continue
            loc = self.base_location(base)
            if loc is None or tloc is None or loc.run != tloc.run or loc.index > tloc.index:
                continue
            assert found is not None
            segs = self.runs[loc.run].segments[loc.index:tloc.index] + found[1]
            plans.append(self._make(target, base, segs, None, None))
        if plans:
            return self._choose(plans)
        if found is None:
            shipped = [(r.segments[0].gtid_first, r.segments[-1].gtid_last) for r in self.runs]
            text = ", ".join(f"{a or '?'}..{b or '?'}" for a, b in shipped)
            raise self._fail(target, "that GTID is not in the shipped binlog"
                             + (f" (shipped: {text})" if text else " (nothing shipped)"),
                             "find it with 'backupkit binlog events'")
        raise self._fail(target, "no base before it has an unbroken binlog run to it; "
                         f"{self._nearest(found[2].first_commit_time)}")


def plan_restore(backups: Sequence[BackupManifest],
                 segments_by_source: Mapping[str, Sequence[SegmentInfo]] | Iterable[SegmentInfo] | None,
                 gaps: Mapping[str, Sequence[GapInfo]] | Iterable[GapInfo] | None,
                 target: RestoreTarget, source_id: str | None = None,
                 rates: Mapping[str, float] | None = None,
                 confirmed: Mapping[str, Any] | None = None) -> RestorePlan:
    """The base at or before target with an unbroken segment run to it and the smallest estimated
    restore time (the newest on a tie), and that run (PlanError if none)."""
    return Planner(backups, segments_by_source, gaps, source_id, rates, confirmed=confirmed).plan(target)


def restorable_intervals(backups: Sequence[BackupManifest],
                         segments: Mapping[str, Sequence[SegmentInfo]] | Iterable[SegmentInfo] | None,
                         gaps: Mapping[str, Sequence[GapInfo]] | Iterable[GapInfo] | None = None,
                         source_id: str | None = None,
                         confirmed: Mapping[str, Any] | None = None) -> list[tuple[float, float]]:
    """Closed intervals [start, end] of restorable --to-time moments, sorted and merged."""
    return Planner(backups, segments, gaps, source_id, confirmed=confirmed).intervals()


def is_restorable(intervals: Sequence[tuple[float, float]], t: float) -> bool:
    """True when t lies in one of the sorted, merged intervals."""
    i = bisect.bisect_right(intervals, (t, math.inf)) - 1
    return i >= 0 and intervals[i][0] <= t <= intervals[i][1]


def expand_stretch(expand: Expand | None, st: Stretch) -> list[SegmentInfo]:
    """The segments of a stretch of several (IntegrityError naming its file when the index no
    longer holds its events: a restore refuses rather than skip them)."""
    if expand is None:
        raise ValueError("a plan over stretches needs expand to read their segments")
    segs = expand(st)
    if not segs:
        raise IntegrityError(f"the index of binlog file {st.binlog_file} no longer holds the segments "
                             f"of [{st.start_pos}, {st.end_pos}) (pruned or damaged since the plan)",
                             "plan again; 'backupkit verify' checks the index")
    return segs
