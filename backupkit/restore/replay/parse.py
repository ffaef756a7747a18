"""The parser: segments walked event by event, grouped into transactions, cut at the stop point.

Where to stop, transaction by transaction:
- ``time``: every transaction whose commit time (the later of its GTID event's and its ending
  event's timestamp, whole seconds) is <= T, and none after;
- ``gtid``: up to and including that GTID; ``before_gtid``: up to but excluding it (compared by
  domain and sequence number);
- ``position``: every transaction that ends at or before FILE:POS;
- ``latest``: everything planned.
Row events go on to the applier in chunks (a transaction larger than 8 MiB is sent in several
BINLOG statements inside one BEGIN); everything else is grouped for ``mariadb-binlog``.
"""

from __future__ import annotations

import base64
import os
import shutil
import struct
import tempfile
from collections.abc import Callable
from typing import Any, BinaryIO

from backupkit.errors import IntegrityError
from backupkit.mysql import binlog_events as be
from backupkit.mysql.gtid import Gtid, try_parse_gtid
from backupkit.repo.catalog import SegmentInfo
from backupkit.restore.replay.fetch import Fetched
from backupkit.restore.replay.filter import EventFilter
from backupkit.restore.replay.units import MIB, ReplayError, TxnInfo
from backupkit.restore.stoppoint import RestoreTarget
from backupkit.util.units import time_floor

CHUNK_BYTES = 8 * MIB  # raw event bytes per round trip (base64 keeps a packet under 16 MiB)
#: Source statements (row event groups ending in STMT_END_F) per BINLOG statement. The server
#: slows down sharply with many statements in one BINLOG when it writes its own binlog.
STATEMENTS_PER_BINLOG = 16
STMT_END_F = 1
MAX_STATEMENT_BYTES = 700 * MIB  # base64 of it stays under the server's 1 GiB packet limit


_NATIVE_TYPES = frozenset({be.TABLE_MAP_EVENT}) | be.ROWS_TYPES
_SKIP_IN_TXN = frozenset({be.ANNOTATE_ROWS_EVENT, be.ROWS_QUERY_LOG_EVENT})


class _Cutter:
    """Decides, transaction by transaction, what the stop rule lets through."""

    def __init__(self, target: RestoreTarget) -> None:
        self.kind = target.kind
        # commit times are whole seconds: compare them with the target's whole second (exact:
        # parse_time never rounds up, so ...:30.999999999 stays in second 30)
        self.t = time_floor(target.time) if target.time is not None else 0
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
        self.ddl: list[bytes] = []  # a table-level replay's DDL statements (filter.py)

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
                 chunk_bytes: int = CHUNK_BYTES, per_binlog: int = STATEMENTS_PER_BINLOG,
                 table_filter: EventFilter | None = None) -> None:
        self.cut = _Cutter(target)
        self.filter = table_filter
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
    def segment(self, fetched: Fetched) -> bool:
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
            if self.filter is not None:
                self._filtered(txn, t, hdr, raw, cks)
            else:
                txn.keep(raw)
            if self.filter is None and txn.native and t != be.MARIA_GTID_EVENT \
                    and t not in _SKIP_IN_TXN:
                if t in _NATIVE_TYPES:
                    self._add_row(txn, t, raw)
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

    def _add_row(self, txn: _Txn, t: int, raw: bytes) -> None:
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

    def _filtered(self, txn: _Txn, t: int, hdr: be.EventHeader, raw: bytes, cks: int) -> None:
        """A table-level replay (filter.py): only the selected tables' row events go on; a query
        touching a selected table is refused; nothing goes through mariadb-binlog."""
        flt = self.filter
        assert flt is not None
        txn.info.size += len(raw)
        if t in _NATIVE_TYPES:
            kept = flt.feed(t, raw, self.fde)
            if kept and not txn.native:
                raise ReplayError(f"{txn.info.where()} changes a selected table in a transaction "
                                  "a table-level restore cannot replay (XA or MySQL GTIDs)",
                                  "restore the whole server")
            for out in kept:
                self._add_row(txn, be.parse_header(out).type, out)
        elif t in be.QUERY_TYPES:
            q = be.parse_query(hdr, be.body(raw, cks), self.fde)
            if txn.native or txn.gtid is None:
                flt.query(q, txn.info)  # inside a transaction: statement-based DML, refused
            else:
                stmts = flt.ddl(q, txn.info)  # a standalone DDL statement
                if stmts:
                    txn.ddl += stmts

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
        if self.filter is not None:
            selected = self.filter.end_txn()
            if apply and txn.ddl:
                txn.close()
                self.emit(("sql", txn.ddl, txn.info), sum(len(x) for x in txn.ddl))
                return stop
            if not (apply and selected and txn.native):
                if txn.streamed:
                    self.emit(("rollback", txn.info), 0)
                txn.close()
                return stop
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
