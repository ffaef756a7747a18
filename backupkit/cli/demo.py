"""backupkit demo: the whole ladder on a throw-away MariaDB, in about a minute."""

from __future__ import annotations

import os
import subprocess

import typer

from backupkit.cli.common import json_mode
from backupkit.cli.console import console, emit_json, err_console
from backupkit.errors import BackupkitError


def demo(
    keep: bool = typer.Option(False, "--keep",
                              help="Leave the servers and the repository; print how to connect."),
    workdir: str = typer.Option(None, "--workdir",
                                help="Folder for the sandboxes and the repository (default: a temp folder)."),
) -> None:
    """Show the ladder: cold copy, hot snapshot, binlog shipping, an accident, an exact restore.

    Needs only the MariaDB server binaries: it starts private servers on free ports and a
    repository in a temp folder, and cleans everything up, even on Ctrl-C."""
    from backupkit.operations.demo import run_demo  # lazy: start-up time

    quiet = json_mode()
    out = err_console if quiet else console

    def say(msg: str) -> None:
        if not quiet:
            out.print(msg, highlight=False, soft_wrap=True)

    def show(cmd: list[str], title: str) -> None:
        if quiet:
            return
        out.print(f"[dim]$ {title}[/]", highlight=False)
        env = {**os.environ, "COLUMNS": str(max(out.width, 100))}
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        out.out(r.stdout.rstrip(), highlight=False)

    result = run_demo(say, keep=keep, show=show, workdir=workdir)
    if quiet:
        emit_json({"ok": result.ok, **result.to_dict()})
    else:
        verdict = "[bold green]the restore is exact[/]" if result.ok else "[bold red]the restore differs[/]"
        console.print(f"\nDone in {result.seconds:.0f} s: {verdict}.", highlight=False)
    if not result.ok:
        raise BackupkitError("demo: the restored table differs from the source before the drop")
