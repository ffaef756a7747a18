"""Prometheus metrics: a prometheus_client registry whose collector renders the MonitorState.

A scrape builds a ProtectionStatus from state already in memory (the repository view the daemon
refreshes every [metrics] refresh_interval, the status file, the shipper's live state): it
never lists the repository. `backupkit metrics --textfile` writes the same text atomically for
node_exporter's textfile collector. docs/monitoring.md lists every series.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

from backupkit import __version__
from backupkit.errors import BackupkitError
from backupkit.monitor.live import write_atomic
from backupkit.monitor.status import (
    BASE_KINDS,
    Objectives,
    ProtectionStatus,
    RepositoryView,
    ShipperLive,
    build_status,
    drill_state,
    restorable_newest,
)

#: Seconds between two samples of the shipper lag kept for the page's chart.
LAG_SAMPLE_SECONDS = 10.0
#: Samples kept: six hours at one per LAG_SAMPLE_SECONDS.
LAG_SAMPLES = 2160


class MonitorState:
    """What the metrics, the page and the notifier read: kept up to date by its owner.

    repository_fn reads a RepositoryView (slow: it lists the repository); refresh() calls it,
    from the owner's thread or the background refresher (start()). status() only combines what
    is in memory with the small status and shipper files, so it is cheap enough for a scrape.
    """

    def __init__(self, policy: str, *, repository_fn: Callable[[], RepositoryView] | None = None,
                 objectives_fn: Callable[[RepositoryView | None], Objectives] | None = None,
                 daemon_fn: Callable[[], tuple[dict[str, Any], bool | None]] | None = None,
                 shipper_fn: Callable[[], ShipperLive | None] | None = None,
                 refresh_interval: float = 30.0, history_file: Path | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.policy = policy
        self.repository_fn = repository_fn
        self.objectives_fn = objectives_fn or (lambda repo: Objectives())
        self.daemon_fn = daemon_fn or (lambda: ({}, None))
        self.shipper_fn = shipper_fn or (lambda: None)
        self.refresh_interval = refresh_interval
        self.history_file = history_file
        self.clock = clock
        self.repository: RepositoryView | None = None
        self.objectives = self.objectives_fn(None)
        self.lag_history: deque[tuple[float, float]] = deque(maxlen=LAG_SAMPLES)
        self.refreshes = 0
        self.refresh_errors = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_sample = 0.0
        self._last_saved = 0.0
        self.listeners: list[Callable[[ProtectionStatus], None]] = []
        self._load_history()

    # -- the repository view --------------------------------------------------------------
    def refresh(self) -> None:
        """Read the repository again (the only slow step); failures keep the previous view."""
        if self.repository_fn is None:
            return
        try:
            view = self.repository_fn()
        except Exception as exc:  # noqa: BLE001 - a monitor must outlive a storage outage
            self.refresh_errors += 1
            why = exc.message if isinstance(exc, BackupkitError) else f"{type(exc).__name__}: {exc}"
            view = RepositoryView(read_at=self.clock(), error=why)
            if self.repository is not None:
                self.repository.error = view.error
                return
        with self._lock:
            self.repository = view
            self.objectives = self.objectives_fn(view)
            self.refreshes += 1

    def touch(self) -> None:
        """Ask the background refresher to read the repository soon (a job just finished)."""
        self._wake.set()

    def start(self) -> MonitorState:
        """Refresh now and then every refresh_interval in a daemon thread; notify listeners."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="monitor-refresh", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
        self._save_history(force=True)

    def _loop(self) -> None:
        next_read = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_read or self._wake.is_set():
                self._wake.clear()
                self.refresh()
                next_read = time.monotonic() + self.refresh_interval
            st = self.status()
            for fn in list(self.listeners):
                with contextlib.suppress(Exception):
                    fn(st)
            self._wake.wait(min(1.0, max(0.05, next_read - time.monotonic())))

    # -- the status ---------------------------------------------------------------------------
    def status(self, now: float | None = None) -> ProtectionStatus:
        """The current ProtectionStatus from memory and the small local files."""
        now = self.clock() if now is None else now
        daemon, alive = self.daemon_fn()
        shipper = self.shipper_fn()
        with self._lock:
            repo, obj = self.repository, self.objectives
        st = build_status(self.policy, now=now, repository=repo, daemon_status=daemon,
                          daemon_alive=alive, shipper=shipper, objectives=obj)
        if shipper is not None and st.lag_seconds is not None:
            self._sample(now, st.lag_seconds)
        st.lag_history = list(self.lag_history)
        return st

    def _sample(self, now: float, lag: float) -> None:
        if self._thread is None:  # only the state's owner (a daemon, a shipper) records history
            return
        with self._lock:
            if now - self._last_sample >= LAG_SAMPLE_SECONDS:
                self.lag_history.append((now, lag))
                self._last_sample = now
        self._save_history()

    def _load_history(self) -> None:
        if self.history_file is None:
            return

        try:
            data = json.loads(self.history_file.read_text())
            cutoff = self.clock() - LAG_SAMPLES * LAG_SAMPLE_SECONDS
            self.lag_history.extend((float(t), float(v)) for t, v in data if float(t) >= cutoff)
        except (OSError, ValueError, TypeError):
            pass

    def _save_history(self, force: bool = False) -> None:
        """Keep the lag history in a file, so that `backupkit status --html` can draw it."""
        if self.history_file is None or (not force and time.monotonic() - self._last_saved < 60):
            return
        self._last_saved = time.monotonic()

        with contextlib.suppress(OSError):
            write_atomic(self.history_file, json.dumps([[round(t, 3), round(v, 3)]
                                                        for t, v in list(self.lag_history)]).encode())


def load_history(path: Path) -> list[tuple[float, float]]:
    """The lag history a daemon saved (empty when there is none)."""
    try:
        return [(float(t), float(v)) for t, v in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError):
        return []


# -- the collector --------------------------------------------------------------------------------
class StatusCollector:
    """A prometheus_client collector: every series from one ProtectionStatus per scrape."""

    def __init__(self, status_fn: Callable[[], ProtectionStatus],
                 extra: Callable[[], dict[str, float]] | None = None) -> None:
        self.status_fn = status_fn
        self.extra = extra

    def describe(self) -> list:
        return []  # no describe pass on registration: collect() would run it too early

    def collect(self) -> Iterator:
        t0 = time.monotonic()
        st = self.status_fn()
        yield from families(st)
        g = GaugeMetricFamily("backupkit_scrape_duration_seconds",
                              "Time taken to build this scrape from the in-memory state.")
        g.add_metric([], time.monotonic() - t0)
        yield g


def _gauge(name: str, doc: str, *labels: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _counter(name: str, doc: str, *labels: str) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=list(labels))


def families(st: ProtectionStatus) -> Iterator:
    """The metric families of a status (names follow Prometheus conventions; see docs/monitoring.md)."""
    info = InfoMetricFamily("backupkit", "backupkit version and policy.",
                            labels=["version", "policy"])
    info.add_metric([__version__, st.policy], {})
    yield info
    up = _gauge("backupkit_daemon_up", "1 when the scheduler daemon runs.")
    up.add_metric([], 1.0 if st.daemon.get("alive") else 0.0)
    yield up
    healthy = _gauge("backupkit_healthy", "1 when every objective is met (schedule status --check).")
    healthy.add_metric([], 0.0 if st.problems else 1.0)
    yield healthy
    prob = _gauge("backupkit_problems", "Objectives not met, by kind.", "kind")
    kinds: dict[str, int] = {}
    for p in st.problems:
        kinds[p.kind] = kinds.get(p.kind, 0) + 1
    for k, n in sorted(kinds.items()):
        prob.add_metric([k], float(n))
    yield prob

    ls = _gauge("backupkit_last_success_timestamp_seconds",
                "End of the last successful run of a strategy (UTC epoch).", "strategy")
    lf = _gauge("backupkit_last_failure_timestamp_seconds",
                "End of the last failed run of a strategy (UTC epoch).", "strategy")
    dur = _gauge("backupkit_last_run_duration_seconds",
                 "Duration of the last run of a strategy.", "strategy")
    stored = _gauge("backupkit_stored_bytes",
                    "Bytes the repository holds for a strategy (backups or binlog segments).",
                    "strategy")
    count = _gauge("backupkit_backups", "Backups (or binlog segments) a strategy has in the "
                   "repository.", "strategy")
    runs = _counter("backupkit_runs", "Runs of a strategy by the scheduler, by result.", "strategy", "result")
    loss = _gauge("backupkit_loss_window_seconds",
                  "What a strategy would lose if the server died now: seconds since its "
                  "newest recovery point.", "strategy")
    point = _gauge("backupkit_recovery_point_timestamp_seconds",
                   "The newest moment a strategy can restore (UTC epoch).", "strategy")
    objective = _gauge("backupkit_loss_objective_seconds",
                       "The loss window the policy promises for a strategy.", "strategy")
    max_age = _gauge("backupkit_max_age_seconds",
                     "Longest time a strategy may go without a successful run: its schedule's "
                     "interval, its run time and the grace.", "strategy")
    for s in st.strategies:
        lab = [s.strategy]
        if s.last_success is not None:
            ls.add_metric(lab, s.last_success)
        if s.last_failure is not None:
            lf.add_metric(lab, s.last_failure)
        if s.last_duration is not None:
            dur.add_metric(lab, float(s.last_duration))
        if s.stored_bytes is not None:
            stored.add_metric(lab, float(s.stored_bytes))
        if s.strategy in (*BASE_KINDS, "binlog"):
            count.add_metric(lab, float(s.backups))
        if s.runs:
            runs.add_metric([s.strategy, "ok"], float(s.runs - s.failures))
            runs.add_metric([s.strategy, "failed"], float(s.failures))
        if s.loss_seconds is not None:
            loss.add_metric(lab, s.loss_seconds)
        if s.recovery_point is not None:
            point.add_metric(lab, s.recovery_point)
        if s.loss_objective is not None:
            objective.add_metric(lab, s.loss_objective)
        if s.max_age is not None:
            max_age.add_metric(lab, s.max_age)
    yield from (ls, lf, dur, stored, count, runs, loss, point, objective, max_age)

    yield from _shipper_families(st)

    repo = st.repository
    oldest = _gauge("backupkit_restorable_oldest_timestamp_seconds",
                    "The oldest moment a source can be restored to (UTC epoch).", "source")
    newest = _gauge("backupkit_restorable_newest_timestamp_seconds",
                    "The newest moment a source can be restored to (UTC epoch).", "source")
    gaps = _gauge("backupkit_binlog_gaps", "Gaps in a source's shipped binlog in the repository.", "source")
    if repo is not None:
        for src in repo.sources:
            if src.oldest is not None:
                oldest.add_metric([src.source_id], src.oldest)
            nw = restorable_newest(st, src)
            if nw is not None:
                newest.add_metric([src.source_id], nw)
            gaps.add_metric([src.source_id], float(len(src.gaps)))
    yield from (oldest, newest, gaps)

    drill, ok = drill_state(st)
    d_ok = _gauge("backupkit_restore_drill_success",
                  "1 when the last restore drill succeeded, 0 when it failed.")
    d_at = _gauge("backupkit_restore_drill_timestamp_seconds", "When the last restore drill ended.")
    d_rto = _gauge("backupkit_restore_drill_rto_seconds",
                   "Measured duration (RTO) of the last restore drill, by base kind.", "kind")
    if ok is not None:
        d_ok.add_metric([], 1.0 if ok else 0.0)
    if drill is not None:
        d_at.add_metric([], drill.at)
        rtos: dict[str, float] = {}
        for d in repo.drills if repo else []:
            if d.rto_seconds is not None and d.ok:
                rtos[d.kind] = d.rto_seconds
        for k, v in sorted(rtos.items()):
            d_rto.add_metric([k], v)
    yield from (d_ok, d_at, d_rto)

    t_up = _gauge("backupkit_target_up", "1 when a storage target is reachable.", "target")
    t_lag = _gauge("backupkit_target_lag_seconds",
                   "How long the oldest object a storage target lacks has existed elsewhere.",
                   "target")
    t_miss = _gauge("backupkit_target_missing_objects",
                    "Objects the other storage targets hold and this one lacks.", "target")
    t_thr = _gauge("backupkit_target_lag_threshold_seconds",
                   "How far behind a storage target may be ([metrics] target_lag_threshold).")
    t_thr.add_metric([], st.objectives.target_lag_threshold)
    for t in repo.targets if repo else []:
        t_up.add_metric([t.name], 1.0 if t.up else 0.0)
        if t.lag_seconds is not None:
            t_lag.add_metric([t.name], t.lag_seconds)
        if t.missing_objects is not None:
            t_miss.add_metric([t.name], float(t.missing_objects))
    yield from (t_up, t_lag, t_miss, t_thr)

    lease = InfoMetricFamily("backupkit_lease_holder", "The shipper lease of a source: who holds it.",
                             labels=["source", "holder"])
    lease_exp = _gauge("backupkit_lease_expiry_timestamp_seconds",
                       "When the shipper lease of a source expires unless renewed.", "source")
    for le in repo.leases if repo else []:
        if le.active:
            lease.add_metric([le.source_id, le.holder], {})
        if le.expires_at:
            lease_exp.add_metric([le.source_id], le.expires_at)
    yield from (lease, lease_exp)

    rr = _gauge("backupkit_repository_read_timestamp_seconds",
                "When the daemon last read the repository for these metrics.")
    rd = _gauge("backupkit_repository_read_duration_seconds", "How long that read took.")
    if repo is not None:
        rr.add_metric([], repo.read_at)
        rd.add_metric([], repo.read_seconds)
    yield from (rr, rd)


def _shipper_families(st: ProtectionStatus) -> Iterator:
    sh = st.shipper
    src = [sh.source_id if sh else ""]
    up = _gauge("backupkit_binlog_shipper_up", "1 when the binlog shipper runs and ships.", "source")
    yield_up = sh is not None or st.objectives.shipper_expected
    if yield_up:
        up.add_metric(src, 1.0 if st.shipper_up else 0.0)
    yield up
    lag = _gauge("backupkit_binlog_lag_seconds",
                 "Seconds since the newest moment whose binlog is confirmed shipped; grows "
                 "while the shipper is stopped.", "source")
    conf = _gauge("backupkit_binlog_confirmed_timestamp_seconds",
                  "Everything the source committed up to this moment is in the repository.",
                  "source")
    thr = _gauge("backupkit_binlog_lag_threshold_seconds",
                 "Shipper lag the policy tolerates ([metrics] lag_threshold).")
    thr.add_metric([], st.objectives.lag_threshold)
    segs = _counter("backupkit_binlog_segments_shipped", "Segments committed by this shipper run.", "source")
    byts = _counter("backupkit_binlog_shipped_bytes", "Binlog bytes committed by this shipper run.", "source")
    txs = _counter("backupkit_binlog_transactions_shipped",
                   "Transactions committed by this shipper run.", "source")
    errs = _counter("backupkit_binlog_upload_errors",
                    "Failed segment uploads (each retried) in this shipper run.", "source")
    gaps = _counter("backupkit_binlog_gaps_detected",
                    "Gaps recorded for the source: binlog purged before it was shipped.", "source")
    if sh is not None:
        lv = st.lag_seconds
        if lv is not None:
            lag.add_metric(src, lv)
        if sh.confirmed_at is not None:
            conf.add_metric(src, sh.confirmed_at)
        segs.add_metric(src, float(sh.segments))
        byts.add_metric(src, float(sh.bytes))
        txs.add_metric(src, float(sh.transactions))
        errs.add_metric(src, float(sh.upload_errors))
    repo_gaps = {s.source_id: len(s.gaps) for s in st.repository.sources} if st.repository else {}
    if sh is not None:
        repo_gaps[sh.source_id] = max(repo_gaps.get(sh.source_id, 0), sh.gaps)
    for sid, n in sorted(repo_gaps.items()):
        gaps.add_metric([sid], float(n))
    yield from (lag, conf, thr, segs, byts, txs, errs, gaps)


def registry_for(status_fn: Callable[[], ProtectionStatus]) -> CollectorRegistry:
    """A registry holding only backupkit's collector (no process or platform series)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StatusCollector(status_fn))
    return reg


def render(status_fn: Callable[[], ProtectionStatus]) -> bytes:
    """The exposition text of one status."""
    return generate_latest(registry_for(status_fn))


def write_textfile(path: Path, status_fn: Callable[[], ProtectionStatus]) -> int:
    """`backupkit metrics --textfile`: the metrics for node_exporter's textfile collector."""
    data = render(status_fn)
    write_atomic(Path(path), data)
    return len(data)
