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
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from backupkit.errors import SourceError, StorageError, UsageError
from backupkit.mysql import binlog_events as be
from backupkit.mysql.binlog_stream import DumpError, StreamLost, default_server_id
from backupkit.mysql.connection import ConnSpec, connect
from backupkit.mysql.gtid import BinlogPoint, GtidSet
from backupkit.mysql.replica import check_replica, replica_info
from backupkit.mysql.server import (
    ServerFacts,
    binary_logs,
    current_point,
    gtid_position,
)
from backupkit.repo import layout
from backupkit.repo.catalog import (
    Catalog,
    GapInfo,
    SegmentInfo,
    encode_manifest,
)
from backupkit.repo.coverage import next_binlog_name
from backupkit.repo.lease import Lease, LeaseHeld, LeaseKeeper, LeaseLost
from backupkit.repo.rollups import OpenFileRollups
from backupkit.repo.servers import file_id, split_file_id
from backupkit.repo.watermark import ShipperStatus
from backupkit.storage.base import ObjectStore
from backupkit.storage.mirror import find_mirror
from backupkit.strategies.binlog.confirm import StatusWriter, server_clock_offset, watermark_of
from backupkit.strategies.binlog.failover import Follower, SourceMoved
from backupkit.strategies.binlog.options import BinlogGapError, ShipOptions, ShipResult, resolve_source
from backupkit.strategies.binlog.progress import ShipProgress
from backupkit.strategies.binlog.spill import SpillBuffer
from backupkit.strategies.binlog.stream import EventStats, StreamReader
from backupkit.strategies.binlog.upload import SegmentUploader, SegmentWriter

log = logging.getLogger(__name__)


class Shipper(StreamReader, SegmentWriter, Follower):
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
        self.file = ""  # the server's own file name
        self.epoch = 0  # the server's epoch under this source: 1 more at each switchover followed
        self.seg_start = 0
        self.buf = SpillBuffer(options.spill_bytes)
        self.boundary_len = 0
        self.fde: bytes | None = None  # the current file's FDE as stored at its offset 4
        self.tracker = be.BoundaryTracker()
        self.seg = EventStats()
        self.txn = EventStats()
        self.txn_gtid = ""
        self.txn_gtid_time = 0
        self.gtid = GtidSet()
        self.seg_gtid_state = ""
        self.seg_gtid_start = ""  # the GTID position where the segment being read begins
        self.range_id = ""
        self.pending_since: float | None = None  # monotonic time the oldest unflushed commit arrived
        self.on_commit: Callable[[SegmentInfo], None] | None = None
        self.progress = ShipProgress()  # what is confirmed shipped, for monitoring
        self._last_closed = False
        self._connected_once = False
        self._session_opened = False  # the current session's dump started (the backoff resets)
        self._anchor = False  # a new range starts: commit an empty segment to record where
        self.uploader: SegmentUploader | None = None
        self._ctl: Any = None  # the control connection while setting up
        self._rollups: list[threading.Thread] = []
        self._rolled: set[str] | None = None  # files whose roll-up is written (for the head)
        self._unrolled: set[str] = set()  # finished files whose roll-up has not landed yet
        self._named: list[str] = []  # the rolled-up files the last head named
        self._since_head = 0  # commits since the head was last written
        self._head_key = ""  # the entry the last head named
        self._last_info: SegmentInfo | None = None  # the newest entry this run committed
        self._open_rollups: OpenFileRollups | None = None  # the open file's chunks (upload.py)
        # the confirmed-through watermark (strategies/binlog/confirm.py)
        self.confirmed_at: float = 0.0  # every commit at or before this second is committed
        self._beat_at = 0.0  # local time of the newest heartbeat (or end of stream with --once)
        self._clock_offset = 0.0  # the server's clock minus ours
        self.status_writer: StatusWriter | None = None

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
        if self.facts.is_mariadb:  # a replica: it must log what it replicates, and be healthy
            for warning in check_replica(replica_info(self._ctl), shipping=True):
                self.notify(f"warning: {warning}")
        self.server_id = self.opts.server_id or default_server_id(self.source_id)
        if self.server_id == self.facts.server_id:
            raise UsageError(f"server_id {self.server_id} is the source's own server_id",
                             "give the shipper another --server-id")
        self.gtid = GtidSet()
        self.result = ShipResult(self.source_id, self.server_id)
        self.catalog.ensure_repo()
        mirror = find_mirror(self.store)
        if mirror is not None:
            # a lagging target is completed in the background, never waited for (issue 15.4)
            mirror.background_catch_up = self.opts.catch_up_interval
        try:
            self._clock_offset = server_clock_offset(self._ctl)
        except Exception:  # noqa: BLE001 - a guess of 0 only shifts the watermark
            self._clock_offset = 0.0
        self.lease = Lease(self.store, self.source_id, self.opts.lease_seconds)
        self.status_writer = StatusWriter(self.catalog, self.opts.confirm_interval, self.notify)
        self.status_writer.start()
        try:
            while not self.stopping:
                if not self._acquire_lease():
                    break
                keeper = LeaseKeeper(self.lease)
                keeper.start()
                self.uploader = SegmentUploader(self._store)
                self.progress.reset()
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
            self._final_head()
            self._close_status()
            self._close_control()
            if self.lease.held:
                self.lease.release()
            self.buf.close()
        if self.stopping and not self.result.stopped_by:
            self.result.stopped_by = "signal"
        return self.result

    # -- the confirmed-through watermark ------------------------------------------------
    def _status(self, state: str = "shipping") -> ShipperStatus:
        f = self.facts
        server = {"server_id": f.server_id, "server_uuid": f.server_uuid, "hostname": f.hostname,
                  "port": f.port, "version": f.version, "epoch": self.epoch} if f else {}
        return ShipperStatus(self.source_id, self.confirmed_at, self._fid(self.file), self.seg_start,
                             self.seg_gtid_state, self.range_id, time.time(), state,
                             self.lease.holder if self.lease else "", server)

    def _maybe_confirm(self) -> None:
        """Caught up (a heartbeat came and everything before it is committed): move the
        watermark and hand it to the status writer."""
        if not self._beat_at or len(self.buf) or self.tracker.in_txn or self.uploader is None:
            return
        if self.uploader.queue.unfinished_tasks or self.uploader.error is not None:
            return
        w = watermark_of(self._beat_at, self._clock_offset)
        if w <= self.confirmed_at:
            return
        self.confirmed_at = w
        if self.status_writer is not None:
            self.status_writer.offer(self._status())

    def _close_status(self) -> None:
        if self.status_writer is None:
            return
        final = self._status("stopped") if self.confirmed_at else None
        self.status_writer.close(final)

    def _fid(self, name: str) -> str:
        """The repository's identity of the server's file name (repo/servers.py)."""
        return file_id(self.epoch, name)

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
                self.progress.state = "standby"
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
        self.seg = EventStats()
        self.txn = EventStats()
        self.tracker.reset()
        self.pending_since = None

    # -- start point ----------------------------------------------------------------
    def _start_point(self) -> None:
        """Resume where the repository ends, or start at the snapshot's or server's position."""
        assert self.facts is not None and self.result is not None
        last = self.catalog.last_segment(self.source_id)
        if self.opts.from_position and (last is None or self._nothing_shipped()):
            self._check_position(*self.opts.from_position)  # before anything is written
            if last is not None:
                self._forget_empty_start()  # a corrected retry of a first run that shipped nothing
                last = None
        if last is not None and last.server_id and last.server_id != self.facts.server_id:
            # Another server's binlog: its file names and positions mean nothing here (a new
            # primary's binlog.000001 is not the old one's). Follow it by GTID, in a new epoch.
            self._follow(last)
            return
        if last is not None:
            fid, self.seg_start = last.next_point()
            self.epoch, self.file = split_file_id(fid)
            self.range_id = last.range_id or uuid.uuid4().hex[:12]
            self.gtid = GtidSet.parse(last.gtid_state, strict=False)
            self.seg_gtid_state = self.seg_gtid_start = last.gtid_state
            self._last_closed = last.file_closed and not last.next_file
            self.notify(f"resuming {self.source_id} at {fid}:{self.seg_start}")
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
            snaps = [b for b in self.catalog.backups() if b.kind in ("snapshot", "physical")
                     and b.source.source_id == self.source_id and b.point.file]
            if not snaps:
                raise UsageError(f"no snapshot of {self.source_id} in {self.store.describe()} to start "
                                 "shipping from", "take a snapshot first, or start with --from-current")
            point = snaps[-1].point
            where = f"{snaps[-1].kind} backup {snaps[-1].id}"
        self._begin_range(point, uuid.uuid4().hex[:12])
        self.notify(f"starting {self.source_id} at {self.file}:{self.seg_start} ({where})")

    def _begin_range(self, point: BinlogPoint, range_id: str) -> None:
        """Ship from point (on this server, in this epoch); an anchor records where it begins."""
        self.file, self.seg_start = point.file, point.pos
        self.range_id = range_id
        self.gtid = GtidSet.parse(point.gtid, strict=False)
        self.seg_gtid_state = self.seg_gtid_start = point.gtid
        self._last_closed = False
        self._anchor = True

    def _check_position(self, file: str, pos: int) -> None:
        """--from-position must name a binary log the server has, at most its size: a typo is
        refused before anything is written (it would otherwise be recorded as a purged gap)."""
        logs = dict(binary_logs(self._control()))
        have = f"it has {min(logs)} to {max(logs)}" if logs else "it has no binary logs"
        if file not in logs:
            raise UsageError(f"--from-position {file}:{pos}: the source has no binary log {file!r}",
                             f"{have}; see SHOW BINARY LOGS")
        if pos > logs[file]:
            raise UsageError(f"--from-position {file}:{pos}: {file} has only {logs[file]} bytes",
                             "give the position of an event, e.g. 4 for the start of the file")

    def _nothing_shipped(self) -> bool:
        """True when every committed segment of the source is empty (anchors of runs that
        shipped no byte), so a new --from-position may replace them."""
        return all(s.end_pos == s.start_pos for s in self.catalog.segments(self.source_id))

    def _forget_empty_start(self) -> None:
        """Remove the empty anchors, roll-ups and gap records of a start that shipped nothing."""
        keys = [i.key for i in self.store.list(layout.binlog_prefix(self.source_id))]
        index = [k for k in keys if layout.segment_of(k) is not None]
        self.store.delete(index)  # the commit markers first: a crash here leaves orphan data only
        self.store.delete([k for k in keys if k not in set(index)])
        self.notify(f"replacing the start of {self.source_id}: the earlier start shipped nothing "
                    f"({len(index)} empty segment(s) and its gap records removed)")

    # -- shipping -----------------------------------------------------------------------
    def _ship(self) -> None:
        assert self.result is not None
        self._start_point()
        if not self.result.start:
            self.result.start = f"{self._fid(self.file)}:{self.seg_start}"
        self.result.range_id = self.range_id
        backoff = 0.5
        while not self.stopping:
            try:
                done = self._session()
                if done:
                    return
                backoff = 0.5
            except SourceMoved as exc:
                self._source_moved(exc)
            except (StreamLost, SourceError) as exc:
                if isinstance(exc, DumpError):
                    if exc.purged:
                        self._purged(exc)
                        continue
                    if self.lease is not None and self.lease.lost:
                        raise LeaseLost(f"the shipper lease of {self.source_id} "
                                        f"{self.lease.lost_reason or 'was lost'}") from None
                    if not exc.replaced:
                        raise
                if isinstance(exc, BinlogGapError) or not (
                        self._connected_once or isinstance(exc, StreamLost)):
                    raise
                if self._session_opened:
                    # The last reconnect worked: this is a new failure, not the same one again.
                    backoff = 0.5
                self.result.reconnects += 1
                self.progress.disconnected(exc.message)  # until the stream is live again
                self.notify(f"warning: {exc.message}; reconnecting in {backoff:.1f}s")
                self._drop_partial()
                self._sleep(backoff)
                backoff = min(backoff * 2, self.opts.max_backoff)
        # stopping: complete transactions are flushed by _session; flush any left
        self._flush(force=True)
        assert self.uploader is not None
        self.uploader.drain()

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
            point, where = current_point(conn, self.facts), "the current position"
            if self.opts.restart_from_current:
                point, where = self._restart_point(conn, after_file, after_pos)
        finally:
            conn.close()
        last_time = self.seg.last_commit_time
        last = self.catalog.last_segment(self.source_id)
        if last is not None:
            last_time = last.last_commit_time or last.last_event_time
        if not self.opts.restart_from_current:
            gap = GapInfo(self.source_id, self._fid(after_file), after_pos, "", 0, time.time(),
                          f"{after_file} was purged from the source before it was shipped "
                          f"({exc.server_message}); shipping stopped", last_time)
            self.catalog.record_gap(gap)
            self.result.gaps.append(gap.to_dict())
            self.progress.gaps += 1
            raise BinlogGapError(
                f"GAP: the source no longer has {after_file} (purged) at {after_file}:{after_pos}; "
                "binlog after that point is lost for point-in-time restore",
                "this start shipped nothing: give the right --from-position (see SHOW BINARY LOGS)"
                if self._nothing_shipped() else
                "take a new snapshot and run 'backupkit binlog ship --restart-from-current'")
        gap = GapInfo(self.source_id, self._fid(after_file), after_pos, self._fid(point.file),
                      point.pos, time.time(),
                      f"{after_file} was purged from the source before it was shipped "
                      f"({exc.server_message}); restarted at {where}", last_time)
        # Overwrite a record left by an earlier run that stopped at this gap.
        self.store.put(layout.gap_record(gap.source_id, gap.after_file, gap.after_pos),
                       encode_manifest(gap.to_dict()))
        self.result.gaps.append(gap.to_dict())
        self.progress.gaps += 1
        self.notify(f"GAP recorded: {after_file}:{after_pos} -> {point.file}:{point.pos}; "
                    f"a new continuous range starts here ({where})")
        self._switch_file(point.file, point.pos)
        self.range_id = uuid.uuid4().hex[:12]
        self.result.range_id = self.range_id
        self.gtid = GtidSet.parse(point.gtid, strict=False)
        self.seg_gtid_state = self.seg_gtid_start = point.gtid
        self._anchor = True
        self.tracker.reset()
        self.seg = EventStats()
        self.txn = EventStats()

    def _restart_point(self, conn, after_file: str, after_pos: int) -> tuple[BinlogPoint, str]:
        """Where a new range starts after a gap: the oldest backup's consistent point that lies
        inside the unshipped stretch on a file the server still has, so that backup (and every
        later one) reaches every later moment: the runbook takes a snapshot first, then restarts
        shipping. Without such a backup: the server's current position."""
        assert self.facts is not None
        return self._oldest_backup_point(conn, lambda b: b.source.server_id in (0, self.facts.server_id)
                                         and (b.point.file, b.point.pos) > (after_file, after_pos))

    def _oldest_backup_point(self, conn, wanted: Callable[[Any], bool]) -> tuple[BinlogPoint, str]:
        """The consistent point of the oldest wanted backup of this source on a binlog file the
        server still has, or the server's current position."""
        assert self.facts is not None
        have = {n for n, _ in binary_logs(conn)}
        inside = [b for b in self.catalog.backups() if b.source.source_id == self.source_id
                  and b.point.file in have and wanted(b)]
        if inside:
            b = min(inside, key=lambda x: ((x.point.file, x.point.pos), x.id))
            gtid = b.point.gtid or gtid_position(conn, self.facts, b.point.file, b.point.pos)
            return (BinlogPoint(file=b.point.file, pos=b.point.pos, gtid=gtid),
                    f"the point of {b.kind} backup {b.id}")
        point = current_point(conn, self.facts)
        point.gtid = gtid_position(conn, self.facts, point.file, point.pos)
        return point, "the current position"

    def _server_has(self, name: str) -> bool:
        conn = connect(self.spec)
        try:
            return name in {n for n, _ in binary_logs(conn)}
        finally:
            conn.close()
