"""A steady client write load that survives server downtime (the demo, the tests, the benches).

``WriteLoad`` commits one small transaction after another through ``step(cursor, n)`` (n counts
from 1 and grows only after a commit was acknowledged), reconnects through restarts and
failovers, and can be paused at a transaction boundary. ``acks`` keeps (n, wall time) of every
acknowledged commit when asked, so a caller can measure the outage a retrying client saw.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pymysql

from backupkit.errors import BackupkitError

Step = Callable[[Any, int], None]


class WriteLoad(threading.Thread):
    """Commits ``step`` in a loop on its own connection until stopped."""

    def __init__(self, connect: Callable[[], Any], step: Step, pause: float = 0.002,
                 record_acks: bool = False, name: str = "write-load") -> None:
        super().__init__(daemon=True, name=name)
        self._connect = connect
        self.step = step
        self.pause_seconds = pause
        self.record_acks = record_acks
        self.stop_event = threading.Event()
        self.paused = threading.Event()
        self.idle = threading.Event()
        self.commits = 0
        self.errors = 0
        self.acks: list[tuple[int, float]] = []

    def run(self) -> None:
        conn = None
        while not self.stop_event.is_set():
            if self.paused.is_set():
                self.idle.set()
                time.sleep(0.01)
                continue
            self.idle.clear()
            try:
                if conn is None:
                    conn = self._connect()
                with conn.cursor() as cur:
                    self.step(cur, self.commits + 1)
                self.commits += 1
                if self.record_acks:
                    self.acks.append((self.commits, time.time()))
            except (pymysql.Error, OSError, BackupkitError):  # a refused connect is a SourceError
                self.errors += 1
                _close(conn)
                conn = None
                time.sleep(0.05)
            time.sleep(self.pause_seconds)
        _close(conn)

    def pause(self, timeout: float = 5.0) -> None:
        """Stop between transactions; returns once the loop is idle (or after timeout)."""
        self.paused.set()
        self.idle.wait(timeout)

    def resume(self) -> None:
        self.paused.clear()

    def stop(self, timeout: float = 30.0) -> None:
        self.stop_event.set()
        if self.is_alive():
            self.join(timeout)

    def outage(self) -> tuple[float, int]:
        """The longest time between two acknowledged commits, and the last n before it."""
        gaps = [(b[1] - a[1], a[0]) for a, b in zip(self.acks, self.acks[1:], strict=False)]
        return max(gaps)


def _close(conn: Any) -> None:
    if conn is None:
        return
    try:
        conn.close()
    except Exception:  # a connection to a dead server may fail to close: it is gone anyway
        pass
