"""backupkit prune: apply the policy's retention; print what goes and why."""

from __future__ import annotations

import typer

from backupkit.cli import options as opt
from backupkit.cli.common import render, settings
from backupkit.cli.console import warn
from backupkit.errors import ConfigError, UsageError
from backupkit.schedule.cron import policy_timezone
from backupkit.util.units import human_bytes, parse_duration


def prune(
    dry_run: bool = opt.dry_run("Print what would be removed; remove nothing."),
    force: bool = opt.force("Really remove (the scheduler and cron lines pass it); without it, prune "
                            "only shows what it would remove."),
    keep_last: int = typer.Option(None, "--keep-last", min=0, help="Override retention.keep_last."),
    keep_daily: int = typer.Option(None, "--keep-daily", min=0, help="Override retention.keep_daily."),
    keep_weekly: int = typer.Option(None, "--keep-weekly", min=0, help="Override retention.keep_weekly."),
    keep_monthly: int = typer.Option(None, "--keep-monthly", min=0,
                                     help="Override retention.keep_monthly."),
    recovery_window: str = typer.Option(None, "--recovery-window",
                                        help="Override retention.recovery_window, e.g. '7 days'."),
) -> None:
    """Remove the backups and binlog segments the retention policy no longer keeps.

    Never removes a base or a segment needed to restore any second of the recovery window, or
    to replay from any kept base. Backups disappear manifest first, data after. Nothing is
    removed without --force: without it (or with --dry-run) prune prints what it would remove.
    """
    from backupkit.operations.prune import prune as run_prune  # lazy: start-up time
    from backupkit.operations.retention import RetentionRules  # lazy: start-up time

    st = settings()
    r = st.policy.retention
    window = r.recovery_window if recovery_window is None else recovery_window
    try:
        seconds = parse_duration(window) if window else None
    except ValueError:
        raise UsageError(f"cannot read the recovery window {window!r}",
                         "use a duration like '7 days', '36h' or '1d 12h'") from None
    rules = RetentionRules(
        keep_last=r.keep_last if keep_last is None else keep_last,
        keep_daily=r.keep_daily if keep_daily is None else keep_daily,
        keep_weekly=r.keep_weekly if keep_weekly is None else keep_weekly,
        keep_monthly=r.keep_monthly if keep_monthly is None else keep_monthly,
        window=seconds)
    if not rules.active():
        where = st.policy.path or "the policy"
        raise ConfigError(f"{where}: key 'retention': no retention rule is set, so prune would "
                          "remove nothing",
                          "set keep_last, keep_daily, keep_weekly, keep_monthly or recovery_window "
                          "in [retention], or pass --keep-last N / --recovery-window '7 days'")
    if not force and not dry_run:
        warn("showing what prune would remove; nothing is removed without --force")
        dry_run = True
    store = st.open_store(create=False)
    result = run_prune(store, rules, dry_run=dry_run, tz=policy_timezone(st.policy))
    data = result.to_dict()
    data["storage"] = store.describe()
    data["dry_run"] = dry_run

    def human(c) -> None:
        verb = "would remove" if dry_run else "removed"
        c.print(f"repository {data['storage']}: retention {data['rules']}"
                + (f", window from {data['window_start']}" if data["window_start"] else ""))
        for b in data["removed_backups"]:
            c.print(f"{verb} backup {b['id']} ({b['kind']}, {b['point_time']}, "
                    f"{human_bytes(b['stored_bytes'])}): {b['reason']}", highlight=False)
        for g in data["segment_ranges"]:
            c.print(f"{verb} {g['segments']} binlog segment(s) of {g['source_id']} from {g['from']} "
                    f"to {g['to']} ({human_bytes(g['stored_bytes'])}): {g['reason']}", highlight=False)
        for g in data["removed_gaps"]:
            c.print(f"{verb} gap record of {g['source_id']} after {g['after']}: {g['reason']}",
                    highlight=False)
        if data["orphans"]:
            c.print(f"{verb} {len(data['orphans'])} orphan object(s) older than a day: "
                    "data of a backup or segment that was never committed", highlight=False)
        for b in data["kept_backups"]:
            c.print(f"keep backup {b['id']} ({b['kind']}, {b['point_time']}): "
                    f"{'; '.join(b['reasons'])}", highlight=False)
        c.print(f"{verb} {len(data['removed_backups'])} backup(s), "
                f"{len(data['removed_segments'])} segment(s), {human_bytes(data['freed_bytes'])}; "
                f"kept {len(data['kept_backups'])} backup(s), {data['kept_segments']} segment(s)")

    render(data, human)
