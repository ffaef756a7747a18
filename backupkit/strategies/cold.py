"""Cold backup: stop the service, copy its files, start it again -- with the least downtime.

The restart is guaranteed on every path out: a try/finally around the downtime, SIGINT,
SIGTERM and SIGHUP handlers installed for its duration (a second signal cannot interrupt the
restart), and a guardian process that restarts the server if this process is killed outright.

Downtime is measured from the moment the stop is requested to the moment the server accepts
a connection again, and stored in the manifest with each phase. Everything that can fail before
the stop is checked before the stop: the store is writable, the start command is set, the
staging folder has room, the pid file is readable.

By default (staging "auto") the files are copied while the server is down into a hidden folder
beside the datadir (same filesystem: an in-kernel copy, a reflink on XFS or btrfs), the server is
started, and the copy is archived and uploaded while it serves. When that folder is unsafe (no
room above a reserve, not writable, another filesystem), the archive is streamed to the store
while the server is down instead, and the manifest says why.

The manifest's point is exact: after a clean shutdown the last binlog file ends with a Stop
event, and the position where that event begins is the end of the last committed transaction;
the GTID position comes from the ``<binlog>.state`` file the server writes at shutdown, and is
checked after the restart against ``BINLOG_GTID_POS(file, pos)``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import queue
import shutil
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from backupkit import __version__
from backupkit.archive import (
    CopyCancelled,
    FileRecord,
    Root,
    Skipped,
    TarWriter,
    WriteStats,
    data_segments,
    link_stays_inside,
    scan_size,
)
from backupkit.errors import BackupkitError, ServerControlError, UsageError
from backupkit.mysql import binlog_events as be
from backupkit.mysql.connection import ConnSpec, connect
from backupkit.mysql.control import (
    RestartGuardian,
    ServerProbe,
    ServiceControl,
    ShutdownCheck,
    pid_alive,
    process_start,
)
from backupkit.mysql.server import current_point, identity, server_facts
from backupkit.repo import layout
from backupkit.repo.catalog import BackupManifest, BinlogPoint, Catalog, new_backup_id, utc_iso
from backupkit.repo.codec import StoredObject, put_object
from backupkit.storage.base import ObjectStore
from backupkit.util.workers import put_unless_stopped

log = logging.getLogger(__name__)

DATA_ROOT = "data"
BINLOG_ROOT = "binlog"


class Interrupted(BackupkitError):
    """A signal (Ctrl-C, SIGTERM, SIGHUP) stopped the command."""

    exit_code = 130


class SignalInterrupt(BaseException):  # noqa: N818 - like KeyboardInterrupt
    """Raised by the signal handlers; a BaseException so that no ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class ColdBackupFailed(BackupkitError):
    """A cold backup failed; the message says what happened to the server."""

    def __init__(self, message: str, hint: str | None, exit_code: int) -> None:
        super().__init__(message, hint)
        self.exit_code = exit_code


@dataclass
class ColdOptions:
    """What a cold backup needs beyond the connection; None means: from the server or default."""

    datadir: str | None = None
    stop_command: str | None = None
    start_command: str | None = None
    pid_file: str | None = None
    staging: str = "auto"  # "auto": beside the datadir when safe; "none": stream while down; or a folder
    paths: list[str] = field(default_factory=list)
    config_file: str | None = None
    stop_timeout: float = 300.0
    start_timeout: float = 300.0
    compression_level: int = 1
    compression_threads: int = -1  # -1: one per core
    preflush_timeout: float = 30.0
    guardian: bool = True
    source_id: str | None = None


@dataclass
class Phase:
    """Progress reports: phase name, bytes done, bytes expected (0 when unknown)."""

    name: str
    done: int = 0
    total: int = 0


ProgressFn = Callable[[Phase], None]


# -- signals -------------------------------------------------------------------------
class SignalGuard:
    """SIGINT/SIGTERM/SIGHUP raise SignalInterrupt, except while deferred (during the restart)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.old: dict[int, object] = {}
        self.deferring = False
        self.pending: int | None = None
        self.active = False

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self.old[s] = signal.signal(s, self._handler)
            self.active = True
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self.old.items():
            signal.signal(s, h)  # type: ignore[arg-type]
        self.old.clear()

    def _handler(self, signum: int, frame) -> None:
        self.pending = signum
        if not self.deferring:
            raise SignalInterrupt(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False

    def raise_pending(self) -> None:
        if self.pending is not None:
            raise SignalInterrupt(self.pending)


# -- the point at shutdown --------------------------------------------------------------
def _last_binlog(probe: ServerProbe) -> tuple[list[str], Path] | None:
    if not probe.log_bin or probe.log_bin_index is None:
        return None
    lines = [ln.strip() for ln in probe.log_bin_index.read_text().splitlines() if ln.strip()]
    if not lines:
        return None
    base = probe.log_bin_index.parent

    def resolve(name: str) -> Path:
        return Path(name) if os.path.isabs(name) else (base / name)

    return lines, resolve(lines[-1])


def gtid_pos_from_state(text: str) -> str:
    """The GTID position (last GTID of each domain) from a binlog .state file's lines."""
    last: dict[int, str] = {}
    for line in text.split():
        parts = line.strip().split("-")
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            last[int(parts[0])] = line.strip()
    return ",".join(last[d] for d in sorted(last))


def normalize_gtid(pos: str) -> str:
    """A GTID position with its domains in order, for comparisons."""
    items = [g.strip() for g in (pos or "").split(",") if g.strip()]
    return ",".join(sorted(items, key=lambda g: int(g.split("-")[0]) if g.split("-")[0].isdigit() else 0))


def scan_gtid_pos(path: Path, upto: int) -> str:
    """The GTID position at offset upto of a MariaDB binlog file, by reading its events."""
    state: dict[int, str] = {}
    with open(path, "rb") as fh:
        reader = be.iter_events(fh)
        for hdr, raw in reader:
            if hdr.log_pos and hdr.log_pos > upto:
                break
            csum = reader.fde.checksum_len if reader.fde else 0
            if hdr.type == be.GTID_LIST_EVENT:
                for d, s, n in be.parse_gtid_list(be.body(raw, csum)):
                    state[d] = f"{d}-{s}-{n}"
            elif hdr.type == be.MARIA_GTID_EVENT:
                g = be.parse_maria_gtid(hdr, be.body(raw, csum))
                state[g.domain_id] = g.gtid
    return ",".join(state[d] for d in sorted(state))


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
    found = _last_binlog(probe)
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
        end.gtid = gtid_pos_from_state(state.read_text())
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


# -- copying -------------------------------------------------------------------------
_END = object()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class ArchiveUpload:
    """Tar roots into one zstd object, in two threads joined by a bounded queue.

    The reader thread walks, reads and hashes the files; the upload thread compresses and
    stores. ``wait_read()`` returns once every file has been read: from then on the source files
    are no longer needed (a cold backup restarts the server there) while the tail of the
    archive is compressed, stored and made durable. ``wait_done()`` gives the stored object."""

    def __init__(self, store: ObjectStore, key: str, roots: list[Root], *, level: int, threads: int,
                 on_bytes: Callable[[int], None] | None = None, depth: int = 16) -> None:
        self.store, self.key, self.level, self.threads = store, key, level, threads
        self.cancelled = threading.Event()
        self.read_done = threading.Event()
        self.finished = threading.Event()
        self.writer = TarWriter(roots, cancel=self.cancelled, on_bytes=on_bytes)
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.result: StoredObject | None = None
        self._threads: list[threading.Thread] = []

    # -- threads
    def _put(self, item) -> bool:
        return put_unless_stopped(self.queue, item, self.cancelled)

    def _produce(self) -> None:
        try:
            for chunk in self.writer:
                if self.writer.files_read:
                    self.read_done.set()
                if not self._put(chunk):
                    return
            self.read_done.set()
            self._put(_END)
        except CopyCancelled:
            return
        except BaseException as exc:  # handed to the upload thread, which raises it
            self._put(_Failed(exc))

    def _consume(self) -> Iterator[bytes]:
        while True:
            if self.cancelled.is_set():
                raise CopyCancelled()
            try:
                item = self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item

    def _upload(self) -> None:
        try:
            self.result = put_object(self.store, self.key, self._consume(), level=self.level,
                                     threads=self.threads)
        except BaseException as exc:  # noqa: BLE001 - reported by wait_*()
            self.error = exc
            self.cancelled.set()
        finally:
            self.finished.set()

    # -- control
    def start(self) -> ArchiveUpload:
        self._threads = [threading.Thread(target=self._produce, name="cold-read", daemon=True),
                         threading.Thread(target=self._upload, name="cold-upload", daemon=True)]
        for t in self._threads:
            t.start()
        return self

    def _raise(self) -> None:
        if self.error is not None and not isinstance(self.error, CopyCancelled):
            raise self.error

    def wait_read(self) -> WriteStats:
        """Block (interruptibly) until every file is read; raise what failed meanwhile."""
        while not self.read_done.wait(0.05):
            if self.finished.is_set():
                self._raise()
                raise BackupkitError("the archive ended before every file was read")
        return self.writer.stats

    def wait_done(self) -> tuple[StoredObject, WriteStats]:
        while not self.finished.wait(0.05):
            pass
        self._raise()
        if self.result is None:
            raise BackupkitError("the archive upload was cancelled")
        return self.result, self.writer.stats

    def cancel(self) -> None:
        """Stop both threads; a partial object is never visible (the store aborts it)."""
        self.cancelled.set()

    def join(self, timeout: float = 60) -> None:
        for t in self._threads:
            if t.ident is not None:  # started
                t.join(timeout)


def stream_roots(store: ObjectStore, key: str, roots: list[Root], *, level: int, threads: int,
                 on_bytes: Callable[[int], None] | None = None) -> tuple[StoredObject, WriteStats]:
    """Tar roots into one zstd object and wait until it is stored."""
    up = ArchiveUpload(store, key, roots, level=level, threads=threads, on_bytes=on_bytes).start()
    try:
        return up.wait_done()
    except BaseException:
        up.cancel()
        raise
    finally:
        up.join()


def copy_roots(roots: list[Root], dest: Path, on_bytes: Callable[[int], None] | None = None
               ) -> tuple[list[Root], list[Skipped]]:
    """A faithful local copy of roots under dest (modes, owners, times, symlinks, holes);
    returns the same roots pointing at the copies, and what was left out (as TarWriter does)."""
    out, skipped = [], []
    for root in roots:
        target = dest / root.name
        _copy_tree(root, target, on_bytes, skipped)
        out.append(Root(root.name, target, root.files))
    return out, skipped


def _copy_meta(src_st: os.stat_result, dst: Path, link: bool = False) -> None:
    if os.geteuid() == 0:
        os.lchown(dst, src_st.st_uid, src_st.st_gid)
    if not link:
        os.chmod(dst, stat.S_IMODE(src_st.st_mode))
    with contextlib.suppress(NotImplementedError, OSError):
        os.utime(dst, ns=(src_st.st_atime_ns, src_st.st_mtime_ns), follow_symlinks=not link)


def _copy_file(src: Path, dst: Path, on_bytes: Callable[[int], None] | None) -> None:
    sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        size = os.fstat(sfd).st_size
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            for off, length in data_segments(sfd, size) if size else []:
                pos, left = off, length
                while left:
                    try:
                        n = os.copy_file_range(sfd, dfd, min(left, 1 << 30), pos, pos)
                    except OSError:
                        block = os.pread(sfd, min(left, 8 << 20), pos)
                        n = os.pwrite(dfd, block, pos) if block else 0
                    if n <= 0:
                        raise BackupkitError(f"{src} shrank during the copy")
                    pos += n
                    left -= n
                    if on_bytes is not None:
                        on_bytes(n)
            os.ftruncate(dfd, size)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def _copy_tree(root: Root, target: Path, on_bytes: Callable[[int], None] | None,
               skipped: list[Skipped]) -> None:
    st = os.stat(root.path)
    target.mkdir(parents=True, exist_ok=False)
    dirs: list[tuple[os.stat_result, Path]] = [(st, target)]
    if root.files is not None:
        entries: Iterator[tuple[str, Path]] = ((f, root.path / f) for f in sorted(root.files))
    else:
        entries = ((os.path.relpath(os.path.join(d, n), root.path), Path(d) / n)
                   for d, dn, fn in os.walk(root.path) for n in sorted(fn + dn))
    for rel, src in entries:
        dst = target / rel
        sst = os.lstat(src)
        if stat.S_ISDIR(sst.st_mode):
            dst.mkdir()
            dirs.append((sst, dst))
        elif stat.S_ISLNK(sst.st_mode):
            link = os.readlink(src)
            if link_stays_inside(rel, link):
                os.symlink(link, dst)
                _copy_meta(sst, dst, link=True)
            else:
                skipped.append(Skipped(f"{root.name}/{rel}", "symlink leads outside its folder", link))
        elif stat.S_ISREG(sst.st_mode):
            dst.parent.mkdir(parents=True, exist_ok=True)
            _copy_file(src, dst, on_bytes)
            _copy_meta(sst, dst)
        else:
            kind = ("socket" if stat.S_ISSOCK(sst.st_mode) else "fifo" if stat.S_ISFIFO(sst.st_mode)
                    else "device")
            skipped.append(Skipped(f"{root.name}/{rel}", kind))
    for sst, d in reversed(dirs):
        _copy_meta(sst, d)


# -- the backup ----------------------------------------------------------------------
def _inside(path: Path, folder: Path) -> bool:
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(folder))
        return True
    except ValueError:
        return False


# -- staging ---------------------------------------------------------------------------
#: The automatic staging location: a hidden folder beside the datadir (on its filesystem).
AUTO_STAGING = ".backupkit-staging"
#: The file in each ``<backup id>.staging`` folder that names the process that owns it.
STAGING_OWNER = "backupkit-owner.json"
GiB = 1 << 30


def disk_space(path: Path) -> tuple[int, int]:
    """(bytes free for this user, size) of the filesystem that holds path."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def staging_reserve(fs_size: int) -> int:
    """What must stay free on the database's filesystem after an automatic staging copy: the
    server keeps writing (redo, binlog, temp tables) while the copy is uploaded."""
    return max(GiB, fs_size // 10)


def _gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


def auto_staging_location(datadir: Path) -> Path:
    """Where automatic staging copies go: ``<parent of the real datadir>/.backupkit-staging``."""
    return Path(os.path.realpath(datadir)).parent / AUTO_STAGING


def _own_folder(path: Path) -> bool:
    """A real folder (not a symlink) owned by this user."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()


def auto_staging_folder(datadir: Path, roots: list[Root], est_bytes: int) -> tuple[Path | None, str]:
    """The automatic staging location when it is safe to copy est_bytes there, else None and why.

    Safe means: on the datadir's filesystem (not across a mount point), not inside anything
    that is copied, writable, and after the copy at least staging_reserve() stays free."""
    real = Path(os.path.realpath(datadir))
    folder = auto_staging_location(datadir)
    parent = folder.parent
    if parent == real:
        return None, f"the datadir {real} has no parent folder"
    try:
        if os.stat(parent).st_dev != os.stat(real).st_dev:
            return None, (f"the datadir {real} is a mount point: the folder beside it is on "
                          "another filesystem")
    except OSError as exc:
        return None, f"cannot inspect {parent}: {exc.strerror}"
    for root in roots:
        if root.files is None and _inside(folder, root.path):
            return None, f"{folder} would be inside {root.path}, which is copied"
    if os.path.lexists(folder):
        if not _own_folder(folder):
            return None, f"{folder} exists and is not a folder owned by this user"
        if not os.access(folder, os.W_OK | os.X_OK):
            return None, f"{folder} is not writable"
    elif not os.access(parent, os.W_OK | os.X_OK):
        return None, f"{parent} is not writable"
    free, size = disk_space(parent)
    need, reserve = int(est_bytes * 1.05), staging_reserve(size)
    if free - need < reserve:
        return None, (f"not enough room beside the datadir: {parent} has {_gib(free)} free, the "
                      f"copy needs about {_gib(need)} and {_gib(reserve)} must stay free")
    return folder, ""


def make_staging_folder(base: Path, backup_id: str) -> Path:
    """Create ``base/<backup id>.staging`` (0700) with an owner file naming this process."""
    folder = base / f"{backup_id}.staging"
    folder.mkdir(mode=0o700)
    os.chmod(folder, 0o700)
    owner = {"pid": os.getpid(), "start": process_start(os.getpid()), "host": socket.gethostname(),
             "backup_id": backup_id, "created": utc_iso(time.time())}
    (folder / STAGING_OWNER).write_text(json.dumps(owner) + "\n")
    return folder


def keep_staging_folder(folder: Path, why: str) -> None:
    """Mark a staged copy as kept on purpose: leftover cleanup never removes it."""
    with contextlib.suppress(OSError):
        owner = json.loads((folder / STAGING_OWNER).read_text())
        owner["kept"] = why
        (folder / STAGING_OWNER).write_text(json.dumps(owner) + "\n")


def _owner_gone(owner: dict) -> bool:
    """True when the process that made a staging folder is certainly gone (on this host)."""
    pid = owner.get("pid")
    if owner.get("kept") or not isinstance(pid, int) or owner.get("host") != socket.gethostname():
        return False
    if not pid_alive(pid):
        return True
    start = owner.get("start")
    now = process_start(pid)
    return start is not None and now is not None and now != start  # the pid was reused


def remove_leftover_staging(base: Path) -> list[str]:
    """Remove the ``*.staging`` folders in base whose owner process is gone: temp copies of a
    backupkit that was killed. Folders without a readable owner file, kept ones (the server did
    not start) and anything else in base are left alone. Returns what was removed."""
    if not _own_folder(base):
        return []
    removed = []
    for entry in sorted(base.glob("*.staging")):
        if not _own_folder(entry):
            continue
        try:
            owner = json.loads((entry / STAGING_OWNER).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(owner, dict) or not _owner_gone(owner):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if not os.path.lexists(entry):
            log.warning("removed leftover staging copy %s (its backupkit process %s is gone)",
                        entry, owner.get("pid"))
            removed.append(str(entry))
    return removed


def plan_roots(probe: ServerProbe, datadir: Path, paths: list[str],
               binlog_files: list[str] | None = None) -> list[Root]:
    """The datadir, plus binlog and InnoDB files that live outside it, plus --paths."""
    roots = [Root(DATA_ROOT, datadir)]
    if probe.log_bin and probe.log_bin_index is not None and not _inside(probe.log_bin_index, datadir):
        base = probe.log_bin_index.parent
        names = [probe.log_bin_index.name]
        if binlog_files is None:
            found = _last_binlog(probe)
            binlog_files = found[0] if found else []
        for n in binlog_files:
            p = Path(n) if os.path.isabs(n) else base / n
            if p.parent.resolve() != base.resolve():
                raise UsageError(f"binlog file {p} is not beside its index {probe.log_bin_index}",
                                 "add its folder with --paths")
            names.append(p.name)
        state = probe.log_bin_basename.name + ".state" if probe.log_bin_basename else None
        if state and (base / state).exists():
            names.append(state)
        roots.append(Root(BINLOG_ROOT, base, names))
    patterns = {"innodb_data_home_dir": ("ibdata",), "innodb_log_group_home_dir": ("ib_logfile",),
                "innodb_undo_directory": ("undo",)}
    for var, folder in probe.innodb_dirs.items():
        if folder.is_dir() and not _inside(folder, datadir):
            files = sorted(n for n in os.listdir(folder) if n.startswith(patterns[var]))
            roots.append(Root(var.removesuffix("_dir").removesuffix("_directory"), folder, files))
    for i, p in enumerate(paths, 1):
        path = Path(p).expanduser().absolute()
        if not path.exists():
            raise UsageError(f"--paths: {path} does not exist")
        if _inside(path, datadir):
            continue  # already in the datadir
        if path.is_dir():
            roots.append(Root(f"path{i}", path))
        else:
            roots.append(Root(f"path{i}", path.parent, [path.name]))
    return roots


#: Dirty pages the shutdown flushes quickly enough (32 MiB of 16 KiB pages): no pre-flush below.
PREFLUSH_ENOUGH = 2048


def _preflush(spec: ConnSpec, timeout: float) -> tuple[dict, Callable[[], None]]:
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


def _check_store(store: ObjectStore, catalog: Catalog) -> None:
    store.check()
    catalog.ensure_repo()  # writes the repository config on first use: proves we can write


def take_cold_backup(store: ObjectStore, spec: ConnSpec, opts: ColdOptions, *,
                     catalog: Catalog | None = None, progress: ProgressFn | None = None,
                     notify: Callable[[str], None] | None = None) -> BackupManifest:
    """Stop the server, copy its files to the store (or to staging), start it, commit a manifest.

    The server is started again on every path out. On failure the raised error says what
    failed and what happened to the server; no manifest is written, so no backup exists."""
    job = ColdJob(store, spec, opts, catalog or Catalog(store), progress, notify)
    try:
        job.preflight()
        with SignalGuard() as guard:
            job.guard = guard
            job.downtime()  # stop, check, copy; the server is started again whatever happens
            try:
                job.after_restart()
            except SignalInterrupt as exc:
                job.abandon()
                raise Interrupted(f"interrupted by {exc.name} while the archive was being stored; "
                                  "the server is running; no backup was written") from None
        return job.commit()
    finally:
        job.remove_staged()  # gone after the upload or a failure; kept only when the start failed


class ColdJob:
    """One cold backup, phase by phase (see take_cold_backup)."""

    def __init__(self, store: ObjectStore, spec: ConnSpec, opts: ColdOptions, catalog: Catalog,
                 progress: ProgressFn | None, notify: Callable[[str], None] | None) -> None:
        self.store, self.spec, self.opts, self.catalog = store, spec, opts, catalog
        self.report = progress or (lambda p: None)
        self.say = notify or (lambda msg: None)
        self.guard = SignalGuard()
        self.t: dict[str, float | None] = {"stop_requested": None, "stopped": None,
                                           "start_requested": None, "accepting": None}
        self.mono: dict[str, float] = {}
        self.failure: BaseException | None = None
        self.start_failure: BackupkitError | None = None
        self.check: ShutdownCheck | None = None
        self.end: BinlogEnd | None = None
        self.archive: StoredObject | None = None
        self.stats: WriteStats | None = None
        self.upload: ArchiveUpload | None = None
        self.staging_mode = "direct"  # auto | dir | direct
        self.staging_dir: Path | None = None  # <backup id>.staging, ours
        self.staging_kept = False
        self.staged_roots: list[Root] | None = None
        self.staging_skipped: list[Skipped] = []
        self.staging_info: dict = {}
        self.copied = 0

    # -- before the stop: everything that can fail is checked here --------------------
    def preflight(self) -> None:
        opts = self.opts
        if not opts.start_command:
            raise UsageError("a cold backup needs a start command to bring the server back",
                             "give --start-command or set [source] start_command in the policy")
        self.ctl = ServiceControl(self.spec, stop_command=opts.stop_command,
                                  start_command=opts.start_command, pid_file=opts.pid_file,
                                  stop_timeout=opts.stop_timeout, start_timeout=opts.start_timeout)
        self.probe = probe = self.ctl.probe()
        conn = connect(self.spec)
        try:
            facts = server_facts(conn)
            self.pre_point = current_point(conn, facts) if probe.log_bin else None
        finally:
            conn.close()
        self.source = identity(facts, opts.source_id)
        self.datadir = Path(opts.datadir).expanduser().absolute() if opts.datadir else probe.datadir
        if not self.datadir.is_dir() or not os.access(self.datadir, os.R_OK | os.X_OK):
            raise UsageError(f"datadir {self.datadir} is not a readable folder on this host",
                             "a cold backup runs on the database host, as a user that can read it")
        self.roots = plan_roots(probe, self.datadir, list(opts.paths))
        _, self.est_bytes = scan_size(self.roots)
        _check_store(self.store, self.catalog)
        self.backup_id = new_backup_id("cold")
        self.archive_key = layout.cold_archive(self.backup_id, 0)
        staging = (opts.staging or "auto").strip()
        if staging.lower() in ("auto", "none"):
            staging, base = staging.lower(), None
        else:
            base = self._check_staging(Path(staging).expanduser().absolute())
        self.config_data: bytes | None = None
        if opts.config_file:
            try:
                self.config_data = Path(opts.config_file).expanduser().read_bytes()
            except OSError as exc:
                raise UsageError(f"cannot read config file {opts.config_file}: {exc.strerror}") from None
        self.threads = opts.compression_threads if opts.compression_threads >= 0 else (os.cpu_count() or 1)
        # last: nothing after this can fail, so the staging folder made here cannot be left behind
        self._choose_staging(staging, base)

    def _choose_staging(self, staging: str, base: Path | None) -> None:
        """auto: beside the datadir when safe, else direct (and why); none: direct; a folder: there."""
        removed = remove_leftover_staging(auto_staging_location(self.datadir))
        if base is not None:
            try:
                self.staging_dir = make_staging_folder(base, self.backup_id)
            except OSError as exc:
                raise UsageError(f"cannot create a folder in staging folder {base}: {exc.strerror}") from None
            self.staging_mode = "dir"
        elif staging == "auto":
            folder, why = auto_staging_folder(self.datadir, self.roots, self.est_bytes)
            if folder is not None:
                try:
                    folder.mkdir(mode=0o700, exist_ok=True)
                    os.chmod(folder, 0o700)
                    self.staging_dir = make_staging_folder(folder, self.backup_id)
                    self.staging_mode = "auto"
                except OSError as exc:
                    why = f"cannot create a staging folder in {folder}: {exc.strerror}"
            if self.staging_dir is None:
                self._go_direct(f"automatic staging is not safe here: {why}")
        else:
            self._go_direct("staging none was asked")
        self.staging_info["mode"] = self.staging_mode
        if self.staging_dir is not None:
            self.staging_info["path"] = str(self.staging_dir)
        if removed:
            self.staging_info["removed_leftovers"] = removed

    def _go_direct(self, reason: str) -> None:
        """Stream the archive while the server is down, and record why."""
        self.staging_mode, self.staging_dir = "direct", None
        self.staging_info.pop("path", None)
        self.staging_info.update(mode="direct", reason=reason)
        if not reason.startswith("staging none"):
            log.warning("cold backup without staging (the downtime includes compressing and "
                        "storing the archive): %s", reason)

    def _check_staging(self, base: Path) -> Path:
        """An explicit staging folder: strict, a UsageError before anything is stopped."""
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create staging folder {base}: {exc.strerror}") from None
        if not os.access(base, os.W_OK):
            raise UsageError(f"staging folder {base} is not writable")
        for root in self.roots:
            if root.files is None and _inside(base, root.path):
                raise UsageError(f"staging folder {base} is inside {root.path}, which is copied")
        free, _ = disk_space(base)
        if free < self.est_bytes * 1.05 + (64 << 20):
            raise UsageError(f"staging folder {base} has {free >> 20} MiB free; the datadir needs "
                             f"about {self.est_bytes >> 20} MiB")
        return base

    def _count(self, n: int) -> None:
        self.copied += n
        self.report(Phase("staging" if self.staging_dir else "copy", self.copied, self.est_bytes))

    # -- the downtime ------------------------------------------------------------------
    def downtime(self) -> None:
        """Stop, confirm, copy (or read everything into the archive), and always start again."""
        t, mono, ctl, probe = self.t, self.mono, self.ctl, self.probe
        self.preflush_info, undo_preflush = _preflush(self.spec, self.opts.preflush_timeout)
        old_fast = ctl.prepare_clean_shutdown()
        guardian = RestartGuardian(ctl) if self.opts.guardian else None
        self.started_at = time.time()
        stop_sent = False
        try:
            if guardian is not None:
                guardian.start()
                guardian.arm(probe.pid)
            self.guard.raise_pending()
            self.say("stopping the server")
            stop_sent = True
            t["stop_requested"], mono["stop_requested"] = time.time(), time.monotonic()
            ctl.request_stop()
            if not ctl.wait_exit(probe.pid, self.opts.stop_timeout):
                raise ServerControlError(f"the server (pid {probe.pid}) did not stop within "
                                         f"{self.opts.stop_timeout:.0f} s")
            t["stopped"], mono["stopped"] = time.time(), time.monotonic()
            self.check = check = ctl.check_shutdown(probe.pid)
            self.end = binlog_end(probe)
            if self.end is not None:
                check.binlog_closed = bool(self.end.closed)
            if not check.clean:
                raise ServerControlError("the server did not stop cleanly ("
                                         + "; ".join(check.problems()) + "), so nothing was copied")
            self.say("copying the datadir" + (" to staging" if self.staging_dir else ""))
            if self.staging_dir is not None:
                self._stage()
            if self.staging_dir is None:
                self.upload = ArchiveUpload(self.store, self.archive_key, self.roots,
                                            level=self.opts.compression_level, threads=self.threads,
                                            on_bytes=self._count)
                self.upload.start()  # (assigned first: a signal inside start() still cancels it)
                self.upload.wait_read()  # every file is read: the rest needs no downtime
                mono["read"] = time.monotonic()
        except BaseException as exc:  # noqa: BLE001 - every path out restarts the server
            self.failure = exc
            if self.upload is not None:
                self.upload.cancel()
        finally:
            with self.guard.deferred():
                if stop_sent:
                    self._restart()
                else:
                    ctl.undo_prepare(old_fast)
                    undo_preflush()
                if guardian is not None and self.start_failure is None:
                    guardian.done()
                elif guardian is not None:
                    guardian.close()  # it will try once more on its own

    def _stage(self) -> None:
        """Copy the roots into the staging folder. An automatic staging copy that runs out of
        room is removed at once (the database needs its disk) and the direct copy follows."""
        assert self.staging_dir is not None
        c0 = time.monotonic()
        try:
            self.staged_roots, self.staging_skipped = copy_roots(self.roots, self.staging_dir,
                                                                 self._count)
        except OSError as exc:
            if self.staging_mode != "auto" or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            copied, seconds = self.copied, round(time.monotonic() - c0, 3)
            self.remove_staged()
            self.staged_roots, self.staging_skipped, self.copied = None, [], 0
            self._go_direct(f"the staging copy beside the datadir ran out of room after "
                            f"{copied >> 20} MiB ({exc.strerror}); it was removed")
            self.staging_info["lost_seconds"] = seconds
            self.say("copying the datadir")
            return
        self.staging_info.update(copy_seconds=round(time.monotonic() - c0, 3), bytes=self.copied)

    def _restart(self) -> None:
        try:
            started = self.ctl.ensure_running(stop_sent=True, pid=self.probe.pid,
                                              on_start=lambda: self.say("starting the server"))
            if started is not None:
                self.t["start_requested"], self.t["accepting"] = started.requested_at, started.accepting_at
                self.mono["start_requested"] = started.requested_mono
                self.mono["accepting"] = started.accepting_mono
        except BackupkitError as exc:
            self.start_failure = exc
        except BaseException as exc:  # noqa: BLE001
            self.start_failure = ServerControlError(f"THE SERVER IS DOWN: restart failed: {exc}",
                                                    "START THE SERVER BY HAND")

    # -- after the restart ----------------------------------------------------------------
    def abandon(self) -> None:
        """Stop any upload still running and remove the staging copy (ours)."""
        if self.upload is not None:
            self.upload.cancel()
            self.upload.join()
        self.remove_staged()

    def remove_staged(self) -> None:
        """Remove our staging folder, unless it is kept because the server did not start."""
        if self.staging_dir is not None and not self.staging_kept:
            shutil.rmtree(self.staging_dir, ignore_errors=True)

    def after_restart(self) -> None:
        """Finish storing the archive (the tail of a direct copy, or the staged copy)."""
        if self.upload is not None and self.failure is None:
            try:
                self.archive, self.stats = self.upload.wait_done()
            except BaseException as exc:  # noqa: BLE001
                self.failure = exc
        if self.upload is not None:
            self.upload.cancel()  # a no-op when it is done
            self.upload.join()
        self.downtime_record = _downtime(self.t, self.mono)
        if "read" in self.mono and "stopped" in self.mono:
            self.downtime_record["read_seconds"] = round(self.mono["read"] - self.mono["stopped"], 4)
        if self.start_failure is not None:
            self._raise_start_failure()
        if self.failure is not None:
            self.abandon()
            went_down = self.t["stopped"] is not None or self.t["accepting"] is not None
            raise _explain(self.failure, self.downtime_record, went_down) from self.failure
        self.guard.raise_pending()
        if self.staging_dir is not None and self.staged_roots is not None:
            try:
                self._upload_staged()
            except Exception as exc:  # the server runs; say so in the one line
                raise _explain(exc, self.downtime_record, True) from exc
            finally:
                self.remove_staged()

    def _raise_start_failure(self) -> None:
        exc = self.start_failure
        assert exc is not None
        if self.staging_dir is not None and self.staged_roots is not None:
            self.staging_kept = True
            keep_staging_folder(self.staging_dir, "the server did not start after the copy")
            exc.message += f"; the datadir copy is kept in {self.staging_dir}"
        elif self.archive is not None and self.failure is None:
            point_check = {"checked": False, "reason": "the server did not start"}
            self.catalog.commit_backup(self._manifest([self.archive], point_check))
            exc.message += f"; backup {self.backup_id} was written"
        raise exc

    def _upload_staged(self) -> None:
        self.say("uploading the staged copy")
        u0 = time.monotonic()
        done = 0

        def count(n: int) -> None:
            nonlocal done
            done += n
            self.report(Phase("upload", done, self.staging_info.get("bytes", 0)))

        assert self.staged_roots is not None
        self.archive, self.stats = stream_roots(self.store, self.archive_key, self.staged_roots,
                                                level=self.opts.compression_level,
                                                threads=self.threads, on_bytes=count)
        self.staging_info["upload_seconds"] = round(time.monotonic() - u0, 3)
        self.stats.skipped[:0] = self.staging_skipped

    def commit(self) -> BackupManifest:
        """Check the point against the running server, then write the manifest: the commit."""
        if self.archive is None or self.stats is None:
            raise BackupkitError("internal error: the copy produced no archive")
        objects = [self.archive]
        if self.config_data is not None:
            objects.append(put_object(self.store, layout.cold_config(self.backup_id), self.config_data,
                                      level=self.opts.compression_level))
        end = self.end
        point_check = check_point_after_restart(self.spec, end, self.probe.flavor) if end \
            else {"checked": False, "reason": "binlog disabled"}
        if end is not None and not end.gtid and self.probe.flavor == "mariadb":
            if point_check.get("checked"):
                end.gtid = point_check["binlog_gtid_pos"]
                end.gtid_source = "BINLOG_GTID_POS after the restart"
            else:
                end.gtid = scan_gtid_pos(Path(end.path), end.pos)
                end.gtid_source = "binlog events"
            point_check["equal"] = True if point_check.get("checked") else None
        manifest = self._manifest(objects, point_check)
        self.catalog.commit_backup(manifest)
        if point_check.get("checked") and not point_check.get("equal"):
            log.warning("recorded GTID %s differs from BINLOG_GTID_POS %s", end.gtid if end else "",
                        point_check.get("binlog_gtid_pos"))
        return manifest

    def _manifest(self, objects: list[StoredObject], point_check: dict) -> BackupManifest:
        assert self.stats is not None
        return _manifest(self.backup_id, self.source, self.end, self.pre_point, self.probe, self.roots,
                         self.datadir, self.stats, objects, self.downtime_record, self.check, self.opts,
                         self.preflush_info, self.staging_info, self.started_at, point_check)


def _downtime(t: dict[str, float | None], mono: dict[str, float]) -> dict:
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


def _explain(exc: BaseException, downtime: dict, went_down: bool) -> BackupkitError:
    """One line: what failed, then what the server's state is now."""
    if isinstance(exc, KeyboardInterrupt):
        exc = Interrupted("interrupted by SIGINT")
    elif isinstance(exc, SignalInterrupt):
        exc = Interrupted(f"interrupted by {exc.name}")
    if isinstance(exc, BackupkitError):
        msg, hint, code = exc.message, exc.hint, exc.exit_code
    elif isinstance(exc, OSError):
        msg, hint, code = f"copy failed: {exc.strerror or exc}" + (
            f": {exc.filename}" if exc.filename else ""), None, 1
    else:
        msg, hint, code = f"cold backup failed: {type(exc).__name__}: {exc}", None, 1
    if isinstance(exc, Interrupted):
        msg = f"{msg} during the cold backup"
    if went_down and downtime.get("total_seconds") is not None:
        state = f"the server was restarted and accepts connections (down {downtime['total_seconds']:.1f} s)"
    elif went_down:
        state = "the server is running"
    else:
        state = "the server kept running"
    return ColdBackupFailed(f"{msg.rstrip('. ')}; {state}; no backup was written", hint, code)


def _manifest(backup_id: str, source, end: BinlogEnd | None, pre_point: BinlogPoint | None,
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


__all__ = ["ArchiveUpload", "ColdOptions", "Interrupted", "binlog_end", "copy_roots",
           "gtid_pos_from_state", "plan_roots", "stream_roots", "take_cold_backup"]
