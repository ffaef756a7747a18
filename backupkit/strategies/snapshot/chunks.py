"""Tables cut into chunks by primary key, and one chunk read as escaped tab-separated rows.

The server formats every row in the form of ``backupkit.mysql.tsv``; an integer key is read in
GROUP_CONCAT batches sized adaptively, any other key streamed.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pymysql
import pymysql.cursors

from backupkit.errors import BackupkitError, SourceError
from backupkit.mysql import tsv
from backupkit.mysql.connection import ConnSpec, connect
from backupkit.repo.codec import StoredObject
from backupkit.strategies.snapshot.schema import (
    TableInfo,
)

MIB = 1 << 20
BATCH_BYTES = 2 * MIB  # aim of one GROUP_CONCAT batch
BLOCK_BYTES = 1 * MIB  # rows are handed to zstd in blocks of about this size
SESSION_SQL = ("SET SESSION time_zone='+00:00', sql_mode='NO_AUTO_VALUE_ON_ZERO', "
               "net_read_timeout=600, net_write_timeout=600")


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



def open_session(spec: ConnSpec, **kw) -> pymysql.connections.Connection:
    conn = connect(spec, **kw)
    with conn.cursor() as cur:
        cur.execute(SESSION_SQL)
        cur.execute("SELECT @@max_allowed_packet")
        limit = int(cur.fetchone()[0])
        cur.execute(f"SET SESSION group_concat_max_len={limit}")
    conn.backupkit_max_packet = limit  # type: ignore[attr-defined]
    return conn


def sql_error(exc: BaseException, what: str) -> BackupkitError:
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



class TableChunkReader:
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
