"""The loss window of every protection strategy, for a disaster at a given moment.

For each strategy present in the repository (cold file copy, hot snapshot, physical hot backup,
binlog shipping) and a disaster at T (default now), ``loss_report`` gives:

- the newest recovery point at or before T, from what the repository held at T (backups that
  had finished by T, segments committed by T);
- the loss window: T minus that point, in seconds;
- the transactions and rows that would be lost, counted from the shipped binlog where it covers
  that stretch (``counted_through`` says how far it does; ``complete`` is True when it reaches T);
- the service downtime the strategy costs (cold: the measured stop-to-start time; snapshot and
  physical: the milliseconds commits were blocked; shipping: none);
- the RTO: the measured duration of its latest restore (``Catalog.restore_records()``).

``build_loss_report`` is pure (manifests in, report out); ``count_losses`` reads segments.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from backupkit.errors import BackupkitError
from backupkit.mysql import binlog_events as be
from backupkit.repo.catalog import BackupManifest, Catalog, GapInfo, SegmentInfo
from backupkit.repo.coverage import in_use
from backupkit.repo.stretches import FileMembers, Stretch
from backupkit.repo.watermark import watermarks
from backupkit.restore.plan import Planner
from backupkit.restore.replay.fetch import Fetcher
from backupkit.storage.base import ObjectStore
from backupkit.util.units import format_time, human_seconds

STRATEGIES = ("cold", "snapshot", "physical", "binlog")
LABELS = {"cold": "cold file copy", "snapshot": "hot snapshot", "physical": "physical hot backup",
          "binlog": "binlog shipping"}
#: Read at most this much binlog to count rows; beyond it, transactions come from the index.
DEFAULT_PARSE_BYTES = 512 * 1024 * 1024


@dataclass
class Window:
    """A stretch of history whose transactions a strategy would lose."""

    end: float  # the disaster time
    start_time: float | None = None  # after this commit time (whole seconds) ...
    start_file: str | None = None  # ... or after these binlog coordinates
    start_pos: int = 0
    transactions: int = 0
    rows: int | None = 0
    counted_through: float | None = None
    complete: bool = False

    def after_start(self, file: str, start_pos: int, commit: float) -> bool:
        if self.start_file is not None:
            return (file, start_pos) >= (self.start_file, self.start_pos)
        return commit > (self.start_time or 0.0)


@dataclass
class StrategyLoss:
    """One strategy's line of the report."""

    strategy: str
    present: bool = True
    recovery_point: float | None = None
    recovery_source: str = ""  # backup id, or the binlog position of the newest shipped commit
    loss_seconds: float | None = None
    transactions_lost: int | None = None
    rows_lost: int | None = None
    counted_through: float | None = None
    complete: bool = False
    downtime_seconds: float | None = None
    downtime_note: str = ""
    rto_seconds: float | None = None
    rto_record: str = ""
    notes: list[str] = field(default_factory=list)
    window: Window | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return LABELS.get(self.strategy, self.strategy)

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "label": self.label,
                "recovery_point": self.recovery_point,
                "recovery_point_text": format_time(self.recovery_point) if self.recovery_point else None,
                "recovery_source": self.recovery_source, "loss_seconds": _r(self.loss_seconds),
                "transactions_lost": self.transactions_lost, "rows_lost": self.rows_lost,
                "counted_through": self.counted_through, "complete": self.complete,
                "downtime_seconds": _r(self.downtime_seconds), "downtime_note": self.downtime_note,
                "rto_seconds": _r(self.rto_seconds), "rto_record": self.rto_record,
                "notes": list(self.notes)}


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


@dataclass
class LossReport:
    """What each strategy would lose for a disaster at ``at``."""

    at: float
    source_id: str
    strategies: list[StrategyLoss]

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, "at_text": format_time(self.at), "source_id": self.source_id,
                "strategies": [s.to_dict() for s in self.strategies]}

    def get(self, strategy: str) -> StrategyLoss | None:
        return next((s for s in self.strategies if s.strategy == strategy), None)

    def table_data(self) -> tuple[str, list[str], list[tuple[str, ...]]]:
        """The report as a table for people: (title, columns, rows of text)."""
        rows: list[tuple[str, ...]] = []
        for s in self.strategies:
            if s.recovery_point is None:
                point = "none" + (f" ({s.notes[0]})" if s.notes else "")
            else:
                point = f"{format_time(s.recovery_point)} ({s.recovery_source})"
            lost_t = "-" if s.transactions_lost is None else \
                f"{'' if s.complete else '>= '}{s.transactions_lost:,}"
            lost_r = "-" if s.rows_lost is None else f"{'' if s.complete else '>= '}{s.rows_lost:,}"
            if s.downtime_seconds is None:
                down = "-"
            elif s.downtime_seconds == 0:
                down = "none" + (f" ({s.downtime_note})" if s.downtime_note != "none" else "")
            else:
                note = f" ({s.downtime_note})" if s.downtime_note else ""
                down = human_seconds(s.downtime_seconds) + note
            rto = human_seconds(s.rto_seconds) if s.rto_seconds is not None else "never measured"
            rows.append((s.label, point, human_seconds(s.loss_seconds), lost_t, lost_r, down, rto))
        return (f"Loss window for a disaster at {format_time(self.at)} (source {self.source_id})",
                ["strategy", "newest recovery point", "loss window", "transactions lost",
                 "rows lost", "service downtime", "RTO (latest restore)"], rows)


# -- building the report ------------------------------------------------------------------------
def _rto(records: Sequence[dict[str, Any]], strategy: str) -> tuple[float | None, str]:
    """Duration of the latest restore that measures this strategy's RTO."""
    for r in reversed(list(records)):
        kind = r.get("kind")
        if strategy in ("cold", "snapshot", "physical"):
            if kind == strategy and r.get("duration") is not None:
                return float(r["duration"]), str(r.get("id", ""))
            if kind == "pitr" and r.get("base_kind") == strategy and r.get("base_seconds") is not None:
                return float(r["base_seconds"]), str(r.get("id", ""))
        elif kind == "pitr" and r.get("duration") is not None:
            return float(r["duration"]), str(r.get("id", ""))
    return None, ""


def _downtime(b: BackupManifest) -> tuple[float | None, str]:
    if b.kind == "cold":
        d = b.stats.get("downtime_seconds")
        if d is None:
            d = (b.details.get("downtime") or {}).get("total_seconds")
        return (float(d) if d is not None else None), "stop to start"
    blocked = (b.details.get("consistency") or {}).get("blocked_ms")
    if blocked is None:
        blocked = b.stats.get("blocked_ms")
    return 0.0, (f"commits blocked {float(blocked):.1f} ms" if blocked is not None else "none")


def build_loss_report(backups: Sequence[BackupManifest],
                      segments_by_source: Mapping[str, Sequence[SegmentInfo]],
                      gaps: Mapping[str, Sequence[GapInfo]] | Sequence[GapInfo] | None,
                      records: Sequence[dict[str, Any]], at: float,
                      source_id: str | None = None,
                      confirmed: Mapping[str, Any] | None = None) -> LossReport:
    """The report without transaction counts (pure); count_losses fills those in.
    confirmed: the shippers' watermarks (source id -> status with point, confirmed_at and
    updated_at): binlog shipping's recovery point is the newest confirmed moment."""
    planner_all = Planner(backups, segments_by_source, gaps, source_id)
    sid = planner_all.source_id
    bases = [b for b in backups if b.source.source_id == sid]
    segs = list(segments_by_source.get(sid, []))
    out: list[StrategyLoss] = []
    for kind in ("cold", "snapshot", "physical"):
        of_kind = [b for b in bases if b.kind == kind]
        if not of_kind:
            continue
        s = StrategyLoss(kind)
        avail = [b for b in of_kind if b.finished_at <= at and b.point.time <= at]
        if not avail:
            s.notes.append(f"no {kind} backup had finished by then")
        else:
            b = max(avail, key=lambda x: (x.point.time, x.id))
            s.recovery_point, s.recovery_source = b.point.time, b.id
            s.loss_seconds = max(0.0, at - b.point.time)
            s.downtime_seconds, s.downtime_note = _downtime(b)
            loc = planner_all.base_location(b)
            start = planner_all.base_point(b)
            s.window = Window(at, start_file=start[0] if loc else None,
                              start_pos=start[1] if loc else 0,
                              start_time=None if loc else b.point.time)
        s.rto_seconds, s.rto_record = _rto(records, kind)
        out.append(s)
    if segs:
        s = StrategyLoss("binlog")
        shipped = _shipped_by(segs, at)
        avail = [b for b in bases if b.finished_at <= at]
        conf = {k: v for k, v in (confirmed or {}).items()
                if k == sid and getattr(v, "updated_at", 0) <= at}
        planner = Planner(avail, {sid: shipped}, gaps, sid, confirmed=conf)
        ivs = [(a, z) for a, z in planner.intervals() if a <= at]
        newest = max((min(z, at) for a, z in ivs), default=None)
        if not avail:
            s.notes.append("no base to replay onto")
        elif newest is None:
            s.notes.append("nothing reachable by then")
        else:
            last = _newest_shipped(shipped, newest)  # (commit time, file, end, GTID) or None
            s.recovery_point = newest
            s.recovery_source = (f"{last[1]}:{last[2]} {last[3]}".strip() if last else "base only")
            if planner.confirmed_at and newest >= planner.confirmed_at and \
                    (last is None or planner.confirmed_at > last[0]):
                s.recovery_source = "confirmed through by the shipper"
            s.loss_seconds = max(0.0, at - newest)
            s.window = Window(at, start_time=newest)
        s.downtime_seconds, s.downtime_note = 0.0, "none"
        s.rto_seconds, s.rto_record = _rto(records, "binlog")
        out.append(s)
    return LossReport(at, sid, out)


class NeedSegments(Exception):
    """Stretches cannot answer what the report asks (segments made both before and after the
    disaster time, the newest commit before a moment inside one): the report is made again with
    their segments (loss_report: only theirs, read one binlog file each)."""

    def __init__(self, stretches: Sequence[Stretch] = ()) -> None:
        super().__init__()
        self.stretches = list(stretches)


def _shipped_by(segs: Sequence[SegmentInfo | Stretch], at: float) -> list[SegmentInfo | Stretch]:
    """The segments committed by at (an index entry without a time counts as committed)."""
    out: list[SegmentInfo | Stretch] = []
    need: list[Stretch] = []
    for x in segs:
        if isinstance(x, Stretch):
            if x.created_min > at:
                continue  # every segment in it was made after at (created_min is 0 when one has no time)
            if x.created_max > at:
                need.append(x)
            else:
                out.append(x)
        elif not x.created_at or x.created_at <= at:
            out.append(x)
    if need:
        raise NeedSegments(need)
    return out


def _newest_shipped(shipped: Sequence[SegmentInfo | Stretch], newest: float
                    ) -> tuple[float, str, int, str] | None:
    """The shipped segment with the newest commit at or before newest: (its last commit time,
    file, end position, last GTID); the latest position among equal times."""
    best: tuple[float, str, int, str] | None = None
    for x in shipped:
        if isinstance(x, Stretch):
            if not x.min_last_commit or x.min_last_commit > newest:
                continue  # no member with a commit at or before newest
            if x.max_last_commit > newest:
                raise NeedSegments([x])
            commit, end, gtid = x.best
        else:
            commit, end, gtid = x.last_commit_time, x.end_pos, x.gtid_last
        if commit and commit <= newest and (best is None or (commit, x.binlog_file, end) > best[:3]):
            best = (commit, x.binlog_file, end, gtid)
    return best


# -- counting from the shipped binlog -------------------------------------------------------------
def count_losses(store: ObjectStore, segments: Sequence[SegmentInfo | Stretch], windows: Sequence[Window],
                 max_parse_bytes: int = DEFAULT_PARSE_BYTES,
                 read: Callable[[SegmentInfo], Any] | None = None,
                 expand: Callable[[Stretch], list[SegmentInfo] | None] | None = None) -> None:
    """Fill in each window's transactions and rows from the shipped binlog (bounded memory).

    Segments wholly inside a window count from their index entry; segments at a window's edge
    are parsed. Rows need parsing: past max_parse_bytes they are left unknown (None).

    segments may be stretches (repo/stretches.py, as Catalog.stretches reads them): one wholly
    inside or outside every window, with no budget left to parse it, counts from its totals; the
    others are read through expand (their segments, one binlog file at a time: restore/pitr.py
    FileMembers), so a window reaching weeks back holds one file's segments, not all of them."""
    wins = [w for w in windows if w is not None]
    if not wins:
        return
    stretched = bool(segments) and isinstance(segments[0], Stretch)
    # a compacted segment, not also the small ones it covers (stretches are folded so already)
    segs = list(segments) if stretched else in_use(segments)
    newest = max((s.last_commit_time for s in segs), default=0.0)
    for w in wins:
        w.counted_through = min(w.end, newest) if newest else None
        w.complete = newest >= w.end
    budget = [max_parse_bytes]
    if not stretched:
        _count_segments(store, segs, wins, budget, read)
        return
    for st in _relevant(segs, wins):
        states = [_state(st, w) for w in wins]
        got = None
        if "edge" in states or budget[0] >= st.object.raw_size:
            got = expand(st) if expand is not None else None
        if got is not None:
            _count_segments(store, got, wins, budget, read)
            continue
        _from_index(st, wins, states)
        for w, state in zip(wins, states, strict=True):
            if state == "edge":  # its segments are gone (pruned since): not counted
                w.rows, w.complete = None, False


def _relevant(segs: Sequence[Any], wins: Sequence[Window]) -> list[Any]:
    """The segments (or stretches) holding a transaction that a window may count."""
    last_end = max(w.end for w in wins)
    return [s for s in segs if s.end_pos > s.start_pos and s.transactions
            and (s.first_commit_time or 0) <= last_end and any(_may_touch(s, w) for w in wins)]


def _from_index(s: SegmentInfo | Stretch, wins: Sequence[Window], states: Sequence[str]) -> None:
    """Count s from its index entry (or a stretch's totals): its transactions, rows unknown."""
    for w, st in zip(wins, states, strict=True):
        if st == "inside":
            w.transactions += s.transactions
            w.rows = None


def _count_segments(store: ObjectStore, segments: Sequence[SegmentInfo], wins: Sequence[Window],
                    budget: list[int], read: Callable[[SegmentInfo], Any] | None) -> None:
    """count_losses over segments: the edges and what budget[0] (bytes, spent here) allows are
    parsed, fetched ahead in parallel; the others count from their index entries."""
    parsed: list[tuple[SegmentInfo, list[str]]] = []
    for s in _relevant(segments, wins):
        states = [_state(s, w) for w in wins]
        if any(st == "edge" for st in states) or budget[0] >= s.object.raw_size:
            budget[0] -= s.object.raw_size
            parsed.append((s, states))
        else:
            _from_index(s, wins, states)
    # fetched ahead in parallel: one request per segment, many small ones (replay/fetch.py)
    fetcher = None if read else Fetcher(store, [s for s, _ in parsed])
    if fetcher is not None:
        fetcher.start()
    try:
        for s, states in parsed:
            reader = read(s) if read else fetcher.get().spool  # type: ignore[union-attr]
            try:
                _count(reader, s, wins, states)
            finally:
                close = getattr(reader, "close", None)
                if close:
                    close()
    finally:
        if fetcher is not None:
            fetcher.stop()


def _count(reader, s: SegmentInfo, wins: Sequence[Window], states: Sequence[str]) -> None:
    for txn in be.transactions(be.iter_events(reader)):
        commit = float(txn.commit_time)
        rows = _rows(txn)
        for w, st in zip(wins, states, strict=True):
            if st == "outside" or commit > w.end:
                continue
            if not w.after_start(s.binlog_file, txn.start_pos, commit):
                continue
            w.transactions += 1
            if w.rows is not None:
                w.rows = None if rows is None else w.rows + rows


def _rows(txn: be.Transaction) -> int | None:
    total = 0
    for ops in txn.rows.values():
        for n in ops.values():
            if n is None:
                return None
            total += n
    return total


def _may_touch(s: SegmentInfo, w: Window) -> bool:
    if (s.first_commit_time or 0) > w.end:
        return False
    if w.start_file is not None:
        return (s.binlog_file, s.end_pos) > (w.start_file, w.start_pos)
    return (s.last_commit_time or s.last_event_time or 0) > (w.start_time or 0)


def _state(s: SegmentInfo, w: Window) -> str:
    """inside: every transaction of s is in w; outside: none; edge: parse to tell."""
    if not _may_touch(s, w):
        return "outside"
    last = s.last_commit_time or s.last_event_time
    if last > w.end:
        return "edge"
    if w.start_file is not None:
        return "inside" if (s.binlog_file, s.start_pos) >= (w.start_file, w.start_pos) else "edge"
    return "inside" if (s.first_commit_time or 0) > (w.start_time or 0) else "edge"


def loss_report(catalog: Catalog, at: float | None = None, source_id: str | None = None,
                count: bool = True, max_parse_bytes: int = DEFAULT_PARSE_BYTES) -> LossReport:
    """The loss report of the repository for a disaster at ``at`` (default now)."""
    at = time.time() if at is None else at
    backups = catalog.backups()
    sources = sorted({b.source.source_id for b in backups} | set(catalog.sources()))
    if source_id is not None and source_id not in sources:
        raise BackupkitError(f"no source {source_id!r} in the repository",
                             f"sources: {', '.join(sources) or 'none'}")
    confirmed = watermarks(catalog, sources)  # before the segments: see repo.watermark
    # stretches (repo/stretches.py): the same runs, a few objects per binlog file; the bases' and
    # the watermark's points stay where the segments put them
    segs: dict[str, Any] = {}
    for sid in sources:
        cuts = [(b.point.file, b.point.pos) for b in backups
                if b.source.source_id == sid and b.point.file]
        cuts += [confirmed[sid].point] if sid in confirmed else []
        segs[sid] = catalog.stretches(sid, cuts=cuts)
    gaps = {sid: catalog.gaps(sid) for sid in sources}
    records = catalog.restore_records()
    items = segs
    for _ in range(EXPAND_TRIES):
        try:
            report = build_loss_report(backups, items, gaps, records, at, source_id, confirmed)
            break
        except NeedSegments as need:  # a moment inside stretches: their segments say
            items = {sid: with_segments(v, need.stretches, catalog.file_segments)
                     for sid, v in items.items()}
    else:
        segs = items = {sid: catalog.segments(sid) for sid in sources}
        report = build_loss_report(backups, items, gaps, records, at, source_id, confirmed)
    if count:
        windows = [s.window for s in report.strategies if s.window is not None]
        if windows:
            sid = report.source_id
            count_losses(catalog.store, segs.get(sid, []), windows, max_parse_bytes,
                         expand=FileMembers(catalog.file_segments))
    shipped = bool(segs.get(report.source_id))
    for s in report.strategies:
        w = s.window
        if w is not None and not shipped:
            s.notes.append("no shipped binlog to count lost transactions from")
        elif w is not None and (count or s.strategy == "binlog"):
            s.transactions_lost = w.transactions if count else None
            s.rows_lost = w.rows if count else None
            s.counted_through, s.complete = w.counted_through, w.complete
    return report


#: Reports made again with the segments of the stretches they could not answer from, before
#: every segment is read (each round expands the stretches that one question needs).
EXPAND_TRIES = 4


def with_segments(items: Sequence[SegmentInfo | Stretch], need: Sequence[Stretch],
                  read_file: Callable[[str, str], list[SegmentInfo]]) -> list[SegmentInfo | Stretch]:
    """items with each stretch of need replaced by every listed segment folded into it (covered
    ones included, as Catalog.segments lists them), read_file(source_id, binlog_file) giving the
    listed segments of a file (each file read once)."""
    wanted = {id(st) for st in need}
    files: dict[tuple[str, str], list[SegmentInfo]] = {}
    out: list[SegmentInfo | Stretch] = []
    for x in items:
        if id(x) not in wanted:
            out.append(x)
            continue
        at = (x.source_id, x.binlog_file)
        if at not in files:
            files[at] = read_file(*at)
        a, z = x.start_pos, x.end_pos
        out += [s for s in files[at] if a <= s.start_pos and s.end_pos <= z
                and (s.start_pos < z or a == z)]  # an empty anchor at z opens the next stretch
    return out


def loss_after_restore(catalog: Catalog, source_id: str | None = None) -> LossReport | None:
    """The report printed after a restore: never fails the restore (None if it cannot be made).
    Transactions are counted from the index entries, rows only in the segments at a window's
    edge (else unknown, "-"): reading and parsing the whole binlog again after replaying it cost
    as much as the replay over small segments (bench/compact.py); `backupkit report` counts
    them all."""
    try:
        return loss_report(catalog, source_id=source_id, max_parse_bytes=0)
    except Exception:
        return None
