"""backupkit list: backups and binlog coverage."""

from __future__ import annotations

import typer

from backupkit.cli.common import open_repo, render
from backupkit.cli.console import table
from backupkit.util.units import human_bytes, human_seconds, utc_iso


def repository_listing(repo) -> dict:
    """Backups, binlog coverage and gaps of a Repository as plain data (list, report, the demo)."""
    from backupkit.repo.coverage import build_runs, confirm  # lazy: start-up time

    backups = repo.backups()
    sources = repo.sources()
    coverage, gaps = [], []
    for sid in sources:
        # the watermark first: it names a committed point, so the segments read after it hold it
        st = repo.shipper_status(sid)
        # stretches (repo/stretches.py): the same runs as the segments, a few objects per file
        segs = repo.catalog.stretches(sid, cuts=[st.point] if st is not None else ())
        source_gaps = repo.gaps(sid)
        runs = build_runs(segs, source_gaps)
        if st is not None:
            confirm(runs, st.point, st.confirmed_at)
        for run in runs:
            coverage.append({
                "source_id": sid, "range_id": run.range_id,
                "start": f"{run.start[0]}:{run.start[1]}", "end": f"{run.end[0]}:{run.end[1]}",
                "first_commit": utc_iso(run.first.head.first_commit_time or None),
                "last_commit": utc_iso(run.last.tail.last_commit_time or None),
                "last_gtid": run.last.gtid_state,
                "segments": sum(s.count for s in run.segments), "stored_bytes": run.stored_bytes,
                # the shipper confirmed every commit up to here shipped (a quiet stretch after
                # the last commit is restorable up to it)
                "confirmed_through": utc_iso(max(run.confirmed.values())) if run.confirmed else None,
            })
        for g in source_gaps:
            gaps.append({"source_id": sid, "after": f"{g.after_file}:{g.after_pos}",
                         "resume": f"{g.resume_file}:{g.resume_pos}" if g.resume_file else "not resumed",
                         "detected_at": utc_iso(g.detected_at), "reason": g.reason})
    return {
        "storage": repo.store.describe(),
        "backups": [{
            "id": b.id, "kind": b.kind, "source_id": b.source.source_id,
            "scope": b.scope.to_dict(), "scope_text": b.scope.describe(),
            "point_time": utc_iso(b.point.time), "binlog": f"{b.point.file}:{b.point.pos}",
            "gtid": b.point.gtid, "duration_s": round(b.duration, 3),
            "stored_bytes": b.stored_bytes,
            "downtime_s": b.details.get("downtime", {}).get("total_seconds") if b.kind == "cold" else None,
            "parent": b.details.get("parent") if b.kind == "physical" else None,  # an incremental's
        } for b in backups],
        "binlog_coverage": coverage,
        "gaps": gaps,
        **_targets(repo.store),
    }


def targets_table(targets: list[dict]):
    """Each storage target: reachable, and what it lacks (its lag)."""
    return table("storage targets", ["target", "reachable", "missing objects", "missing backups",
                                     "missing segments", "lag"],
                 [[t["name"], "yes" if t["reachable"] else "no", t["missing_objects"],
                   t["missing_backups"], t["missing_segments"],
                   human_seconds(t["lag_s"]) if t["lag_s"] is not None else "-"] for t in targets])


def _targets(store) -> dict:
    """{"targets": lag of each storage target} when the repository has several (storage/mirror/)."""
    from backupkit.repo.compare import target_status  # lazy: start-up time
    from backupkit.storage.mirror import find_mirror  # lazy: start-up time

    mirror = find_mirror(store)
    if mirror is None or len(mirror.targets) < 2:
        return {}
    # each target gets the mirror's deadline (short for interactive commands): never a hang
    return {"targets": target_status([(t.name, t.store) for t in mirror.targets], quick=True,
                                     deadline=mirror.stall_timeout)}


def list_cmd(
    kind: str = typer.Option(None, "--kind", help="Only backups of this kind: snapshot, cold or physical."),
) -> None:
    """Show backups and binlog coverage."""
    data = repository_listing(open_repo(create=False, interactive=True))
    if kind:
        data["backups"] = [b for b in data["backups"] if b["kind"] == kind]

    def human(c) -> None:
        c.print(f"repository {data['storage']}")
        c.print(table("backups", ["id", "kind", "scope", "consistent point (UTC)", "binlog",
                                  "duration", "stored", "downtime"],
                      [[b["id"], b["kind"] + (" (incr.)" if b.get("parent") else ""), b["scope_text"],
                        b["point_time"], b["binlog"],
                        human_seconds(b["duration_s"]), human_bytes(b["stored_bytes"]),
                        human_seconds(b["downtime_s"]) if b["downtime_s"] is not None else ""]
                       for b in data["backups"]]))
        c.print(table("binlog coverage", ["source", "from", "to", "first commit", "last commit",
                                          "confirmed through", "segments", "stored"],
                      [[r["source_id"], r["start"], r["end"], r["first_commit"], r["last_commit"],
                        r["confirmed_through"] or "", r["segments"], human_bytes(r["stored_bytes"])]
                       for r in data["binlog_coverage"]]))
        if data.get("targets"):
            c.print(targets_table(data["targets"]))
        if data["gaps"]:
            c.print(table("gaps", ["source", "after", "resumed at", "detected", "reason"],
                          [[g["source_id"], g["after"], g["resume"], g["detected_at"], g["reason"]]
                           for g in data["gaps"]]))

    render(data, human)
