"""What the cold and the physical restore commands share: progress, the target server's
connection, timing, the loss report after the restore, and the rendered result."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from backupkit.cli.common import json_mode, render, settings
from backupkit.cli.console import as_progress, info, loss_table, progress, table
from backupkit.util.units import human_seconds


def run_datadir_restore(kind: str, catalog, manifest, *, target: str | None, dry_run: bool,
                        run: Callable[..., Any], rows: Callable[[Any, float], list[tuple[str, str]]],
                        transfer: bool = False) -> None:
    """Run ``run(conn=, start_timeout=, progress=, notify=)`` (the restore service) and render its
    result: ``rows(result, wall)`` gives the kind's own lines."""
    from backupkit.mysql.connection import TARGET_PASSWORD_ENV, parse_conn  # lazy: start-up time

    cfg = settings()
    spec = parse_conn(target, password_env=TARGET_PASSWORD_ENV) if target else None
    with progress(enabled=not json_mode() and not dry_run, transfer=transfer) as bar:
        t0 = time.monotonic()
        result = run(conn=spec, start_timeout=cfg.policy.source.start_timeout,
                     progress=as_progress(bar), notify=lambda m: info(m, quiet=json_mode()))
    wall = time.monotonic() - t0
    data = result.to_dict() | {"kind": kind, "duration": round(wall, 3)}
    loss = None
    if not dry_run:
        from backupkit.restore.loss import loss_after_restore  # lazy: start-up time

        loss = loss_after_restore(catalog, manifest.source.source_id)
        data["loss"] = loss.to_dict() if loss else None

    def human(console) -> None:
        verb = "would restore" if dry_run else "restored"
        console.print(f"[bold green]{verb} {kind} backup {manifest.id}[/] into {result.datadir}")
        lines = rows(result, wall)
        if result.started:
            lines.append(("server", f"started in {human_seconds(result.start_seconds)}"
                                    + ("" if result.start_verified else " (not verified: no --target)")))
        p = result.point
        if p.get("file"):
            lines.append(("binlog replay continues at",
                          f"{p['file']}:{p['pos']}  gtid {p.get('gtid') or '-'}"))
        console.print(table(None, ["", ""], lines))
        if loss is not None:
            console.print(loss_table(loss))

    render(data, human)
