"""Load a snapshot into a server: schema, parallel streamed LOAD DATA, then views, routines, triggers.

The data goes first into private staging databases (``bkrestore_<token>_<n>``) that this restore
creates. Only when every chunk has loaded with its checksum verified, the row counts match and
(with ``verify``) CHECKSUM TABLE matches the values taken inside the snapshot, are the tables
renamed into their real databases. A damaged chunk or any other failure before that point drops
the staging databases (which held nothing else) and leaves the target as it was.

A target that already holds one of the databases is refused unless ``force``; then the existing
database's tables are renamed into ``<db>_before_<timestamp>`` (never dropped), and its views,
routines, events and triggers are recreated there before they are removed from the original.

About 500 lines: one job (a snapshot load), its steps sharing the staging names and the cursor.
"""

from __future__ import annotations

import json
import os
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import pymysql

from backupkit.errors import BackupkitError, IntegrityError, SourceError, UsageError
from backupkit.mysql import infile, tsv
from backupkit.mysql.connection import ConnSpec, connect, qualified, quote_ident
from backupkit.repo.catalog import BackupManifest, Catalog
from backupkit.repo.codec import StoredObject, iter_object, read_object
from backupkit.repo.failover import retry_on_other_copy
from backupkit.restore.guard import break_note, check_target, record_timeline_break
from backupkit.storage.base import ObjectStore
from backupkit.util.units import utc_iso
from backupkit.util.workers import run_workers

SESSION_SQL = ("SET SESSION time_zone='+00:00', sql_mode='NO_AUTO_VALUE_ON_ZERO', "
               "foreign_key_checks=0, unique_checks=0, net_read_timeout=600, net_write_timeout=600")
Progress = Callable[..., None]


@dataclass
class RestoreOptions:
    """How to load a snapshot."""

    force: bool = False  # move existing databases aside instead of refusing
    verify: bool = False  # compare CHECKSUM TABLE with the values recorded at snapshot time
    parallel: int | None = None  # load workers; default: the number of cores
    log_bin: bool = False  # write the load to the target's binlog (default: sql_log_bin=0)
    include_users: bool = False  # also create the users and grants saved with --include-users
    databases: list[str] = field(default_factory=list)  # restore only these (default: all)
    record: bool = True  # write a restore record (its duration is the measured RTO)
    in_place: bool = False  # the target may be the backed-up source (restore/guard.py)
    source: ConnSpec | None = None  # the configured source, recognised by its address

    def workers(self) -> int:
        return max(1, int(self.parallel or os.cpu_count() or 1))


@dataclass
class RestoreResult:
    """What a restore did and how long it took."""

    backup_id: str
    target: str
    databases: list[str]
    tables: int
    rows: int
    raw_bytes: int
    started_at: float
    finished_at: float
    moved_aside: dict[str, str] = field(default_factory=dict)
    verified_tables: int = 0
    warnings: int = 0
    problems: list[str] = field(default_factory=list)
    record_id: str | None = None
    timeline_break: dict[str, Any] | None = None  # an in-place restore's recorded gap
    notes: list[str] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return self.finished_at - self.started_at

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["duration"] = round(self.duration, 3)
        d["kind"] = "snapshot"
        return d

    def __getitem__(self, key: str) -> Any:  # dict-like for callers that index results
        return self.to_dict()[key]


# -- connections -----------------------------------------------------------------------
def _open(spec: ConnSpec, log_bin: bool, autocommit: bool = True):
    conn = connect(spec, autocommit=autocommit, local_infile=True)
    with conn.cursor() as cur:
        cur.execute(SESSION_SQL)
        if not log_bin:
            try:
                cur.execute("SET SESSION sql_log_bin=0")
            except pymysql.err.MySQLError as exc:
                conn.close()
                raise SourceError(f"cannot turn off the binlog for the load on {spec.display()}: "
                                  f"{exc.args[-1]}", "grant SUPER or BINLOG ADMIN, or use --log-bin"
                                  ) from None
    return conn


def _err(exc: BaseException, what: str) -> BackupkitError:
    if isinstance(exc, BackupkitError):
        return exc
    msg = exc.args[-1] if getattr(exc, "args", None) else str(exc)
    return SourceError(f"{what}: {msg}")


def _fetch_all(cur, sql: str, args=None) -> list[tuple]:
    cur.execute(sql, args)
    return [tuple(v.decode() if isinstance(v, bytes) else v for v in r) for r in cur.fetchall()]


def _existing(cur, names: list[str]) -> list[str]:
    rows = _fetch_all(cur, "SELECT schema_name FROM information_schema.schemata")
    have = {r[0] for r in rows}
    return [n for n in names if n in have]


def _aside_name(db: str, stamp: str) -> str:
    suffix = f"_before_{stamp}"
    return db[: 64 - len(suffix)] + suffix


# -- defining objects ----------------------------------------------------------------------
def _run_defined(cur, db: str, create: str, sql_mode: str | None = None,
                 collation: str | None = None, time_zone: str | None = None) -> None:
    """Run a CREATE of a view, routine, trigger or event with the session it was defined under."""
    cur.execute(f"USE {quote_ident(db)}")
    saved = _fetch_all(cur, "SELECT @@sql_mode, @@collation_connection, @@time_zone")[0]
    try:
        if sql_mode is not None:
            cur.execute("SET SESSION sql_mode=%s", (sql_mode,))
        if collation:
            cur.execute("SET SESSION collation_connection=%s", (collation,))
        if time_zone:
            cur.execute("SET SESSION time_zone=%s", (time_zone,))
        cur.execute(create)
    finally:
        cur.execute("SET SESSION sql_mode=%s, collation_connection=%s, time_zone=%s", saved)


def create_views(cur, db: str, views: list[dict[str, Any]], rewrite: tuple[str, str] | None = None,
                 ) -> list[str]:
    """Create views in dependency order (retry until no progress); returns problems."""
    pending = list(views)
    problems: list[str] = []
    while pending:
        failed = []
        last_error: dict[str, str] = {}
        for v in pending:
            text = v["create"]
            if rewrite:
                text = text.replace(rewrite[0], rewrite[1])
            try:
                _run_defined(cur, db, text, "", v.get("collation_connection"))
            except pymysql.err.MySQLError as exc:
                failed.append(v)
                last_error[v["name"]] = str(exc.args[-1])
        if len(failed) == len(pending):
            problems += [f"view {db}.{v['name']} not created: {last_error[v['name']]}" for v in failed]
            break
        pending = failed
    return problems


# -- moving existing databases aside (--force) --------------------------------------------------
_TRIGGER_HEAD = re.compile(r"(?is)^(.*?\bTRIGGER\s+)(.+?)(\s+(?:BEFORE|AFTER)\s+(?:INSERT|UPDATE|DELETE)"
                           r"\s+ON\s+)(.+?)(\s+FOR\s+EACH\s+ROW\b.*)$")


def unqualified_trigger(create: str, name: str, table: str) -> str:
    """A trigger's CREATE with its own name and table unqualified, so it lands in the current db."""
    m = _TRIGGER_HEAD.match(create)
    if not m:
        return create
    return m.group(1) + quote_ident(name) + m.group(3) + quote_ident(table) + m.group(5)


def move_aside(cur, db: str, stamp: str) -> tuple[str, list[str]]:
    """Rename every table of db into <db>_before_<stamp>; recreate its other objects there."""
    taken = {r[0] for r in _fetch_all(cur, "SELECT schema_name FROM information_schema.schemata")}
    aside, n = _aside_name(db, stamp), 1
    while aside in taken:  # two forced restores within one second: never reuse a moved-aside name
        n += 1
        aside = _aside_name(db, f"{stamp}_{n}")
    problems: list[str] = []
    cs = _fetch_all(cur, "SELECT default_character_set_name, default_collation_name "
                         "FROM information_schema.schemata WHERE schema_name=%s", (db,))[0]
    cur.execute(f"CREATE DATABASE {quote_ident(aside)} CHARACTER SET {cs[0]} COLLATE {cs[1]}")
    tables = _fetch_all(cur, "SELECT table_name, table_type FROM information_schema.tables "
                             "WHERE table_schema=%s", (db,))
    base = [t for t, kind in tables if kind != "VIEW"]
    views = []
    for name, kind in tables:
        if kind == "VIEW":
            row = _fetch_all(cur, f"SHOW CREATE VIEW {qualified(db, name)}")[0]
            views.append({"name": name, "create": row[1], "collation_connection": row[3]})
    triggers = []
    for trig, table in _fetch_all(cur, "SELECT trigger_name, event_object_table FROM "
                                       "information_schema.triggers WHERE trigger_schema=%s "
                                       "ORDER BY event_object_table, action_order", (db,)):
        row = _fetch_all(cur, f"SHOW CREATE TRIGGER {qualified(db, trig)}")[0]
        triggers.append({"name": trig, "sql_mode": row[1],
                         "create": unqualified_trigger(row[2], trig, table),
                         "collation_connection": row[4]})
    # routines and events: copy first, then remove the original
    for rname, rtype in _fetch_all(cur, "SELECT routine_name, routine_type FROM "
                                        "information_schema.routines WHERE routine_schema=%s "
                                        "AND routine_type IN ('PROCEDURE','FUNCTION')", (db,)):
        row = _fetch_all(cur, f"SHOW CREATE {rtype} {qualified(db, rname)}")[0]
        _run_defined(cur, aside, row[2], row[1], row[4])
        cur.execute(f"DROP {rtype} {qualified(db, rname)}")
    for (ename,) in _fetch_all(cur, "SELECT event_name FROM information_schema.events "
                                    "WHERE event_schema=%s", (db,)):
        row = _fetch_all(cur, f"SHOW CREATE EVENT {qualified(db, ename)}")[0]
        _run_defined(cur, aside, row[3], row[1], row[5], row[2])
        cur.execute(f"DROP EVENT {qualified(db, ename)}")
    # triggers cannot move between databases: drop, rename the tables, recreate them
    for t in triggers:
        cur.execute(f"DROP TRIGGER {qualified(db, t['name'])}")
    if base:
        cur.execute("RENAME TABLE " + ", ".join(
            f"{qualified(db, t)} TO {qualified(aside, t)}" for t in base))
    for t in triggers:
        try:
            _run_defined(cur, aside, t["create"], t["sql_mode"], t["collation_connection"])
        except pymysql.err.MySQLError as exc:
            problems.append(f"trigger {aside}.{t['name']} not recreated ({exc.args[-1]}): "
                            f"{t['create']}")
    # views: create the copy (pointing at the moved tables), then drop the original
    made = {v["name"] for v in views}
    problems += create_views(cur, aside, views, (f"{quote_ident(db)}.", f"{quote_ident(aside)}."))
    for p in problems:
        if p.startswith("view "):
            made.discard(p.split(".", 1)[1].split(" ", 1)[0])
    for name in made:
        cur.execute(f"DROP VIEW {qualified(db, name)}")
    return aside, problems


# -- loading chunks ---------------------------------------------------------------------------
@dataclass
class _Chunk:
    db: str
    table: str
    staging: str
    columns: list[tsv.Column]
    obj: StoredObject
    rows: int


def _counted(chunks: Iterator[bytes], report: Progress) -> Iterator[bytes]:
    for block in chunks:
        report("data", bytes=len(block))
        yield block


def _load_chunks(target: ConnSpec, store: ObjectStore, chunks: list[_Chunk], options: RestoreOptions,
                 report: Progress) -> tuple[dict[tuple[str, str], int], int]:
    """Load chunks with N connections; each chunk commits only after its checksum verified."""
    work: queue.Queue = queue.Queue()
    for c in sorted(chunks, key=lambda c: -c.obj.raw_size):
        work.put(c)
    loaded: dict[tuple[str, str], int] = {}
    warnings = 0
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def load_one(conn, c: _Chunk) -> None:
        nonlocal warnings
        stream = _counted(iter_object(store, c.obj), report)
        with infile.stream_file(conn, stream) as (name, source), conn.cursor() as cur:
            sql = tsv.load_statement(qualified(c.staging, c.table), name, c.columns)
            try:
                cur.execute(sql)
            except BaseException as exc:
                conn.rollback()
                if source.error is not None:
                    raise source.error from None
                raise _err(exc, f"loading chunk {c.obj.key!r}") from None
            if source.error is not None or not source.done:
                conn.rollback()
                raise source.error or IntegrityError(f"chunk {c.obj.key!r} was not read to its end")
            n = cur.rowcount
            if n != c.rows:
                conn.rollback()
                raise IntegrityError(f"chunk {c.obj.key!r} loaded {n} rows, the manifest says {c.rows}",
                                     "the backup and the target disagree; nothing was kept")
            conn.commit()
            with lock:
                loaded[(c.db, c.table)] = loaded.get((c.db, c.table), 0) + n
                warnings += cur.warning_count
        report("chunk", rows=n, table=f"{c.db}.{c.table}")

    def run(conn) -> None:
        try:
            while not stop.is_set():
                try:
                    c = work.get_nowait()
                except queue.Empty:
                    return
                # A bad copy on one storage target: load the chunk again from another (repo/failover.py).
                retry_on_other_copy(store, c.obj.key, lambda c=c: load_one(conn, c))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            with lock:
                errors.append(exc)
            stop.set()
        finally:
            try:
                conn.close()
            except Exception:
                pass

    conns = [_open(target, options.log_bin, autocommit=False)
             for _ in range(min(options.workers(), max(1, len(chunks))))]
    run_workers(run, conns, stop, "load")
    if errors:
        raise errors[0]
    return loaded, warnings


# -- the service ---------------------------------------------------------------------------------
def restore_snapshot(store: ObjectStore, manifest: BackupManifest, target: ConnSpec,
                     options: RestoreOptions | None = None, progress: Progress | None = None,
                     catalog: Catalog | None = None) -> RestoreResult:
    """Load a snapshot backup into the target server; returns what was done and how long it took."""
    options = options or RestoreOptions()
    report = progress or (lambda *a, **k: None)
    started = time.time()
    if manifest.kind != "snapshot":
        raise UsageError(f"backup {manifest.id} is a {manifest.kind} backup, not a snapshot")
    details = manifest.details
    objects = {o.key: o for o in manifest.objects}
    dbs = [d for d in details.get("databases", [])
           if not options.databases or d["name"] in options.databases]
    missing = set(options.databases) - {d["name"] for d in dbs}
    if missing:
        raise UsageError(f"backup {manifest.id} has no database {sorted(missing)[0]!r}")
    schemas = {d["name"]: json.loads(read_object(store, objects[d["schema_key"]])) for d in dbs}
    tables = [t for t in details.get("tables", []) if t["db"] in schemas]
    conn = _open(target, options.log_bin)
    try:  # never onto the source by accident; in place: the history break is recorded first
        is_source = check_target(conn, target, [manifest.source], options.source, options.in_place,
                                 manifest.point.gtid)
        gap = None
        if is_source:
            gap = record_timeline_break(conn, catalog or Catalog(store), manifest.source.source_id,
                                        f"in-place restore of backup {manifest.id}: {is_source}")
    except BaseException:
        conn.close()
        raise
    cur = conn.cursor()
    names = list(schemas)
    existing = _existing(cur, names)
    if existing and not options.force:
        conn.close()
        raise UsageError(f"target {target.display()} already holds database(s) "
                         f"{', '.join(existing)}; nothing was changed",
                         "use --force to move them aside as <db>_before_<timestamp>")
    token = uuid.uuid4().hex[:8]
    staging = {db: f"bkrestore_{token}_{i}" for i, db in enumerate(names)}
    created: list[str] = []
    report("plan", tables=len(tables), chunks=sum(len(t["chunks"]) for t in tables),
           bytes=sum(c["raw_size"] for t in tables for c in t["chunks"]),
           rows=sum(t["rows"] for t in tables))
    try:
        # 1. schema of the tables, in staging databases
        _create_staging(cur, schemas, staging, created)
        # 2. data
        chunks = [_Chunk(t["db"], t["name"], staging[t["db"]],
                         [tsv.Column.from_list(c) for c in t["columns"]], objects[c["key"]], c["rows"])
                  for t in tables for c in t["chunks"]]
        loaded, warnings = _load_chunks(target, store, chunks, options, report)
        for t in tables:
            got = loaded.get((t["db"], t["name"]), 0)
            if got != t["rows"]:
                raise IntegrityError(f"table {t['db']}.{t['name']} has {got} rows after the load, "
                                     f"the manifest says {t['rows']}")
        # 3. checksums
        verified = 0
        if options.verify:
            verified = _verify(cur, tables, staging)
        # 4. into place
        moved: dict[str, str] = {}
        problems: list[str] = []
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(started))
        for db in existing:
            aside, probs = move_aside(cur, db, stamp)
            moved[db] = aside
            problems += probs
    except BaseException:
        _drop_staging(cur, created)
        conn.close()
        raise
    try:
        for db, stg in staging.items():
            s = schemas[db]
            if db in existing:
                cur.execute(f"ALTER DATABASE {quote_ident(db)} CHARACTER SET {s['charset']} "
                            f"COLLATE {s['collation']}")
            else:
                cur.execute(s["create"])
            if s["tables"]:
                cur.execute("RENAME TABLE " + ", ".join(
                    f"{qualified(stg, t['name'])} TO {qualified(db, t['name'])}" for t in s["tables"]))
        _drop_staging(cur, created)
        # 5. views, routines, triggers, events: last
        for db in names:
            problems += _create_objects(cur, db, schemas[db])
        if options.include_users and details.get("users_key"):
            problems += _create_users(cur, store, objects[details["users_key"]])
    finally:
        conn.close()
    finished = time.time()
    result = RestoreResult(
        backup_id=manifest.id, target=target.display(), databases=names, tables=len(tables),
        rows=sum(loaded.values()), raw_bytes=sum(c.obj.raw_size for c in chunks), started_at=started,
        finished_at=finished, moved_aside=moved, verified_tables=verified, warnings=warnings,
        problems=problems, timeline_break=gap.to_dict() if gap else None)
    if gap is not None:
        result.notes.append(break_note(gap))
    if options.record:
        catalog = catalog or Catalog(store)
        record = {"kind": "snapshot", "backup_id": manifest.id, "target": result.target,
                  "started_at": started, "finished_at": finished,
                  "started_at_utc": utc_iso(started), "finished_at_utc": utc_iso(finished),
                  "duration": round(result.duration, 3), "rows": result.rows,
                  "raw_bytes": result.raw_bytes, "databases": names, "verified": options.verify,
                  "moved_aside": moved}
        result.record_id = catalog.commit_restore_record(record)
    report("done", result=result)
    return result


def _verify(cur, tables: list[dict[str, Any]], staging: dict[str, str]) -> int:
    """CHECKSUM TABLE of each loaded table against the value taken inside the snapshot."""
    verified = 0
    for t in tables:
        want = t.get("checksum")
        if want is None:
            continue
        cur.execute(f"CHECKSUM TABLE {qualified(staging[t['db']], t['name'])}")
        got = cur.fetchone()[1]
        if got is None or int(got) != int(want):
            raise IntegrityError(f"table {t['db']}.{t['name']}: CHECKSUM TABLE {got} after the load, "
                                 f"{want} at snapshot time", "nothing was kept on the target")
        verified += 1
    return verified


def _create_staging(cur, schemas: dict[str, dict[str, Any]], staging: dict[str, str], created: list[str],
                    only: dict[str, list[str]] | None = None) -> None:
    """Each database's staging database (its charset and collation) with its tables: every table
    of the schema, or only the names in only[db] (in that order); appends each to created."""
    for db, stg in staging.items():
        s = schemas[db]
        cur.execute(f"CREATE DATABASE {quote_ident(stg)} CHARACTER SET {s['charset']} "
                    f"COLLATE {s['collation']}")
        created.append(stg)
        cur.execute(f"USE {quote_ident(stg)}")
        creates = {t["name"]: t["create"] for t in s["tables"]}
        for name in creates if only is None else only[db]:
            try:
                cur.execute(creates[name])
            except pymysql.err.MySQLError as exc:
                raise _err(exc, f"cannot create table {db}.{name}") from None


def _drop_staging(cur, created: list[str]) -> None:
    """Drop the staging databases this restore created (they hold only this restore's rows)."""
    for stg in created:
        try:
            cur.execute(f"DROP DATABASE IF EXISTS {quote_ident(stg)}")
        except Exception:
            pass


def _create_objects(cur, db: str, schema: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    for r in schema.get("routines", []):
        try:
            _run_defined(cur, db, r["create"], r["sql_mode"], r.get("collation_connection"))
        except pymysql.err.MySQLError as exc:
            problems.append(f"{r['type'].lower()} {db}.{r['name']} not created: {exc.args[-1]}")
    problems += create_views(cur, db, schema.get("views", []))
    for t in schema.get("triggers", []):
        try:
            _run_defined(cur, db, t["create"], t["sql_mode"], t.get("collation_connection"))
        except pymysql.err.MySQLError as exc:
            problems.append(f"trigger {db}.{t['name']} not created: {exc.args[-1]}")
    for e in schema.get("events", []):
        try:
            _run_defined(cur, db, e["create"], e["sql_mode"], e.get("collation_connection"),
                         e.get("time_zone"))
        except pymysql.err.MySQLError as exc:
            problems.append(f"event {db}.{e['name']} not created: {exc.args[-1]}")
    return problems


def _create_users(cur, store: ObjectStore, obj: StoredObject) -> list[str]:
    problems = []
    for stmt in read_object(store, obj).decode().split(";\n"):
        if not stmt.strip():
            continue
        try:
            cur.execute(stmt)
        except pymysql.err.MySQLError as exc:
            problems.append(f"{stmt.split(' IDENTIFIED')[0][:80]}: {exc.args[-1]}")
    return problems
