"""A restore never lands on the backed-up source by accident.

The target is the source when its ``@@server_uuid`` (MySQL) is the source's, when its
``@@hostname``, ``@@port`` and ``@@server_id`` are the ones the repository recorded for the
source (MariaDB has no server uuid; a recorded ``@@datadir`` that differs tells a later server on
the same port apart), or when its address is the configured source's. The last two also need the
target's GTID history to reach the base's point: a server rebuilt where the source was (the usual
disaster recovery) is a fresh server, not the source. Such a
restore is refused unless asked for with ``--in-place``.

An in-place restore rewrites the source with the load's binlog off, so the history shipped
before it no longer leads to the data after it. Before anything changes, the source's binlog is
rotated and a timeline break is recorded in the repository as a gap from the end of the old file
to the start of the new one: no later restore replays across it, and a new base is needed.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence

import pymysql

from backupkit.errors import SourceError, TargetError
from backupkit.mysql.connection import ConnSpec, connect
from backupkit.mysql.gtid import GtidSet
from backupkit.mysql.server import ServerFacts, SourceIdentity, server_facts
from backupkit.repo.catalog import Catalog, GapInfo

IN_PLACE_HINT = ("a restore onto the source replaces its live data and breaks the shipped history; "
                 "restore into another server, or give --in-place if that is really meant")


def _addresses(host: str) -> set[str]:
    if host in ("localhost", "::1") or host.startswith("127."):
        return {"loopback"}
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None)} or {host}
    except OSError:
        return {host}


def same_endpoint(a: ConnSpec, b: ConnSpec) -> bool:
    """Do two connection specs reach the same server address (socket, or host and port)?"""
    if a.socket or b.socket:
        return bool(a.socket and b.socket and a.socket == b.socket)
    return a.port == b.port and bool(_addresses(a.host) & _addresses(b.host))


def holds_history(history: str | None, base_gtid: str) -> bool | None:
    """Does a server's GTID history (``@@gtid_binlog_pos`` / ``@@gtid_executed``) reach the base's
    GTID position? None when either is unknown."""
    if history is None:
        return None
    base = GtidSet.parse(base_gtid, strict=False)
    if not base:
        return None
    held = GtidSet.parse(history, strict=False)
    return all(held.last_seq(k) >= base.last_seq(k) for k in base.intervals)


def why_target_is_source(facts: ServerFacts, spec: ConnSpec, sources: Sequence[SourceIdentity],
                         source_spec: ConnSpec | None = None, history: str | None = None,
                         base_gtid: str = "") -> str | None:
    """Why the target server is the backed-up source, or None when it is not.

    Without a server uuid, the same host, port and server id (or the configured source's address)
    could also be a server rebuilt there after the source was lost, the usual disaster recovery:
    when the target's GTID history does not reach the base's point, it is not the source."""
    for s in sources:
        if s.server_uuid and facts.server_uuid and s.server_uuid == facts.server_uuid:
            return f"its @@server_uuid {facts.server_uuid} is that of source {s.source_id}"
    if holds_history(history, base_gtid) is False:
        return None  # a new server where the source was: its binlog never saw the base's point
    for s in sources:
        if s.hostname and s.port and (s.hostname, s.port, s.server_id) == \
                (facts.hostname, facts.port, facts.server_id) \
                and not (s.datadir and facts.datadir and s.datadir != facts.datadir):
            return (f"its @@hostname, @@port and @@server_id ({facts.hostname}, {facts.port}, "
                    f"{facts.server_id}) are those of source {s.source_id}")
    if source_spec is not None and same_endpoint(spec, source_spec):
        return f"it is the configured source {source_spec.display()}"
    return None


def check_target(conn, spec: ConnSpec, sources: Sequence[SourceIdentity],
                 source_spec: ConnSpec | None, in_place: bool, base_gtid: str = "") -> str | None:
    """Refuse (TargetError, exit 7) a target that is the source unless in_place; return why it is
    the source (None when it is not)."""
    try:
        facts = server_facts(conn)
        with conn.cursor() as cur:
            cur.execute("SELECT @@gtid_binlog_pos" if facts.is_mariadb else "SELECT @@gtid_executed")
            row = cur.fetchone()
        history = _text(row[0]) if row and row[0] is not None else ""
    except pymysql.err.MySQLError as exc:
        raise SourceError(f"cannot read the identity of the target {spec.display()}: {exc.args[-1]}"
                          ) from None
    why = why_target_is_source(facts, spec, sources, source_spec, history, base_gtid)
    if why and not in_place:
        raise TargetError(f"the target {spec.display()} is the backed-up source: {why}; nothing was "
                          "changed", IN_PLACE_HINT)
    return why


def ensure_not_source(spec: ConnSpec, sources: Sequence[SourceIdentity],
                      source_spec: ConnSpec | None, in_place: bool, base_gtid: str = "") -> None:
    """check_target on a connection of its own (a restore checks before it says or does anything)."""
    conn = connect(spec)
    try:
        check_target(conn, spec, sources, source_spec, in_place, base_gtid)
    finally:
        conn.close()


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def record_timeline_break(conn, catalog: Catalog, source_id: str, reason: str) -> GapInfo:
    """Rotate the source's binlog and record a gap from the end of the old file to the start of
    the new one (before the in-place restore changes anything)."""
    with conn.cursor() as cur:
        try:
            cur.execute("FLUSH BINARY LOGS")
            cur.execute("SHOW BINARY LOGS")
            logs = [(r[0].decode() if isinstance(r[0], bytes) else str(r[0]), int(r[1]))
                    for r in cur.fetchall()]
        except pymysql.err.MySQLError as exc:
            raise TargetError(f"cannot rotate the binlog of the source for an in-place restore: "
                              f"{exc.args[-1]}", "grant RELOAD and BINLOG MONITOR") from None
    if len(logs) < 2:
        raise TargetError("the source's binlog did not rotate; the in-place restore was not started")
    (old, size), (new, _) = logs[-2], logs[-1]
    gap = GapInfo(source_id=source_id, after_file=old, after_pos=size, resume_file=new,
                  resume_pos=4, detected_at=time.time(), reason=reason)
    catalog.record_gap(gap)
    return gap


def break_note(gap: GapInfo) -> str:
    """What an in-place restore tells its user."""
    return (f"restored in place: a timeline break is recorded for source {gap.source_id} at "
            f"{gap.after_file}:{gap.after_pos} -> {gap.resume_file}:{gap.resume_pos}, so no restore "
            "replays across it; take a new base now (backupkit snapshot)")
