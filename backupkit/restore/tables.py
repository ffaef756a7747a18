"""Table-level point-in-time restore: some tables as they were at a moment, beside the live data.

``restore_tables_to_point(...)`` loads only the selected tables from the snapshot base (into a
private staging database, then renamed into place), and replays only their row events up to the
stop point (restore/replay/filter.py rebuilds the event stream; other tables' events are never
sent). ``--rename-db old=new`` puts them under another database name.

The target may be the live source itself when every selected table lands in a database other
than its own (``--rename-db``): nothing of the source's own tables is touched, and the replay
runs with ``sql_log_bin=0``. Without a rename, the source as target is refused as for any
restore. A table that already exists on the target is refused unless ``force``; then it is
renamed aside first to ``backupkit_aside_<stamp>_<table>`` in the same database (never dropped).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from backupkit.errors import IntegrityError, TargetError, UsageError
from backupkit.mysql import tsv
from backupkit.mysql.connection import ConnSpec, qualified, quote_ident
from backupkit.repo.catalog import BackupManifest, Catalog
from backupkit.repo.codec import read_object
from backupkit.restore import load
from backupkit.restore.guard import check_target
from backupkit.restore.pitr import PitrResult, make_plan, preflight
from backupkit.restore.replay import ReachedPoint, replay_segments
from backupkit.restore.replay.filter import EventFilter, TableFilter
from backupkit.restore.stoppoint import RestoreTarget
from backupkit.storage.base import ObjectStore
from backupkit.util.units import utc_iso

Progress = Callable[..., None]


def select_tables(manifest: BackupManifest, flt: TableFilter) -> list[dict[str, Any]]:
    """The base's tables the filter takes; a pattern that matches nothing is an error."""
    tables = manifest.details.get("tables", [])
    names = [(t["db"], t["name"]) for t in tables]
    for p in flt.unmatched(names):
        raise UsageError(f"--tables pattern {p!r} matches no table in backup {manifest.id}",
                         "run 'backupkit show " + manifest.id + "' to see its tables")
    chosen = [t for t in tables if flt.matches(t["db"], t["name"])]
    if not chosen:
        raise UsageError(f"--tables {flt.describe()} leaves no table of backup {manifest.id}")
    return chosen


def aside_name(table: str, stamp: str) -> str:
    return f"backupkit_aside_{stamp}_{table}"[:64]


def load_tables(store: ObjectStore, manifest: BackupManifest, spec: ConnSpec, flt: TableFilter,
                tables: list[dict[str, Any]], *, force: bool = False, log_bin: bool = False,
                parallel: int | None = None, source_spec: ConnSpec | None = None,
                progress: Progress | None = None) -> dict[str, Any]:
    """Load the selected tables of a snapshot into their (renamed) databases on the target."""
    report = progress or (lambda *a, **k: None)
    objects = {o.key: o for o in manifest.objects}
    dbs = {d["name"]: d for d in manifest.details.get("databases", [])}
    schemas = {db: json.loads(read_object(store, objects[dbs[db]["schema_key"]]))
               for db in sorted({t["db"] for t in tables})}
    options = load.RestoreOptions(force=force, parallel=parallel, log_bin=log_bin, record=False)
    conn = load._open(spec, log_bin)
    cur = conn.cursor()
    created: list[str] = []
    try:
        why = check_target(conn, spec, [manifest.source], source_spec, True, manifest.point.gtid)
        same = sorted({t["db"] for t in tables if flt.target_db(t["db"]) == t["db"]})
        if why and same:
            raise TargetError(f"the target {spec.display()} is the backed-up source: {why}; a "
                              f"table-level restore onto it must land in another database "
                              "; nothing was changed",
                              f"add --rename-db {same[0]}={same[0]}_restored")
        existing = []
        for t in tables:
            new = flt.target_db(t["db"])
            cur.execute("SELECT 1 FROM information_schema.tables WHERE table_schema=%s AND "
                        "table_name=%s", (new, t["name"]))
            if cur.fetchone():
                existing.append((new, t["name"]))
        if existing and not force:
            raise UsageError(f"target {spec.display()} already holds table(s) "
                             + ", ".join(f"{d}.{n}" for d, n in existing) + "; nothing was changed",
                             "use --force to move them aside as backupkit_aside_<stamp>_<table>")
        token = uuid.uuid4().hex[:8]
        staging = {db: f"bkrestore_{token}_{i}" for i, db in enumerate(schemas)}
        load._create_staging(cur, schemas, staging, created,
                             {db: [t["name"] for t in tables if t["db"] == db] for db in staging})
        chunks = [load._Chunk(t["db"], t["name"], staging[t["db"]],
                              [tsv.Column.from_list(c) for c in t["columns"]], objects[c["key"]],
                              c["rows"]) for t in tables for c in t["chunks"]]
        report("plan", tables=len(tables), chunks=len(chunks),
               bytes=sum(c.obj.raw_size for c in chunks), rows=sum(t["rows"] for t in tables))
        loaded, _warnings = load._load_chunks(spec, store, chunks, options, report)
        for t in tables:
            got = loaded.get((t["db"], t["name"]), 0)
            if got != t["rows"]:
                raise IntegrityError(f"table {t['db']}.{t['name']} has {got} rows after the load, "
                                     f"the manifest says {t['rows']}")
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
        moved: dict[str, str] = {}
        for new in sorted({flt.target_db(t["db"]) for t in tables}):
            src = schemas[next(t["db"] for t in tables if flt.target_db(t["db"]) == new)]
            cur.execute(f"CREATE DATABASE IF NOT EXISTS {quote_ident(new)} CHARACTER SET "
                        f"{src['charset']} COLLATE {src['collation']}")
        renames = []
        for db, name in existing:
            moved[f"{db}.{name}"] = f"{db}.{aside_name(name, stamp)}"
            renames.append(f"{qualified(db, name)} TO {qualified(db, aside_name(name, stamp))}")
        renames += [f"{qualified(staging[t['db']], t['name'])} TO "
                    f"{qualified(flt.target_db(t['db']), t['name'])}" for t in tables]
        cur.execute("RENAME TABLE " + ", ".join(renames))  # atomic: aside and in place together
    finally:
        load._drop_staging(cur, created)
        conn.close()
    return {"backup_id": manifest.id, "tables": [f"{flt.target_db(t['db'])}.{t['name']}"
                                                  for t in tables],
            "rows": sum(loaded.values()), "moved_aside": moved, "target_is_source": bool(why)}


def restore_tables_to_point(store: ObjectStore, catalog: Catalog, target: RestoreTarget,
                            spec: ConnSpec, flt: TableFilter, *, backup_id: str | None = None,
                            force: bool = False, parallel: int | None = None,
                            source_spec: ConnSpec | None = None, progress: Progress | None = None,
                            notify: Callable[[str], None] | None = None) -> PitrResult:
    """Some tables as of the target point, loaded and replayed onto spec."""
    say = notify or (lambda msg: None)
    report = progress or (lambda *a, **k: None)
    started = time.time()
    plan = make_plan(catalog, target, backup_id)
    base = plan.base
    if base.kind != "snapshot":
        raise UsageError(f"the plan starts from {base.kind} backup {base.id}: a table-level restore "
                         "needs a snapshot base", "take one with 'backupkit snapshot'")
    tables = select_tables(base, flt)
    preflight(store, plan)
    result = PitrResult(plan, spec.display(), ReachedPoint(base.point.file, base.point.pos,
                                                          base.point.gtid, base.point.time), started)
    t0 = time.monotonic()
    say(f"loading {len(tables)} table(s) of snapshot {base.id}")
    result.base = load_tables(store, base, spec, flt, tables, force=force, parallel=parallel,
                              source_spec=source_spec,
                              progress=lambda ev, **kw: report("base", ev, **kw))
    result.base_seconds = time.monotonic() - t0
    for old, aside in result.base["moved_aside"].items():
        result.notes.append(f"{old} existed: moved aside to {aside}")
    if plan.segments:
        say(f"replaying the selected tables' rows from {plan.segment_count} binlog segment(s)")
        ev = EventFilter(flt, {(t["db"], t["name"]) for t in tables})
        result.replay = replay_segments(store, plan.iter_segments(), plan.start, target, spec,
                                        start_point=result.reached, table_filter=ev,
                                        count=plan.segment_count, raw_bytes=plan.segment_raw_bytes,
                                        progress=lambda e, **kw: report("replay", e, **kw))
        result.notes += result.replay.notes
    result.finished_at = time.time()
    record = {"kind": "pitr_tables", "tables": result.base["tables"],
              "base_kind": base.kind, "base_id": base.id, "backup_id": base.id,
              "target": result.target, "started_at": started, "finished_at": result.finished_at,
              "started_at_utc": utc_iso(started), "finished_at_utc": utc_iso(result.finished_at),
              "duration": round(result.duration, 3), "restore_target": target.to_dict(),
              "reached": result.reached.to_dict(), "source_id": plan.source_id}
    try:
        result.record_id = catalog.commit_restore_record(record)
    except Exception as exc:  # the restore itself succeeded
        result.notes.append(f"the restore record could not be written: {exc}")
    return result
