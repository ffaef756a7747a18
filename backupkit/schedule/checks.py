"""Checks of a policy that go beyond types: cron expressions, durations, storage, strategy needs.

Every problem is one line: the file, the key, what was expected and what was found (or the fix).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from backupkit.config import Policy
from backupkit.errors import UsageError
from backupkit.schedule.cron import cron_trigger
from backupkit.util.redact import redact_url
from backupkit.util.units import parse_duration

CRON_STRATEGIES = ("cold", "snapshot", "snapshot_incremental", "verify", "prune", "sync", "binlog_purge",
                   "binlog_compact")
CRON_HELP = "a cron expression 'minute hour day-of-month month day-of-week' like '0 3 * * 0'"
STORAGE_FIX = ("add a [storage] section with url = \"file:///var/backups/mysql\" or "
               "\"s3://bucket/prefix\" (or pass --storage)")


def cron_problem(expr: str) -> str | None:
    """Why a cron expression is not usable, or None when it is."""
    try:
        trig = cron_trigger(expr, UTC)
    except ValueError as exc:
        return str(exc)
    now = datetime.now(UTC)
    nxt = trig.get_next_fire_time(None, now)
    if nxt is None or nxt > now + timedelta(days=9 * 366):
        return "it never fires"
    return None


def semantic_problems(policy: Policy, path: Path) -> list[str]:
    """One line per problem: file, key, what was expected, what was found."""
    problems: list[str] = []
    strat = policy.strategies
    for name in CRON_STRATEGIES:
        expr = getattr(strat, name)
        if expr is None:
            continue
        why = cron_problem(expr)
        if why:
            problems.append(f"{path}: key 'strategies.{name}': expected {CRON_HELP}, "
                            f"found {expr!r} ({why})")
    if strat.binlog is not None and strat.binlog not in ("continuous", "off"):
        problems.append(f"{path}: key 'strategies.binlog': expected \"continuous\" or \"off\", "
                        f"found {strat.binlog!r}")
    if policy.retention.recovery_window is not None:
        try:
            parse_duration(policy.retention.recovery_window)
        except ValueError:
            problems.append(f"{path}: key 'retention.recovery_window': expected a duration like "
                            f"\"7 days\", \"36h\" or \"1d 12h\", found "
                            f"{policy.retention.recovery_window!r}")
    if strat.cold and not policy.source.start_command:
        problems.append(f"{path}: key 'source.start_command': strategies.cold needs the command "
                        "that starts the server again, for example \"systemctl start mariadb\"; "
                        "found none")
    if strat.snapshot_incremental and policy.snapshot.engine != "physical":
        problems.append(f"{path}: key 'snapshot.engine': strategies.snapshot_incremental takes "
                        "physical incrementals and needs engine = \"physical\"; found "
                        f"{policy.snapshot.engine!r}")
    if strat.prune and not _retention_set(policy):
        problems.append(f"{path}: key 'retention': strategies.prune needs at least one of keep_last, "
                        "keep_daily, keep_weekly, keep_monthly or recovery_window; found none")
    sched = policy.schedule
    if sched.timezone:
        try:
            ZoneInfo(sched.timezone)
        except (ValueError, LookupError, OSError):
            problems.append(f"{path}: key 'schedule.timezone': expected a zone name like "
                            f"\"Europe/Paris\" or \"UTC\", found {sched.timezone!r}")
    if sched.shipper_backoff_max < sched.shipper_backoff_min:
        problems.append(f"{path}: key 'schedule.shipper_backoff_max': expected at least "
                        f"shipper_backoff_min ({sched.shipper_backoff_min:g}), "
                        f"found {sched.shipper_backoff_max:g}")
    for i, url in _storage_urls(policy):
        why = _storage_url_problem(url)
        if why:
            problems.append(f"{path}: key '{i}': expected a storage URL file:///path or "
                            f"s3://bucket/prefix, found {redact_url(url)!r} ({why})")
    problems += _targets_problems(policy, path)
    return problems


def _targets_problems(policy: Policy, path: Path) -> list[str]:
    """Several storage targets, their write quorum, their sync schedule, and the encryption key."""
    st = policy.storage
    out = []
    count = len(st.targets) or 1
    if st.write_quorum is not None and st.write_quorum > count:
        out.append(f"{path}: key 'storage.write_quorum': expected at most {count} (the number of "
                   f"storage targets), found {st.write_quorum}")
    names = [t.name or t.url for t in st.targets]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        out.append(f"{path}: key 'storage.targets': expected distinct names, found {dup!r} twice")
    if policy.strategies.sync and len(st.targets) < 2:
        out.append(f"{path}: key 'strategies.sync': expected at least two [[storage.targets]] to sync, "
                   f"found {len(st.targets)}")
    enc = policy.encryption
    if enc is not None and not (enc.key_file or enc.key_env):
        out.append(f"{path}: key 'encryption': expected key_file (a 0600 file) or key_env, found neither")
    return out


def _retention_set(policy: Policy) -> bool:
    r = policy.retention
    return bool(r.keep_last or r.keep_daily or r.keep_weekly or r.keep_monthly or r.recovery_window)


def _storage_urls(policy: Policy) -> list[tuple[str, str]]:
    out = []
    if policy.storage.url is not None:  # "" too: it must not quietly mean the default
        out.append(("storage.url", policy.storage.url))
    for n, t in enumerate(policy.storage.targets):
        out.append((f"storage.targets.{n}.url", t.url))
    return out


def _storage_url_problem(url: str) -> str | None:
    from backupkit.storage import parse_storage_url  # lazy: start-up time

    try:
        parse_storage_url(url)
    except UsageError as exc:
        return exc.one_line()
    return None


def storage_problem(policy: Policy, override: str | None = None) -> str | None:
    """The one-line error for a policy file that names no storage target, or None.

    A --storage option or BACKUPKIT_STORAGE counts as the storage section. Commands that act on
    a policy's schedule (policy check/plan, schedule run/cron) call this: running from cron with
    a silent default repository would be a trap.
    """
    if override or os.environ.get("BACKUPKIT_STORAGE") or policy.storage.primary() is not None:
        return None
    where = policy.path or "policy"
    return f"{where}: missing key 'storage.url': {STORAGE_FIX}"
