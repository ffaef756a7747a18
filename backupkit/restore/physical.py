"""Restore a physical backup (a mariadb-backup chain) into a datadir, then start the server on it.

The steps, in an order that never loses what is there:
1. the chain (full backup first, then each incremental) is read and every object checked present;
   a missing link or object is an error (exit 5 for a broken chain) before anything is touched;
2. each link's stored parts are streamed (checksums verified) into ``mbstream -x`` in a staging
   folder beside the datadir (``<datadir>.partial-<UTC time>``, so the final move is a rename);
3. ``mariadb-backup --prepare`` makes the full backup consistent, then applies each incremental in
   order with ``--incremental-dir``;
4. only then is an existing datadir moved aside (``--force``; renamed to
   ``<datadir>.before-<UTC time>``, never deleted) and the prepared folder renamed into place,
   owned like the datadir it replaces;
5. ``--start-command`` starts the server; the manifest's point is where binlog replay continues.

A failure or Ctrl-C in steps 1-3 removes the staging folder and leaves the datadir untouched.
``prepare_chain`` (steps 1-3 into any folder) is what ``verify --restore-test`` uses as well.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from backupkit.errors import BackupkitError, IntegrityError, ObjectNotFound, StorageError, UsageError
from backupkit.mysql.connection import ConnSpec, connect, qualified
from backupkit.mysql.control import start_restored_server
from backupkit.mysql.mariabackup import find_mbstream, find_tool
from backupkit.mysql.process import kill_group
from backupkit.repo.catalog import BackupManifest, Catalog
from backupkit.repo.chain import PHYSICAL, chain_of, chain_raw_bytes
from backupkit.repo.codec import READ_SIZE, StoredObject, VerifyingReader, iter_object
from backupkit.repo.failover import has_copies
from backupkit.restore.datadir import (
    chown_tree,
    move_aside,
    new_stamp,
    non_empty,
    owner_of,
    server_running,
    unique,
)
from backupkit.storage.base import ObjectStore
from backupkit.storage.local import LocalStore, fsync_dir
from backupkit.util.paths import expand_user
from backupkit.util.progress import NullProgress, Progress
from backupkit.util.units import utc_iso

#: Files mariadb-backup leaves in a backup that a server's datadir does not need.
BACKUP_ONLY = ("xtrabackup_checkpoints", "xtrabackup_info", "xtrabackup_binlog_info",
               "mariadb_backup_binlog_info", "xtrabackup_binlog_pos_innodb", "backup-my.cnf",
               "xtrabackup_tablespaces", "xtrabackup_slave_info", "xtrabackup_galera_info")
F_SETPIPE_SZ = 1031  # Linux fcntl
#: Extra room asked of the staging disk beyond the extracted bytes (prepare writes a redo log).
SPACE_MARGIN = 256 * 1024 * 1024


class ToolFailed(BackupkitError):
    """mbstream or mariadb-backup --prepare failed."""


@dataclass
class PhysicalRestoreResult:
    """What a physical restore did."""

    backup_id: str
    datadir: str
    chain: list[str]
    moved_aside: dict[str, str] = field(default_factory=dict)
    bytes: int = 0  # mbstream bytes extracted
    extract_seconds: float = 0.0
    prepare_seconds: float = 0.0
    seconds: float = 0.0
    started: bool = False
    start_seconds: float | None = None
    start_verified: bool = False
    owner: str | None = None
    point: dict = field(default_factory=dict)
    dry_run: bool = False
    record_id: str | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _tool(name: str) -> str:
    return find_mbstream() if name == "mbstream" else find_tool()


def load_chain(catalog: Catalog, manifest: BackupManifest) -> list[BackupManifest]:
    """The chain of a physical backup from the repository; a missing link is exit 5, named."""
    def get(bid: str) -> BackupManifest | None:
        try:
            return catalog.backup(bid)
        except UsageError:
            return None

    return chain_of(manifest, get)


def check_objects(store: ObjectStore, chain: list[BackupManifest]) -> None:
    """Every part of every link exists (before anything is changed); a missing one is named."""
    keys = [(b.id, o.key) for b in chain for o in b.objects]
    with ThreadPoolExecutor(max_workers=8) as pool:
        found = list(pool.map(lambda k: store.stat(k[1]), keys))
    for (bid, key), info in zip(keys, found, strict=True):
        if info is None:
            raise IntegrityError(f"object {key!r} of physical backup {bid} is missing from "
                                 f"{store.describe()}", "nothing was changed; restore another backup")


def _last_error(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no output)"
    for line in reversed(lines):
        if any(k in line for k in ("rror", "failed", "No space", "annot", "denied")):
            return line.strip()
    return lines[-1].strip() if lines else "(no output)"


def _no_space(folder: Path) -> bool:
    with contextlib.suppress(OSError):
        return shutil.disk_usage(folder).free < 1024 * 1024
    return False


def _stored_blocks(store: ObjectStore, obj: StoredObject) -> Iterator[bytes]:
    """An object's stored (compressed) bytes; size and sha256 are checked at the end."""
    reader = VerifyingReader(store.open(obj.key), obj.key, obj.sha256, obj.size)
    with reader:
        while block := reader.read(READ_SIZE):
            yield block


def _native_zstd(store: ObjectStore, link: BackupManifest) -> str | None:
    """The zstd binary, when every part can be fed to it as stored: one copy each, compressed.
    `zstd -dc | mbstream -x` is what mariadb-backup's users run, and it is faster than
    decoding in Python and writing to mbstream through a pipe."""
    if any(o.compression != "zstd" or has_copies(store, o.key) for o in link.objects):
        return None
    return shutil.which("zstd")


def _pipe(fds: list[int]) -> tuple[int, int]:
    """A pipe of 1 MiB; both ends noted in fds, so they are closed whatever happens."""
    r, w = os.pipe()
    fds += [r, w]
    with contextlib.suppress(OSError):
        fcntl.fcntl(w, F_SETPIPE_SZ, READ_SIZE)
    return r, w


def _close(fds: list[int], *which: int) -> None:
    for fd in list(which):
        if fd in fds:
            fds.remove(fd)
            with contextlib.suppress(OSError):
                os.close(fd)


def _write_all(fd: int, block: bytes) -> None:
    view = memoryview(block)
    while view:
        view = view[os.write(fd, view):]


#: Blocks (of READ_SIZE) read ahead of the extraction from a remote store.
READAHEAD = 16


def _remote(store: ObjectStore) -> bool:
    base: ObjectStore | None = store
    while base is not None and base.unwrap() is not None:
        base = base.unwrap()
    return not isinstance(base, LocalStore)


def _readahead(blocks: Iterator[bytes], depth: int = READAHEAD) -> Iterator[bytes]:
    """blocks, read by a thread up to depth blocks ahead of the consumer; its error is raised
    in order. A consumer that stops early stops the thread."""
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for block in blocks:
                if not put(block):
                    return
            put(end)
        except BaseException as exc:  # handed to the consumer
            put(exc)
        finally:
            if stop.is_set() and hasattr(blocks, "close"):
                with contextlib.suppress(Exception):
                    blocks.close()

    t = threading.Thread(target=run, name="restore-readahead", daemon=True)
    t.start()
    try:
        while (item := q.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def extract_link(store: ObjectStore, link: BackupManifest, dest: Path, mbstream: str,
                 on_bytes: Callable[[int], None] | None = None) -> int:
    """Stream one backup's parts (checksums verified) into ``mbstream -x -C dest``, through
    ``zstd -dc`` when it is installed; returns the mbstream bytes extracted."""
    dest.mkdir(mode=0o700)
    log = dest.with_name(dest.name + ".mbstream.log")
    zstd = _native_zstd(store, link)
    procs: list[subprocess.Popen] = []
    fds: list[int] = []
    with open(log, "wb") as err:
        try:
            # pipes of 1 MiB (not 64 KiB): fewer wake-ups of each stage per MiB moved
            feed_r, sink = _pipe(fds)
            if zstd:
                mid_r, mid_w = _pipe(fds)
                procs.append(subprocess.Popen([zstd, "-dc", "-q"], stdin=feed_r, stdout=mid_w,
                                              stderr=err, start_new_session=True))
                procs.append(subprocess.Popen([mbstream, "-x", "-C", str(dest)], stdin=mid_r,
                                              stdout=subprocess.DEVNULL, stderr=err,
                                              start_new_session=True))
                _close(fds, mid_r, mid_w)
            else:
                procs.append(subprocess.Popen([mbstream, "-x", "-C", str(dest)], stdin=feed_r,
                                              stdout=subprocess.DEVNULL, stderr=err,
                                              start_new_session=True))
            _close(fds, feed_r)  # the children hold their ends now
            ahead = _remote(store)
            for obj in link.objects:
                blocks = _stored_blocks(store, obj) if zstd else iter_object(store, obj)
                if ahead:  # the download goes on while the children take what was read
                    blocks = _readahead(blocks)
                scale = obj.raw_size / max(obj.size, 1) if zstd else 1.0
                try:
                    for block in blocks:
                        _write_all(sink, block)
                        if on_bytes is not None:
                            on_bytes(int(len(block) * scale))
                except BrokenPipeError:  # a child stopped: its status and log say why ...
                    for _ in blocks:  # ... unless the object is damaged: its checksum says so
                        pass
                    break
            _close(fds, sink)
            codes = [p.wait() for p in procs]
        except BaseException:
            for p in procs:
                kill_group(p)
            raise
        finally:
            _close(fds, *fds)
    if any(codes):
        rc = next(c for c in codes if c)
        if _no_space(dest):
            raise StorageError(f"the staging disk of {dest} is full (mbstream -x stopped): "
                               f"{_last_error(log)}", "free space there, or restore elsewhere; "
                               "nothing was changed")
        raise ToolFailed(f"extracting physical backup {link.id} failed (status {rc}): "
                         f"{_last_error(log)}", "nothing was changed")
    log.unlink(missing_ok=True)
    return sum(o.raw_size for o in link.objects)


def _prepare(binary: str, target: Path, incremental: Path | None, log: Path,
             use_memory_mb: int) -> None:
    cmd = [binary, "--prepare", f"--target-dir={target}", f"--use-memory={use_memory_mb}M"]
    if incremental is not None:
        cmd.append(f"--incremental-dir={incremental}")
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)
        try:
            rc = proc.wait()
        except BaseException:  # Ctrl-C: the staging folder goes, the datadir was never touched
            kill_group(proc)
            raise
    if rc != 0:
        what = f"applying incremental {incremental.name}" if incremental else "preparing the full backup"
        if _no_space(target):
            raise StorageError(f"the staging disk of {target} is full while {what}",
                               "free space there; nothing was changed")
        raise ToolFailed(f"mariadb-backup --prepare failed while {what} (status {rc}): "
                         f"{_last_error(log)}", "nothing was changed")


def prepare_chain(store: ObjectStore, chain: list[BackupManifest], staging: Path, *,
                  use_memory_mb: int = 256, say: Callable[[str], None] | None = None,
                  on_bytes: Callable[[int], None] | None = None) -> tuple[Path, dict]:
    """Extract every link into staging and prepare: returns (the prepared folder, timings).

    staging must exist and be empty; the caller removes it on failure."""
    say = say or (lambda msg: None)
    mbstream, binary = _tool("mbstream"), _tool("mariadb-backup")
    need = chain_raw_bytes(chain) + SPACE_MARGIN
    free = shutil.disk_usage(staging).free
    if free < need:
        raise StorageError(f"the staging disk of {staging} has {free / 2**30:.1f} GiB free; the "
                           f"restore needs about {need / 2**30:.1f} GiB",
                           "free space there, or restore to a datadir on another disk; nothing was "
                           "changed")
    timings = {"extract_seconds": 0.0, "prepare_seconds": 0.0, "bytes": 0}
    base = staging / "data"
    log = staging / "prepare.log"
    for i, link in enumerate(chain):
        dest = base if i == 0 else staging / f"incremental-{i:03d}"
        say(f"extracting {'incremental' if i else 'full'} backup {link.id}")
        t0 = time.monotonic()
        timings["bytes"] += extract_link(store, link, dest, mbstream, on_bytes)
        timings["extract_seconds"] += time.monotonic() - t0
        t0 = time.monotonic()
        if i == 0:
            say("preparing the full backup (mariadb-backup --prepare)")
            _prepare(binary, base, None, log, use_memory_mb)
        else:
            say(f"applying incremental {link.id}")
            _prepare(binary, base, dest, log, use_memory_mb)
            shutil.rmtree(dest, ignore_errors=True)
        timings["prepare_seconds"] += time.monotonic() - t0
    for name in BACKUP_ONLY:
        (base / name).unlink(missing_ok=True)
    log.unlink(missing_ok=True)
    return base, timings


def server_checksums(spec: ConnSpec) -> dict[str, int | None]:
    """CHECKSUM TABLE of every user base table of a started server: reads every row once."""
    conn = connect(spec)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT table_schema, table_name FROM information_schema.tables "
                        "WHERE table_type = 'BASE TABLE' AND table_schema NOT IN "
                        "('mysql', 'information_schema', 'performance_schema', 'sys') ORDER BY 1, 2")
            names = list(cur.fetchall())
            out: dict[str, int | None] = {}
            for db, table in names:
                cur.execute(f"CHECKSUM TABLE {qualified(db, table)}")
                out[f"{db}.{table}"] = cur.fetchone()[1]
            return out
    finally:
        conn.close()


def restore_physical(store: ObjectStore, manifest: BackupManifest, datadir: str | Path | None, *,
                     catalog: Catalog, force: bool = False, start_command: str | None = None,
                     conn: ConnSpec | None = None, pid_file: str | Path | None = None,
                     start_timeout: float = 300.0, dry_run: bool = False,
                     use_memory_mb: int = 256, record: bool = True,
                     progress: Progress | None = None,
                     notify: Callable[[str], None] | None = None,
                     error_log: str | Path | None = None) -> PhysicalRestoreResult:
    """Extract and prepare a physical backup's chain, move it into datadir, start the server."""
    say = notify or (lambda msg: None)
    if manifest.kind != PHYSICAL:
        raise UsageError(f"backup {manifest.id} is a {manifest.kind} backup, not a physical one")
    if not datadir:
        raise UsageError("a physical restore needs --datadir DIR")
    target = expand_user(datadir).absolute()
    chain = load_chain(catalog, manifest)
    result = PhysicalRestoreResult(manifest.id, str(target), [b.id for b in chain],
                                   point={"file": manifest.point.file, "pos": manifest.point.pos,
                                          "gtid": manifest.point.gtid, "time": manifest.point.time},
                                   dry_run=dry_run)
    why = server_running(target, Path(pid_file) if pid_file else None, conn)
    if why:
        raise UsageError(f"a server is running: {why}", "stop it before restoring a datadir")
    busy = non_empty(target)
    if busy and not force:
        raise UsageError(f"{target} is not empty; nothing was changed",
                         "use --force to move it aside (it is renamed, never deleted)")
    check_objects(store, chain)
    total = chain_raw_bytes(chain)
    if dry_run:
        if busy:
            result.moved_aside = {str(target): str(target.with_name(f"{target.name}.before-{new_stamp()}"))}
        result.bytes = total
        return result
    _tool("mbstream")
    _tool("mariadb-backup")
    started_at = time.time()
    t_all = time.monotonic()
    stamp = new_stamp()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = unique(target.with_name(f"{target.name}.partial-{stamp}"))
    staging.mkdir(mode=0o700)
    bar = progress or NullProgress()
    task = bar.start("extract + prepare", total=total or None)

    def count(n: int) -> None:
        bar.advance(task, n)

    try:
        prepared, timings = prepare_chain(store, chain, staging, use_memory_mb=use_memory_mb,
                                          say=say, on_bytes=count)
        owner = owner_of(target, target.parent) if os.geteuid() == 0 else None
        if busy:
            result.moved_aside[str(target)] = str(move_aside(target, stamp, say))
        if target.is_dir():  # exists and is empty (a mount point, say): move the contents in
            for entry in os.listdir(prepared):
                os.rename(prepared / entry, target / entry)
        else:
            os.rename(prepared, target)
        fsync_dir(target.parent)
        if owner is not None and owner != (0, 0):
            chown_tree(target, *owner)
            result.owner = f"{owner[0]}:{owner[1]}"
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    bar.finish(task)
    result.bytes = int(timings["bytes"])
    result.extract_seconds = round(timings["extract_seconds"], 3)
    result.prepare_seconds = round(timings["prepare_seconds"], 3)
    result.seconds = round(time.monotonic() - t_all, 3)
    if start_command:
        say("starting the server")
        seconds, result.start_verified = start_restored_server(
            start_command, conn, pid_file=pid_file, start_timeout=start_timeout, error_log=error_log)
        result.start_seconds = round(seconds, 3)
        result.started = True
    finished = time.time()
    if record:
        rec = {"kind": PHYSICAL, "backup_id": manifest.id, "chain": result.chain,
               "target": str(target), "started_at": started_at, "finished_at": finished,
               "started_at_utc": utc_iso(started_at), "finished_at_utc": utc_iso(finished),
               "duration": round(finished - started_at, 3), "raw_bytes": result.bytes,
               "extract_seconds": result.extract_seconds, "prepare_seconds": result.prepare_seconds,
               "started_server": result.started, "moved_aside": result.moved_aside}
        try:
            result.record_id = catalog.commit_restore_record(rec)
        except (StorageError, ObjectNotFound):  # the restore itself succeeded
            pass
    return result
