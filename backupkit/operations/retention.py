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

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo

from backupkit.repo.catalog import BackupManifest, GapInfo, SegmentInfo
from backupkit.repo.chain import needed_by
from backupkit.repo.coverage import build_runs, covered_by, ends_at
from backupkit.restore.plan import Planner
from backupkit.util.units import human_duration, parse_duration


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


def base_time(b: BackupManifest) -> float:
    return b.point.time or b.finished_at


def _bucket(ts: float, tz: tzinfo, kind: str) -> str:
    d = datetime.fromtimestamp(ts, tz)
    if kind == "daily":
        return d.strftime("%Y-%m-%d")
    if kind == "weekly":
        y, w, _ = d.isocalendar()
        return f"{y}-W{w:02d}"
    return d.strftime("%Y-%m")


def gfs_keep(bases: list[BackupManifest], rules: RetentionRules, tz: tzinfo) -> dict[str, list[str]]:
    """keep_last/daily/weekly/monthly over bases sorted newest first: id -> reasons."""
    keep: dict[str, list[str]] = defaultdict(list)
    for i, b in enumerate(bases[: rules.keep_last or 0]):
        keep[b.id].append(f"keep_last ({i + 1} of {rules.keep_last})")
    for kind, n in (("daily", rules.keep_daily), ("weekly", rules.keep_weekly),
                    ("monthly", rules.keep_monthly)):
        if not n:
            continue
        seen: list[str] = []
        for b in bases:
            bucket = _bucket(base_time(b), tz, kind)
            if bucket in seen:
                continue
            seen.append(bucket)
            if len(seen) > n:
                break
            keep[b.id].append(f"keep_{kind} (newest of {bucket})")
    return keep


def keep_chains(bases: list[BackupManifest], keep: dict[str, list[str]]) -> None:
    """A kept physical incremental keeps every link it is built on: a chain is pruned as a unit."""
    needs = needed_by(bases)
    for b in bases:
        if keep.get(b.id):
            for pid in sorted(needs[b.id] - {b.id}):
                keep.setdefault(pid, []).append(f"a link of the chain of kept incremental {b.id}")


def _clip(ivs: Iterable[tuple[float, float]], lo: float, hi: float) -> list[tuple[float, float]]:
    return [(max(a, lo), min(z, hi)) for a, z in ivs if z >= lo and a <= hi]


def uncovered(before: list[tuple[float, float]], after: list[tuple[float, float]], lo: float,
              hi: float) -> float | None:
    """The first moment of [lo, hi] restorable with `before` but not with `after` (merged lists)."""
    for a, z in _clip(before, lo, hi):
        holder = next(((x, y) for x, y in after if x <= a <= y), None)
        if holder is None:
            return a
        if holder[1] < z:
            return holder[1]  # just after this moment: the first loss (closed intervals)
    return None


def _window_keep(bases: list[BackupManifest], planner: Planner, ws: float, now: float,
                 keep: dict[str, list[str]]) -> None:
    """Add the bases the recovery window [ws, now] needs (bases sorted newest first)."""
    anchor = None
    for b in bases:
        if ws < base_time(b):
            keep[b.id].append("inside the recovery window")
        elif anchor is None:
            anchor = b
            keep[b.id].append("newest base at or before the recovery window's start")
    # The planner falls back to an older base when a newer one cannot reach a moment; such an
    # older base may be the only way to some second of the window. Add the one reaching furthest.
    before = planner.intervals()
    spans = {b.id: (b.point.time, planner.reach_end(b)) for b in bases}
    while True:
        after = _merge(spans[i] for i in keep if i in spans)
        lost = uncovered(before, after, ws, now)
        if lost is None:
            return
        cands = [b for b in bases if b.id not in keep and spans[b.id][0] <= lost <= spans[b.id][1]
                 and (spans[b.id][1] > lost or not any(x <= lost <= y for x, y in after))]
        if not cands:
            return  # cannot happen: every restorable moment has a base
        best = max(cands, key=lambda b: (spans[b.id][1], base_time(b)))
        keep[best.id].append("its binlog replay reaches into the recovery window")


def _merge(spans: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for a, z in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], z)
        else:
            merged.append([a, z])
    return [(a, z) for a, z in merged]


def plan_prune(backups: Iterable[BackupManifest], segments: dict[str, list[SegmentInfo]],
               rules: RetentionRules, now: float, tz: tzinfo | None = None,
               gaps: dict[str, list[GapInfo]] | None = None) -> PrunePlan:
    """Decide what to keep and remove. Pure: the caller lists the repository and deletes.

    Raises RetentionCheckError if the result would lose a restorable moment of the window
    (a bug guard: the restore planner itself checks the kept set before anything is deleted).
    """
    tz = tz or UTC
    gaps = gaps or {}
    plan = PrunePlan(now=now, rules=rules)
    by_source: dict[str, list[BackupManifest]] = defaultdict(list)
    for b in backups:
        plan.backups[b.id] = b
        by_source[b.source.source_id].append(b)
    if rules.window:
        plan.window_start = now - rules.window
    for sid in sorted(set(by_source) | set(segments)):
        bases = sorted(by_source.get(sid, []), key=lambda b: (base_time(b), b.id), reverse=True)
        segs = list(segments.get(sid, []))
        planner = Planner(bases, {sid: segs}, {sid: gaps.get(sid, [])}, source_id=sid)
        if not rules.active():
            keep: dict[str, list[str]] = {b.id: ["the policy sets no retention rule"] for b in bases}
        else:
            keep = gfs_keep(bases, rules, tz)
            if plan.window_start is not None:
                _window_keep(bases, planner, plan.window_start, now, keep)
            keep_chains(bases, keep)
        for b in bases:
            if keep.get(b.id):
                plan.keep_backups[b.id] = keep[b.id]
            else:
                plan.remove_backups[b.id] = f"kept by no rule ({rules.describe()})"
        kept = [b for b in bases if b.id in plan.keep_backups]
        if not rules.active():
            for s in segs:
                plan.keep_segments[s.key] = "the policy sets no retention rule"
            continue
        _plan_segments(plan, planner, segs, kept, bool(bases), gaps.get(sid, []))
        if plan.window_start is not None:
            _check_window(plan, sid, planner, kept, segs, gaps.get(sid, []))
    return plan


def _plan_segments(plan: PrunePlan, planner: Planner, segs: list[SegmentInfo],
                   kept: list[BackupManifest], has_bases: bool, gaps: list[GapInfo]) -> None:
    if not segs:
        return
    if not has_bases:
        for s in segs:
            plan.keep_segments[s.key] = "its source has no base; prune leaves its binlog alone"
        return
    needed: dict[str, str] = {}
    for b in sorted(kept, key=base_time):
        loc = planner.base_location(b)
        if loc is None:
            continue
        run = planner.runs[loc.run].segments
        if loc.index > 0 and ends_at(run[loc.index - 1], planner.base_point(b)):
            # The point sits at this segment's end: the planner finds the base through it.
            needed.setdefault(run[loc.index - 1].key, f"locates kept base {b.id} in the binlog")
        for s in run[loc.index:]:
            needed.setdefault(s.key, f"replays from kept base {b.id}")
    newest = max(segs, key=lambda s: (s.binlog_file, s.start_pos, s.end_pos))
    needed.setdefault(newest.key, "newest segment: the shipper resumes after it")
    _no_false_joins(planner, segs, needed, gaps)
    # small segments a kept compacted one covers: `binlog compact` deletes them after its grace
    # period (a restore that planned with them may be reading them), never prune
    compacted = [s for s in segs if s.merged and s.key in needed]
    for s in segs:
        if s.key not in needed and not s.merged:
            wide = next((w for w in compacted if covered_by(s, w)), None)
            if wide is not None:
                needed[s.key] = (f"superseded by compacted segment {wide.key}; 'binlog compact' "
                                 "deletes it after its grace period")
    first_kept: tuple[str, int] | None = None
    for s in sorted(segs, key=lambda s: (s.binlog_file, s.start_pos, s.end_pos)):
        if s.key in needed:
            plan.keep_segments[s.key] = needed[s.key]
            if first_kept is None:
                first_kept = (s.binlog_file, s.start_pos)
        else:
            plan.remove_segments.append((s, _segment_reason(s, planner, kept)))
    for g in gaps:
        if first_kept is not None and (g.resume_file, g.resume_pos) <= first_kept:
            plan.remove_gaps.append((g, "it lies before every kept segment"))


def _no_false_joins(planner: Planner, segs: list[SegmentInfo], needed: dict[str, str],
                    gaps: list[GapInfo]) -> None:
    """Keep whatever stops two kept segments from looking contiguous when they were not.

    Removing the segments between two runs can make the end of one and the start of another
    look like one unbroken run (for example a restart that continues into the next binlog
    file). The first segment after the end of the earlier run then stays, as a separator.
    """
    run_of = {s.key: i for i, r in enumerate(planner.runs) for s in r.segments}
    order = sorted(segs, key=lambda s: (s.binlog_file, s.start_pos, s.end_pos))
    while True:
        kept = [s for s in order if s.key in needed]
        joined = None
        for run in build_runs(kept, gaps):
            for a, b in zip(run.segments, run.segments[1:], strict=False):
                if run_of.get(a.key) != run_of.get(b.key):
                    joined = a
                    break
            if joined is not None:
                break
        if joined is None:
            return
        i = order.index(joined)
        sep = next((s for s in order[i + 1:] if s.key not in needed), None)
        if sep is None:  # pragma: no cover - a join needs a removed segment in between
            return
        needed[sep.key] = (f"separates {joined.binlog_file}:{joined.end_pos} from later segments "
                           "that do not continue it")


def _segment_reason(s: SegmentInfo, planner: Planner, kept: list[BackupManifest]) -> str:
    run_of = next((i for i, r in enumerate(planner.runs) if any(x.key == s.key for x in r.segments)),
                  None)
    if run_of is None:
        return "a second copy of a stretch another segment already holds"
    in_run = [b for b in kept if (loc := planner.base_location(b)) is not None and loc.run == run_of]
    if in_run:
        oldest = min(in_run, key=lambda b: (b.point.file, b.point.pos))
        return (f"it ends before kept base {oldest.id} ({oldest.point.file}:{oldest.point.pos}); "
                "no kept base replays through it")
    return "no kept base lies in its unbroken run of segments, so no restore can use it"


class RetentionCheckError(Exception):
    """The kept set would lose a restorable moment of the recovery window (a bug guard)."""


def _check_window(plan: PrunePlan, sid: str, before: Planner, kept: list[BackupManifest],
                  segs: list[SegmentInfo], gaps: list[GapInfo]) -> None:
    kept_segs = [s for s in segs if s.key in plan.keep_segments]
    after = Planner(kept, {sid: kept_segs}, {sid: gaps}, source_id=sid)
    lost = uncovered(before.intervals(), after.intervals(), plan.window_start or 0.0, plan.now)
    if lost is not None:
        raise RetentionCheckError(f"the kept set would make {lost:.3f} (source {sid}) unrestorable")
