"""The lock watchdog: the snapshot's consistency step never stalls the service past a bound.

``BACKUP STAGE BLOCK_DDL`` waits for running DDL and ``LOCK TABLES``; ``BACKUP STAGE
BLOCK_COMMIT`` (and MySQL's ``FLUSH TABLES WITH READ LOCK``) waits for running commits and
statements, and while it waits, new commits queue behind it. A guarded statement that has not
returned after ``max_wait`` seconds is interrupted with ``KILL QUERY`` from a second connection
(``lock_wait_timeout`` alone does not bound FTWRL's wait for a table flush); the processlist seen
at that moment names the session that held the lock. The snapshot then releases everything,
waits, and tries again a bounded number of times (``job.open_consistent``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pymysql

from backupkit.errors import SourceError

#: Sessions in these states wait for us (or are the server's own): never the blocker.
_WAITING_FOR_US = ("Waiting for backup lock", "Waiting for global read lock",
                   "Waiting for commit lock")
_SERVER_COMMANDS = ("Daemon", "Binlog Dump", "Binlog Dump GTID", "Killed")


@dataclass
class Blocker:
    """A session that held what the snapshot waited for, as the processlist showed it."""

    id: int
    user: str
    command: str
    seconds: int
    state: str
    info: str

    def describe(self) -> str:
        what = (f"running for {self.seconds} s: {self.info}" if self.info
                else f"idle for {self.seconds} s, holding a table lock or an open transaction")
        return f"session {self.id} (user {self.user!r}, {what})"


class LockWaitExceeded(SourceError):
    """A consistency lock did not come within the bound (exit 3, like an unavailable source)."""

    def __init__(self, stage: str, waited: float, blocker: Blocker | None, attempts: int = 1) -> None:
        who = blocker.describe() if blocker else "no other session was visible in the processlist"
        tries = f" ({attempts} attempts)" if attempts > 1 else ""
        super().__init__(f"{stage} waited {waited:.1f} s for other sessions{tries} and was given up so "
                         f"the service is not stalled: {who}",
                         "let that statement finish or end that session, then run the snapshot again; "
                         "--max-lock-wait sets the bound")
        self.stage = stage
        self.blocker = blocker
        self.waited = waited


def find_blocker(cur, exclude: set[int], waited: float = 0.0) -> Blocker | None:
    """The most likely holder: the longest-running statement that does not wait for us, else the
    longest idle session (a LOCK TABLES or an idle transaction holds locks without a statement).
    The holder has held its lock since before the wait began, so sessions in their current state
    for less than the time waited (a busy writer's short statements) are only a last resort."""
    cur.execute("SELECT ID, USER, COMMAND, TIME, COALESCE(STATE, ''), COALESCE(LEFT(INFO, 200), '') "
                "FROM information_schema.PROCESSLIST")
    rows = [r for r in cur.fetchall() if int(r[0]) not in exclude and r[2] not in _SERVER_COMMANDS
            and r[1] != "system user" and not any(w in r[4] for w in _WAITING_FOR_US)]
    long_enough = [r for r in rows if int(r[3] or 0) >= int(waited)]
    rows = long_enough or rows
    active = sorted((r for r in rows if r[2] != "Sleep"), key=lambda r: -int(r[3] or 0))
    idle = sorted((r for r in rows if r[2] == "Sleep"), key=lambda r: -int(r[3] or 0))
    best = (active or idle or [None])[0]
    if best is None:
        return None
    info = " ".join(str(best[5]).split())
    return Blocker(int(best[0]), str(best[1]), str(best[2]), int(best[3] or 0), str(best[4]),
                   info if best[2] != "Sleep" else "")


class LockWatchdog:
    """Interrupts a guarded statement on ``conn`` after ``max_wait`` seconds."""

    def __init__(self, connect, conn, max_wait: float, exclude: set[int]) -> None:
        self.max_wait = max_wait
        self.target_id = conn.thread_id()
        self._killer = connect()  # opened up front: a kill must not wait for a login
        self.exclude = exclude | {self.target_id, self._killer.thread_id()}
        self.blocker: Blocker | None = None
        self.fired = False
        self._lock = threading.Lock()

    def close(self) -> None:
        try:
            self._killer.close()
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass

    def _fire(self, done: threading.Event) -> None:
        with self._lock:
            if done.is_set():
                return
            try:
                with self._killer.cursor() as cur:
                    self.blocker = find_blocker(cur, self.exclude, self.max_wait)
                    cur.execute(f"KILL QUERY {int(self.target_id)}")
                self.fired = True
            except pymysql.Error:
                self.fired = True  # the statement may still return; the caller sees an error anyway

    @contextmanager
    def guard(self, stage: str) -> Iterator[None]:
        """Run the block's statement under the bound; raise LockWaitExceeded when it was cut."""
        done = threading.Event()
        self.fired = False
        timer = threading.Timer(self.max_wait, self._fire, args=(done,))
        timer.daemon = True
        t0 = time.monotonic()
        timer.start()
        try:
            yield
        except pymysql.Error as exc:
            code = exc.args[0] if exc.args else 0
            if self.fired or code in (1205, 1317):  # lock wait timeout, query interrupted
                raise LockWaitExceeded(stage, time.monotonic() - t0, self.blocker) from None
            raise
        finally:
            with self._lock:
                done.set()
            timer.cancel()
        if self.fired:  # killed just as it returned: the lock is held, but treat it as cut
            raise LockWaitExceeded(stage, time.monotonic() - t0, self.blocker)
