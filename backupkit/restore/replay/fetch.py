"""Fetching ahead: segment objects downloaded, decoded and checksum-verified into spooled
temporary files, at most ``ahead`` segments before the parser. Only verified bytes are handed on."""

from __future__ import annotations

import queue
import tempfile
import threading
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

from backupkit.errors import BackupkitError, IntegrityError
from backupkit.repo.catalog import SegmentInfo
from backupkit.repo.codec import iter_object
from backupkit.restore.replay.units import MIB
from backupkit.storage.base import ObjectStore
from backupkit.util.workers import put_unless_stopped


class Fetched:
    """One verified segment, decoded into a spooled temporary file."""

    def __init__(self, index: int, seg: SegmentInfo, spool: BinaryIO, size: int) -> None:
        self.index = index
        self.seg = seg
        self.spool = spool
        self.size = size


class Fetcher(threading.Thread):
    """Downloads segments in order; at most ``ahead`` verified segments wait at a time."""

    def __init__(self, store: ObjectStore, segments: Sequence[SegmentInfo], ahead: int = 2,
                 on_bytes: Callable[[int], None] | None = None) -> None:
        super().__init__(name="backupkit-fetch", daemon=True)
        self.store = store
        self.segments = list(segments)
        self.out: queue.Queue = queue.Queue(maxsize=max(1, ahead))
        self.on_bytes = on_bytes
        self._stop_evt = threading.Event()

    def run(self) -> None:
        try:
            for i, seg in enumerate(self.segments):
                spool = tempfile.SpooledTemporaryFile(max_size=32 * MIB)  # noqa: SIM115 - handed on
                size = 0
                try:
                    for block in iter_object(self.store, seg.object, read_size=MIB):
                        if self._stop_evt.is_set():
                            spool.close()
                            return
                        spool.write(block)
                        size += len(block)
                        if self.on_bytes:
                            self.on_bytes(len(block))
                except BaseException:
                    spool.close()
                    raise
                if size != seg.object.raw_size:
                    spool.close()
                    raise IntegrityError(f"segment {seg.object.key!r} decodes to {size} bytes, "
                                         f"its index says {seg.object.raw_size}")
                spool.seek(0)
                if not self._put(Fetched(i, seg, spool, size)):
                    spool.close()
                    return
            self._put(None)
        except BaseException as exc:  # handed to the parser, which raises it
            self._put(exc)

    def _put(self, item: Any) -> bool:
        return put_unless_stopped(self.out, item, self._stop_evt, poll=0.2)

    def get(self) -> Fetched | None:
        """The next verified segment, None at the end; raises what failed in the fetcher."""
        while True:
            try:
                item = self.out.get(timeout=0.2)
                break
            except queue.Empty:
                if not self.is_alive() and self.out.empty():  # ended without a word: never wait
                    raise BackupkitError("the segment fetcher stopped unexpectedly") from None
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self) -> None:
        self._stop_evt.set()
        while True:  # release spools still waiting
            try:
                item = self.out.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Fetched):
                item.spool.close()
