"""Local state of a scheduled policy: where its status file, locks and logs live, the flock
locks and the status file itself."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backupkit.config import Policy
from backupkit.settings import state_dir
from backupkit.util.paths import expand_user
from backupkit.util.units import utc_iso_seconds


@dataclass
class Paths:
    """Where the status file, locks and logs of a policy live on this machine."""

    status_file: Path
    lock_dir: Path
    log_dir: Path

    @classmethod
    def of(cls, policy: Policy) -> Paths:
        s = policy.schedule
        state = state_dir()
        root = os.geteuid() == 0 and not os.environ.get("BACKUPKIT_STATE_DIR")
        return cls(
            status_file=expand_user(s.status_file) if s.status_file
            else state / f"{policy.name}.status.json",
            lock_dir=expand_user(s.lock_dir) if s.lock_dir
            else (Path("/run/lock/backupkit") if root else state / "locks"),
            log_dir=expand_user(s.log_dir) if s.log_dir
            else (Path("/var/log/backupkit") if root else state / "log"),
        )

    def lock_file(self, policy_name: str, what: str) -> Path:
        return self.lock_dir / f"{policy_name}-{what}.lock"

    def log_file(self, policy_name: str, what: str) -> Path:
        return self.log_dir / f"{policy_name}-{what}.log"


class FileLock:
    """An advisory flock(2) lock on a file: the same lock `flock(1)` takes in the cron lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock without waiting; False when another process (or run) holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None



class StatusFile:
    """The JSON file `schedule status` reads: last result and next run of each job, the shipper.

    Several writers (the daemon's threads, cron runs) update it under a lock, and each write is a
    temp file renamed over the old one, so a reader never sees half a file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def update(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Apply change() to the current content and write it back atomically."""
        with self._locked():
            data = self.read()
            change(data)
            data["updated_at"] = utc_iso_seconds(time.time())
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, self.path)
            return data
