"""What a cold backup copies (the roots) and the faithful local copy of them (staging)."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from backupkit.errors import BackupkitError, UsageError
from backupkit.mysql.control import (
    ServerProbe,
)
from backupkit.strategies.cold.shutdown import last_binlog
from backupkit.strategies.cold.tar import (
    Root,
    Skipped,
    data_segments,
    link_stays_inside,
)
from backupkit.util.paths import expand_user

DATA_ROOT = "data"
BINLOG_ROOT = "binlog"


def is_inside(path: Path, folder: Path) -> bool:
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(folder))
        return True
    except ValueError:
        return False


def plan_roots(probe: ServerProbe, datadir: Path, paths: list[str],
               binlog_files: list[str] | None = None) -> list[Root]:
    """The datadir, plus binlog and InnoDB files that live outside it, plus --paths."""
    roots = [Root(DATA_ROOT, datadir)]
    if probe.log_bin and probe.log_bin_index is not None and not is_inside(probe.log_bin_index, datadir):
        base = probe.log_bin_index.parent
        names = [probe.log_bin_index.name]
        if binlog_files is None:
            found = last_binlog(probe)
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
        if folder.is_dir() and not is_inside(folder, datadir):
            files = sorted(n for n in os.listdir(folder) if n.startswith(patterns[var]))
            roots.append(Root(var.removesuffix("_dir").removesuffix("_directory"), folder, files))
    for i, p in enumerate(paths, 1):
        path = expand_user(p).absolute()
        if not path.exists():
            raise UsageError(f"--paths: {path} does not exist")
        if is_inside(path, datadir):
            continue  # already in the datadir
        if path.is_dir():
            roots.append(Root(f"path{i}", path))
        else:
            roots.append(Root(f"path{i}", path.parent, [path.name]))
    return roots


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
