"""backupkit verify: re-read every object, check binlog coverage, optionally test a restore."""

from __future__ import annotations

import typer

from backupkit.cli.common import json_mode, render, settings
from backupkit.cli.console import as_progress, console, emit_json, info, progress, table
from backupkit.errors import IntegrityError, UsageError
from backupkit.util.units import human_bytes, human_seconds


def verify(
    backup_id: str = typer.Argument(None, help="Backup to verify; omit (or --all) for everything."),
    all_: bool = typer.Option(False, "--all", help="Re-read every object, also those an earlier run "
                              "checked (default: only what is new, and everything once per "
                              "[verify] full_every, 7d)."),
    restore_test: bool = typer.Option(False, "--restore-test",
                                      help="Also restore into a throw-away private server and compare "
                                           "row counts and checksums (the newest backup with --all)."),
    parallel: int = typer.Option(None, "--parallel", "-p", min=1, max=64,
                                 help="Objects read at once (default 8)."),
    repair: bool = typer.Option(False, "--repair", help="Rebuild damaged binlog roll-ups from their "
                                "index entries (the only damage verify can undo)."),
) -> None:
    """Re-read every object against its checksum and check the binlog for unexplained holes.

    Exit code 5 when anything is wrong; each problem names the object.
    """
    from backupkit.operations.verify import restore_test as run_restore_test  # lazy: start-up time
    from backupkit.operations.verify import verify_repository  # lazy: start-up time
    from backupkit.repo.catalog import Catalog  # lazy: start-up time
    from backupkit.util.units import parse_duration  # lazy: start-up time

    if backup_id and all_:
        raise UsageError("give a backup id or --all, not both")
    st = settings()
    full_every = parse_duration(st.policy.verify.full_every)
    store = st.open_store(create=False)
    ids = [backup_id] if backup_id else None
    with progress(enabled=not json_mode()) as bar:
        report = verify_repository(store, ids, binlog=ids is None, parallel=parallel or 8,
                                   progress=as_progress(bar), repair=repair, everything=all_,
                                   full_every=full_every)
    if restore_test and report.ok:
        catalog = Catalog(store)
        if backup_id:
            targets = [catalog.backup(backup_id)]
        else:
            newest = {}
            for b in catalog.backups():
                newest[b.kind] = b  # oldest first: the last one of each kind wins
            targets = [newest[k] for k in ("snapshot", "cold", "physical") if k in newest]
        for m in targets:
            try:
                report.restore_tests.append(run_restore_test(store, m, parallel,
                                                             say=lambda s: info(s, json_mode())))
            except IntegrityError as exc:
                from backupkit.operations.verify import Problem  # lazy: start-up time

                report.problems.append(Problem("restore", m.id, exc.message))
    data = report.to_dict()

    def human(c) -> None:
        c.print(f"repository {data['storage']}: {data['objects']} objects, "
                f"{human_bytes(data['bytes'])} re-read in {human_seconds(data['seconds'])}")
        if not data["full"]:
            c.print(f"only what is new: {data['skipped']} objects an earlier run checked were not "
                    f"read again (last full read {data['last_full_at']}; --all reads everything)",
                    highlight=False)
        if data["backups"]:
            c.print(table("backups", ["id", "kind", "objects", "stored", "result"],
                          [[b["id"], b["kind"], b["objects"], human_bytes(b["stored_bytes"]),
                            "ok" if b["ok"] else "DAMAGED"] for b in data["backups"]]))
        for s in data["sources"]:
            c.print(f"binlog of {s['source_id']}: {s['segments']} segments, "
                    f"{human_bytes(s['stored_bytes'])}, {s['gaps_recorded']} recorded gap(s), "
                    f"{s['holes']} unexplained hole(s)")
        for n in data["notes"]:
            c.print(f"note: {n}", highlight=False)
        for t in data["restore_tests"]:
            extra = ", ".join(f"{k}={v}" for k, v in t.items()
                              if k not in ("backup_id", "kind", "duration_s", "record_id"))
            c.print(f"restore test of {t['backup_id']} ({t['kind']}): ok in "
                    f"{human_seconds(t['duration_s'])} ({extra}); recorded as the measured RTO")
        if report.ok:
            c.print("verified: every checksum matches" + ("" if ids else
                                                          ", the binlog has no unexplained hole"))

    if report.ok:
        render(data, human)
        return
    lines = [p.message for p in report.problems]
    if json_mode():
        more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
        emit_json({"ok": False, **data, "exit_code": 5, "error": lines[0] + more})
        raise typer.Exit(5)

    human(console)
    raise IntegrityError("\n".join(lines))
