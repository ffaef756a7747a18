"""Apply retention to a repository: decide with retention.plan_prune, then delete crash-safely.

Order of deletion (a crash at any moment leaves a repository where everything visible is whole):
1. the manifests of the backups that go: each backup disappears at once, as a unit;
2. the index entries of the segments that go, one at a time, oldest first: the shipped binlog
   shrinks from its old end and stays one unbroken run;
3. the gap records that now lie before every kept segment;
4. the data objects of those backups and segments: nothing refers to them any more;
5. orphans: data objects without a manifest or index entry, left by a crash in step 4 or by a
   backup or segment that failed before its commit. Only those older than ORPHAN_GRACE go, so
   the objects of a backup still being written are never touched.
Bases go before segments so that a visible base never loses the binlog it replays with.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any

from backupkit.errors import BackupkitError
from backupkit.operations.retention import PrunePlan, RetentionCheckError, RetentionRules, plan_prune
from backupkit.repo.catalog import SegmentInfo
from backupkit.repo.repository import Repository
from backupkit.storage.base import ObjectStore
from backupkit.util.units import utc_iso

log = logging.getLogger(__name__)

ORPHAN_GRACE = 24 * 3600.0


@dataclass
class PruneResult:
    """What prune removed (or would remove, with --dry-run) and why."""

    plan: PrunePlan
    dry_run: bool
    orphans: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    deleted_objects: int = 0
    rollups_written: int = 0
    order: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        p = self.plan
        return {
            "dry_run": self.dry_run,
            "rules": p.rules.describe(),
            "now": utc_iso(p.now),
            "window_start": utc_iso(p.window_start),
            "kept_backups": [{"id": i, "kind": p.backups[i].kind,
                              "point_time": utc_iso(p.backups[i].point.time), "reasons": r}
                             for i, r in sorted(p.keep_backups.items())],
            "removed_backups": [{"id": i, "kind": p.backups[i].kind,
                                 "point_time": utc_iso(p.backups[i].point.time),
                                 "stored_bytes": p.backups[i].stored_bytes, "reason": r}
                                for i, r in sorted(p.remove_backups.items())],
            "removed_segments": [{"source_id": s.source_id, "key": s.key, "file": s.binlog_file,
                                  "start_pos": s.start_pos, "end_pos": s.end_pos,
                                  "stored_bytes": s.object.size, "reason": r}
                                 for s, r in p.remove_segments],
            "segment_ranges": segment_ranges(p.remove_segments, self.order),
            "kept_segments": len(p.keep_segments),
            "removed_gaps": [{"source_id": g.source_id, "after": f"{g.after_file}:{g.after_pos}",
                              "reason": r} for g, r in p.remove_gaps],
            "orphans": self.orphans,
            "freed_bytes": self.freed_bytes,
            "deleted_objects": self.deleted_objects,
            "rollups_written": self.rollups_written,
        }


def segment_ranges(removed: list[tuple[SegmentInfo, str]],
                   order: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Removed segments that follow each other (no kept one between) with the same reason, as
    one line each. order maps a segment key to its place among all segments of its source."""
    order = order or {}
    out: list[dict[str, Any]] = []
    last_place: int | None = None
    for s, why in sorted(removed, key=lambda x: (x[0].source_id, x[0].binlog_file, x[0].start_pos)):
        place = order.get(s.key)
        last = out[-1] if out else None
        if last and last["source_id"] == s.source_id and last["reason"] == why and \
                place is not None and last_place is not None and place == last_place + 1:
            last["to"] = f"{s.binlog_file}:{s.end_pos}"
            last["segments"] += 1
            last["stored_bytes"] += s.object.size
        else:
            out.append({"source_id": s.source_id, "from": f"{s.binlog_file}:{s.start_pos}",
                        "to": f"{s.binlog_file}:{s.end_pos}", "segments": 1,
                        "stored_bytes": s.object.size, "reason": why})
        last_place = place
    return out


def prune(store: ObjectStore, rules: RetentionRules, *, dry_run: bool = False,
          now: float | None = None, tz: tzinfo | None = None,
          orphan_grace: float = ORPHAN_GRACE) -> PruneResult:
    """Apply retention rules to the repository in store (see the module doc for the order)."""
    now = time.time() if now is None else now
    repo = Repository(store)
    backups = repo.backups(strict=True)  # a damaged manifest stops prune before it deletes anything
    sources = sorted(set(repo.sources()) | {b.source.source_id for b in backups})
    segments = {sid: repo.segments(sid) for sid in sources}
    gaps = {sid: repo.gaps(sid) for sid in sources}
    try:
        plan = plan_prune(backups, segments, rules, now, tz, gaps)
    except RetentionCheckError as exc:
        raise BackupkitError(f"prune refused: {exc}",
                             "nothing was deleted; please report this with 'backupkit list --json'"
                             ) from None
    result = PruneResult(plan, dry_run)
    for segs in segments.values():
        result.order.update({x.key: i for i, x in enumerate(segs)})
    result.orphans = repo.orphans(now - orphan_grace, plan.remove_backups,
                                  {s.key for s, _ in plan.remove_segments})
    sizes: dict[str, int] = {}
    backup_data: dict[str, list[str]] = {}
    for bid in plan.remove_backups:
        keys = []
        for info in repo.backup_objects(bid):
            sizes[info.key] = info.size
            if not repo.is_manifest(info):
                keys.append(info.key)
        backup_data[bid] = keys
    result.freed_bytes = (sum(sizes.values())
                          + sum(s.object.size for s, _ in plan.remove_segments)
                          + sum(repo.size_of(k) for k in result.orphans))
    if dry_run:
        return result
    deleted = 0
    # 1. backup manifests: each backup vanishes whole.
    for bid in sorted(plan.remove_backups):
        repo.uncommit_backup(bid)
        deleted += 1
    # 2. segment index entries, oldest first, one at a time.
    by_source: dict[str, list[SegmentInfo]] = defaultdict(list)
    for s, _ in plan.remove_segments:
        by_source[s.source_id].append(s)
    for sid in sorted(by_source):
        # the roll-ups of the files it edits first: a reader that finds none lists those files,
        # never an entry pruned under it (step 6 writes them anew)
        repo.forget_rollups(sid, {s.binlog_file for s in by_source[sid]})
        for s in sorted(by_source[sid], key=lambda s: (s.binlog_file, s.start_pos, s.end_pos)):
            repo.uncommit_segment(s)
            deleted += 1
    # 3. gap records before every kept segment.
    deleted += repo.forget_gaps(g for g, _ in plan.remove_gaps)
    # 4. data objects nothing refers to any more.
    data = [k for keys in backup_data.values() for k in keys] + \
        [s.object.key for s, _ in plan.remove_segments]
    if data:
        repo.delete(data)
        deleted += len(data)
    # 5. old orphans.
    if result.orphans:
        repo.delete(result.orphans)
        deleted += len(result.orphans)
    # 6. the roll-ups of the index (a cache: see Catalog.segments): up to date for what is left.
    for sid in sources:
        try:
            rolled = repo.roll_up(sid)
        except BackupkitError as exc:  # a cache: what was pruned stays pruned; say it and go on
            log.warning("roll-up of %s not brought up to date: %s", sid, exc.message)
            continue
        deleted += len(rolled["deleted"])
        result.rollups_written += len(rolled["written"])
    result.deleted_objects = deleted
    return result
