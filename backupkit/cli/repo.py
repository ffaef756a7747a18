"""backupkit repo info | sync."""

from __future__ import annotations

import typer

from backupkit.cli.common import open_catalog, render
from backupkit.cli.console import human_bytes
from backupkit.repo import layout
from backupkit.repo.catalog import utc_iso

app = typer.Typer(no_args_is_help=True)


@app.command("info")
def info() -> None:
    """Show the storage target, the repository format and totals."""
    store, catalog = open_catalog(create=False)
    store.check()
    cfg = catalog.repo_config()
    totals = {"objects": 0, "bytes": 0, "backups": 0, "backup_bytes": 0, "segments": 0,
              "segment_bytes": 0}
    for obj in store.list(""):
        totals["objects"] += 1
        totals["bytes"] += obj.size
        if layout.backup_id_of(obj.key):
            totals["backups"] += 1
        if obj.key.startswith(layout.BACKUPS):
            totals["backup_bytes"] += obj.size
        if layout.is_segment_index(obj.key):
            totals["segments"] += 1
        elif obj.key.startswith(layout.BINLOG):
            totals["segment_bytes"] += obj.size
    data = {
        "storage": store.describe(),
        "initialized": cfg is not None,
        "format": cfg.get("format") if cfg else layout.FORMAT_VERSION,
        "repository_id": cfg.get("repository_id") if cfg else None,
        "created_at": utc_iso(cfg.get("created_at")) if cfg else None,
        "sources": catalog.sources(),
        "totals": totals,
    }

    def human(c) -> None:
        c.print(f"target        {data['storage']}")
        c.print(f"format        {data['format']}" + ("" if cfg else " (empty: created on first backup)"))
        if cfg:
            c.print(f"repository    {data['repository_id']} created {data['created_at']}")
        c.print(f"backups       {totals['backups']} ({human_bytes(totals['backup_bytes'])})")
        c.print(f"binlog        {totals['segments']} segments ({human_bytes(totals['segment_bytes'])})"
                f" from {len(data['sources'])} source(s)")
        c.print(f"total         {totals['objects']} objects, {human_bytes(totals['bytes'])}")

    render(data, human)
