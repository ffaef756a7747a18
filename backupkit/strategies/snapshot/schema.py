"""What a snapshot records of the schema: DDL of tables, views, triggers, routines, events; users.

Read while the source blocks DDL (BACKUP STAGE BLOCK_DDL / LOCK INSTANCE FOR BACKUP), so the DDL
matches the data of the consistent snapshot. Each database becomes one JSON document.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from backupkit.mysql import tsv
from backupkit.mysql.connection import qualified, quote_ident

SYSTEM_DATABASES = frozenset({"mysql", "information_schema", "performance_schema", "sys"})
SYSTEM_USERS = frozenset({"root", "mariadb.sys", "mysql.sys", "mysql.session", "mysql.infoschema"})
INTEGER_TYPES = frozenset({"tinyint", "smallint", "mediumint", "int", "integer", "bigint"})


def _s(v: Any) -> Any:
    return v.decode("utf-8", "surrogateescape") if isinstance(v, (bytes, bytearray)) else v


@dataclass
class TableInfo:
    """One base table: its DDL, stored columns, chunking key and size estimates."""

    db: str
    name: str
    create: str
    engine: str = ""
    columns: list[tsv.Column] = field(default_factory=list)
    key: list[str] = field(default_factory=list)  # PK or NOT NULL unique key, in index order
    key_is_int: bool = False  # a single integer column: chunks are value ranges
    est_rows: int = 0
    est_bytes: int = 0
    partitioned: bool = False

    @property
    def full_name(self) -> str:
        return f"{self.db}.{self.name}"

    @property
    def sql(self) -> str:
        return qualified(self.db, self.name)


@dataclass
class DatabaseSchema:
    """Everything needed to recreate one database, except the rows."""

    name: str
    charset: str
    collation: str
    create: str
    tables: list[TableInfo] = field(default_factory=list)
    views: list[dict[str, Any]] = field(default_factory=list)
    triggers: list[dict[str, Any]] = field(default_factory=list)
    routines: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "charset": self.charset, "collation": self.collation,
            "create": self.create,
            "tables": [{"name": t.name, "create": t.create, "engine": t.engine,
                        "columns": [c.to_list() for c in t.columns], "key": t.key,
                        "partitioned": t.partitioned} for t in self.tables],
            "views": self.views, "triggers": self.triggers, "routines": self.routines,
            "events": self.events, "skipped": self.skipped,
        }


def table_selected(db: str, table: str, databases: Sequence[str], tables: Sequence[str]) -> bool:
    """Filters: --databases names (or patterns) and --tables db.table patterns."""
    if databases and not any(fnmatch.fnmatchcase(db, p) for p in databases):
        return False
    if tables:
        return any(fnmatch.fnmatchcase(f"{db}.{table}", p) for p in tables)
    return True


def list_databases(cur, databases: Sequence[str], tables: Sequence[str]) -> list[tuple[str, str, str]]:
    """(name, charset, collation) of the user databases the filters select."""
    cur.execute("SELECT schema_name, default_character_set_name, default_collation_name "
                "FROM information_schema.schemata ORDER BY schema_name")
    out = []
    for name, cs, coll in cur.fetchall():
        name = _s(name)
        if name in SYSTEM_DATABASES:
            continue
        if databases and not any(fnmatch.fnmatchcase(name, p) for p in databases):
            continue
        if tables and not any(fnmatch.fnmatchcase(name, p.split(".", 1)[0]) for p in tables):
            continue
        out.append((name, _s(cs), _s(coll)))
    return out


def _show(cur, sql: str) -> tuple:
    cur.execute(sql)
    row = cur.fetchone()
    return tuple(_s(v) for v in row) if row else ()


def _keys(cur, db: str, table: str, coltypes: dict[str, str],
          nullable: dict[str, bool]) -> list[str]:
    cur.execute("SELECT index_name, non_unique, column_name, seq_in_index "
                "FROM information_schema.statistics WHERE table_schema=%s AND table_name=%s "
                "ORDER BY index_name='PRIMARY' DESC, index_name, seq_in_index", (db, table))
    indexes: dict[str, list[str]] = {}
    unique: dict[str, bool] = {}
    for name, non_unique, col, _seq in cur.fetchall():
        name, col = _s(name), _s(col)
        indexes.setdefault(name, []).append(col)
        unique[name] = not int(non_unique)
    if "PRIMARY" in indexes:
        return indexes["PRIMARY"]
    for name, cols in indexes.items():
        if unique[name] and all(c in coltypes and not nullable[c] for c in cols):
            return cols
    return []


def read_database(cur, db: str, charset: str, collation: str, flavor: str,
                  tables: Sequence[str] = ()) -> DatabaseSchema:
    """The schema of one database. With table filters only the selected tables (and their triggers)."""
    create = _show(cur, f"SHOW CREATE DATABASE {quote_ident(db)}")[1]
    schema = DatabaseSchema(db, charset, collation, create)
    cur.execute("SELECT table_name, table_type, engine, table_rows, data_length, create_options "
                "FROM information_schema.tables WHERE table_schema=%s ORDER BY table_name", (db,))
    entries = [tuple(_s(v) for v in r) for r in cur.fetchall()]
    for name, ttype, engine, rows, length, options in entries:
        if tables and not table_selected(db, name, (), tables):
            continue
        if ttype == "VIEW":
            if tables:
                continue
            row = _show(cur, f"SHOW CREATE VIEW {qualified(db, name)}")
            schema.views.append({"name": name, "create": row[1], "character_set_client": row[2],
                                 "collation_connection": row[3]})
            continue
        if ttype not in ("BASE TABLE", "SYSTEM VERSIONED"):
            schema.skipped.append(f"{name} ({ttype.lower()})")
            continue
        ddl = _show(cur, f"SHOW CREATE TABLE {qualified(db, name)}")[1]
        cur.execute("SELECT column_name, data_type, is_nullable, "
                    "UPPER(extra) REGEXP '(VIRTUAL|STORED|PERSISTENT) GENERATED' "
                    "FROM information_schema.columns WHERE table_schema=%s AND table_name=%s "
                    "ORDER BY ordinal_position", (db, name))
        cols = [tuple(_s(v) for v in r) for r in cur.fetchall()]
        coltypes = {c[0]: c[1].lower() for c in cols}
        nullable = {c[0]: c[2] == "YES" for c in cols}
        key = _keys(cur, db, name, coltypes, nullable)
        info = TableInfo(db=db, name=name, create=ddl, engine=engine or "",
                         columns=tsv.make_columns(((c[0], c[1], bool(int(c[3] or 0))) for c in cols),
                                                  flavor),
                         key=key, key_is_int=len(key) == 1 and coltypes.get(key[0]) in INTEGER_TYPES,
                         est_rows=int(rows or 0), est_bytes=int(length or 0),
                         partitioned="partitioned" in (options or "").lower())
        schema.tables.append(info)
    names = {t.name for t in schema.tables}
    cur.execute("SELECT trigger_name, event_object_table FROM information_schema.triggers "
                "WHERE trigger_schema=%s ORDER BY event_object_table, action_order", (db,))
    for trig, table in [tuple(_s(v) for v in r) for r in cur.fetchall()]:
        if table not in names:
            continue
        row = _show(cur, f"SHOW CREATE TRIGGER {qualified(db, trig)}")
        schema.triggers.append({"name": trig, "table": table, "sql_mode": row[1], "create": row[2],
                                "character_set_client": row[3], "collation_connection": row[4]})
    if not tables:
        cur.execute("SELECT routine_name, routine_type FROM information_schema.routines "
                    "WHERE routine_schema=%s AND routine_type IN ('PROCEDURE','FUNCTION') "
                    "ORDER BY routine_type, routine_name", (db,))
        for rname, rtype in [tuple(_s(v) for v in r) for r in cur.fetchall()]:
            row = _show(cur, f"SHOW CREATE {rtype} {qualified(db, rname)}")
            schema.routines.append({"name": rname, "type": rtype, "sql_mode": row[1],
                                    "create": row[2], "character_set_client": row[3],
                                    "collation_connection": row[4]})
        cur.execute("SELECT event_name FROM information_schema.events WHERE event_schema=%s "
                    "ORDER BY event_name", (db,))
        for (ename,) in [tuple(_s(v) for v in r) for r in cur.fetchall()]:
            row = _show(cur, f"SHOW CREATE EVENT {qualified(db, ename)}")
            schema.events.append({"name": ename, "sql_mode": row[1], "time_zone": row[2],
                                  "create": row[3], "character_set_client": row[4],
                                  "collation_connection": row[5]})
    return schema


def read_users(cur, flavor: str) -> list[str]:
    """CREATE USER / CREATE ROLE and GRANT statements of every non-system account, one per line."""
    if flavor == "mariadb":
        cur.execute("SELECT user, host, is_role FROM mysql.user ORDER BY is_role DESC, user, host")
    else:
        cur.execute("SELECT user, host, 'N' FROM mysql.user ORDER BY user, host")
    out: list[str] = []
    accounts = [tuple(_s(v) for v in r) for r in cur.fetchall()]
    for user, host, is_role in accounts:
        if user in SYSTEM_USERS or not user:
            continue
        if is_role == "Y":
            out.append(f"CREATE ROLE IF NOT EXISTS {quote_ident(user)}")
            cur.execute(f"SHOW GRANTS FOR {quote_ident(user)}")
        else:
            acct = "'" + user.replace("'", "''") + "'@'" + host.replace("'", "''") + "'"
            stmt = _show(cur, f"SHOW CREATE USER {acct}")[0]
            out.append(stmt.replace("CREATE USER ", "CREATE USER IF NOT EXISTS ", 1))
            cur.execute(f"SHOW GRANTS FOR {acct}")
        out.extend(_s(r[0]) for r in cur.fetchall())
    return [s.replace("\n", " ") for s in out]
