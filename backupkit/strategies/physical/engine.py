"""The physical backup engine: mariadb-backup's mbstream, compressed and stored while it runs.

``take_physical_backup(spec, store, options)`` runs ``mariadb-backup --backup --stream=mbstream``
as a child and pipes its stdout through zstd (a ``zstd`` child per part, or the Python codec:
stream.py) and sha256 into objects of at most ``part_size_mb`` raw bytes each, uploaded while
the child still reads the datadir: nothing is staged on local disk but the two small info
files of ``--extra-lsndir``. The manifest, written
last, records the consistent point (binlog file, position, GTID, from xtrabackup_info), the LSN
range, the tool version, the measured commit block, and for an incremental the chain it extends.

If the child fails or is killed, or anything else goes wrong, the parts already stored are
deleted and no manifest is written, so no backup exists.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backupkit import __version__
from backupkit.errors import BackupkitError, SourceError, UsageError
from backupkit.mysql.connection import ConnSpec, connect
from backupkit.mysql.gtid import BinlogPoint
from backupkit.mysql.mariabackup import find_tool, tool_version
from backupkit.mysql.process import kill_group
from backupkit.mysql.server import identity, server_facts
from backupkit.repo.catalog import BackupManifest, Catalog, new_backup_id
from backupkit.repo.chain import PHYSICAL, chain_raw_bytes
from backupkit.repo.codec import StoredObject
from backupkit.storage.base import ObjectStore
from backupkit.strategies.physical.stream import store_parts_codec, store_parts_native, zstd_binary
from backupkit.strategies.physical.tool import (
    CredentialsFile,
    LogWatch,
    exit_text,
    parse_binlog_pos,
    private_tempdir,
    read_lsndir,
    watch_stderr,
)
from backupkit.util.ratelimit import TokenBucket

Progress = Callable[..., None]


class PhysicalBackupFailed(BackupkitError):
    """mariadb-backup failed, was killed, or its stream could not be stored."""


@dataclass
class PhysicalOptions:
    """What one physical backup does."""

    source_id: str | None = None
    incremental: bool = False
    full_if_none: bool = False  # incremental, or a full backup when there is none to extend
    parallel: int | None = None  # mariadb-backup --parallel (default: the number of cores)
    compression_level: int = 1
    compression_threads: int = -1  # zstd -T; -1: one per core (as the cold copy), 0: one thread
    part_size_mb: int = 1024  # raw bytes of mbstream per stored object (one zstd frame each)
    datadir: str | None = None  # default: the server's @@datadir
    backup_id: str | None = None
    extra_args: list[str] = field(default_factory=list)
    max_rate: float | None = None  # bytes per second of mbstream read (the child blocks on the pipe)

    @classmethod
    def from_policy(cls, section: Any, **overrides: Any) -> PhysicalOptions:
        opts = cls(parallel=getattr(section, "parallel", None),
                   compression_level=getattr(section, "compression_level", 1))
        for k, v in overrides.items():
            if v is not None:
                setattr(opts, k, v)
        return opts

    def workers(self) -> int:
        return max(1, self.parallel or os.cpu_count() or 1)


# -- before the child starts ------------------------------------------------------------------
def _local_names() -> set[str]:
    names = {"localhost", "127.0.0.1", "::1"}
    with contextlib.suppress(OSError):
        names |= {socket.gethostname(), socket.getfqdn()}
    return names


def check_remote(spec: ConnSpec) -> None:
    """Refuse a source on another host before connecting to it."""
    if not (spec.loopback() or spec.host in _local_names()):
        raise UsageError(f"the source {spec.display()} is not on this host: mariadb-backup copies the "
                         "server's datadir, so a physical backup runs on the database host",
                         "run backupkit there, or take a logical snapshot (--engine logical)")


def check_local(spec: ConnSpec, datadir: str) -> Path:
    """The source's datadir, if this host can read it; else a one-line error."""
    check_remote(spec)
    path = Path(datadir.rstrip("/") or "/")
    if not path.is_dir():
        raise UsageError(f"the server's datadir {path} is not a folder on this host",
                         "a physical backup runs on the database host itself")
    if not os.access(path, os.R_OK | os.X_OK):
        raise UsageError(f"the server's datadir {path} is not readable by this user",
                         "run backupkit as the mysql user or root")
    return path


def _server_socket(conn) -> str | None:
    with conn.cursor() as cur:
        cur.execute("SELECT @@socket")
        row = cur.fetchone()
    return row[0] if row and row[0] else None


def newest_physical(catalog: Catalog, source_id: str) -> BackupManifest | None:
    """The backup an incremental of source_id extends: its newest physical backup."""
    mine = [b for b in catalog.backups(PHYSICAL) if b.source.source_id == source_id]
    return max(mine, key=lambda b: (b.finished_at, b.id), default=None)


# -- the backup ---------------------------------------------------------------------------------
def take_physical_backup(spec: ConnSpec, store: ObjectStore, opts: PhysicalOptions,
                         progress: Progress | None = None,
                         catalog: Catalog | None = None) -> BackupManifest:
    """Run mariadb-backup, store its stream, commit the manifest (last)."""
    report = progress or (lambda *a, **k: None)
    binary = find_tool()
    catalog = catalog or Catalog(store)
    check_remote(spec)
    conn = connect(spec)
    try:
        facts = server_facts(conn)
        server_socket = _server_socket(conn)
    finally:
        conn.close()
    if not facts.is_mariadb:
        raise UsageError(f"the source runs {facts.version}: physical backups drive mariadb-backup, "
                         "which copies MariaDB only",
                         "on MySQL the same interface would drive xtrabackup; that is not built "
                         "or tested (docs/physical.md)")
    datadir = check_local(spec, opts.datadir or facts.datadir)
    source = identity(facts, opts.source_id)
    store.check()
    catalog.ensure_repo()
    parent = None
    if opts.incremental:
        parent = newest_physical(catalog, source.source_id)
        if parent is None and not opts.full_if_none:
            raise UsageError(f"no physical backup of source {source.source_id} to base an "
                             "incremental on", "take a full one first: snapshot --engine physical")
    started = time.time()
    backup_id = opts.backup_id or new_backup_id("physical", started)
    tmp = private_tempdir("backupkit-physical-")
    started_keys: list[str] = []
    proc: subprocess.Popen | None = None
    zstd = zstd_binary()
    watch = LogWatch()
    try:
        creds = CredentialsFile(spec, tmp)
        (tmp / "lsn").mkdir()
        cmd = [binary, creds.arg(), "--backup", "--stream=mbstream", f"--parallel={opts.workers()}",
               f"--target-dir={tmp / 'target'}", f"--extra-lsndir={tmp / 'lsn'}", f"--datadir={datadir}"]
        sock = spec.socket or (server_socket if server_socket and Path(server_socket).exists() else None)
        cmd += [f"--socket={sock}"] if sock else [f"--host={spec.host}", f"--port={spec.port}"]
        if parent is not None:
            cmd.append(f"--incremental-lsn={parent.details['lsn']['to']}")
        cmd += list(opts.extra_args)
        report("start", command=[c for c in cmd if not c.startswith("--defaults")], incremental=bool(parent))
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, cwd=tmp)
        log_thread = watch_stderr(proc.stderr, watch)
        limiter = TokenBucket(opts.max_rate) if opts.max_rate else None
        common = dict(part_size_mb=opts.part_size_mb, level=opts.compression_level,
                      threads=(opts.compression_threads if opts.compression_threads >= 0
                               else os.cpu_count() or 1), limiter=limiter, started_keys=started_keys,
                      report=report)
        if zstd:
            objects = store_parts_native(store, backup_id, proc.stdout, zstd=zstd, workdir=tmp, **common)
        else:
            objects = store_parts_codec(store, backup_id, proc.stdout, **common)
        rc = proc.wait()
        log_thread.join(timeout=30)
        if rc != 0 or "completed" not in watch.marks:
            why = exit_text(rc) if rc != 0 else "ended without 'completed OK!'"
            raise PhysicalBackupFailed(f"mariadb-backup {why}: {watch.error_line()}",
                                       "no backup was written; the partial objects were removed")
        checkpoints, info = read_lsndir(tmp / "lsn")
    except BaseException:
        if proc is not None:
            kill_group(proc)
        with contextlib.suppress(Exception):  # best effort: the data without a manifest is invisible
            store.delete(started_keys)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    finished = time.time()
    manifest = _manifest(backup_id, source, started, finished, objects, checkpoints, info, watch,
                         parent, binary, opts, datadir, native=bool(zstd))
    catalog.commit_backup(manifest)
    report("done", manifest=manifest)
    return manifest


def _manifest(backup_id: str, source, started: float, finished: float, objects: list[StoredObject],
              checkpoints: dict[str, str], info: dict[str, str], watch: LogWatch,
              parent: BackupManifest | None, binary: str, opts: PhysicalOptions,
              datadir: Path, native: bool = False) -> BackupManifest:
    pos = parse_binlog_pos(info.get("binlog_pos", "")) or next(
        (p for p in (parse_binlog_pos(line) for line in reversed(watch.tail)) if p), None)
    point_time = watch.point_time() or finished
    point = BinlogPoint(file=pos[0], pos=pos[1], gtid=pos[2], time=point_time) if pos else \
        BinlogPoint(time=point_time)
    if not checkpoints.get("to_lsn"):
        raise SourceError("mariadb-backup wrote no xtrabackup_checkpoints", "no backup was written")
    lsn = {"from": int(checkpoints.get("from_lsn", 0) or 0), "to": int(checkpoints["to_lsn"]),
           "last": int(checkpoints.get("last_lsn", 0) or 0)}
    raw = sum(o.raw_size for o in objects)
    chain_ids = [*parent.details.get("chain", [parent.id]), backup_id] if parent else [backup_id]
    parent_chain_raw = parent.details.get("chain_raw_bytes", chain_raw_bytes([parent])) if parent else 0
    blocked = watch.blocked_ms()
    version = info.get("tool_version") or tool_version(binary)
    details = {
        "engine": "mariadb-backup", "max_rate": opts.max_rate,
        "tool": Path(binary).name,
        "tool_version": version,
        "server_version": info.get("server_version", ""),
        "format": "mbstream",
        "compressor": "zstd child per part" if native else "python-zstandard",
        "incremental": parent is not None,
        "parent": parent.id if parent else None,
        "chain": chain_ids,
        "chain_raw_bytes": parent_chain_raw + raw,
        "lsn": lsn,
        "backup_type": checkpoints.get("backup_type", ""),
        "consistency": {"method": "BACKUP STAGE BLOCK_COMMIT (mariadb-backup)",
                        "blocked_ms": round(blocked, 3) if blocked is not None else None},
        "checksums": ("not recorded: a hot physical copy has no moment to run CHECKSUM TABLE at "
                      "without blocking commits for the whole scan; verify --restore-test starts "
                      "a server on the prepared copy and checks every table there"),
        "datadir": str(datadir),
        "files_streamed": watch.files,
        "options": {"parallel": opts.workers(), "part_size_mb": opts.part_size_mb,
                    "compression_level": opts.compression_level},
    }
    stats = {"parts": len(objects), "raw_bytes": raw, "stored_bytes": sum(o.size for o in objects),
             "duration": round(finished - started, 3),
             "blocked_ms": round(blocked, 3) if blocked is not None else None}
    return BackupManifest(id=backup_id, kind=PHYSICAL, source=source, point=point,
                          started_at=started, finished_at=finished, objects=objects, stats=stats,
                          details=details, tool_version=_backupkit_version())


def _backupkit_version() -> str:
    return __version__
