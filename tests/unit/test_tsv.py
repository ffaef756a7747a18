"""The escaped tab-separated chunk format: escaping rules and the SQL that writes and reads it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from backupkit.mysql import tsv

fields = st.one_of(st.none(), st.binary(max_size=40))


@given(st.lists(st.lists(fields, min_size=1, max_size=6), min_size=1, max_size=10))
def test_rows_round_trip_through_the_escaped_form(rows):
    width = len(rows[0])
    rows = [(r + [b""] * width)[:width] for r in rows]
    data = b"".join(tsv.format_row(r) for r in rows)
    assert tsv.parse_rows(data) == rows


def test_null_and_empty_and_literal_backslash_n_are_distinct():
    line = tsv.format_row([None, b"", b"\\N", b"N"])
    assert line == b"\\N\t\t\\\\N\tN\n"
    assert tsv.parse_rows(line) == [[None, b"", b"\\N", b"N"]]


def test_every_byte_value_survives():
    value = bytes(range(256))
    escaped = tsv.escape_field(value)
    assert b"\t" not in escaped and b"\n" not in escaped
    assert tsv.parse_field(escaped) == value


def test_column_kinds_pick_lossless_forms():
    assert tsv.column_kind("float") == "float"
    assert tsv.column_kind("BIT") == "bit"
    assert tsv.column_kind("point") == "geometry"
    assert tsv.column_kind("json") == "hex"
    assert tsv.column_kind("longblob") == "hex" and tsv.column_kind("varchar") == "text"
    assert tsv.column_kind("json", flavor="mysql") == "json"
    assert tsv.column_kind("decimal") == "plain"
    assert tsv.column_kind("varbinary") == "hex"


def test_generated_columns_are_not_data():
    cols = tsv.make_columns([("id", "int", False), ("g", "int", True), ("v", "varchar", False)])
    assert [c.name for c in cols] == ["id", "v"]


def test_row_expression_quotes_identifiers_and_marks_null():
    cols = tsv.make_columns([("we`ird", "varchar", False), ("f", "float", False)])
    sql = tsv.row_expression(cols)
    assert "`we``ird`" in sql
    assert "CAST(`f` AS DOUBLE)" in sql
    assert sql.startswith("CAST(CONCAT(") and "'\\\\N'" in sql
    assert "HEX(`b`)" in tsv.row_expression(tsv.make_columns([("b", "blob", False)]))


def test_load_statement_reads_bit_and_geometry_through_variables():
    cols = tsv.make_columns([("id", "int", False), ("b", "bit", False), ("g", "point", False)])
    sql = tsv.load_statement("`d`.`t`", "backupkit-stream:1", cols)
    assert "CHARACTER SET binary" in sql
    assert "(`id`, @bk1, @bk2) SET `b` = CAST(@bk1 AS UNSIGNED), `g` = UNHEX(@bk2)" in sql
    assert "INFILE 'backupkit-stream:1'" in sql


def test_column_lists_survive_the_manifest():
    col = tsv.Column("a", "bit", "bit")
    assert tsv.Column.from_list(col.to_list()) == col
