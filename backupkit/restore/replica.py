"""Rebuild a replica from the repository: after a restore to the newest shipped point, the target
replicates from the primary at the GTID position it reached.

MariaDB: ``SET GLOBAL gtid_slave_pos``, ``CHANGE MASTER TO ... MASTER_USE_GTID=slave_pos``,
``START SLAVE``; then a bounded wait until ``Seconds_Behind_Master`` is 0. The replication
password comes from ``BACKUPKIT_REPLICATE_PASSWORD`` or ``?password_file=`` (0600), as the source
password does. A target that is the primary itself is refused before anything is changed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pymysql

from backupkit.errors import TargetError, UsageError
from backupkit.mysql.connection import ConnSpec, connect
from backupkit.mysql.gtid import GtidSet, try_parse_gtid
from backupkit.mysql.replica import replica_info
from backupkit.restore.guard import same_endpoint
from backupkit.restore.pitr import restore_to_point
from backupkit.restore.stoppoint import parse_target

REPLICATE_PASSWORD_ENV = "BACKUPKIT_REPLICATE_PASSWORD"


@dataclass
class ReplicaStatus:
    """Where the new replica started and whether it caught up."""

    primary: str
    gtid_slave_pos: str
    caught_up: bool = False
    seconds_to_catch_up: float | None = None
    seconds_behind: int | None = None
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"primary": self.primary, "gtid_slave_pos": self.gtid_slave_pos,
                "caught_up": self.caught_up, "seconds_to_catch_up": self.seconds_to_catch_up,
                "seconds_behind": self.seconds_behind, "error": self.error}

    def note(self) -> str:
        if self.caught_up:
            return (f"replicating from {self.primary} since GTID {self.gtid_slave_pos}: caught up "
                    f"(Seconds_Behind_Master = 0) after {self.seconds_to_catch_up:.1f} s")
        if self.error:
            return f"replicating from {self.primary} since GTID {self.gtid_slave_pos}: {self.error}"
        return (f"replicating from {self.primary} since GTID {self.gtid_slave_pos}: not caught up "
                f"yet (Seconds_Behind_Master = {self.seconds_behind})")


def _one(cur, sql: str) -> Any:
    cur.execute(sql)
    row = cur.fetchone()
    v = row[0] if row else None
    return v.decode() if isinstance(v, bytes) else v


def _identity(spec: ConnSpec) -> tuple[Any, Any, Any]:
    """(server_id, hostname, port) as the server itself reports them."""
    conn = connect(spec)
    try:
        with conn.cursor() as cur:
            return (_one(cur, "SELECT @@server_id"), _one(cur, "SELECT @@hostname"),
                    _one(cur, "SELECT @@port"))
    finally:
        conn.close()


def refuse_primary_as_target(target: ConnSpec, primary: ConnSpec) -> None:
    """The target must not be the primary (same address, or the same server behind another)."""
    is_primary = UsageError(f"the target {target.display()} is the primary {primary.display()} of "
                            "--replicate-from; nothing was changed", "restore into another server")
    if same_endpoint(target, primary):
        raise is_primary
    tid, pid = _identity(target), _identity(primary)
    if tid == pid:
        raise is_primary
    if tid[0] == pid[0]:
        raise UsageError(f"the target {target.display()} has the primary's server_id {tid[0]}: a "
                         "replica needs its own", "start the target with another --server-id")


def reached_position(base_gtid: str, reached_gtid: str, segment_state: str = "") -> str:
    """The GTID position after a replay to the newest shipped point: the base's, with every domain
    the replayed segments moved on (segment_state: the last replayed segment's recorded position
    after it, which holds every domain), and the last applied GTID on top. Without the segment
    state only the reached GTID's domain would move, and a replica would replay the others'
    transactions a second time."""
    pos = GtidSet.parse(base_gtid, strict=False)
    state = GtidSet.parse(segment_state, strict=False)
    for key in list(state.intervals):
        if key.isdigit() and state.last_seq(key) >= pos.last_seq(key):
            pos.set_domain(int(key), state.servers.get(key, 0), state.last_seq(key))
    reached = try_parse_gtid(reached_gtid)
    if reached is not None and reached.mariadb and reached.seq >= pos.last_seq(reached.key):
        pos.add(reached)
    return pos.text()


def position_after(result) -> str:
    """reached_position of a finished point-in-time restore (PitrResult)."""
    segs = result.plan.segments
    return reached_position(result.plan.base.point.gtid, result.reached.gtid,
                            segs[-1].gtid_state if segs else "")


def start_replica(target: ConnSpec, primary: ConnSpec, gtid_pos: str,
                  wait_seconds: float = 60.0) -> ReplicaStatus:
    """Point the target at the primary from gtid_pos, start it, wait (bounded) for it to catch up."""
    status = ReplicaStatus(primary.display(), gtid_pos)
    host = primary.host if not primary.socket else "localhost"
    conn = connect(target)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            if "mariadb" not in str(cur.fetchone()[0]).lower():
                # MySQL needs gtid_purged set on an empty gtid_executed (RESET BINARY LOGS AND
                # GTIDS, which deletes the target's binlogs): not run unattended, and untested here.
                raise TargetError(
                    f"rebuilding a MySQL replica is not automated: {target.display()} holds the restored "
                    f"data; to replicate, run RESET BINARY LOGS AND GTIDS; SET GLOBAL gtid_purged = "
                    f"'{gtid_pos}'; CHANGE REPLICATION SOURCE TO SOURCE_HOST='{host}', "
                    f"SOURCE_PORT={primary.port}, SOURCE_USER='{primary.user}', SOURCE_PASSWORD=..., "
                    "SOURCE_AUTO_POSITION=1; START REPLICA",
                    "the restored data stays; those statements configure replication by hand")
            try:
                cur.execute("STOP SLAVE")
                cur.execute("SET GLOBAL gtid_slave_pos = %s", (gtid_pos,))
                cur.execute("CHANGE MASTER TO MASTER_HOST=%s, MASTER_PORT=%s, MASTER_USER=%s, "
                            "MASTER_PASSWORD=%s, MASTER_USE_GTID=slave_pos",
                            (host, primary.port, primary.user, primary.password or ""))
                cur.execute("START SLAVE")
            except pymysql.err.MySQLError as exc:
                raise TargetError(f"cannot start replication on {target.display()} from "
                                  f"{primary.display()}: {exc.args[-1]}",
                                  "the restored data stays; configure replication by hand") from None
            t0 = time.monotonic()
            while True:
                st = replica_info(conn)
                status.seconds_behind = st.lag if st else None
                err = st and (st.io_error or st.sql_error)
                if err:
                    status.error = str(err)
                    return status
                if st and st.io_running == "Yes" and st.sql_running == "Yes" and st.lag == 0:
                    status.caught_up = True
                    status.seconds_to_catch_up = time.monotonic() - t0
                    return status
                if time.monotonic() - t0 > wait_seconds:
                    return status
                time.sleep(0.2)
    finally:
        conn.close()


def rebuild_replica(store, catalog, target: ConnSpec, primary: ConnSpec, *, wait_seconds: float = 60.0,
                    backup_id: str | None = None, **restore_kw: Any):
    """Restore to the newest shipped point, then replicate from the primary (PitrResult, with the
    replica's status in its notes and as result.replica)."""
    refuse_primary_as_target(target, primary)
    result = restore_to_point(store, catalog, parse_target(latest=True), target,
                              backup_id=backup_id, **restore_kw)
    pos = position_after(result)
    status = start_replica(target, primary, pos, wait_seconds)
    result.notes.append(status.note())
    result.replica = status  # type: ignore[attr-defined]
    return result
