"""The applier: transactions sent to the target over one connection, in order.

Row-based transactions natively as one ``BINLOG '...'`` statement group per transaction; every
other transaction (DDL, statement-based DML, XA, MySQL GTIDs) through ``mariadb-binlog -``, whose
SQL text is run statement by statement. The first error stops everything and names the
transaction's GTID and binlog position.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import threading
from collections import deque
from collections.abc import Callable
from typing import BinaryIO

import pymysql

from backupkit.restore.replay.units import Aborted, ByteQueue, ReplayError, TxnInfo, mysql_msg

BINLOG_TOOLS = ("mariadb-binlog", "mysqlbinlog")


SENTINEL = b"bk~applied"
#: Whole row-based transactions sent in one round trip at most, and their bytes at most: a
#: transaction of a few rows costs a round trip and five results either way, and one round trip
#: per transaction left the replay behind `mariadb-binlog | mariadb` (bench/compact.py).
TXNS_PER_TRIP = 64
TRIP_BYTES = 4 * 1024 * 1024
SESSION_SETUP = (b"SET @@SESSION.PSEUDO_SLAVE_MODE=1", b"SET @@session.max_delayed_threads=0",
                 b"SET @@session.completion_type=0",
                 b"SET SESSION net_read_timeout=3600, net_write_timeout=3600")


def find_binlog_tool() -> str | None:
    """The mariadb-binlog (or mysqlbinlog) executable, or None."""
    for name in (os.environ.get("BACKUPKIT_BINLOG_TOOL"), *BINLOG_TOOLS):
        if name:
            path = shutil.which(name)
            if path:
                return path
    return None


_DELIM = b"/*!*/;\n"
_DELIM_START = b"DELIMITER /*!*/;\n"
_CHARSET_CMD = re.compile(rb"^/\*!\\C [A-Za-z0-9_]+ \*/$")
_GTID_COMMENT = re.compile(rb"\tGTID (\d+-\d+-\d+)")
_END_POS = re.compile(rb"end_log_pos (\d+)")


class Applier(threading.Thread):
    """Executes the parser's units on the target, in order; stops at the first error."""

    def __init__(self, conn, units: ByteQueue, tool: str | None,
                 on_commit: Callable[[TxnInfo, bool], None]) -> None:
        super().__init__(name="backupkit-apply", daemon=True)
        self.conn = conn
        self.units = units
        self.tool = tool
        self.on_commit = on_commit
        self.error: BaseException | None = None
        self._open: TxnInfo | None = None

    def run(self) -> None:
        try:
            for sql in SESSION_SETUP:
                self._query(sql, None)
            ahead: deque = deque()  # items taken from the queue, not yet done (bounded)
            while True:
                item = ahead.popleft() if ahead else self.units.get()
                if item is None:
                    return
                if item[0] != "txn":
                    self._do(item)
                    continue
                if not ahead:
                    ahead.extend(self.units.get_ready(TXNS_PER_TRIP - 1, TRIP_BYTES))
                group = [item]
                while ahead and ahead[0] is not None and ahead[0][0] == "txn" \
                        and len(group) < TXNS_PER_TRIP:
                    group.append(ahead.popleft())
                self._txns(group)
        except Aborted:
            return  # the parser or the fetcher failed; the caller raises their error
        except BaseException as exc:
            self.error = exc
            self.units.close()

    def _query(self, sql: bytes, info: TxnInfo | None) -> None:
        try:
            self.conn.query(sql)
            while self.conn._result is not None and self.conn._result.has_next:
                self.conn.next_result()
        except pymysql.err.MySQLError as exc:
            raise self._error(exc, info) from None

    def _batch(self, stmts: list[bytes], info: TxnInfo) -> None:
        """Several statements in one round trip, read up to a final SELECT of a sentinel.

        A BINLOG statement with row events drops the server's "more results" flag although the
        statements after it still run and answer, so results are read until the sentinel."""
        try:
            self.conn.query(b";".join(stmts) + b";SELECT '" + SENTINEL + b"'")
            while not _is_sentinel(self.conn._result):
                self.conn.next_result()
        except pymysql.err.MySQLError as exc:
            raise self._error(exc, info) from None

    def _txns(self, group: list[tuple]) -> None:
        """Whole row-based transactions in one round trip, read up to a final sentinel. When a
        statement fails, the server runs none after it: the transactions before its own were
        committed (their COMMIT answered) and are reported so; the error names its own."""
        stmts: list[bytes] = []
        owner: list[int] = []
        for i, (_, head, binlogs, _info) in enumerate(group):
            for stmt in (head, b"BEGIN", *_binlog_stmts(binlogs), b"COMMIT"):
                if stmt:
                    stmts.append(stmt)
                    owner.append(i)
        done = 0  # results read: the statements that succeeded
        try:
            self.conn.query(b";".join(stmts) + b";SELECT '" + SENTINEL + b"'")
            done = 1
            while not _is_sentinel(self.conn._result):
                self.conn.next_result()
                done += 1
        except pymysql.err.MySQLError as exc:
            failed = owner[done] if done < len(owner) else len(group) - 1
            for item in group[:failed]:
                self.on_commit(item[3], True)
            raise self._error(exc, group[failed][3]) from None
        for item in group:
            self.on_commit(item[3], True)

    def _error(self, exc: BaseException, info: TxnInfo | None) -> ReplayError:
        where = info.where() if info else "the replay session setup"
        return ReplayError(f"replay failed at {where}: {mysql_msg(exc)}",
                           "every transaction before it is applied; nothing after it ran")

    def _do(self, item: tuple) -> None:
        kind = item[0]
        if kind == "fde":
            self._query(b"BINLOG '" + base64.b64encode(item[1]) + b"'", None)
        elif kind == "txn":  # a whole row-based transaction
            _, head, binlogs, info = item
            self._batch([head, b"BEGIN", *_binlog_stmts(binlogs), b"COMMIT"], info)
            self.on_commit(info, True)
        elif kind == "begin":
            _, head, info = item
            self._batch([head, b"BEGIN"], info)
        elif kind == "rows":
            _, binlogs, info = item
            self._batch(_binlog_stmts(binlogs), info)
        elif kind == "commit":
            self._query(b"COMMIT", item[1])
            self.on_commit(item[1], True)
        elif kind == "sql":  # statements of a table-level replay (filter.py), in order
            _, stmts, info = item
            self._batch(stmts, info)
            self.on_commit(info, False)
        elif kind == "rollback":
            self._query(b"ROLLBACK", item[1])
        elif kind == "text":
            _, spool, infos = item
            try:
                self._text(spool, infos)
            finally:
                spool.close()
            for info in infos:
                self.on_commit(info, False)

    # -- through mariadb-binlog ---------------------------------------------------------------
    def _text(self, spool: BinaryIO, infos: list[TxnInfo]) -> None:
        if not self.tool:
            raise ReplayError(f"{infos[0].where()} is not a row-based transaction and mariadb-binlog "
                              "is not installed", "install the mariadb-client package")
        spool.seek(0)
        proc = subprocess.run([self.tool, "--no-defaults", "--skip-annotate-row-events", "-"],
                              stdin=spool, capture_output=True)
        if proc.returncode != 0:
            msg = proc.stderr.decode("utf-8", "replace").strip().replace("\n", " ")
            raise ReplayError(f"mariadb-binlog failed on {infos[0].where()}: {msg[:300]}")
        self._run_text(proc.stdout, infos)

    def _run_text(self, out: bytes, infos: list[TxnInfo]) -> None:
        i = out.find(_DELIM_START)
        if i < 0:
            raise ReplayError(f"mariadb-binlog wrote no statements for {infos[0].where()}")
        for stmt in out[:i].split(b";\n"):
            s = stmt.strip()
            if s and not s.startswith(b"#"):
                self._query(s, None)
        body = out[i + len(_DELIM_START):]
        last = body.rfind(_DELIM)
        body = body[:last + len(_DELIM)] if last >= 0 else b""
        gtid, end_pos = "", 0
        for chunk in body.split(_DELIM):
            j = chunk.rfind(b"\tGTID ")
            if j >= 0:
                m = _GTID_COMMENT.match(chunk, j)
                gtid = m.group(1).decode() if m else gtid
            k = chunk.rfind(b"end_log_pos ")
            if k >= 0:
                m2 = _END_POS.match(chunk, k)
                end_pos = int(m2.group(1)) if m2 else end_pos
            lines = [ln for ln in chunk.split(b"\n") if ln.strip() and not ln.startswith(b"#")]
            if not lines:
                continue
            sql = b"\n".join(lines)
            if _CHARSET_CMD.match(sql):
                continue  # a client-side charset command; the SET that follows does the work
            info = next((t for t in infos if t.gtid == gtid), infos[0])
            try:
                self.conn.query(sql)
                while self.conn._result is not None and self.conn._result.has_next:
                    self.conn.next_result()
            except pymysql.err.MySQLError as exc:
                shown = b" ".join(sql.split())[:160].decode("utf-8", "replace")
                raise ReplayError(f"replay failed at GTID {gtid or '-'} ({info.file}, event ending at "
                                  f"{end_pos}): {mysql_msg(exc)}; statement: {shown}",
                                  "every transaction before it is applied; nothing after it ran"
                                  ) from None


def _binlog_stmts(binlogs: list[bytes]) -> list[bytes]:
    return [b"BINLOG '" + b + b"'" for b in binlogs]


def _is_sentinel(result) -> bool:
    rows = getattr(result, "rows", None)
    if not rows:
        return False
    v = rows[0][0]
    return v == SENTINEL or v == SENTINEL.decode()
