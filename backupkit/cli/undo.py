"""backupkit undo: the inverse of chosen transactions, applied on the live server.

The service is backupkit.restore.undo; this module parses the options and renders the result.
"""

from __future__ import annotations

import typer

from backupkit.cli import options as opt
from backupkit.cli.common import configured_source, open_catalog, render
from backupkit.cli.console import table
from backupkit.errors import UsageError


def undo(
    gtid: list[str] = typer.Option(None, "--gtid", help="Undo these transactions: G[,G2...]."),
    from_time: str = typer.Option(None, "--from", help="Undo every transaction committed from T1..."),
    to_time: str = typer.Option(None, "--to", help="... up to T2 (local zone unless a zone is given)."),
    tables: list[str] = opt.tables("Only these db.table patterns (as mydumper's filters)."),
    exclude_tables: list[str] = opt.exclude_tables("With --tables: leave out these patterns."),
    target: str = opt.target("The live server to undo on (default: the configured source)."),
    source_id: str = opt.source_id("Whose shipped binlog to read."),
    dry_run: bool = opt.dry_run("Print the undo as SQL (BINLOG statements in one transaction); "
                                "change nothing."),
    force: bool = opt.force("Leave rows that changed since as they are (reported) and undo the rest."),
) -> None:
    """Undo bad transactions (flashback): the inverse of their row events, conflict-checked."""
    from backupkit.mysql.connection import PASSWORD_ENV, parse_conn  # lazy: start-up time
    from backupkit.restore.replay.filter import TableFilter  # lazy: start-up time
    from backupkit.restore.undo import undo as run_undo  # lazy: start-up time
    from backupkit.util.units import parse_time  # lazy: start-up time

    gtids = [g.strip() for v in gtid or [] for g in v.split(",") if g.strip()]
    if gtids and (from_time or to_time):
        raise UsageError("give --gtid or --from/--to, not both")
    flt = TableFilter.parse(tables, exclude_tables) if tables else None
    spec = parse_conn(target, password_env=PASSWORD_ENV) if target else configured_source()
    if spec is None and not dry_run:
        raise UsageError("undo needs the live server: --target mysql://user@host:port or --source")
    store, catalog = open_catalog(create=False)
    result = run_undo(store, catalog, spec, gtids=gtids,
                      t_from=parse_time(from_time) if from_time else None,
                      t_to=parse_time(to_time) if to_time else None, flt=flt,
                      source_id=source_id, dry_run=dry_run, force=force)
    data = result.to_dict()
    if dry_run:
        data["sql"] = result.sql

    def human(console) -> None:
        if dry_run:
            console.print(result.sql, highlight=False, markup=False, soft_wrap=True)
            return
        console.print(f"[bold green]undone[/] {len(result.transactions)} transaction(s) on "
                      f"{spec.display()}")
        console.print(table(None, ["", ""], [("transactions", ", ".join(result.transactions)),
                                             ("rows", str(result.events)),
                                             ("tables", ", ".join(result.tables))]))
        for line in result.skipped:
            console.print(f"[yellow]skipped (changed since):[/] {line}", highlight=False)

    render(data, human)
