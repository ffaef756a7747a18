"""Table filters of a table-level restore, and the event rewrites they need."""

from __future__ import annotations

import struct

import pytest

from backupkit.errors import UsageError
from backupkit.mysql import binlog_events as be
from backupkit.restore.replay.filter import TableFilter, rename_table_map, set_stmt_end


def _event(etype: int, body: bytes) -> bytes:
    raw = bytearray(struct.pack("<IBIIIH", 1700000000, etype, 1, be.HEADER_LEN + len(body) + 4, 500, 0)
                    + body + b"\0" * 4)
    raw[-4:] = struct.pack("<I", be.crc32(bytes(raw[:-4])))
    return bytes(raw)


def _table_map(db: str, table: str) -> bytes:
    body = ((42).to_bytes(6, "little") + b"\x01\x00" + bytes([len(db)]) + db.encode() + b"\0"
            + bytes([len(table)]) + table.encode() + b"\0" + b"\x02" + bytes([3, 15]) + b"\x02"
            + struct.pack("<H", 80) + b"\x02")
    return _event(be.TABLE_MAP_EVENT, body)


def test_patterns_work_as_mydumper_filters():
    f = TableFilter.parse(["shop.ord*,billing"], ["shop.orders_old"], ["shop=shop_r"])
    assert f.matches("shop", "orders") and f.matches("billing", "x")
    assert not f.matches("shop", "orders_old") and not f.matches("shop", "items")
    assert f.target_db("shop") == "shop_r" and f.target_db("billing") == "billing"
    assert f.unmatched([("shop", "orders")]) == ["billing.*"]


def test_bad_filters_are_refused():
    with pytest.raises(UsageError, match="OLD=NEW"):
        TableFilter.parse(["a.b"], rename=["shop"])
    with pytest.raises(UsageError, match="names no table"):
        TableFilter.parse([" , "])


def test_a_renamed_table_map_names_the_new_database_with_a_valid_checksum():
    raw = _table_map("shop", "orders")
    out = rename_table_map(raw, "shop_restored", 4, 8)
    assert be.event_crc_ok(out) and be.parse_header(out).event_size == len(out)
    tm = be.parse_table_map(be.body(out, 4))
    assert (tm.table_id, tm.db, tm.table, list(tm.types)) == (42, "shop_restored", "orders", [3, 15])


def test_the_statement_end_flag_is_set_with_a_valid_checksum():
    raw = _event(be.WRITE_ROWS_EVENT_V1, (42).to_bytes(6, "little") + b"\x00\x00" + b"\x01\x01\x00")
    out = set_stmt_end(raw, 4)
    assert out[25] & 1 and be.event_crc_ok(out)
    assert set_stmt_end(out, 4) == out
