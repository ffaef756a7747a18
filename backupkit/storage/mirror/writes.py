"""Writes of a mirror: one object streamed to every target at once, through one thread and a small
bounded queue per target; a target that fails or stalls is dropped from that write.

Once the write quorum has stored the object, the write returns after at most ``LAG_GRACE``
seconds more: a slower target finishes (or not) in the background and is recorded as lagging,
to be completed by the mirror's background catch-up. A slow target never holds the writer up."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

from backupkit.errors import StorageError
from backupkit.storage.base import ObjectInfo
from backupkit.storage.mirror.health import MirrorHealth, Target

_END = object()
#: Seconds a write still waits for the other targets once the quorum has stored the object.
LAG_GRACE = 0.5


class _Aborted(Exception):
    """Raised inside a target's upload stream to abandon it (the object never becomes visible)."""


class _Feed:
    """The upload of one object to one target, fed through a bounded queue by the writing thread."""

    def __init__(self, target: Target, key: str, depth: int) -> None:
        self.target = target
        self.key = key
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.abort = threading.Event()
        self.done = threading.Event()
        self.result: ObjectInfo | None = None
        self.error: BaseException | None = None
        self.ended_at: float | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"mirror-put-{target.name}")

    def _chunks(self) -> Iterator[bytes]:
        while True:
            if self.abort.is_set():
                raise _Aborted(self.key)
            try:
                item = self.q.get(timeout=0.2)
            except queue.Empty:
                continue
            if item is _END:
                if self.abort.is_set():
                    raise _Aborted(self.key)
                return
            yield item

    def _run(self) -> None:
        token = self.target.begin_write()
        try:
            self.result = self.target.store.put(self.key, self._chunks())
        except BaseException as exc:  # noqa: BLE001 - reported by the writer
            self.error = exc
        finally:
            self.target.end_write(token)
            self.done.set()

    def send(self, item: object, timeout: float) -> bool:
        """Queue item; False if the target stopped taking data or made no progress for timeout s."""
        deadline = time.monotonic() + timeout
        while True:
            if self.done.is_set():
                return False
            try:
                self.q.put(item, timeout=min(0.2, max(0.0, deadline - time.monotonic())))
                return True
            except queue.Full:
                if time.monotonic() >= deadline:
                    return False


def tee(mirror: MirrorHealth, writers: list[Target], key: str, chunks: Iterator[bytes],
        quorum: int, queue_depth: int) -> dict[str, Any]:
    """Stream chunks to every writer at once; drop a writer that fails or stalls.

    Results (ObjectInfo or the error) by target name; StorageError once fewer than quorum take it."""
    feeds = [_Feed(t, key, queue_depth) for t in writers]
    for f in feeds:
        f.thread.start()
    active = list(feeds)
    results: dict[str, Any] = {}

    def drop(f: _Feed, reason: str) -> None:
        f.abort.set()
        active.remove(f)
        err = f.error if isinstance(f.error, StorageError) else StorageError(reason)
        if f.error is not None and not isinstance(f.error, StorageError):
            err = StorageError(f"{reason}: {f.error}")
        results[f.target.name] = err
        mirror.mark_down(f.target, err)

    def fail_all(exc: BaseException) -> None:
        for f in feeds:
            f.abort.set()
        for f in feeds:  # let the writers abandon their uploads (briefly; a stalled one is left)
            f.done.wait(2.0)

    try:
        for block in chunks:
            for f in list(active):
                if not f.send(block, mirror.stall_timeout):
                    drop(f, f"storage target {f.target.name} stopped taking data for {key!r}"
                         if not f.done.is_set() or f.error is None else "upload failed")
            if len(active) < quorum:
                why = "; ".join(f"{n}: {e.message}" for n, e in results.items()
                                if isinstance(e, StorageError))
                raise StorageError(f"cannot write {key!r}: only {len(active)} of {len(mirror.targets)} "
                                   f"targets take it, fewer than the write quorum {quorum} "
                                   f"({why})", "bring the targets back, or lower storage.write_quorum")
        for f in list(active):
            if not f.send(_END, mirror.stall_timeout):
                drop(f, f"storage target {f.target.name} stopped taking data for {key!r}")
            else:
                f.ended_at = time.monotonic()
        # Wait for the uploads to finish: until the quorum has stored the object and LAG_GRACE
        # more, or stall_timeout. A target still writing then is left to finish in the background.
        start = time.monotonic()
        quorum_at: float | None = None
        while active:
            for f in list(active):
                if f.done.is_set():
                    if f.error is not None:
                        drop(f, f"upload of {key!r} to {f.target.name} failed")
                    else:
                        active.remove(f)
                        results[f.target.name] = f.result
            ok = sum(1 for r in results.values() if not isinstance(r, BaseException))
            now = time.monotonic()
            if ok >= quorum and quorum_at is None:
                quorum_at = now
            if not active:
                break
            if (quorum_at is not None and now - quorum_at >= LAG_GRACE) \
                    or now - start >= mirror.stall_timeout:
                for f in list(active):
                    active.remove(f)
                    results[f.target.name] = StorageError(
                        f"storage target {f.target.name} had not finished {key!r} "
                        + ("when the write quorum had it" if quorum_at is not None else
                           f"within {mirror.stall_timeout:g} s"))
                    if quorum_at is None:
                        f.abort.set()
                        mirror.mark_down(f.target, results[f.target.name])
                break
            active[0].done.wait(0.01)
    except BaseException as exc:
        fail_all(exc)
        raise
    return results
