"""backupkit report: what each protection strategy would lose for a disaster at a moment."""

from __future__ import annotations

import typer

from backupkit.cli import options as opt
from backupkit.cli.common import open_catalog, render, settings
from backupkit.cli.console import loss_table
from backupkit.cli.listing import _targets, targets_table
from backupkit.cli.repo import loss_by_target_table
from backupkit.util.units import parse_time


def report(
    at: str = typer.Option(None, "--at", help="Disaster time (default now; local zone unless a zone or Z)."),
    source_id: str = opt.source_id("Source to report on (default: the only one)."),
    count: bool = typer.Option(True, "--count/--no-count",
                               help="Count lost transactions and rows from the shipped binlog."),
) -> None:
    """Loss window, lost transactions and rows, downtime and RTO of every strategy present."""
    from backupkit.restore.loss import loss_report  # lazy: start-up time

    when = parse_time(at) if at else None
    store, catalog = open_catalog(create=False)
    result = loss_report(catalog, at=when, source_id=source_id, count=count)
    by_target = _loss_by_target(store, when, source_id)  # several storage targets: storage/mirror/

    lag = _targets(store).get("targets")  # each target's lag (what it lacks)

    def human(console) -> None:
        if not result.strategies:
            console.print("the repository holds no backup and no shipped binlog yet")
            return
        console.print(loss_table(result))
        for s in result.strategies:
            for n in s.notes:
                console.print(f"[yellow]note:[/] {s.label}: {n}", highlight=False)
        if lag:
            console.print(targets_table(lag))
        if by_target:
            console.print(loss_by_target_table(by_target))

    extra = {"targets": lag, "if_target_lost": by_target} if by_target else {}
    render({**result.to_dict(), **extra}, human)


def _loss_by_target(store, at: float | None, source_id: str | None) -> list[dict] | None:
    """Each strategy's loss window if one storage target is lost (None with a single target)."""
    from backupkit.repo.sync import survival_by_target  # lazy: start-up time
    from backupkit.repo.targets import key_encryption_keys, wrap_encryption  # lazy: start-up time
    from backupkit.restore.loss import loss_report  # lazy: start-up time
    from backupkit.storage.mirror import find_mirror  # lazy: start-up time

    mirror = find_mirror(store)
    if mirror is None or len(mirror.targets) < 2:
        return None
    keks = key_encryption_keys(settings().repository_spec())
    return survival_by_target([(t.name, t.store) for t in mirror.targets],
                              lambda s: wrap_encryption(s, keks), loss_report, at=at, source_id=source_id)
