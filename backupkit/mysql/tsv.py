"""The escaped tab-separated format of snapshot chunks: what the server formats, what LOAD DATA reads.

A chunk is LOAD DATA's default text format read with ``CHARACTER SET binary`` (no conversion):
fields end with TAB, rows with LF, the escape character is backslash, NULL is ``\\N``. In a field,
backslash, TAB and LF are written as ``\\\\``, ``\\t`` and ``\\n``; every other byte stands for
itself, so binary columns keep all 256 byte values. Text columns are written as the raw bytes of
their own character set (``CAST(col AS BINARY)``), so latin1 and utf8mb4 tables both round-trip
unchanged.

The server builds each row (``row_expression``), because formatting in the server is about twice
as fast as joining columns in Python. Types whose text form would lose information are written
another way: FLOAT as the exact DOUBLE it holds, BIT as its unsigned integer (loaded through a user
variable). Generated columns are not data and are left out.

Long values (BLOB, TEXT, BINARY, VARBINARY, JSON, GEOMETRY) are written as HEX() and read back with
UNHEX(): the server's REPLACE() moves the rest of the string for every match, so escaping a large
value full of TAB/LF/backslash bytes takes quadratic time. CHAR, VARCHAR, ENUM and SET (at most
64 KiB) are escaped with REPLACE(), which keeps the common case compact and fast.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from backupkit.mysql.connection import quote_ident

FORMAT = "tsv-v1"
NULL = b"\\N"

#: Types whose text form never holds TAB, LF or backslash: written without escaping.
PLAIN_TYPES = frozenset({
    "tinyint", "smallint", "mediumint", "int", "integer", "bigint", "decimal", "numeric", "double",
    "real", "date", "time", "datetime", "timestamp", "year",
})
#: Types that can hold long values: written as HEX() (linear time), read back with UNHEX().
HEX_TYPES = frozenset({
    "tinyblob", "blob", "mediumblob", "longblob", "tinytext", "text", "mediumtext", "longtext",
    "binary", "varbinary", "json", "long", "long varbinary",
})
GEOMETRY_TYPES = frozenset({
    "geometry", "point", "linestring", "polygon", "multipoint", "multilinestring", "multipolygon",
    "geometrycollection", "geomcollection",
})


@dataclass(frozen=True)
class Column:
    """One stored column: its name and how it is written and read back."""

    name: str
    data_type: str  # information_schema.COLUMNS.DATA_TYPE, lower case
    kind: str = "text"  # plain | text | float | bit | hex | geometry | json (MySQL's native JSON)

    def to_list(self) -> list[str]:
        return [self.name, self.data_type, self.kind]

    @classmethod
    def from_list(cls, item: Sequence[str]) -> Column:
        return cls(item[0], item[1], item[2])


def column_kind(data_type: str, flavor: str = "mariadb") -> str:
    """How a column of this DATA_TYPE is dumped and loaded."""
    t = data_type.lower()
    if t == "float":
        return "float"
    if t == "bit":
        return "bit"
    if t in GEOMETRY_TYPES:
        return "geometry"
    if t == "json" and flavor == "mysql":
        return "json"
    if t in PLAIN_TYPES:
        return "plain"
    if t in HEX_TYPES:
        return "hex"
    return "text"


def make_columns(rows: Iterable[tuple[str, str, bool]], flavor: str = "mariadb") -> list[Column]:
    """Columns to store, from (name, DATA_TYPE, is_generated) rows in table order."""
    return [Column(name, dtype.lower(), column_kind(dtype, flavor))
            for name, dtype, generated in rows if not generated]


def _escaped(expr: str) -> str:
    """SQL that escapes backslash, TAB and LF in a binary string (backslash first)."""
    return (f"REPLACE(REPLACE(REPLACE({expr},'\\\\','\\\\\\\\'),"
            f"'\\t','\\\\t'),'\\n','\\\\n')")


def field_expression(col: Column, escaped: bool = True) -> str:
    """SQL giving one column's field bytes, with NULL as \\N; escaped=False leaves text columns
    unescaped (the optimistic form: see ``plain_form_ok``)."""
    q = quote_ident(col.name)
    if col.kind == "plain":
        inner = q
    elif col.kind == "float":
        inner = f"CAST({q} AS DOUBLE)"
    elif col.kind == "bit":
        inner = f"({q} + 0)"
    elif col.kind in ("hex", "geometry", "json"):
        inner = f"HEX({q})"
    else:  # text: raw bytes of the column's own character set, escaped
        inner = f"CAST({q} AS BINARY)"
        if escaped:
            inner = _escaped(inner)
    return f"IFNULL({inner},'\\\\N')"


def row_expression(columns: Sequence[Column], escaped: bool = True) -> str:
    """SQL giving one whole row (without its LF) as a binary string."""
    if not columns:
        raise ValueError("a table with no stored columns has no row form")
    parts = ",'\\t',".join(field_expression(c, escaped) for c in columns)
    return f"CAST(CONCAT({parts}) AS BINARY)"


def has_text(columns: Sequence[Column]) -> bool:
    """Whether any column is escaped with REPLACE() (the only ones the plain form changes)."""
    return any(c.kind == "text" for c in columns)


def null_count_expression(columns: Sequence[Column]) -> str:
    """SQL counting the NULL fields of one row."""
    return "+".join(f"ISNULL({quote_ident(c.name)})" for c in columns)


def plain_form_ok(blob: bytes, rows: int, columns: int, nulls: int) -> bool:
    """Whether rows formatted by ``row_expression(escaped=False)`` and joined by LF are exactly
    the escaped form: true when no text field holds TAB, LF or backslash.

    Only text fields can hold those bytes unescaped (every other kind is digits, signs, dots,
    letters or hex), so the form is exact when the counts are the format's own: ``columns - 1``
    TABs a row, ``rows - 1`` LFs, and one backslash for each NULL (its ``\\N``). A data TAB, LF or
    backslash adds to a count and can never take one away. The caller rules out truncation
    (GROUP_CONCAT cut at group_concat_max_len) by the length."""
    if rows == 0:
        return True
    if blob.count(b"\n") != rows - 1 or blob.count(b"\t") != rows * (columns - 1):
        return False
    return blob.count(b"\\") == nulls if nulls else b"\\" not in blob


def load_statement(table_sql: str, infile: str, columns: Sequence[Column]) -> str:
    """LOAD DATA LOCAL INFILE for a chunk of this table; infile is a (virtual) file name."""
    targets: list[str] = []
    sets: list[str] = []
    for i, c in enumerate(columns):
        q = quote_ident(c.name)
        if c.kind in ("bit", "hex", "geometry", "json"):
            var = f"@bk{i}"
            targets.append(var)
            if c.kind == "bit":
                sets.append(f"{q} = CAST({var} AS UNSIGNED)")
            elif c.kind == "json":
                sets.append(f"{q} = CONVERT(UNHEX({var}) USING utf8mb4)")
            else:
                sets.append(f"{q} = UNHEX({var})")
        else:
            targets.append(q)
    name = infile.replace("\\", "\\\\").replace("'", "\\'")
    sql = (f"LOAD DATA LOCAL INFILE '{name}' INTO TABLE {table_sql} CHARACTER SET binary "
           "FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' "
           f"({', '.join(targets)})")
    if sets:
        sql += " SET " + ", ".join(sets)
    return sql


# -- the same format in Python (for tests and for tools that read chunks) ----------------
_ESC = {ord("\\"): b"\\\\", ord("\t"): b"\\t", ord("\n"): b"\\n"}
_UNESC = {ord("\\"): b"\\", ord("t"): b"\t", ord("n"): b"\n", ord("0"): b"\0", ord("r"): b"\r",
          ord("b"): b"\b", ord("Z"): b"\x1a"}


def escape_field(value: bytes | None) -> bytes:
    """One field as the server writes it."""
    if value is None:
        return NULL
    if not any(b in value for b in (b"\\", b"\t", b"\n")):
        return value
    return value.replace(b"\\", b"\\\\").replace(b"\t", b"\\t").replace(b"\n", b"\\n")


def format_row(values: Sequence[bytes | None]) -> bytes:
    """One row with its LF."""
    return b"\t".join(escape_field(v) for v in values) + b"\n"


def parse_field(field: bytes) -> bytes | None:
    """A field as LOAD DATA reads it (its escape rules)."""
    if field == NULL:
        return None
    if b"\\" not in field:
        return field
    out = bytearray()
    i = 0
    while i < len(field):
        b = field[i]
        if b == 0x5C and i + 1 < len(field):
            nxt = field[i + 1]
            out += _UNESC.get(nxt, bytes([nxt]))
            i += 2
        else:
            out.append(b)
            i += 1
    return bytes(out)


def parse_rows(data: bytes) -> list[list[bytes | None]]:
    """Split a chunk into rows of fields (LF and TAB inside fields are escaped)."""
    if not data:
        return []
    if not data.endswith(b"\n"):
        raise ValueError("a chunk ends with LF")
    return [[parse_field(f) for f in line.split(b"\t")] for line in data[:-1].split(b"\n")]
