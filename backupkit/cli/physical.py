"""The physical engine's command code: `snapshot --engine physical [--incremental]` and
`restore PHYSICAL_ID --datadir DIR`. The services are strategies/physical and restore/physical."""

from __future__ import annotations

import time

from backupkit.cli.common import json_mode, render, settings
from backupkit.cli.console import progress, table
from backupkit.cli.datadir import run_datadir_restore
from backupkit.errors import UsageError
from backupkit.util.units import human_bytes, human_seconds


def snapshot_physical_cli(*, incremental: bool, parallel: int | None, or_full: bool = False,
                          compression_level: int | None, max_rate: float | None = None) -> None:
    """Run mariadb-backup on the source's host and store its stream."""
    from backupkit.strategies.physical import PhysicalOptions, take_physical_backup  # lazy: start-up time

    cfg = settings()
    section = cfg.values.snapshot
    if or_full and not incremental:
        raise UsageError("--or-full goes with --incremental")
    opts = PhysicalOptions.from_policy(section, incremental=incremental, parallel=parallel,
                                       full_if_none=or_full,
                                       compression_level=compression_level,
                                       source_id=cfg.values.source.source_id,
                                       datadir=cfg.values.source.datadir, max_rate=max_rate)
    spec = cfg.source_spec()
    store = cfg.open_store()
    t0 = time.monotonic()
    with progress(enabled=not json_mode(), transfer=True) as bar:
        task = bar.add_task("physical backup (mbstream)", total=None) if bar is not None else None

        def view(event: str, **kw) -> None:
            if bar is not None and task is not None and event == "bytes":
                bar.update(task, completed=kw.get("done", 0))

        manifest = take_physical_backup(spec, store, opts, progress=view)
    wall = time.monotonic() - t0
    d = manifest.details
    data = {"backup_id": manifest.id, "kind": manifest.kind, "engine": d["engine"],
            "incremental": d["incremental"], "parent": d["parent"], "chain": d["chain"],
            "storage": store.describe(), "source": manifest.source.source_id,
            "point": {"file": manifest.point.file, "pos": manifest.point.pos,
                      "gtid": manifest.point.gtid, "time": manifest.point.time},
            "lsn": d["lsn"], "tool_version": d["tool_version"], "stats": manifest.stats,
            "consistency": d["consistency"], "duration": round(wall, 3)}

    def human(console) -> None:
        s = manifest.stats
        what = "incremental physical backup" if d["incremental"] else "physical backup"
        console.print(f"[bold green]{what} {manifest.id}[/] committed to {store.describe()}")
        blocked = d["consistency"]["blocked_ms"]
        rows = [("source", f"{manifest.source.source_id} ({manifest.source.flavor} "
                           f"{manifest.source.version})"),
                ("tool", f"{d['engine']} {d['tool_version']}"),
                ("consistent point", f"{manifest.point.file}:{manifest.point.pos}  "
                                     f"gtid {manifest.point.gtid or '-'}"),
                ("LSN", f"{d['lsn']['from']} .. {d['lsn']['to']} (redo to {d['lsn']['last']})"),
                ("data", f"{human_bytes(s['raw_bytes'])} -> {human_bytes(s['stored_bytes'])} stored "
                         f"in {s['parts']} part(s)"),
                ("commits blocked", f"{blocked:.1f} ms" if blocked is not None else "not measured"),
                ("duration", human_seconds(wall))]
        if d["incremental"]:
            rows.insert(1, ("chain", " <- ".join(d["chain"])))
        console.print(table(None, ["", ""], rows))

    render(data, human)


def restore_physical_cli(store, catalog, manifest, *, datadir: str | None, force: bool,
                         start_command: str | None, target: str | None, dry_run: bool) -> None:
    """`backupkit restore PHYSICAL_ID --datadir DIR [--start-command ...] [--target URL]`."""
    from backupkit.restore.physical import restore_physical  # lazy: start-up time

    def run(**kw):
        return restore_physical(store, manifest, datadir, catalog=catalog, force=force,
                                start_command=start_command or None, dry_run=dry_run, **kw)

    def rows(result, wall: float) -> list[tuple[str, str]]:
        out = [("chain", " -> ".join(result.chain))]
        out += [(f"moved aside: {k}", v) for k, v in result.moved_aside.items()]
        out.append(("data", human_bytes(result.bytes)))
        if not dry_run:
            out.append(("extract / prepare", f"{human_seconds(result.extract_seconds)} / "
                                             f"{human_seconds(result.prepare_seconds)}"))
            out.append(("duration", human_seconds(wall)))
        return out

    run_datadir_restore("physical", catalog, manifest, target=target, dry_run=dry_run, run=run,
                        rows=rows, transfer=True)
