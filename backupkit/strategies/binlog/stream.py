"""The reading side of the shipper: one replication session, events checked for contiguity,
grouped into transactions, and cut into segments at transaction boundaries (``_flush``)."""

from __future__ import annotations

import logging
import struct
import time
from dataclasses import dataclass

from backupkit.errors import IntegrityError
from backupkit.mysql import binlog_events as be
from backupkit.mysql.binlog_stream import BinlogStream, StreamEnd, StreamLost
from backupkit.repo.coverage import next_binlog_name
from backupkit.strategies.binlog.spill import SpillBuffer
from backupkit.strategies.binlog.upload import PendingSegment

log = logging.getLogger(__name__)


@dataclass
class EventStats:
    """Statistics of a stretch of events (a transaction, or a segment's transactions)."""

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

    def merge(self, o: EventStats) -> None:
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


# packet header (length, sequence), status byte, then the event header's first fields
_PKT = struct.Struct("<IBIBIII")
#: Events inside a transaction that the shipper passes through without decoding.
_FAST_TYPES = frozenset({be.TABLE_MAP_EVENT, be.ANNOTATE_ROWS_EVENT, be.INTVAR_EVENT, be.RAND_EVENT,
                         be.USER_VAR_EVENT, be.ROWS_QUERY_LOG_EVENT, *be.ROWS_TYPES})


class StreamReader:
    """The Shipper's stream half (a mixin): session, fast path, events, segment cuts."""

    def _drop_partial(self) -> None:
        """Forget the incomplete transaction at the end of the buffer; it is sent again."""
        self.buf.truncate(self.boundary_len)
        self.txn = EventStats()
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
        self._session_opened = False
        stream.open(ctl)
        watchdog = max(2.0, self.opts.heartbeat * self.opts.watchdog_periods)
        try:
            self._same_server(stream.facts)  # behind a virtual IP, a reconnect may reach another
            self._connected_once = self._session_opened = True
            while True:
                self.uploader.check()
                if self.stopping:
                    self._flush(force=True)
                    self.uploader.drain()
                    return True
                try:
                    self._consume(stream)
                except StreamEnd:
                    self._beat_at = time.time()  # the server had nothing more: caught up
                    self._flush(force=True)
                    self.uploader.drain()
                    self._maybe_confirm()
                    self.result.stopped_by = "caught up"
                    return True
                self._maybe_flush()
                self.progress.alive()
                self._maybe_confirm()
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
            self._beat_at = time.time()  # the server has sent everything it had
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
            self.gtid.set_domains(be.parse_gtid_list(be.body(raw, self.tracker.checksum_len)))
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
            self.txn = EventStats()
            self.boundary_len = len(self.buf)
            self.seg_gtid_state = self.gtid.text()
            if self.pending_since is None:
                self.pending_since = time.monotonic()
                self.progress.commit_seen(hdr.timestamp)
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
        item = PendingSegment(head, data, n, dict(
            source_id=self.source_id, binlog_file=self._fid(self.file), start_pos=self.seg_start,
            end_pos=end, gtid_start=self.seg_gtid_start,
            first_event_time=st.first_event_time, last_event_time=st.last_event_time,
            first_commit_time=st.first_commit_time, last_commit_time=st.last_commit_time,
            gtid_first=st.gtid_first, gtid_last=st.gtid_last, gtid_state=self.seg_gtid_state,
            events=st.events, transactions=st.transactions,
            next_file=self._fid(next_file) if next_file else "",
            file_closed=closed, range_id=self.range_id,
            server_id=self.facts.server_id if self.facts else 0))
        self.seg_start = end
        self.seg_gtid_start = self.seg_gtid_state
        self.boundary_len = 0
        self.seg = EventStats()
        self.pending_since = None  # what is left is an incomplete transaction
        self._anchor = False
        self.progress.flushed()
        self.uploader.submit(item)
