"""The manifest of a cold backup: point, files, downtime, shutdown evidence and staging."""

from __future__ import annotations

import time
from pathlib import Path

from backupkit import __version__
from backupkit.mysql.control import (
    ServerProbe,
    ShutdownCheck,
)
from backupkit.mysql.gtid import BinlogPoint
from backupkit.repo.catalog import BackupManifest
from backupkit.repo.codec import StoredObject
from backupkit.strategies.cold.options import ColdOptions
from backupkit.strategies.cold.shutdown import BinlogEnd
from backupkit.strategies.cold.tar import (
    FileRecord,
    Root,
    WriteStats,
)
from backupkit.util.units import utc_iso


def downtime_summary(t: dict[str, float | None], mono: dict[str, float]) -> dict:
    """Timestamps (UTC epoch and ISO) and durations of the downtime."""
    out: dict = {k: v for k, v in t.items()}
    out.update({f"{k}_utc": utc_iso(v) for k, v in t.items()})

    def span(a: str, b: str) -> float | None:
        return round(mono[b] - mono[a], 4) if a in mono and b in mono else None

    out["stop_seconds"] = span("stop_requested", "stopped")
    out["copy_seconds"] = span("stopped", "start_requested")
    out["start_seconds"] = span("start_requested", "accepting")
    out["total_seconds"] = span("stop_requested", "accepting")
    out["total_s"] = out["total_seconds"]  # the name `backupkit list` reads
    return out


def cold_manifest(backup_id: str, source, end: BinlogEnd | None, pre_point: BinlogPoint | None,
              probe: ServerProbe, roots: list[Root], datadir: Path, stats: WriteStats,
              objects: list[StoredObject], downtime: dict, check: ShutdownCheck | None,
              opts: ColdOptions, preflush: dict, staging: dict, started_at: float,
              point_check: dict) -> BackupManifest:
    point = BinlogPoint()
    if end is not None:
        point = BinlogPoint(file=end.file, pos=end.pos, gtid=end.gtid,
                            time=downtime.get("stopped") or time.time())
    records: list[FileRecord] = stats.records
    details = {
        "datadir": str(datadir),
        "roots": [{"name": r.name, "path": str(r.path), "files": r.files} for r in roots],
        "files": [r.to_dict() for r in records],
        "skipped": [s.__dict__ for s in stats.skipped],
        "downtime": downtime,
        "staging": staging or None,
        "shutdown": {
            "method": "command" if opts.stop_command else "sql",
            "stop_command": opts.stop_command, "start_command": opts.start_command,
            "clean": check.clean if check else None,
            "evidence": check.__dict__ if check else None,
            "preflush": preflush,
        },
        "binlog": {
            "enabled": probe.log_bin,
            "end": end.to_dict() if end else None,
            "before_stop": pre_point.__dict__ if pre_point else None,
            "point_check": point_check,
            "note": ("point.pos is where the Stop event begins: the end of the last transaction. "
                     "Replay continues at (point.file, point.pos); the restarted server "
                     "opened the next binlog file.") if end else "binlog disabled: no replay from this base",
        },
        "server": probe.to_dict(),
        "config_file": opts.config_file,
    }
    wstats = {"files": stats.files, "dirs": stats.dirs, "symlinks": stats.symlinks,
              "sparse_files": stats.sparse_files, "logical_bytes": stats.logical_bytes,
              "data_bytes": stats.data_bytes, "stored_bytes": sum(o.size for o in objects),
              "skipped": len(stats.skipped), "downtime_seconds": downtime.get("total_seconds")}
    return BackupManifest(id=backup_id, kind="cold", source=source, point=point,
                          started_at=started_at, finished_at=time.time(), objects=objects,
                          stats=wstats, details=details, tool_version=__version__)
