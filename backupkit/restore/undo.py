"""Undo (flashback): the inverse of chosen transactions, built from the shipped binlog.

The inverse is built as row events, so it is exact for every column type by construction: a
WRITE becomes a DELETE of the same image, a DELETE a WRITE, an UPDATE swaps its before and
after images. Transactions are undone newest first, statements and rows in reverse order. The
inverse is applied on the live server in one transaction, as BINLOG statements (written to its
binlog, so replicas and the shipper see the undo).

Before that, a conflict check: every row the undo touches must still hold the state the undone
transactions left (by primary key). The server compares: the expected images are written
(as row events, so exactly) into a scratch database, numbered newest first, and joined with the
live tables column by column with ``<=>``. Any difference refuses the undo and lists the rows.

Refused: a row event without full images (``binlog_row_image`` not FULL), DDL in the chosen
transactions, a table without a primary key, a GTID that the repository does not hold.
"""

from __future__ import annotations

import base64
import struct
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pymysql

from backupkit.errors import BackupkitError, TargetError, UsageError
from backupkit.mysql import binlog_events as be
from backupkit.mysql.connection import ConnSpec, connect, qualified, quote_ident
from backupkit.mysql.gtid import GtidSet, try_parse_gtid
from backupkit.repo.catalog import Catalog, SegmentInfo
from backupkit.repo.codec import iter_object
from backupkit.repo.coverage import in_use
from backupkit.restore.replay.apply import SESSION_SETUP, find_binlog_tool
from backupkit.restore.replay.filter import TableFilter, rename_table_map
from backupkit.storage.base import ObjectStore
from backupkit.util.units import format_time

PER_BINLOG = 16


class UndoConflict(TargetError):
    """Rows changed since the undone transactions: the undo would overwrite newer data."""


@dataclass
class RowChange:
    """One source row event, with the table map it needs."""

    db: str
    table: str
    kind: str  # write | update | delete
    tm_raw: bytes
    raw: bytes
    gtid: str


@dataclass
class UndoResult:
    """What an undo found and did."""

    transactions: list[str]
    events: int
    tables: list[str]
    applied: bool = False
    conflicts: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # --force: conflicting rows left as they are
    sql: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "undo", "transactions": self.transactions, "events": self.events,
                "tables": self.tables, "applied": self.applied, "conflicts": self.conflicts,
                "skipped": self.skipped,
                "notes": self.notes}


# -- reading the chosen transactions from the repository ---------------------------------------
def _segment_events(store: ObjectStore, seg: SegmentInfo) -> tuple[bytes, bytes]:
    data = b"".join(iter_object(store, seg.object))
    span = seg.end_pos - seg.start_pos
    prefix = len(data) - span
    fde = data[4:prefix] if prefix > 4 else b""
    return fde, data[prefix:]


def _rows_layout(t: int, b: memoryview, fde: be.FormatDescription | None) -> tuple[int, int, int]:
    """(offset of the column count, ncols, offset of the first row) in a rows event body."""
    if t in (be.WRITE_ROWS_EVENT, be.UPDATE_ROWS_EVENT, be.DELETE_ROWS_EVENT):
        pos = 8 + struct.unpack_from("<H", b, 8)[0]
    else:
        pos = fde.post_header_len(t, 8) if fde and t < 160 else 8
    start = pos
    ncols, pos = be._packed_int(b, pos)
    nbytes = (ncols + 7) // 8
    pos += nbytes * (2 if t in be.UPDATE_TYPES else 1)
    return start, ncols, pos


def segments_holding(segments: Sequence[SegmentInfo], gtids: set[str]) -> list[SegmentInfo]:
    """Of segments (binlog order), those that can hold one of gtids, chosen by the GTID state
    recorded in each index entry: a segment holds G when its state covers G and the state
    before it does not (the states are cumulative: the server's whole GTID position). So undo
    reads a few segments, not every one of the source. Where a state is missing, the segment
    and the next one are read. A GTID no state covers is not in the shipped binlog."""
    wanted = [g for g in (try_parse_gtid(x) for x in gtids) if g is not None]
    if not wanted:
        return list(segments)
    out: list[SegmentInfo] = []
    before: GtidSet | None = None
    for seg in segments:
        after = GtidSet.parse(seg.gtid_state, strict=False) if seg.gtid_state else None
        if after is None or before is None or any(
                after.contains(g) and not before.contains(g) for g in wanted):
            out.append(seg)
        before = after
    return out


def read_transactions(store: ObjectStore, segments: Sequence[SegmentInfo], gtids: set[str],
                      t_from: float | None, t_to: float | None,
                      flt: TableFilter | None) -> tuple[list[str], list[list[RowChange]]]:
    """The chosen transactions' row events, oldest first; DDL or a short row image refuses."""
    found: list[str] = []
    txns: list[list[RowChange]] = []
    for seg in segments:
        fde_raw, events = _segment_events(store, seg)
        fde = be.parse_fde(fde_raw) if fde_raw else None
        tracker = be.BoundaryTracker()
        tracker.fde = fde
        cur: list[RowChange] | None = None
        gtid, gtid_time, maps = "", 0, {}
        for hdr, mv in be.iter_raw_events(events):
            raw = bytes(mv)
            t = hdr.type
            if t == be.FORMAT_DESCRIPTION_EVENT:
                fde = be.parse_fde(raw)
                tracker.feed(hdr, raw)
                continue
            cks = fde.checksum_len if fde else 0
            if t == be.MARIA_GTID_EVENT:
                g = be.parse_maria_gtid(hdr, be.body(raw, cks))
                gtid, gtid_time, maps, cur = g.gtid, hdr.timestamp, {}, []
            elif cur is not None and t == be.TABLE_MAP_EVENT:
                tm = be.parse_table_map(be.body(raw, cks), fde)
                maps[tm.table_id] = (tm, raw)
            elif cur is not None and t in be.ROWS_TYPES:
                if t in be.COMPRESSED_ROWS_TYPES:
                    cur.append(RowChange("", "", "compressed", b"", raw, gtid))
                else:
                    tid = int.from_bytes(raw[be.HEADER_LEN:be.HEADER_LEN + 6], "little")
                    tm, tm_raw = maps[tid]
                    kind = ("write" if t in be.WRITE_TYPES else "update" if t in be.UPDATE_TYPES
                            else "delete")
                    cur.append(RowChange(tm.db, tm.table, kind, tm_raw, raw, gtid))
            elif cur is not None and t in be.QUERY_TYPES:
                q = be.parse_query(hdr, be.body(raw, cks), fde)
                head = q.sql.lstrip().split(None, 1)[0].upper() if q.sql.strip() else ""
                if head not in ("BEGIN", "COMMIT"):
                    cur.append(RowChange(q.db, "", "query", b"", q.sql.encode(), gtid))
            if tracker.feed(hdr, raw) and cur is not None:
                commit = max(gtid_time, hdr.timestamp)
                chosen = (gtid in gtids) if gtids else (
                    (t_from is None or commit >= int(t_from)) and (t_to is None or commit <= t_to))
                if chosen:
                    _check(cur, gtid, flt)
                    picked = [c for c in cur if flt is None or flt.matches(c.db, c.table)]
                    if picked:
                        found.append(gtid)
                        txns.append(picked)
                cur = None
    return found, txns


def _check(changes: list[RowChange], gtid: str, flt: TableFilter | None) -> None:
    for c in changes:
        if c.kind == "query":
            sql = " ".join(c.raw.decode("utf-8", "replace").split())[:120]
            raise UsageError(f"transaction {gtid} holds a statement, not row events: {sql!r}; undo "
                             "cannot invert DDL or statement-based changes",
                             "choose a range without it (--gtid, or --from/--to around it)")
        if c.kind == "compressed":
            raise UsageError(f"transaction {gtid} has compressed row events; undo cannot read them",
                             "set log_bin_compress=OFF on the source")
        if flt is not None and not flt.matches(c.db, c.table):
            continue
        if c.kind in ("update", "delete"):
            b = memoryview(c.raw)[be.HEADER_LEN:]
            _, ncols, _ = _rows_layout(be.parse_header(c.raw).type, b, None)
            start = _rows_layout(be.parse_header(c.raw).type, b, None)[0]
            _, pos = be._packed_int(b, start)
            nbytes = (ncols + 7) // 8
            maps = [bytes(b[pos:pos + nbytes])]
            if c.kind == "update":
                maps.append(bytes(b[pos + nbytes:pos + 2 * nbytes]))
            full = bytes([0xFF] * (ncols // 8)) + (bytes([(1 << (ncols % 8)) - 1]) if ncols % 8 else b"")
            if any(m != full for m in maps):
                raise UsageError(f"the {c.kind} of {c.db}.{c.table} in transaction {gtid} does not "
                                 "carry every column: undo needs binlog_row_image=FULL on the source",
                                 "SET GLOBAL binlog_row_image=FULL (it applies to new transactions)")


# -- building the inverse ----------------------------------------------------------------------
def _split_rows(c: RowChange, cks: int, tm: be.TableMap) -> tuple[bytes, list[bytes]]:
    """(the body up to the first row, each row's bytes; an update's row holds both images)."""
    t = be.parse_header(c.raw).type
    b = memoryview(c.raw)[be.HEADER_LEN:len(c.raw) - cks]
    start, ncols, pos = _rows_layout(t, b, None)
    present = list(range(ncols))
    rows = []
    while pos < len(b):
        end = be._skip_row(tm, present, b, pos)
        if t in be.UPDATE_TYPES:
            mid = end
            end = be._skip_row(tm, present, b, mid)
            rows.append((bytes(b[pos:mid]), bytes(b[mid:end])))
        else:
            rows.append((bytes(b[pos:end]),))
        pos = end
    return bytes(b[:_rows_layout(t, b, None)[2]]), rows  # type: ignore[return-value]


_SWAP = {be.WRITE_ROWS_EVENT_V1: be.DELETE_ROWS_EVENT_V1, be.DELETE_ROWS_EVENT_V1: be.WRITE_ROWS_EVENT_V1,
         be.WRITE_ROWS_EVENT: be.DELETE_ROWS_EVENT, be.DELETE_ROWS_EVENT: be.WRITE_ROWS_EVENT,
         be.UPDATE_ROWS_EVENT_V1: be.UPDATE_ROWS_EVENT_V1, be.UPDATE_ROWS_EVENT: be.UPDATE_ROWS_EVENT}
_WRITE_OF = {be.UPDATE_ROWS_EVENT_V1: be.WRITE_ROWS_EVENT_V1, be.UPDATE_ROWS_EVENT: be.WRITE_ROWS_EVENT,
             be.WRITE_ROWS_EVENT_V1: be.WRITE_ROWS_EVENT_V1, be.WRITE_ROWS_EVENT: be.WRITE_ROWS_EVENT,
             be.DELETE_ROWS_EVENT_V1: be.WRITE_ROWS_EVENT_V1, be.DELETE_ROWS_EVENT: be.WRITE_ROWS_EVENT}


def _event(template: bytes, etype: int, body: bytes, cks: int) -> bytes:
    out = bytearray(template[:be.HEADER_LEN] + body + b"\0" * cks)
    out[4] = etype
    struct.pack_into("<I", out, 9, len(out))
    out[be.HEADER_LEN + 6] |= 1  # STMT_END_F: each inverse event is a statement of its own
    if cks:
        out[-cks:] = struct.pack("<I", be.crc32(bytes(out[:-cks])))
    return bytes(out)


@dataclass
class Inverse:
    """One inverse statement: its table map and row event (rows kept apart, so that --force can
    leave some out), and the state the live rows must hold now."""

    db: str
    table: str
    tm_raw: bytes
    template: bytes  # the source row event (its header is reused)
    inv_type: int
    head: bytes  # the inverse event's body before its rows
    rows: list[bytes]  # the inverse rows
    expect_head: bytes  # a WRITE event's body before its rows
    expect_rows: list[bytes]  # the images the live rows must hold now (or must not exist)
    absent: bool  # the undone change deleted these rows: they must not exist now
    first: int = 0  # the number of its first row among all inverse rows (newest first)

    def event(self, cks: int, skip: set[int] | frozenset[int] = frozenset()) -> bytes | None:
        rows = [r for n, r in enumerate(self.rows, self.first) if n not in skip]
        return _event(self.template, self.inv_type, self.head + b"".join(rows), cks) if rows else None

    def expect_event(self, i: int, cks: int) -> bytes:
        t = _WRITE_OF[be.parse_header(self.template).type]
        return _event(self.template, t, self.expect_head + self.expect_rows[i], cks)


def build_inverse(txns: list[list[RowChange]], fde: be.FormatDescription | None) -> list[Inverse]:
    cks = fde.checksum_len if fde else 0
    out: list[Inverse] = []
    n = 0
    for txn in reversed(txns):
        for c in reversed(txn):
            tm = be.parse_table_map(be.body(c.tm_raw, cks), fde)
            t = be.parse_header(c.raw).type
            head, rows = _split_rows(c, cks, tm)
            rows.reverse()
            if c.kind == "update":
                ncols_at, ncols, _ = _rows_layout(t, memoryview(head), None)
                _, p = be._packed_int(memoryview(head), ncols_at)
                whead = head[:p + (ncols + 7) // 8]
                inv = Inverse(c.db, c.table, c.tm_raw, c.raw, t, head, [a + b for b, a in rows],
                              whead, [a for _, a in rows], False, n)
            else:
                flat = [r[0] for r in rows]
                inv = Inverse(c.db, c.table, c.tm_raw, c.raw, _SWAP[t], head, flat, head, flat,
                              c.kind == "delete", n)
            n += len(rows)
            out.append(inv)
    return out


# -- conflict check and apply ------------------------------------------------------------------
def _pk(cur, db: str, table: str) -> list[str]:
    cur.execute("SELECT column_name FROM information_schema.statistics WHERE table_schema=%s AND "
                "table_name=%s AND index_name='PRIMARY' ORDER BY seq_in_index", (db, table))
    return [r[0].decode() if isinstance(r[0], bytes) else r[0] for r in cur.fetchall()]


def _columns(cur, db: str, table: str) -> list[str]:
    cur.execute("SELECT column_name FROM information_schema.columns WHERE table_schema=%s AND "
                "table_name=%s ORDER BY ordinal_position", (db, table))
    return [r[0].decode() if isinstance(r[0], bytes) else r[0] for r in cur.fetchall()]


def _binlog(cur, events: list[bytes]) -> None:
    cur.execute(b"BINLOG '" + base64.b64encode(b"".join(events)) + b"'")


def check_conflicts(conn, inverse: list[Inverse], fde_raw: bytes, cks: int,
                    post: int) -> list[tuple[str, set[int]]]:
    """Rows whose live state is not what the undone transactions left: (text line, the numbers
    of every inverse row with that key)."""
    scratch = f"backupkit_undo_{uuid.uuid4().hex[:8]}"
    tables = sorted({(i.db, i.table) for i in inverse})
    conflicts: list[tuple[str, set[int]]] = []
    with conn.cursor() as cur:
        cur.execute("SET SESSION sql_log_bin=0")
        for db, table in tables:
            if not _pk(cur, db, table):
                raise UsageError(f"table {db}.{table} has no primary key: undo cannot check its rows")
        cur.execute(f"CREATE DATABASE {quote_ident(scratch)}")
        try:
            for db, table in tables:
                cur.execute(f"CREATE TABLE {qualified(scratch, table)} AS SELECT * FROM "
                            f"{qualified(db, table)} WHERE 0")
                cur.execute(f"ALTER TABLE {qualified(scratch, table)} ADD COLUMN bk_seq INT NULL, "
                            "ADD COLUMN bk_absent TINYINT NULL")
            _binlog(cur, [fde_raw])
            for inv in inverse:
                tm = rename_table_map(inv.tm_raw, scratch, cks, post)
                for i in range(len(inv.expect_rows)):
                    _binlog(cur, [tm, inv.expect_event(i, cks)])
                    cur.execute(f"UPDATE {qualified(scratch, inv.table)} SET bk_seq=%s, "
                                "bk_absent=%s WHERE bk_seq IS NULL", (inv.first + i, int(inv.absent)))
                conn.commit()
            for db, table in tables:
                conflicts += _compare(cur, scratch, db, table)
        finally:
            cur.execute(f"DROP DATABASE IF EXISTS {quote_ident(scratch)}")
            cur.execute("SET SESSION sql_log_bin=1")
    return conflicts


def _compare(cur, scratch: str, db: str, table: str) -> list[tuple[str, set[int]]]:
    pk = _pk(cur, db, table)
    cols = _columns(cur, db, table)
    s, lv = qualified(scratch, table), qualified(db, table)
    on = " AND ".join(f"s.{quote_ident(c)} <=> l.{quote_ident(c)}" for c in pk)
    on2 = " AND ".join(f"s2.{quote_ident(c)} <=> s.{quote_ident(c)}" for c in pk)
    diffs = ", ".join(f"NOT (s.{quote_ident(c)} <=> l.{quote_ident(c)})" for c in cols)
    keys = ", ".join(f"s.{quote_ident(c)}" for c in pk)
    on3 = " AND ".join(f"s3.{quote_ident(c)} <=> s.{quote_ident(c)}" for c in pk)
    seqs = f"(SELECT GROUP_CONCAT(s3.bk_seq) FROM {s} s3 WHERE {on3})"
    cur.execute(f"SELECT s.bk_absent, l.{quote_ident(pk[0])} IS NULL, {seqs}, {keys}, {diffs} FROM {s} s "
                f"LEFT JOIN {lv} l ON {on} WHERE s.bk_seq = (SELECT MIN(s2.bk_seq) FROM {s} s2 "
                f"WHERE {on2})")
    out = []
    for row in cur.fetchall():
        absent, gone = bool(row[0]), bool(row[1])
        nums = {int(x) for x in _text(row[2]).split(",") if x}
        key = ", ".join(f"{c}={_text(v)}" for c, v in zip(pk, row[3:3 + len(pk)], strict=True))
        changed = [c for c, d in zip(cols, row[3 + len(pk):], strict=True) if d]
        if absent and not gone:
            out.append((f"{db}.{table} ({key}): a row with this key exists again", nums))
        elif not absent and gone:
            out.append((f"{db}.{table} ({key}): deleted since", nums))
        elif not absent and changed:
            out.append((f"{db}.{table} ({key}): changed since: {', '.join(changed)}", nums))
    return out


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _pairs(group: list[Inverse], cks: int, skip: set[int] | frozenset[int] = frozenset()) -> list[bytes]:
    out: list[bytes] = []
    for g in group:
        ev = g.event(cks, skip)
        if ev is not None:
            out += [g.tm_raw, ev]
    return out


def binlog_sql(fde_raw: bytes, inverse: list[Inverse], cks: int) -> str:
    """The undo as SQL: BINLOG statements in one transaction (what --dry-run prints)."""
    lines = ["BINLOG '" + base64.b64encode(fde_raw).decode() + "';", "BEGIN;"]
    for i in range(0, len(inverse), PER_BINLOG):
        group = inverse[i:i + PER_BINLOG]
        lines.append(f"-- {', '.join(sorted({f'{g.db}.{g.table}' for g in group}))}")
        lines.append("BINLOG '" + base64.b64encode(b"".join(_pairs(group, cks))).decode() + "';")
    lines.append("COMMIT;")
    return "\n".join(_readable(fde_raw, _pairs(inverse, cks)) + lines)


def _readable(fde_raw: bytes, events: list[bytes]) -> list[str]:
    """The inverse rows as mariadb-binlog -v pseudo-SQL comments ([] without the tool)."""
    tool = find_binlog_tool()
    if not tool:
        return []
    with tempfile.NamedTemporaryFile(suffix=".binlog") as fh:
        fh.write(be.MAGIC + fde_raw + b"".join(events))
        fh.flush()
        proc = subprocess.run([tool, "--no-defaults", "-v", "--base64-output=decode-rows", fh.name],
                              capture_output=True, timeout=300)
    if proc.returncode != 0:
        return []
    rows = [ln[4:] for ln in proc.stdout.decode("utf-8", "replace").splitlines() if ln.startswith("### ")]
    return ["-- the undo, readable (mariadb-binlog -v; @N is the Nth column):"] + \
        [f"--   {ln}" for ln in rows]


def undo(store: ObjectStore, catalog: Catalog, spec: ConnSpec, *, gtids: Sequence[str] = (),
         t_from: float | None = None, t_to: float | None = None, flt: TableFilter | None = None,
         source_id: str | None = None, dry_run: bool = False, force: bool = False) -> UndoResult:
    """Undo the chosen transactions on the live server spec (or only print the SQL)."""
    if not gtids and t_from is None and t_to is None:
        raise UsageError("say what to undo: --gtid G[,G2] or --from T1 --to T2")
    for g in gtids:
        if try_parse_gtid(g) is None:
            raise UsageError(f"{g!r} is not a GTID", "write it as domain-server-sequence, e.g. 0-1-42")
    sources = [source_id] if source_id else catalog.sources()
    if len(sources) != 1:
        raise UsageError("the repository holds several sources: give --source-id")
    segments = in_use(catalog.segments(sources[0]))  # a compacted segment, not also its parts
    if t_from is not None or t_to is not None:
        segments = [s for s in segments if (t_to is None or not s.first_event_time
                                            or s.first_event_time <= t_to + 1)
                    and (t_from is None or not s.last_commit_time or s.last_commit_time >= t_from - 1)]
    if not segments:
        raise UsageError(f"no shipped binlog of source {sources[0]} covers the range")
    want = set(gtids)
    if want:
        segments = segments_holding(segments, want)
    found, txns = read_transactions(store, segments, want, t_from, t_to, flt)
    missing = [g for g in gtids if g not in found]
    if missing and not set(missing) <= _gtids_without_rows(store, segments, set(missing)):
        raise UsageError(f"GTID {missing[0]} is not in the repository's shipped binlog of source "
                         f"{sources[0]}", "run 'backupkit binlog events' to find it")
    if not txns:
        span = f"{format_time(t_from) if t_from else '-'} .. {format_time(t_to) if t_to else '-'}"
        raise UsageError(f"no transaction to undo ({', '.join(gtids) or span})")
    fde_raw, _ = _segment_events(store, segments[0])
    fde = be.parse_fde(fde_raw)
    cks = fde.checksum_len
    post = fde.post_header_len(be.TABLE_MAP_EVENT, 8)
    inverse = build_inverse(txns, fde)
    result = UndoResult(found, sum(len(i.rows) for i in inverse),
                        sorted({f"{i.db}.{i.table}" for i in inverse}))
    if dry_run:
        result.sql = binlog_sql(fde_raw, inverse, cks)
        return result
    conn = connect(spec, autocommit=False)
    try:
        with conn.cursor() as cur:
            for stmt in SESSION_SETUP:
                cur.execute(stmt)
        found_conflicts = sorted(check_conflicts(conn, inverse, fde_raw, cks, post),
                                 key=lambda c: min(c[1], default=0))  # newest change first
        result.conflicts = [text for text, _ in found_conflicts]
        skip: set[int] = set()
        if found_conflicts and force:
            skip = {n for _, nums in found_conflicts for n in nums}
            result.skipped = list(result.conflicts)
            result.notes.append(f"--force: {len(result.conflicts)} conflicting row(s) left as they "
                                "are: " + "; ".join(result.conflicts[:20]))
        elif result.conflicts:
            more = f" (and {len(result.conflicts) - 5} more)" if len(result.conflicts) > 5 else ""
            raise UndoConflict(f"{len(result.conflicts)} row(s) changed since the undone "
                               f"transaction(s): {'; '.join(result.conflicts[:5])}{more}; nothing "
                               "was changed", "undo them first, or choose other transactions")
        with conn.cursor() as cur:
            _binlog(cur, [fde_raw])
            cur.execute("BEGIN")
            try:
                for i in range(0, len(inverse), PER_BINLOG):
                    events = _pairs(inverse[i:i + PER_BINLOG], cks, skip)
                    if events:
                        _binlog(cur, events)
                cur.execute("COMMIT")
            except pymysql.err.MySQLError as exc:
                conn.rollback()
                raise TargetError(f"the undo failed on {spec.display()} and was rolled back: "
                                  f"{exc.args[-1]}") from None
        result.applied = True
    except BackupkitError:
        raise
    finally:
        conn.close()
    return result


def _gtids_without_rows(store: ObjectStore, segments: Sequence[SegmentInfo], gtids: set[str]) -> set[str]:
    """Those of gtids that the shipped binlog holds (as transactions without chosen rows)."""
    seen: set[str] = set()
    for seg in segments:
        fde_raw, events = _segment_events(store, seg)
        cks = be.parse_fde(fde_raw).checksum_len if fde_raw else 0
        for hdr, mv in be.iter_raw_events(events):
            if hdr.type == be.MARIA_GTID_EVENT:
                g = be.parse_maria_gtid(hdr, be.body(bytes(mv), cks)).gtid
                if g in gtids:
                    seen.add(g)
    return seen
