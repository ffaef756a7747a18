"""Read a RepositoryView from the repository: the expensive part of the status, done now and
then by the daemon (never on a scrape) and once by `backupkit status` and `backupkit metrics`."""

from __future__ import annotations

import json
import time
from typing import Any

from backupkit.errors import BackupkitError, ObjectNotFound, StorageError
from backupkit.monitor.status import (
    Base,
    Drill,
    Gap,
    LeaseInfo,
    RepositoryView,
    SourceTimeline,
    TargetHealth,
)
from backupkit.repo import layout
from backupkit.repo.catalog import Catalog
from backupkit.repo.compare import target_status
from backupkit.repo.coverage import build_runs, ends_at, gap_between
from backupkit.repo.watermark import read_status
from backupkit.restore.plan import restorable_intervals
from backupkit.storage.mirror import find_mirror


def read_repository(catalog: Catalog, targets: bool = True, now: float | None = None) -> RepositoryView:
    """Intervals, gaps and bases per source, drills, leases and storage targets."""
    t0 = time.monotonic()
    now = time.time() if now is None else now
    view = RepositoryView(read_at=now, storage=catalog.store.describe())
    try:
        backups = catalog.backups()
        sources = sorted({b.source.source_id for b in backups} | set(catalog.sources()))
        for sid in sources:
            view.sources.append(_timeline(catalog, sid, [b for b in backups if b.source.source_id == sid]))
            lease = _lease(catalog, sid, now)
            if lease is not None:
                view.leases.append(lease)
        view.drills = drills(catalog.restore_records())
        if targets:
            view.targets = target_health(catalog.store)
    except BackupkitError as exc:
        view.error = exc.one_line()
    view.read_seconds = round(time.monotonic() - t0, 3)
    return view


def _timeline(catalog: Catalog, sid: str, backups: list) -> SourceTimeline:
    # the shipper's confirmed-through watermark first: it names a committed point, so the
    # segments listed after it hold that point (read after them, a newer point is not found and
    # a quiet stretch just confirmed shows as a false gap)
    mark = read_status(catalog, sid)
    # stretches (repo/stretches.py): the same runs as the segments, a few objects per binlog
    # file; each base's point and the watermark's stay where the segments put them (cuts)
    cuts = [(b.point.file, b.point.pos) for b in backups if b.point.file]
    cuts += [mark.point] if mark is not None else []
    segs = catalog.stretches(sid, cuts=cuts)
    gaps = catalog.gaps(sid)
    tl = SourceTimeline(sid, segments=sum(s.listed for s in segs),
                        binlog_stored_bytes=sum(s.listed_bytes for s in segs))
    tl.confirmed_at = mark.confirmed_at if mark is not None and mark.confirmed_at else None
    tl.intervals = restorable_intervals(backups, {sid: segs}, {sid: gaps}, sid,
                                        confirmed={sid: mark} if tl.confirmed_at else None)
    tl.bases = [Base(b.id, b.kind, b.point.time, b.stored_bytes, round(b.duration, 3), b.finished_at)
                for b in backups]
    tl.newest_commit = max((s.max_last_commit for s in segs), default=0.0) or None
    runs = build_runs(segs, gaps)
    tl.binlog_runs = [(r.first_commit_time or r.first.head.created_at,
                       r.end_time() or r.last.tail.created_at) for r in runs]
    for a, z in zip(runs, runs[1:], strict=False):
        rec = gap_between(gaps, a.last, z.first) or next(
            (g for g in gaps if ends_at(a.last, (g.after_file, g.after_pos))), None)
        why = rec.reason if rec else f"binlog {a.end[0]}:{a.end[1]} to {z.start[0]}:{z.start[1]} not shipped"
        # a range after a gap begins with an empty anchor segment: it starts when shipping resumed
        end = z.first_commit_time or (rec.detected_at if rec else 0) or z.first.head.created_at or None
        tl.gaps.append(Gap(a.end_time() or a.last.tail.last_event_time, end, why,
                           rec.detected_at if rec else 0.0))
    if runs:  # a gap recorded after the newest range: shipping stopped there
        for g in gaps:
            if ends_at(runs[-1].last, (g.after_file, g.after_pos)) and not g.resume_file:
                tl.gaps.append(Gap(g.last_time_before or runs[-1].end_time(), None, g.reason, g.detected_at))
    return tl


def drills(records: list[dict[str, Any]]) -> list[Drill]:
    """Restore drills and measured restores, oldest first."""
    out = []
    for r in records:
        at = r.get("finished_at")
        if not isinstance(at, (int, float)):
            continue
        ok = r.get("verified", True) is not False and not r.get("error")
        out.append(Drill(float(at), str(r.get("kind", "")), bool(ok),
                         float(r["duration"]) if isinstance(r.get("duration"), (int, float)) else None,
                         str(r.get("backup_id") or ""), str(r.get("id") or "")))
    return sorted(out, key=lambda d: d.at)


def _lease(catalog: Catalog, sid: str, now: float) -> LeaseInfo | None:
    try:
        data, _ = catalog.store.read_small(layout.shipper_lease(sid))
        d = json.loads(data)
    except (ObjectNotFound, StorageError, ValueError):
        return None
    if not isinstance(d, dict):
        return None
    exp = float(d.get("expires_at") or 0.0)
    return LeaseInfo(sid, str(d.get("holder", "")), exp, not d.get("released") and exp > now)


def target_health(store) -> list[TargetHealth]:
    """Each storage target of a mirrored repository: reachable, and how far behind."""
    mirror = find_mirror(store)
    if mirror is None or len(mirror.targets) < 2:
        return []
    return [TargetHealth(t["name"], t.get("url", ""), bool(t["reachable"]), t.get("lag_s"),
                         t.get("missing_objects"), t.get("error", "") or "")
            for t in target_status([(t.name, t.store) for t in mirror.targets], quick=True)]
