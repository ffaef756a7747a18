"""The model of "am I protected right now?", shared by the status page, the terminal summary,
the Prometheus metrics, the notifications and `schedule status --check`.

A ProtectionStatus is built from three plain inputs, so that the same judgement applies
wherever the inputs come from:
- a RepositoryView: what the repository holds (restorable intervals, gaps and bases per
  source, the newest backup of each kind, the restore drills, the lease, the storage targets).
  Reading it lists the repository, so the daemon refreshes it now and then (monitor/collect.py),
  never on a scrape;
- the daemon's status file (jobs and their last runs, the supervised shipper);
- the shipper's live state (ShipperLive): lag, the newest moment confirmed complete, counters.

``judge`` turns them into Problems against the Objectives. The Prometheus alert rules in
docs/alerts.yml express the same objectives over the metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from backupkit.util.units import format_time
from backupkit.util.units import human_seconds as _secs

if TYPE_CHECKING:
    from backupkit.config import Policy

BASE_KINDS = ("cold", "snapshot", "physical")
STRATEGIES = ("cold", "snapshot", "physical", "binlog")
LABELS = {"cold": "cold file copy", "snapshot": "hot snapshot", "physical": "physical hot backup",
          "binlog": "binlog shipping", "verify": "verify", "prune": "prune", "sync": "sync"}
#: A shipper whose state was not refreshed for this long is taken for stopped.
SHIPPER_STALE_SECONDS = 5.0
#: After the daemon starts, its shipper has this long to report before it counts as down.
SHIPPER_START_GRACE = 15.0


# -- inputs -----------------------------------------------------------------------------------
@dataclass
class Base:
    """A base backup on the timeline."""

    id: str
    kind: str
    time: float  # its consistent point (UTC epoch)
    stored_bytes: int = 0
    duration: float = 0.0
    finished_at: float = 0.0


@dataclass
class Gap:
    """A stretch of binlog that was never shipped."""

    start: float  # the newest commit before it (0 when unknown)
    end: float | None  # the first commit after it (None when shipping did not resume)
    reason: str = ""
    detected_at: float = 0.0


@dataclass
class SourceTimeline:
    """What a source can be restored to: merged intervals, the gaps between, and the bases."""

    source_id: str
    intervals: list[tuple[float, float]] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    bases: list[Base] = field(default_factory=list)
    binlog_runs: list[tuple[float, float]] = field(default_factory=list)  # shipped, continuous
    segments: int = 0
    binlog_stored_bytes: int = 0
    newest_commit: float | None = None
    confirmed_at: float | None = None  # the shipper's watermark in the repository (repo/watermark.py)

    @property
    def oldest(self) -> float | None:
        return self.intervals[0][0] if self.intervals else None

    @property
    def newest(self) -> float | None:
        return max(z for _, z in self.intervals) if self.intervals else None


@dataclass
class Drill:
    """The newest restore drill (verify --restore-test) or measured restore."""

    at: float
    kind: str
    ok: bool
    rto_seconds: float | None = None
    backup_id: str = ""
    record_id: str = ""


@dataclass
class TargetHealth:
    """One storage target of a mirrored repository."""

    name: str
    url: str = ""
    up: bool = True
    lag_seconds: float | None = 0.0
    missing_objects: int | None = 0
    error: str = ""


@dataclass
class LeaseInfo:
    source_id: str
    holder: str
    expires_at: float
    active: bool


@dataclass
class RepositoryView:
    """What the repository holds, read at ``read_at`` (monitor/collect.py builds it)."""

    read_at: float
    storage: str = ""
    sources: list[SourceTimeline] = field(default_factory=list)
    drills: list[Drill] = field(default_factory=list)
    targets: list[TargetHealth] = field(default_factory=list)
    leases: list[LeaseInfo] = field(default_factory=list)
    read_seconds: float = 0.0
    error: str = ""

    def bases(self, kind: str | None = None) -> list[Base]:
        out = [b for s in self.sources for b in s.bases if kind is None or b.kind == kind]
        return sorted(out, key=lambda b: (b.time, b.id))

    def gap_count(self) -> int:
        return sum(len(s.gaps) for s in self.sources)


@dataclass
class ShipperLive:
    """The binlog shipper as it runs: written by the shipper, read by the daemon and the page."""

    source_id: str = ""
    pid: int | None = None
    updated_at: float = 0.0  # when the shipper last wrote this
    confirmed_at: float | None = None  # everything committed on the source up to here is shipped
    state: str = "shipping"  # shipping | reconnecting | standby | stopped
    error: str = ""  # why it is reconnecting (the source is down or unreachable)
    segments: int = 0
    bytes: int = 0
    stored_bytes: int = 0
    transactions: int = 0
    upload_errors: int = 0
    reconnects: int = 0
    gaps: int = 0  # gaps detected by this shipper run
    started_at: float = 0.0
    lease_holder: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShipperLive:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})

    def fresh(self, now: float) -> bool:
        """True when the shipper wrote its state recently (it runs)."""
        return self.state != "stopped" and now - self.updated_at <= SHIPPER_STALE_SECONDS

    def lag(self, now: float) -> float | None:
        """Seconds since the newest moment confirmed complete (grows while the shipper is down)."""
        if self.confirmed_at is None:
            return None
        return max(0.0, now - self.confirmed_at)


@dataclass
class Objectives:
    """What "protected" means for a policy: the thresholds the judgement and the alerts use."""

    #: strategy -> longest time between two successful runs (schedule + measured run + grace)
    max_age: dict[str, float] = field(default_factory=dict)
    #: strategy -> the loss window the policy promises (alert when the current one is above)
    loss_objective: dict[str, float] = field(default_factory=dict)
    schedules: dict[str, str] = field(default_factory=dict)
    lag_threshold: float = 60.0
    target_lag_threshold: float = 900.0
    shipper_expected: bool = False
    #: strategy -> the scheduler's job that makes it ("physical" comes from the "snapshot" job
    #: when [snapshot] engine = "physical")
    job_of: dict[str, str] = field(default_factory=dict)


def objectives_for(policy: Policy, interval_of: Callable[[str], float | None],
                   repository: RepositoryView | None = None) -> Objectives:
    """The policy's objectives. interval_of(cron) is the longest time between two runs of a
    schedule (the scheduler's worst_interval); a base is overdue after that interval, plus its
    newest measured run, plus the grace ([metrics] grace, default 10% of the interval, at least
    60 s). Its loss objective is the same unless [metrics] loss_objective sets one; binlog's is
    the lag threshold."""
    m = policy.metrics
    obj = Objectives(lag_threshold=m.lag_threshold, target_lag_threshold=m.target_lag_threshold)
    for name in ("cold", "snapshot", "physical", "binlog", "verify", "prune", "sync"):
        expr = getattr(policy.strategies, name, None)
        if not expr or expr == "off":
            continue
        if name == "snapshot" and getattr(policy.snapshot, "engine", "logical") == "physical":
            name = "physical"
            obj.job_of["physical"] = "snapshot"
        obj.schedules[name] = expr
        if name == "binlog":
            obj.shipper_expected = expr == "continuous"
            obj.loss_objective["binlog"] = m.loss_objective.get("binlog", m.lag_threshold)
            continue
        if name not in BASE_KINDS:
            continue
        interval = interval_of(expr)
        if interval is None:
            continue
        grace = m.grace if m.grace is not None else max(60.0, 0.1 * interval)
        bases = repository.bases(name) if repository else []
        run = max(bases, key=lambda b: b.finished_at).duration if bases else 0.0
        obj.max_age[name] = interval + grace + run
        obj.loss_objective[name] = m.loss_objective.get(name, obj.max_age[name])
    for name, v in m.loss_objective.items():
        obj.loss_objective.setdefault(name, v)
    return obj


# -- outputs ----------------------------------------------------------------------------------
@dataclass
class StrategyStatus:
    """One strategy's line: its last runs and its current loss window."""

    strategy: str
    schedule: str = ""
    last_result: str | None = None
    last_success: float | None = None
    last_failure: float | None = None
    last_duration: float | None = None
    last_error: str | None = None
    runs: int = 0
    failures: int = 0
    stored_bytes: int | None = None
    backups: int = 0
    recovery_point: float | None = None
    loss_seconds: float | None = None
    loss_objective: float | None = None
    max_age: float | None = None
    next_run: str | None = None

    @property
    def label(self) -> str:
        return LABELS.get(self.strategy, self.strategy)


@dataclass
class Problem:
    """One objective that is not met; ``kind`` names the alert that matches it."""

    kind: str  # shipper_down | shipper_lagging | gap | overdue | job_failed | drill_failed |
    # target_behind | loss_over_objective | daemon_down
    message: str
    strategy: str = ""
    target: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ProtectionStatus:
    """Everything the page, the summary, the metrics and the health check show."""

    policy: str
    now: float
    daemon: dict[str, Any]
    strategies: list[StrategyStatus]
    jobs: dict[str, dict[str, Any]]
    shipper: ShipperLive | None
    shipper_up: bool
    lag_seconds: float | None
    repository: RepositoryView | None
    objectives: Objectives
    lag_history: list[tuple[float, float]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def strategy(self, name: str) -> StrategyStatus | None:
        return next((s for s in self.strategies if s.strategy == name), None)

    def to_dict(self) -> dict[str, Any]:
        repo = self.repository
        return {
            "policy": self.policy, "now": self.now, "healthy": self.healthy,
            "problems": [p.to_dict() for p in self.problems],
            "daemon": self.daemon,
            "strategies": [{**asdict(s), "label": s.label} for s in self.strategies],
            "jobs": self.jobs,
            "shipper": {**(self.shipper.to_dict() if self.shipper else {}), "up": self.shipper_up,
                        "lag_seconds": self.lag_seconds},
            "lag_history": [[round(t, 3), round(v, 3)] for t, v in self.lag_history],
            "repository": asdict(repo) if repo else None,
            "objectives": asdict(self.objectives),
        }


def _ts(text: str | None) -> float | None:
    """An ISO 8601 UTC time of the status file as epoch seconds."""
    if not text:
        return None

    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def build_status(policy: str, *, now: float | None = None, repository: RepositoryView | None = None,
                 daemon_status: dict[str, Any] | None = None, daemon_alive: bool | None = None,
                 shipper: ShipperLive | None = None, objectives: Objectives | None = None,
                 lag_history: list[tuple[float, float]] | None = None) -> ProtectionStatus:
    """Put the inputs together and judge them (pure: no I/O)."""
    now = time.time() if now is None else now
    data = daemon_status or {}
    obj = objectives or Objectives()
    jobs: dict[str, dict[str, Any]] = dict(data.get("jobs") or {})
    daemon = {"state": data.get("state") if daemon_alive else ("not running" if data else "never ran"),
              "alive": bool(daemon_alive), "pid": data.get("pid") if daemon_alive else None,
              "started_at": data.get("started_at"), "updated_at": data.get("updated_at"),
              "ever": bool(data.get("started_at")), "shipper": data.get("shipper")}
    if daemon_alive is None:
        daemon = {"state": "not checked", "alive": None, "pid": None}
    shipper_up = bool(shipper and shipper.fresh(now) and shipper.state == "shipping")
    lag = shipper.lag(now) if shipper else None
    strategies: list[StrategyStatus] = []
    names = [k for k in STRATEGIES if k in obj.schedules or (k in jobs and k not in obj.job_of.values())
             or (repository and repository.bases(k))]
    if "binlog" not in names and (shipper is not None or (repository and any(
            s.segments for s in repository.sources))):
        names.append("binlog")
    names += [k for k in ("verify", "prune", "sync") if k in obj.schedules or k in jobs]
    for name in names:
        s = StrategyStatus(name, schedule=obj.schedules.get(name, ""),
                           loss_objective=obj.loss_objective.get(name), max_age=obj.max_age.get(name))
        j = jobs.get(obj.job_of.get(name, name)) or {}
        last = j.get("last") or {}
        s.last_result = "running" if j.get("running_since") else last.get("result")
        s.last_success = _ts(j.get("last_ok"))
        s.last_failure = _ts(j.get("last_failed")) or (_ts(last.get("end"))
                                                       if last.get("result") == "failed" else None)
        s.last_duration = last.get("duration_s")
        s.last_error = last.get("error")
        s.runs, s.failures = int(j.get("runs", 0)), int(j.get("failures", 0))
        s.next_run = j.get("next_run")
        if repository is not None and name in BASE_KINDS:
            bases = repository.bases(name)
            s.backups = len(bases)
            s.stored_bytes = sum(b.stored_bytes for b in bases)
            if bases:
                newest = max(bases, key=lambda b: b.finished_at)
                s.last_success = max(s.last_success or 0.0, newest.finished_at) or None
                s.recovery_point = max(b.time for b in bases)
                s.loss_seconds = max(0.0, now - s.recovery_point)
                if s.last_duration is None:
                    s.last_duration = round(newest.duration, 3)
        if name == "binlog":
            reach = True  # the newest shipped binlog can be replayed onto a base
            if repository is not None:
                s.stored_bytes = sum(x.binlog_stored_bytes for x in repository.sources)
                s.backups = sum(x.segments for x in repository.sources)
                reach = all((x.newest or 0) >= (x.newest_commit or 0) for x in repository.sources)
            if shipper is not None and shipper.confirmed_at is not None and reach:
                s.recovery_point = min(now, shipper.confirmed_at)
                s.loss_seconds = lag
                if shipper.updated_at and shipper.segments:
                    s.last_success = shipper.updated_at
            elif repository is not None:
                newest = max((x.newest or 0 for x in repository.sources), default=0) or None
                s.recovery_point = newest
                s.loss_seconds = max(0.0, now - newest) if newest else None
        strategies.append(s)
    st = ProtectionStatus(policy, now, daemon, strategies, jobs, shipper, shipper_up, lag, repository,
                          obj, list(lag_history or []))
    st.problems = judge(st)
    return st


def judge(st: ProtectionStatus) -> list[Problem]:
    """Every objective that is not met (the same as the alert rules, see docs/alerts.yml)."""
    out: list[Problem] = []
    obj, now = st.objectives, st.now
    daemon_down = st.daemon.get("alive") is False and bool(st.daemon.get("ever"))
    if daemon_down:
        out.append(Problem("daemon_down", "the daemon is not running"))
    for s in st.strategies:
        if s.last_result == "failed" and s.strategy != "binlog":
            out.append(Problem("job_failed", f"the last {s.strategy} run failed"
                               + (f": {s.last_error}" if s.last_error else ""), strategy=s.strategy))
        if s.max_age is not None and s.strategy in BASE_KINDS:
            since = s.last_success
            if since is None:
                started = _ts(st.daemon.get("started_at"))
                if started is not None and now - started > s.max_age:
                    out.append(Problem("overdue", f"no successful {s.strategy} since the daemon started "
                                       f"{_secs(now - started)} ago (expected every {_secs(s.max_age)})",
                                       strategy=s.strategy))
            elif now - since > s.max_age:
                out.append(Problem("overdue", f"no successful {s.strategy} for {_secs(now - since)} "
                                   f"(expected within {_secs(s.max_age)})", strategy=s.strategy))
        if s.loss_seconds is not None and s.loss_objective is not None and s.loss_seconds > s.loss_objective:
            out.append(Problem("loss_over_objective",
                               f"{s.label}: the loss window is {_secs(s.loss_seconds)}, over its "
                               f"objective of {_secs(s.loss_objective)}", strategy=s.strategy))
    started = _ts(st.daemon.get("started_at")) if st.daemon.get("alive") else None
    starting = started is not None and now - started < SHIPPER_START_GRACE
    if obj.shipper_expected and not daemon_down:
        if not st.shipper_up and not starting:
            out.append(Problem("shipper_down", _shipper_down(st), strategy="binlog"))
        elif st.lag_seconds is not None and st.lag_seconds > obj.lag_threshold:
            out.append(Problem("shipper_lagging", f"the binlog shipper is {_secs(st.lag_seconds)} behind "
                               f"(threshold {_secs(obj.lag_threshold)})", strategy="binlog"))
    repo = st.repository
    if repo is not None:
        for src in repo.sources:
            for g in src.gaps:
                # a gap matters until a base after it makes the times after it restorable again
                # (an interval that starts after the gap began)
                ref = g.start or g.detected_at
                if g.end is None or not any(a > ref for a, _ in src.intervals):
                    after = format_time(g.start, utc=True) if g.start else "an unknown time"
                    out.append(Problem("gap", f"{src.source_id}: binlog gap after {after}: {g.reason}",
                                       strategy="binlog"))
        if drill_state(st)[1] is False:
            out.append(Problem("drill_failed", "the last restore drill failed", strategy="verify"))
        for t in repo.targets:
            if not t.up:
                out.append(Problem("target_behind", f"storage target {t.name} is unreachable"
                                   + (f": {t.error}" if t.error else ""), target=t.name))
            elif t.lag_seconds is not None and t.lag_seconds > obj.target_lag_threshold:
                out.append(Problem("target_behind", f"storage target {t.name} is {_secs(t.lag_seconds)} "
                                   f"behind ({t.missing_objects} objects missing)", target=t.name))
    return out


def _shipper_down(st: ProtectionStatus) -> str:
    sh = st.shipper
    sup = (st.daemon.get("shipper") or {}).get("state")
    why = f" (the daemon's supervisor: {sup})" if sup and sup != "running" else ""
    if sh is None:
        return "no binlog shipper has reported" + why
    if sh.state == "stopped":
        return "the binlog shipper is stopped" + why
    if sh.state == "reconnecting":
        return f"the binlog shipper lost the source and is reconnecting: {sh.error or 'no reason given'}"
    if sh.state == "standby":
        return "the binlog shipper is a standby: another one holds the lease"
    return f"the binlog shipper has not reported for {_secs(max(0.0, st.now - sh.updated_at))}" + why


def restorable_newest(st: ProtectionStatus, src: SourceTimeline) -> float | None:
    """The newest restorable moment of a source: its newest interval, extended to what the live
    shipper confirmed since the repository was read (when that binlog reaches a base)."""
    newest = src.newest
    live = st.shipper
    if (newest is not None and live is not None and live.source_id == src.source_id
            and live.confirmed_at and newest >= (src.newest_commit or 0)):
        newest = max(newest, min(st.now, live.confirmed_at))
    return newest


def drill_state(st: ProtectionStatus) -> tuple[Drill | None, bool | None]:
    """The newest drill and whether the newest drill attempt succeeded (None: never drilled)."""
    repo = st.repository
    drill = max(repo.drills, key=lambda d: d.at, default=None) if repo else None
    verify = (st.jobs.get("verify") or {}).get("last") or {}
    failed_at = _ts(verify.get("end")) if verify.get("result") == "failed" else None
    if failed_at and (drill is None or failed_at > drill.at):
        return drill, False
    return drill, (drill.ok if drill else None)
