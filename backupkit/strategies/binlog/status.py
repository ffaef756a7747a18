"""`binlog status`: shipped range, lag behind the server, lease and the current loss window."""

from __future__ import annotations

import time
from typing import Any

from backupkit.errors import BackupkitError, StorageError
from backupkit.mysql import binlog_events as be
from backupkit.mysql.binlog_stream import BinlogStream, StreamEnd, default_server_id
from backupkit.mysql.connection import ConnSpec, connect
from backupkit.mysql.server import ServerFacts, binary_logs, master_status, server_facts
from backupkit.repo.catalog import (
    Catalog,
    SegmentInfo,
    utc_iso,
)
from backupkit.repo.coverage import build_runs, confirm, gap_between, linked
from backupkit.repo.lease import Lease
from backupkit.repo.servers import Epoch, epochs, server_file
from backupkit.repo.stretches import Stretch
from backupkit.repo.watermark import read_status


def shipping_status(catalog: Catalog, source_id: str, spec: ConnSpec | None = None,
                    now: float | None = None) -> dict[str, Any]:
    """Shipped range, lag in seconds and bytes behind the server, and the current loss window."""
    now = time.time() if now is None else now
    # the status first: it names a committed point, so the segments listed after it hold it
    st = read_status(catalog, source_id)
    # stretches (repo/stretches.py): the same runs as the segments, a few objects per binlog file
    segs = catalog.stretches(source_id, cuts=[st.point] if st is not None else ())
    gaps = catalog.gaps(source_id)
    runs = build_runs(segs, gaps)
    out: dict[str, Any] = {"source_id": source_id, "segments": sum(s.listed for s in segs),
                           "stored_bytes": sum(s.listed_bytes for s in segs),
                           "ranges": [], "gaps": [], "lease": None, "server": None}
    for r in runs:
        out["ranges"].append({
            "range_id": r.range_id, "start": f"{r.start[0]}:{r.start[1]}",
            "end": f"{r.end[0]}:{r.end[1]}", "segments": sum(s.count for s in r.segments),
            "first_commit_time": r.first.head.first_commit_time or None,
            "last_commit_time": r.last.tail.last_commit_time or None, "gtid_state": r.last.gtid_state})
    out["gaps"] = [g.to_dict() for g in gaps]
    out["servers"] = switchover_history(segs, gaps)
    last = segs[-1].tail if segs else None
    out["last_segment_at"] = last.created_at if last else None
    out["shipped_to"] = "{}:{}".format(*last.next_point()) if last else None
    out["last_shipped_commit_time"] = max((s.max_last_commit for s in segs), default=0) or None
    # the confirmed-through watermark: the loss window of shipping is now minus it
    usable = bool(st is not None and st.confirmed_at and confirm(runs, st.point, st.confirmed_at))
    newest = max(float(out["last_shipped_commit_time"] or 0), st.confirmed_at if usable else 0.0)
    out["confirmed_through"] = st.confirmed_at if usable else None
    out["confirmed_through_utc"] = utc_iso(st.confirmed_at) if usable else None
    out["watermark"] = newest or None
    out["shipper_status"] = st.to_dict() if st is not None else None
    out["shipped_server"] = st.server if st is not None else None
    out["loss_window_seconds"] = max(0.0, now - newest) if newest else None
    lease = Lease(catalog.store, source_id)
    try:
        rec, _ = lease.current()
    except StorageError:
        rec = None
    if rec is not None:
        out["lease"] = {"holder": rec.holder, "expires_at": rec.expires_at, "released": rec.released,
                        "active": not rec.released and rec.expires_at > now}
    if spec is None or last is None:
        return out
    try:
        out["server"] = _server_lag(spec, last, now)
    except BackupkitError as exc:
        out["server"] = {"error": exc.one_line()}
    srv = out["server"]
    if srv and "lag_bytes" in srv:
        out["lag_bytes"] = srv["lag_bytes"]
        out["lag_seconds"] = srv["lag_seconds"]
        if srv["lag_bytes"] == 0:  # checked live just now: nothing to lose
            out["loss_window_seconds"] = 0.0
        elif newest:
            srv["loss_window_seconds"] = out["loss_window_seconds"] = max(0.0, now - newest)
        else:
            out["loss_window_seconds"] = srv["loss_window_seconds"]
    return out


def switchover_history(segs: list[Stretch], gaps) -> list[dict[str, Any]]:
    """The servers shipped under the source, oldest first, and how each switchover joined the
    one before: by GTID (lossless), or a recorded gap."""
    out: list[dict[str, Any]] = []
    # each epoch's first and last segment: the first stretch's first, the last stretch's last
    eps = [Epoch(e.epoch, e.server_id, e.first.head, e.last.tail) for e in epochs(segs)]
    for i, e in enumerate(eps):
        d = e.to_dict()
        if i:
            prev = eps[i - 1].last
            gap = gap_between(gaps, prev, e.first) or next(
                (g for g in gaps if (g.after_file, g.after_pos) == prev.next_point()), None)
            d["joined"] = ("by GTID" if linked(prev, e.first) and gap is None
                           else f"gap: {gap.reason}" if gap is not None else "not joined")
            d["from_server_id"] = eps[i - 1].server_id
        out.append(d)
    return out


def _server_lag(spec: ConnSpec, last: SegmentInfo, now: float) -> dict[str, Any]:
    conn = connect(spec)
    try:
        facts = server_facts(conn)
        file, pos = master_status(conn, facts)
        logs = binary_logs(conn)
    finally:
        conn.close()
    fid, spos = last.next_point()
    sfile = server_file(fid)  # the server's own name (the stored one carries an epoch)
    if last.server_id and facts.server_id != last.server_id:
        # another server (a switchover the shipper has not followed yet): its positions are
        # not comparable with the shipped ones
        return {"position": f"{file}:{pos}", "server_id": facts.server_id,
                "note": f"this server (server_id {facts.server_id}) is not the one shipped last "
                        f"(server_id {last.server_id}); the shipper follows it by GTID when it "
                        "is pointed at it"}
    lag = 0
    for name, size in logs:
        if name < sfile:
            continue
        lag += max(0, size - spos) if name == sfile else size
    if (file, pos) == (sfile, spos) or (sfile, spos) > (file, pos):
        lag = 0
    info: dict[str, Any] = {"position": f"{file}:{pos}", "lag_bytes": lag}
    if lag == 0:
        info.update(lag_seconds=0.0, loss_window_seconds=0.0, oldest_unshipped_commit=None)
        return info
    first = _first_unshipped_commit(spec, sfile, spos, facts)
    info["oldest_unshipped_commit"] = first
    if first:
        info["lag_seconds"] = max(0.0, now - first)
        # If the server died now, everything committed since the last shipped commit is lost.
        info["loss_window_seconds"] = max(0.0, now - (last.last_commit_time or first))
    else:
        info["lag_seconds"] = 0.0
        info["loss_window_seconds"] = 0.0
    return info


def _first_unshipped_commit(spec: ConnSpec, file: str, pos: int, facts: ServerFacts) -> float | None:
    """Commit time of the first transaction after (file, pos) on the server, read from a short,
    non-blocking dump."""
    sid = default_server_id("status:" + file) + 7
    stream = BinlogStream(spec, sid, file, pos, non_blocking=True)
    events: list[tuple[be.EventHeader, bytes]] = []
    try:
        stream.open()
        for _ in range(10000):
            raw = stream.read(5.0)
            if raw is None:
                break
            hdr = be.parse_header(raw)
            if hdr.type == be.ROTATE_EVENT and hdr.log_pos == 0:
                continue
            events.append((hdr, raw))
            if hdr.type in (be.XID_EVENT,) or (len(events) > 2 and hdr.type in be.QUERY_TYPES):
                break
    except (StreamEnd, BackupkitError):
        pass
    finally:
        stream.close()
    fixed = [(h, be.clear_in_use(be.fix_fde_position(r)) if h.type == be.FORMAT_DESCRIPTION_EVENT else r)
             for h, r in events]
    for txn in be.transactions(fixed, include_partial=True):
        return float(txn.commit_time) or None
    return None
