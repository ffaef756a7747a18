"""backupkit snapshot: a consistent logical snapshot of the live source, streamed to the repository."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any

import typer

from backupkit.cli import options as opt
from backupkit.cli.common import json_mode, parse_max_rate, render, settings
from backupkit.cli.console import progress, table
from backupkit.errors import UsageError
from backupkit.util.units import human_bytes, human_seconds


def _split(values: list[str] | None) -> list[str]:
    """Values given repeated or comma-separated."""
    out: list[str] = []
    for v in values or []:
        out += [x.strip() for x in v.split(",") if x.strip()]
    return out


class ProgressView:
    """Feeds take_snapshot()/restore_snapshot() events into a rich progress display."""

    def __init__(self, bar, verb: str) -> None:
        self.bar = bar
        self.verb = verb
        self.rows = 0
        self.tables_done = 0
        self.tables = 0
        self.task = None

    def _describe(self) -> str:
        return f"{self.verb} {self.tables_done}/{self.tables} tables, {self.rows:,} rows"

    def __call__(self, event: str, **kw: Any) -> None:
        if self.bar is None:
            return
        if event == "plan":
            self.tables = kw.get("tables", 0)
            total = kw.get("est_bytes") or kw.get("bytes") or None
            self.task = self.bar.add_task(self._describe(), total=total)
        elif self.task is None:
            return
        elif event == "data":
            self.rows += kw.get("rows", 0)
            self.bar.update(self.task, advance=kw.get("bytes", 0), description=self._describe())
        elif event in ("table", "chunk"):
            if event == "chunk":
                self.rows += kw.get("rows", 0)
            else:
                self.tables_done += 1
            self.bar.update(self.task, description=self._describe())
        elif event == "done":
            total = self.bar.tasks[0].completed if self.bar.tasks else None
            self.tables_done = self.tables
            self.bar.update(self.task, total=total, completed=total, description=self._describe())


@contextmanager
def progress_view(verb: str):
    with progress(enabled=not json_mode()) as bar:
        yield ProgressView(bar, verb)


def snapshot(
    databases: list[str] = typer.Option(None, "--databases", "-d",
                                        help="Only these databases (repeat or comma-separate; * ? allowed)."),
    tables: list[str] = opt.tables("Only these tables as db.table (repeat or comma-separate).", "-t"),
    include_users: bool = typer.Option(None, "--include-users/--no-users",
                                       help="Also save users and grants."),
    parallel: int = typer.Option(None, "--parallel", "-p", min=1, max=64,
                                 help="Parallel workers (default: the number of cores)."),
    chunk_size: int = typer.Option(None, "--chunk-size", min=1, max=4096,
                                   help="MiB of data per chunk (default 64)."),
    compression_level: int = opt.compression_level("zstd level (default from the policy)."),
    checksums: bool = typer.Option(True, "--checksums/--no-checksums",
                                   help="CHECKSUM TABLE inside the snapshot, for restore --verify."),
    engine: str = typer.Option(None, "--engine",
                               help="logical (rows, the default) or physical (mariadb-backup; runs on "
                                    "the database host). Policy: [snapshot] engine."),
    max_lock_wait: float = typer.Option(None, "--max-lock-wait", min=0.1, max=3600,
                                        help="Seconds the consistency step may wait for other sessions "
                                             "(and so stall commits) before it backs off (default 5)."),
    lock_retries: int = typer.Option(None, "--lock-retries", min=0, max=100,
                                     help="Tries after a cut lock wait before giving up (default 3)."),
    max_rate: str = opt.max_rate("Limits reading the source (logical: row text; physical: "
                                 "mariadb-backup's stream). Policy: [snapshot] max_rate."),
    incremental: bool = typer.Option(False, "--incremental",
                                     help="Physical: only pages changed since the newest physical backup."),
    or_full: bool = typer.Option(False, "--or-full",
                                 help="With --incremental: a full physical backup when there is none "
                                      "to extend (what [strategies] snapshot_incremental runs)."),
) -> None:
    """Take a consistent snapshot of the source while it keeps serving writes."""
    engine = (engine or settings().values.snapshot.engine).lower()
    if engine not in ("logical", "physical"):
        raise UsageError(f"unknown engine {engine!r}", "use --engine logical or --engine physical")
    if engine == "physical":
        from backupkit.cli.physical import snapshot_physical_cli  # lazy: start-up time

        if databases or tables or include_users or chunk_size:
            raise UsageError("--databases, --tables, --include-users and --chunk-size are for the "
                             "logical engine", "a physical backup copies the whole datadir")

        return snapshot_physical_cli(incremental=incremental, or_full=or_full, parallel=parallel,
                                     compression_level=compression_level,
                                     max_rate=parse_max_rate(max_rate,
                                                             settings().values.snapshot.max_rate))
    if incremental or or_full:
        raise UsageError("--incremental needs the physical engine", "add --engine physical")
    from backupkit.strategies.snapshot import SnapshotOptions, take_snapshot  # lazy: start-up time

    cfg = settings()
    section = cfg.values.snapshot
    options = SnapshotOptions.from_policy(
        section, databases=_split(databases) or None, tables=_split(tables) or None,
        include_users=include_users, parallel=parallel, chunk_size_mb=chunk_size,
        compression_level=compression_level, source_id=cfg.values.source.source_id,
        max_lock_wait=max_lock_wait, lock_retries=lock_retries)
    options.checksums = checksums
    options.max_rate = parse_max_rate(max_rate, section.max_rate)
    spec = cfg.source_spec()
    store = cfg.open_store()
    t0 = time.monotonic()
    with progress_view("snapshot") as view:
        manifest = take_snapshot(spec, store, options, progress=view)
    wall = time.monotonic() - t0
    cons = manifest.details["consistency"]
    data = {
        "backup_id": manifest.id, "kind": "snapshot", "storage": store.describe(),
        "source": manifest.source.source_id,
        "point": {"file": manifest.point.file, "pos": manifest.point.pos,
                  "gtid": manifest.point.gtid, "time": manifest.point.time},
        "stats": manifest.stats, "consistency": cons, "duration": round(wall, 3),
    }

    def human(console) -> None:
        s = manifest.stats
        console.print(f"[bold green]snapshot {manifest.id}[/] committed to {store.describe()}")
        console.print(table(None, ["", ""], [
            ("source", f"{manifest.source.source_id} ({manifest.source.flavor} {manifest.source.version})"),
            ("consistent point",
             f"{manifest.point.file}:{manifest.point.pos}  gtid {manifest.point.gtid or '-'}"),
            ("tables / rows", f"{s['tables']} / {s['rows']:,}"),
            ("data", f"{human_bytes(s['raw_bytes'])} -> {human_bytes(s['stored_bytes'])} stored "
                     f"in {s['chunks']} chunks"),
            ("commits blocked", f"{cons['blocked_ms']:.1f} ms ({cons['method']})"),
            ("duration", human_seconds(wall)),
        ]))

    render(data, human)
