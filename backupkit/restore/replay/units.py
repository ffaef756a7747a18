"""What a replay returns, and the units of work handed between its threads (bounded by bytes)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from backupkit.errors import TargetError
from backupkit.mysql.gtid import BinlogPoint
from backupkit.util.units import format_time

MIB = 1 << 20
Progress = Callable[..., None]


class ReplayError(TargetError):
    """The target refused a replayed transaction, or the replay pipeline broke."""


@dataclass
class ReachedPoint(BinlogPoint):
    """Where a replay ended: the last applied transaction (or the base's point if none); its
    time is that transaction's commit time."""

    @property
    def commit_time(self) -> float:
        return self.time

    @commit_time.setter
    def commit_time(self, value: float) -> None:
        self.time = value

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "pos": self.pos, "gtid": self.gtid,
                "commit_time": self.commit_time or None,
                "commit_time_text": format_time(self.commit_time) if self.commit_time else None}


@dataclass
class ReplayResult:
    """What a replay applied and how long it took."""

    reached: ReachedPoint
    transactions: int = 0
    native_transactions: int = 0
    text_transactions: int = 0
    segments: int = 0
    binlog_bytes: int = 0
    seconds: float = 0.0
    stopped_by: str = ""  # target | end
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"reached": self.reached.to_dict(), "transactions": self.transactions,
                "native_transactions": self.native_transactions,
                "text_transactions": self.text_transactions, "segments": self.segments,
                "binlog_bytes": self.binlog_bytes, "seconds": round(self.seconds, 3),
                "stopped_by": self.stopped_by, "notes": list(self.notes)}


def mysql_msg(exc: BaseException) -> str:
    args = getattr(exc, "args", ())
    if len(args) >= 2:
        return f"error {args[0]}: {args[1]}"
    return str(exc)



@dataclass
class TxnInfo:
    """Where a transaction stands in the source's binlog."""

    gtid: str
    file: str
    start: int
    end: int = 0
    commit_time: int = 0
    size: int = 0

    def where(self) -> str:
        return f"GTID {self.gtid or '-'} at {self.file}:{self.start}"


class ByteQueue:
    """A FIFO bounded by the bytes it holds (one item may always enter an empty queue)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: list[tuple[Any, int]] = []
        self.bytes = 0
        self.closed = False
        self.cond = threading.Condition()

    def put(self, item: Any, nbytes: int) -> None:
        with self.cond:
            while not self.closed and self.items and self.bytes + nbytes > self.limit:
                self.cond.wait()
            if self.closed:
                raise Aborted()
            self.items.append((item, nbytes))
            self.bytes += nbytes
            self.cond.notify_all()

    def get(self) -> Any:
        """The next item; raises Aborted once the queue is closed (the producer failed), so a
        consumer never waits for an item that can no longer come."""
        with self.cond:
            while not self.items and not self.closed:
                self.cond.wait()
            if self.closed:
                raise Aborted()
            item, n = self.items.pop(0)
            self.bytes -= n
            self.cond.notify_all()
            return item

    def get_ready(self, max_items: int, max_bytes: int) -> list[Any]:
        """Items already queued, without waiting: up to max_items of them and max_bytes in all
        (the first one whatever its size); raises Aborted once the queue is closed."""
        with self.cond:
            if self.closed:
                raise Aborted()
            out: list[Any] = []
            total = 0
            while self.items and len(out) < max_items and (
                    not out or total + self.items[0][1] <= max_bytes):
                item, n = self.items.pop(0)
                self.bytes -= n
                total += n
                out.append(item)
            if out:
                self.cond.notify_all()
            return out

    def close(self) -> None:
        """One side failed: wake both sides; producers and consumers get Aborted from now on."""
        with self.cond:
            self.closed = True
            for item, _ in self.items:
                release(item)
            self.items.clear()
            self.bytes = 0
            self.cond.notify_all()


class Aborted(Exception):
    """The other side of a ByteQueue failed and closed it."""


def release(item: Any) -> None:
    if isinstance(item, tuple) and item and item[0] == "text":
        item[1].close()
