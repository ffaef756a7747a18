"""The consistent point: N worker connections open their snapshots while commits are blocked
for a few milliseconds (MariaDB ``BACKUP STAGE BLOCK_COMMIT``, MySQL ``FLUSH TABLES WITH READ
LOCK``), and the schema is read while DDL is blocked, so DDL, data and binlog point agree."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pymysql
import pymysql.cursors

from backupkit.errors import IntegrityError
from backupkit.mysql.gtid import BinlogPoint
from backupkit.mysql.server import ServerFacts
from backupkit.strategies.snapshot.options import SnapshotOptions
from backupkit.strategies.snapshot.schema import (
    DatabaseSchema,
    list_databases,
    read_database,
    read_users,
)
from backupkit.strategies.snapshot.watchdog import LockWatchdog


@dataclass
class Consistency:
    point: BinlogPoint
    method: str
    blocked_ms: float
    ddl_blocked_ms: float
    schemas: list[DatabaseSchema]
    users: list[str] | None
    block_statement_ms: float = 0.0  # of blocked_ms: the blocking statement itself
    lock_attempts: int = 1  # tries the lock watchdog needed
    # a replica's position in its primary's history, read while commits (the SQL thread's too)
    # were blocked: exact with several workers, read just after the snapshot opened with one
    gtid_slave_pos: str = ""


@contextmanager
def _unguarded(stage: str) -> Iterator[None]:
    yield


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
                           options: SnapshotOptions, watchdog: LockWatchdog | None = None) -> Consistency:
    """BACKUP STAGE: DDL blocked while the schema is read, commits blocked while snapshots open.
    Each stage that may wait for other sessions runs under the watchdog's bound when one is given."""
    guard = watchdog.guard if watchdog else _unguarded
    cur = coord.cursor()
    t_ddl = time.monotonic()
    with guard("BACKUP STAGE START"):  # waits for LOCK TABLES ... WRITE, among others
        cur.execute("BACKUP STAGE START")
    ended = False
    try:
        with guard("BACKUP STAGE BLOCK_DDL"):
            cur.execute("BACKUP STAGE BLOCK_DDL")
        schemas, users = _read_schema(cur, facts, options)
        blocked = 0.0
        block_stmt = 0.0
        if len(workers) > 1:
            t0 = time.monotonic()
            with guard("BACKUP STAGE BLOCK_COMMIT"):
                cur.execute("BACKUP STAGE BLOCK_COMMIT")  # also fsyncs the binlog: see docs/snapshot.md
            block_stmt = (time.monotonic() - t0) * 1000
        wall = time.time()
        points = []
        for w in workers:
            with w.cursor() as wc:
                wc.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                points.append((_status(wc, "binlog_snapshot_file"),
                               int(_status(wc, "binlog_snapshot_position") or 0)))
        cur.execute("SELECT @@gtid_slave_pos")
        slave_pos = (cur.fetchone() or [""])[0] or ""
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
                       block_stmt, gtid_slave_pos=slave_pos)


def open_snapshots_mysql(coord, workers: list, facts: ServerFacts,
                         options: SnapshotOptions, watchdog: LockWatchdog | None = None) -> Consistency:
    """MySQL 8: LOCK INSTANCE FOR BACKUP blocks DDL; FTWRL blocks commits while snapshots open.
    FTWRL runs under the watchdog's bound when one is given (untested here: no MySQL server)."""
    guard = watchdog.guard if watchdog else _unguarded
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
        with guard("FLUSH TABLES WITH READ LOCK"):
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
