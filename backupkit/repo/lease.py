"""The shipper lease: one small object in the repository so that only one shipper writes a source.

Taken with a conditional create, renewed with a conditional replace (compare-and-swap on the
object's tag), taken over by a standby only after it expired. The holder checks before every
commit that its lease is still valid by its own monotonic clock, with a safety margin, so that
a paused holder cannot write after a standby took over.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass

from backupkit.errors import BackupkitError, ObjectNotFound, StorageError
from backupkit.repo import layout
from backupkit.storage.base import ObjectStore

log = logging.getLogger(__name__)


class LeaseLost(BackupkitError):
    """Another shipper took the lease: this one must stop writing at once."""


class LeaseHeld(BackupkitError):
    """Another live shipper holds the lease."""


def _pid_namespace() -> str:
    """This process's PID namespace (containers on one host may share a hostname)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


@dataclass
class LeaseRecord:
    """The lease object's content."""

    source_id: str
    holder: str
    host: str
    pid: int
    acquired_at: float
    renewed_at: float
    expires_at: float
    lease_seconds: float
    released: bool = False
    pidns: str = ""  # the holder's PID namespace: pids compare only within one

    def encode(self) -> bytes:
        return (json.dumps({"type": "lease", **asdict(self)}, sort_keys=True) + "\n").encode()

    @classmethod
    def decode(cls, data: bytes) -> LeaseRecord | None:
        try:
            d = json.loads(data)
            return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        except (ValueError, TypeError, KeyError):
            return None

    def free(self, now: float, grace: float) -> bool:
        """True when another shipper may take this lease."""
        if self.released or now > self.expires_at + grace:
            return True
        # A holder on this very host (and PID namespace) whose process is gone cannot write.
        if self.host == socket.gethostname() and self.pidns and self.pidns == _pid_namespace() \
                and self.pid and self.pid != os.getpid():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
            try:
                with open(f"/proc/{self.pid}/stat") as fh:
                    return fh.read().split()[2] == "Z"
            except OSError:
                return True
        return False


class Lease:
    """This process's claim on the shipper lease of one source."""

    def __init__(self, store: ObjectStore, source_id: str, lease_seconds: float = 15.0,
                 holder: str | None = None, grace: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.source_id = source_id
        self.key = layout.shipper_lease(source_id)
        self.lease_seconds = lease_seconds
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.grace = grace
        self.clock = clock
        self.margin = max(0.5, lease_seconds * 0.2)
        self.etag = ""
        self.acquired_at = 0.0
        self._valid_until = 0.0  # monotonic
        self.lost = False
        #: what happened when the lease was lost, for the log: taken over, or its object gone
        self.lost_reason = ""
        self.held = False
        self._lock = threading.Lock()

    # -- records ------------------------------------------------------------------
    def _record(self, released: bool = False) -> LeaseRecord:
        now = self.clock()
        return LeaseRecord(self.source_id, self.holder, socket.gethostname(), os.getpid(),
                           self.acquired_at or now, now, 0.0 if released else now + self.lease_seconds,
                           self.lease_seconds, released, _pid_namespace())

    def current(self) -> tuple[LeaseRecord | None, str]:
        """The stored lease and its tag (None, "" when there is none)."""
        try:
            data, etag = self.store.read_small(self.key)
        except ObjectNotFound:
            return None, ""
        return LeaseRecord.decode(data), etag

    def _confirm(self, started: float) -> bool:
        """Re-read the lease after a write: it must be ours; remember its tag."""
        rec, etag = self.current()
        if rec is None or rec.holder != self.holder:
            return False
        self.etag = etag
        self._valid_until = started + self.lease_seconds
        return True

    # -- acquire, renew, release ------------------------------------------------------------
    def try_acquire(self) -> bool:
        """Take the lease if it is free; True when this process holds it now."""
        with self._lock:
            started = time.monotonic()
            self.acquired_at = self.clock()
            if self.store.put_if_absent(self.key, self._record().encode()):
                ok = self._confirm(started)
            else:
                rec, etag = self.current()
                if rec is not None and rec.holder == self.holder:
                    ok = self._confirm(started)
                elif rec is None and not etag:
                    return False  # deleted meanwhile: try again next time
                elif rec is None or rec.free(self.clock(), self.grace):
                    ok = self.store.replace_if_match(self.key, self._record().encode(), etag) \
                        and self._confirm(started)
                else:
                    return False
            self.held = ok
            self.lost = False if ok else self.lost
            return ok

    def renew(self) -> bool:
        """Extend the lease; False (and lost=True) when another shipper took it.

        The lease follows the storage target that holds leases (a mirror's first healthy
        target): when that target changed, the record found there is not the one renewed last.
        While this holder's lease is still valid by its own clock it moves the lease there: it
        creates it where there is none, and replaces its own older record or an expired one.
        A valid record of another holder there means the lease is lost."""
        with self._lock:
            if not self.held:
                return False
            started = time.monotonic()
            if self.store.replace_if_match(self.key, self._record().encode(), self.etag) \
                    and self._confirm(started):
                return True
            rec, etag = self.current()
            if self.remaining() > 0 and self._move(rec, etag, started):
                return True
            rec, _ = self.current()
            self.lost = True
            self.held = False
            self.lost_reason = (
                f"was taken over by {rec.holder}" if rec is not None and rec.holder != self.holder else
                "could not be renewed in time on the storage target that holds leases")
            return False

    def _move(self, rec: LeaseRecord | None, etag: str, started: float) -> bool:
        """Re-establish this holder's lease on the target that holds leases now (see renew)."""
        if rec is None and not etag:
            ok = self.store.put_if_absent(self.key, self._record().encode())
        elif rec is None or rec.holder == self.holder or rec.free(self.clock(), self.grace):
            ok = self.store.replace_if_match(self.key, self._record().encode(), etag)
        else:
            return False
        if ok and self._confirm(started):
            log.warning("the shipper lease of %s moved to the storage target that holds leases now",
                        self.source_id)
            return True
        return False

    def release(self) -> None:
        """Give the lease up at a clean exit so a standby takes over at once."""
        with self._lock:
            if not self.held:
                return
            try:
                self.store.replace_if_match(self.key, self._record(released=True).encode(), self.etag)
            except StorageError as exc:
                log.warning("could not release the shipper lease: %s", exc)
            self.held = False

    # -- checks -------------------------------------------------------------------------
    def remaining(self) -> float:
        """Seconds this holder may still write before it must have renewed."""
        return self._valid_until - self.margin - time.monotonic()

    def valid(self) -> bool:
        return self.held and not self.lost and self.remaining() > 0

    def ensure(self) -> None:
        """Fencing: raise LeaseLost unless this process may write now (renews when due)."""
        if self.lost:
            raise LeaseLost(f"the shipper lease of {self.source_id} {self.lost_reason or 'was lost'}")
        if self.remaining() < self.lease_seconds / 4:
            try:
                self.renew()
            except StorageError:
                pass  # the storage is unreachable: judge by what we know
        if not self.valid():
            if self.lost:
                raise LeaseLost(f"the shipper lease of {self.source_id} {self.lost_reason or 'was lost'}")
            raise LeaseLost(f"the shipper lease of {self.source_id} could not be renewed in time")


class LeaseKeeper(threading.Thread):
    """Renews a held lease in the background every third of its period."""

    def __init__(self, lease: Lease) -> None:
        super().__init__(name="lease-keeper", daemon=True)
        self.lease = lease
        self._stop_event = threading.Event()

    def run(self) -> None:
        interval = max(0.2, self.lease.lease_seconds / 3)
        while not self._stop_event.wait(interval):
            try:
                if not self.lease.renew():
                    log.warning("the shipper lease of %s %s", self.lease.source_id,
                                self.lease.lost_reason or "was lost")
                    return
            except StorageError as exc:
                log.warning("cannot renew the shipper lease (will retry): %s", exc)
            except Exception as exc:  # never let the keeper die silently
                log.warning("lease renewal failed: %s", exc)

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=5)
