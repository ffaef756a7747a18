"""backupkit cold: stop the server, copy its files, start it again; and its restore's output."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any

import typer

from backupkit.cli import options as opt
from backupkit.cli.common import json_mode, parse_max_rate, render, settings
from backupkit.cli.console import info, progress, table
from backupkit.cli.datadir import run_datadir_restore
from backupkit.util.units import human_bytes, human_seconds


def _pick(cli_value, policy_value):
    return cli_value if cli_value not in (None, [], "") else policy_value


@contextmanager
def _progress_view(enabled: bool = True):
    """A callback for take_cold_backup(): one bar per phase (copy, staging, upload)."""
    with progress(enabled=enabled and not json_mode()) as bar:
        tasks: dict[str, Any] = {}

        def update(phase) -> None:
            if bar is None:
                return
            task = tasks.get(phase.name)
            if task is None:
                label = {"copy": "copy (server down)", "staging": "staging (server down)",
                         "upload": "upload"}.get(phase.name, phase.name)
                task = tasks[phase.name] = bar.add_task(label, total=phase.total or None)
            bar.update(task, completed=phase.done,
                       total=max(phase.total, phase.done) if phase.total else None)

        yield update


def cold(
    datadir: str = typer.Option(None, "--datadir", help="The server's datadir (default: its @@datadir)."),
    stop_command: str = typer.Option(None, "--stop-command",
                                     help="Command that stops the server (default: SQL SHUTDOWN)."),
    start_command: str = opt.start_command("Command that starts the server (required here or in the "
                                           "policy)."),
    pid_file: str = typer.Option(None, "--pid-file", help="The server's pid file (default: its @@pid_file)."),
    staging: str = typer.Option(None, "--staging", metavar="auto|none|DIR",
                                help="auto (default): copy beside the datadir while the server is down "
                                     "and upload after the restart, when there is room (else none); "
                                     "none: compress and store while it is down; DIR: copy to this "
                                     "folder."),
    paths: list[str] = typer.Option(None, "--paths",
                                    help="Other files or folders to copy too (repeat)."),
    config_file: str = typer.Option(None, "--config-file",
                                    help="A server config file to save with the backup."),
    stop_timeout: float = typer.Option(None, "--stop-timeout", help="Seconds to wait for the stop."),
    start_timeout: float = typer.Option(None, "--start-timeout",
                                        help="Seconds to wait until the server accepts connections."),
    compression_level: int = opt.compression_level("zstd level (default from the policy: 1)."),
    preflush_timeout: float = typer.Option(None, "--preflush-timeout",
                                           help="Seconds to flush dirty pages before the stop (0: off)."),
    max_rate: str = opt.max_rate("Limits the upload of the staging copy (the server serves again), "
                                 "never the copy while it is down. Policy: [cold] max_rate."),
    idle_io: bool = typer.Option(None, "--idle-io/--normal-io",
                                 help="Read the staging copy at idle I/O priority (ionice -c3; the "
                                      "default where the platform allows). Policy: [cold] idle_io."),
) -> None:
    """Stop the server, copy its datadir to the repository, and start it again (always)."""
    from backupkit.strategies.cold import ColdOptions, take_cold_backup  # lazy: start-up time

    cfg = settings()
    src, pol = cfg.policy.source, cfg.policy.cold
    opts = ColdOptions(
        datadir=_pick(datadir, src.datadir), stop_command=_pick(stop_command, src.stop_command),
        start_command=_pick(start_command, src.start_command), pid_file=_pick(pid_file, src.pid_file),
        staging=_pick(staging, pol.staging), paths=list(_pick(paths, pol.paths) or []),
        config_file=_pick(config_file, src.config_file),
        stop_timeout=_pick(stop_timeout, src.stop_timeout),
        start_timeout=_pick(start_timeout, src.start_timeout),
        compression_level=_pick(compression_level, pol.compression_level),
        preflush_timeout=_pick(preflush_timeout, pol.preflush_timeout),
        source_id=src.source_id, max_rate=parse_max_rate(max_rate, pol.max_rate),
        idle_io=_pick(idle_io, pol.idle_io))
    spec = cfg.source_spec()
    store = cfg.open_store()
    t0 = time.monotonic()
    with _progress_view() as view:
        manifest = take_cold_backup(store, spec, opts, progress=view,
                                    notify=lambda m: info(m, quiet=json_mode()))
    wall = time.monotonic() - t0
    d = manifest.details["downtime"]
    staged = manifest.details.get("staging") or {}
    data = {
        "backup_id": manifest.id, "kind": "cold", "storage": store.describe(),
        "source": manifest.source.source_id,
        "downtime": {k: d.get(k) for k in ("total_seconds", "stop_seconds", "copy_seconds",
                                           "start_seconds", "stop_requested_utc", "stopped_utc",
                                           "start_requested_utc", "accepting_utc")},
        "staging": staged or None,
        "point": {"file": manifest.point.file, "pos": manifest.point.pos,
                  "gtid": manifest.point.gtid, "time": manifest.point.time},
        "stats": manifest.stats, "duration": round(wall, 3),
    }

    def human(console) -> None:
        s = manifest.stats
        console.print(f"[bold green]cold backup {manifest.id}[/] committed to {store.describe()}")
        rows = [
            ("source", f"{manifest.source.source_id} ({manifest.source.flavor} {manifest.source.version})"),
            ("downtime", f"[bold]{human_seconds(d['total_seconds'])}[/] = stop "
                         f"{human_seconds(d['stop_seconds'])} + copy {human_seconds(d['copy_seconds'])}"
                         f" + start {human_seconds(d['start_seconds'])}"),
        ]
        if staged.get("mode") in ("auto", "dir"):
            rows.append(("staging", f"{staged['mode']}: copy {human_seconds(staged.get('copy_seconds'))} "
                                    f"(server down), upload {human_seconds(staged.get('upload_seconds'))}"
                                    " (server up)"))
        elif staged:
            rows.append(("staging", f"none: stored while the server was down ({staged.get('reason')})"))
        for path in staged.get("removed_leftovers") or []:
            rows.append(("removed", f"leftover staging copy {path}"))
        rows += [
            ("binlog point", f"{manifest.point.file}:{manifest.point.pos}  gtid {manifest.point.gtid or '-'}"
             if manifest.point.file else "binlog disabled: no replay from this base"),
            ("files", f"{s['files']} files, {human_bytes(s['logical_bytes'])} -> "
                      f"{human_bytes(s['stored_bytes'])} stored"
                      + (f", {s['sparse_files']} sparse" if s.get("sparse_files") else "")),
            ("duration", human_seconds(wall)),
        ]
        for sk in manifest.details.get("skipped", []):
            arrow = f" -> {sk['target']}" if sk.get("target") else ""
            rows.append(("not copied", f"{sk['path']} ({sk['reason']}{arrow})"))
        console.print(table(None, ["", ""], rows))

    render(data, human)


def restore_cold_cli(store, catalog, manifest, *, datadir: str | None, force: bool,
                     start_command: str | None, target: str | None, dry_run: bool) -> None:
    """`backupkit restore COLD_ID --datadir DIR [--start-command ...] [--target URL]`."""
    from backupkit.restore.cold import restore_cold  # lazy: start-up time

    def run(**kw):
        return restore_cold(store, manifest, datadir, force=force, start_command=start_command or None,
                            dry_run=dry_run, catalog=catalog, **kw)

    def rows(result, wall: float) -> list[tuple[str, str]]:
        out = [(f"moved aside: {k}", v) for k, v in result.moved_aside.items()]
        out += [(f"folder {k}", v) for k, v in result.dirs.items() if k != "data"]
        out += [("files", f"{result.files} files, {human_bytes(result.bytes)}")]
        if not dry_run:
            out.append(("duration", human_seconds(wall)))
        if result.config_file:
            out.append(("server config", result.config_file))
        return out

    run_datadir_restore("cold", catalog, manifest, target=target, dry_run=dry_run, run=run, rows=rows)
