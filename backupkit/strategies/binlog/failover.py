"""Another server under the same source id (a failover or switchover): is its binlog a
continuation of what was shipped? Decided by GTID, never by file names or positions.

``continuity(shipped, first, last)``: shipped is the GTID position after the last shipped
transaction; first and last are the new server's position at the start of its oldest binlog
file and at its end. For every domain of shipped, the new server's binlog must begin at or
before the last shipped transaction and reach it: then it holds every transaction after it.
Otherwise transactions are missing (a lossy switchover: the replica was behind, or its binlog
was purged or not written, e.g. without log_slave_updates), or the repository holds
transactions the new server never had (diverged histories).
"""

from __future__ import annotations

from backupkit.mysql.gtid import GtidSet
from backupkit.mysql.server import binary_logs, gtid_position


def continuity(shipped: str, first: str, last: str) -> tuple[bool, list[str]]:
    """(continuous, one line per domain that is not) for the GTID positions above (MariaDB)."""
    have, start, end = (GtidSet.parse(x, strict=False) for x in (shipped, first, last))
    problems = []
    domains = have.keys()
    for key in domains:
        s, a, z = have.last_seq(key), start.last_seq(key), end.last_seq(key)
        if z < s:
            problems.append(f"domain {key}: the new server's binlog ends at {z}, before the last "
                            f"shipped transaction {s}: the repository holds transactions it never had")
        elif a > s:
            problems.append(f"domain {key}: the new server's binlog begins after {a}; transactions "
                            f"{s + 1}..{a} are not in it (lost for point-in-time restore)")
    return not problems, problems


def judge(conn, facts, shipped: str) -> str:
    """One sentence on whether the server on conn continues the shipped history (MariaDB)."""
    if not facts.is_mariadb or not shipped:
        return ""
    logs = binary_logs(conn)
    if not logs:
        return "it has no binlog"
    first = gtid_position(conn, facts, logs[0][0], 4)
    last = gtid_position(conn, facts)
    ok, problems = continuity(shipped, first, last)
    if ok:
        return (f"by GTID its binlog holds every transaction after the last shipped one ({shipped}): "
                "no transaction was lost")
    return "by GTID: " + "; ".join(problems)
