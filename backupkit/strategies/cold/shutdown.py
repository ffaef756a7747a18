"""Around the stop: flush dirty pages first (a short shutdown), then read the exact point where
the stopped server's binlog ends, and check it against the restarted server.

After a clean shutdown the last binlog file ends with a Stop event, and the position where that
event begins is the end of the last committed transaction; the GTID position comes from the
``<binlog>.state`` file the server writes at shutdown, and is checked after the restart against
``BINLOG_GTID_POS(file, pos)``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from backupkit.errors import BackupkitError
from backupkit.mysql import binlog_events as be
from backupkit.mysql.connection import ConnSpec, connect
from backupkit.mysql.control import (
    ServerProbe,
)
from backupkit.mysql.gtid import GtidSet, normalize_gtid


def last_binlog(probe: ServerProbe) -> tuple[list[str], Path] | None:
    if not probe.log_bin or probe.log_bin_index is None:
        return None
    lines = [ln.strip() for ln in probe.log_bin_index.read_text().splitlines() if ln.strip()]
    if not lines:
        return None
    base = probe.log_bin_index.parent

    def resolve(name: str) -> Path:
        return Path(name) if os.path.isabs(name) else (base / name)

    return lines, resolve(lines[-1])


def scan_gtid_pos(path: Path, upto: int) -> str:
    """The GTID position at offset upto of a MariaDB binlog file, by reading its events."""
    state = GtidSet()
    with open(path, "rb") as fh:
        reader = be.iter_events(fh)
        for hdr, raw in reader:
            if hdr.log_pos and hdr.log_pos > upto:
                break
            csum = reader.fde.checksum_len if reader.fde else 0
            if hdr.type == be.GTID_LIST_EVENT:
                for d, s, n in be.parse_gtid_list(be.body(raw, csum)):
                    state.set_domain(d, s, n)
            elif hdr.type == be.MARIA_GTID_EVENT:
                g = be.parse_maria_gtid(hdr, be.body(raw, csum))
                state.set_domain(g.domain_id, g.server_id, g.seq_no)
    return state.text()


@dataclass
class BinlogEnd:
    """Where the binlog ends after the server stopped."""

    file: str = ""
    path: str = ""
    pos: int = 0  # end of the last transaction: where the Stop event begins
    size: int = 0  # the file's size, Stop event included
    closed: bool | None = None  # the in-use flag is cleared
    stop_event: bool = False
    gtid: str = ""
    gtid_source: str = ""
    files: list[str] = field(default_factory=list)
    last_event_time: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def binlog_end(probe: ServerProbe) -> BinlogEnd | None:
    """Read the binlog index and the last file of a stopped server: its exact end point."""
    found = last_binlog(probe)
    if found is None:
        return None
    names, path = found
    end = BinlogEnd(file=path.name, path=str(path), files=[Path(n).name for n in names])
    with open(path, "rb") as fh:
        head = fh.read(4 + be.HEADER_LEN)
        if head[:4] != be.MAGIC or len(head) < 4 + be.HEADER_LEN:
            raise BackupkitError(f"{path} is not a binlog file")
        fde_hdr = be.parse_header(head, 4)
        fde = be.parse_fde(head[4:] + fh.read(fde_hdr.event_size - be.HEADER_LEN))
        end.closed = not (fde_hdr.flags & be.LOG_EVENT_BINLOG_IN_USE_F)
        size = os.fstat(fh.fileno()).st_size
        end.size = end.pos = size
        stop_len = be.HEADER_LEN + fde.checksum_len
        if size >= 4 + fde_hdr.event_size + stop_len:
            fh.seek(size - stop_len)
            hdr = be.parse_header(fh.read(be.HEADER_LEN))
            if hdr.type == be.STOP_EVENT and hdr.log_pos == size and hdr.event_size == stop_len:
                end.stop_event = True
                end.pos = size - stop_len
                end.last_event_time = hdr.timestamp
    state = probe.log_bin_basename.with_name(probe.log_bin_basename.name + ".state") \
        if probe.log_bin_basename else None
    if state is not None and state.is_file():
        end.gtid = GtidSet.from_state_file(state.read_text()).text()
        end.gtid_source = f"{state.name} written at shutdown"
    return end


def check_point_after_restart(spec: ConnSpec, end: BinlogEnd, flavor: str) -> dict:
    """Compare the recorded GTID position with the server's BINLOG_GTID_POS(file, pos)."""
    if flavor != "mariadb":
        return {"checked": False, "reason": "BINLOG_GTID_POS is MariaDB only"}
    try:
        conn = connect(spec)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", (end.file, end.pos))
                row = cur.fetchone()
        finally:
            conn.close()
    except Exception as exc:  # the backup is still good; the check is evidence
        return {"checked": False, "reason": f"{type(exc).__name__}: {exc}"}
    server = normalize_gtid(row[0] if row and row[0] is not None else "")
    return {"checked": True, "binlog_gtid_pos": server, "equal": server == normalize_gtid(end.gtid)}


#: Dirty pages the shutdown flushes quickly enough (32 MiB of 16 KiB pages): no pre-flush below.
PREFLUSH_ENOUGH = 2048


def preflush(spec: ConnSpec, timeout: float) -> tuple[dict, Callable[[], None]]:
    """Flush InnoDB dirty pages while the server still serves, so the shutdown is short.

    Only when there are many; stops at PREFLUSH_ENOUGH, when writers keep the count from
    falling for 2 s, or at the timeout. Returns what happened and a function that puts the
    settings back (used when the server is not stopped after all)."""
    if timeout <= 0:
        return {"skipped": "disabled"}, lambda: None
    info: dict = {"timeout": timeout}
    started = time.monotonic()
    changed = False
    pct = lwm = None
    try:
        conn = connect(spec)
    except BackupkitError as exc:
        return {"error": exc.message}, lambda: None
    try:
        with conn.cursor() as cur:
            def dirty() -> int:
                cur.execute("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'")
                row = cur.fetchone()
                return int(row[1]) if row else 0

            info["dirty_before"] = left = dirty()
            if left > PREFLUSH_ENOUGH:
                cur.execute("SELECT @@innodb_max_dirty_pages_pct, @@innodb_max_dirty_pages_pct_lwm")
                pct, lwm = cur.fetchone()
                cur.execute("SET GLOBAL innodb_max_dirty_pages_pct_lwm = 0")
                cur.execute("SET GLOBAL innodb_max_dirty_pages_pct = 0")
                changed = True
                best, best_at = left, time.monotonic()
                while left > PREFLUSH_ENOUGH and time.monotonic() - started < timeout:
                    time.sleep(0.2)
                    left = dirty()
                    if left < best * 0.9:
                        best, best_at = left, time.monotonic()
                    elif time.monotonic() - best_at > 2.0:
                        break  # writers keep pace with the flushing
                info["dirty_after"] = left
    except Exception as exc:  # only an optimisation
        info["error"] = str(exc)
    finally:
        conn.close()
    info["seconds"] = round(time.monotonic() - started, 3)

    def undo() -> None:
        if not changed:
            return
        with contextlib.suppress(Exception):
            c = connect(spec)
            try:
                with c.cursor() as cur:
                    cur.execute(f"SET GLOBAL innodb_max_dirty_pages_pct = {float(pct)}")
                    cur.execute(f"SET GLOBAL innodb_max_dirty_pages_pct_lwm = {float(lwm)}")
            finally:
                c.close()

    return info, undo
