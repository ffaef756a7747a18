"""Datadirs a restore writes: never over a running server, never over data without --force, and
what --force replaces is moved aside (renamed beside it), not deleted. Shared by the cold and
the physical restore."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from backupkit.errors import BackupkitError, UsageError
from backupkit.mysql.connection import ConnSpec, connect
from backupkit.mysql.process import pid_alive, read_pid, servers_using
from backupkit.storage.local import fsync_dir
from backupkit.util.units import utc_stamp


def new_stamp() -> str:
    return utc_stamp(time.time())


def non_empty(path: Path) -> bool:
    try:
        return any(os.scandir(path))
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        return True


def server_running(datadir: Path, pid_file: Path | None, spec: ConnSpec | None) -> str | None:
    """Why we think a server uses datadir (or answers at spec), or None."""
    if datadir.is_dir():
        pids = servers_using(datadir)
        if pids:
            return f"mariadbd/mysqld process {pids[0]} runs on {datadir}"
        for p in datadir.glob("*.pid"):
            pid = read_pid(p)
            if pid is not None and pid_alive(pid):
                return f"pid file {p} names running process {pid}"
    if pid_file is not None:
        pid = read_pid(pid_file)
        if pid is not None and pid_alive(pid):
            return f"pid file {pid_file} names running process {pid}"
    if spec is not None:
        try:
            conn = connect(spec, connect_timeout=2)
        except BackupkitError:
            return None
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT @@datadir")
                other = cur.fetchone()[0]
        finally:
            conn.close()
        return f"a server answers at {spec.display()} (datadir {other})"
    return None


def unique(path: Path) -> Path:
    if not path.exists() and not path.is_symlink():
        return path
    for i in range(1, 1000):
        cand = path.with_name(f"{path.name}.{i}")
        if not cand.exists() and not cand.is_symlink():
            return cand
    raise UsageError(f"cannot find a free name beside {path}")


def owner_of(*paths: Path) -> tuple[int, int] | None:
    for p in paths:
        with contextlib.suppress(OSError):
            st = p.stat()
            return st.st_uid, st.st_gid
    return None


def chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for folder, dirs, files in os.walk(root):
        for n in dirs + files:
            os.chown(os.path.join(folder, n), uid, gid, follow_symlinks=False)


def move_aside(path: Path, stamp: str, say: Callable[[str], None]) -> Path:
    """Rename path to <name>.before-<stamp> beside it (a free name), durably; returns the new name."""
    aside = unique(path.with_name(f"{path.name}.before-{stamp}"))
    try:
        os.rename(path, aside)
    except OSError as exc:
        raise UsageError(f"cannot move {path} aside to {aside}: {exc.strerror}",
                         "is it a mount point? empty it by hand") from None
    fsync_dir(aside.parent)
    say(f"moved {path} aside to {aside}")
    return aside
