"""Worker threads that stop together: the first failure, or Ctrl-C, stops them all."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def run_workers(target: Callable[[Any], None], items: Sequence[Any], stop: threading.Event,
                name: str) -> None:
    """Run target(item) in one thread per item and wait; on an interrupt, set stop and re-raise.

    The main thread joins in short slices so that Ctrl-C reaches it while workers run."""
    threads = [threading.Thread(target=target, args=(item,), name=f"{name}-{i}", daemon=True)
               for i, item in enumerate(items)]
    for th in threads:
        th.start()
    try:
        for th in threads:
            while th.is_alive():
                th.join(0.2)
    except BaseException:
        stop.set()
        for th in threads:
            th.join(30)
        raise


def put_unless_stopped(q: queue.Queue, item: object, stop: threading.Event, poll: float = 0.1) -> bool:
    """Put item on a bounded queue, waiting while it is full, unless stop is set first (then
    False): a producer thread never blocks for good on a consumer that has gone away."""
    while not stop.is_set():
        try:
            q.put(item, timeout=poll)
            return True
        except queue.Full:
            continue
    return False


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_DONE = object()


class Stalled(TimeoutError):
    """A producer gave nothing for the time its consumer waits (prefetched's stall)."""


def prefetched(items: Iterable[T], depth: int = 2, name: str = "prefetch",
               stall: float | None = None) -> Iterator[T]:
    """Iterate items in a helper thread, up to depth items ahead, so that producing the next item
    (a query in the server, say) overlaps consuming this one (compressing and storing it).

    The producer's exception is raised here. Closing the iterator early (or an exception in the
    consumer) stops the producer and waits for it: whatever it uses is free again afterwards.
    stall: seconds without an item after which Stalled is raised and the producer (stuck in a
    call that does not answer: a frozen storage target) is left behind, never waited for."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        return put_unless_stopped(q, item, stop)

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - raised in the consumer
            put(_Failed(exc))

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    stalled = False
    since = time.monotonic()
    try:
        while True:
            try:
                item = q.get(timeout=0.2 if stall is None else min(0.2, stall))
            except queue.Empty:
                if not thread.is_alive() and q.empty():  # never wait for a producer that is gone
                    raise RuntimeError(f"{name}: the producer thread ended without a result") from None
                if stall is not None and time.monotonic() - since >= stall:
                    stalled = True
                    raise Stalled(f"{name}: nothing for {stall:g} s") from None
                continue
            since = time.monotonic()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        if not stalled:
            thread.join()
