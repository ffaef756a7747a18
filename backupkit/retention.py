"""Retention: which backups and binlog segments a policy keeps, and why. Pure logic, no I/O.

The rules, applied per source:
- keep_last N: the N newest bases (snapshot or cold).
- keep_daily / keep_weekly / keep_monthly N: the newest base of each of the N most recent days,
  ISO weeks or months that have a base (days counted in the policy's time zone).
- recovery_window W: every second of [now - W, now] that is restorable before prune stays
  restorable after it. That keeps every base whose consistent point is inside the window, the
  newest base at or before the window start (the "anchor"), and any older base whose replay chain
  covers a second of the window that no kept base covers.
- A binlog segment is kept when a kept base can replay through it: it lies in the same unbroken
  run of segments as the base's consistent point and ends after that point.
- The newest segment of each source is always kept (the shipper resumes after it), and the binlog
  of a source that has no base at all is never touched.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo

from backupkit.repo.catalog import BackupManifest, GapInfo, SegmentInfo

_UNITS = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
}
_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*,?", re.IGNORECASE)


def parse_duration(text: str | int | float) -> float:
    """Seconds in a duration like "7 days", "36h", "1d 12h" or "90 min"; ValueError if malformed."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text <= 0:
            raise ValueError("a duration must be positive")
        return float(text)
    s = str(text).strip()
    if not s:
        raise ValueError("empty duration")
    total, pos = 0.0, 0
    while pos < len(s):
        m = _PART.match(s, pos)
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"cannot read {s!r} as a duration")
        total += float(m.group(1)) * _UNITS[m.group(2).lower()]
        pos = m.end()
    if total <= 0:
        raise ValueError("a duration must be positive")
    return total


# -- rules ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RetentionRules:
    """What to keep; None or 0 disables a rule."""

    keep_last: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    window: float | None = None  # seconds

    @classmethod
    def from_section(cls, section) -> RetentionRules:
        """From a policy's [retention] section."""
        window = parse_duration(section.recovery_window) if section.recovery_window else None
        return cls(section.keep_last, section.keep_daily, section.keep_weekly, section.keep_monthly,
                   window)

    def active(self) -> bool:
        """True when at least one rule limits what is kept."""
        return bool(self.keep_last or self.keep_daily or self.keep_weekly or self.keep_monthly
                    or self.window)

    def describe(self) -> str:
        parts = [f"{n}={v}" for n, v in (("keep_last", self.keep_last), ("keep_daily", self.keep_daily),
                                          ("keep_weekly", self.keep_weekly),
                                          ("keep_monthly", self.keep_monthly)) if v]
        if self.window:
            parts.append(f"recovery_window={human_duration(self.window)}")
        return ", ".join(parts) or "no rules"


def human_duration(seconds: float) -> str:
    """A duration as the largest whole unit that fits: 7 days, 36 h, 90 min, 20 s."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return f"{n} {'day' if unit == 'days' and n == 1 else unit}"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds:g} s"


# -- binlog chains ---------------------------------------------------------------------
Point = tuple[str, int]


def seg_start(s: SegmentInfo) -> Point:
    return (s.binlog_file, s.start_pos)


def seg_end(s: SegmentInfo) -> Point:
    """The end of a segment in binlog order (its last byte, not the rotation target)."""
    return (s.binlog_file, s.end_pos)


def runs_of(segments: Iterable[SegmentInfo]) -> list[list[SegmentInfo]]:
    """Unbroken runs of segments (same test as Catalog.coverage), in binlog order."""
    segs = sorted(segments, key=lambda s: (s.binlog_file, s.start_pos, s.end_pos))
    runs: list[list[SegmentInfo]] = []
    for s in segs:
        if runs and runs[-1][-1].next_point() == seg_start(s):
            runs[-1].append(s)
        else:
            runs.append([s])
    return runs


def base_point(b: BackupManifest) -> Point | None:
    return (b.point.file, b.point.pos) if b.point.file else None


def run_holds(run: list[SegmentInfo], p: Point) -> bool:
    """True when point p lies inside the unbroken run (its start up to where it continues)."""
    return seg_start(run[0]) <= p <= run[-1].next_point()


def chain_of(b: BackupManifest, runs: list[list[SegmentInfo]]) -> list[SegmentInfo]:
    """The segments that replay forward from base b: those of the run holding its point that end
    after it."""
    p = base_point(b)
    if p is None:
        return []
    for run in runs:
        if run_holds(run, p):
            return [s for s in run if seg_end(s) > p]
    return []


def reach_of(b: BackupManifest, runs: list[list[SegmentInfo]]) -> float:
    """The latest moment base b can be rolled forward to with the shipped binlog."""
    chain = chain_of(b, runs)
    last = max((s.last_commit_time for s in chain), default=0.0)
    return max(b.point.time, last)


# -- decisions -------------------------------------------------------------------------
@dataclass
class PrunePlan:
    """What prune keeps and removes, with the reasons, per backup and per segment."""

    now: float
    rules: RetentionRules
    keep_backups: dict[str, list[str]] = field(default_factory=dict)
    remove_backups: dict[str, str] = field(default_factory=dict)
    keep_segments: dict[str, str] = field(default_factory=dict)  # index key -> reason
    remove_segments: list[tuple[SegmentInfo, str]] = field(default_factory=list)
    remove_gaps: list[tuple[GapInfo, str]] = field(default_factory=list)
    backups: dict[str, BackupManifest] = field(default_factory=dict)
    window_start: float | None = None

    def removed_backup_manifests(self) -> list[BackupManifest]:
        return [self.backups[i] for i in sorted(self.remove_backups)]


def _bucket(ts: float, tz: tzinfo, kind: str) -> str:
    d = datetime.fromtimestamp(ts, tz)
    if kind == "daily":
        return d.strftime("%Y-%m-%d")
    if kind == "weekly":
        y, w, _ = d.isocalendar()
        return f"{y}-W{w:02d}"
    return d.strftime("%Y-%m")


def _gfs(bases: list[BackupManifest], rules: RetentionRules, tz: tzinfo) -> dict[str, list[str]]:
    """keep_last/daily/weekly/monthly over bases sorted newest first."""
    keep: dict[str, list[str]] = defaultdict(list)
    for i, b in enumerate(bases[: rules.keep_last or 0]):
        keep[b.id].append(f"keep_last {i + 1} of {rules.keep_last}")
    for kind, n in (("daily", rules.keep_daily), ("weekly", rules.keep_weekly),
                    ("monthly", rules.keep_monthly)):
        if not n:
            continue
        seen: list[str] = []
        for b in bases:
            bucket = _bucket(b.point.time, tz, kind)
            if bucket in seen:
                continue
            seen.append(bucket)
            if len(seen) > n:
                break
            keep[b.id].append(f"keep_{kind} {bucket}")
    return keep


def _window_keep(bases: list[BackupManifest], runs: list[list[SegmentInfo]], ws: float, now: float,
                 keep: dict[str, list[str]]) -> None:
    """Add the bases the recovery window [ws, now] needs (bases sorted newest first)."""
    anchor = None
    for b in bases:
        if ws < b.point.time:
            keep[b.id].append("inside the recovery window")
        elif anchor is None:
            anchor = b
            keep[b.id].append("newest base at or before the recovery window's start")
    # An older base may still be the only one whose replay reaches some second of the window.
    spans = {b.id: (b.point.time, reach_of(b, runs)) for b in bases}
    lo = ws
    while True:
        kept = sorted((spans[i] for i in keep if i in spans), key=lambda s: s[0])
        gap_at = _first_uncovered(kept, lo, now, spans.values())
        if gap_at is None:
            return
        best = max((b for b in bases if spans[b.id][0] <= gap_at <= spans[b.id][1] and b.id not in keep),
                   key=lambda b: (spans[b.id][1], b.point.time), default=None)
        if best is None:  # nobody covers it: it was never restorable
            lo = _next_start_after(gap_at, spans.values(), now)
            if lo is None:
                return
            continue
        keep[best.id].append("its binlog replay covers part of the recovery window")


def _first_uncovered(kept: list[tuple[float, float]], lo: float, hi: float,
                     every: Iterable[tuple[float, float]]) -> float | None:
    """The first moment in [lo, hi] covered by some span in every but by none in kept."""
    candidates = sorted({lo, *(s for s, _ in every if lo <= s <= hi),
                         *(e for _, e in kept if lo <= e < hi)})
    for t in candidates:
        for probe in (t, _after(t)):
            if probe > hi or probe < lo:
                continue
            if any(s <= probe <= e for s, e in kept):
                continue
            if any(s <= probe <= e for s, e in every):
                return probe
    return None


def _after(t: float) -> float:
    return t + 1e-6


def _next_start_after(t: float, every: Iterable[tuple[float, float]], hi: float) -> float | None:
    later = [s for s, _ in every if t < s <= hi]
    return min(later) if later else None


def plan_prune(backups: Iterable[BackupManifest], segments: dict[str, list[SegmentInfo]],
               rules: RetentionRules, now: float, tz: tzinfo | None = None,
               gaps: dict[str, list[GapInfo]] | None = None) -> PrunePlan:
    """Decide what to keep and remove. Pure: the caller lists the repository and deletes."""
    tz = tz or UTC
    plan = PrunePlan(now=now, rules=rules)
    by_source: dict[str, list[BackupManifest]] = defaultdict(list)
    for b in backups:
        plan.backups[b.id] = b
        by_source[b.source.source_id].append(b)
    if rules.window:
        plan.window_start = now - rules.window
    for sid, bases in by_source.items():
        bases.sort(key=lambda b: (b.point.time, b.id), reverse=True)
        if not rules.active():
            keep = {b.id: ["the policy sets no retention rule"] for b in bases}
        else:
            keep = _gfs(bases, rules, tz)
            if plan.window_start is not None:
                _window_keep(bases, runs_of(segments.get(sid, [])), plan.window_start, now, keep)
        for b in bases:
            if keep.get(b.id):
                plan.keep_backups[b.id] = keep[b.id]
            else:
                plan.remove_backups[b.id] = f"kept by no rule ({rules.describe()})"
    for sid, segs in segments.items():
        _plan_segments(plan, sid, segs, [plan.backups[i] for i in plan.keep_backups
                                         if plan.backups[i].source.source_id == sid],
                       bool(by_source.get(sid)), (gaps or {}).get(sid, []))
    return plan


def _plan_segments(plan: PrunePlan, sid: str, segs: list[SegmentInfo], kept: list[BackupManifest],
                   has_bases: bool, gaps: list[GapInfo]) -> None:
    runs = runs_of(segs)
    if not runs:
        return
    newest = runs[-1][-1]
    if not has_bases:
        for s in segs:
            plan.keep_segments[s.key] = "its source has no base; prune leaves its binlog alone"
        return
    needed: dict[str, str] = {}
    for b in sorted(kept, key=lambda b: b.point.time):
        for s in chain_of(b, runs):
            needed.setdefault(s.key, f"replays from kept base {b.id}")
    needed.setdefault(newest.key, "newest segment: the shipper resumes after it")
    first_kept: Point | None = None
    for run in runs:
        for s in run:
            if s.key in needed:
                plan.keep_segments[s.key] = needed[s.key]
                if first_kept is None:
                    first_kept = seg_start(s)
            else:
                plan.remove_segments.append((s, _segment_reason(s, run, kept)))
    for g in gaps:
        if first_kept is not None and (g.resume_file, g.resume_pos) <= first_kept:
            plan.remove_gaps.append((g, "before every kept segment"))


def _segment_reason(s: SegmentInfo, run: list[SegmentInfo], kept: list[BackupManifest]) -> str:
    in_run = [b for b in kept if base_point(b) is not None and run_holds(run, base_point(b))]  # type: ignore[arg-type]
    if in_run:
        oldest = min(in_run, key=lambda b: (b.point.file, b.point.pos))
        return (f"ends before kept base {oldest.id} at {oldest.point.file}:{oldest.point.pos}; "
                "no kept base replays through it")
    return "no kept base replays through it (its run of segments holds no kept base's point)"
