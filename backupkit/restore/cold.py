"""Restore a cold backup into a datadir, then (optionally) start the server on it.

Refuses while a server runs on that datadir (a process with that --datadir, a live pid file in
it, or a server answering at the given connection), and refuses a non-empty datadir unless
``force``: then the old datadir is renamed to ``<datadir>.before-<UTC time>``, never deleted.
The archive is extracted into ``<datadir>.partial-<UTC time>`` with every safety check of
backupkit.strategies.cold.untar.extract, every file's sha256 is checked against the manifest, and only then
is the folder renamed into place. The manifest's point (binlog file, position, GTID) is where
binlog replay continues.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from backupkit.errors import BackupkitError, UsageError
from backupkit.mysql.connection import ConnSpec
from backupkit.mysql.control import start_restored_server
from backupkit.repo import layout
from backupkit.repo.catalog import BackupManifest, Catalog
from backupkit.repo.codec import StoredObject, iter_object
from backupkit.restore.datadir import move_aside, new_stamp, non_empty, server_running, unique
from backupkit.storage.base import ObjectStore
from backupkit.storage.local import fsync_dir
from backupkit.strategies.cold.tar import FileRecord
from backupkit.strategies.cold.untar import check_records, extract
from backupkit.util.paths import expand_user
from backupkit.util.progress import NullProgress, Progress
from backupkit.util.units import utc_iso


@dataclass
class ColdRestoreResult:
    """What a cold restore did."""

    backup_id: str
    datadir: str
    dirs: dict[str, str]
    moved_aside: dict[str, str] = field(default_factory=dict)
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    config_file: str | None = None
    started: bool = False
    start_seconds: float | None = None
    start_verified: bool = False
    point: dict = field(default_factory=dict)
    dry_run: bool = False
    record_id: str | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def restore_cold(store: ObjectStore, manifest: BackupManifest, datadir: str | Path | None, *,
                 force: bool = False, start_command: str | None = None,
                 conn: ConnSpec | None = None, pid_file: str | Path | None = None,
                 start_timeout: float = 300.0, extra_dirs: dict[str, str | Path] | None = None,
                 dry_run: bool = False, progress: Progress | None = None,
                 progress_label: str = "extract",
                 notify: Callable[[str], None] | None = None,
                 catalog: Catalog | None = None,
                 error_log: str | Path | None = None) -> ColdRestoreResult:
    """Extract a cold backup into datadir (and its other folders), then run start_command.

    extra_dirs maps the archive's other roots (binlog, innodb_*, pathN) to folders; by default
    each goes to ``<datadir>-<root>``. ``conn`` is where the started server is expected to
    answer (also used to refuse when a server already answers there). With a catalog, the
    measured restore is recorded in the repository (it feeds the RTO of the loss report)."""
    say = notify or (lambda msg: None)
    if manifest.kind != "cold":
        raise UsageError(f"backup {manifest.id} is a {manifest.kind} backup, not a cold one")
    if not datadir:
        raise UsageError("a cold restore needs --datadir DIR")
    target = expand_user(datadir).absolute()
    details = manifest.details
    records = [FileRecord.from_dict(d) for d in details.get("files", [])]
    roots = [r["name"] for r in details.get("roots", [])] or ["data"]
    check_records(records, roots)  # an unsafe manifest is refused before anything is touched
    archive = next((o for o in manifest.objects if o.key == layout.cold_archive(manifest.id, 0)), None)
    if archive is None:
        raise BackupkitError(f"backup {manifest.id} has no datadir archive")
    dirs: dict[str, Path] = {}
    for name in roots:
        if name == "data":
            dirs[name] = target
        else:
            given = (extra_dirs or {}).get(name)
            dirs[name] = expand_user(given).absolute() if given else target.with_name(
                f"{target.name}-{name}")
    result = ColdRestoreResult(manifest.id, str(target), {k: str(v) for k, v in dirs.items()},
                               point={"file": manifest.point.file, "pos": manifest.point.pos,
                                      "gtid": manifest.point.gtid, "time": manifest.point.time},
                               dry_run=dry_run)
    why = server_running(target, Path(pid_file) if pid_file else None, conn)
    if why:
        raise UsageError(f"a server is running: {why}", "stop it before restoring a datadir")
    busy = [p for p in dirs.values() if non_empty(p)]
    if busy and not force:
        raise UsageError(f"{busy[0]} is not empty; nothing was changed",
                         "use --force to move it aside (it is renamed, never deleted)")
    if dry_run:
        stamp = new_stamp()
        result.moved_aside = {str(p): str(p.with_name(f"{p.name}.before-{stamp}")) for p in busy}
        result.files = sum(1 for r in records if r.type == "file")
        result.bytes = sum(r.size for r in records if r.type == "file")
        return result

    stamp = new_stamp()
    started_at = time.time()
    for p in busy:
        result.moved_aside[str(p)] = str(move_aside(p, stamp, say))

    work: dict[str, Path] = {}
    created: list[Path] = []
    for name, p in dirs.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.is_dir():  # exists and is empty (a mount point, say): extract in place
            work[name] = p
        else:
            tmp = unique(p.with_name(f"{p.name}.partial-{stamp}"))
            tmp.mkdir(mode=0o700)
            created.append(tmp)
            work[name] = tmp
    total = sum(r.size for r in records if r.type == "file")
    bar = progress or NullProgress()
    task = bar.start(progress_label, total=manifest.stats.get("logical_bytes") or total or None)

    def count(n: int) -> None:
        bar.advance(task, n)

    say(f"extracting {manifest.id} into {target}")
    t0 = time.monotonic()
    try:
        stats = extract(iter_object(store, archive), work, records, on_bytes=count)
        for name, tmp in work.items():
            if tmp != dirs[name]:
                os.rename(tmp, dirs[name])
                fsync_dir(dirs[name].parent)
    except BaseException:
        for tmp in created:  # only the folders this restore made
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.files, result.bytes = stats.files, stats.bytes
    result.seconds = round(time.monotonic() - t0, 3)
    config = next((o for o in manifest.objects if o.key == layout.cold_config(manifest.id)), None)
    if config is not None:
        result.config_file = str(_write_config(store, config, target))
    if start_command:
        say("starting the server")
        seconds, result.start_verified = start_restored_server(
            start_command, conn, pid_file=pid_file, start_timeout=start_timeout, error_log=error_log)
        result.start_seconds = round(seconds, 3)
        result.started = True
    finished = time.time()
    if catalog is not None:
        record = {"kind": "cold", "backup_id": manifest.id, "target": str(target),
                  "started_at": started_at, "finished_at": finished,
                  "started_at_utc": utc_iso(started_at), "finished_at_utc": utc_iso(finished),
                  "duration": round(finished - started_at, 3), "raw_bytes": result.bytes,
                  "files": result.files, "started_server": result.started,
                  "moved_aside": result.moved_aside}
        result.record_id = catalog.commit_restore_record(record)
    return result


def _write_config(store: ObjectStore, obj: StoredObject, datadir: Path) -> Path:
    """The saved server config, beside the datadir (never over an existing file)."""
    path = unique(datadir.with_name(f"{datadir.name}.server.cnf"))
    with open(path, "xb") as fh:
        for block in iter_object(store, obj):
            fh.write(block)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o600)
    return path
