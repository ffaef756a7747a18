"""backupkit restore: a snapshot into a server, a cold backup into a datadir, or any moment in time.

Dispatch: any --to-*/--stop-before-gtid/--latest goes to point-in-time restore
(backupkit.restore.pitr); otherwise BACKUP_ID names a backup and its manifest's kind picks the
loader: "snapshot" -> backupkit.restore.load, "cold" -> backupkit.restore.cold.
"""

from __future__ import annotations

from typing import Any

import typer

from backupkit.cli import options as opt
from backupkit.cli.cold import restore_cold_cli
from backupkit.cli.common import (
    configured_source,
    json_mode,
    open_catalog,
    parse_max_rate,
    render,
)
from backupkit.cli.console import loss_table, table, warn
from backupkit.cli.physical import restore_physical_cli
from backupkit.cli.snapshot import progress_view
from backupkit.errors import BackupkitError, UsageError
from backupkit.util.units import human_bytes, human_seconds


def restore(
    backup_id: str = typer.Argument(None, help="Backup to restore (snapshot or cold); omit with --to-*."),
    target: str = opt.target("Target server for a logical restore: mysql://user@host:port."),
    datadir: str = typer.Option(None, "--datadir", help="Target datadir for a cold or physical restore."),
    to_time: str = typer.Option(None, "--to-time",
        help="Restore to this moment (local zone unless a zone or Z is given)."),
    to_gtid: str = typer.Option(None, "--to-gtid", help="Restore up to and including this GTID."),
    to_position: str = typer.Option(None, "--to-position",
        help="Restore up to FILE:POS of the source binlog."),
    stop_before_gtid: str = typer.Option(None, "--stop-before-gtid",
        help="Everything before this transaction, not it."),
    latest: bool = typer.Option(False, "--latest", help="Restore to the newest shipped transaction."),
    accept_gap: bool = typer.Option(False, "--accept-gap",
        help="With --latest: when a gap in the shipped binlog follows the newest reachable point, "
             "restore that point anyway (the gap and its cost are reported)."),
    dry_run: bool = opt.dry_run("Print the plan and change nothing."),
    force: bool = opt.force("Move existing databases or datadir aside (never deleted)."),
    verify: bool = typer.Option(False, "--verify",
        help="Compare CHECKSUM TABLE with the values recorded at backup time."),
    parallel: int = typer.Option(None, "--parallel", help="Parallel load workers (default: cores)."),
    start_command: str = opt.start_command("Cold or physical restore: command that starts the server."),
    databases: list[str] = typer.Option(None, "--databases", "-d",
        help="Snapshot restore: only these databases."),
    include_users: bool = typer.Option(False, "--include-users",
        help="Snapshot restore: also create saved users and grants."),
    log_bin: bool = typer.Option(False, "--log-bin",
        help="Snapshot restore: write the load to the target's binlog."),
    tables: list[str] = opt.tables("Point-in-time restore of these tables only: 'db.table,db.*' patterns "
                                   "as mydumper's filters (the rest of the server is not touched)."),
    exclude_tables: list[str] = opt.exclude_tables("With --tables: leave out these db.table patterns."),
    rename_db: list[str] = typer.Option(None, "--rename-db",
        help="With --tables: OLD=NEW puts the tables of OLD into database NEW (then the target "
             "may be the live source)."),
    max_rate: str = opt.max_rate("Limits reading the repository; a restore is not limited otherwise "
                                 "(no policy key applies to restores)."),
    replicate_from: str = typer.Option(None, "--replicate-from",
        help="With --latest: then make the target a replica of this primary (mysql://repl@host:port; "
             "password from BACKUPKIT_REPLICATE_PASSWORD or ?password_file=) at the reached GTID."),
    replica_wait: float = typer.Option(60.0, "--replica-wait",
        help="With --replicate-from: seconds to wait for Seconds_Behind_Master = 0."),
    in_place: bool = typer.Option(False, "--in-place",
        help="Allow the target to be the backed-up source itself (refused otherwise); records a "
             "timeline break in the repository and needs a new base afterwards."),
) -> None:
    """Restore a backup, or the source as it was at a moment (--to-time, --to-gtid, ...)."""
    if to_time or to_gtid or to_position or stop_before_gtid or latest:
        return _restore_pitr({**locals(), "max_rate": parse_max_rate(max_rate)})
    if tables or exclude_tables or rename_db:
        raise UsageError("--tables, --exclude-tables and --rename-db go with a point-in-time "
                         "restore (--to-time, --to-gtid, ...)")
    if not backup_id:
        raise UsageError("give a BACKUP_ID, or a moment with --to-time/--to-gtid/--to-position/--latest",
                         "run 'backupkit list' to see the backups")
    store, catalog = open_catalog(create=False, read_rate=parse_max_rate(max_rate))
    manifest = catalog.backup(backup_id)
    if manifest.kind == "snapshot":
        return _restore_snapshot(store, catalog, manifest, target, dry_run, force, verify, parallel,
                                 [x.strip() for d in databases or [] for x in d.split(",") if x.strip()],
                                 include_users, log_bin, in_place)
    if manifest.kind == "cold":
        return restore_cold_cli(store, catalog, manifest, datadir=datadir, force=force,
                                start_command=start_command, target=target, dry_run=dry_run)
    if manifest.kind == "physical":
        return restore_physical_cli(store, catalog, manifest, datadir=datadir, force=force,
                                    start_command=start_command, target=target, dry_run=dry_run)
    raise BackupkitError(f"backup {backup_id} has unknown kind {manifest.kind!r}", "upgrade backupkit")


def _restore_pitr(args: dict[str, Any]) -> None:
    """Point-in-time restore: its command is backupkit.cli.pitr."""
    from backupkit.cli.pitr import restore_cli  # lazy: start-up time

    return restore_cli(**args)


def _restore_snapshot(store, catalog, manifest, target: str | None, dry_run: bool, force: bool,
                      verify: bool, parallel: int | None, databases: list[str], include_users: bool,
                      log_bin: bool, in_place: bool = False) -> None:
    from backupkit.mysql.connection import TARGET_PASSWORD_ENV, parse_conn  # lazy: start-up time
    from backupkit.restore.load import RestoreOptions, restore_snapshot  # lazy: start-up time

    if not target:
        raise UsageError("a snapshot restore needs --target mysql://user@host:port",
                         f"the password comes from {TARGET_PASSWORD_ENV}")
    spec = parse_conn(target, password_env=TARGET_PASSWORD_ENV)
    tables = [t for t in manifest.details.get("tables", []) if not databases or t["db"] in databases]
    if dry_run:
        data = {"backup_id": manifest.id, "kind": "snapshot", "target": spec.display(),
                "dry_run": True, "databases": sorted({t["db"] for t in tables}),
                "scope": manifest.scope.to_dict(),
                "tables": len(tables), "rows": sum(t["rows"] for t in tables),
                "raw_bytes": sum(c["raw_size"] for t in tables for c in t["chunks"]),
                "point": {"file": manifest.point.file, "pos": manifest.point.pos,
                          "gtid": manifest.point.gtid}}

        def plan(console) -> None:
            console.print(f"would load snapshot {manifest.id} into {spec.display()}: "
                          f"{data['tables']} tables, {data['rows']:,} rows, "
                          f"{human_bytes(data['raw_bytes'])} in databases {', '.join(data['databases'])} "
                          f"(scope of the snapshot: {manifest.scope.describe()})")

        render(data, plan)
        return
    options = RestoreOptions(force=force, verify=verify, parallel=parallel, log_bin=log_bin,
                             include_users=include_users, databases=databases, in_place=in_place,
                             source=configured_source())
    with progress_view("restore") as view:
        result = restore_snapshot(store, manifest, spec, options, progress=view, catalog=catalog)
    data = result.to_dict()
    from backupkit.restore.loss import loss_after_restore  # lazy: start-up time

    loss = loss_after_restore(catalog, manifest.source.source_id)
    data["loss"] = loss.to_dict() if loss else None
    if not json_mode():
        for p in result.problems:
            warn(p)
        for n in result.notes:
            warn(n)

    def human(console) -> None:
        console.print(f"[bold green]restored snapshot {manifest.id}[/] into {result.target}")
        rows = [("databases", ", ".join(result.databases)),
                ("tables / rows", f"{result.tables} / {result.rows:,}"),
                ("data", human_bytes(result.raw_bytes)),
                ("verified (CHECKSUM TABLE)", f"{result.verified_tables} tables" if verify else "not asked"),
                ("duration", human_seconds(result.duration))]
        rows += [(f"moved aside: {db}", aside) for db, aside in result.moved_aside.items()]
        console.print(table(None, ["", ""], rows))
        if loss is not None:
            console.print(loss_table(loss))

    render(data, human)
