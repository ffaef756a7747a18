"""Binlog replay: shipped segments, streamed from storage, applied to a server up to an exact stop.

Three threads with bounded memory:

1. The fetcher downloads segment objects ahead of the replay, several at once (``fetch_workers``
   threads, ``prefetch`` segments at most fetched or waiting), each decoded and checksum-verified
   by ``codec.iter_object`` into a spooled temporary file (64 MiB of memory in all, then disk).
   Segments are handed on in plan order, each only once verified, so no damaged byte ever
   reaches the server. Many small segments cost a round trip each; fetching them in parallel
   hides it (restore from S3 over one-second segments).
2. The parser (the calling thread) walks the events from the base's binlog coordinates on,
   groups them into transactions and decides, transaction by transaction, where to stop:
   - ``time``: every transaction whose commit time (the later of its GTID event's and its
     ending event's timestamp, whole seconds) is <= T, and none after;
   - ``gtid``: up to and including that GTID; ``before_gtid``: up to but excluding it
     (compared by domain and sequence number);
   - ``position``: every transaction that ends at or before FILE:POS;
   - ``latest``: everything planned.
3. The applier sends the transactions to the target over one connection, in order:
   - row-based transactions (MariaDB GTID, table maps, row events, XID or COMMIT): natively, as
     ``SET gtid_domain_id/server_id/gtid_seq_no; BEGIN; BINLOG '<all row events>'; COMMIT``,
     the same BINLOG statement mariadb-binlog writes, but one per transaction instead of one per
     row event (several times faster, and exact: the server applies the same events);
   - every other transaction (DDL, statement-based DML, XA, MySQL GTIDs): through
     ``mariadb-binlog -``, whose SQL text is run statement by statement.
   A transaction larger than 8 MiB is sent in several BINLOG statements inside one BEGIN and
   committed (or rolled back) only at its end, so memory stays bounded.

The first error stops everything and names the transaction's GTID and binlog position; the
reached point (last applied GTID, position, commit time) is returned in ReplayResult.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Sequence

import pymysql
from pymysql.constants import CLIENT

from backupkit.errors import BackupkitError, SourceError
from backupkit.mysql.connection import ConnSpec, connect
from backupkit.repo.catalog import SegmentInfo
from backupkit.restore.replay.apply import Applier, find_binlog_tool
from backupkit.restore.replay.fetch import FETCH_AHEAD, FETCH_WORKERS, Fetcher
from backupkit.restore.replay.filter import EventFilter
from backupkit.restore.replay.parse import CHUNK_BYTES, STATEMENTS_PER_BINLOG, Parser
from backupkit.restore.replay.units import (
    MIB,
    Aborted,
    ByteQueue,
    Progress,
    ReachedPoint,
    ReplayResult,
    TxnInfo,
    mysql_msg,
)
from backupkit.restore.stoppoint import RestoreTarget
from backupkit.storage.base import ObjectStore


def open_replay_connection(spec: ConnSpec, log_bin: bool = False):
    """A connection for the applier: multi-statements on; the target's binlog off unless asked."""
    conn = connect(spec, client_flag=CLIENT.MULTI_STATEMENTS | CLIENT.MULTI_RESULTS,
                   read_timeout=None)
    if not log_bin:
        try:
            with conn.cursor() as cur:
                cur.execute("SET SESSION sql_log_bin=0")
        except pymysql.err.MySQLError as exc:
            conn.close()
            raise SourceError(f"cannot turn off the binlog for the replay on {spec.display()}: "
                              f"{mysql_msg(exc)}", "grant BINLOG ADMIN, or use --log-bin") from None
    return conn


def replay_segments(store: ObjectStore, segments: Iterable[SegmentInfo], start: tuple[str, int],
                    target: RestoreTarget, spec: ConnSpec, *, start_point: ReachedPoint | None = None,
                    log_bin: bool = False, progress: Progress | None = None, prefetch: int = FETCH_AHEAD,
                    fetch_workers: int = FETCH_WORKERS,
                    queue_bytes: int = 32 * MIB, chunk_bytes: int = CHUNK_BYTES,
                    table_filter: EventFilter | None = None, count: int | None = None,
                    raw_bytes: int | None = None) -> ReplayResult:
    """Apply segments from start (the base's binlog coordinates) up to the target's stop point
    (table_filter: only the selected tables' row events, see filter.py).

    segments may be an iterator (RestorePlan.iter_segments: one binlog file's segments read at
    a time); count and raw_bytes then say how many and how big, for the progress view. An
    error raised by the iterator reaches the caller after every segment before it is applied."""
    report = progress or (lambda *a, **k: None)
    t0 = time.monotonic()
    reached = start_point or ReachedPoint(file=start[0], pos=start[1])
    result = ReplayResult(reached=reached)
    if isinstance(segments, Sequence):
        count = len(segments) if count is None else count
        raw_bytes = sum(s.object.raw_size for s in segments) if raw_bytes is None else raw_bytes
        if not segments:
            result.stopped_by = "target"
            return result
    conn = open_replay_connection(spec, log_bin)
    units = ByteQueue(queue_bytes)
    lock = threading.Lock()

    def committed(info: TxnInfo, native: bool) -> None:
        with lock:
            reached.file, reached.pos = info.file, info.end
            reached.gtid = info.gtid or reached.gtid
            reached.commit_time = float(info.commit_time)
            result.transactions += 1
            if native:
                result.native_transactions += 1
            else:
                result.text_transactions += 1
        report("applied", transactions=result.transactions, gtid=info.gtid, bytes=info.size)

    applier = Applier(conn, units, find_binlog_tool(), committed)
    report("plan", segments=count, bytes=raw_bytes)
    fetcher = Fetcher(store, segments, ahead=prefetch, workers=fetch_workers,
                      on_bytes=lambda n: report("fetched", bytes=n))
    parser = Parser(target, start, units.put, chunk_bytes,
                    int(os.environ.get("BACKUPKIT_STATEMENTS_PER_BINLOG", STATEMENTS_PER_BINLOG)),
                    table_filter=table_filter)
    applier.start()
    fetcher.start()
    parse_error: BaseException | None = None
    try:
        between_segments = True  # the parser's state is whole (a fetch error may flush it)
        while True:
            item = fetcher.get()
            if item is None:
                break
            between_segments = False
            try:
                stopped = parser.segment(item)
            finally:
                item.spool.close()
            between_segments = True
            result.segments += 1
            result.binlog_bytes += item.size
            if stopped:
                break
        parser.finish()
        units.put(None, 0)
    except Aborted:
        pass  # the applier failed; its error is raised below
    except BackupkitError as exc:
        # A damaged segment or event: what was parsed before it is whole, verified transactions;
        # the applier finishes them (an open transaction is rolled back when the connection
        # closes), then stops. It never waits for more: the end marker follows at once.
        parse_error = exc
        try:
            if between_segments:
                parser.finish()
            units.put(None, 0)
        except Aborted:
            pass
    except BaseException as exc:  # Ctrl-C or a bug: stop the applier now
        parse_error = exc
        units.close()
    finally:
        fetcher.stop()
        applier.join()
        try:
            conn.close()
        except Exception:
            pass
    if parse_error is not None:
        raise parse_error
    if applier.error is not None:
        raise applier.error
    result.stopped_by = "target" if parser.stopped else "end"
    if table_filter is not None:
        result.notes += table_filter.notes()
    result.seconds = time.monotonic() - t0
    g = target.gtid
    if target.kind == "gtid" and g is not None and not parser.cut.found_gtid:
        result.notes.append(f"GTID {g} was not in the replayed binlog; stopped at {reached.gtid or '-'}")
    elif target.kind == "before_gtid" and g is not None and not parser.cut.found_gtid:
        result.notes.append(f"GTID {g} was not in the replayed binlog; applied up to {reached.gtid or '-'}")
    elif parser.cut.found_gtid and g is not None and parser.cut.found_gtid != g.text:
        result.notes.append(f"matched GTID {parser.cut.found_gtid} to {g} by domain and sequence number")
    report("done", result=result)
    return result
