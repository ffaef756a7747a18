"""Finding mariadb-backup and mbstream on this host, and their version.

Used by the physical backup engine (strategies/physical) and the physical restore; a missing tool
is a one-line error naming the Debian package.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from backupkit.errors import BackupkitError

PACKAGE = "mariadb-backup"
BACKUP_NAMES = ("mariadb-backup", "mariabackup")
#: On MySQL the same interface would drive Percona XtraBackup; never tested here (docs/physical.md).
XTRABACKUP_NAMES = ("xtrabackup",)


class ToolMissing(BackupkitError):
    """mariadb-backup or mbstream is not installed."""


def find_tool(names: tuple[str, ...] = BACKUP_NAMES, package: str = PACKAGE) -> str:
    """The path of the first of names on PATH; else ToolMissing naming the package."""
    override = os.environ.get("BACKUPKIT_MARIADB_BACKUP") if names == BACKUP_NAMES else None
    if override:
        if os.access(override, os.X_OK):
            return override
        raise ToolMissing(f"BACKUPKIT_MARIADB_BACKUP={override} is not an executable",
                          f"install the {package} package or fix the variable")
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise ToolMissing(f"{names[0]} is not installed on this host",
                      f"install the {package} package (Debian/Ubuntu: apt-get install {package})")


def find_mbstream() -> str:
    override = os.environ.get("BACKUPKIT_MBSTREAM")
    if override:
        return find_tool((override,))
    return find_tool(("mbstream",))


def tool_version(binary: str) -> str:
    """'10.11.19-MariaDB' from 'mariadb-backup based on MariaDB server 10.11.19-MariaDB ...'."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolMissing(f"cannot run {binary}: {exc}", f"reinstall the {PACKAGE} package") from None
    text = (out.stdout + out.stderr).strip()
    m = re.search(r"server\s+(\S+)", text) or re.search(r"(\d+\.\d+\.\d+\S*)", text)
    return m.group(1) if m else text.splitlines()[0] if text else ""
