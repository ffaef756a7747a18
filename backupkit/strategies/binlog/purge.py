"""Safe purging of the source's binlog, and the warnings that a server could lose unshipped binlog.

``backupkit binlog purge [--keep DURATION] [--dry-run]`` runs ``PURGE BINARY LOGS TO`` only up to
files the repository holds: a file may go when

- it is not the server's current file, and
- a committed segment of it closed it (its ROTATE or STOP event is shipped) inside an unbroken run
  (so the run holds the file from where shipping began to its end), or it lies wholly before the
  first shipped point of the source (shipping began after it; no restore needs it), and
- its newest event is older than ``keep`` seconds.

After a switchover (repo/servers.py) only the segments of this server's newest epoch count: its
file names are its own, and a server not shipped under the source purges nothing.

PURGE removes a prefix of the files, so it stops at the first file that must stay. A committed
segment is on the write quorum of a mirrored repository by definition (the index entry is written
once the quorum holds the data), so "committed" is the test for several targets too.

``risks`` lists what could drop an unshipped file without this command: the server's own expiry
(``binlog_expire_logs_seconds``/``expire_logs_days``) nearer than the shipper's lag, a size limit
(``max_binlog_total_size``), too little free disk (when the binlog folder is on this machine), or a
lag above the policy's threshold. ``binlog status`` prints them; ``--check`` fails on them.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from backupkit.mysql.connection import ConnSpec, connect
from backupkit.mysql.server import binary_logs, master_status, server_facts
from backupkit.repo.catalog import Catalog, GapInfo, SegmentInfo
from backupkit.repo.coverage import build_runs
from backupkit.repo.servers import epoch_of, epochs, file_id, server_file


@dataclass
class PurgePlan:
    """Which binlog files of the server may go, and why the others stay."""

    source_id: str
    server_files: list[str]
    current_file: str
    keep_seconds: float
    purge_to: str | None = None  # PURGE BINARY LOGS TO this file: the files before it go
    files: list[str] = field(default_factory=list)  # the files that go
    stops_at: dict[str, str] = field(default_factory=dict)  # the first file that stays, and why
    executed: bool = False
    remaining: list[str] = field(default_factory=list)  # the server's files afterwards

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _closed_files(segments: Sequence[SegmentInfo], gaps: Sequence[GapInfo]) -> dict[str, float]:
    """Files held whole by the repository (their closing event is in an unbroken run) -> the time
    of their newest event."""
    out: dict[str, float] = {}
    for run in build_runs(segments, gaps):
        for s in run.segments:
            if s.file_closed or s.next_file:
                newest = max((x.last_event_time for x in run.segments if x.binlog_file == s.binlog_file),
                             default=0.0)
                out[s.binlog_file] = max(out.get(s.binlog_file, 0.0), newest)
    return out


def plan_purge(source_id: str, server_files: Sequence[str], current_file: str,
               segments: Sequence[SegmentInfo], gaps: Sequence[GapInfo], now: float,
               keep_seconds: float) -> PurgePlan:
    """Pure: the files that may be purged (a prefix of server_files), by the rules above."""
    plan = PurgePlan(source_id, list(server_files), current_file, keep_seconds)
    closed = _closed_files(segments, gaps)
    first = min(((s.binlog_file, s.start_pos) for s in segments), default=None)
    for f in server_files:
        why = ""
        if f == current_file:
            why = "the server's current file"
        elif first is not None and f < first[0]:
            pass  # wholly before the first shipped point: no restore needs it
        elif f not in closed:
            why = "not shipped completely yet" if first is not None else "nothing shipped yet"
        elif now - closed[f] < keep_seconds:
            why = f"newer than --keep ({keep_seconds:g} s)"
        if why:
            plan.stops_at = {"file": f, "reason": why}
            break
        plan.files.append(f)
    if plan.files:
        plan.purge_to = plan.stops_at.get("file") or current_file
    return plan


def purge_binlogs(catalog: Catalog, spec: ConnSpec, source_id: str, keep_seconds: float,
                  dry_run: bool = False, now: float | None = None) -> PurgePlan:
    """Plan from the server's files and the repository, then PURGE BINARY LOGS TO (unless dry)."""
    conn = connect(spec)
    try:
        facts = server_facts(conn)
        current, _ = master_status(conn, facts)
        names = [n for n, _ in binary_logs(conn)]
        segs = catalog.segments(source_id)
        mine = [e for e in epochs(segs) if e.server_id in (0, facts.server_id)]
        if segs and not mine:
            plan = PurgePlan(source_id, names, current, keep_seconds, stops_at={
                "file": names[0] if names else current,
                "reason": f"server_id {facts.server_id} is not shipped under {source_id}"})
            plan.remaining = names
            return plan
        epoch = mine[-1].epoch if mine else 0
        fid = {file_id(epoch, n): n for n in names}
        plan = plan_purge(source_id, list(fid), file_id(epoch, current),
                          [s for s in segs if epoch_of(s.binlog_file) == epoch],
                          catalog.gaps(source_id), time.time() if now is None else now, keep_seconds)
        plan.server_files, plan.current_file = names, current
        plan.files = [server_file(f) for f in plan.files]
        if plan.purge_to:
            plan.purge_to = server_file(plan.purge_to)
        if plan.stops_at.get("file"):
            plan.stops_at["file"] = server_file(plan.stops_at["file"])
        if plan.purge_to and not dry_run:
            with conn.cursor() as cur:
                cur.execute("PURGE BINARY LOGS TO %s", (plan.purge_to,))
            plan.executed = True
        plan.remaining = [n for n, _ in binary_logs(conn)] if plan.executed else names
    finally:
        conn.close()
    return plan


# -- risks -------------------------------------------------------------------------------------------
def _var(cur, name: str) -> str | None:
    cur.execute("SHOW GLOBAL VARIABLES LIKE %s", (name,))
    row = cur.fetchone()
    return None if row is None else str(row[1])


def server_risks(spec: ConnSpec, lag_seconds: float | None, lag_bytes: int | None,
                 max_lag: float | None) -> list[str]:
    """What could drop binlog the repository does not hold yet (empty when nothing could)."""
    out: list[str] = []
    conn = connect(spec)
    try:
        with conn.cursor() as cur:
            expire = _var(cur, "binlog_expire_logs_seconds")
            days = _var(cur, "expire_logs_days")
            total = _var(cur, "max_binlog_total_size")
            basename = _var(cur, "log_bin_basename")
            max_size = _var(cur, "max_binlog_size")
    finally:
        conn.close()
    seconds = float(expire) if expire and float(expire) > 0 else (float(days or 0) * 86400)
    lag = lag_seconds or 0.0
    if seconds > 0:
        margin = max(3600.0, seconds * 0.1)
        if lag + margin >= seconds:
            out.append(f"the server's binlog expiry ({seconds:g} s) could purge binlog that is not "
                       f"shipped yet (lag {lag:.0f} s); raise binlog_expire_logs_seconds or fix the "
                       "shipper")
    if total and float(total) > 0 and lag_bytes and lag_bytes * 2 >= float(total):
        out.append(f"max_binlog_total_size ({int(float(total))} bytes) could purge unshipped binlog "
                   f"({lag_bytes} bytes behind)")
    folder = os.path.dirname(basename or "")
    if folder and os.path.isdir(folder):  # the server's binlog folder is on this machine
        free = shutil.disk_usage(folder).free
        need = 2 * int(float(max_size or 0)) + (lag_bytes or 0)
        if free < need:
            out.append(f"only {free} bytes free beside the binlog ({folder}); a full disk stops the "
                       "server's binlog")
    if max_lag is not None and lag > max_lag:
        out.append(f"the shipper is {lag:.0f} s behind the server (threshold {max_lag:g} s)")
    return out
