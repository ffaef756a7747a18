"""The hot snapshot: a consistent, parallel, streamed logical copy of a live server.

One consistent point for everything: N worker connections each open
``START TRANSACTION WITH CONSISTENT SNAPSHOT`` while commits are blocked for a few milliseconds
(MariaDB ``BACKUP STAGE BLOCK_COMMIT``, MySQL ``FLUSH TABLES WITH READ LOCK``), so they all see the
same data, and that data is exactly the binlog position the manifest records. DDL is blocked
while the schema is read (``BACKUP STAGE BLOCK_DDL`` / ``LOCK INSTANCE FOR BACKUP``), so the
recorded DDL matches the data.

Tables are cut into chunks by primary key (about ``chunk_size_mb`` of data each). The server
formats every row in the escaped tab-separated form of ``backupkit.mysql.tsv``; each chunk is
streamed through zstd into one object. CHECKSUM TABLE of every table runs inside the same
snapshot, so ``restore --verify`` can compare against values of exactly the backed-up data.
The manifest is written last, through ``Catalog.commit_backup``.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import queue
import threading
import time

import pymysql
import pymysql.cursors

from backupkit import __version__
from backupkit.errors import UsageError
from backupkit.mysql import tsv
from backupkit.mysql.connection import ConnSpec
from backupkit.mysql.replica import check_replica, replica_info
from backupkit.mysql.server import identity, server_facts
from backupkit.repo import layout
from backupkit.repo.catalog import BackupManifest, Catalog, new_backup_id
from backupkit.repo.codec import StoredObject, put_object
from backupkit.repo.scope import Scope
from backupkit.storage.base import ObjectStore
from backupkit.strategies.snapshot.chunks import (
    MIB,
    ChunkResult,
    ChunkTask,
    TableChunkReader,
    open_session,
    plan_table,
    sql_error,
)
from backupkit.strategies.snapshot.consistency import (
    Consistency,
    open_snapshots_mariadb,
    open_snapshots_mysql,
)
from backupkit.strategies.snapshot.options import Progress, SnapshotOptions
from backupkit.strategies.snapshot.schema import (
    TableInfo,
    list_databases,
)
from backupkit.strategies.snapshot.watchdog import LockWaitExceeded, LockWatchdog
from backupkit.util.ratelimit import TokenBucket, throttle
from backupkit.util.workers import prefetched, run_workers

log = logging.getLogger(__name__)


def take_snapshot(spec: ConnSpec, store: ObjectStore, options: SnapshotOptions,
                  progress: Progress | None = None) -> BackupManifest:
    """Take a consistent snapshot of the source into store and commit its manifest (last).

    On any failure (Ctrl-C included) the objects it uploaded are removed again."""
    started = time.time()
    backup_id = options.backup_id or new_backup_id("snapshot", started)
    try:
        return _take(spec, store, options, progress, backup_id, started)
    except BaseException:
        remove_uncommitted(store, backup_id)
        raise


def open_consistent(spec: ConnSpec, coord, workers: list, facts, options: SnapshotOptions,
                    report: Progress) -> Consistency:
    """The consistency step under the lock watchdog: a stage that waits longer than
    options.max_lock_wait is cut, everything is released, and it is tried again after
    options.lock_backoff seconds, at most options.lock_retries more times."""
    opener = open_snapshots_mariadb if facts.is_mariadb else open_snapshots_mysql
    exclude = {w.thread_id() for w in workers}
    attempts = 1 + max(0, options.lock_retries)
    for attempt in range(1, attempts + 1):
        watchdog = LockWatchdog(lambda: open_session(spec), coord, options.max_lock_wait, exclude)
        try:
            cons = opener(coord, workers, facts, options, watchdog)
            cons.lock_attempts = attempt
            return cons
        except LockWaitExceeded as exc:
            for w in workers:  # a worker may hold a snapshot from a cut attempt
                w.rollback()
            if attempt == attempts:
                raise LockWaitExceeded(exc.stage, exc.waited, exc.blocker, attempts) from None
            log.warning("%s; backing off %.1f s (attempt %d of %d)", exc.one_line(),
                        options.lock_backoff, attempt, attempts)
            report("lock_backoff", stage=exc.stage, attempt=attempt,
                   blocker=exc.blocker.describe() if exc.blocker else None)
            time.sleep(options.lock_backoff)
        except pymysql.err.MySQLError as exc:
            raise sql_error(exc, "cannot open a consistent snapshot") from None
        finally:
            watchdog.close()
    raise AssertionError("unreachable")


def remove_uncommitted(store: ObjectStore, backup_id: str) -> list[str]:
    """Delete the objects of a backup that failed before its manifest was written; a backup
    whose manifest exists (a commit that failed only in its reply) is left alone."""
    try:
        if store.stat(layout.backup_manifest(backup_id)) is not None:
            return []
        keys = [i.key for i in store.list(layout.backup_prefix(backup_id))]
        if keys:
            store.delete(keys)
        return keys
    except Exception as exc:  # noqa: BLE001 - the first failure is the one to report
        log.warning("could not remove the objects of the failed backup %s: %s", backup_id, exc)
        return []


def _take(spec: ConnSpec, store: ObjectStore, options: SnapshotOptions, progress: Progress | None,
          backup_id: str, started: float) -> BackupManifest:
    report = progress or (lambda *a, **k: None)
    n = options.workers()
    chunk_bytes = options.chunk_size_mb * MIB
    catalog = Catalog(store)
    coord = open_session(spec)
    workers: list = []
    try:
        facts = server_facts(coord)
        source = identity(facts, options.source_id)
        replica = replica_info(coord) if facts.is_mariadb else None
        for warning in check_replica(replica, shipping=False, max_lag=options.max_replica_lag):
            log.warning("%s", warning)
        catalog.ensure_repo()
        # With several workers, CHECKSUM TABLE runs on one more connection in the same snapshot,
        # beside the readers, and that connection then reads chunks too: the work ends evenly.
        extra = 1 if options.checksums and n > 1 else 0
        workers = [open_session(spec, autocommit=False) for _ in range(n + extra)]
        for w in workers:
            with w.cursor() as wc:
                wc.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        _check_filters(coord, options)  # before any lock, and before anything is written
        cons = open_consistent(spec, coord, workers, facts, options, report)
        tables = [t for s in cons.schemas for t in s.tables]
        with coord.cursor() as cur:
            try:
                tasks = [task for t in tables for task in plan_table(cur, t, chunk_bytes)]
            except pymysql.err.MySQLError as exc:
                raise sql_error(exc, "cannot plan the chunks") from None
        tasks.sort(key=lambda task: -task.est_bytes)  # largest first: workers end together
        report("plan", tables=len(tables), chunks=len(tasks),
               est_bytes=sum(t.est_bytes for t in tables))
        span: dict[str, float] = {}
        objects, results, checksums = _run_workers(store, backup_id, workers, tasks, tables,
                                                   options, report, span)
        schema_objects = {}
        for s in cons.schemas:
            body = json.dumps(s.to_dict(), ensure_ascii=False, sort_keys=True).encode()
            obj = put_object(store, layout.snapshot_schema(backup_id, s.name), body,
                             options.compression_level)
            objects.append(obj)
            schema_objects[s.name] = obj.key
        users_key = None
        if cons.users is not None:
            text = "".join(stmt + ";\n" for stmt in cons.users).encode()
            obj = put_object(store, layout.snapshot_globals(backup_id), text, options.compression_level)
            objects.append(obj)
            users_key = obj.key
    finally:
        for w in workers:
            try:
                w.close()
            except Exception:
                pass
        coord.close()
    finished = time.time()
    by_table: dict[str, list[ChunkResult]] = {}
    for r in results:
        by_table.setdefault(r.table, []).append(r)
    table_rows = []
    for t in tables:
        chunks = sorted(by_table.get(t.full_name, []), key=lambda r: r.index)
        table_rows.append({
            "db": t.db, "name": t.name, "rows": sum(c.rows for c in chunks),
            "checksum": checksums.get(t.full_name),
            "columns": [c.to_list() for c in t.columns], "key": t.key, "engine": t.engine,
            "chunks": [{"index": c.index, "key": c.obj.key, "rows": c.rows, "range": c.range,
                        "raw_size": c.obj.raw_size, "size": c.obj.size} for c in chunks],
        })
    raw = sum(o.raw_size for o in objects)
    stored = sum(o.size for o in objects)
    details = {
        "format": tsv.FORMAT,
        "time_zone": "+00:00",
        "consistency": {"method": cons.method, "blocked_ms": round(cons.blocked_ms, 3),
                        "block_statement_ms": round(cons.block_statement_ms, 3),
                        "ddl_blocked_ms": round(cons.ddl_blocked_ms, 3), "workers": n,
                        "lock_attempts": cons.lock_attempts, "max_lock_wait": options.max_lock_wait,
                        "connections": n + extra},
        "checksums": ("CHECKSUM TABLE inside the consistent snapshot" if options.checksums
                      else "not taken"),
        "databases": [{"name": s.name, "charset": s.charset, "collation": s.collation,
                       "schema_key": schema_objects[s.name], "tables": len(s.tables),
                       "views": len(s.views), "triggers": len(s.triggers),
                       "routines": len(s.routines), "events": len(s.events), "skipped": s.skipped}
                      for s in cons.schemas],
        "tables": table_rows,
        "users_key": users_key,
        # what this base covers: a whole-server restore never starts from a partial one
        "scope": Scope(tuple(s.name for s in cons.schemas) if options.databases else (),
                       tuple(options.tables)).to_dict(),
        "options": {"databases": options.databases, "tables": options.tables,
                    "include_users": options.include_users, "parallel": n,
                    "chunk_size_mb": options.chunk_size_mb,
                    "compression_level": options.compression_level,
                    "max_rate": options.max_rate},
    }
    if replica is not None:
        # the source replicates: its point in the primary's history, and how far behind it was
        details["replica"] = {**replica.to_dict(),
                              "gtid_slave_pos": cons.gtid_slave_pos or replica.gtid_slave_pos}
    stats = {"tables": len(tables), "rows": sum(t["rows"] for t in table_rows),
             "chunks": len(results), "raw_bytes": raw, "stored_bytes": stored,
             "duration": round(finished - started, 3), "blocked_ms": round(cons.blocked_ms, 3),
             # from the first chunk's start to the last chunk's end: raw_bytes / data_seconds is
             # the rate the rows were read at (what --max-rate limits)
             "data_seconds": round(span["end"] - span["start"], 3) if span else 0.0}
    manifest = BackupManifest(id=backup_id, kind="snapshot", source=source, point=cons.point,
                              started_at=started, finished_at=finished, objects=objects,
                              stats=stats, details=details, tool_version=__version__)
    catalog.commit_backup(manifest)
    report("done", manifest=manifest)
    return manifest


def _check_filters(coord, options: SnapshotOptions) -> None:
    """Every --databases name (or pattern) and --tables pattern selects something; a typo must
    never commit an empty or smaller snapshot that looks fine."""
    if not options.databases and not options.tables:
        return
    with coord.cursor() as cur:
        names = [name for name, _, _ in list_databases(cur, (), ())]
        missing = [p for p in options.databases if not any(fnmatch.fnmatchcase(n, p) for n in names)]
        if missing:
            raise UsageError(f"no database {', '.join(repr(m) for m in missing)} on the source",
                             f"the source has: {', '.join(names) or 'no user databases'}")
        if options.tables:
            cur.execute("SELECT table_schema, table_name FROM information_schema.tables "
                        "WHERE table_type IN ('BASE TABLE', 'SEQUENCE')")
            full = [f"{_text(d)}.{_text(t)}" for d, t in cur.fetchall()
                    if not options.databases or any(fnmatch.fnmatchcase(_text(d), p)
                                                    for p in options.databases)]
            none = [p for p in options.tables if not any(fnmatch.fnmatchcase(f, p) for f in full)]
            if none:
                raise UsageError(f"no table matches {', '.join(repr(p) for p in none)} on the source",
                                 "give --tables as db.table (patterns allowed)")


def _text(v) -> str:
    return v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else str(v)


def _run_workers(store: ObjectStore, backup_id: str, workers: list, tasks: list[ChunkTask],
                 tables: list[TableInfo], options: SnapshotOptions, report: Progress,
                 span: dict[str, float] | None = None,
                 ) -> tuple[list[StoredObject], list[ChunkResult], dict[str, int | None]]:
    """Each worker thread owns one snapshot connection and takes tasks until none are left."""
    sums: queue.Queue = queue.Queue()  # CHECKSUM TABLE jobs: the first connection starts with them
    work: queue.Queue = queue.Queue()  # chunks: every connection takes them, then the sums left
    if options.checksums:
        for t in tables:
            sums.put(("checksum", t))
    for task in tasks:
        work.put(("chunk", task))
    remaining = {t.full_name: sum(1 for x in tasks if x.table is t) for t in tables}
    limiter = TokenBucket(options.max_rate) if options.max_rate else None  # shared by the workers
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []
    objects: list[StoredObject] = []
    results: list[ChunkResult] = []
    checksums: dict[str, int | None] = {}

    def on_data(rows: int, nbytes: int) -> None:
        report("data", rows=rows, bytes=nbytes)

    def run(conn) -> None:
        order = (sums, work) if conn is workers[-1] else (work, sums)
        while not stop.is_set():
            for q in order:
                try:
                    kind, item = q.get_nowait()
                    break
                except queue.Empty:
                    continue
            else:
                return
            try:
                if kind == "checksum":
                    with conn.cursor() as cur:
                        cur.execute(f"CHECKSUM TABLE {item.sql}")
                        value = cur.fetchone()[1]
                    with lock:
                        checksums[item.full_name] = None if value is None else int(value)
                    continue
                t0 = time.monotonic()
                if span is not None:
                    with lock:
                        span.setdefault("start", t0)
                reader = TableChunkReader(conn, item, on_data, stop)
                key = layout.snapshot_chunk(backup_id, item.table.db, item.table.name, item.index)
                # the next batch is read while this one is compressed and stored
                blocks = prefetched(throttle(reader, limiter), depth=2,
                                    name=f"read-{item.table.name}-{item.index}")
                try:
                    obj = put_object(store, key, blocks, options.compression_level)
                finally:
                    blocks.close()
                res = ChunkResult(item.table.full_name, item.index, obj, reader.rows,
                                  item.describe(), time.monotonic() - t0)
                with lock:
                    if span is not None:
                        span["end"] = time.monotonic()
                    objects.append(obj)
                    results.append(res)
                    remaining[item.table.full_name] -= 1
                    done = remaining[item.table.full_name] == 0
                if done:
                    report("table", name=item.table.full_name)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                name = item.full_name if kind == "checksum" else item.table.full_name
                if isinstance(exc, pymysql.err.MySQLError):
                    exc = sql_error(exc, f"reading {name}")
                with lock:
                    errors.append(exc)
                stop.set()
                return

    run_workers(run, workers, stop, "snapshot")
    if errors:
        primary = [e for e in errors if "another worker failed" not in str(e)]
        raise (primary or errors)[0]
    return objects, results, checksums
