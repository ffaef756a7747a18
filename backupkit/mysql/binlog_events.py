"""Binlog events from raw bytes: headers, the few bodies backupkit needs, transaction boundaries.

Works on the bytes of a binlog file, a shipped segment, or a replication stream. Pure Python,
no server needed. Positions follow the server's convention: an event's header ``log_pos`` is
the offset where the event ENDS, so it starts at ``log_pos - event_size``.

Over 500 lines on purpose: one job (the binlog format), read as ``be.*`` by the shipper, the
replay and the loss count alike; a sixth of it is the table of event types and flags.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from backupkit.errors import IntegrityError

MAGIC = b"\xfebin"
HEADER_LEN = 19
CHECKSUM_LEN = 4

# -- event types ---------------------------------------------------------------------
UNKNOWN_EVENT = 0
START_EVENT_V3 = 1
QUERY_EVENT = 2
STOP_EVENT = 3
ROTATE_EVENT = 4
INTVAR_EVENT = 5
LOAD_EVENT = 6
SLAVE_EVENT = 7
CREATE_FILE_EVENT = 8
APPEND_BLOCK_EVENT = 9
EXEC_LOAD_EVENT = 10
DELETE_FILE_EVENT = 11
NEW_LOAD_EVENT = 12
RAND_EVENT = 13
USER_VAR_EVENT = 14
FORMAT_DESCRIPTION_EVENT = 15
XID_EVENT = 16
BEGIN_LOAD_QUERY_EVENT = 17
EXECUTE_LOAD_QUERY_EVENT = 18
TABLE_MAP_EVENT = 19
PRE_GA_WRITE_ROWS_EVENT = 20
PRE_GA_UPDATE_ROWS_EVENT = 21
PRE_GA_DELETE_ROWS_EVENT = 22
WRITE_ROWS_EVENT_V1 = 23
UPDATE_ROWS_EVENT_V1 = 24
DELETE_ROWS_EVENT_V1 = 25
INCIDENT_EVENT = 26
HEARTBEAT_LOG_EVENT = 27
IGNORABLE_LOG_EVENT = 28
ROWS_QUERY_LOG_EVENT = 29
WRITE_ROWS_EVENT = 30
UPDATE_ROWS_EVENT = 31
DELETE_ROWS_EVENT = 32
GTID_LOG_EVENT = 33  # MySQL
ANONYMOUS_GTID_LOG_EVENT = 34
PREVIOUS_GTIDS_LOG_EVENT = 35
TRANSACTION_CONTEXT_EVENT = 36
VIEW_CHANGE_EVENT = 37
XA_PREPARE_LOG_EVENT = 38
PARTIAL_UPDATE_ROWS_EVENT = 39
TRANSACTION_PAYLOAD_EVENT = 40
HEARTBEAT_LOG_EVENT_V2 = 41
GTID_TAGGED_LOG_EVENT = 42
# MariaDB
ANNOTATE_ROWS_EVENT = 160
BINLOG_CHECKPOINT_EVENT = 161
MARIA_GTID_EVENT = 162
GTID_LIST_EVENT = 163
START_ENCRYPTION_EVENT = 164
QUERY_COMPRESSED_EVENT = 165
WRITE_ROWS_COMPRESSED_EVENT_V1 = 166
UPDATE_ROWS_COMPRESSED_EVENT_V1 = 167
DELETE_ROWS_COMPRESSED_EVENT_V1 = 168
WRITE_ROWS_COMPRESSED_EVENT = 169
UPDATE_ROWS_COMPRESSED_EVENT = 170
DELETE_ROWS_COMPRESSED_EVENT = 171

EVENT_NAMES: dict[int, str] = {
    v: k.removesuffix("_EVENT").removesuffix("_LOG").lower()
    for k, v in dict(globals()).items()
    if k.endswith("_EVENT") and isinstance(v, int)
}
EVENT_NAMES.update({
    WRITE_ROWS_EVENT_V1: "write_rows", UPDATE_ROWS_EVENT_V1: "update_rows",
    DELETE_ROWS_EVENT_V1: "delete_rows", WRITE_ROWS_EVENT: "write_rows",
    UPDATE_ROWS_EVENT: "update_rows", DELETE_ROWS_EVENT: "delete_rows",
    WRITE_ROWS_COMPRESSED_EVENT_V1: "write_rows", UPDATE_ROWS_COMPRESSED_EVENT_V1: "update_rows",
    DELETE_ROWS_COMPRESSED_EVENT_V1: "delete_rows", WRITE_ROWS_COMPRESSED_EVENT: "write_rows",
    UPDATE_ROWS_COMPRESSED_EVENT: "update_rows", DELETE_ROWS_COMPRESSED_EVENT: "delete_rows",
    MARIA_GTID_EVENT: "gtid", GTID_LOG_EVENT: "gtid", ANONYMOUS_GTID_LOG_EVENT: "anonymous_gtid",
    HEARTBEAT_LOG_EVENT: "heartbeat", HEARTBEAT_LOG_EVENT_V2: "heartbeat",
    QUERY_COMPRESSED_EVENT: "query", FORMAT_DESCRIPTION_EVENT: "format_description",
})

WRITE_TYPES = frozenset({WRITE_ROWS_EVENT_V1, WRITE_ROWS_EVENT, WRITE_ROWS_COMPRESSED_EVENT_V1,
                         WRITE_ROWS_COMPRESSED_EVENT, PRE_GA_WRITE_ROWS_EVENT})
UPDATE_TYPES = frozenset({UPDATE_ROWS_EVENT_V1, UPDATE_ROWS_EVENT, UPDATE_ROWS_COMPRESSED_EVENT_V1,
                          UPDATE_ROWS_COMPRESSED_EVENT, PRE_GA_UPDATE_ROWS_EVENT,
                          PARTIAL_UPDATE_ROWS_EVENT})
DELETE_TYPES = frozenset({DELETE_ROWS_EVENT_V1, DELETE_ROWS_EVENT, DELETE_ROWS_COMPRESSED_EVENT_V1,
                          DELETE_ROWS_COMPRESSED_EVENT, PRE_GA_DELETE_ROWS_EVENT})
ROWS_TYPES = WRITE_TYPES | UPDATE_TYPES | DELETE_TYPES
COMPRESSED_ROWS_TYPES = frozenset(range(WRITE_ROWS_COMPRESSED_EVENT_V1, DELETE_ROWS_COMPRESSED_EVENT + 1))
QUERY_TYPES = frozenset({QUERY_EVENT, QUERY_COMPRESSED_EVENT, EXECUTE_LOAD_QUERY_EVENT})
GTID_TYPES = frozenset({MARIA_GTID_EVENT, GTID_LOG_EVENT, ANONYMOUS_GTID_LOG_EVENT,
                        GTID_TAGGED_LOG_EVENT})
#: Events that never belong to a transaction (file and stream bookkeeping).
NON_TRANSACTION_TYPES = frozenset({FORMAT_DESCRIPTION_EVENT, ROTATE_EVENT, STOP_EVENT,
                                   GTID_LIST_EVENT, BINLOG_CHECKPOINT_EVENT,
                                   PREVIOUS_GTIDS_LOG_EVENT, HEARTBEAT_LOG_EVENT,
                                   HEARTBEAT_LOG_EVENT_V2, START_ENCRYPTION_EVENT, INCIDENT_EVENT,
                                   START_EVENT_V3})

# -- header flags ----------------------------------------------------------------------
LOG_EVENT_BINLOG_IN_USE_F = 0x1
LOG_EVENT_ARTIFICIAL_F = 0x20
LOG_EVENT_RELAY_LOG_F = 0x40
LOG_EVENT_IGNORABLE_F = 0x80
LOG_EVENT_SKIP_REPLICATION_F = 0x8000

# -- checksum algorithms -----------------------------------------------------------------
CHECKSUM_OFF = 0
CHECKSUM_CRC32 = 1
CHECKSUM_UNDEF = 255

# -- MariaDB GTID event flags ------------------------------------------------------------
FL_STANDALONE = 1
FL_GROUP_COMMIT_ID = 2
FL_TRANSACTIONAL = 4
FL_ALLOW_PARALLEL = 8
FL_WAITED = 16
FL_DDL = 32
FL_PREPARED_XA = 64
FL_COMPLETED_XA = 128

_HDR = struct.Struct("<IBIIIH")


@dataclass(frozen=True, slots=True)
class EventHeader:
    """The 19-byte common header of every event."""

    timestamp: int
    type: int
    server_id: int
    event_size: int
    log_pos: int  # end offset of the event in its binlog file (0 for artificial events)
    flags: int

    @property
    def start_pos(self) -> int:
        """Offset where the event begins (meaningful only when log_pos is set)."""
        return self.log_pos - self.event_size

    @property
    def name(self) -> str:
        return EVENT_NAMES.get(self.type, f"type_{self.type}")

    @property
    def artificial(self) -> bool:
        return bool(self.flags & LOG_EVENT_ARTIFICIAL_F)


def parse_header(data: bytes | memoryview, offset: int = 0) -> EventHeader:
    """The common header at offset; raises IntegrityError when there are too few bytes."""
    if len(data) - offset < HEADER_LEN:
        raise IntegrityError("binlog event header is truncated")
    return EventHeader(*_HDR.unpack_from(data, offset))


def crc32(data: bytes | memoryview) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def event_crc_ok(raw: bytes) -> bool:
    """True when the last 4 bytes of an event are the CRC32 of the rest."""
    if len(raw) <= CHECKSUM_LEN:
        return False
    return crc32(memoryview(raw)[:-4]) == struct.unpack_from("<I", raw, len(raw) - 4)[0]


# -- format description ------------------------------------------------------------------
@dataclass(frozen=True)
class FormatDescription:
    """What a format description event says about the events after it."""

    binlog_version: int
    server_version: str
    create_timestamp: int
    header_length: int
    post_header_lengths: bytes
    checksum_alg: int  # CHECKSUM_OFF, CHECKSUM_CRC32 or CHECKSUM_UNDEF (pre-checksum server)

    @property
    def checksum_len(self) -> int:
        """Bytes of checksum at the end of every following event."""
        return CHECKSUM_LEN if self.checksum_alg == CHECKSUM_CRC32 else 0

    @property
    def is_mariadb(self) -> bool:
        return "mariadb" in self.server_version.lower()

    def post_header_len(self, event_type: int, default: int) -> int:
        if 0 < event_type <= len(self.post_header_lengths):
            return self.post_header_lengths[event_type - 1]
        return default


def _fde_crc(raw: bytes | bytearray) -> int:
    """CRC32 of a format description event as the server computes it: with the in-use flag
    cleared (the server sets and clears that flag in place, without touching the CRC)."""
    buf = bytearray(raw[:-4])
    buf[17] &= ~LOG_EVENT_BINLOG_IN_USE_F & 0xFF
    return crc32(buf)


def fde_checksum_alg(raw: bytes) -> int:
    """The checksum algorithm a format description event announces.

    A checksum-aware server always ends its FDE with the algorithm byte and a CRC32 of the
    event, even when the algorithm is OFF; an older server writes neither. So the byte before
    the last four is the algorithm exactly when those four bytes are the event's CRC32."""
    if len(raw) >= HEADER_LEN + 57 + 5:
        alg = raw[-5]
        if alg in (CHECKSUM_OFF, CHECKSUM_CRC32) and \
                _fde_crc(raw) == struct.unpack_from("<I", raw, len(raw) - 4)[0]:
            return alg
    return CHECKSUM_UNDEF


def parse_fde(raw: bytes) -> FormatDescription:
    """Parse a whole format description event (header included)."""
    hdr = parse_header(raw)
    if hdr.type != FORMAT_DESCRIPTION_EVENT:
        raise IntegrityError(f"expected a format description event, found {hdr.name}")
    alg = fde_checksum_alg(raw)
    end = len(raw) - (5 if alg != CHECKSUM_UNDEF else 0)
    b = HEADER_LEN
    version = struct.unpack_from("<H", raw, b)[0]
    server_version = raw[b + 2:b + 52].split(b"\0", 1)[0].decode("ascii", "replace")
    created = struct.unpack_from("<I", raw, b + 52)[0]
    hlen = raw[b + 56]
    return FormatDescription(version, server_version, created, hlen, bytes(raw[b + 57:end]), alg)


def clear_in_use(raw: bytes) -> bytes:
    """A format description event with LOG_EVENT_BINLOG_IN_USE_F cleared and its CRC fixed.

    The server sets the flag on the live file's FDE and clears it when the file is closed;
    a segment is a closed, complete file, so it carries the flag cleared. The server's CRC
    already covers the event with the flag cleared, so the CRC stays as it is: the result is
    byte-identical to the FDE of the same file once the server has closed it."""
    hdr = parse_header(raw)
    if not hdr.flags & LOG_EVENT_BINLOG_IN_USE_F:
        return raw
    out = bytearray(raw)
    struct.pack_into("<H", out, 17, hdr.flags & ~LOG_EVENT_BINLOG_IN_USE_F)
    return bytes(out)


def fix_fde_position(raw: bytes) -> bytes:
    """A format description event as it stands at offset 4 of its file (log_pos = 4 + size).

    The server sends the FDE with log_pos 0 when a dump starts inside a file."""
    hdr = parse_header(raw)
    want = len(MAGIC) + hdr.event_size
    if hdr.log_pos == want:
        return raw
    had_crc = fde_checksum_alg(raw) != CHECKSUM_UNDEF
    out = bytearray(raw)
    struct.pack_into("<I", out, 13, want)
    if had_crc:
        struct.pack_into("<I", out, len(out) - 4, _fde_crc(out))
    return bytes(out)


# -- small readers ---------------------------------------------------------------------
def _packed_int(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """A length-encoded integer at pos: (value, next pos)."""
    first = buf[pos]
    if first < 251:
        return first, pos + 1
    if first == 252:
        return struct.unpack_from("<H", buf, pos + 1)[0], pos + 3
    if first == 253:
        return int.from_bytes(buf[pos + 1:pos + 4], "little"), pos + 4
    if first == 254:
        return struct.unpack_from("<Q", buf, pos + 1)[0], pos + 9
    raise IntegrityError("bad length-encoded integer in binlog event")


def body(raw: bytes, checksum_len: int) -> memoryview:
    """The event's bytes after the common header, without the trailing checksum."""
    mv = memoryview(raw)
    return mv[HEADER_LEN:len(mv) - checksum_len]


def _uncompress(buf: bytes | memoryview) -> bytes:
    """MariaDB's compressed binlog payload: a header byte, a big-endian length, zlib data."""
    head = buf[0]
    if head & 0x80 == 0:
        raise IntegrityError("compressed binlog payload has a bad header")
    lenlen = head & 0x07
    if (head & 0x70) >> 4 != 0:
        raise IntegrityError("compressed binlog payload uses an unknown algorithm")
    return zlib.decompress(bytes(buf[1 + lenlen:]))


# -- bodies -----------------------------------------------------------------------------
@dataclass(frozen=True)
class MariaGtid:
    """A MariaDB GTID event: begins a transaction (or a standalone statement)."""

    domain_id: int
    server_id: int
    seq_no: int
    flags: int
    commit_id: int | None

    @property
    def gtid(self) -> str:
        return f"{self.domain_id}-{self.server_id}-{self.seq_no}"

    @property
    def standalone(self) -> bool:
        return bool(self.flags & FL_STANDALONE)

    @property
    def ddl(self) -> bool:
        return bool(self.flags & FL_DDL)


def parse_maria_gtid(hdr: EventHeader, b: memoryview) -> MariaGtid:
    seq_no, domain_id, flags = struct.unpack_from("<QIB", b, 0)
    commit_id = struct.unpack_from("<Q", b, 13)[0] if flags & FL_GROUP_COMMIT_ID and len(b) >= 21 else None
    return MariaGtid(domain_id, hdr.server_id, seq_no, flags, commit_id)


@dataclass(frozen=True)
class MysqlGtid:
    """A MySQL GTID (or anonymous GTID) event."""

    sid: str
    gno: int
    flags: int
    last_committed: int | None = None
    sequence_number: int | None = None
    immediate_commit_us: int | None = None  # commit time on this server, microseconds
    original_commit_us: int | None = None

    @property
    def gtid(self) -> str:
        return f"{self.sid}:{self.gno}" if self.gno else ""


def parse_mysql_gtid(b: memoryview) -> MysqlGtid:
    flags = b[0]
    sid = str(uuid.UUID(bytes=bytes(b[1:17])))
    gno = struct.unpack_from("<q", b, 17)[0]
    out = MysqlGtid(sid, gno, flags)
    pos = 25
    if len(b) >= pos + 17 and b[pos] == 2:
        last, seq = struct.unpack_from("<qq", b, pos + 1)
        pos += 17
        imm = orig = None
        if len(b) >= pos + 7:
            imm = int.from_bytes(b[pos:pos + 7], "little")
            pos += 7
            if imm & (1 << 55):
                imm &= ~(1 << 55)
                if len(b) >= pos + 7:
                    orig = int.from_bytes(b[pos:pos + 7], "little")
            else:
                orig = imm
        out = MysqlGtid(sid, gno, flags, last, seq, imm, orig)
    return out


@dataclass(frozen=True)
class Query:
    """A query event: the default database and the statement text."""

    db: str
    sql: str
    thread_id: int
    exec_time: int
    error_code: int


def parse_query(hdr: EventHeader, b: memoryview, fde: FormatDescription | None = None) -> Query:
    post = fde.post_header_len(QUERY_EVENT, 13) if fde else 13
    if hdr.type == EXECUTE_LOAD_QUERY_EVENT:
        post = fde.post_header_len(EXECUTE_LOAD_QUERY_EVENT, 26) if fde else 26
    thread_id, exec_time, db_len, error_code = struct.unpack_from("<IIBH", b, 0)
    status_len = struct.unpack_from("<H", b, 11)[0] if post >= 13 else 0
    pos = post + status_len
    db = bytes(b[pos:pos + db_len]).decode("utf-8", "replace")
    pos += db_len + 1
    raw_sql = b[pos:]
    if hdr.type == QUERY_COMPRESSED_EVENT:
        try:
            raw_sql = memoryview(_uncompress(raw_sql))
        except (IntegrityError, zlib.error, IndexError):
            raw_sql = memoryview(b"/* compressed query could not be decoded */")
    return Query(db, bytes(raw_sql).decode("utf-8", "replace"), thread_id, exec_time, error_code)


@dataclass(frozen=True)
class Rotate:
    """A rotate event: the next file and the position to continue at."""

    next_file: str
    position: int


def parse_rotate(b: memoryview) -> Rotate:
    pos = struct.unpack_from("<Q", b, 0)[0]
    return Rotate(bytes(b[8:]).decode("utf-8", "replace"), pos)


def parse_xid(b: memoryview) -> int:
    return struct.unpack_from("<Q", b, 0)[0]


def parse_gtid_list(b: memoryview) -> list[tuple[int, int, int]]:
    """A MariaDB GTID list event: (domain, server, seq) of each domain."""
    count = struct.unpack_from("<I", b, 0)[0] & 0x0FFFFFFF
    return [struct.unpack_from("<IIQ", b, 4 + 16 * i) for i in range(count)]


def parse_annotate(b: memoryview) -> str:
    return bytes(b).decode("utf-8", "replace")


@dataclass
class TableMap:
    """Which table a rows event's table id means, with column types for counting rows."""

    table_id: int
    db: str
    table: str
    types: bytes
    metas: list[int]


_META_LEN = {4: 1, 5: 1, 15: 2, 16: 2, 17: 1, 18: 1, 19: 1, 140: 2, 141: 1, 242: 1, 245: 1, 246: 2,
             247: 2, 248: 2, 249: 1, 250: 1, 251: 1, 252: 1, 253: 2, 254: 2, 255: 1}


def parse_table_map(b: memoryview, fde: FormatDescription | None = None) -> TableMap:
    post = fde.post_header_len(TABLE_MAP_EVENT, 8) if fde else 8
    table_id = int.from_bytes(b[0:6 if post == 8 else 4], "little")
    pos = post
    dlen = b[pos]
    db = bytes(b[pos + 1:pos + 1 + dlen]).decode("utf-8", "replace")
    pos += 1 + dlen + 1
    tlen = b[pos]
    table = bytes(b[pos + 1:pos + 1 + tlen]).decode("utf-8", "replace")
    pos += 1 + tlen + 1
    ncols, pos = _packed_int(b, pos)
    types = bytes(b[pos:pos + ncols])
    pos += ncols
    _mlen, pos = _packed_int(b, pos)
    metas = []
    for t in types:
        n = _META_LEN.get(t, 0)
        if n == 0:
            metas.append(0)
        elif n == 1:
            metas.append(b[pos])
        elif t in (254, 247, 248, 246):  # big-endian pairs: (real type, length) / (precision, scale)
            metas.append(b[pos] << 8 | b[pos + 1])
        else:
            metas.append(b[pos] | b[pos + 1] << 8)
        pos += n
    return TableMap(table_id, db, table, types, metas)


_DIG2BYTES = (0, 1, 1, 2, 2, 3, 3, 4, 4, 4)


def _decimal_size(precision: int, scale: int) -> int:
    intg = precision - scale
    return (intg // 9) * 4 + _DIG2BYTES[intg % 9] + (scale // 9) * 4 + _DIG2BYTES[scale % 9]


_FIXED = {1: 1, 2: 2, 3: 4, 5: 8, 6: 0, 7: 4, 8: 8, 9: 3, 10: 3, 11: 3, 12: 8, 13: 1, 14: 3}


def _value_size(t: int, meta: int, buf: memoryview, pos: int) -> int:
    """Bytes one column value takes in a row image."""
    if t in _FIXED:
        return _FIXED[t]
    if t == 4:
        return meta or 4
    if t in (15, 253, 140):  # VARCHAR, VAR_STRING, VARCHAR_COMPRESSED
        return (1 + buf[pos]) if meta < 256 else (2 + struct.unpack_from("<H", buf, pos)[0])
    if t == 16:  # BIT: low byte = bits, high byte = bytes
        return (meta >> 8) + (1 if meta & 0xFF else 0)
    if t == 17:
        return 4 + (meta + 1) // 2
    if t == 18:
        return 5 + (meta + 1) // 2
    if t == 19:
        return 3 + (meta + 1) // 2
    if t == 246:
        return _decimal_size(meta >> 8, meta & 0xFF)
    if t in (247, 248):
        return meta & 0xFF
    if t in (245, 249, 250, 251, 252, 255, 141, 242):  # length prefix of meta bytes
        return meta + int.from_bytes(buf[pos:pos + meta], "little")
    if t == 254:
        real = meta >> 8
        if real in (247, 248):
            return meta & 0xFF
        maxlen = (((meta >> 4) & 0x300) ^ 0x300) + (meta & 0xFF)
        return (1 + buf[pos]) if maxlen <= 255 else (2 + struct.unpack_from("<H", buf, pos)[0])
    raise IntegrityError(f"cannot size column type {t}")


def _skip_row(tm: TableMap, present: list[int], buf: memoryview, pos: int) -> int:
    npresent = len(present)
    nulls = buf[pos:pos + (npresent + 7) // 8]
    pos += (npresent + 7) // 8
    for i, col in enumerate(present):
        if nulls[i >> 3] & (1 << (i & 7)):
            continue
        pos += _value_size(tm.types[col], tm.metas[col], buf, pos)
    return pos


def count_rows(hdr: EventHeader, b: memoryview, tm: TableMap,
               fde: FormatDescription | None = None) -> int:
    """How many rows a rows event changes (an update's before and after image count once)."""
    if hdr.type in (WRITE_ROWS_EVENT, UPDATE_ROWS_EVENT, DELETE_ROWS_EVENT, PARTIAL_UPDATE_ROWS_EVENT):
        post = 10
        pos = 8
        extra = struct.unpack_from("<H", b, pos)[0]
        pos += extra
    else:
        post = fde.post_header_len(hdr.type, 8) if fde and hdr.type < 160 else 8
        pos = post
    ncols, pos = _packed_int(b, pos)
    nbytes = (ncols + 7) // 8
    present = [i for i in range(ncols) if b[pos + (i >> 3)] & (1 << (i & 7))]
    pos += nbytes
    present_after = present
    if hdr.type in UPDATE_TYPES:
        present_after = [i for i in range(ncols) if b[pos + (i >> 3)] & (1 << (i & 7))]
        pos += nbytes
    rows_buf = b
    if hdr.type in COMPRESSED_ROWS_TYPES:
        rows_buf = memoryview(_uncompress(b[pos:]))
        pos = 0
    end = len(rows_buf)
    n = 0
    while pos < end:
        pos = _skip_row(tm, present, rows_buf, pos)
        if hdr.type in UPDATE_TYPES:
            pos = _skip_row(tm, present_after, rows_buf, pos)
        n += 1
    if pos != end:
        raise IntegrityError("rows event does not end on a row boundary")
    return n


# -- reading files ----------------------------------------------------------------------
class EventReader:
    """Iterates (header, raw event bytes) of a binlog file or segment, magic first.

    ``fde`` holds the last format description seen, so callers can strip checksums."""

    def __init__(self, fileobj: BinaryIO, verify_checksums: bool = False) -> None:
        self.fileobj = fileobj
        self.verify = verify_checksums
        self.fde: FormatDescription | None = None
        self.offset = 0

    def _read(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            block = self.fileobj.read(n - len(out))
            if not block:
                break
            out += block
        return out

    def __iter__(self) -> Iterator[tuple[EventHeader, bytes]]:
        magic = self._read(4)
        if magic != MAGIC:
            raise IntegrityError("not a binlog file (bad magic)")
        self.offset = 4
        while True:
            head = self._read(HEADER_LEN)
            if not head:
                return
            hdr = parse_header(head)
            if hdr.event_size < HEADER_LEN:
                raise IntegrityError(f"binlog event at offset {self.offset} has bad size {hdr.event_size}")
            rest = self._read(hdr.event_size - HEADER_LEN)
            if len(rest) != hdr.event_size - HEADER_LEN:
                raise IntegrityError(f"binlog event at offset {self.offset} is truncated")
            raw = head + rest
            if hdr.type == FORMAT_DESCRIPTION_EVENT:
                self.fde = parse_fde(raw)
            elif self.verify and self.fde is not None and self.fde.checksum_len and not event_crc_ok(raw):
                raise IntegrityError(f"binlog event at offset {self.offset} fails its CRC32")
            self.offset += hdr.event_size
            yield hdr, raw


def iter_events(fileobj: BinaryIO, verify_checksums: bool = False) -> EventReader:
    """(header, raw) of every event in a binlog file or segment; checks the magic first."""
    return EventReader(fileobj, verify_checksums)


def iter_raw_events(data: bytes | memoryview, offset: int = 0) -> Iterator[tuple[EventHeader, memoryview]]:
    """(header, raw) of every complete event in a buffer of concatenated events (no magic)."""
    mv = memoryview(data)
    while offset + HEADER_LEN <= len(mv):
        hdr = parse_header(mv, offset)
        if hdr.event_size < HEADER_LEN or offset + hdr.event_size > len(mv):
            raise IntegrityError(f"binlog event at offset {offset} is truncated")
        yield hdr, mv[offset:offset + hdr.event_size]
        offset += hdr.event_size


# -- transaction boundaries ----------------------------------------------------------
_END_WORDS = ("COMMIT", "ROLLBACK")
_XA_END_PREFIXES = ("XA PREPARE", "XA COMMIT", "XA ROLLBACK")


def _stmt_head(sql: str) -> str:
    return " ".join(sql.lstrip().lstrip("/").split(None, 3)[:3]).upper() if sql else ""


class BoundaryTracker:
    """Tells, event by event, whether the stream is between transactions.

    A transaction ends with an XID event, a QUERY "COMMIT"/"ROLLBACK" (non-transactional
    engines), an XA PREPARE/COMMIT/ROLLBACK, a MySQL transaction payload (binlog transaction
    compression: the whole transaction in one event), or the single statement after a standalone
    MariaDB GTID (DDL) or after a MySQL GTID not followed by BEGIN."""

    def __init__(self) -> None:
        self.fde: FormatDescription | None = None
        self.in_txn = False
        self._single = False  # the next statement ends the transaction
        self._mysql_gtid = False  # just after a MySQL GTID: BEGIN or a single statement follows

    @property
    def checksum_len(self) -> int:
        return self.fde.checksum_len if self.fde else 0

    def reset(self) -> None:
        """Forget a partial transaction (the stream restarts at a boundary)."""
        self.in_txn = False
        self._single = False
        self._mysql_gtid = False

    def feed(self, hdr: EventHeader, raw: bytes | memoryview) -> bool:
        """Account for one event; True when the stream is at a boundary after it."""
        t = hdr.type
        if t == FORMAT_DESCRIPTION_EVENT:
            self.fde = parse_fde(bytes(raw))
            return not self.in_txn
        if t == MARIA_GTID_EVENT:
            g = parse_maria_gtid(hdr, body(bytes(raw), self.checksum_len))
            self.in_txn = True
            self._single = g.standalone
            self._mysql_gtid = False
            return False
        if t in (GTID_LOG_EVENT, ANONYMOUS_GTID_LOG_EVENT, GTID_TAGGED_LOG_EVENT):
            self.in_txn = True
            self._single = False
            self._mysql_gtid = True
            return False
        if t in QUERY_TYPES:
            q = parse_query(hdr, body(bytes(raw), self.checksum_len), self.fde)
            head = _stmt_head(q.sql)
            if head == "BEGIN" or head.startswith(("XA START", "XA BEGIN")):
                self.in_txn = True
                self._single = self._mysql_gtid = False
                return False
            if self.in_txn and (self._single or self._mysql_gtid):
                self.reset()
                return True
            if head in _END_WORDS or head.startswith(_XA_END_PREFIXES):
                self.reset()
                return True
            return not self.in_txn
        if t in (XID_EVENT, XA_PREPARE_LOG_EVENT, TRANSACTION_PAYLOAD_EVENT):
            # A MySQL transaction payload holds the whole (compressed) transaction.
            self.reset()
            return True
        if t in NON_TRANSACTION_TYPES:
            return not self.in_txn
        # INTVAR/RAND/USER_VAR/ANNOTATE/TABLE_MAP/rows: part of the transaction being built
        if self._mysql_gtid and t not in (INTVAR_EVENT, RAND_EVENT, USER_VAR_EVENT,
                                          ROWS_QUERY_LOG_EVENT, IGNORABLE_LOG_EVENT):
            self._mysql_gtid = False
        return not self.in_txn


def ends_transaction(tracker: BoundaryTracker, hdr: EventHeader, raw: bytes | memoryview) -> bool:
    """Feed one event to tracker; True when it closed a transaction (or stands outside one)."""
    return tracker.feed(hdr, raw)


# -- transactions ----------------------------------------------------------------------
DDL_WORDS = ("CREATE", "ALTER", "DROP", "RENAME", "TRUNCATE", "GRANT", "REVOKE", "ANALYZE",
             "OPTIMIZE", "REPAIR", "SET PASSWORD", "FLUSH", "INSTALL", "UNINSTALL")


@dataclass
class Transaction:
    """One transaction as the binlog holds it, summarised for listings and restore planning."""

    gtid: str = ""
    server_id: int = 0
    start_pos: int = 0  # offset of its first event in the binlog file
    end_pos: int = 0  # offset just after its last event
    first_time: int = 0  # smallest event timestamp (statement start)
    commit_time: int = 0  # the later of the MariaDB GTID event's and the ending event's time
    end_time: int = 0  # timestamp of the event that ended it
    commit_us: int | None = None  # MySQL 8: microsecond commit time
    flags: int = 0  # MariaDB GTID flags
    events: dict[str, int] = field(default_factory=dict)
    rows: dict[str, dict[str, int | None]] = field(default_factory=dict)  # db.table -> op -> rows
    tables: list[str] = field(default_factory=list)
    statements: list[str] = field(default_factory=list)  # query texts other than BEGIN/COMMIT
    annotations: list[str] = field(default_factory=list)  # original statements of row events
    ddl: bool = False
    databases: list[str] = field(default_factory=list)
    complete: bool = False

    def add_table(self, name: str) -> None:
        if name not in self.tables:
            self.tables.append(name)

    def to_dict(self) -> dict:
        return {
            "gtid": self.gtid, "server_id": self.server_id, "start_pos": self.start_pos,
            "end_pos": self.end_pos, "first_time": self.first_time, "commit_time": self.commit_time,
            "end_time": self.end_time, "commit_us": self.commit_us, "flags": self.flags,
            "events": dict(self.events), "rows": {k: dict(v) for k, v in self.rows.items()},
            "tables": list(self.tables), "statements": list(self.statements),
            "annotations": list(self.annotations), "ddl": self.ddl,
            "databases": list(self.databases), "complete": self.complete,
        }


def _is_ddl(sql: str) -> bool:
    head = _stmt_head(sql)
    return head.startswith(DDL_WORDS)


def transactions(events: Iterable[tuple[EventHeader, bytes | memoryview]],
                 max_statement: int = 4000, include_partial: bool = False) -> Iterator[Transaction]:
    """Group events into transactions, in order. Bookkeeping events outside any transaction
    (FDE, rotate, GTID list, checkpoint, stop) are skipped. A transaction still open when the
    events end is yielded only with include_partial (complete=False)."""
    tracker = BoundaryTracker()
    maps: dict[int, TableMap] = {}
    cur: Transaction | None = None
    op_of = {**{t: "insert" for t in WRITE_TYPES}, **{t: "update" for t in UPDATE_TYPES},
             **{t: "delete" for t in DELETE_TYPES}}
    for hdr, raw in events:
        t = hdr.type
        if t == FORMAT_DESCRIPTION_EVENT or (cur is None and t in NON_TRANSACTION_TYPES):
            tracker.feed(hdr, raw)
            continue
        if cur is None:
            cur = Transaction(start_pos=hdr.start_pos if hdr.log_pos else 0, first_time=hdr.timestamp,
                              server_id=hdr.server_id)
            maps.clear()
        raw_b = bytes(raw)
        cks = tracker.checksum_len
        name = hdr.name
        cur.events[name] = cur.events.get(name, 0) + 1
        if hdr.timestamp and (not cur.first_time or hdr.timestamp < cur.first_time):
            cur.first_time = hdr.timestamp
        try:
            if t == MARIA_GTID_EVENT:
                g = parse_maria_gtid(hdr, body(raw_b, cks))
                cur.gtid, cur.flags, cur.commit_time = g.gtid, g.flags, hdr.timestamp
                cur.ddl = cur.ddl or g.ddl
            elif t in (GTID_LOG_EVENT, ANONYMOUS_GTID_LOG_EVENT):
                g2 = parse_mysql_gtid(body(raw_b, cks))
                cur.gtid = g2.gtid
                cur.commit_us = g2.immediate_commit_us or None
            elif t in QUERY_TYPES:
                q = parse_query(hdr, body(raw_b, cks), tracker.fde)
                head = _stmt_head(q.sql)
                if head not in ("BEGIN", "COMMIT", "ROLLBACK") and len(cur.statements) < 20:
                    cur.statements.append(q.sql[:max_statement])
                    if _is_ddl(q.sql):
                        cur.ddl = True
                if q.db and q.db not in cur.databases:
                    cur.databases.append(q.db)
            elif t in (ANNOTATE_ROWS_EVENT, ROWS_QUERY_LOG_EVENT):
                text = parse_annotate(body(raw_b, cks))
                if t == ROWS_QUERY_LOG_EVENT:
                    text = text[1:]
                if len(cur.annotations) < 20:
                    cur.annotations.append(text[:max_statement])
            elif t == TABLE_MAP_EVENT:
                tm = parse_table_map(body(raw_b, cks), tracker.fde)
                maps[tm.table_id] = tm
                cur.add_table(f"{tm.db}.{tm.table}")
            elif t in ROWS_TYPES:
                b = body(raw_b, cks)
                tm2 = maps.get(int.from_bytes(b[0:6], "little"))
                if tm2 is not None:
                    key = f"{tm2.db}.{tm2.table}"
                    op = op_of[t]
                    per = cur.rows.setdefault(key, {})
                    try:
                        n: int | None = count_rows(hdr, b, tm2, tracker.fde)
                    except (IntegrityError, IndexError, struct.error, zlib.error):
                        n = None
                    prev = per.get(op, 0)
                    per[op] = None if n is None or prev is None else prev + n
        except (IntegrityError, IndexError, struct.error, UnicodeDecodeError):
            pass  # a listing must not stop on one odd event; boundaries come from the tracker
        boundary = tracker.feed(hdr, raw_b)
        if boundary:
            cur.end_pos = hdr.log_pos
            cur.end_time = hdr.timestamp
            # The MariaDB GTID event is written at commit; the ending event (XID/COMMIT) too.
            cur.commit_time = max(cur.commit_time, hdr.timestamp)
            cur.complete = True
            if cur.gtid or cur.events.keys() - {"binlog_checkpoint", "gtid_list"}:
                yield cur
            cur = None
    if cur is not None and include_partial:
        yield cur
