"""The typer app, its command groups, and main(): errors become one line and an exit code."""

from __future__ import annotations

import logging
import sys
import traceback

import click
import typer

from backupkit import __version__
from backupkit.cli import (
    binlog,
    cold,
    context,
    demo,
    listing,
    monitor,
    policy,
    prune,
    repo,
    report,
    restore,
    schedule,
    snapshot,
    undo,
    verify,
)
from backupkit.cli.console import emit_json, error_line
from backupkit.errors import BackupkitError
from backupkit.util.paths import PathError
from backupkit.util.redact import printable, redact_text

try:  # typer >= 0.2x vendors its own copy of click
    from typer._click import exceptions as _vendored
except ImportError:  # pragma: no cover - older typer uses click itself
    _vendored = click.exceptions
_EXIT = (click.exceptions.Exit, typer.Exit)
_ABORT = (click.exceptions.Abort, typer.Abort)
_CLICK_ERROR = (click.ClickException, _vendored.ClickException)
_NO_ARGS: tuple[type[BaseException], ...] = tuple(
    c for c in (getattr(_vendored, "NoArgsIsHelpError", None),) if c is not None)

COMMON_HELP = ("Common options, before or after the command: --policy FILE, --storage URL, "
               "--source URL, --json, --debug.")

app = typer.Typer(
    name="backupkit",
    help="Back up MySQL/MariaDB and restore it to any second in the past.\n\n" + COMMON_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"backupkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    policy: str = typer.Option(None, "--policy", help="Policy file (policies/*.toml)."),
    storage: str = typer.Option(None, "--storage", help="Storage URL: file:///path or s3://bucket/prefix."),
    source: str = typer.Option(None, "--source", help="Source server: mysql://user@host:port or a socket."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable JSON output."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Show the version and exit."),
) -> None:
    """Back up MySQL/MariaDB and restore it to any second in the past."""


def _register() -> None:
    app.command("snapshot", epilog=COMMON_HELP)(snapshot.snapshot)
    app.command("cold", epilog=COMMON_HELP)(cold.cold)
    app.add_typer(binlog.app, name="binlog", help="Ship, inspect and check the binlog.")
    app.command("restore", epilog=COMMON_HELP)(restore.restore)
    app.command("undo", epilog=COMMON_HELP)(undo.undo)
    app.command("report", epilog=COMMON_HELP)(report.report)
    app.command("list", epilog=COMMON_HELP)(listing.list_cmd)
    app.command("verify", epilog=COMMON_HELP)(verify.verify)
    app.command("prune", epilog=COMMON_HELP)(prune.prune)
    app.add_typer(schedule.app, name="schedule", help="Run policies on a schedule or from cron.")
    app.add_typer(policy.app, name="policy", help="Check policy files and show what they imply.")
    app.command("demo", epilog=COMMON_HELP)(demo.demo)
    app.add_typer(repo.app, name="repo", help="The repository: info and sync between targets.")
    app.command("status", epilog=COMMON_HELP)(monitor.status)
    app.command("metrics", epilog=COMMON_HELP)(monitor.metrics)


_register()


class _RedactFilter(logging.Filter):
    """Log lines too never show a URL's password, and stay on one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = printable(redact_text(message))
        if clean != message:
            record.msg, record.args = clean, ()
        return True


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _RedactFilter) for f in handler.filters):
            handler.addFilter(_RedactFilter())
    if not debug:
        for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "apscheduler"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv
    debug = "--debug" in argv
    try:
        common, rest = context.extract_common(argv)
        context.COMMON.__dict__.update(common.__dict__)
        _setup_logging(common.debug)
        command = typer.main.get_command(app)
        result = command.main(args=rest, prog_name="backupkit", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except _EXIT as exc:
        return exc.exit_code
    except _ABORT:
        error_line("interrupted")
        return 130
    except KeyboardInterrupt:
        error_line("interrupted")
        return 130
    except _NO_ARGS:
        return 0
    except _CLICK_ERROR as exc:
        msg = exc.format_message().replace("\n", " ")
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        error_line(msg + hint)
        if as_json:
            emit_json({"ok": False, "error": redact_text(msg), "exit_code": 2})
        return 2
    except PathError as exc:  # a path the user gave that cannot be expanded (~nosuchuser)
        error_line(str(exc))
        if as_json:
            emit_json({"ok": False, "error": redact_text(str(exc)), "exit_code": 2})
        return 2
    except BackupkitError as exc:
        lines = exc.one_line() if "\n" not in exc.message else exc.message
        for line in lines.split("\n"):  # only deliberate line breaks (one problem per line)
            if line.strip():
                error_line(line)
        if debug:
            traceback.print_exc()
        if as_json:
            emit_json({"ok": False, "error": redact_text(exc.message),
                       "hint": redact_text(exc.hint) if exc.hint else exc.hint,
                       "exit_code": exc.exit_code, "kind": type(exc).__name__,
                       **({"details": exc.details} if exc.details else {})})
        return exc.exit_code
    except Exception as exc:  # a bug: still one line unless --debug
        error_line(f"internal error: {type(exc).__name__}: {exc} (run with --debug for details)")
        if debug:
            traceback.print_exc()
        if as_json:
            emit_json({"ok": False, "error": redact_text(f"{type(exc).__name__}: {exc}"), "exit_code": 1})
        return 1


def run() -> None:
    """Console-script wrapper."""
    sys.exit(main())
