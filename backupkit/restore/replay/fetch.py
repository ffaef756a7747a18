"""Fetching ahead: segment objects downloaded in parallel, decoded and checksum-verified into
spooled temporary files, and handed to the parser in order. Only verified bytes are handed on.

The cost of a restore over many small segments is per object (a request's round trip), not per
byte, so ``workers`` threads fetch at once. Bounded: at most ``ahead`` segments are fetched or
waiting at a time, and at most ``max_bytes`` of them once decoded (a larger one alone); each
holds at most ``memory // ahead`` bytes in memory, the rest spills to a temporary file. The
first failure stops the fetching of later segments; the parser still gets every segment before
the failed one, then the error.

The segments come from an iterator, taken as they are claimed (a plan over a month reads one
binlog file's index at a time as the replay reaches it: RestorePlan.iter_segments). An error
raised by the iterator counts as the failure of the segment it was to give.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Iterable
from typing import BinaryIO

from backupkit.errors import BackupkitError, IntegrityError
from backupkit.repo.catalog import SegmentInfo
from backupkit.repo.codec import iter_object
from backupkit.repo.stretches import Stretch
from backupkit.restore.replay.units import MIB
from backupkit.storage.base import ObjectStore

#: Segments fetched at once, and fetched or waiting at most (restore --latest from S3 over many
#: one-second segments: the request round trip dominates; bench/compact.py).
FETCH_WORKERS = 8
FETCH_AHEAD = 32
#: Memory the waiting segments may hold in all; the rest of each spills to a temporary file.
FETCH_MEMORY = 64 * MIB
#: Decoded bytes fetched ahead at most (memory and temporary files together; one segment larger
#: than this is still fetched, alone): compacted segments hold up to 256 MiB each.
FETCH_BYTES = 512 * MIB


class Fetched:
    """One verified segment, decoded into a spooled temporary file."""

    def __init__(self, index: int, seg: SegmentInfo, spool: BinaryIO, size: int) -> None:
        self.index = index
        self.seg = seg
        self.spool = spool
        self.size = size


class Fetcher:
    """Downloads segments with ``workers`` threads, at most ``ahead`` segments before the parser,
    and hands them on in plan order through ``get()``."""

    def __init__(self, store: ObjectStore, segments: Iterable[SegmentInfo], ahead: int = FETCH_AHEAD,
                 on_bytes: Callable[[int], None] | None = None, workers: int = FETCH_WORKERS,
                 memory: int = FETCH_MEMORY, max_bytes: int = FETCH_BYTES) -> None:
        self.store = store
        self._source = iter(segments)
        self._pull_lock = threading.Lock()  # one worker takes from the iterator at a time
        #: segments taken from the iterator and not yet handed on, by index
        self.segments: dict[int, SegmentInfo] = {}
        self._total: int | None = None  # how many there are, once the iterator ended
        self.ahead = max(1, ahead)
        self.on_bytes = on_bytes
        self.spool_memory = max(MIB, memory // self.ahead)
        n = max(1, min(workers, self.ahead, len(segments) if isinstance(segments, list | tuple) and segments
                       else workers))
        self._threads = [threading.Thread(target=self._work, name=f"backupkit-fetch-{i}", daemon=True)
                         for i in range(n)]
        self._cond = threading.Condition()
        self._stop_evt = threading.Event()
        self._next_claim = 0  # the next segment index a worker takes
        self._next_out = 0  # the next segment index get() hands on
        self._done: dict[int, Fetched | BaseException] = {}
        self._failed_at: int | None = None  # the first segment whose fetch failed
        self.max_bytes = max_bytes
        self._out_bytes = 0  # decoded bytes of the segments claimed and not yet handed on

    # -- the workers --------------------------------------------------------------------------
    def start(self) -> None:
        for t in self._threads:
            t.start()

    def is_alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def _pull(self, i: int) -> bool:
        """Take segment i from the iterator (outside the condition: it may read an index); False
        at its end. Its error is segment i's failure."""
        with self._cond:
            if i in self.segments or (self._total is not None and i >= self._total) or \
                    self._failed_at is not None:
                return i in self.segments
        try:
            seg = next(self._source, None)
            if isinstance(seg, Stretch):  # a plan's item: RestorePlan.iter_segments expands them
                if seg.count != 1:
                    raise ValueError("the fetcher takes segments: pass RestorePlan.iter_segments()")
                seg = seg.head
        except BaseException as exc:  # handed to the parser after every segment before it
            with self._cond:
                self._total = i + 1
                self._failed_at = i if self._failed_at is None else min(self._failed_at, i)
                self._done[i] = exc
                self.segments[i] = None  # type: ignore[assignment]
                self._next_claim = max(self._next_claim, i + 1)
                self._cond.notify_all()
            return False
        with self._cond:
            if seg is None:
                self._total = i
            else:
                self.segments[i] = seg
            self._cond.notify_all()
        return seg is not None

    def _claim(self) -> int | None:
        """The next index to fetch, waiting while ``ahead`` segments are out; None to stop."""
        with self._pull_lock:
            while True:
                with self._cond:
                    i = self._next_claim
                    if self._stop_evt.is_set() or (self._total is not None and i >= self._total) or \
                            (self._failed_at is not None and i > self._failed_at):
                        return None
                    waiting = i >= self._next_out + self.ahead
                    if waiting:
                        self._cond.wait(0.2)
                        continue
                if not self._pull(i):
                    return None
                with self._cond:
                    size = self.segments[i].object.raw_size
                    if i == self._next_out or self._out_bytes + size <= self.max_bytes:
                        self._next_claim += 1
                        self._out_bytes += size
                        return i
                    self._cond.wait(0.2)

    def _work(self) -> None:
        while True:
            i = self._claim()
            if i is None:
                return
            try:
                item: Fetched | BaseException | None = self._fetch(i)
            except BaseException as exc:  # handed to the parser, which raises it
                item = exc
            with self._cond:
                if item is None or self._stop_evt.is_set():
                    if isinstance(item, Fetched):
                        item.spool.close()
                    return
                self._done[i] = item
                if isinstance(item, BaseException) and (self._failed_at is None or i < self._failed_at):
                    self._failed_at = i
                self._cond.notify_all()

    def _fetch(self, i: int) -> Fetched | None:
        seg = self.segments[i]
        spool = tempfile.SpooledTemporaryFile(max_size=self.spool_memory)  # noqa: SIM115 - handed on
        size = 0
        try:
            for block in iter_object(self.store, seg.object, read_size=MIB):
                if self._stop_evt.is_set():
                    spool.close()
                    return None
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
        return Fetched(i, seg, spool, size)

    # -- the parser's side ----------------------------------------------------------------------
    def get(self) -> Fetched | None:
        """The next verified segment, None at the end; raises what failed in its fetch."""
        with self._cond:
            i = self._next_out
            while i not in self._done:
                if self._total is not None and i >= self._total:
                    return None
                if not self.is_alive():  # ended without a word: never wait
                    raise BackupkitError("the segment fetcher stopped unexpectedly")
                self._cond.wait(0.2)
            item = self._done.pop(i)
            seg = self.segments.pop(i, None)
            self._next_out += 1
            if seg is not None:
                self._out_bytes -= seg.object.raw_size
            self._cond.notify_all()
        if isinstance(item, BaseException):
            self.stop()
            raise item
        return item

    def stop(self) -> None:
        """Stop fetching and release every spool still waiting (the workers end promptly)."""
        self._stop_evt.set()
        with self._cond:
            waiting, self._done = list(self._done.values()), {}
            self._cond.notify_all()
        for item in waiting:
            if isinstance(item, Fetched):
                item.spool.close()
