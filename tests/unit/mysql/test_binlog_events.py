"""Binlog event parsing and transaction boundaries, on synthetic events (no server)."""

from __future__ import annotations

import io
import struct
import zlib

import pytest

from backupkit.errors import IntegrityError
from backupkit.mysql import binlog_events as be

SERVER_VERSION = b"10.11.19-MariaDB-log"
# post-header lengths of MariaDB 10.11's format description event, by event type - 1
MARIADB_POST_HEADERS = ([56, 13, 0, 8, 0, 18, 0, 4, 4, 4, 4, 18, 0, 0, 228, 0, 4, 26, 8, 0, 0, 0, 8, 8, 8,
                         2, 0, 0, 0, 10, 10, 10, 0, 0, 0, 0, 0, 0, 10, 10, 10] + [0] * 119
                        + [4, 19, 4, 0, 13, 8, 8, 8, 10, 10, 10])


class Binlog:
    """Builds a binlog file event by event, with correct positions and CRC32s."""

    def __init__(self, checksum: bool = True, in_use: bool = True) -> None:
        self.checksum = checksum
        self.data = bytearray(be.MAGIC)
        self.add_fde(in_use)

    def event(self, etype: int, body: bytes, ts: int = 1000, server_id: int = 1, flags: int = 0) -> bytes:
        size = be.HEADER_LEN + len(body) + (4 if self.checksum else 0)
        end = len(self.data) + size
        raw = struct.pack("<IBIIIH", ts, etype, server_id, size, end, flags) + body
        if self.checksum:
            raw += struct.pack("<I", zlib.crc32(raw) & 0xFFFFFFFF)
        self.data += raw
        return raw

    def add_fde(self, in_use: bool) -> None:
        post = bytes(MARIADB_POST_HEADERS)
        body = struct.pack("<H", 4) + SERVER_VERSION.ljust(50, b"\0") + struct.pack("<I", 0) + bytes([19])
        body += post + bytes([1 if self.checksum else 0])
        size = be.HEADER_LEN + len(body) + 4
        raw = bytearray(struct.pack("<IBIIIH", 1000, be.FORMAT_DESCRIPTION_EVENT, 1, size, 4 + size, 0))
        raw += body
        raw += struct.pack("<I", zlib.crc32(raw) & 0xFFFFFFFF)  # computed with the flag cleared
        if in_use:
            raw[17] |= be.LOG_EVENT_BINLOG_IN_USE_F
        self.data += raw

    def gtid(self, seq: int, standalone: bool = False, ts: int = 1000, domain: int = 0) -> bytes:
        flags = be.FL_STANDALONE if standalone else be.FL_TRANSACTIONAL
        return self.event(be.MARIA_GTID_EVENT, struct.pack("<QIB", seq, domain, flags) + bytes(6), ts=ts)

    def query(self, sql: str, db: str = "d", ts: int = 1000) -> bytes:
        status = b""
        body = struct.pack("<IIBHH", 7, 0, len(db), 0, len(status)) + status
        body += db.encode() + b"\0" + sql.encode()
        return self.event(be.QUERY_EVENT, body, ts=ts)

    def xid(self, ts: int = 1000) -> bytes:
        return self.event(be.XID_EVENT, struct.pack("<Q", 42), ts=ts)

    def table_map(self, table_id: int, db: str, table: str, types: bytes, meta: bytes) -> bytes:
        body = table_id.to_bytes(6, "little") + b"\0\0"
        body += bytes([len(db)]) + db.encode() + b"\0" + bytes([len(table)]) + table.encode() + b"\0"
        body += bytes([len(types)]) + types + bytes([len(meta)]) + meta + bytes((len(types) + 7) // 8)
        return self.event(be.TABLE_MAP_EVENT, body)

    def rows(self, etype: int, table_id: int, ncols: int, rows: list[bytes]) -> bytes:
        body = table_id.to_bytes(6, "little") + b"\1\0" + bytes([ncols]) + b"\xff" * ((ncols + 7) // 8)
        if etype == be.UPDATE_ROWS_EVENT_V1:
            body += b"\xff" * ((ncols + 7) // 8)
        return self.event(etype, body + b"".join(rows))

    def rotate(self, name: str) -> bytes:
        return self.event(be.ROTATE_EVENT, struct.pack("<Q", 4) + name.encode())


def _events(data: bytes):
    return list(be.iter_events(io.BytesIO(bytes(data)), verify_checksums=True))


@pytest.mark.parametrize("checksum", [True, False])
def test_fde_checksum_is_detected_and_in_use_flag_does_not_change_the_crc(checksum):
    log = Binlog(checksum=checksum)
    (hdr, fde), = _events(log.data)
    assert hdr.flags & be.LOG_EVENT_BINLOG_IN_USE_F
    assert be.fde_checksum_alg(fde) == (be.CHECKSUM_CRC32 if checksum else be.CHECKSUM_OFF)
    cleared = be.clear_in_use(fde)
    assert be.parse_header(cleared).flags == 0
    assert cleared[-4:] == fde[-4:]  # the server's CRC already covers the cleared flag
    assert be.fde_checksum_alg(cleared) == be.fde_checksum_alg(fde)
    info = be.parse_fde(fde)
    assert info.is_mariadb and info.header_length == 19
    assert info.checksum_len == (4 if checksum else 0)


def test_fde_with_log_pos_zero_is_put_back_at_offset_4():
    log = Binlog(in_use=False)
    (_, fde), = _events(log.data)
    moved = bytearray(fde)
    struct.pack_into("<I", moved, 13, 0)
    fixed = be.fix_fde_position(bytes(moved))
    assert fixed == fde


def test_transactions_are_grouped_with_gtid_commit_time_rows_and_ddl():
    log = Binlog()
    log.gtid(1, standalone=True, ts=1001)
    log.query("CREATE TABLE d.t (id INT, c VARCHAR(10))", ts=1001)
    log.gtid(2, ts=1005)
    log.event(be.ANNOTATE_ROWS_EVENT, b"INSERT INTO d.t VALUES (1,'a'),(2,NULL)", ts=1002)
    log.table_map(70, "d", "t", bytes([3, 15]), struct.pack("<H", 10))
    row1 = b"\x00" + struct.pack("<i", 1) + b"\x01a"
    row2 = b"\x02" + struct.pack("<i", 2)
    log.rows(be.WRITE_ROWS_EVENT_V1, 70, 2, [row1, row2])
    log.xid(ts=1005)
    log.gtid(3, ts=1006)
    log.table_map(70, "d", "t", bytes([3, 15]), struct.pack("<H", 10))
    log.rows(be.UPDATE_ROWS_EVENT_V1, 70, 2, [row1 + row1])
    log.query("COMMIT", ts=1006)  # a non-transactional engine ends with a COMMIT query
    log.rotate("binlog.000002")
    txns = list(be.transactions(_events(log.data)))
    assert [t.gtid for t in txns] == ["0-1-1", "0-1-2", "0-1-3"]
    ddl, ins, upd = txns
    assert ddl.ddl and ddl.statements == ["CREATE TABLE d.t (id INT, c VARCHAR(10))"]
    assert ins.rows == {"d.t": {"insert": 2}} and ins.tables == ["d.t"]
    assert ins.commit_time == 1005 and ins.first_time == 1000
    assert ins.annotations == ["INSERT INTO d.t VALUES (1,'a'),(2,NULL)"]
    assert upd.rows == {"d.t": {"update": 1}}
    assert ddl.end_pos == ins.start_pos and ins.end_pos == upd.start_pos
    assert upd.events == {"gtid": 1, "table_map": 1, "update_rows": 1, "query": 1}


def test_boundary_tracker_never_cuts_inside_a_transaction():
    log = Binlog()
    marks = []
    tracker = be.BoundaryTracker()
    (fde_hdr, fde), = _events(log.data)
    assert tracker.feed(fde_hdr, fde) and tracker.checksum_len == 4
    for raw in (log.gtid(1), log.query("INSERT INTO t VALUES (1)"), log.query("INSERT INTO t VALUES (2)"),
                log.xid(), log.gtid(2, standalone=True), log.event(be.INTVAR_EVENT, b"\x02" + bytes(8)),
                log.query("ALTER TABLE t ADD c INT"), log.query("BEGIN"), log.query("UPDATE t SET c=1"),
                log.query("XA PREPARE 'x'")):
        marks.append(tracker.feed(be.parse_header(raw), raw))
    assert marks == [False, False, False, True, False, False, True, False, False, True]


def test_rotate_and_gtid_list_parse():
    log = Binlog()
    rot = log.rotate("binlog.000042")
    assert be.parse_rotate(be.body(rot, 4)) == be.Rotate("binlog.000042", 4)
    glist = log.event(be.GTID_LIST_EVENT, struct.pack("<I", 2) + struct.pack("<IIQ", 0, 1, 77)
                      + struct.pack("<IIQ", 3, 2, 5))
    assert be.parse_gtid_list(be.body(glist, 4)) == [(0, 1, 77), (3, 2, 5)]


def test_mysql_gtid_event_with_commit_timestamp():
    sid = bytes(range(16))
    body = bytes([1]) + sid + struct.pack("<q", 9) + bytes([2]) + struct.pack("<qq", 3, 4)
    body += (1_700_000_000_123_456).to_bytes(7, "little")
    g = be.parse_mysql_gtid(memoryview(body))
    assert g.gtid == "00010203-0405-0607-0809-0a0b0c0d0e0f:9"
    assert g.immediate_commit_us == g.original_commit_us == 1_700_000_000_123_456


def test_damaged_files_raise_integrity_errors():
    with pytest.raises(IntegrityError, match="magic"):
        list(be.iter_events(io.BytesIO(b"nope")))
    log = Binlog()
    log.gtid(1)
    with pytest.raises(IntegrityError, match="truncated"):
        list(be.iter_events(io.BytesIO(bytes(log.data[:-3]))))
    bad = bytearray(log.data)
    bad[-6] ^= 0xFF
    with pytest.raises(IntegrityError, match="CRC32"):
        list(be.iter_events(io.BytesIO(bytes(bad)), verify_checksums=True))


def test_value_sizes_of_common_column_types():
    # DECIMAL(10,2): 4 + 1 bytes; DATETIME2(3): 5 + 2; CHAR(100) utf8mb4 uses a 2-byte length
    assert be._decimal_size(10, 2) == 5
    assert be._value_size(18, 3, memoryview(b""), 0) == 7
    meta = (((254 ^ ((400 & 0x300) >> 4)) << 8) | (400 & 0xFF))
    assert be._value_size(254, meta, memoryview(struct.pack("<H", 3) + b"abc"), 0) == 5
    assert be._value_size(252, 2, memoryview(struct.pack("<H", 4) + b"blob"), 0) == 6
    assert be._value_size(16, (1 << 8) | 2, memoryview(b""), 0) == 2  # BIT(10)
