"""How far the shipper has confirmed the source's history, for the lag metric and the page.

"Confirmed up to T" means: every transaction the source committed up to T is committed in the
repository. The shipper tells ShipProgress when a complete transaction arrives while nothing
was waiting (commit_seen), when it cuts a segment (flushed), when the uploader committed one
(committed), and on every turn of its loop while the stream is live (alive). The confirmed
moment is then the arrival of the oldest transaction not yet committed, or the last live turn
when nothing waits. A transaction read from a backlog counts from its own timestamp, so a
shipper catching up reports its true lag. All methods are cheap and thread-safe.

Beside the repository's watermark (confirm.py): that one is durable and exact to the second on
the server's clock, but moves only on heartbeats, that is while the source is quiet; this one
is local and live, and moves under load too. The lag metrics use this one; the restorable
intervals, from any machine, the watermark.
"""

from __future__ import annotations

import threading
import time
from collections import deque


class ShipProgress:
    """The shipper's confirmed moment and its counters (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: float | None = None  # the oldest complete transaction not yet cut
        self._uploading: deque[float | None] = deque()  # one entry per cut segment not committed
        self.live_at: float | None = None
        self.upload_errors = 0
        self.gaps = 0
        self.state = "starting"  # starting | shipping | reconnecting | standby | stopped
        self.error = ""  # why the shipper is reconnecting

    def commit_seen(self, event_time: float) -> None:
        """A complete transaction arrived while none was waiting (event_time: its header's)."""
        now = time.time()
        with self._lock:
            if self._pending is None:
                self._pending = min(now, event_time + 1.0)  # timestamps are whole seconds

    def flushed(self) -> None:
        """The waiting transactions were cut into a segment and handed to the uploader."""
        with self._lock:
            self._uploading.append(self._pending)
            self._pending = None

    def committed(self) -> None:
        """The uploader committed the oldest cut segment."""
        with self._lock:
            if self._uploading:
                self._uploading.popleft()

    def reset(self) -> None:
        """Segments waiting for upload were dropped (the lease was lost): they count no more."""
        with self._lock:
            self._uploading.clear()
            self._pending = None

    def alive(self) -> None:
        """The stream is live and everything it delivered so far was read."""
        self.live_at = time.time()
        self.state = "shipping"
        self.error = ""

    def disconnected(self, why: str) -> None:
        """The stream was lost (the source died or went away): reconnecting."""
        self.state = "reconnecting"
        self.error = why

    def confirmed_at(self) -> float | None:
        """Everything committed on the source up to this moment is in the repository."""
        with self._lock:
            waiting = [t for t in (*self._uploading, self._pending) if t is not None]
        if waiting:
            return min(waiting)
        return self.live_at
