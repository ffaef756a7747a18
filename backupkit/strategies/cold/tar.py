"""Streamed tar of folders (a datadir): the cold backup's archive format.

``TarWriter`` walks one or more roots without following symlinks and yields the bytes of a
POSIX (pax) tar stream, one bounded chunk at a time. Every regular file is read once and hashed
on the way (sha256 of its logical content); sparse files are written in the GNU sparse 1.0
format, so their holes are neither read nor stored. The per-file records end up in the
manifest, so a restore can check every file (see untar.py for the reading side).
"""

from __future__ import annotations

import errno
import grp
import hashlib
import os
import posixpath
import pwd
import stat
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from backupkit.errors import BackupkitError, UsageError

BLOCK = tarfile.BLOCKSIZE
READ_SIZE = 4 << 20
ZEROS = bytes(1 << 20)
#: Holes smaller than this are not worth the sparse format.
MIN_HOLES = 64 << 10
#: The ustar size field holds at most 8 GiB - 1; a sparse member's stored size must fit.
MAX_SPARSE_STORED = 0o77777777777


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
                hash_zeros(sha, off - pos)
                yield from self._copy(fd, path, off, length, sha)
                pos = off + length
            hash_zeros(sha, size - pos)
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


def hash_zeros(sha, n: int) -> None:
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
