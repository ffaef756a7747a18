"""The staging folder: where the datadir is copied while the server is down, uploaded after.

By default (staging "auto") it is a hidden folder beside the datadir (same filesystem: an
in-kernel copy, a reflink on XFS or btrfs), used only when it is safe: room above a reserve,
writable, not across a mount point. Each folder names the process that owns it, so the leftovers
of a killed backupkit are removed by the next run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import stat
import time
from pathlib import Path

from backupkit.errors import UsageError
from backupkit.mysql.process import pid_alive, process_start
from backupkit.strategies.cold.copy import is_inside
from backupkit.strategies.cold.tar import (
    Root,
)
from backupkit.util.units import utc_iso

log = logging.getLogger(__name__)


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
        if root.files is None and is_inside(folder, root.path):
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


def check_staging_folder(base: Path, roots: list[Root], est_bytes: int) -> Path:
    """An explicit staging folder: strict, a UsageError before anything is stopped."""
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create staging folder {base}: {exc.strerror}") from None
    if not os.access(base, os.W_OK):
        raise UsageError(f"staging folder {base} is not writable")
    for root in roots:
        if root.files is None and is_inside(base, root.path):
            raise UsageError(f"staging folder {base} is inside {root.path}, which is copied")
    free, _ = disk_space(base)
    if free < est_bytes * 1.05 + (64 << 20):
        raise UsageError(f"staging folder {base} has {free >> 20} MiB free; the datadir needs "
                         f"about {est_bytes >> 20} MiB")
    return base


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
