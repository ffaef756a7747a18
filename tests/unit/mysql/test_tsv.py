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


text_fields = st.one_of(st.none(), st.binary(max_size=12),
                        st.sampled_from([b"\\N", b"\\", b"\t", b"\n", b"a\tb", b"N", b""]))


@given(st.lists(st.lists(text_fields, min_size=1, max_size=5), min_size=1, max_size=12))
def test_plain_form_is_accepted_only_when_it_equals_the_escaped_form(rows):
    """The optimistic snapshot form (text unescaped, NULL as \\N) passes the count check exactly
    when it is byte for byte the escaped form; otherwise the batch is read again escaped."""
    width = len(rows[0])
    rows = [(r + [b""] * width)[:width] for r in rows]
    plain = b"\n".join(b"\t".join(tsv.NULL if f is None else f for f in r) for r in rows)
    escaped = b"".join(tsv.format_row(r) for r in rows)[:-1]
    nulls = sum(f is None for r in rows for f in r)
    clean = all(f is None or not any(c in f for c in b"\t\n\\") for r in rows for f in r)
    ok = tsv.plain_form_ok(plain, len(rows), width, nulls)
    assert ok == clean
    if ok:
        assert plain == escaped


def test_plain_form_check_catches_each_special_byte():
    assert tsv.plain_form_ok(b"1\tab\n2\tcd", 2, 2, 0)
    assert not tsv.plain_form_ok(b"1\ta\tb\n2\tcd", 2, 2, 0)  # a TAB in a field
    assert not tsv.plain_form_ok(b"1\ta\nb\n2\tcd", 2, 2, 0)  # a LF in a field
    assert not tsv.plain_form_ok(b"1\ta\\b\n2\tcd", 2, 2, 0)  # a backslash in a field
    assert tsv.plain_form_ok(b"1\t\\N\n2\tcd", 2, 2, 1)  # a NULL
    assert not tsv.plain_form_ok(b"1\t\\N\n2\t\\N", 2, 2, 1)  # the text '\N' beside a NULL


def test_plain_row_expression_only_drops_the_escaping_of_text_columns():
    cols = [tsv.Column("id", "int", "plain"), tsv.Column("name", "varchar", "text"),
            tsv.Column("b", "blob", "hex")]
    escaped, plain = tsv.row_expression(cols), tsv.row_expression(cols, escaped=False)
    assert "REPLACE" in escaped and "REPLACE" not in plain
    assert plain == escaped.replace(tsv._escaped("CAST(`name` AS BINARY)"), "CAST(`name` AS BINARY)")
    assert tsv.has_text(cols) and not tsv.has_text(cols[::2])
