"""Continuous binlog shipping: stream the source's raw binlog into repository segments.

The shipper connects as a replica (COM_BINLOG_DUMP), keeps the raw event bytes, and cuts a
segment at a transaction boundary every sync interval (or when it reaches the size limit).
Each segment is a valid binlog file: the magic, the file's format description event, then the
events [start_pos, end_pos) of ONE binlog file, byte-identical to the server's file. The data
object is written first, its index entry last (the commit). The resume point is read back from
the repository, so a shipper killed at any moment restarts without a gap or a duplicate.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import struct
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from backupkit.errors import BackupkitError, IntegrityError, SourceError, StorageError, UsageError
from backupkit.mysql import binlog_events as be
from backupkit.mysql.binlog_stream import BinlogStream, DumpError, StreamEnd, StreamLost, default_server_id
from backupkit.mysql.connection import ConnSpec, connect
from backupkit.mysql.server import ServerFacts, current_point, gtid_position, server_facts
from backupkit.repo import layout
from backupkit.repo.catalog import (
    BinlogPoint,
    Catalog,
    GapInfo,
    SegmentInfo,
    encode_manifest,
)
from backupkit.repo.codec import put_object
from backupkit.repo.coverage import build_runs, next_binlog_name
from backupkit.repo.lease import Lease, LeaseHeld, LeaseKeeper, LeaseLost
from backupkit.storage.base import ObjectStore

log = logging.getLogger(__name__)

MIB = 1 << 20


class BinlogGapError(SourceError):
    """The source no longer has binlog the repository still needs (purged before shipping)."""


# -- GTID state ---------------------------------------------------------------------
class GtidState:
    """The GTID position after a point: MariaDB domain-server-seq per domain, or a MySQL set."""

    def __init__(self, flavor: str = "mariadb", text: str = "") -> None:
        self.flavor = flavor
        self.domains: dict[int, tuple[int, int]] = {}
        self.sets: dict[str, list[list[int]]] = {}
        if text:
            self.update_text(text)

    def update_text(self, text: str) -> None:
        for part in (p.strip() for p in text.replace("\n", "").split(",")):
            if not part:
                continue
            if self.flavor == "mariadb" and re.fullmatch(r"\d+-\d+-\d+", part):
                d, s, n = (int(x) for x in part.split("-"))
                self.domains[d] = (s, n)
            elif ":" in part:
                sid, _, ranges = part.partition(":")
                for r in ranges.split(":"):
                    a, _, b = r.partition("-")
                    if a.isdigit():
                        self._add_range(sid.lower(), int(a), int(b or a))

    def set_list(self, entries: list[tuple[int, int, int]]) -> None:
        """A MariaDB GTID list event: the whole state at that point."""
        self.domains = {d: (s, n) for d, s, n in entries}

    def add(self, gtid: str) -> None:
        if not gtid:
            return
        if self.flavor == "mariadb":
            d, s, n = (int(x) for x in gtid.split("-"))
            self.domains[d] = (s, n)
        else:
            sid, _, gno = gtid.rpartition(":")
            self._add_range(sid.lower(), int(gno), int(gno))

    def _add_range(self, sid: str, a: int, b: int) -> None:
        ivs = self.sets.setdefault(sid, [])
        if ivs and ivs[-1][1] + 1 >= a and ivs[-1][0] <= a:
            ivs[-1][1] = max(ivs[-1][1], b)
            return
        ivs.append([a, b])
        ivs.sort()
        merged: list[list[int]] = []
        for lo, hi in ivs:
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        self.sets[sid] = merged

    def text(self) -> str:
        if self.flavor == "mariadb":
            return ",".join(f"{d}-{s}-{n}" for d, (s, n) in sorted(self.domains.items()))
        return ",".join(sid + "".join(f":{a}" if a == b else f":{a}-{b}" for a, b in ivs)
                        for sid, ivs in sorted(self.sets.items()))

    def copy(self) -> GtidState:
        other = GtidState(self.flavor)
        other.domains = dict(self.domains)
        other.sets = {k: [list(iv) for iv in v] for k, v in self.sets.items()}
        return other


# -- a byte buffer that spills to disk ---------------------------------------------------
class SpillBuffer:
    """Appendable bytes, in memory up to a limit, then in a temporary file (bounded memory even
    for a transaction of many gigabytes, which is never split)."""

    def __init__(self, limit: int = 64 * MIB) -> None:
        self.limit = limit
        self.mem = bytearray()
        self.file: Any = None
        self.size = 0

    def __len__(self) -> int:
        return len(self.mem) if self.file is None else self.size

    @property
    def in_memory(self) -> bool:
        return self.file is None

    def append(self, data: bytes | memoryview) -> None:
        if self.file is None:
            if len(self.mem) + len(data) <= self.limit:
                self.mem += data
                return
            self.file = tempfile.TemporaryFile(prefix="backupkit-binlog-")  # noqa: SIM115
            self.file.write(self.mem)
            self.size = len(self.mem)
            self.mem = bytearray()
        self.file.seek(0, os.SEEK_END)
        self.file.write(data)
        self.size += len(data)

    def truncate(self, n: int) -> None:
        """Keep only the first n bytes."""
        if self.file is not None:
            self.file.truncate(n)
            self.size = n
        else:
            del self.mem[n:]

    def split(self, n: int) -> SpillBuffer:
        """Keep the first n bytes here; return a new buffer holding the rest."""
        rest = SpillBuffer(self.limit)
        if self.file is None:
            rest.mem = self.mem[n:]
            del self.mem[n:]
            return rest
        self.file.seek(n)
        while True:
            block = self.file.read(4 * MIB)
            if not block:
                break
            rest.append(block)
        self.truncate(n)
        return rest

    def chunks(self, n: int, size: int = 4 * MIB) -> Iterator[bytes]:
        """The first n bytes, in chunks."""
        if self.file is None:
            mv = memoryview(self.mem)
            for off in range(0, n, size):
                yield bytes(mv[off:min(n, off + size)])
            return
        self.file.seek(0)
        left = n
        while left:
            block = self.file.read(min(size, left))
            if not block:
                raise IntegrityError("spilled binlog buffer is shorter than expected")
            left -= len(block)
            yield block

    def drop_front(self, n: int) -> None:
        """Forget the first n bytes, keeping the rest."""
        if self.file is None:
            del self.mem[:n]
            return
        rest = self.split(n)
        self.file.close()
        self.mem, self.file, self.size = rest.mem, rest.file, rest.size

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        self.mem = bytearray()
        self.size = 0


# -- statistics of a stretch of events --------------------------------------------------
@dataclass
class _Stats:
    first_event_time: float = 0.0
    last_event_time: float = 0.0
    first_commit_time: float = 0.0
    last_commit_time: float = 0.0
    gtid_first: str = ""
    gtid_last: str = ""
    events: int = 0
    transactions: int = 0

    def event(self, ts: int) -> None:
        self.events += 1
        if ts:
            if not self.first_event_time or ts < self.first_event_time:
                self.first_event_time = ts
            if ts > self.last_event_time:
                self.last_event_time = ts

    def merge(self, o: _Stats) -> None:
        if o.first_event_time and (not self.first_event_time or o.first_event_time < self.first_event_time):
            self.first_event_time = o.first_event_time
        self.last_event_time = max(self.last_event_time, o.last_event_time)
        if o.first_commit_time and not self.first_commit_time:
            self.first_commit_time = o.first_commit_time
        self.last_commit_time = max(self.last_commit_time, o.last_commit_time)
        if o.gtid_first and not self.gtid_first:
            self.gtid_first = o.gtid_first
        if o.gtid_last:
            self.gtid_last = o.gtid_last
        self.events += o.events
        self.transactions += o.transactions


# -- options and results ------------------------------------------------------------------
@dataclass
class ShipOptions:
    """How the shipper runs (the CLI fills this from options and the [binlog] policy)."""

    source_id: str | None = None
    server_id: int | None = None
    sync_interval: float = 1.0
    max_segment_bytes: int = 16 * MIB
    heartbeat: float = 1.0
    lease_seconds: float = 15.0
    compression_level: int = 1
    from_current: bool = False
    from_position: tuple[str, int] | None = None  # first run: start at these coordinates
    restart_from_current: bool = False
    until_current: bool = False
    wait_for_lease: bool = True
    watchdog_periods: float = 4.0
    max_backoff: float = 5.0
    spill_bytes: int = 64 * MIB


@dataclass
class ShipResult:
    """What a shipper run did."""

    source_id: str
    server_id: int
    range_id: str = ""
    start: str = ""
    end: str = ""
    segments: int = 0
    bytes: int = 0
    stored_bytes: int = 0
    transactions: int = 0
    reconnects: int = 0
    gaps: list[dict[str, Any]] = field(default_factory=list)
    stopped_by: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def resolve_source(spec: ConnSpec, source_id: str | None, conn=None) -> tuple[ServerFacts, str]:
    """The source's facts and its source id (given, or derived like the snapshot's)."""
    from backupkit.mysql.server import default_source_id

    own = conn is None
    conn = conn or connect(spec)
    try:
        facts = server_facts(conn)
    finally:
        if own:
            conn.close()
    if not facts.log_bin:
        raise SourceError(f"the source {spec.display()} has no binary log enabled",
                          "start it with --log-bin and --binlog-format=ROW")
    return facts, source_id or default_source_id(facts)


# packet header (length, sequence), status byte, then the event header's first fields
_PKT = struct.Struct("<IBIBIII")
#: Events inside a transaction that the shipper passes through without decoding.
_FAST_TYPES = frozenset({be.TABLE_MAP_EVENT, be.ANNOTATE_ROWS_EVENT, be.INTVAR_EVENT, be.RAND_EVENT,
                         be.USER_VAR_EVENT, be.ROWS_QUERY_LOG_EVENT, *be.ROWS_TYPES})


@dataclass
class _Pending:
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


class _Uploader(threading.Thread):
    """Compresses, uploads and commits segments in order, while the main thread keeps reading
    the stream. The queue is short, so memory stays bounded."""

    def __init__(self, store_fn: Callable[[_Pending], None], depth: int = 2) -> None:
        super().__init__(name="segment-uploader", daemon=True)
        self.store_fn = store_fn
        self.queue: queue.Queue[_Pending | None] = queue.Queue(maxsize=depth)
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

    def submit(self, item: _Pending) -> None:
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


class Shipper:
    """Ships one source's binlog into one repository. Call run(); stop() from a signal handler."""

    def __init__(self, store: ObjectStore, spec: ConnSpec, options: ShipOptions,
                 notify: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.catalog = Catalog(store)
        self.spec = spec
        self.opts = options
        self.notify = notify or (lambda msg: log.info("%s", msg))
        self._stop = threading.Event()
        self.facts: ServerFacts | None = None
        self.source_id = ""
        self.server_id = 0
        self.lease: Lease | None = None
        self.result: ShipResult | None = None
        # stream position and buffer
        self.file = ""
        self.seg_start = 0
        self.buf = SpillBuffer(options.spill_bytes)
        self.boundary_len = 0
        self.fde: bytes | None = None  # the current file's FDE as stored at its offset 4
        self.tracker = be.BoundaryTracker()
        self.seg = _Stats()
        self.txn = _Stats()
        self.txn_gtid = ""
        self.txn_gtid_time = 0
        self.gtid = GtidState()
        self.seg_gtid_state = ""
        self.range_id = ""
        self.pending_since: float | None = None  # monotonic time the oldest unflushed commit arrived
        self.on_commit: Callable[[SegmentInfo], None] | None = None
        self._last_closed = False
        self._connected_once = False
        self._anchor = False  # a new range starts: commit an empty segment to record where
        self.uploader: _Uploader | None = None
        self._ctl: Any = None  # the control connection while setting up
        self._committed: dict[str, SegmentInfo] = {}  # this run's entries of the file being shipped
        self._rollups: list[threading.Thread] = []

    # -- control -------------------------------------------------------------------
    def stop(self, *_args: Any) -> None:
        """Ask the shipper to flush complete transactions and return (signal-safe)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    # -- main loop -------------------------------------------------------------------
    def run(self) -> ShipResult:
        # One control connection serves the set-up and then carries the first dump.
        self._ctl = connect(self.spec)
        self.facts, self.source_id = resolve_source(self.spec, self.opts.source_id, self._ctl)
        self.server_id = self.opts.server_id or default_server_id(self.source_id)
        if self.server_id == self.facts.server_id:
            raise UsageError(f"server_id {self.server_id} is the source's own server_id",
                             "give the shipper another --server-id")
        self.gtid = GtidState(self.facts.flavor)
        self.result = ShipResult(self.source_id, self.server_id)
        self.catalog.ensure_repo()
        self.lease = Lease(self.store, self.source_id, self.opts.lease_seconds)
        try:
            while not self.stopping:
                if not self._acquire_lease():
                    break
                keeper = LeaseKeeper(self.lease)
                keeper.start()
                self.uploader = _Uploader(self._store)
                self.uploader.start()
                clean = False
                try:
                    self._ship()
                    self.uploader.drain()
                    clean = True
                    break
                except LeaseLost as exc:
                    self.notify(f"warning: {exc.message}; standing by")
                    self.uploader.close(abort=True)
                    self._discard_buffer()
                    if not self.opts.wait_for_lease or self.opts.until_current:
                        raise
                finally:
                    self.uploader.close(abort=not clean)
                    keeper.stop()
        finally:
            for t in self._rollups:  # let a roll-up in progress land (it is small)
                t.join(30)
            self._close_control()
            if self.lease.held:
                self.lease.release()
            self.buf.close()
        if self.stopping and not self.result.stopped_by:
            self.result.stopped_by = "signal"
        return self.result

    def _control(self):
        """The set-up connection (opened again if the first session already took it)."""
        if self._ctl is None or not self._ctl.open:
            self._ctl = connect(self.spec)
        return self._ctl

    def _close_control(self) -> None:
        if self._ctl is not None:
            try:
                self._ctl.close()
            except Exception:
                pass
            self._ctl = None

    def _acquire_lease(self) -> bool:
        assert self.lease is not None
        announced = False
        while not self.stopping:
            try:
                if self.lease.try_acquire():
                    if announced:
                        self.notify(f"took over the shipper lease of {self.source_id}")
                    return True
            except StorageError as exc:
                if not self.opts.wait_for_lease or self.opts.until_current:
                    raise
                self.notify(f"warning: cannot reach the repository for the lease: {exc.message}")
            rec, _ = self._lease_record()
            if not self.opts.wait_for_lease or self.opts.until_current:
                who = "another shipper"
                if rec is not None:
                    until = time.strftime("%H:%M:%S", time.localtime(rec.expires_at))
                    who = f"{rec.holder}, valid until {until}"
                raise LeaseHeld(f"the binlog of {self.source_id} is being shipped by {who}",
                                "only one shipper per source; this one would wait as a standby "
                                "without --once")
            if not announced:
                self._close_control()  # a standby may wait for hours: hold no idle connection
                holder = rec.holder if rec else "another shipper"
                self.notify(f"standby: {holder} holds the shipper lease of {self.source_id}; "
                            "waiting to take over")
                announced = True
            self._sleep(max(0.2, min(1.0, self.opts.lease_seconds / 5)))
        return False

    def _lease_record(self):
        assert self.lease is not None
        try:
            return self.lease.current()
        except StorageError:
            return None, ""

    def _discard_buffer(self) -> None:
        self.buf.truncate(0)
        self.boundary_len = 0
        self.seg = _Stats()
        self.txn = _Stats()
        self.tracker.reset()
        self.pending_since = None

    # -- start point ----------------------------------------------------------------
    def _start_point(self) -> None:
        """Resume where the repository ends, or start at the snapshot's or server's position."""
        assert self.facts is not None and self.result is not None
        last = self.catalog.last_segment(self.source_id)
        if last is not None:
            self.file, self.seg_start = last.next_point()
            self.range_id = last.range_id or uuid.uuid4().hex[:12]
            self.gtid = GtidState(self.facts.flavor, last.gtid_state)
            self.seg_gtid_state = last.gtid_state
            self._last_closed = last.file_closed and not last.next_file
            self.notify(f"resuming {self.source_id} at {self.file}:{self.seg_start}")
            return
        if self.opts.from_position:
            file, pos = self.opts.from_position
            gtid = gtid_position(self._control(), self.facts, file, pos)
            point = BinlogPoint(file=file, pos=pos, gtid=gtid)
            where = "the given position"
        elif self.opts.from_current or self.opts.restart_from_current:
            point = current_point(self._control(), self.facts)
            where = "the server's current position"
        else:
            snaps = [b for b in self.catalog.backups(kind="snapshot")
                     if b.source.source_id == self.source_id and b.point.file]
            if not snaps:
                raise UsageError(f"no snapshot of {self.source_id} in {self.store.describe()} to start "
                                 "shipping from", "take a snapshot first, or start with --from-current")
            point = snaps[-1].point
            where = f"snapshot {snaps[-1].id}"
        self.file, self.seg_start = point.file, point.pos
        self.range_id = uuid.uuid4().hex[:12]
        self.gtid = GtidState(self.facts.flavor, point.gtid)
        self.seg_gtid_state = point.gtid
        self._last_closed = False
        self._anchor = True
        self.notify(f"starting {self.source_id} at {self.file}:{self.seg_start} ({where})")

    # -- shipping -----------------------------------------------------------------------
    def _ship(self) -> None:
        assert self.result is not None
        self._start_point()
        if not self.result.start:
            self.result.start = f"{self.file}:{self.seg_start}"
        self.result.range_id = self.range_id
        backoff = 0.5
        while not self.stopping:
            try:
                done = self._session()
                if done:
                    return
                backoff = 0.5
            except (StreamLost, SourceError) as exc:
                if isinstance(exc, DumpError):
                    if exc.purged:
                        self._purged(exc)
                        continue
                    if self.lease is not None and self.lease.lost:
                        raise LeaseLost(f"the shipper lease of {self.source_id} was taken by another "
                                        "shipper") from None
                    if not exc.replaced:
                        raise
                if isinstance(exc, BinlogGapError) or not (
                        self._connected_once or isinstance(exc, StreamLost)):
                    raise
                self.result.reconnects += 1
                self.notify(f"warning: {exc.message}; reconnecting in {backoff:.1f}s")
                self._drop_partial()
                self._sleep(backoff)
                backoff = min(backoff * 2, self.opts.max_backoff)
        # stopping: complete transactions are flushed by _session; flush any left
        self._flush(force=True)
        assert self.uploader is not None
        self.uploader.drain()

    def _drop_partial(self) -> None:
        """Forget the incomplete transaction at the end of the buffer; it is sent again."""
        self.buf.truncate(self.boundary_len)
        self.txn = _Stats()
        self.txn_gtid = ""
        self.tracker.reset()

    def _resume_pos(self) -> int:
        return self.seg_start + self.boundary_len

    def _session(self) -> bool:
        """One replication connection; True when shipping is finished (until-current or stop)."""
        assert self.result is not None and self.uploader is not None
        stream = BinlogStream(self.spec, self.server_id, self.file, self._resume_pos(),
                              heartbeat=self.opts.heartbeat, non_blocking=self.opts.until_current)
        ctl, self._ctl = self._ctl, None
        stream.open(ctl)
        self._connected_once = True
        watchdog = max(2.0, self.opts.heartbeat * self.opts.watchdog_periods)
        try:
            while True:
                self.uploader.check()
                if self.stopping:
                    self._flush(force=True)
                    self.uploader.drain()
                    return True
                try:
                    self._consume(stream)
                except StreamEnd:
                    self._flush(force=True)
                    self.uploader.drain()
                    self.result.stopped_by = "caught up"
                    return True
                self._maybe_flush()
                timeout = min(watchdog, 0.5)
                if self.pending_since is not None:
                    timeout = max(0.0, min(timeout, self.pending_since + self.opts.sync_interval
                                           - time.monotonic()))
                if not stream.wait(timeout) and stream.idle_for() > watchdog:
                    raise StreamLost(f"no event or heartbeat from the source for {watchdog:.0f}s")
        finally:
            stream.close()

    def _maybe_flush(self) -> None:
        if self.boundary_len == 0:
            return
        # The whole buffer counts: a transaction growing past the limit is cut off from the
        # complete ones before it, so it ends up alone in its segment.
        if len(self.buf) >= self.opts.max_segment_bytes or (
                self.pending_since is not None
                and time.monotonic() - self.pending_since >= self.opts.sync_interval):
            self._flush()

    def _consume(self, stream: BinlogStream) -> None:
        """Process every complete event buffered in the stream.

        The hot path: events inside a transaction that need no decoding (table maps, rows,
        annotations) are checked for position and appended straight from the receive buffer,
        one header unpack each. Everything else goes through _on_event()."""
        unpack = _PKT.unpack_from
        fast = _FAST_TYPES
        while True:
            # Stop the fast path at the segment limit (so complete transactions get flushed),
            # or for one huge transaction at the spill limit (the slow path spills to disk).
            limit = self.opts.max_segment_bytes if self.boundary_len else self.buf.limit
            data = stream._buf
            off = stream._off
            end = len(data)
            mv = memoryview(data)
            try:
                seg = self.buf.mem
                ok = self.buf.in_memory and self.tracker.in_txn and not self.tracker._mysql_gtid
                expected = self.seg_start + len(seg)
                txn = self.txn
                tmin, count = txn.first_event_time or 0xFFFFFFFF, 0
                stop_at = expected + limit - len(seg)
                while ok and end - off >= 22:
                    plen, status, ts, etype, _sid, _size, log_pos = unpack(data, off)
                    plen &= 0xFFFFFF
                    pend = off + 4 + plen
                    if pend > end or plen == 0xFFFFFF or status or etype not in fast:
                        break
                    if log_pos != expected + plen - 1:
                        break  # not contiguous: the slow path reports it
                    seg += mv[off + 5:pend]
                    expected = log_pos
                    count += 1
                    if ts < tmin:
                        tmin = ts  # row events carry the statement's start time, before the commit
                    off = pend
                    if expected >= stop_at:
                        break
                txn.events += count
                if count:
                    txn.first_event_time = tmin
                stream._off = off
            finally:
                mv.release()
            if ok and self.boundary_len and len(self.buf) >= limit:
                return  # let the caller flush
            raw = stream.take()
            if raw is None:
                stream.compact()
                return
            self._on_event(raw)
            self._maybe_flush()

    # -- events --------------------------------------------------------------------------
    def _on_event(self, raw: bytes) -> None:
        hdr = be.parse_header(raw)
        t = hdr.type
        if t in (be.HEARTBEAT_LOG_EVENT, be.HEARTBEAT_LOG_EVENT_V2):
            return
        if hdr.log_pos == 0 or hdr.flags & be.LOG_EVENT_ARTIFICIAL_F:
            if t == be.ROTATE_EVENT:
                self._artificial_rotate(raw)
            elif t == be.FORMAT_DESCRIPTION_EVENT:
                # Sent first when a dump starts inside a file: the file's FDE with log_pos 0.
                self.fde = be.clear_in_use(be.fix_fde_position(raw))
                self.tracker.feed(hdr, self.fde)
                if self._anchor and self.boundary_len == 0 and len(self.buf) == 0:
                    self._flush(force=True)
            return
        start = hdr.log_pos - hdr.event_size
        expected = self.seg_start + len(self.buf)
        if start != expected:
            if hdr.log_pos <= expected:
                log.debug("skipping an event sent again at %s:%d", self.file, start)
                return
            raise IntegrityError(f"binlog stream skipped from {self.file}:{expected} to {start}",
                                 "nothing was committed past the gap; restart the shipper")
        if t == be.FORMAT_DESCRIPTION_EVENT:
            raw = be.clear_in_use(raw)
            self.fde = raw
        was_in_txn = self.tracker.in_txn
        self.buf.append(raw)
        self.txn.event(hdr.timestamp)
        boundary = self.tracker.feed(hdr, raw)
        if t == be.MARIA_GTID_EVENT:
            g = be.parse_maria_gtid(hdr, be.body(raw, self.tracker.checksum_len))
            self.txn_gtid, self.txn_gtid_time = g.gtid, hdr.timestamp
        elif t in (be.GTID_LOG_EVENT, be.ANONYMOUS_GTID_LOG_EVENT):
            mg = be.parse_mysql_gtid(be.body(raw, self.tracker.checksum_len))
            self.txn_gtid, self.txn_gtid_time = mg.gtid, hdr.timestamp
        elif t == be.GTID_LIST_EVENT:
            self.gtid.set_list(be.parse_gtid_list(be.body(raw, self.tracker.checksum_len)))
        if boundary:
            if was_in_txn or t in be.QUERY_TYPES:
                commit = max(self.txn_gtid_time, hdr.timestamp)
                self.txn.transactions = 1
                self.txn.first_commit_time = self.txn.last_commit_time = commit
                if self.txn_gtid:
                    self.txn.gtid_first = self.txn.gtid_last = self.txn_gtid
                    self.gtid.add(self.txn_gtid)
                self.txn_gtid, self.txn_gtid_time = "", 0
            self.seg.merge(self.txn)
            self.txn = _Stats()
            self.boundary_len = len(self.buf)
            self.seg_gtid_state = self.gtid.text()
            if self.pending_since is None:
                self.pending_since = time.monotonic()
        if t == be.ROTATE_EVENT:
            rot = be.parse_rotate(be.body(raw, self.tracker.checksum_len))
            self._flush(force=True, next_file=rot.next_file, closed=True)
            self._switch_file(rot.next_file, rot.position)
        elif t == be.STOP_EVENT:
            self._flush(force=True, closed=True)

    def _artificial_rotate(self, raw: bytes) -> None:
        cks = be.CHECKSUM_LEN if be.event_crc_ok(raw) else 0
        rot = be.parse_rotate(be.body(raw, cks))
        if rot.next_file == self.file:
            return  # the announcement at connect
        # The server moved on to another file: the current one has ended (STOP, crash, restart).
        if self.tracker.in_txn or len(self.buf) != self.boundary_len:
            # Only after a crash: a transaction not wholly in the binlog was rolled back by the
            # server's recovery, so it is not part of the history to ship.
            self.notify(f"warning: {self.file} ends with an incomplete transaction at "
                        f"{self.seg_start + self.boundary_len} ({len(self.buf) - self.boundary_len} "
                        "bytes); the server rolled it back at recovery, it is not shipped")
            self._drop_partial()
        if rot.next_file != next_binlog_name(self.file) or rot.position != 4:
            raise IntegrityError(f"the source moved from {self.file} to {rot.next_file}:{rot.position}, "
                                 "not to the next file", "check the source's binlog index")
        self._flush(force=True, closed=True)
        self._switch_file(rot.next_file, rot.position)

    def _switch_file(self, name: str, pos: int) -> None:
        self.file = name
        self.seg_start = pos
        self.fde = None
        self.buf.truncate(0)
        self.boundary_len = 0
        self._last_closed = False

    # -- segments -----------------------------------------------------------------------
    def _flush(self, force: bool = False, next_file: str = "", closed: bool = False) -> None:
        """Hand the complete transactions in the buffer to the uploader as one segment."""
        n = self.boundary_len
        if n == 0 and not self._anchor:
            return
        assert self.uploader is not None
        end = self.seg_start + n
        head = be.MAGIC
        if self.seg_start != 4:
            if self.fde is None:
                raise IntegrityError(f"no format description event for {self.file}")
            head += self.fde
        data: bytes | bytearray | SpillBuffer
        if self.buf.in_memory and n == len(self.buf.mem):
            data, self.buf.mem = self.buf.mem, bytearray()
        elif self.buf.in_memory:
            with memoryview(self.buf.mem) as view:
                data = bytes(view[:n])
            self.buf.drop_front(n)
        else:
            data, self.buf = self.buf, self.buf.split(n)
        st = self.seg
        item = _Pending(head, data, n, dict(
            source_id=self.source_id, binlog_file=self.file, start_pos=self.seg_start, end_pos=end,
            first_event_time=st.first_event_time, last_event_time=st.last_event_time,
            first_commit_time=st.first_commit_time, last_commit_time=st.last_commit_time,
            gtid_first=st.gtid_first, gtid_last=st.gtid_last, gtid_state=self.seg_gtid_state,
            events=st.events, transactions=st.transactions, next_file=next_file,
            file_closed=closed, range_id=self.range_id))
        self.seg_start = end
        self.boundary_len = 0
        self.seg = _Stats()
        self.pending_since = None  # what is left is an incomplete transaction
        self._anchor = False
        self.uploader.submit(item)

    def _store(self, item: _Pending) -> None:
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
                if (self.stopping and attempt >= 5) or (self.uploader and self.uploader.aborted.is_set()):
                    raise
                self.notify(f"warning: storing segment {f['binlog_file']}:{f['start_pos']}-{f['end_pos']} "
                            f"failed: {exc.message}; retrying in {backoff:.1f}s")
                time.sleep(backoff)
                backoff = min(backoff * 2, self.opts.max_backoff)
        item.close()
        self.result.segments += 1
        self.result.bytes += item.n
        self.result.stored_bytes += obj.size
        self.result.transactions += info.transactions
        self.result.end = "{}:{}".format(*info.next_point())
        self._committed[info.key] = info
        if info.file_closed:
            self._roll_up(info.binlog_file)
        if self.on_commit is not None:
            self.on_commit(info)

    def _roll_up(self, binlog_file: str) -> None:
        """A file is finished: write its roll-up (one object with every index entry of it) in the
        background, from the entries this run committed plus any it did not. Only a cache for
        readers of the catalog; a failure is logged and costs nothing else."""
        known = {k: v for k, v in self._committed.items() if v.binlog_file == binlog_file}
        self._committed = {k: v for k, v in self._committed.items() if v.binlog_file != binlog_file}

        def work() -> None:
            try:
                self.catalog.roll_up_file(self.source_id, binlog_file, known)
            except Exception as exc:  # noqa: BLE001 - a cache; never stops shipping
                log.warning("roll-up of %s not written: %s", binlog_file, exc)

        self._rollups = [t for t in self._rollups if t.is_alive()]
        t = threading.Thread(target=work, name=f"rollup-{binlog_file}", daemon=True)
        self._rollups.append(t)
        t.start()

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

    # -- gaps -------------------------------------------------------------------------------
    def _purged(self, exc: DumpError) -> None:
        """The server no longer has the file we need: record the gap; restart or stop loudly."""
        assert self.facts is not None and self.result is not None
        assert self.uploader is not None
        self.uploader.drain()
        after_file, after_pos = self.file, self._resume_pos()
        if self._last_closed and after_pos == self.seg_start and self.boundary_len == 0:
            # The last shipped segment ended the file; the next file is the true resume point.
            nxt = next_binlog_name(after_file)
            if nxt and self._server_has(nxt):
                self._switch_file(nxt, 4)
                return
        self._flush(force=True)
        self.uploader.drain()
        conn = connect(self.spec)
        try:
            point = current_point(conn, self.facts)
            if self.opts.restart_from_current:
                point.gtid = gtid_position(conn, self.facts, point.file, point.pos)
        finally:
            conn.close()
        last_time = self.seg.last_commit_time
        last = self.catalog.last_segment(self.source_id)
        if last is not None:
            last_time = last.last_commit_time or last.last_event_time
        if not self.opts.restart_from_current:
            gap = GapInfo(self.source_id, after_file, after_pos, "", 0, time.time(),
                          f"{after_file} was purged from the source before it was shipped "
                          f"({exc.server_message}); shipping stopped", last_time)
            self.catalog.record_gap(gap)
            self.result.gaps.append(gap.to_dict())
            raise BinlogGapError(
                f"GAP: the source no longer has {after_file} (purged) at {after_file}:{after_pos}; "
                "binlog after that point is lost for point-in-time restore",
                "take a new snapshot and run 'backupkit binlog ship --restart-from-current'")
        gap = GapInfo(self.source_id, after_file, after_pos, point.file, point.pos, time.time(),
                      f"{after_file} was purged from the source before it was shipped "
                      f"({exc.server_message}); restarted at the current position", last_time)
        # Overwrite a record left by an earlier run that stopped at this gap.
        self.store.put(layout.gap_record(gap.source_id, gap.after_file, gap.after_pos),
                       encode_manifest(gap.to_dict()))
        self.result.gaps.append(gap.to_dict())
        self.notify(f"GAP recorded: {after_file}:{after_pos} -> {point.file}:{point.pos}; "
                    "a new continuous range starts here")
        self._switch_file(point.file, point.pos)
        self.range_id = uuid.uuid4().hex[:12]
        self.result.range_id = self.range_id
        self.gtid = GtidState(self.facts.flavor, point.gtid)
        self.seg_gtid_state = point.gtid
        self._anchor = True
        self.tracker.reset()
        self.seg = _Stats()
        self.txn = _Stats()

    def _server_has(self, name: str) -> bool:
        from backupkit.mysql.server import binary_logs

        conn = connect(self.spec)
        try:
            return name in {n for n, _ in binary_logs(conn)}
        finally:
            conn.close()


def _prepend(head: bytes, chunks: Iterator[bytes]) -> Iterator[bytes]:
    yield head
    yield from chunks


# -- status ---------------------------------------------------------------------------------
def shipping_status(catalog: Catalog, source_id: str, spec: ConnSpec | None = None,
                    now: float | None = None) -> dict[str, Any]:
    """Shipped range, lag in seconds and bytes behind the server, and the current loss window."""
    now = time.time() if now is None else now
    segs = catalog.segments(source_id)
    gaps = catalog.gaps(source_id)
    runs = build_runs(segs, gaps)
    out: dict[str, Any] = {"source_id": source_id, "segments": len(segs),
                           "stored_bytes": sum(s.object.size for s in segs),
                           "ranges": [], "gaps": [], "lease": None, "server": None}
    for r in runs:
        out["ranges"].append({
            "range_id": r.range_id, "start": f"{r.start[0]}:{r.start[1]}",
            "end": f"{r.end[0]}:{r.end[1]}", "segments": r.count,
            "first_commit_time": r.first.first_commit_time or None,
            "last_commit_time": r.last.last_commit_time or None, "gtid_state": r.last.gtid_state})
    out["gaps"] = [g.to_dict() for g in gaps]
    last = segs[-1] if segs else None
    out["last_segment_at"] = last.created_at if last else None
    out["shipped_to"] = "{}:{}".format(*last.next_point()) if last else None
    out["last_shipped_commit_time"] = max((s.last_commit_time for s in segs), default=0) or None
    lease = Lease(catalog.store, source_id)
    try:
        rec, _ = lease.current()
    except StorageError:
        rec = None
    if rec is not None:
        out["lease"] = {"holder": rec.holder, "expires_at": rec.expires_at, "released": rec.released,
                        "active": not rec.released and rec.expires_at > now}
    if spec is None or last is None:
        return out
    try:
        out["server"] = _server_lag(spec, last, now)
    except BackupkitError as exc:
        out["server"] = {"error": exc.one_line()}
    srv = out["server"]
    if srv and "lag_bytes" in srv:
        out["lag_bytes"] = srv["lag_bytes"]
        out["lag_seconds"] = srv["lag_seconds"]
        out["loss_window_seconds"] = srv["loss_window_seconds"]
    return out


def _server_lag(spec: ConnSpec, last: SegmentInfo, now: float) -> dict[str, Any]:
    from backupkit.mysql.server import binary_logs, master_status

    conn = connect(spec)
    try:
        facts = server_facts(conn)
        file, pos = master_status(conn, facts)
        logs = binary_logs(conn)
    finally:
        conn.close()
    sfile, spos = last.next_point()
    lag = 0
    for name, size in logs:
        if name < sfile:
            continue
        lag += max(0, size - spos) if name == sfile else size
    if (file, pos) == (sfile, spos) or (sfile, spos) > (file, pos):
        lag = 0
    info: dict[str, Any] = {"position": f"{file}:{pos}", "lag_bytes": lag}
    if lag == 0:
        info.update(lag_seconds=0.0, loss_window_seconds=0.0, oldest_unshipped_commit=None)
        return info
    first = _first_unshipped_commit(spec, sfile, spos, facts)
    info["oldest_unshipped_commit"] = first
    if first:
        info["lag_seconds"] = max(0.0, now - first)
        # If the server died now, everything committed since the last shipped commit is lost.
        info["loss_window_seconds"] = max(0.0, now - (last.last_commit_time or first))
    else:
        info["lag_seconds"] = 0.0
        info["loss_window_seconds"] = 0.0
    return info


def _first_unshipped_commit(spec: ConnSpec, file: str, pos: int, facts: ServerFacts) -> float | None:
    """Commit time of the first transaction after (file, pos) on the server, read from a short,
    non-blocking dump."""
    sid = default_server_id("status:" + file) + 7
    stream = BinlogStream(spec, sid, file, pos, non_blocking=True)
    events: list[tuple[be.EventHeader, bytes]] = []
    try:
        stream.open()
        for _ in range(10000):
            raw = stream.read(5.0)
            if raw is None:
                break
            hdr = be.parse_header(raw)
            if hdr.type == be.ROTATE_EVENT and hdr.log_pos == 0:
                continue
            events.append((hdr, raw))
            if hdr.type in (be.XID_EVENT,) or (len(events) > 2 and hdr.type in be.QUERY_TYPES):
                break
    except (StreamEnd, BackupkitError):
        pass
    finally:
        stream.close()
    fixed = [(h, be.clear_in_use(be.fix_fde_position(r)) if h.type == be.FORMAT_DESCRIPTION_EVENT else r)
             for h, r in events]
    for txn in be.transactions(fixed, include_partial=True):
        return float(txn.commit_time) or None
    return None
