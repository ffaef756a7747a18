"""Facts about a running server: flavor, version, identity, binlog coordinates, GTID.

SourceIdentity is a plain description of a server, and BinlogPoint (mysql/gtid.py) of a point in
its history; the repository's manifests (repo/catalog.py) embed them.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from backupkit.errors import SourceError
from backupkit.mysql.gtid import BinlogPoint


@dataclass
class SourceIdentity:
    """Which server a backup or segment came from."""

    source_id: str
    flavor: str = "mariadb"  # mariadb | mysql
    version: str = ""
    server_id: int = 0
    server_uuid: str = ""  # MySQL; MariaDB has none
    hostname: str = ""
    port: int = 0
    gtid_domain_id: int | None = None  # MariaDB
    datadir: str = ""  # tells a server apart from a later one on the same host and port


@dataclass
class ServerFacts:
    flavor: str  # mariadb | mysql
    version: str
    version_tuple: tuple[int, int, int]
    server_id: int
    server_uuid: str
    hostname: str
    port: int
    datadir: str
    log_bin: bool
    binlog_format: str
    gtid_domain_id: int | None

    @property
    def is_mariadb(self) -> bool:
        return self.flavor == "mariadb"


def _one(cur, sql: str, args=None):
    cur.execute(sql, args)
    row = cur.fetchone()
    return row[0] if row else None


def server_facts(conn) -> ServerFacts:
    """Read the facts backupkit needs from a live connection."""
    with conn.cursor() as cur:
        version = _one(cur, "SELECT VERSION()")
        flavor = "mariadb" if "mariadb" in version.lower() else "mysql"
        nums = tuple(int(x) for x in re.findall(r"\d+", version)[:3])
        cur.execute("SELECT @@server_id, @@hostname, @@port, @@datadir, @@log_bin, @@binlog_format")
        sid, host, port, datadir, log_bin, fmt = cur.fetchone()
        uuid = ""
        domain = None
        if flavor == "mysql":
            uuid = _one(cur, "SELECT @@server_uuid") or ""
        else:
            domain = int(_one(cur, "SELECT @@gtid_domain_id") or 0)
    return ServerFacts(flavor, version, nums + (0,) * (3 - len(nums)), int(sid), uuid, host,
                       int(port), datadir, bool(int(log_bin)), fmt, domain)


def default_source_id(facts: ServerFacts) -> str:
    """A stable name for a source when the policy gives none."""
    if facts.server_uuid:
        return facts.server_uuid
    return f"{facts.hostname}-{facts.port}-{facts.server_id}"


def identity(facts: ServerFacts, source_id: str | None = None) -> SourceIdentity:
    return SourceIdentity(source_id=source_id or default_source_id(facts), flavor=facts.flavor,
                          version=facts.version, server_id=facts.server_id,
                          server_uuid=facts.server_uuid, hostname=facts.hostname, port=facts.port,
                          gtid_domain_id=facts.gtid_domain_id, datadir=facts.datadir)


def master_status(conn, facts: ServerFacts) -> tuple[str, int]:
    """Current binlog file and position (SHOW BINARY LOG STATUS on MySQL >= 8.2)."""
    sql = "SHOW MASTER STATUS"
    if facts.flavor == "mysql" and facts.version_tuple >= (8, 2, 0):
        sql = "SHOW BINARY LOG STATUS"
    with conn.cursor() as cur:
        cur.execute(sql)
        row = cur.fetchone()
    if not row:
        raise SourceError("the source has no binary log enabled",
                          "start it with --log-bin and --binlog-format=ROW")
    return row[0], int(row[1])


def gtid_position(conn, facts: ServerFacts, file: str | None = None, pos: int | None = None) -> str:
    """GTID position (MariaDB) or executed set (MySQL), optionally at binlog coordinates."""
    with conn.cursor() as cur:
        if facts.is_mariadb:
            if file is not None:
                return _one(cur, "SELECT BINLOG_GTID_POS(%s, %s)", (file, pos)) or ""
            return _one(cur, "SELECT @@gtid_binlog_pos") or ""
        return (_one(cur, "SELECT @@gtid_executed") or "").replace("\n", "")


def current_point(conn, facts: ServerFacts) -> BinlogPoint:
    """Binlog coordinates and GTID position of now."""
    file, pos = master_status(conn, facts)
    return BinlogPoint(file=file, pos=pos, gtid=gtid_position(conn, facts, file, pos), time=time.time())


def binary_logs(conn) -> list[tuple[str, int]]:
    """The binlog files the server still has, with sizes."""
    with conn.cursor() as cur:
        cur.execute("SHOW BINARY LOGS")
        return [(r[0], int(r[1])) for r in cur.fetchall()]
