"""What a mirror knows about its targets: which are down or lagging, what each served, and the events.

Every call to one target runs under the mirror's stall timeout (`MirrorHealth.call`): a target that
does not answer in time is marked down for `retry_after` seconds, and reads prefer the others.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from backupkit.errors import ObjectNotFound, StorageError, UsageError
from backupkit.storage.base import ObjectStore

log = logging.getLogger(__name__)

T = TypeVar("T")


_INFLIGHT_LOCK = threading.Lock()


@dataclass
class Target:
    """One storage target of a mirror and what the mirror has seen of it."""

    name: str
    store: ObjectStore
    down_until: float = 0.0
    lagging: bool = False
    lag_reason: str = ""
    last_error: str = ""
    served: int = 0
    written: int = 0
    failed_writes: int = 0
    bad_keys: set[str] = field(default_factory=set)
    #: writes still running (left behind once the quorum had the object), and since when
    inflight: dict[int, float] = field(default_factory=dict)

    def is_down(self) -> bool:
        return time.monotonic() < self.down_until

    def begin_write(self) -> int:
        token = id(object()) ^ int(time.monotonic_ns())
        with _INFLIGHT_LOCK:
            self.inflight[token] = time.monotonic()
        return token

    def end_write(self, token: int) -> None:
        with _INFLIGHT_LOCK:
            self.inflight.pop(token, None)

    def stuck_for(self) -> float:
        """Seconds the oldest write still running has taken (0 when none runs)."""
        with _INFLIGHT_LOCK:
            oldest = min(self.inflight.values(), default=None)
        return 0.0 if oldest is None else time.monotonic() - oldest

    def describe(self) -> str:
        return f"{self.name} ({self.store.describe()})" if self.name != self.store.url else self.name


class MirrorHealth:
    """The targets of a mirror and their health: the bookkeeping half of MirrorStore."""

    def __init__(self, targets: list[tuple[str, ObjectStore]], stall_timeout: float,
                 retry_after: float) -> None:
        if not targets:
            raise UsageError("a mirror needs at least one storage target")
        names = [n for n, _ in targets]
        if len(set(names)) != len(names):
            raise UsageError(f"storage target names must differ: {', '.join(names)}")
        self.targets = [Target(n, s) for n, s in targets]
        self.stall_timeout = stall_timeout
        self.retry_after = retry_after
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=1000)
        self._lock = threading.Lock()
        _OPENED.add(self)

    # -- bookkeeping ---------------------------------------------------------------------------
    def target(self, name: str) -> Target:
        for t in self.targets:
            if t.name == name:
                return t
        raise UsageError(f"no storage target {name!r}", f"targets: {', '.join(t.name for t in self.targets)}")

    def record(self, kind: str, target: str, key: str | None, reason: str, **extra: Any) -> None:
        with self._lock:
            self.events.append({"time": time.time(), "kind": kind, "target": target, "key": key,
                                "reason": reason, **extra})

    def mark_down(self, t: Target, exc: BaseException | str) -> None:
        msg = exc.one_line() if isinstance(exc, StorageError) else str(exc)
        first = not t.is_down()
        t.down_until = time.monotonic() + self.retry_after
        t.last_error = msg
        if first:
            log.warning("storage target %s is unreachable: %s", t.name, msg)
            self.record("down", t.name, None, msg)

    def mark_lagging(self, t: Target, key: str, reason: str) -> None:
        t.failed_writes += 1
        if not t.lagging:
            log.warning("storage target %s missed %s (%s); it is lagging until 'backupkit repo sync' "
                        "completes it", t.name, key, reason)
        t.lagging = True
        t.lag_reason = t.lag_reason or reason
        self.record("write_failed", t.name, key, reason)

    def note_failover(self, key: str, bad: str, good: str | None, reason: str,
                      corrupt: bool = False) -> None:
        """Record (and log) that key could not be read from target bad and came from good instead.

        A corrupt copy is remembered: later reads of that key prefer the other targets.
        """
        if good:
            log.warning("object %s: %s on target %s; read from target %s", key, reason, bad, good)
        self.record("read_failover", bad, key, reason, served_by=good)
        if corrupt:
            for t in self.targets:
                if t.name == bad:
                    t.bad_keys.add(key)

    def call(self, t: Target, fn: Callable[..., T], *args: Any) -> T:
        """Run fn in a helper thread; StorageError if the target does not answer within stall_timeout.

        With one target there is nowhere to fail over to, so the call runs inline.
        """
        if len(self.targets) == 1:
            return fn(*args)
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["r"] = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                box["e"] = exc

        th = threading.Thread(target=work, daemon=True, name=f"mirror-{t.name}")
        th.start()
        th.join(self.stall_timeout)
        if th.is_alive():
            err = StorageError(f"storage target {t.name} did not answer within {self.stall_timeout:g} s",
                               "it is unreachable or stalled")
            self.mark_down(t, err)
            raise err
        if "e" in box:
            exc = box["e"]
            if isinstance(exc, StorageError) and not isinstance(exc, ObjectNotFound):
                self.mark_down(t, exc)
            raise exc
        return box["r"]

    def read_order(self, key: str | None = None) -> list[Target]:
        """Targets to read from, preferred first: reachable ones in policy order, known-bad copies last.

        Targets that recently failed are left out while any other is up (they are tried again after
        retry_after seconds), so one dead region does not slow every read down.
        """
        def rank(i_t: tuple[int, Target]) -> tuple[int, int]:
            i, t = i_t
            return (1 if key is not None and key in t.bad_keys else 0, i)

        up = [(i, t) for i, t in enumerate(self.targets) if not t.is_down()]
        return [t for _, t in sorted(up or list(enumerate(self.targets)), key=rank)]

    def reachable(self) -> list[Target]:
        up = [t for t in self.targets if not t.is_down()]
        return up or list(self.targets)

    def report(self) -> dict[str, Any]:
        """Which target served what, what failed, and which targets are lagging."""
        return {
            "write_quorum": self.write_quorum,
            "targets": [{"name": t.name, "url": t.store.describe(), "down": t.is_down(),
                         "lagging": t.lagging, "lag_reason": t.lag_reason, "last_error": t.last_error,
                         "objects_served": t.served, "objects_written": t.written,
                         "failed_writes": t.failed_writes} for t in self.targets],
            "events": list(self.events),
        }

    #: How many targets must store an object (MirrorStore sets it).
    write_quorum: int


_OPENED: weakref.WeakSet[MirrorHealth] = weakref.WeakSet()


def session_report() -> dict[str, Any] | None:
    """What the mirrors this process opened saw: objects served per target and every fallback or
    failed write (for the output of any command; None when nothing noteworthy happened)."""
    served: dict[str, int] = {}
    events: list[dict[str, Any]] = []
    for m in list(_OPENED):
        if len(m.targets) < 2:
            continue
        for t in m.targets:
            served[t.name] = served.get(t.name, 0) + t.served
        events += [e for e in m.events if e["kind"] in ("read_failover", "write_failed", "caught_up")]
    if not events:
        return None
    return {"objects_served": served, "events": sorted(events, key=lambda e: e["time"])}
