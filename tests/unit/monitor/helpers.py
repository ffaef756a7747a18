"""Protection states for the monitor tests: a healthy one and one with every fault."""

from __future__ import annotations

from backupkit.monitor.status import (
    Base,
    Drill,
    Gap,
    LeaseInfo,
    Objectives,
    RepositoryView,
    ShipperLive,
    SourceTimeline,
    TargetHealth,
    build_status,
)

NOW = 1_800_000_000.0
HOUR = 3600.0


def objectives() -> Objectives:
    return Objectives(max_age={"snapshot": 2 * HOUR, "cold": 8 * 24 * HOUR},
                      loss_objective={"snapshot": 2 * HOUR, "cold": 8 * 24 * HOUR, "binlog": 60.0},
                      schedules={"snapshot": "0 * * * *", "cold": "0 3 * * 0", "binlog": "continuous",
                                 "verify": "30 4 * * *"},
                      lag_threshold=60.0, target_lag_threshold=900.0, shipper_expected=True)


def repository(gap: bool = False, drill_ok: bool = True, target_lag: float = 5.0,
               target_up: bool = True, snapshot_age: float = 1800.0) -> RepositoryView:
    tl = SourceTimeline("db1", segments=120, binlog_stored_bytes=5 << 20, newest_commit=NOW - 1)
    tl.bases = [Base("c1", "cold", NOW - 3 * 24 * HOUR, 1 << 30, 60.0, NOW - 3 * 24 * HOUR + 60),
                Base("s1", "snapshot", NOW - 2 * HOUR - snapshot_age, 50 << 20, 12.0,
                     NOW - 2 * HOUR - snapshot_age + 12),
                Base("s2", "snapshot", NOW - snapshot_age, 50 << 20, 12.0, NOW - snapshot_age + 12)]
    tl.binlog_runs = [(NOW - 3 * 24 * HOUR, NOW - 1)]
    tl.intervals = [(NOW - 3 * 24 * HOUR, NOW - 1)]
    if gap:
        tl.binlog_runs = [(NOW - 3 * 24 * HOUR, NOW - 10 * HOUR), (NOW - 9 * HOUR, NOW - 1)]
        tl.intervals = [(NOW - 3 * 24 * HOUR, NOW - 10 * HOUR), (NOW - 2 * HOUR - snapshot_age, NOW - 1)]
        tl.gaps = [Gap(NOW - 10 * HOUR, NOW - 9 * HOUR, "binlog.000007 was purged before it was shipped",
                       NOW - 9 * HOUR)]
        if snapshot_age > 8 * HOUR:  # no base after the gap
            tl.intervals = [(NOW - 3 * 24 * HOUR, NOW - 10 * HOUR)]
    return RepositoryView(
        read_at=NOW - 10, storage="s3://backups/db1", sources=[tl],
        drills=[Drill(NOW - 5 * HOUR, "snapshot", drill_ok, 41.5, "s1", "r1")],
        targets=[TargetHealth("east", "s3://east/db1", True, 0.0, 0),
                 TargetHealth("west", "s3://west/db1", target_up, target_lag if target_up else None,
                              3 if target_lag else 0)],
        leases=[LeaseInfo("db1", "host:123:abcd", NOW + 10, True)])


def daemon(failed: str | None = None, snapshot_ok: str = "2027-01-15T07:30:00Z") -> dict:
    """The status file; NOW is 2027-01-15T08:00:00Z."""
    jobs = {"snapshot": {"last": {"result": "ok", "end": snapshot_ok, "duration_s": 12.0,
                                  "stored_bytes": 50 << 20}, "last_ok": snapshot_ok,
                         "runs": 10, "ok": 10, "next_run": "2027-01-15T09:00:00Z"}}
    if failed:
        jobs[failed] = {"last": {"result": "failed", "end": "2027-01-15T07:50:00Z", "duration_s": 3.0,
                                 "error": "storage unreachable"}, "runs": 4, "failures": 1}
    return {"state": "running", "pid": 1, "started_at": "2027-01-10T00:00:00Z", "jobs": jobs}


def shipper(lag: float = 0.5, up: bool = True) -> ShipperLive:
    return ShipperLive("db1", pid=2, updated_at=NOW - (0.3 if up else 120), confirmed_at=NOW - lag,
                       segments=500, bytes=9 << 20, stored_bytes=3 << 20, transactions=12000,
                       upload_errors=1, started_at=NOW - HOUR, state="shipping")


def healthy(**kw):
    return build_status("prod", now=NOW, repository=repository(), daemon_status=daemon(), daemon_alive=True,
                        shipper=shipper(), objectives=objectives(), **kw)


def faulty():
    """Every fault at once: each objective fails."""
    return build_status("prod", now=NOW, repository=repository(gap=True, drill_ok=False, target_up=False,
                                                                snapshot_age=9.5 * HOUR),
                        daemon_status=daemon(failed="cold", snapshot_ok="2027-01-14T22:30:00Z"),
                        daemon_alive=True,
                        shipper=shipper(lag=300), objectives=objectives())
