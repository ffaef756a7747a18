"""backupkit report: what each protection strategy would lose for a disaster at a moment."""

from __future__ import annotations

import typer


def report(
    at: str = typer.Option(None, "--at", help="Disaster time (default now; local zone unless a zone or Z)."),
    source_id: str = typer.Option(None, "--source-id", help="Source to report on (default: the only one)."),
    count: bool = typer.Option(True, "--count/--no-count",
                               help="Count lost transactions and rows from the shipped binlog."),
) -> None:
    """Loss window, lost transactions and rows, downtime and RTO of every strategy present."""
    from backupkit.cli.common import open_catalog, render
    from backupkit.restore.loss import loss_report
    from backupkit.restore.targets import parse_time

    when = parse_time(at) if at else None
    _store, catalog = open_catalog(create=False)
    result = loss_report(catalog, at=when, source_id=source_id, count=count)

    def human(console) -> None:
        if not result.strategies:
            console.print("the repository holds no backup and no shipped binlog yet")
            return
        console.print(result.table())
        for s in result.strategies:
            for n in s.notes:
                console.print(f"[yellow]note:[/] {s.label}: {n}", highlight=False)

    render(result.to_dict(), human)
