"""Table filters for a table-level replay: which tables pass, and the event stream rebuilt for them.

Patterns work like mydumper's filters: ``db.table`` with shell wildcards (``shop.*``,
``shop.order_*``); a bare ``db`` means ``db.*``. ``--exclude-tables`` patterns win over
``--tables``. ``--rename-db old=new`` sends the selected tables of ``old`` into ``new``.

The replay filters each source statement whole (the server forgets table maps at the end of
each statement, so one statement's row events are never split): the table maps and row events
of selected tables are kept, the rest dropped, the kept table maps rewritten to the new database
name, and the last kept row event carries the statement-end flag. Other tables' events are never
sent. Query events (DDL, statement-based DML) that touch a selected table are refused, naming
the event: they cannot be filtered or renamed safely.
"""

from __future__ import annotations

import fnmatch
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from backupkit.errors import UsageError
from backupkit.mysql import binlog_events as be
from backupkit.restore.replay.units import ReplayError, TxnInfo

STMT_END_F = 1


def split_patterns(values: Iterable[str] | None) -> tuple[str, ...]:
    """'a.b,c.*' (repeatable) -> ('a.b', 'c.*'); a bare db means db.*."""
    out: list[str] = []
    for v in values or ():
        for p in str(v).split(","):
            p = p.strip().strip("`")
            if p:
                out.append(p if "." in p else f"{p}.*")
    return tuple(out)


def parse_renames(values: Iterable[str] | None) -> dict[str, str]:
    """'old=new' (repeatable, comma separated) -> {old: new}."""
    out: dict[str, str] = {}
    for v in values or ():
        for item in str(v).split(","):
            item = item.strip()
            if not item:
                continue
            old, sep, new = item.partition("=")
            if not sep or not old.strip() or not new.strip():
                raise UsageError(f"--rename-db {item!r}: write OLD=NEW",
                                 "e.g. --rename-db shop=shop_restored")
            out[old.strip()] = new.strip()
    return out


@dataclass(frozen=True)
class TableFilter:
    """Which tables a table-level restore takes, and where they land."""

    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    renames: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, tables: Iterable[str] | None, exclude: Iterable[str] | None = None,
              rename: Iterable[str] | None = None) -> TableFilter:
        inc = split_patterns(tables)
        if not inc:
            raise UsageError("--tables names no table", "e.g. --tables 'shop.orders,shop.items'")
        return cls(inc, split_patterns(exclude), tuple(sorted(parse_renames(rename).items())))

    def matches(self, db: str, table: str) -> bool:
        name = f"{db}.{table}"
        return (any(fnmatch.fnmatchcase(name, p) for p in self.include)
                and not any(fnmatch.fnmatchcase(name, p) for p in self.exclude))

    def target_db(self, db: str) -> str:
        return dict(self.renames).get(db, db)

    def unmatched(self, names: Sequence[tuple[str, str]]) -> list[str]:
        """Include patterns that match none of these (db, table) names."""
        return [p for p in self.include
                if not any(fnmatch.fnmatchcase(f"{d}.{t}", p) for d, t in names)]

    def describe(self) -> str:
        text = ", ".join(self.include)
        if self.exclude:
            text += " except " + ", ".join(self.exclude)
        if self.renames:
            text += " (" + ", ".join(f"{a} -> {b}" for a, b in self.renames) + ")"
        return text


def _with_crc(raw: bytearray, cks: int) -> bytes:
    if cks:
        raw[-cks:] = struct.pack("<I", be.crc32(bytes(raw[:-cks])))
    return bytes(raw)


def rename_table_map(raw: bytes, new_db: str, cks: int, post: int) -> bytes:
    """The table map event with its database name replaced (size and checksum fixed)."""
    h = be.HEADER_LEN
    end = len(raw) - cks
    pos = h + post
    dlen = raw[pos]
    db = new_db.encode()
    if len(db) > 255:
        raise UsageError(f"database name {new_db!r} is too long")
    out = bytearray(raw[:pos] + bytes([len(db)]) + db + raw[pos + 1 + dlen:end] + b"\0" * cks)
    struct.pack_into("<I", out, 9, len(out))
    return _with_crc(out, cks)


def set_stmt_end(raw: bytes, cks: int, post_table_id: int = 6) -> bytes:
    """The row event with its STMT_END_F flag set (checksum fixed)."""
    off = be.HEADER_LEN + post_table_id
    if raw[off] & STMT_END_F:
        return raw
    out = bytearray(raw)
    out[off] |= STMT_END_F
    return _with_crc(out, cks)


_IDENT = re.compile(r"`((?:[^`]|``)+)`|([A-Za-z0-9_$]+)")


@dataclass
class EventFilter:
    """The per-replay state: one statement's events buffered, filtered when it ends."""

    flt: TableFilter
    selected: set[tuple[str, str]] = field(default_factory=set)  # concrete source tables
    stmt: list[tuple[int, bytes]] = field(default_factory=list)
    keep_ids: dict[int, bool] = field(default_factory=dict)
    txn_kept: int = 0
    txn_dropped: int = 0
    mixed: int = 0  # transactions that also changed other tables (their rows were left out)
    dropped_txns: int = 0  # transactions with nothing for the selected tables
    tables_seen: set[str] = field(default_factory=set)
    ddl_count: int = 0  # DDL statements on selected tables replayed

    def feed(self, t: int, raw: bytes, fde: be.FormatDescription | None) -> list[bytes]:
        """A table map or row event; returns the kept events once its statement ended."""
        cks = fde.checksum_len if fde else 0
        if t == be.TABLE_MAP_EVENT:
            tm = be.parse_table_map(be.body(raw, cks), fde)
            keep = self.flt.matches(tm.db, tm.table)
            self.keep_ids[tm.table_id] = keep
            if keep:
                self.tables_seen.add(f"{tm.db}.{tm.table}")
                new = self.flt.target_db(tm.db)
                if new != tm.db:
                    post = fde.post_header_len(be.TABLE_MAP_EVENT, 8) if fde else 8
                    raw = rename_table_map(raw, new, cks, post)
            self.stmt.append((t, raw))
            return []
        self.stmt.append((t, raw))
        if len(raw) > 26 and raw[25] & STMT_END_F:
            return self._flush(cks, fde)
        return []

    def _flush(self, cks: int, fde: be.FormatDescription | None) -> list[bytes]:
        post = fde.post_header_len(be.TABLE_MAP_EVENT, 8) if fde else 8
        id_len = 6 if post == 8 else 4
        kept: list[bytes] = []
        last_row = -1
        for t, raw in self.stmt:
            tid = int.from_bytes(raw[be.HEADER_LEN:be.HEADER_LEN + id_len], "little")
            if self.keep_ids.get(tid, False):
                kept.append(raw)
                if t != be.TABLE_MAP_EVENT:
                    last_row = len(kept) - 1
            elif t != be.TABLE_MAP_EVENT:
                self.txn_dropped += 1
        self.stmt, self.keep_ids = [], {}
        if last_row < 0:
            return []
        self.txn_kept += 1
        kept = kept[:last_row + 1]  # table maps after the last kept row event serve nothing
        kept[-1] = set_stmt_end(kept[-1], cks, id_len)
        return kept

    def query(self, q: be.Query, info: TxnInfo) -> None:
        """A query event inside a transaction: refused when it touches a selected table."""
        head = q.sql.lstrip().split(None, 1)[0].upper() if q.sql.strip() else ""
        if head in ("BEGIN", "COMMIT", "XA", "SAVEPOINT", "ROLLBACK", "SET"):
            return
        hit = self.touched(q.db, q.sql)
        if hit:
            kind = "DDL" if _is_ddl(head) else "a statement-based event"
            raise ReplayError(f"{kind} touches selected table {hit} at {info.where()}: "
                              f"{' '.join(q.sql.split())[:120]!r}; a table-level restore cannot "
                              "filter or rename it",
                              "restore to a time before it (--to-time/--stop-before-gtid), or "
                              "restore the whole server")

    def ddl(self, q: be.Query, info: TxnInfo) -> list[bytes] | None:
        """A standalone DDL statement that touches a selected table, rewritten for the target
        (database renamed), or None when it touches none; refused when it is not one of the
        statements that keep the table's name (ALTER TABLE, TRUNCATE, CREATE/DROP INDEX)."""
        hit = self.touched(q.db, q.sql)
        if not hit:
            return None
        words = q.sql.split(None, 3)
        head = " ".join(w.upper() for w in words[:2])
        keeps_name = head in ("ALTER TABLE", "TRUNCATE TABLE", "CREATE INDEX", "CREATE UNIQUE",
                              "CREATE FULLTEXT", "CREATE SPATIAL", "DROP INDEX", "ALTER ONLINE") \
            or (words and words[0].upper() == "TRUNCATE")
        if not keeps_name or re.search(r"\bRENAME\b", q.sql, re.I):
            self.query(q, info)  # raises, naming the event
        sql = q.sql
        for db in sorted({d for d, _ in self.selected}):
            new = self.flt.target_db(db)
            if new != db:
                pat = r"(?<![\w`$])(?:`" + re.escape(db) + r"`|" + re.escape(db) + r")\s*\."
                sql = re.sub(pat, lambda _m, n=new: "`" + n.replace("`", "``") + "`.", sql)
        db = hit.split(".", 1)[0]
        stmts = [sql.encode()]
        if q.db == db:
            stmts.insert(0, b"USE `" + self.flt.target_db(db).replace("`", "``").encode() + b"`")
        self.ddl_count += 1
        return stmts

    def touched(self, default_db: str, sql: str) -> str | None:
        words = {(m.group(1) or m.group(2)).replace("``", "`").lower() for m in _IDENT.finditer(sql)}
        for db, table in sorted(self.selected):
            if table.lower() in words and (db == default_db or db.lower() in words):
                return f"{db}.{table}"
        return None

    def end_txn(self) -> bool:
        """The transaction ended: True when it had rows for the selected tables."""
        kept, dropped = self.txn_kept, self.txn_dropped
        self.txn_kept = self.txn_dropped = 0
        self.stmt, self.keep_ids = [], {}
        if kept and dropped:
            self.mixed += 1
        if not kept:
            self.dropped_txns += 1
        return bool(kept)

    def notes(self) -> list[str]:
        out = []
        if self.ddl_count:
            out.append(f"{self.ddl_count} DDL statement(s) on the selected tables replayed")
        if self.mixed:
            out.append(f"{self.mixed} transaction(s) also changed other tables: only the selected "
                       "tables' rows were applied")
        return out


def _is_ddl(head: str) -> bool:
    return head in ("CREATE", "ALTER", "DROP", "RENAME", "TRUNCATE")
