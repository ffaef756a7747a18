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

import json
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pymysql
import pymysql.cursors

from backupkit.errors import BackupkitError, IntegrityError, SourceError
from backupkit.mysql import tsv
from backupkit.mysql.connection import ConnSpec, connect
from backupkit.mysql.server import ServerFacts, identity, server_facts
from backupkit.repo import layout
from backupkit.repo.catalog import BackupManifest, BinlogPoint, Catalog, new_backup_id
from backupkit.repo.codec import StoredObject, put_object
from backupkit.storage.base import ObjectStore
from backupkit.strategies.snapshot_schema import (
    DatabaseSchema,
    TableInfo,
    list_databases,
    read_database,
    read_users,
)
from backupkit.util.workers import prefetched, run_workers

MIB = 1 << 20
BATCH_BYTES = 2 * MIB  # aim of one GROUP_CONCAT batch
BLOCK_BYTES = 1 * MIB  # rows are handed to zstd in blocks of about this size
SESSION_SQL = ("SET SESSION time_zone='+00:00', sql_mode='NO_AUTO_VALUE_ON_ZERO', "
               "net_read_timeout=600, net_write_timeout=600")

Progress = Callable[..., None]


@dataclass
class SnapshotOptions:
    """What to copy and how; the CLI fills it from flags and the policy's [snapshot] section."""

    databases: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)  # db.table, fnmatch patterns allowed
    include_users: bool = False
    parallel: int | None = None  # default: the number of cores
    chunk_size_mb: int = 64
    compression_level: int = 1
    checksums: bool = True  # CHECKSUM TABLE inside the snapshot, for restore --verify
    source_id: str | None = None
    backup_id: str | None = None

    @classmethod
    def from_policy(cls, section, **overrides: Any) -> SnapshotOptions:
        """Options from a config.SnapshotSection, with non-None overrides on top."""
        opts = cls(databases=list(section.databases), tables=list(section.tables),
                   include_users=section.include_users, parallel=section.parallel,
                   chunk_size_mb=section.chunk_size_mb,
                   compression_level=section.compression_level)
        for k, v in overrides.items():
            if v is not None and v != [] and hasattr(opts, k):
                setattr(opts, k, v)
        return opts

    def workers(self) -> int:
        return max(1, int(self.parallel or os.cpu_count() or 1))


@dataclass
class ChunkTask:
    """One range of one table's key: lo <= key < hi (None: unbounded)."""

    table: TableInfo
    index: int
    lo: Any = None
    hi: Any = None
    est_bytes: int = 0

    def describe(self) -> dict[str, Any]:
        return {"lo": _jsonable(self.lo), "hi": _jsonable(self.hi)}


@dataclass
class ChunkResult:
    table: str
    index: int
    obj: StoredObject
    rows: int
    range: dict[str, Any]
    seconds: float


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (bytes, bytearray)):
        return "0x" + bytes(v).hex()
    return str(v)


# -- connections --------------------------------------------------------------------------
def _open(spec: ConnSpec, **kw) -> pymysql.connections.Connection:
    conn = connect(spec, **kw)
    with conn.cursor() as cur:
        cur.execute(SESSION_SQL)
        cur.execute("SELECT @@max_allowed_packet")
        limit = int(cur.fetchone()[0])
        cur.execute(f"SET SESSION group_concat_max_len={limit}")
    conn.backupkit_max_packet = limit  # type: ignore[attr-defined]
    return conn


def _sql_error(exc: BaseException, what: str) -> BackupkitError:
    if isinstance(exc, BackupkitError):
        return exc
    code = exc.args[0] if getattr(exc, "args", None) else 0
    msg = exc.args[1] if len(getattr(exc, "args", ())) > 1 else str(exc)
    hint = None
    if code in (1227, 1044, 1045, 1142):
        hint = "the backup user needs SELECT, SHOW VIEW, TRIGGER, EVENT, RELOAD and BINLOG MONITOR"
    elif code == 1412:
        hint = "a table changed its definition during the snapshot; run it again"
    elif code in (2006, 2013):
        hint = "the connection to the source was lost"
    return SourceError(f"{what}: {msg}", hint)


# -- planning -------------------------------------------------------------------------------
def plan_table(cur, table: TableInfo, chunk_bytes: int) -> list[ChunkTask]:
    """Cut one table into key ranges of about chunk_bytes (by the size estimate of the server)."""
    n = max(1, math.ceil(table.est_bytes / chunk_bytes)) if table.est_bytes else 1
    if n == 1 or not table.key:
        return [ChunkTask(table, 0, est_bytes=table.est_bytes)]
    k = tsv.quote_ident(table.key[0])
    if table.key_is_int:
        cur.execute(f"SELECT MIN({k}), MAX({k}) FROM {table.sql}")
        lo, hi = cur.fetchone()
        if lo is None:
            return [ChunkTask(table, 0)]
        step = max(1, math.ceil((int(hi) - int(lo) + 1) / n))
        bounds = [int(lo) + step * i for i in range(1, n) if int(lo) + step * i <= int(hi)]
    else:
        rows_per = max(1, (table.est_rows or 1) * chunk_bytes // max(table.est_bytes, 1))
        cols = ", ".join(tsv.quote_ident(c) for c in table.key)
        bounds = []
        last: tuple | None = None
        while True:
            where, args = ("", ()) if last is None else (f"WHERE {_row_cmp(table.key, '>')}", last)
            cur.execute(f"SELECT {cols} FROM {table.sql} {where} ORDER BY {cols} "
                        f"LIMIT 1 OFFSET {rows_per}", args)
            row = cur.fetchone()
            if row is None:
                break
            bounds.append(tuple(row))
            last = tuple(row)
    edges = [None, *bounds, None]
    per = table.est_bytes // max(1, len(edges) - 1)
    return [ChunkTask(table, i, edges[i], edges[i + 1], per) for i in range(len(edges) - 1)]


def _row_cmp(key: list[str], op: str) -> str:
    cols = ", ".join(tsv.quote_ident(c) for c in key)
    marks = ", ".join(["%s"] * len(key))
    return f"({cols}) {op} ({marks})" if len(key) > 1 else f"{tsv.quote_ident(key[0])} {op} %s"


def _range_where(task: ChunkTask) -> tuple[str, tuple]:
    parts, args = [], []
    for value, op in ((task.lo, ">="), (task.hi, "<")):
        if value is None:
            continue
        vals = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        parts.append(_row_cmp(task.table.key if len(vals) > 1 else task.table.key[:1], op))
        args.extend(vals)
    return (" AND ".join(parts), tuple(args))


# -- reading one chunk ---------------------------------------------------------------------------
class ChunkReader:
    """The rows of one chunk as escaped TSV blocks, read inside the worker's snapshot."""

    def __init__(self, conn, task: ChunkTask, on_data: Callable[[int, int], None],
                 stop: threading.Event) -> None:
        self.conn = conn
        self.task = task
        self.rows = 0
        self.on_data = on_data
        self.stop = stop
        self.expr = tsv.row_expression(task.table.columns)
        # The optimistic form: text columns unescaped, checked by counts in plain_form_ok (the
        # server's REPLACE()s are about 40% of its formatting work; most text holds no TAB, LF or
        # backslash). A batch that fails the check is read again escaped, and so are the next ones.
        cols = task.table.columns
        self.plain_expr = tsv.row_expression(cols, escaped=False) if tsv.has_text(cols) else None
        self.nulls_expr = tsv.null_count_expression(cols)
        self.escape_next = 0  # batches to read escaped before trying the plain form again
        self.escape_window = 1
        self.plain_batches = self.escaped_batches = 0

    def __iter__(self) -> Iterator[bytes]:
        if self.task.table.key_is_int:
            yield from self._batched()
        else:
            yield from self._streamed()

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise BackupkitError("snapshot stopped because another worker failed")

    def _batched(self) -> Iterator[bytes]:
        """Integer key: one GROUP_CONCAT per key sub-range, sized adaptively to ~BATCH_BYTES."""
        t = self.task.table
        k = tsv.quote_ident(t.key[0])
        cur = self.conn.cursor()
        lo, hi = self.task.lo, self.task.hi
        if lo is None or hi is None:
            where, args = _range_where(self.task)
            cur.execute(f"SELECT MIN({k}), MAX({k}) FROM {t.sql}" + (f" WHERE {where}" if where else ""),
                        args)
            mn, mx = cur.fetchone()
            if mn is None:
                return
            lo = int(mn) if lo is None else lo
            hi = int(mx) + 1 if hi is None else hi
        step = 4096
        limit = getattr(self.conn, "backupkit_max_packet", 16 * MIB)
        ncols = len(t.columns)
        a = lo
        while a < hi:
            self._check_stop()
            b = min(hi, a + step)
            count = blob = None
            checked = False  # the plain form's counts already proved the batch whole
            if self.plain_expr is not None and not self.escape_next:
                cur.execute(f"SELECT COUNT(*), GROUP_CONCAT({self.plain_expr} SEPARATOR '\\n'), "
                            f"SUM({self.nulls_expr}) FROM {t.sql} WHERE {k} >= %s AND {k} < %s", (a, b))
                count, blob, nulls = cur.fetchone()
                count = int(count)
                cut = blob is not None and len(blob) >= limit  # by group_concat_max_len
                if cut and b - a > 1:
                    step = max(1, (b - a) // 4)
                    continue
                if count and (cut or blob is None
                              or not tsv.plain_form_ok(blob, count, ncols, int(nulls or 0))):
                    # TAB, LF or backslash in the data: this batch and the next ones escaped,
                    # for twice as many batches each time it happens again
                    self.escape_window = min(self.escape_window * 2, 256)
                    self.escape_next = self.escape_window
                    count = None
                else:
                    self.escape_window = max(1, self.escape_window // 2)
                    self.plain_batches += 1
                    checked = True
            if count is None:
                self.escape_next = max(0, self.escape_next - 1)
                cur.execute(f"SELECT COUNT(*), GROUP_CONCAT({self.expr} SEPARATOR '\\n') FROM {t.sql} "
                            f"WHERE {k} >= %s AND {k} < %s", (a, b))
                count, blob = cur.fetchone()
                count = int(count)
                self.escaped_batches += 1
            if count and not checked and (blob is None or blob.count(b"\n") + 1 != count):
                if b - a > 1:  # cut by group_concat_max_len: a smaller range
                    step = max(1, (b - a) // 4)
                    continue
                yield from self._streamed_range(a, b)  # one row: read it alone
                a = b
                continue
            if count:
                self.rows += count
                self.on_data(count, len(blob) + 1)
                yield blob + b"\n"
                size = len(blob) + 1
            else:
                size = 0
            a = b
            # aim at BATCH_BYTES per query, within the packet limit
            if size == 0:
                step = min(step * 4, 1 << 40)
            else:
                want = max(1, int(step * min(BATCH_BYTES, limit // 4) / size))
                step = max(1, min(want, step * 4))

    def _streamed_range(self, a: int, b: int) -> Iterator[bytes]:
        t = self.task.table
        k = tsv.quote_ident(t.key[0])
        yield from self._stream(f"SELECT {self.expr} FROM {t.sql} WHERE {k} >= %s AND {k} < %s", (a, b))

    def _streamed(self) -> Iterator[bytes]:
        where, args = _range_where(self.task) if self.task.table.key else ("", ())
        sql = f"SELECT {self.expr} FROM {self.task.table.sql}" + (f" WHERE {where}" if where else "")
        yield from self._stream(sql, args)

    def _stream(self, sql: str, args: tuple) -> Iterator[bytes]:
        cur = self.conn.cursor(pymysql.cursors.SSCursor)
        try:
            cur.execute(sql, args)
            buf: list[bytes] = []
            size = 0
            n = 0
            for (row,) in cur.fetchall_unbuffered():
                buf.append(row if isinstance(row, bytes) else row.encode())
                size += len(buf[-1]) + 1
                n += 1
                if size >= BLOCK_BYTES:
                    self._check_stop()
                    self.rows += n
                    self.on_data(n, size)
                    yield b"\n".join(buf) + b"\n"
                    buf, size, n = [], 0, 0
            if buf:
                self.rows += n
                self.on_data(n, size)
                yield b"\n".join(buf) + b"\n"
        finally:
            cur.close()


# -- the consistent point ---------------------------------------------------------------------------
@dataclass
class Consistency:
    point: BinlogPoint
    method: str
    blocked_ms: float
    ddl_blocked_ms: float
    schemas: list[DatabaseSchema]
    users: list[str] | None
    block_statement_ms: float = 0.0  # of blocked_ms: the blocking statement itself


def _status(cur, name: str) -> str:
    cur.execute("SHOW STATUS LIKE %s", (name,))
    row = cur.fetchone()
    return row[1] if row else ""


def _read_schema(cur, facts: ServerFacts, options: SnapshotOptions) -> tuple[list[DatabaseSchema],
                                                                             list[str] | None]:
    schemas = []
    for db, cs, coll in list_databases(cur, options.databases, options.tables):
        schemas.append(read_database(cur, db, cs, coll, facts.flavor, options.tables))
    users = read_users(cur, facts.flavor) if options.include_users else None
    return schemas, users


def open_snapshots_mariadb(coord, workers: list, facts: ServerFacts,
                           options: SnapshotOptions) -> Consistency:
    """BACKUP STAGE: DDL blocked while the schema is read, commits blocked while snapshots open."""
    cur = coord.cursor()
    t_ddl = time.monotonic()
    cur.execute("BACKUP STAGE START")
    ended = False
    try:
        cur.execute("BACKUP STAGE BLOCK_DDL")
        schemas, users = _read_schema(cur, facts, options)
        blocked = 0.0
        block_stmt = 0.0
        if len(workers) > 1:
            t0 = time.monotonic()
            cur.execute("BACKUP STAGE BLOCK_COMMIT")  # also fsyncs the binlog: see docs/snapshot.md
            block_stmt = (time.monotonic() - t0) * 1000
        wall = time.time()
        points = []
        for w in workers:
            with w.cursor() as wc:
                wc.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                points.append((_status(wc, "binlog_snapshot_file"),
                               int(_status(wc, "binlog_snapshot_position") or 0)))
        cur.execute("BACKUP STAGE END")
        ended = True
        if len(workers) > 1:
            blocked = (time.monotonic() - t0) * 1000
        ddl_ms = (time.monotonic() - t_ddl) * 1000
    finally:
        if not ended:
            try:
                cur.execute("BACKUP STAGE END")
            except pymysql.err.MySQLError:
                pass  # the connection is gone: the server ends the stage itself
    if len(set(points)) != 1:
        raise IntegrityError(f"snapshot workers saw different binlog points {sorted(set(points))}",
                             "the commit block did not hold; report this as a bug")
    file, pos = points[0]
    gtid = ""
    if file:
        cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", (file, pos))
        gtid = cur.fetchone()[0] or ""
    method = "backup_stage_block_commit" if len(workers) > 1 else "consistent_snapshot"
    return Consistency(BinlogPoint(file, pos, gtid, wall), method, blocked, ddl_ms, schemas, users,
                       block_stmt)


def open_snapshots_mysql(coord, workers: list, facts: ServerFacts,
                         options: SnapshotOptions) -> Consistency:
    """MySQL 8: LOCK INSTANCE FOR BACKUP blocks DDL; FTWRL blocks commits while snapshots open."""
    cur = coord.cursor()
    t_ddl = time.monotonic()
    locked_instance = False
    try:
        try:
            cur.execute("LOCK INSTANCE FOR BACKUP")
            locked_instance = True
        except pymysql.err.MySQLError:
            locked_instance = False  # before 8.0 or no BACKUP_ADMIN: DDL stays possible
        schemas, users = _read_schema(cur, facts, options)
        t0 = time.monotonic()
        cur.execute("FLUSH TABLES WITH READ LOCK")
        ftwrl_ms = (time.monotonic() - t0) * 1000
        try:
            wall = time.time()
            for w in workers:
                with w.cursor() as wc:
                    wc.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            file, pos, gtid = _mysql_position(cur, facts)
        finally:
            cur.execute("UNLOCK TABLES")
        blocked = (time.monotonic() - t0) * 1000
        ddl_ms = (time.monotonic() - t_ddl) * 1000
    finally:
        if locked_instance:
            cur.execute("UNLOCK INSTANCE")
    return Consistency(BinlogPoint(file, pos, gtid, wall), "ftwrl", blocked, ddl_ms, schemas, users,
                       ftwrl_ms)


def _mysql_position(cur, facts: ServerFacts) -> tuple[str, int, str]:
    """Binlog file, position and gtid_executed while commits are blocked (MySQL)."""
    if facts.version_tuple >= (8, 0, 22):
        try:
            cur.execute("SELECT LOCAL FROM performance_schema.log_status")
            row = cur.fetchone()
            if row and row[0]:
                local = json.loads(row[0])
                return (local.get("binary_log_file", ""), int(local.get("binary_log_position", 0)),
                        (local.get("gtid_executed") or "").replace("\n", ""))
        except pymysql.err.MySQLError:
            pass  # needs BACKUP_ADMIN; fall back to the status statements
    sql = "SHOW BINARY LOG STATUS" if facts.version_tuple >= (8, 2, 0) else "SHOW MASTER STATUS"
    cur.execute(sql)
    row = cur.fetchone()
    if not row:
        return ("", 0, "")
    gtid = row[4] if len(row) > 4 and row[4] else ""
    return (row[0], int(row[1]), str(gtid).replace("\n", ""))


# -- the service ----------------------------------------------------------------------------------
def take_snapshot(spec: ConnSpec, store: ObjectStore, options: SnapshotOptions,
                  progress: Progress | None = None) -> BackupManifest:
    """Take a consistent snapshot of the source into store and commit its manifest (last)."""
    started = time.time()
    report = progress or (lambda *a, **k: None)
    n = options.workers()
    chunk_bytes = options.chunk_size_mb * MIB
    backup_id = options.backup_id or new_backup_id("snapshot", started)
    catalog = Catalog(store)
    coord = _open(spec)
    workers: list = []
    try:
        facts = server_facts(coord)
        source = identity(facts, options.source_id)
        catalog.ensure_repo()
        # With several workers, CHECKSUM TABLE runs on one more connection in the same snapshot,
        # beside the readers, and that connection then reads chunks too: the work ends evenly.
        extra = 1 if options.checksums and n > 1 else 0
        workers = [_open(spec, autocommit=False) for _ in range(n + extra)]
        for w in workers:
            with w.cursor() as wc:
                wc.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        opener = open_snapshots_mariadb if facts.is_mariadb else open_snapshots_mysql
        try:
            cons = opener(coord, workers, facts, options)
        except pymysql.err.MySQLError as exc:
            raise _sql_error(exc, "cannot open a consistent snapshot") from None
        tables = [t for s in cons.schemas for t in s.tables]
        with coord.cursor() as cur:
            try:
                tasks = [task for t in tables for task in plan_table(cur, t, chunk_bytes)]
            except pymysql.err.MySQLError as exc:
                raise _sql_error(exc, "cannot plan the chunks") from None
        tasks.sort(key=lambda task: -task.est_bytes)  # largest first: workers end together
        report("plan", tables=len(tables), chunks=len(tasks),
               est_bytes=sum(t.est_bytes for t in tables))
        objects, results, checksums = _run_workers(store, backup_id, workers, tasks, tables,
                                                   options, report)
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
        "options": {"databases": options.databases, "tables": options.tables,
                    "include_users": options.include_users, "parallel": n,
                    "chunk_size_mb": options.chunk_size_mb,
                    "compression_level": options.compression_level},
    }
    stats = {"tables": len(tables), "rows": sum(t["rows"] for t in table_rows),
             "chunks": len(results), "raw_bytes": raw, "stored_bytes": stored,
             "duration": round(finished - started, 3), "blocked_ms": round(cons.blocked_ms, 3)}
    from backupkit import __version__

    manifest = BackupManifest(id=backup_id, kind="snapshot", source=source, point=cons.point,
                              started_at=started, finished_at=finished, objects=objects,
                              stats=stats, details=details, tool_version=__version__)
    catalog.commit_backup(manifest)
    report("done", manifest=manifest)
    return manifest


def _run_workers(store: ObjectStore, backup_id: str, workers: list, tasks: list[ChunkTask],
                 tables: list[TableInfo], options: SnapshotOptions, report: Progress,
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
                reader = ChunkReader(conn, item, on_data, stop)
                key = layout.snapshot_chunk(backup_id, item.table.db, item.table.name, item.index)
                # the next batch is read while this one is compressed and stored
                blocks = prefetched(reader, depth=2, name=f"read-{item.table.name}-{item.index}")
                try:
                    obj = put_object(store, key, blocks, options.compression_level)
                finally:
                    blocks.close()
                res = ChunkResult(item.table.full_name, item.index, obj, reader.rows,
                                  item.describe(), time.monotonic() - t0)
                with lock:
                    objects.append(obj)
                    results.append(res)
                    remaining[item.table.full_name] -= 1
                    done = remaining[item.table.full_name] == 0
                if done:
                    report("table", name=item.table.full_name)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                name = item.full_name if kind == "checksum" else item.table.full_name
                if isinstance(exc, pymysql.err.MySQLError):
                    exc = _sql_error(exc, f"reading {name}")
                with lock:
                    errors.append(exc)
                stop.set()
                return

    run_workers(run, workers, stop, "snapshot")
    if errors:
        primary = [e for e in errors if "another worker failed" not in str(e)]
        raise (primary or errors)[0]
    return objects, results, checksums
