"""Safe extraction of a cold backup's tar stream (written by tar.py).

``extract`` reads a tar stream (tarfile in stream mode) and writes only what the manifest
lists, into folders it owns: no absolute names, no ``..``, no link that leads out of its root,
no devices, fifos or hard links, no writing through a symlink. Every link is resolved the way
the kernel would, against the links already listed, so a chain of links cannot lead out either.
Modes (without setuid/setgid), times and (when run as root) owners are kept; holes of sparse
files stay holes.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import io
import os
import posixpath
import pwd
import stat
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from backupkit.errors import IntegrityError
from backupkit.strategies.cold.tar import READ_SIZE, FileRecord, hash_zeros, link_stays_inside
from backupkit.util.streams import ChunkReader


class UnsafeArchive(IntegrityError):
    """An archive member that would write outside its target, or a kind of file never restored."""


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


MAX_LINK_HOPS = 40  # what Linux allows before ELOOP
_NO_SUID = ~(stat.S_ISUID | stat.S_ISGID) & 0o7777


def restored_mode(mode: int) -> int:
    """The permission bits written on extraction: setuid and setgid are never restored."""
    return mode & _NO_SUID


def resolve_link(rel: str, links: dict[str, str]) -> str | None:
    """Where the symlink at rel leads inside its root, resolving the links of that root as the
    kernel would (links: relative path -> target); None when it leaves the root, is absolute,
    or loops."""
    parts = [p for p in posixpath.dirname(rel).split("/") if p]
    pending = list(links.get(rel, "").split("/"))
    if not links.get(rel) or links[rel].startswith("/") or "\0" in links[rel]:
        return None
    hops = 0
    while pending:
        comp = pending.pop(0)
        if comp in ("", "."):
            continue
        if comp == "..":
            if not parts:
                return None
            parts.pop()
            continue
        here = "/".join([*parts, comp])
        target = links.get(here)
        if target is None:
            parts.append(comp)
            continue
        hops += 1
        if hops > MAX_LINK_HOPS or not target or target.startswith("/") or "\0" in target:
            return None
        pending[:0] = target.split("/")  # resolved relative to the folder holding that link
    return "/".join(parts)


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
    records = list(records)
    links: dict[str, dict[str, str]] = {}
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
        if rec.type == "symlink":
            links.setdefault(_root, {})[rel] = rec.target
    for root, root_links in links.items():
        for rel in root_links:
            if resolve_link(rel, root_links) is None:
                raise UnsafeArchive(f"symlink {root}/{rel} -> {root_links[rel]!r} leads outside "
                                    "its folder through other links",
                                    "a link's path is resolved through the archive's links")
    for rec in records:  # nothing is written through a listed link (extract checks it again)
        parent = posixpath.dirname(rec.path)
        while parent and parent not in roots:
            root, _, rel = parent.partition("/")
            if rel in links.get(root, {}):
                raise UnsafeArchive(f"archive member {rec.path!r} lies under the symlink {parent!r}")
            parent = posixpath.dirname(parent)


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
    reader = io.BufferedReader(ChunkReader(iter(chunks)), buffer_size=1 << 20)
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
                os.chmod(path, restored_mode(rec.mode))  # after chown, which may clear them anyway
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
        os.chmod(path, restored_mode(rec.mode))
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
            hash_zeros(sha, off - pos)
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
        hash_zeros(sha, member.size - pos)
        os.ftruncate(fd, member.size)
    finally:
        os.close(fd)
    if rec.sha256 and sha.hexdigest() != rec.sha256:
        raise IntegrityError(f"checksum mismatch in restored file {member.name!r}",
                             "the backup is damaged")
