"""Binlog replay: shipped segments, streamed from storage, applied to a server up to an exact stop.

Three threads with bounded memory:

1. The fetcher downloads segment objects ahead of the replay (``prefetch`` segments at most),
   each decoded and checksum-verified by ``codec.iter_object`` into a spooled temporary file
   (memory up to 32 MiB, then disk). A segment is handed on only once verified, so no damaged
   byte ever reaches the server.
2. The parser (the calling thread) walks the events from the base's binlog coordinates on,
   groups them into transactions and decides, transaction by transaction, where to stop:
   - ``time``: every transaction whose commit time (the later of its GTID event's and its
     ending event's timestamp, whole seconds) is <= T, and none after;
   - ``gtid``: up to and including that GTID; ``before_gtid``: up to but excluding it
     (compared by domain and sequence number);
   - ``position``: every transaction that ends at or before FILE:POS;
   - ``latest``: everything planned.
3. The applier sends the transactions to the target over one connection, in order:
   - row-based transactions (MariaDB GTID, table maps, row events, XID or COMMIT): natively, as
     ``SET gtid_domain_id/server_id/gtid_seq_no; BEGIN; BINLOG '<all row events>'; COMMIT``,
     the same BINLOG statement mariadb-binlog writes, but one per transaction instead of one per
     row event (several times faster, and exact: the server applies the same events);
   - every other transaction (DDL, statement-based DML, XA, MySQL GTIDs): through
     ``mariadb-binlog -``, whose SQL text is run statement by statement.
   A transaction larger than 8 MiB is sent in several BINLOG statements inside one BEGIN and
   committed (or rolled back) only at its end, so memory stays bounded.

The first error stops everything and names the transaction's GTID and binlog position; the
reached point (last applied GTID, position, commit time) is returned in ReplayResult.
"""

from __future__ import annotations

import base64
import os
import queue
import re
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import pymysql
from pymysql.constants import CLIENT

from backupkit.errors import IntegrityError, SourceError
from backupkit.mysql import binlog_events as be
from backupkit.mysql.connection import ConnSpec, connect
from backupkit.repo.catalog import SegmentInfo
from backupkit.repo.codec import iter_object
from backupkit.restore.stoppoint import Gtid, RestoreTarget, format_time, try_parse_gtid
from backupkit.storage.base import ObjectStore
from backupkit.util.workers import put_unless_stopped

MIB = 1 << 20
Progress = Callable[..., None]
BINLOG_TOOLS = ("mariadb-binlog", "mysqlbinlog")
CHUNK_BYTES = 8 * MIB  # raw event bytes per round trip (base64 keeps a packet under 16 MiB)
#: Source statements (row event groups ending in STMT_END_F) per BINLOG statement. The server
#: slows down sharply with many statements in one BINLOG when it writes its own binlog.
STATEMENTS_PER_BINLOG = 16
STMT_END_F = 1
MAX_STATEMENT_BYTES = 700 * MIB  # base64 of it stays under the server's 1 GiB packet limit
SENTINEL = b"bk~applied"
SESSION_SETUP = (b"SET @@SESSION.PSEUDO_SLAVE_MODE=1", b"SET @@session.max_delayed_threads=0",
                 b"SET @@session.completion_type=0",
                 b"SET SESSION net_read_timeout=3600, net_write_timeout=3600")
_NATIVE_TYPES = frozenset({be.TABLE_MAP_EVENT}) | be.ROWS_TYPES
_SKIP_IN_TXN = frozenset({be.ANNOTATE_ROWS_EVENT, be.ROWS_QUERY_LOG_EVENT})


class ReplayError(SourceError):
    """The target refused a replayed transaction, or the replay pipeline broke."""


@dataclass
class ReachedPoint:
    """Where a replay ended: the last applied transaction (or the base's point if none)."""

    file: str = ""
    pos: int = 0
    gtid: str = ""
    commit_time: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "pos": self.pos, "gtid": self.gtid,
                "commit_time": self.commit_time or None,
                "commit_time_text": format_time(self.commit_time) if self.commit_time else None}


@dataclass
class ReplayResult:
    """What a replay applied and how long it took."""

    reached: ReachedPoint
    transactions: int = 0
    native_transactions: int = 0
    text_transactions: int = 0
    segments: int = 0
    binlog_bytes: int = 0
    seconds: float = 0.0
    stopped_by: str = ""  # target | end
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"reached": self.reached.to_dict(), "transactions": self.transactions,
                "native_transactions": self.native_transactions,
                "text_transactions": self.text_transactions, "segments": self.segments,
                "binlog_bytes": self.binlog_bytes, "seconds": round(self.seconds, 3),
                "stopped_by": self.stopped_by, "notes": list(self.notes)}


def find_binlog_tool() -> str | None:
    """The mariadb-binlog (or mysqlbinlog) executable, or None."""
    for name in (os.environ.get("BACKUPKIT_BINLOG_TOOL"), *BINLOG_TOOLS):
        if name:
            path = shutil.which(name)
            if path:
                return path
    return None


def _mysql_msg(exc: BaseException) -> str:
    args = getattr(exc, "args", ())
    if len(args) >= 2:
        return f"error {args[0]}: {args[1]}"
    return str(exc)


# -- fetching ahead --------------------------------------------------------------------------
class _Fetched:
    """One verified segment, decoded into a spooled temporary file."""

    def __init__(self, index: int, seg: SegmentInfo, spool: BinaryIO, size: int) -> None:
        self.index = index
        self.seg = seg
        self.spool = spool
        self.size = size


class Fetcher(threading.Thread):
    """Downloads segments in order; at most ``ahead`` verified segments wait at a time."""

    def __init__(self, store: ObjectStore, segments: Sequence[SegmentInfo], ahead: int = 2,
                 on_bytes: Callable[[int], None] | None = None) -> None:
        super().__init__(name="backupkit-fetch", daemon=True)
        self.store = store
        self.segments = list(segments)
        self.out: queue.Queue = queue.Queue(maxsize=max(1, ahead))
        self.on_bytes = on_bytes
        self._stop_evt = threading.Event()

    def run(self) -> None:
        try:
            for i, seg in enumerate(self.segments):
                spool = tempfile.SpooledTemporaryFile(max_size=32 * MIB)  # noqa: SIM115 - handed on
                size = 0
                try:
                    for block in iter_object(self.store, seg.object, read_size=MIB):
                        if self._stop_evt.is_set():
                            spool.close()
                            return
                        spool.write(block)
                        size += len(block)
                        if self.on_bytes:
                            self.on_bytes(len(block))
                except BaseException:
                    spool.close()
                    raise
                if size != seg.object.raw_size:
                    spool.close()
                    raise IntegrityError(f"segment {seg.object.key!r} decodes to {size} bytes, "
                                         f"its index says {seg.object.raw_size}")
                spool.seek(0)
                if not self._put(_Fetched(i, seg, spool, size)):
                    spool.close()
                    return
            self._put(None)
        except BaseException as exc:  # handed to the parser, which raises it
            self._put(exc)

    def _put(self, item: Any) -> bool:
        return put_unless_stopped(self.out, item, self._stop_evt, poll=0.2)

    def get(self) -> _Fetched | None:
        item = self.out.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self) -> None:
        self._stop_evt.set()
        while True:  # release spools still waiting
            try:
                item = self.out.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Fetched):
                item.spool.close()


# -- units of work between parser and applier ----------------------------------------------------
@dataclass
class TxnInfo:
    """Where a transaction stands in the source's binlog."""

    gtid: str
    file: str
    start: int
    end: int = 0
    commit_time: int = 0
    size: int = 0

    def where(self) -> str:
        return f"GTID {self.gtid or '-'} at {self.file}:{self.start}"


class _ByteQueue:
    """A FIFO bounded by the bytes it holds (one item may always enter an empty queue)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: list[tuple[Any, int]] = []
        self.bytes = 0
        self.closed = False
        self.cond = threading.Condition()

    def put(self, item: Any, nbytes: int) -> None:
        with self.cond:
            while not self.closed and self.items and self.bytes + nbytes > self.limit:
                self.cond.wait()
            if self.closed:
                raise _Aborted()
            self.items.append((item, nbytes))
            self.bytes += nbytes
            self.cond.notify_all()

    def get(self) -> Any:
        with self.cond:
            while not self.items:
                self.cond.wait()
            item, n = self.items.pop(0)
            self.bytes -= n
            self.cond.notify_all()
            return item

    def close(self) -> None:
        """The consumer failed: wake and refuse producers."""
        with self.cond:
            self.closed = True
            for item, _ in self.items:
                _release(item)
            self.items.clear()
            self.bytes = 0
            self.cond.notify_all()


class _Aborted(Exception):
    pass


def _release(item: Any) -> None:
    if isinstance(item, tuple) and item and item[0] == "text":
        item[1].close()


# -- the applier ------------------------------------------------------------------------------
_DELIM = b"/*!*/;\n"
_DELIM_START = b"DELIMITER /*!*/;\n"
_CHARSET_CMD = re.compile(rb"^/\*!\\C [A-Za-z0-9_]+ \*/$")
_GTID_COMMENT = re.compile(rb"\tGTID (\d+-\d+-\d+)")
_END_POS = re.compile(rb"end_log_pos (\d+)")


class Applier(threading.Thread):
    """Executes the parser's units on the target, in order; stops at the first error."""

    def __init__(self, conn, units: _ByteQueue, tool: str | None,
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
            while True:
                item = self.units.get()
                if item is None:
                    return
                self._do(item)
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

    def _error(self, exc: BaseException, info: TxnInfo | None) -> ReplayError:
        where = info.where() if info else "the replay session setup"
        return ReplayError(f"replay failed at {where}: {_mysql_msg(exc)}",
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
                                  f"{end_pos}): {_mysql_msg(exc)}; statement: {shown}",
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


# -- the parser: segments to transactions, cut at the stop -----------------------------------------
class _Cutter:
    """Decides, transaction by transaction, what the stop rule lets through."""

    def __init__(self, target: RestoreTarget) -> None:
        self.kind = target.kind
        self.t = float(target.time) if target.time is not None else 0.0
        self.g: Gtid | None = target.gtid
        self.file = target.file or ""
        self.pos = target.pos or 0
        self.found_gtid = ""

    def before_txn(self, gtid: Gtid | None, gtid_time: int) -> bool:
        """At a transaction's first event: False means stop before it."""
        if self.kind == "time" and gtid_time > self.t:
            return False
        if self.kind in ("gtid", "before_gtid") and gtid is not None and self.g is not None \
                and gtid.key == self.g.key:
            if self.kind == "before_gtid" and gtid.seq >= self.g.seq:
                self.found_gtid = gtid.text if gtid.seq == self.g.seq else ""
                return False
            if self.kind == "gtid" and gtid.seq > self.g.seq:
                return False
        return True

    def after_txn(self, gtid: Gtid | None, commit_time: int, file: str, end_pos: int) -> tuple[bool, bool]:
        """At a transaction's end: (apply it, stop after it)."""
        if self.kind == "time" and commit_time > self.t:
            return False, True
        if self.kind == "position" and (file, end_pos) > (self.file, self.pos):
            return False, True
        if self.kind == "gtid" and gtid is not None and self.g is not None and gtid.key == self.g.key \
                and gtid.seq == self.g.seq:
            self.found_gtid = gtid.text
            return True, True
        return True, False


class _Window:
    """Sequential event reads from a spooled segment through an 8 MiB window."""

    def __init__(self, fh: BinaryIO, remaining: int) -> None:
        self.fh = fh
        self.remaining = remaining  # bytes of events left in the segment
        self.buf = b""
        self.off = 0

    def next_event(self) -> bytes:
        if len(self.buf) - self.off < be.HEADER_LEN:
            self._fill(be.HEADER_LEN)
        size = struct.unpack_from("<I", self.buf, self.off + 9)[0]
        if size < be.HEADER_LEN:
            raise IntegrityError(f"a binlog event has a bad size ({size})")
        if len(self.buf) - self.off < size:
            self._fill(size)
        raw = self.buf[self.off:self.off + size]
        self.off += size
        return raw

    def peek(self, n: int) -> bytes:
        if len(self.buf) - self.off < n:
            self._fill(n)
        return self.buf[self.off:self.off + n]

    def skip(self, n: int) -> None:
        have = len(self.buf) - self.off
        if n <= have:
            self.off += n
            return
        self.buf, self.off = b"", 0
        n -= have
        self.fh.seek(n, os.SEEK_CUR)
        self.remaining -= n

    def _fill(self, need: int) -> None:
        rest = self.buf[self.off:]
        want = max(need - len(rest), min(8 * MIB, self.remaining))
        data = self.fh.read(min(want, self.remaining)) if self.remaining else b""
        self.remaining -= len(data)
        self.buf = rest + data
        self.off = 0
        if len(self.buf) < need:
            raise IntegrityError("a binlog segment ended inside an event")


class _Txn:
    """The transaction being read: its events (spooled) and whether it can go natively."""

    def __init__(self, info: TxnInfo, gtid: Gtid | None, gtid_time: int, native: bool,
                 head: bytes) -> None:
        self.info = info
        self.gtid = gtid
        self.gtid_time = gtid_time
        self.native = native
        self.head = head  # the SET of its GTID, for the native path
        self.kept: list[bytes] = []  # every event, for mariadb-binlog if it must go that way
        self.kept_bytes = 0
        self.spill: BinaryIO | None = None  # the same, on disk once past 16 MiB
        self.rows: list[bytes] = []  # raw row events of the BINLOG statement being built
        self.rows_bytes = 0
        self.stmt_ends = 0  # source statements in it
        self.binlogs: list[bytes] = []  # base64 BINLOG bodies built and not yet sent
        self.binlogs_bytes = 0
        self.streamed = False  # BEGIN and some BINLOG statements already sent

    def keep(self, raw: bytes) -> None:
        self.info.size += len(raw)
        if self.spill is not None:
            self.spill.write(raw)
            return
        self.kept.append(raw)
        self.kept_bytes += len(raw)
        if self.kept_bytes > 16 * MIB:
            self.spill = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
            for b in self.kept:
                self.spill.write(b)
            self.kept, self.kept_bytes = [], 0

    def copy_to(self, out: BinaryIO) -> None:
        if self.spill is not None:
            self.spill.seek(0)
            shutil.copyfileobj(self.spill, out)
        else:
            for b in self.kept:
                out.write(b)

    def close(self) -> None:
        self.kept = []
        if self.spill is not None:
            self.spill.close()
            self.spill = None


class Parser:
    """Turns segments into the applier's units, stopping exactly where the target says."""

    def __init__(self, target: RestoreTarget, start: tuple[str, int], emit: Callable[[Any, int], None],
                 chunk_bytes: int = CHUNK_BYTES, per_binlog: int = STATEMENTS_PER_BINLOG) -> None:
        self.cut = _Cutter(target)
        self.per_binlog = per_binlog
        self.start = start
        self.emit = emit
        self.chunk_bytes = chunk_bytes
        self.cur_file = ""
        self.fde_raw = b""
        self.fde: be.FormatDescription | None = None
        self.stopped = False
        self.text_group: list[TxnInfo] = []
        self.text_spool: BinaryIO | None = None
        self.text_bytes = 0

    # -- segments ------------------------------------------------------------------------------
    def segment(self, fetched: _Fetched) -> bool:
        """Parse one segment; True when the stop point was reached inside it."""
        seg = fetched.seg
        span = seg.end_pos - seg.start_pos
        if span == 0:
            return False  # an anchor: it only records where a shipped range begins
        prefix = fetched.size - span
        fh = fetched.spool
        head = fh.read(prefix)
        if prefix < 4 or span < 0 or head[:4] != be.MAGIC:
            raise IntegrityError(f"segment {seg.object.key!r} is not a binlog segment of "
                                 f"[{seg.start_pos}, {seg.end_pos})")
        win = _Window(fh, span)
        pos = seg.start_pos
        fde = head[4:]
        if seg.start_pos == 4:
            fde = win.next_event()
            pos += len(fde)
        if len(fde) < be.HEADER_LEN or be.parse_header(fde).type != be.FORMAT_DESCRIPTION_EVENT:
            raise IntegrityError(f"segment {seg.object.key!r} has no format description event")
        if seg.binlog_file != self.cur_file or fde != self.fde_raw:
            self._flush_text()
            self.fde_raw, self.fde = fde, be.parse_fde(fde)
            self.cur_file = seg.binlog_file
            self.emit(("fde", fde), len(fde))
        sfile, spos = self.start
        if seg.binlog_file == sfile and pos < spos:
            if spos > seg.end_pos:
                raise IntegrityError(f"the base's position {sfile}:{spos} is past segment "
                                     f"{seg.object.key!r}")
            win.skip(spos - pos)
            pos = spos
        return self._events(win, seg, pos)

    def _events(self, win: _Window, seg: SegmentInfo, pos: int) -> bool:
        cks = self.fde.checksum_len if self.fde else 0
        tracker = be.BoundaryTracker()
        tracker.fde = self.fde
        txn: _Txn | None = None
        first = True
        while pos < seg.end_pos:
            if first:  # where replay starts must be an event boundary (the base's point)
                peek = be.parse_header(win.peek(be.HEADER_LEN))
                if peek.log_pos and peek.log_pos - peek.event_size != pos:
                    raise IntegrityError(f"position {seg.binlog_file}:{pos} is not an event boundary "
                                         f"in segment {seg.object.key!r}")
                first = False
            raw = win.next_event()
            hdr = be.parse_header(raw)
            pos += hdr.event_size
            t = hdr.type
            if txn is None:
                if t in be.NON_TRANSACTION_TYPES or t == be.FORMAT_DESCRIPTION_EVENT:
                    tracker.feed(hdr, raw)
                    continue
                txn = self._begin(hdr, raw, cks, seg.binlog_file)
                if txn is None:
                    self.stopped = True
                    return True
            txn.keep(raw)
            if txn.native and t != be.MARIA_GTID_EVENT and t not in _SKIP_IN_TXN:
                if t in _NATIVE_TYPES:
                    txn.rows.append(raw)
                    txn.rows_bytes += len(raw)
                    # A BINLOG statement must hold whole source statements: the server forgets
                    # its table maps at the end of each one, and would skip rows mapped earlier.
                    if t != be.TABLE_MAP_EVENT and len(raw) > 26 and raw[25] & STMT_END_F:
                        txn.stmt_ends += 1
                        if txn.stmt_ends >= self.per_binlog or txn.rows_bytes >= self.chunk_bytes:
                            self._close_binlog(txn)
                        if txn.binlogs_bytes >= self.chunk_bytes:
                            self._stream_rows(txn)
                    elif txn.rows_bytes > MAX_STATEMENT_BYTES:
                        raise ReplayError(f"{txn.info.where()} has one statement with more than "
                                          f"{MAX_STATEMENT_BYTES >> 20} MiB of row events",
                                          "a BINLOG statement cannot carry it (max_allowed_packet)")
                elif not (t == be.XID_EVENT or (t in be.QUERY_TYPES and _is_commit(hdr, raw, cks,
                                                                                     self.fde))):
                    self._to_text(txn)
            if tracker.feed(hdr, raw):
                stop = self._end(txn, hdr)
                txn = None
                if stop:
                    self.stopped = True
                    return True
        if txn is not None:
            txn.close()
            raise IntegrityError(f"segment {seg.object.key!r} ends inside a transaction")
        return False

    # -- transactions ----------------------------------------------------------------------------
    def _begin(self, hdr: be.EventHeader, raw: bytes, cks: int, file: str) -> _Txn | None:
        gtid: Gtid | None = None
        gtid_time = hdr.timestamp
        native = False
        head = b""
        if hdr.type == be.MARIA_GTID_EVENT:
            mg = be.parse_maria_gtid(hdr, be.body(raw, cks))
            gtid = try_parse_gtid(mg.gtid)
            native = not mg.standalone and not mg.flags & (be.FL_PREPARED_XA | be.FL_COMPLETED_XA)
            head = (f"SET @@session.gtid_domain_id={mg.domain_id}, @@session.server_id={mg.server_id}, "
                    f"@@session.gtid_seq_no={mg.seq_no}").encode()
        elif hdr.type in (be.GTID_LOG_EVENT, be.ANONYMOUS_GTID_LOG_EVENT):
            my = be.parse_mysql_gtid(be.body(raw, cks))
            gtid = try_parse_gtid(my.gtid)
            if my.immediate_commit_us:
                gtid_time = int(my.immediate_commit_us // 1_000_000)
        if not self.cut.before_txn(gtid, gtid_time):
            return None
        info = TxnInfo(gtid.text if gtid else "", file, hdr.log_pos - hdr.event_size)
        return _Txn(info, gtid, gtid_time, native, head)

    def _close_binlog(self, txn: _Txn) -> None:
        """Turn the row events gathered so far into one BINLOG statement body."""
        if txn.rows:
            data = base64.b64encode(b"".join(txn.rows))
            txn.binlogs.append(data)
            txn.binlogs_bytes += txn.rows_bytes
        txn.rows, txn.rows_bytes, txn.stmt_ends = [], 0, 0

    def _stream_rows(self, txn: _Txn) -> None:
        """Send the finished BINLOG statements of a big native transaction (BEGIN first)."""
        if not txn.streamed:
            self._flush_text()
            self.emit(("begin", txn.head, txn.info), len(txn.head))
            txn.streamed = True
        if txn.binlogs:
            n = sum(len(b) for b in txn.binlogs)
            self.emit(("rows", txn.binlogs, txn.info), n)
        txn.binlogs, txn.binlogs_bytes = [], 0

    def _to_text(self, txn: _Txn) -> None:
        """A native candidate met an event only mariadb-binlog can render."""
        if txn.streamed:
            self.emit(("rollback", txn.info), 0)  # redo it from its spooled events
            txn.streamed = False
        txn.native = False
        txn.rows, txn.rows_bytes, txn.binlogs, txn.binlogs_bytes = [], 0, [], 0

    def _end(self, txn: _Txn, hdr: be.EventHeader) -> bool:
        """The transaction is complete: send it (or not) and say whether to stop."""
        commit = max(txn.gtid_time, hdr.timestamp)
        txn.info.end = hdr.log_pos
        txn.info.commit_time = commit
        apply, stop = self.cut.after_txn(txn.gtid, commit, txn.info.file, hdr.log_pos)
        if not apply:
            if txn.streamed:
                self.emit(("rollback", txn.info), 0)
            txn.close()
            return stop
        if txn.native:
            txn.close()
            if txn.streamed:
                self._close_binlog(txn)
                self._stream_rows(txn)
                self.emit(("commit", txn.info), 0)
            else:
                self._flush_text()
                self._close_binlog(txn)
                n = sum(len(b) for b in txn.binlogs) + len(txn.head)
                self.emit(("txn", txn.head, txn.binlogs, txn.info), n)
            return stop
        self._add_text(txn)
        if stop:
            self._flush_text()
        return stop

    def _add_text(self, txn: _Txn) -> None:
        if self.text_spool is None:
            self.text_spool = tempfile.SpooledTemporaryFile(max_size=16 * MIB)  # noqa: SIM115
            self.text_spool.write(be.MAGIC + self.fde_raw)
            self.text_bytes = 0
        txn.copy_to(self.text_spool)
        txn.close()
        self.text_group.append(txn.info)
        self.text_bytes += txn.info.size
        if self.text_bytes >= 16 * MIB or len(self.text_group) >= 2000:
            self._flush_text()

    def _flush_text(self) -> None:
        if self.text_spool is None:
            return
        spool, infos = self.text_spool, self.text_group
        self.text_spool, self.text_group = None, []
        self.emit(("text", spool, infos), min(self.text_bytes, 16 * MIB))

    def finish(self) -> None:
        self._flush_text()


def _is_commit(hdr: be.EventHeader, raw: bytes, cks: int, fde: be.FormatDescription | None) -> bool:
    try:
        q = be.parse_query(hdr, be.body(raw, cks), fde)
    except Exception:
        return False
    return q.sql.strip().upper() == "COMMIT"


# -- running it --------------------------------------------------------------------------------
def open_replay_connection(spec: ConnSpec, log_bin: bool = False):
    """A connection for the applier: multi-statements on; the target's binlog off unless asked."""
    conn = connect(spec, client_flag=CLIENT.MULTI_STATEMENTS | CLIENT.MULTI_RESULTS,
                   read_timeout=None)
    if not log_bin:
        try:
            with conn.cursor() as cur:
                cur.execute("SET SESSION sql_log_bin=0")
        except pymysql.err.MySQLError as exc:
            conn.close()
            raise SourceError(f"cannot turn off the binlog for the replay on {spec.display()}: "
                              f"{_mysql_msg(exc)}", "grant BINLOG ADMIN, or use --log-bin") from None
    return conn


def replay_segments(store: ObjectStore, segments: Sequence[SegmentInfo], start: tuple[str, int],
                    target: RestoreTarget, spec: ConnSpec, *, start_point: ReachedPoint | None = None,
                    log_bin: bool = False, progress: Progress | None = None, prefetch: int = 2,
                    queue_bytes: int = 32 * MIB, chunk_bytes: int = CHUNK_BYTES) -> ReplayResult:
    """Apply segments from start (the base's binlog coordinates) up to the target's stop point."""
    report = progress or (lambda *a, **k: None)
    t0 = time.monotonic()
    reached = start_point or ReachedPoint(file=start[0], pos=start[1])
    result = ReplayResult(reached=reached)
    if not segments:
        result.stopped_by = "target"
        return result
    conn = open_replay_connection(spec, log_bin)
    units = _ByteQueue(queue_bytes)
    lock = threading.Lock()

    def committed(info: TxnInfo, native: bool) -> None:
        with lock:
            reached.file, reached.pos = info.file, info.end
            reached.gtid = info.gtid or reached.gtid
            reached.commit_time = float(info.commit_time)
            result.transactions += 1
            if native:
                result.native_transactions += 1
            else:
                result.text_transactions += 1
        report("applied", transactions=result.transactions, gtid=info.gtid, bytes=info.size)

    applier = Applier(conn, units, find_binlog_tool(), committed)
    report("plan", segments=len(segments), bytes=sum(s.object.raw_size for s in segments))
    fetcher = Fetcher(store, segments, ahead=prefetch,
                      on_bytes=lambda n: report("fetched", bytes=n))
    parser = Parser(target, start, units.put, chunk_bytes,
                    int(os.environ.get("BACKUPKIT_STATEMENTS_PER_BINLOG", STATEMENTS_PER_BINLOG)))
    applier.start()
    fetcher.start()
    parse_error: BaseException | None = None
    try:
        while True:
            item = fetcher.get()
            if item is None:
                break
            try:
                stopped = parser.segment(item)
            finally:
                item.spool.close()
            result.segments += 1
            result.binlog_bytes += item.size
            if stopped:
                break
        parser.finish()
        units.put(None, 0)
    except _Aborted:
        pass  # the applier failed; its error is raised below
    except BaseException as exc:
        parse_error = exc
        units.close()
    finally:
        fetcher.stop()
        applier.join()
        try:
            conn.close()
        except Exception:
            pass
    if parse_error is not None:
        raise parse_error
    if applier.error is not None:
        raise applier.error
    result.stopped_by = "target" if parser.stopped else "end"
    result.seconds = time.monotonic() - t0
    g = target.gtid
    if target.kind == "gtid" and g is not None and not parser.cut.found_gtid:
        result.notes.append(f"GTID {g} was not in the replayed binlog; stopped at {reached.gtid or '-'}")
    elif target.kind == "before_gtid" and g is not None and not parser.cut.found_gtid:
        result.notes.append(f"GTID {g} was not in the replayed binlog; applied up to {reached.gtid or '-'}")
    elif parser.cut.found_gtid and g is not None and parser.cut.found_gtid != g.text:
        result.notes.append(f"matched GTID {parser.cut.found_gtid} to {g} by domain and sequence number")
    report("done", result=result)
    return result
