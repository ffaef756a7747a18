"""Streamed tar of folders (a datadir) and its safe extraction.

Writing: ``TarWriter`` walks one or more roots without following symlinks and yields the bytes
of a POSIX (pax) tar stream, one bounded chunk at a time. Every regular file is read once and
hashed on the way (sha256 of its logical content); sparse files are written in the GNU sparse
1.0 format, so their holes are neither read nor stored. The per-file records end up in the
manifest, so a restore can check every file.

Reading: ``extract`` reads a tar stream (tarfile in stream mode) and writes only what the
manifest lists, into folders it owns: no absolute names, no ``..``, no link that leads out of
its root, no devices, fifos or hard links, no writing through a symlink. Modes, times and
(when run as root) owners are kept; holes of sparse files stay holes.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import hashlib
import io
import os
import posixpath
import pwd
import stat
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from backupkit.errors import BackupkitError, IntegrityError, UsageError

BLOCK = tarfile.BLOCKSIZE
READ_SIZE = 4 << 20
ZEROS = bytes(1 << 20)
#: Holes smaller than this are not worth the sparse format.
MIN_HOLES = 64 << 10
#: The ustar size field holds at most 8 GiB - 1; a sparse member's stored size must fit.
MAX_SPARSE_STORED = 0o77777777777


class UnsafeArchive(IntegrityError):
    """An archive member that would write outside its target, or a kind of file never restored."""


@dataclass
class Root:
    """A folder copied into the archive under the top-level name ``name``."""

    name: str
    path: Path
    #: Only these files (relative to path); None copies the whole tree.
    files: list[str] | None = None


@dataclass
class FileRecord:
    """One archive member as the manifest records it."""

    path: str  # archive name, "<root>/<relative path>" ("<root>" for the root folder itself)
    type: str  # file | dir | symlink
    mode: int = 0
    size: int = 0  # logical size of a file
    sha256: str = ""  # of the logical content of a file
    mtime: int = 0
    uid: int = 0
    gid: int = 0
    user: str = ""
    group: str = ""
    target: str = ""  # of a symlink
    sparse: bool = False
    data_bytes: int = 0  # bytes actually stored (less than size for a sparse file)

    def to_dict(self) -> dict:
        d = asdict(self)
        # Keep manifests short: drop empty defaults.
        for k in ("target", "sparse", "data_bytes", "sha256"):
            if not d[k]:
                d.pop(k)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FileRecord:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Skipped:
    """Something found in a root that the archive does not hold, and why."""

    path: str
    reason: str
    target: str = ""


@dataclass
class WriteStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    sparse_files: int = 0
    logical_bytes: int = 0
    data_bytes: int = 0
    records: list[FileRecord] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def _names(uid: int, gid: int) -> tuple[str, str]:
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = ""
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = ""
    return user, group


def data_segments(fd: int, size: int) -> list[tuple[int, int]]:
    """(offset, length) of the data regions of a file, from SEEK_DATA/SEEK_HOLE."""
    segs: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole remains
                break
            return [(0, size)]  # no SEEK_DATA support: all data
        if start >= size:
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        segs.append((start, end - start))
        pos = end
    return segs


def _safe_component_check(rel: str) -> None:
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in rel:
        raise UnsafeArchive(f"unsafe path {rel!r} in archive",
                            "an archive member must be a plain relative path")


def check_member_name(name: str, roots: Iterable[str]) -> tuple[str, str]:
    """Split an archive name into (root, relative path); refuse anything unsafe."""
    _safe_component_check(name)
    root, _, rel = name.partition("/")
    if root not in set(roots):
        raise UnsafeArchive(f"archive member {name!r} is outside the expected folders")
    return root, rel


def link_stays_inside(member_rel: str, target: str) -> bool:
    """True when a symlink at member_rel (relative to its root) pointing to target stays inside."""
    if not target or target.startswith("/") or "\0" in target:
        return False
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(member_rel), target))
    return joined != ".." and not joined.startswith("../") and not joined.startswith("/")


# -- writing -------------------------------------------------------------------------
class TarWriter:
    """Yields a pax tar stream of roots; collects a FileRecord per member in ``stats``."""

    def __init__(self, roots: list[Root], read_size: int = READ_SIZE,
                 cancel: threading.Event | None = None,
                 on_bytes: Callable[[int], None] | None = None) -> None:
        self.roots = roots
        self.read_size = read_size
        self.cancel = cancel
        self.on_bytes = on_bytes
        self.stats = WriteStats()
        self.files_read = False

    # -- walking
    def _entries(self, root: Root) -> Iterator[tuple[str, Path]]:
        """(relative path, absolute path) of every entry of a root, parents first, sorted."""
        base = root.path
        if root.files is not None:
            for rel in sorted(root.files):
                yield rel, base / rel
            return
        # Top-down and without following links: a symlinked folder is listed, never entered.
        for dirpath, dirnames, filenames in os.walk(base, followlinks=False, onerror=_raise):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, base)
            for name in sorted(filenames + dirnames):
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                yield rel, Path(dirpath) / name

    def __iter__(self) -> Iterator[bytes]:
        for root in self.roots:
            yield from self._root(root)
        self.files_read = True  # every source file has been read; only the trailer remains
        yield b"\0" * (BLOCK * 2)

    def _root(self, root: Root) -> Iterator[bytes]:
        try:
            st = os.stat(root.path)
        except OSError as exc:
            raise BackupkitError(f"cannot read {root.path}: {exc.strerror}") from exc
        if not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{root.path} is not a folder")
        yield self._dir(root.name, st)
        for rel, path in self._entries(root):
            self._check_cancel()
            name = f"{root.name}/{rel}"
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                if root.files is not None:
                    raise BackupkitError(f"{path} disappeared during the copy") from None
                continue
            if stat.S_ISDIR(st.st_mode):
                yield self._dir(name, st)
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(path)
                if not link_stays_inside(rel, target):
                    self.stats.skipped.append(Skipped(name, "symlink leads outside its folder", target))
                    continue
                yield self._symlink(name, st, target)
            elif stat.S_ISREG(st.st_mode):
                yield from self._file(name, path)
            else:
                kind = ("socket" if stat.S_ISSOCK(st.st_mode) else "fifo" if stat.S_ISFIFO(st.st_mode)
                        else "device")
                self.stats.skipped.append(Skipped(name, kind))

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise CopyCancelled()

    def _info(self, name: str, st: os.stat_result, kind: bytes) -> tuple[tarfile.TarInfo, FileRecord]:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = stat.S_IMODE(st.st_mode)
        info.mtime = int(st.st_mtime)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname, info.gname = _names(st.st_uid, st.st_gid)
        kind_name = {tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink"}.get(kind, "file")
        rec = FileRecord(path=name, type=kind_name,
                         mode=info.mode, mtime=info.mtime, uid=info.uid, gid=info.gid,
                         user=info.uname, group=info.gname)
        return info, rec

    @staticmethod
    def _header(info: tarfile.TarInfo) -> bytes:
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")

    def _dir(self, name: str, st: os.stat_result) -> bytes:
        info, rec = self._info(name, st, tarfile.DIRTYPE)
        self.stats.dirs += 1
        self.stats.records.append(rec)
        return self._header(info)

    def _symlink(self, name: str, st: os.stat_result, target: str) -> bytes:
        info, rec = self._info(name, st, tarfile.SYMTYPE)
        info.linkname = target
        rec.target = target
        self.stats.symlinks += 1
        self.stats.records.append(rec)
        return self._header(info)

    def _file(self, name: str, path: Path) -> Iterator[bytes]:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NOATIME", 0))
        except PermissionError:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise BackupkitError(f"cannot read {path}: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise BackupkitError(f"{path} changed type during the copy")
            size = st.st_size
            info, rec = self._info(name, st, tarfile.REGTYPE)
            rec.size = size
            segs = [(0, size)] if size else []
            if size >= MIN_HOLES:
                # Also catches preallocated, never-written extents (ext4, xfs report them as holes).
                found = data_segments(fd, size)
                data = sum(n for _, n in found)
                if size - data >= MIN_HOLES:
                    segs = found
            data_total = sum(n for _, n in segs)
            sparse_map = b""
            if segs != ([(0, size)] if size else []):
                sparse_map = _sparse_map(segs, size)
                if len(sparse_map) + data_total > MAX_SPARSE_STORED:
                    segs, sparse_map, data_total = [(0, size)], b"", size  # plain; holes read as zeros
            if sparse_map:
                info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                                    "GNU.sparse.name": name, "GNU.sparse.realsize": str(size)}
                info.name = f"{name.split('/', 1)[0]}/GNUSparseFile.0/sparse"
                info.size = len(sparse_map) + data_total
                rec.sparse = True
                self.stats.sparse_files += 1
            else:
                info.size = size
            rec.data_bytes = data_total
            yield self._header(info)
            if sparse_map:
                yield sparse_map
            sha = hashlib.sha256()
            pos = 0
            for off, length in segs:
                _hash_zeros(sha, off - pos)
                yield from self._copy(fd, path, off, length, sha)
                pos = off + length
            _hash_zeros(sha, size - pos)
            if os.fstat(fd).st_size != size:
                raise BackupkitError(f"{path} changed size during the copy",
                                     "is the server (or something else) still writing to it?")
            stored = len(sparse_map) + data_total
            if stored % BLOCK:
                yield b"\0" * (BLOCK - stored % BLOCK)
            rec.sha256 = sha.hexdigest()
            self.stats.files += 1
            self.stats.logical_bytes += size
            self.stats.data_bytes += data_total
            self.stats.records.append(rec)
        finally:
            os.close(fd)

    def _copy(self, fd: int, path: Path, offset: int, length: int, sha) -> Iterator[bytes]:
        left = length
        while left:
            self._check_cancel()
            block = os.pread(fd, min(self.read_size, left), offset)
            if not block:
                raise BackupkitError(f"{path} shrank during the copy",
                                     "is the server (or something else) still writing to it?")
            sha.update(block)
            offset += len(block)
            left -= len(block)
            if self.on_bytes is not None:
                self.on_bytes(len(block))
            yield block


class CopyCancelled(Exception):  # noqa: N818
    """The consumer of a tar stream has gone away."""


def _raise(exc: OSError) -> None:
    raise BackupkitError(f"cannot read {exc.filename}: {exc.strerror}") from exc


def _hash_zeros(sha, n: int) -> None:
    view = memoryview(ZEROS)
    while n > 0:
        k = min(n, len(ZEROS))
        sha.update(view[:k])
        n -= k


def _sparse_map(segs: list[tuple[int, int]], size: int) -> bytes:
    """The GNU sparse 1.0 map that precedes a sparse member's data, padded to a block."""
    entries = list(segs)
    if not entries or entries[-1][0] + entries[-1][1] < size:
        entries.append((size, 0))  # GNU tar marks a trailing hole with an empty last segment
    text = f"{len(entries)}\n" + "".join(f"{o}\n{n}\n" for o, n in entries)
    raw = text.encode()
    return raw + b"\0" * (-len(raw) % BLOCK)


def scan_size(roots: list[Root]) -> tuple[int, int]:
    """(files, bytes of data) under roots: an estimate for progress and free-space checks."""
    files = total = 0
    for root in roots:
        paths: Iterable[Path]
        if root.files is not None:
            paths = [root.path / f for f in root.files]
        else:
            paths = (Path(d) / f for d, _, fs in os.walk(root.path) for f in fs)
        for p in paths:
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                files += 1
                total += min(st.st_size, st.st_blocks * 512) if st.st_blocks else st.st_size
    return files, total


# -- reading -------------------------------------------------------------------------
@dataclass
class ExtractStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0


def check_records(records: Iterable[FileRecord], roots: Iterable[str]) -> None:
    """Refuse a manifest file list with any unsafe name or link, before anything is written."""
    roots = set(roots)
    for rec in records:
        if rec.path in roots:
            if rec.type != "dir":
                raise UnsafeArchive(f"archive root {rec.path!r} is not a folder")
            continue
        _root, rel = check_member_name(rec.path, roots)
        if rec.type not in ("file", "dir", "symlink"):
            raise UnsafeArchive(f"archive member {rec.path!r} has type {rec.type!r}")
        if rec.type == "symlink" and not link_stays_inside(rel, rec.target):
            raise UnsafeArchive(f"symlink {rec.path!r} -> {rec.target!r} leads outside its folder")


def _ensure_real_dir(base: Path, rel: str, made: list[tuple[Path, FileRecord | None]]) -> Path:
    """base/rel's parent folders, created if missing; none of them may be a symlink."""
    cur = base
    for part in rel.split("/")[:-1]:
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            os.mkdir(cur, 0o700)
            made.append((cur, None))
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafeArchive(f"archive would write through {cur}, which is not a folder")
    return base / rel


class _Owner:
    """Sets owners when running as root: by name when it exists here, else by number."""

    def __init__(self) -> None:
        self.enabled = os.geteuid() == 0

    def ids(self, rec: FileRecord) -> tuple[int, int]:
        uid, gid = rec.uid, rec.gid
        if rec.user:
            with contextlib.suppress(KeyError):
                uid = pwd.getpwnam(rec.user).pw_uid
        if rec.group:
            with contextlib.suppress(KeyError):
                gid = grp.getgrnam(rec.group).gr_gid
        return uid, gid

    def apply(self, path: Path, rec: FileRecord) -> None:
        if self.enabled:
            uid, gid = self.ids(rec)
            os.lchown(path, uid, gid)


def extract(chunks: Iterable[bytes], targets: dict[str, Path], records: list[FileRecord],
            on_bytes: Callable[[int], None] | None = None) -> ExtractStats:
    """Extract a tar stream into targets (root name -> existing empty folder).

    Only members the manifest lists (records) are accepted, with the same type and size, and
    every file's sha256 must match; a member that is unsafe or not listed stops the extraction
    with UnsafeArchive or IntegrityError. Nothing is written outside the target folders."""
    check_records(records, targets)
    expected = {r.path: r for r in records}
    seen: set[str] = set()
    stats = ExtractStats()
    owner = _Owner()
    dirs: list[tuple[Path, FileRecord | None]] = []
    reader = io.BufferedReader(_IterRaw(iter(chunks)), buffer_size=1 << 20)
    try:
        tar = tarfile.open(fileobj=reader, mode="r|", encoding="utf-8",  # noqa: SIM115
                           errors="surrogateescape")
    except tarfile.TarError as exc:
        raise IntegrityError(f"the archive is not a readable tar stream: {exc}") from exc
    with tar:
        while True:
            try:
                member = tar.next()
            except tarfile.TarError as exc:
                raise IntegrityError(f"the archive is damaged: {exc}") from exc
            if member is None:
                break
            name = member.name
            if name in targets:
                root, rel = name, ""
            else:
                root, rel = check_member_name(name, targets)
            rec = expected.get(name)
            if rec is None:
                raise IntegrityError(f"archive member {name!r} is not in the manifest")
            if name in seen:
                raise IntegrityError(f"archive member {name!r} appears twice")
            seen.add(name)
            base = targets[root]
            if member.isdir():
                _expect(rec, "dir", name)
                if not rel:
                    dirs.append((base, rec))
                    continue
                path = _ensure_real_dir(base, rel, dirs)
                try:
                    os.mkdir(path, 0o700)
                except FileExistsError:
                    if not stat.S_ISDIR(os.lstat(path).st_mode):
                        raise UnsafeArchive(f"archive member {name!r} collides with a file") from None
                dirs.append((path, rec))
                stats.dirs += 1
            elif member.issym():
                _expect(rec, "symlink", name)
                if member.linkname != rec.target or not link_stays_inside(rel, member.linkname):
                    raise UnsafeArchive(f"symlink {name!r} -> {member.linkname!r} leads outside its folder")
                path = _ensure_real_dir(base, rel, dirs)
                os.symlink(member.linkname, path)
                owner.apply(path, rec)
                with contextlib.suppress(OSError, NotImplementedError):
                    os.utime(path, (rec.mtime, rec.mtime), follow_symlinks=False)
                stats.symlinks += 1
            elif member.isreg():
                _expect(rec, "file", name)
                if member.size != rec.size:
                    raise IntegrityError(f"archive member {name!r} has {member.size} bytes, "
                                         f"manifest says {rec.size}")
                path = _ensure_real_dir(base, rel, dirs)
                _write_member(tar, member, path, rec, on_bytes)
                owner.apply(path, rec)
                os.chmod(path, rec.mode)
                os.utime(path, (rec.mtime, rec.mtime))
                stats.files += 1
                stats.bytes += rec.size
            else:
                raise UnsafeArchive(f"archive member {name!r} is a link, device or fifo; refused")
    missing = [p for p in expected if p not in seen]
    if missing:
        raise IntegrityError(f"the archive lacks {len(missing)} member(s) the manifest lists, "
                             f"first {missing[0]!r}")
    # Folders last, deepest first, so a read-only folder does not block its own content.
    for path, rec in sorted(dirs, key=lambda d: len(d[0].parts), reverse=True):
        if rec is None:
            continue
        owner.apply(path, rec)
        os.chmod(path, rec.mode)
        os.utime(path, (rec.mtime, rec.mtime))
    return stats


def _expect(rec: FileRecord, kind: str, name: str) -> None:
    if rec.type != kind:
        raise IntegrityError(f"archive member {name!r} is a {kind}, manifest says {rec.type}")


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path, rec: FileRecord,
                  on_bytes: Callable[[int], None] | None) -> None:
    """Write one file member; the data regions of a sparse member are stored back to back."""
    src = tar.fileobj  # the tar stream itself: forward reads only, no whole-member buffering
    assert src is not None
    src.seek(member.offset_data)
    sha = hashlib.sha256()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise UnsafeArchive(f"archive member {member.name!r} collides with an existing entry") from None
    try:
        segs = member.sparse if member.sparse is not None else [(0, member.size)]
        pos = 0
        for off, length in segs:
            if off < pos or off + length > member.size:
                raise IntegrityError(f"sparse map of {member.name!r} is not valid")
            _hash_zeros(sha, off - pos)
            left = length
            while left:
                block = src.read(min(READ_SIZE, left))
                if not block:
                    raise IntegrityError(f"archive member {member.name!r} is truncated")
                sha.update(block)
                os.pwrite(fd, block, off)
                off += len(block)
                left -= len(block)
                if on_bytes is not None:
                    on_bytes(len(block))
            pos = off
        _hash_zeros(sha, member.size - pos)
        os.ftruncate(fd, member.size)
    finally:
        os.close(fd)
    if rec.sha256 and sha.hexdigest() != rec.sha256:
        raise IntegrityError(f"checksum mismatch in restored file {member.name!r}",
                             "the backup is damaged")


class _IterRaw(io.RawIOBase):
    """A raw reader over an iterator of byte chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        while not len(self._buf):
            try:
                self._buf = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n
