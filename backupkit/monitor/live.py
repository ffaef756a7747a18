"""The files beside the daemon's status file that the shipper and the daemon share, and the
shipper's writer of its live state. Light on purpose: a shipper imports it at start-up.

- ``<name>.status.json``: the daemon's status file (schedule/state.py writes it);
- ``<name>.status.shipper.json``: the shipper's live state (ShipperReporter writes it about
  twice a second);
- ``<name>.status.lag.json``: the daemon's shipper lag history, for the page's chart.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from backupkit.monitor.status import ShipperLive

#: The daemon tells the shipper it starts where to write its live state.
SHIPPER_STATE_ENV = "BACKUPKIT_SHIPPER_STATE"


def _beside(status_file: Path, suffix: str) -> Path:
    p = Path(status_file)
    return p.with_name(p.name.removesuffix(".json") + suffix)


def shipper_state_file(status_file: Path) -> Path:
    return _beside(status_file, ".shipper.json")


def history_file(status_file: Path) -> Path:
    return _beside(status_file, ".lag.json")


def shipper_state_path(status_file: Path | None) -> Path | None:
    """Where a shipper writes its live state: as its daemon says, else beside the policy's status
    file (a shipper started by cron), else nowhere (no policy file)."""
    env = os.environ.get(SHIPPER_STATE_ENV)
    if env:
        return Path(env)
    return shipper_state_file(status_file) if status_file is not None else None


def write_atomic(path: Path, data: bytes, fsync: bool = True) -> None:
    """Write a file so that a reader sees the old or the new content, never half of it (fsync:
    and the new content survives a crash; a state file rewritten twice a second does without)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)


class ShipperReporter:
    """Writes a running shipper's ShipperLive to its state file about twice a second, so that
    the daemon's metrics see the lag grow as soon as the shipper stops."""

    def __init__(self, live_fn: Callable[[], ShipperLive], path: Path | None, period: float = 0.5) -> None:
        self.live_fn = live_fn
        self.path = Path(path) if path else None
        self.period = period
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def write(self, state: str | None = None) -> None:
        if self.path is None:
            return
        live = self.live_fn()
        live.updated_at = time.time()
        if state:
            live.state = state
        try:
            write_atomic(self.path, json.dumps(live.to_dict(), sort_keys=True).encode(), fsync=False)
        except OSError:
            pass

    def start(self) -> ShipperReporter:
        if self.path is not None and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="shipper-reporter", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self.write()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.write("stopped")
