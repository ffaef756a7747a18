"""Replay without a server: the cut at each kind of target, native and text units, the text applier."""

from __future__ import annotations

import io
import struct

import pytest

from backupkit.errors import IntegrityError
from backupkit.mysql import binlog_events as be
from backupkit.repo.catalog import SegmentInfo
from backupkit.repo.codec import StoredObject
from backupkit.restore.replay.apply import Applier
from backupkit.restore.replay.fetch import Fetched
from backupkit.restore.replay.parse import Parser
from backupkit.restore.replay.units import ByteQueue, ReplayError
from backupkit.restore.stoppoint import parse_target, time_target

START = 1000  # the segment holds events [START, ...) of binlog.000001


def _event(etype: int, ts: int, body: bytes, end_pos: int, flags: int = 0) -> bytes:
    size = be.HEADER_LEN + len(body)
    return struct.pack("<IBIIIH", ts, etype, 1, size, end_pos, flags) + body


def _fde() -> bytes:
    post = bytes([56, 13, 0, 8, 0, 18, 0, 4, 4, 4, 4, 18, 0, 0, 0, 0, 0, 0, 8, 8, 8, 8, 8, 8, 8,
                  10, 10, 10])
    body = struct.pack("<H", 4) + b"10.11.19-MariaDB".ljust(50, b"\0") + struct.pack("<I", 0) \
        + bytes([19]) + post + bytes([be.CHECKSUM_OFF])
    raw = _event(be.FORMAT_DESCRIPTION_EVENT, 100, body + b"\0\0\0\0", 4 + be.HEADER_LEN + len(body) + 4)
    crc = be._fde_crc(raw)
    return raw[:-4] + struct.pack("<I", crc)


class Binlog:
    """Builds the events of one binlog file from position START on."""

    def __init__(self) -> None:
        self.pos = START
        self.raw = b""
        self.txns: list[tuple[str, int, int, int]] = []  # gtid, start, end, commit time

    def _add(self, etype: int, ts: int, body: bytes) -> None:
        end = self.pos + be.HEADER_LEN + len(body)
        self.raw += _event(etype, ts, body, end)
        self.pos = end

    def row_txn(self, seq: int, ts: int, rows_size: int = 40, statements: int = 1) -> None:
        start = self.pos
        self._add(be.MARIA_GTID_EVENT, ts, struct.pack("<QIB", seq, 0, 0) + b"\0" * 6)
        for _ in range(statements):
            self._add(be.TABLE_MAP_EVENT, ts, b"\x15\0\0\0\0\0\0\0" + b"t" * 12)
            self._add(be.WRITE_ROWS_EVENT_V1, ts, b"\x15\0\0\0\0\0" + struct.pack("<H", 1) + b"r" * rows_size)
        self._add(be.XID_EVENT, ts, struct.pack("<Q", seq))
        self.txns.append((f"0-1-{seq}", start, self.pos, ts))

    def ddl(self, seq: int, ts: int, sql: bytes = b"CREATE TABLE x (a INT)") -> None:
        start = self.pos
        self._add(be.MARIA_GTID_EVENT, ts, struct.pack("<QIB", seq, 0, be.FL_STANDALONE) + b"\0" * 6)
        self._add(be.QUERY_EVENT, ts, struct.pack("<IIBHH", 7, 0, 1, 0, 0) + b"d\0" + sql)
        self.txns.append((f"0-1-{seq}", start, self.pos, ts))

    def fetched(self) -> Fetched:
        data = be.MAGIC + _fde() + self.raw
        seg = SegmentInfo("src", "binlog.000001", START, self.pos,
                          StoredObject("k", len(data), "x", len(data)))
        return Fetched(0, seg, io.BytesIO(data), len(data))


def _binlog() -> Binlog:
    b = Binlog()
    b.row_txn(1, 200)
    b.row_txn(2, 201)
    b.ddl(3, 201)
    b.row_txn(4, 203)
    b.row_txn(5, 203)
    return b


def _units(target, b: Binlog | None = None, start: int = START, **kw) -> tuple[list, bool]:
    b = b or _binlog()
    out: list = []
    parser = Parser(target, ("binlog.000001", start), lambda item, n: out.append(item), **kw)
    stopped = parser.segment(b.fetched())
    parser.finish()
    return out, stopped


def _gtids(units) -> list[str]:
    names = []
    for u in units:
        if u[0] in ("txn", "commit"):
            names.append(u[-1].gtid)
        elif u[0] == "text":
            names += [i.gtid for i in u[2]]
    return names


def test_time_target_keeps_commits_at_or_before_t_and_none_after():
    units, stopped = _units(time_target(201.9))
    assert _gtids(units) == ["0-1-1", "0-1-2", "0-1-3"] and stopped
    assert units[0][0] == "fde"
    assert _gtids(_units(time_target(202.0))[0]) == ["0-1-1", "0-1-2", "0-1-3"]
    assert _gtids(_units(time_target(203.0))[0]) == ["0-1-1", "0-1-2", "0-1-3", "0-1-4", "0-1-5"]
    assert _gtids(_units(time_target(199.5))[0]) == []


def test_gtid_targets_are_exact():
    assert _gtids(_units(parse_target(to_gtid="0-1-4"))[0]) == ["0-1-1", "0-1-2", "0-1-3", "0-1-4"]
    assert _gtids(_units(parse_target(stop_before_gtid="0-1-3"))[0]) == ["0-1-1", "0-1-2"]
    assert _gtids(_units(parse_target(stop_before_gtid="0-1-1"))[0]) == []


def test_position_target_takes_whole_transactions_that_end_at_or_before_it():
    b = _binlog()
    end2 = b.txns[1][2]
    assert _gtids(_units(parse_target(to_position=f"binlog.000001:{end2}"), b)[0]) == ["0-1-1", "0-1-2"]
    assert _gtids(_units(parse_target(to_position=f"binlog.000001:{end2 + 5}"), b)[0]) == ["0-1-1", "0-1-2"]


def test_row_transactions_go_natively_and_ddl_through_mariadb_binlog():
    units, stopped = _units(parse_target(latest=True))
    kinds = [u[0] for u in units]
    assert kinds == ["fde", "txn", "txn", "text", "txn", "txn"] and not stopped
    head = units[1][1]
    assert head == b"SET @@session.gtid_domain_id=0, @@session.server_id=1, @@session.gtid_seq_no=1"
    text = units[3][1]
    text.seek(0)
    assert text.read().startswith(be.MAGIC + _fde())  # a binlog mariadb-binlog can read


def test_replay_starts_at_the_base_point_inside_a_segment():
    b = _binlog()
    units, _ = _units(parse_target(latest=True), b, start=b.txns[1][1])
    assert _gtids(units) == ["0-1-2", "0-1-3", "0-1-4", "0-1-5"]
    with pytest.raises(IntegrityError, match="not an event boundary"):
        _units(parse_target(latest=True), b, start=b.txns[1][1] + 3)


def test_a_large_transaction_is_streamed_in_whole_statements():
    b = Binlog()
    b.row_txn(1, 200, rows_size=300, statements=5)
    units, _ = _units(parse_target(latest=True), b, chunk_bytes=700, per_binlog=100)
    kinds = [u[0] for u in units]
    assert kinds[0] == "fde" and kinds[1] == "begin" and kinds[-1] == "commit"
    assert kinds.count("rows") >= 2
    # every BINLOG statement starts with a table map: statements are never split
    import base64

    for u in units:
        if u[0] == "rows":
            for body in u[1]:
                assert base64.b64decode(body)[4] == be.TABLE_MAP_EVENT


class FakeConn:
    def __init__(self, fail_on: bytes | None = None) -> None:
        self.queries: list[bytes] = []
        self.fail_on = fail_on
        self._result = None

    def query(self, sql: bytes) -> None:
        import pymysql

        self.queries.append(sql)
        if self.fail_on and self.fail_on in sql:
            raise pymysql.err.IntegrityError(1062, "Duplicate entry '7' for key 'PRIMARY'")


SAMPLE = b"""/*!50530 SET @@SESSION.PSEUDO_SLAVE_MODE=1*/;
/*!40019 SET @@session.max_delayed_threads=0*/;
DELIMITER /*!*/;
# at 4
#261126 10:06:05 server id 1  end_log_pos 256 CRC32 0x90bd51cf 	Start: binlog v 4
BINLOG '
jQQIaw8BAAAA
'/*!*/;
# at 325
#261126 10:06:05 server id 1  end_log_pos 367 CRC32 0xcc498508 	GTID 0-1-7 ddl
/*M!100001 SET @@session.gtid_seq_no=7*//*!*/;
# at 367
#261126 10:06:05 server id 1  end_log_pos 462 CRC32 0x3cfb0af8 	Query	thread_id=5
SET TIMESTAMP=1795687565/*!*/;
/*!\\C utf8mb4 *//*!*/;
SET @@session.character_set_client=utf8mb4/*!*/;
CREATE TABLE t (a INT)
/*!*/;
# at 462
#261126 10:06:05 server id 1  end_log_pos 530 CRC32 0x3cfb0af8 	Rotate to binlog.000002  pos: 4
DELIMITER ;
# End of log file
ROLLBACK /* added by mysqlbinlog */;
/*!50003 SET COMPLETION_TYPE=@OLD_COMPLETION_TYPE*/;
"""


def _applier(conn) -> Applier:
    from backupkit.restore.replay.units import TxnInfo

    app = Applier(conn, ByteQueue(1 << 20), None, lambda info, native: None)
    return app, [TxnInfo("0-1-7", "binlog.000001", 325, 462)]


def test_text_applier_runs_statements_skips_client_commands_and_the_trailer():
    conn = FakeConn()
    app, infos = _applier(conn)
    app._run_text(SAMPLE, infos)
    q = conn.queries
    assert q[0] == b"/*!50530 SET @@SESSION.PSEUDO_SLAVE_MODE=1*/"
    assert b"CREATE TABLE t (a INT)" in q
    assert not any(b"\\C" in x or b"DELIMITER" in x or b"ROLLBACK" in x for x in q)
    assert not any(x.startswith(b"#") for x in q)


def test_text_applier_error_names_gtid_and_position():
    conn = FakeConn(fail_on=b"CREATE TABLE")
    app, infos = _applier(conn)
    with pytest.raises(ReplayError) as err:
        app._run_text(SAMPLE, infos)
    msg = err.value.one_line()
    assert "GTID 0-1-7" in msg and "binlog.000001" in msg and "462" in msg and "1062" in msg
