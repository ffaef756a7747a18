"""The shipper's confirmed-through watermark: computed from heartbeats, written in the background.

The shipper is caught up when a heartbeat (or, with --once, the end of the stream) has arrived
and every event received before it is committed in the repository. The watermark is then the
heartbeat's moment on the server's clock, less one second: binlog times are whole seconds and a
commit's time is taken a little before its events are sent, so the second of the heartbeat
itself is not yet known to be complete.

``StatusWriter`` keeps only the newest watermark offered and writes it at most every
``interval`` seconds, from its own thread, so a slow target never holds up the stream.
Cost: one PUT per interval while the source is quiet (86400 / interval per day: 17,280 at the
default 5 s) and none while it is busy, when no heartbeat comes.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from backupkit.errors import BackupkitError
from backupkit.repo.catalog import Catalog
from backupkit.repo.watermark import ShipperStatus, write_status

log = logging.getLogger(__name__)


def server_clock_offset(conn) -> float:
    """Seconds to add to this machine's clock to read the server's (measured once per run)."""
    t0 = time.time()
    with conn.cursor() as cur:
        cur.execute("SELECT UNIX_TIMESTAMP(NOW(6))")
        (server_now,) = cur.fetchone()
    t1 = time.time()
    return float(server_now) - (t0 + t1) / 2


def watermark_of(beat_at: float, offset: float) -> float:
    """The confirmed-through second for a heartbeat received at beat_at (local clock)."""
    return float(math.floor(beat_at + offset) - 1)


class StatusWriter(threading.Thread):
    """Writes the newest offered ShipperStatus, at most every interval seconds."""

    def __init__(self, catalog: Catalog, interval: float,
                 notify: Callable[[str], None] | None = None) -> None:
        super().__init__(name="shipper-status", daemon=True)
        self.catalog = catalog
        self.interval = interval
        self.notify = notify or (lambda msg: log.info("%s", msg))
        self._cv = threading.Condition()
        self._slot: ShipperStatus | None = None
        self._closing = False
        self.written = 0
        self.last: ShipperStatus | None = None  # the newest written
        self._failing = False

    def offer(self, status: ShipperStatus) -> None:
        with self._cv:
            self._slot = status
            self._cv.notify()

    def _write(self, st: ShipperStatus) -> bool:
        try:
            write_status(self.catalog, st)
        except BackupkitError as exc:
            if not self._failing:
                self.notify(f"warning: the shipper status (watermark) was not written: {exc.message}")
            self._failing = True
            return False
        if self._failing:
            self.notify("the shipper status (watermark) is written again")
        self._failing = False
        self.written += 1
        self.last = st
        return True

    def run(self) -> None:
        while True:
            with self._cv:
                while self._slot is None and not self._closing:
                    self._cv.wait()
                if self._closing:
                    return
                st, self._slot = self._slot, None
            if not self._write(st):
                with self._cv:  # keep the newest, try again after the interval
                    self._slot = self._slot or st
            with self._cv:
                self._cv.wait_for(lambda: self._closing, timeout=self.interval)
                if self._closing:
                    return

    def close(self, final: ShipperStatus | None = None, timeout: float = 10.0) -> None:
        """Stop the thread; write the newest status (or final) before returning, within timeout."""
        with self._cv:
            self._closing = True
            pending = final or self._slot
            self._slot = None
            self._cv.notify()
        if self.is_alive():
            self.join(timeout)
        if pending is not None:
            t = threading.Thread(target=self._write, args=(pending,), daemon=True)
            t.start()
            t.join(timeout)
