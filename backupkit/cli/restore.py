"""backupkit restore: a snapshot into a server, a cold backup into a datadir, or any moment in time."""

from __future__ import annotations

import typer

from backupkit.cli.common import not_yet


def restore(
    backup_id: str = typer.Argument(None, help="Backup to restore (snapshot or cold); omit with --to-*."),
    target: str = typer.Option(None, "--target", help="Target server for a logical restore: mysql://user@host:port."),
    datadir: str = typer.Option(None, "--datadir", help="Target datadir for a cold restore."),
    to_time: str = typer.Option(None, "--to-time", help="Restore to this moment (local zone unless a zone or Z is given)."),
    to_gtid: str = typer.Option(None, "--to-gtid", help="Restore up to and including this GTID."),
    to_position: str = typer.Option(None, "--to-position", help="Restore up to FILE:POS of the source binlog."),
    stop_before_gtid: str = typer.Option(None, "--stop-before-gtid", help="Everything before this transaction, not it."),
    latest: bool = typer.Option(False, "--latest", help="Restore to the newest shipped transaction."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and change nothing."),
    force: bool = typer.Option(False, "--force", help="Move existing databases or datadir aside (never deleted)."),
    verify: bool = typer.Option(False, "--verify", help="Compare CHECKSUM TABLE with the values recorded at backup time."),
    parallel: int = typer.Option(None, "--parallel", help="Parallel load workers (default: cores)."),
    start_command: str = typer.Option(None, "--start-command", help="Cold restore: command that starts the server."),
) -> None:
    """Restore a backup, or the source as it was at a moment (--to-time, --to-gtid, ...)."""
    raise not_yet("restore")
