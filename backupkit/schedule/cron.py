"""Schedule times: cron expressions (APScheduler triggers with cron's own semantics), the
policy's time zone, the next runs and the longest gap between two runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

from backupkit.config import Policy

MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
          "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
          "@hourly": "0 * * * *"}
_DOW_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def policy_timezone(policy: Policy) -> tzinfo:
    """The zone of the policy's cron expressions: schedule.timezone, else the local zone (as cron)."""
    if policy.schedule.timezone:
        return ZoneInfo(policy.schedule.timezone)
    try:
        import tzlocal  # optional: the local zone name when no timezone is set

        return tzlocal.get_localzone()
    except Exception:  # pragma: no cover - no tzlocal or no zone configured
        return UTC


def _expand_dow(field_expr: str) -> str:
    """A cron day-of-week field (0 or 7 = Sunday) as APScheduler names (0 = Monday there)."""
    days: set[int] = set()
    for part in field_expr.lower().split(","):
        rng, _, step_s = part.partition("/")
        step = int(step_s) if step_s else 1
        if step < 1:
            raise ValueError(f"bad step in day-of-week {part!r}")
        if rng == "*":
            lo, hi = 0, 6
        else:
            a, _, b = rng.partition("-")
            lo = _dow_number(a)
            hi = _dow_number(b) if b else (6 if step_s else lo)
            if hi == 0 and b and lo > 0:  # "5-7" / "fri-sun": 7 means Sunday at the end
                hi = 7
            if hi < lo:
                raise ValueError(f"day-of-week range {rng!r} runs backwards")
        days.update(d % 7 for d in range(lo, hi + 1, step))
    if len(days) == 7:
        return "*"
    return ",".join(_DOW_NAMES[d] for d in sorted(days))


def _dow_number(s: str) -> int:
    s = s.strip().lower()
    if s[:3] in _DOW_NAMES and not s.isdigit():
        return _DOW_NAMES.index(s[:3])
    n = int(s)
    if not 0 <= n <= 7:
        raise ValueError(f"day-of-week {n} is out of range 0-7")
    return 7 if n == 7 else n


def cron_trigger(expr: str, tz: tzinfo | str | None = None):
    """An APScheduler trigger that fires exactly when system cron would run `expr`.

    Two differences are translated: APScheduler numbers weekdays from Monday (cron from Sunday),
    and when both day-of-month and day-of-week are restricted cron fires on either (APScheduler
    on both).
    """
    # lazy: start-up time (policy checks run in every CLI call; apscheduler is needed here only)
    from apscheduler.triggers.combining import OrTrigger  # lazy: start-up time
    from apscheduler.triggers.cron import CronTrigger  # lazy: start-up time

    text = MACROS.get(expr.strip().lower(), expr.strip())
    fields = text.split()
    if len(fields) != 5:
        raise ValueError(f"{len(fields)} fields instead of 5")
    minute, hour, dom, month, dow = fields
    dow_ap = _expand_dow(dow)
    if not dom.startswith("*") and not dow.startswith("*"):  # as Vixie cron decides
        return OrTrigger([
            CronTrigger(minute=minute, hour=hour, day=dom, month=month, timezone=tz),
            CronTrigger(minute=minute, hour=hour, month=month, day_of_week=dow_ap, timezone=tz),
        ])
    return CronTrigger(minute=minute, hour=hour, day=dom, month=month, day_of_week=dow_ap,
                       timezone=tz)


def next_runs(expr: str, tz: tzinfo, after: datetime, n: int = 3) -> list[datetime]:
    """The next n times a cron expression fires, strictly after a moment."""
    trig = cron_trigger(expr, tz)
    out: list[datetime] = []
    prev = None
    now = after + timedelta(microseconds=1)
    while len(out) < n:
        nxt = trig.get_next_fire_time(prev, now)
        if nxt is None:
            break
        out.append(nxt)
        prev, now = nxt, nxt + timedelta(seconds=1)
    return out


def worst_interval(expr: str, tz: tzinfo, after: datetime, horizon_days: int = 400,
                   max_fires: int = 3000) -> float | None:
    """The longest time between two consecutive runs over the coming horizon (seconds)."""
    trig = cron_trigger(expr, tz)
    end = after + timedelta(days=horizon_days)
    prev_fire = None
    worst = None
    now = after
    for _ in range(max_fires):
        nxt = trig.get_next_fire_time(prev_fire, now)
        if nxt is None or nxt > end:
            break
        if prev_fire is not None:
            gap = (nxt - prev_fire).total_seconds()
            worst = gap if worst is None else max(worst, gap)
        prev_fire, now = nxt, nxt + timedelta(seconds=1)
    return worst


def scheduled_strategies(policy: Policy) -> dict[str, str]:
    """Strategy -> cron expression (or "continuous" for the binlog shipper)."""
    out: dict[str, str] = {}
    for name in ("cold", "snapshot", "snapshot_incremental", "binlog", "verify", "prune", "sync",
                 "binlog_purge", "binlog_compact"):
        expr = getattr(policy.strategies, name)
        if expr and expr != "off":
            out[name] = expr
    return out
