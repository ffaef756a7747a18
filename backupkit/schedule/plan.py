"""What a policy implies: the next runs of each strategy, and the worst-case loss window and
downtime each gives, from the schedule and the durations measured in the repository."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from backupkit.config import Policy
from backupkit.schedule.cron import next_runs, policy_timezone, scheduled_strategies, worst_interval
from backupkit.schedule.runner import cold_downtime
from backupkit.util.units import human_duration, human_seconds, parse_duration, utc_iso_seconds

#: Strategies whose runs are restore bases (an incremental restores with its chain).
BASES = ("cold", "snapshot", "snapshot_incremental")


def measured_from(catalog) -> dict[str, Any]:
    """Durations measured in the repository: newest backup of each kind, newest restore of each."""
    out: dict[str, Any] = {}
    for b in catalog.backups():
        m = {"duration_s": round(b.duration, 3), "backup_id": b.id, "at": utc_iso_seconds(b.finished_at)}
        if b.kind == "cold":
            m["downtime_s"] = cold_downtime(b)
        if b.kind in ("snapshot", "physical"):
            blocked = (b.stats or {}).get("blocked_ms")
            if isinstance(blocked, (int, float)):
                m["blocked_ms"] = blocked
        if b.kind == "physical":  # the engine of [strategies] snapshot, or its incrementals
            out["snapshot_incremental" if b.details.get("incremental") else "physical"] = m
            continue
        out[b.kind] = m  # backups() is oldest first: the newest wins
    rto: dict[str, Any] = {}
    for r in catalog.restore_records():
        kind = r.get("kind")
        if kind in ("snapshot", "cold", "physical") and isinstance(r.get("duration"), (int, float)):
            rto[kind] = {"duration_s": r["duration"], "at": r.get("finished_at_utc"),
                         "backup_id": r.get("backup_id")}
    out["rto"] = rto
    return out


def policy_plan(policy: Policy, now: datetime | None = None, measured: dict[str, Any] | None = None,
                n: int = 3) -> dict[str, Any]:
    """Next runs of each strategy and the worst-case loss window and downtime each implies.

    A backup's recovery point is its start, and it counts only once committed, so the worst
    case for a scheduled strategy is the longest gap between two runs plus one run's duration.
    """
    tz = policy_timezone(policy)
    now = now or datetime.now(tz)
    measured = measured or {}
    rto = measured.get("rto", {})
    rows: list[dict[str, Any]] = []
    for name, expr in scheduled_strategies(policy).items():
        row: dict[str, Any] = {"strategy": name, "schedule": expr}
        if expr == "continuous":
            sync = policy.binlog.sync_interval
            row.update(next_runs=["continuously (supervised, restarted with backoff)"],
                       interval_s=None, loss_window_s=sync,
                       loss_window=f"about {sync:g} s (one sync interval) while the shipper runs",
                       downtime_s=0.0, downtime="none")
            rows.append(row)
            continue
        runs = next_runs(expr, tz, now, n)
        row["next_runs"] = [r.isoformat() for r in runs]
        row["next_runs_text"] = [r.strftime("%a %Y-%m-%d %H:%M %Z") for r in runs]
        interval = worst_interval(expr, tz, now)
        row["interval_s"] = interval
        physical = name == "snapshot" and policy.snapshot.engine == "physical"
        m = measured.get("physical" if physical else name, {})
        dur = m.get("duration_s")
        if name in BASES and interval is not None:
            loss = interval + (dur or 0.0)
            row["loss_window_s"] = loss
            one_run = f" plus one run ({human_seconds(dur)} measured)" if dur else \
                " plus one run (not measured yet)"
            row["loss_window"] = (f"up to {human_seconds(loss)}: the longest gap between runs "
                                  f"({human_seconds(interval)})" + one_run)
            row["measured_duration_s"] = dur
            if name == "cold":
                down = m.get("downtime_s")
                row["downtime_s"] = down
                row["downtime"] = (f"{human_seconds(down)} per run (measured stop to accepting connections)"
                                   if down is not None else "the whole copy, every run (not measured yet)")
            else:
                blocked = m.get("blocked_ms")
                row["downtime_s"] = 0.0
                row["downtime"] = "none" + (f" ({blocked:g} ms of blocked commits measured)"
                                            if blocked is not None else " (a few ms of blocked commits)")
            r = rto.get("physical" if physical or name == "snapshot_incremental" else name)
            row["rto_s"] = r["duration_s"] if r else None
            row["rto"] = (f"{human_seconds(r['duration_s'])} (measured {r['at']})" if r
                          else "not measured yet: run 'backupkit verify --restore-test'")
        rows.append(row)
    bases = [r for r in rows if r["strategy"] in BASES]
    binlog = next((r for r in rows if r["strategy"] == "binlog"), None)
    if binlog and bases:
        overall = binlog["loss_window_s"]
        why = "binlog shipping on top of the bases"
    elif bases:
        overall = min(r["loss_window_s"] for r in bases)
        why = "the most frequent base"
    elif binlog:
        overall = None
        why = "binlog alone cannot be restored: schedule a snapshot or a cold backup"
    else:
        overall, why = None, "no backup strategy is scheduled"
    r = policy.retention
    window = None
    if r.recovery_window:
        window = parse_duration(r.recovery_window)
    return {"policy": policy.name, "file": policy.path, "timezone": str(tz), "now": now.isoformat(),
            "strategies": rows, "worst_case_loss_s": overall, "worst_case_loss_because": why,
            "retention": {"keep_last": r.keep_last, "keep_daily": r.keep_daily,
                          "keep_weekly": r.keep_weekly, "keep_monthly": r.keep_monthly,
                          "recovery_window_s": window,
                          "recovery_window": (f"every second of the last {human_duration(window)} "
                                              "stays restorable" if window and binlog and bases else
                                              (f"the backups of the last {human_duration(window)} and "
                                               "the one before stay" if window else None))}}
