"""The storing side of the shipper: cut segments are compressed, uploaded and committed in
order by one thread (data first, index entry last), while the stream keeps being read."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from backupkit.errors import IntegrityError, StorageError
from backupkit.repo import layout
from backupkit.repo.catalog import (
    SegmentInfo,
    binlog_order,
)
from backupkit.repo.codec import put_object
from backupkit.repo.rollups import OpenFileRollups, roll_up_finished
from backupkit.strategies.binlog.spill import SpillBuffer

log = logging.getLogger(__name__)

#: The head is replaced at least every this many commits (and whenever a chunk of the open file's
#: roll-up lands, a file is finished, or the run stops): readers find the later entries with one
#: LIST from the head's entry on (Catalog.last_segment), so one PUT per segment is not needed.
HEAD_EVERY = 16


@dataclass
class PendingSegment:
    """A cut segment waiting for the uploader."""

    head: bytes
    data: bytes | bytearray | SpillBuffer
    n: int
    fields: dict[str, Any]

    def chunks(self) -> Iterator[bytes]:
        yield self.head
        if not isinstance(self.data, SpillBuffer):
            yield self.data
        else:
            yield from self.data.chunks(self.n)

    def close(self) -> None:
        if isinstance(self.data, SpillBuffer):
            self.data.close()
        self.data = b""


class SegmentUploader(threading.Thread):
    """Compresses, uploads and commits segments in order, while the main thread keeps reading
    the stream. The queue is short, so memory stays bounded."""

    def __init__(self, store_fn: Callable[[PendingSegment], None], depth: int = 2) -> None:
        super().__init__(name="segment-uploader", daemon=True)
        self.store_fn = store_fn
        self.queue: queue.Queue[PendingSegment | None] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.aborted = threading.Event()

    def run(self) -> None:
        while True:
            item = self.queue.get()
            try:
                if item is None:
                    return
                if self.error is None and not self.aborted.is_set():
                    self.store_fn(item)
            except BaseException as exc:  # handed to the main thread
                self.error = exc
            finally:
                if item is not None:
                    item.close()
                self.queue.task_done()

    def check(self) -> None:
        """Raise the uploader's error in the calling thread."""
        if self.error is not None:
            raise self.error

    def submit(self, item: PendingSegment) -> None:
        while True:
            self.check()
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def drain(self) -> None:
        """Wait until every submitted segment is committed (or failed)."""
        while self.queue.unfinished_tasks:
            self.check()
            time.sleep(0.005)
        self.check()

    def close(self, abort: bool = False) -> None:
        """Stop the thread; with abort, segments still waiting are dropped, not committed."""
        if abort:
            self.aborted.set()
        while self.is_alive():
            try:
                self.queue.put(None, timeout=0.2)
                break
            except queue.Full:
                if self.aborted.is_set():
                    try:
                        dropped = self.queue.get_nowait()
                        if dropped is not None:
                            dropped.close()
                        self.queue.task_done()
                    except queue.Empty:
                        pass
        self.join(timeout=60)


class SegmentWriter:
    """The Shipper's storing half (a mixin): upload one segment, commit it, roll a finished
    file's index entries up."""

    def _store(self, item: PendingSegment) -> None:
        """Upload one segment and commit its index entry (in the uploader thread); retries
        while the storage is unreachable; never commits without a valid lease."""
        assert self.result is not None and self.lease is not None
        f = item.fields
        data_key = layout.segment_data(self.source_id, f["binlog_file"], f["start_pos"], f["end_pos"])
        backoff = 0.5
        attempt = 0
        while True:
            attempt += 1
            try:
                self.lease.ensure()
                obj = put_object(self.store, data_key, item.chunks(), level=self.opts.compression_level)
                info = SegmentInfo(object=obj, **f)
                self.lease.ensure()  # fencing: never commit without a valid lease
                self._commit(info)
                break
            except StorageError as exc:
                self.progress.upload_errors += 1
                if (self.stopping and attempt >= 5) or (self.uploader and self.uploader.aborted.is_set()):
                    raise
                self.notify(f"warning: storing segment {f['binlog_file']}:{f['start_pos']}-{f['end_pos']} "
                            f"failed: {exc.message}; retrying in {backoff:.1f}s")
                time.sleep(backoff)
                backoff = min(backoff * 2, self.opts.max_backoff)
        item.close()
        self.progress.committed()
        self.result.segments += 1
        self.result.bytes += item.n
        self.result.stored_bytes += obj.size
        self.result.transactions += info.transactions
        self.result.end = "{}:{}".format(*info.next_point())
        chunked = self._open_file.add(info)  # the open file's roll-up, in chunks (repo/rollups.py)
        if info.file_closed:
            self._roll_up(info.binlog_file)
        self._since_head += 1
        if chunked or info.file_closed or self._since_head >= HEAD_EVERY or self._rolled is None \
                or self._named != self._to_name(info):
            self._write_head(info)
        self._last_info = info
        if self.on_commit is not None:
            self.on_commit(info)

    def _roll_up(self, binlog_file: str) -> None:
        """A file is finished: write its roll-up (one object with every index entry of it) in the
        background, streamed from the file's chunks, the entries in no chunk yet that this run
        holds, and any other entry read (repo/rollups.py roll_up_finished: never every entry of
        the file at once). Once the head names it, readers read that file from it alone; until
        then (or when it fails: logged, never stopping shipping) they read the file through its
        chunks and listing."""
        tail = self._open_file.tail(binlog_file)
        self._unrolled.add(binlog_file)  # no later file is named by a head until it lands

        def work() -> None:
            try:
                if roll_up_finished(self.catalog, self.source_id, binlog_file, tail) \
                        and self._rolled is not None:
                    self._rolled.add(binlog_file)  # named by the next head
                    self._unrolled.discard(binlog_file)
            except Exception as exc:  # noqa: BLE001 - never stops shipping; readers list the file
                log.warning("roll-up of %s not written: %s", binlog_file, exc)

        self._rollups = [t for t in self._rollups if t.is_alive()]
        t = threading.Thread(target=work, name=f"rollup-{binlog_file}", daemon=True)
        self._rollups.append(t)
        t.start()

    @property
    def _open_file(self) -> OpenFileRollups:
        """The chunks of the open file's roll-up (made once the source is known)."""
        if self._open_rollups is None or self._open_rollups.source_id != self.source_id:
            self._open_rollups = OpenFileRollups(self.catalog, self.source_id)
        return self._open_rollups

    def _to_name(self, info: SegmentInfo) -> list[str]:
        """The rolled-up files a head written after info may name: finished files up to info's
        file, and none after a finished file whose roll-up has not landed (readers take the named
        files as every file before the rest)."""
        if self._rolled is None:
            return []
        rolled, unrolled = set(self._rolled), set(self._unrolled)  # roll-up threads add to them
        stop = min([info.binlog_file, *unrolled], key=lambda f: binlog_order(f, 0))
        return sorted(f for f in rolled if binlog_order(f, 0) < binlog_order(stop, 0)
                      or (f == stop and f not in unrolled))

    def _write_head(self, info: SegmentInfo) -> None:
        """Replace the source's head (repo/catalog.py: the newest entry and the finished roll-ups).
        Only a cache for readers: a failure is logged and costs them a listing. The chunks of a
        file the head names for the first time go after it (its whole roll-up serves)."""
        try:
            if self._rolled is None:  # the roll-ups earlier runs wrote, once per run
                head = self.catalog.head(self.source_id)
                self._named = sorted(head.rollups) if head is not None else []  # chunks gone
                self._rolled = self.catalog.settle_rollups(self.source_id)
            named = self._to_name(info)
            self.catalog.write_head(info, named)
            self._since_head = 0
            self._head_key = info.key
            fresh, self._named = set(named) - set(self._named), named
            for f in sorted(fresh):
                self._open_file.forget(f)
        except (StorageError, IntegrityError) as exc:
            log.warning("head of %s not written: %s", self.source_id, exc.message)

    def _final_head(self) -> None:
        """At the end of a run: the head names the newest committed segment."""
        if self._last_info is not None and self._head_key != self._last_info.key:
            self._write_head(self._last_info)

    def _commit(self, info: SegmentInfo) -> None:
        """Commit the index entry once; an earlier attempt that landed counts as done."""
        try:
            self.catalog.commit_segment(info)
            return
        except StorageError:
            pass
        try:
            existing = self.catalog.read_manifest(info.key)
        except StorageError:
            existing = None
        if existing is None:
            self.catalog.commit_segment(info)  # raises again if the storage is still down
            return
        if existing.get("object", {}).get("sha256") != info.object.sha256:
            raise IntegrityError(f"segment {info.key} was committed by another writer",
                                 "two shippers wrote the same source; check the lease")
