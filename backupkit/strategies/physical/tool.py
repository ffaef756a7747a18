"""mariadb-backup as a child process: its credentials, its log and its info files.

Finding the binaries is in backupkit.mysql.mariabackup (restore needs it too). Nothing here
touches the repository. The engine (engine.py) pipes the child's stdout into it.
"""

from __future__ import annotations

import os
import re
import signal
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from backupkit.mysql.connection import ConnSpec


class CredentialsFile:
    """A 0600 option file in a private temp folder, so the password never shows in ps."""

    def __init__(self, spec: ConnSpec, folder: Path) -> None:
        self.path = folder / "client.cnf"
        lines = ["[client]", f"user={spec.user}"]
        if spec.password:
            lines.append(f"password={_quote_option(spec.password)}")
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")

    def arg(self) -> str:
        return f"--defaults-extra-file={self.path}"


def _quote_option(value: str) -> str:
    """An option file value: quoted, with backslashes and quotes escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def private_tempdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


# -- the log -----------------------------------------------------------------------------------
@dataclass
class LogWatch:
    """Reads the child's stderr as it comes and stamps the lines that matter with our clocks.

    mariadb-backup's own timestamps are whole seconds; the commit block (BACKUP STAGE
    BLOCK_COMMIT until the tables are unlocked) lasts milliseconds, so it is measured here."""

    tail: deque[str] = field(default_factory=lambda: deque(maxlen=200))
    marks: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (wall, mono)
    lines: int = 0
    files: int = 0

    PATTERNS = (
        ("block_commit_start", "Starting BACKUP STAGE BLOCK_COMMIT"),
        ("block_commit", "Acquired locks for BACKUP STAGE BLOCK_COMMIT"),
        ("unlocked", "All tables unlocked"),
        ("stage_end", "Executing BACKUP STAGE END"),
        ("completed", "completed OK!"),
    )

    def feed(self, line: str) -> None:
        now = (time.time(), time.monotonic())
        self.lines += 1
        self.tail.append(line)
        if "Streaming " in line:
            self.files += 1
        for name, text in self.PATTERNS:
            if text in line and name not in self.marks:
                self.marks[name] = now

    def blocked_ms(self) -> float | None:
        """Milliseconds during which commits were blocked, or None when the log did not show it."""
        a = self.marks.get("block_commit_start") or self.marks.get("block_commit")
        b = self.marks.get("unlocked") or self.marks.get("stage_end")
        if a is None or b is None:
            return None
        return max(0.0, (b[1] - a[1]) * 1000.0)

    def point_time(self) -> float | None:
        """Wall time at which commits were blocked: the moment the backup is consistent at."""
        m = self.marks.get("block_commit") or self.marks.get("block_commit_start")
        return m[0] if m else None

    def error_line(self) -> str:
        """The line that best says why the child failed."""
        keys = ("error", "Error", "ERROR", "failed", "Failed", "denied", "No space", "Can't", "cannot")
        for line in reversed(self.tail):
            if any(k in line for k in keys):
                return _strip_stamp(line)
        return _strip_stamp(self.tail[-1]) if self.tail else "(no output)"


def _strip_stamp(line: str) -> str:
    return re.sub(r"^\[\d+\]\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s+", "", line.strip())


def watch_stderr(stream, watch: LogWatch) -> threading.Thread:
    def run() -> None:
        for raw in iter(stream.readline, b""):
            watch.feed(raw.decode("utf-8", "replace").rstrip("\n"))
        stream.close()

    t = threading.Thread(target=run, name="mariadb-backup-log", daemon=True)
    t.start()
    return t


def exit_text(rc: int) -> str:
    """'exited with status 3' or 'was killed by SIGKILL', for a child's return code."""
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return f"was killed by {name}"
    return f"exited with status {rc}"


# -- info files ---------------------------------------------------------------------------------
def parse_kv(text: str) -> dict[str, str]:
    """'key = value' lines (xtrabackup_checkpoints, xtrabackup_info)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            out[k.strip()] = v.strip()
    return out


_BINLOG_POS = re.compile(r"filename '([^']*)', position '(\d+)'(?:, GTID of the last change '([^']*)')?")


def parse_binlog_pos(text: str) -> tuple[str, int, str] | None:
    """(file, position, GTID) from "filename 'binlog.000001', position '392395', GTID of the last
    change '0-1-3'" (xtrabackup_info's binlog_pos, or the log line)."""
    m = _BINLOG_POS.search(text or "")
    if not m:
        return None
    return m.group(1), int(m.group(2)), (m.group(3) or "").strip()


def read_lsndir(folder: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(xtrabackup_checkpoints, xtrabackup_info) written by --extra-lsndir."""
    def read(name: str) -> dict[str, str]:
        try:
            return parse_kv((folder / name).read_text(errors="replace"))
        except OSError:
            return {}

    return read("xtrabackup_checkpoints"), read("xtrabackup_info")
