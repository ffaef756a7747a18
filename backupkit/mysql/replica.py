"""The source as a replica (MariaDB GTID replication): its primary, its position in the primary's
history (gtid_slave_pos), its lag, and whether it can be backed up and shipped from.

A replica is a fine source: its binlog holds the primary's transactions, with the primary's GTIDs
and event times, when it logs replicated events (log_slave_updates). Shipping from one that does
not would ship only its local writes: refused. A replica whose SQL thread stopped with an error is
frozen in the past while looking healthy: refused for snapshots and shipping alike. Lag is
reported (and recorded in the snapshot's manifest); past a threshold it is a warning.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import pymysql

from backupkit.errors import SourceError


@dataclass
class ReplicaInfo:
    """What SHOW SLAVE STATUS says about the source as a replica."""

    primary: str  # host:port
    io_running: str
    sql_running: str
    sql_errno: int
    sql_error: str
    lag: int | None  # Seconds_Behind_Master (None: not known, e.g. the SQL thread is stopped)
    gtid_slave_pos: str
    using_gtid: str
    log_slave_updates: bool
    io_error: str = ""  # Last_IO_Error (e.g. the primary refused the replication user)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def replica_info(conn) -> ReplicaInfo | None:
    """The source's replication state, or None when it replicates from nobody."""
    with conn.cursor(pymysql.cursors.DictCursor) as cur:
        try:
            cur.execute("SHOW SLAVE STATUS")
        except pymysql.err.MySQLError:  # no privilege: treated as not a replica
            return None
        row = cur.fetchone()
        if not row:
            return None
        cur.execute("SELECT @@log_slave_updates AS u, @@gtid_slave_pos AS p")
        extra = cur.fetchone() or {}
    lag = row.get("Seconds_Behind_Master")
    return ReplicaInfo(
        primary=f"{row.get('Master_Host', '')}:{row.get('Master_Port', '')}",
        io_running=str(row.get("Slave_IO_Running", "")),
        sql_running=str(row.get("Slave_SQL_Running", "")),
        sql_errno=int(row.get("Last_SQL_Errno") or 0),
        sql_error=str(row.get("Last_SQL_Error") or ""),
        lag=None if lag is None else int(lag),
        gtid_slave_pos=str(row.get("Gtid_Slave_Pos") or extra.get("p") or ""),
        using_gtid=str(row.get("Using_Gtid", "")),
        log_slave_updates=bool(int(extra.get("u") or 0)),
        io_error=str(row.get("Last_IO_Error") or ""))


def check_replica(info: ReplicaInfo | None, *, shipping: bool, max_lag: float | None = None
                  ) -> list[str]:
    """Refuse (SourceError) a replica that cannot be backed up or shipped from; the warnings
    (lag past max_lag) otherwise."""
    if info is None:
        return []
    if info.sql_errno or (info.sql_running.lower() != "yes" and info.sql_error):
        raise SourceError(
            f"the source is a replica of {info.primary} whose SQL thread stopped with error "
            f"{info.sql_errno}: {info.sql_error.strip()[:200]}",
            "its data stopped at that error; fix replication (or back up the primary) first")
    if shipping and not info.log_slave_updates:
        raise SourceError(
            f"the source is a replica of {info.primary} with log_slave_updates=OFF: its binlog "
            "holds none of the replicated transactions",
            "set log_slave_updates=ON on the replica (and restart it), or ship from the primary")
    warnings = []
    if info.sql_running.lower() != "yes":
        warnings.append(f"the source is a replica of {info.primary} whose SQL thread is stopped: "
                        "its data is not moving forward")
    elif max_lag is not None and info.lag is not None and info.lag > max_lag:
        warnings.append(f"the source is a replica of {info.primary} lagging {info.lag} s behind it "
                        f"(more than {max_lag:g} s): the backup is that far in the past")
    return warnings
