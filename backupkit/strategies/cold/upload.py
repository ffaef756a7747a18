"""Tar roots into one compressed object in the store, reading and uploading in two threads."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

from backupkit.errors import BackupkitError
from backupkit.repo.codec import StoredObject, put_object
from backupkit.storage.base import ObjectStore
from backupkit.strategies.cold.tar import (
    CopyCancelled,
    Root,
    TarWriter,
    WriteStats,
)
from backupkit.util.ratelimit import Limiter, idle_io_priority, throttle
from backupkit.util.workers import put_unless_stopped

_END = object()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class ArchiveUpload:
    """Tar roots into one zstd object, in two threads joined by a bounded queue.

    The reader thread walks, reads and hashes the files; the upload thread compresses and
    stores. ``wait_read()`` returns once every file has been read: from then on the source files
    are no longer needed (a cold backup restarts the server there) while the tail of the
    archive is compressed, stored and made durable. ``wait_done()`` gives the stored object."""

    def __init__(self, store: ObjectStore, key: str, roots: list[Root], *, level: int, threads: int,
                 on_bytes: Callable[[int], None] | None = None, depth: int = 16,
                 limiter: Limiter | None = None, idle_io: bool = False) -> None:
        self.store, self.key, self.level, self.threads = store, key, level, threads
        self.limiter, self.idle_io = limiter, idle_io
        self.io_idle = False  # the reader thread runs in the idle I/O class
        self.cancelled = threading.Event()
        self.read_done = threading.Event()
        self.finished = threading.Event()
        self.writer = TarWriter(roots, cancel=self.cancelled, on_bytes=on_bytes)
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.result: StoredObject | None = None
        self._threads: list[threading.Thread] = []

    # -- threads
    def _put(self, item) -> bool:
        return put_unless_stopped(self.queue, item, self.cancelled)

    def _produce(self) -> None:
        if self.idle_io:
            self.io_idle = idle_io_priority()
        try:
            for chunk in throttle(self.writer, self.limiter):
                if self.writer.files_read:
                    self.read_done.set()
                if not self._put(chunk):
                    return
            self.read_done.set()
            self._put(_END)
        except CopyCancelled:
            return
        except BaseException as exc:  # handed to the upload thread, which raises it
            self._put(_Failed(exc))

    def _consume(self) -> Iterator[bytes]:
        while True:
            if self.cancelled.is_set():
                raise CopyCancelled()
            try:
                item = self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item

    def _upload(self) -> None:
        try:
            self.result = put_object(self.store, self.key, self._consume(), level=self.level,
                                     threads=self.threads)
        except BaseException as exc:  # noqa: BLE001 - reported by wait_*()
            self.error = exc
            self.cancelled.set()
        finally:
            self.finished.set()

    # -- control
    def start(self) -> ArchiveUpload:
        self._threads = [threading.Thread(target=self._produce, name="cold-read", daemon=True),
                         threading.Thread(target=self._upload, name="cold-upload", daemon=True)]
        for t in self._threads:
            t.start()
        return self

    def _raise(self) -> None:
        if self.error is not None and not isinstance(self.error, CopyCancelled):
            raise self.error

    def wait_read(self) -> WriteStats:
        """Block (interruptibly) until every file is read; raise what failed meanwhile."""
        while not self.read_done.wait(0.05):
            if self.finished.is_set():
                self._raise()
                raise BackupkitError("the archive ended before every file was read")
        return self.writer.stats

    def wait_done(self) -> tuple[StoredObject, WriteStats]:
        while not self.finished.wait(0.05):
            pass
        self._raise()
        if self.result is None:
            raise BackupkitError("the archive upload was cancelled")
        return self.result, self.writer.stats

    def cancel(self) -> None:
        """Stop both threads; a partial object is never visible (the store aborts it)."""
        self.cancelled.set()

    def join(self, timeout: float = 60) -> None:
        for t in self._threads:
            if t.ident is not None:  # started
                t.join(timeout)


def stream_roots(store: ObjectStore, key: str, roots: list[Root], *, level: int, threads: int,
                 on_bytes: Callable[[int], None] | None = None, limiter: Limiter | None = None,
                 idle_io: bool = False, io_info: dict | None = None) -> tuple[StoredObject, WriteStats]:
    """Tar roots into one zstd object and wait until it is stored (files read at most at the
    limiter's rate, at idle I/O priority when asked; io_info gets {"idle_io": bool})."""
    up = ArchiveUpload(store, key, roots, level=level, threads=threads, on_bytes=on_bytes,
                       limiter=limiter, idle_io=idle_io).start()
    try:
        done = up.wait_done()
        if io_info is not None:
            io_info["idle_io"] = up.io_idle
        return done
    except BaseException:
        up.cancel()
        raise
    finally:
        up.join()
