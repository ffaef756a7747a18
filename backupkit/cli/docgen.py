"""Generate docs/cli.md from the typer app: `python -m backupkit.cli.docgen > docs/cli.md`."""

from __future__ import annotations

import sys

import click
import typer

from backupkit.cli.app import COMMON_HELP, app


def _param_line(p) -> str:
    if p.param_type_name == "argument":
        name = (p.metavar or p.name or "").upper()
        req = "required" if p.required else "optional"
        return f"- `{name}` ({req})" + (f": {p.help}" if getattr(p, "help", None) else "")
    names = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
    default = ""
    if not getattr(p, "is_flag", False) and p.default not in (None, "", False) and not callable(p.default):
        default = f" (default: `{p.default}`)"
    return f"- {names}{default}: {p.help or ''}".rstrip(": ")


def _walk(cmd, path: list[str], out: list[str]) -> None:
    if path:
        out.append(f"{'#' * min(len(path) + 1, 4)} `backupkit {' '.join(path)}`\n")
        if cmd.help:
            out.append(cmd.help.strip().split("\n\n")[0] + "\n")
        params = [p for p in cmd.params if p.name not in ("help",) and not getattr(p, "hidden", False)]
        if params:
            out.extend(_param_line(p) for p in params)
            out.append("")
    if isinstance(cmd, click.Group) or hasattr(cmd, "commands"):
        for name in sorted(cmd.commands):
            _walk(cmd.commands[name], [*path, name], out)


def render() -> str:
    """The whole CLI reference as markdown."""
    cmd = typer.main.get_command(app)
    out = ["# backupkit command reference", "",
           "Generated from the code by `python -m backupkit.cli.docgen > docs/cli.md`; a test fails "
           "when this file is stale.", "", COMMON_HELP,
           "Exit codes: 0 ok, 1 other error, 2 usage or configuration, 3 source unreachable, "
           "4 storage, 5 integrity, 6 service control (stop/start) failed, 7 target server (a restore's "
           "target refused it, or is the source itself), 130 interrupted.", ""]
    _walk(cmd, [], out)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
