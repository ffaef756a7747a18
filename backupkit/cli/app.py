"""The typer app, its command groups, and main(): errors become one line and an exit code."""

from __future__ import annotations

import importlib
import logging
import sys
import traceback
from collections.abc import Iterator, MutableMapping
from typing import Any

import typer
import typer.core

from backupkit import __version__
from backupkit.cli import context
from backupkit.cli.console import emit_json, error_line
from backupkit.errors import BackupkitError
from backupkit.util.paths import PathError
from backupkit.util.redact import printable, redact_text

try:  # typer >= 0.2x vendors its own copy of click (and click itself is then not needed)
    from typer._click import exceptions as _click_exceptions
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as _click_exceptions
_EXIT = (getattr(_click_exceptions, "Exit", typer.Exit), typer.Exit)  # the vendored copy raises typer's
_ABORT = (getattr(_click_exceptions, "Abort", typer.Abort), typer.Abort)
_CLICK_ERROR = (_click_exceptions.ClickException,)
_NO_ARGS: tuple[type[BaseException], ...] = tuple(
    c for c in (getattr(_click_exceptions, "NoArgsIsHelpError", None),) if c is not None)

COMMON_HELP = ("Common options, before or after the command: --policy FILE, --storage URL, "
               "--source URL, --json, --debug.")

#: The commands in the order --help lists them (commands, then groups, as typer does): name, the
#: module of backupkit.cli that defines it, the attribute there (a command function, or the typer
#: app of a group) and a group's help.
#: A module is imported when its command runs or help lists it, so that a call imports only its
#: own command's code (start-up time: every module imported at once cost ~0.1 s a call).
COMMANDS: tuple[tuple[str, str, str, str | None], ...] = (
    ("snapshot", "snapshot", "snapshot", None),
    ("cold", "cold", "cold", None),
    ("restore", "restore", "restore", None),
    ("undo", "undo", "undo", None),
    ("report", "report", "report", None),
    ("list", "listing", "list_cmd", None),
    ("verify", "verify", "verify", None),
    ("prune", "prune", "prune", None),
    ("demo", "demo", "demo", None),
    ("status", "monitor", "status", None),
    ("metrics", "monitor", "metrics", None),
    ("binlog", "binlog", "app", "Ship, inspect and check the binlog."),
    ("schedule", "schedule", "app", "Run policies on a schedule or from cron."),
    ("policy", "policy", "app", "Check policy files and show what they imply."),
    ("repo", "repo", "app", "The repository: info and sync between targets."),
)
_BUILT: dict[str, Any] = {}  # name: the built command (kept for later calls in this process)


class _QuickCoercion:
    """typer 0.2x coerces each option's value through a pydantic TypeAdapter that it builds on first
    use, also for an option left out (None): importing pydantic and building the adapters was
    ~0.1 s of every call. An option left out, a plain string for a `str` option and a number left
    at its default get here what typer would answer (None or () for a repeated option; the value
    itself); every other value goes through typer's own coercion, so its results and its error
    messages are typer's."""

    def __init__(self) -> None:
        self._typer: Any = None

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        if value is None:
            return () if (param.multiple or param.nargs == -1) else None
        desc = param.type_descriptor
        if (type(value) is str and desc.annotation is str and desc.parameter_info.parser is None
                and desc.file_annotation is None and not (param.multiple or param.nargs == -1)):
            return value
        if (type(value) in (int, float) and desc.annotation is type(value) and value == param.default
                and desc.parameter_info.parser is None):
            return value  # a number option left at its own default (e.g. restore's --replica-wait)
        if self._typer is None:
            param._runtime_param = None
            self._typer = param.get_runtime_param()  # typer's own, built now
            param._runtime_param = self
        return self._typer.coerce(value, param=param, ctx=ctx)


def _quick_param(param: Any) -> Any:
    if getattr(param, "_runtime_param", 0) is None and hasattr(param, "type_descriptor"):
        param._runtime_param = _QuickCoercion()
    return param


def _quick_coercion(command: Any, subcommands: bool = True) -> Any:
    """Install _QuickCoercion on every option of a command, its --help (made on first parse) and
    its subcommands'; a typer without runtime coercion (older or newer) is left alone."""
    for param in command.params:
        _quick_param(param)
    made = command.get_help_option
    command.get_help_option = lambda ctx: _quick_param(made(ctx))
    for sub in getattr(command, "commands", {}).values() if subcommands else ():
        _quick_coercion(sub)
    return command


def _build(name: str):
    """The click command `name`, made by typer as app.command()/app.add_typer() would make it."""
    if name not in _BUILT:
        module, attr, group_help = next(c[1:] for c in COMMANDS if c[0] == name)
        obj = getattr(importlib.import_module(f"backupkit.cli.{module}"), attr)
        holder = typer.Typer(add_completion=False)
        if group_help is None:
            holder.command(name, epilog=COMMON_HELP)(obj)
            _BUILT[name] = _quick_coercion(typer.main.get_command(holder))
        else:
            holder.add_typer(obj, name=name, help=group_help)
            _BUILT[name] = _quick_coercion(typer.main.get_command(holder).commands[name])  # type: ignore[attr-defined]
    return _BUILT[name]


class _LazyCommands(MutableMapping):
    """A group's commands by name; each is built on first access (help lists them all)."""

    def __init__(self, names: list[str], extra: dict[str, Any]) -> None:
        self._names = [*names, *(n for n in extra if n not in names)]
        self._extra = dict(extra)  # commands given as objects

    def __getitem__(self, name: str):
        if name in self._extra:
            return self._extra[name]
        if name not in self._names:
            raise KeyError(name)
        return _build(name)

    def __setitem__(self, name: str, command) -> None:
        self._extra[name] = command
        if name not in self._names:
            self._names.append(name)

    def __delitem__(self, name: str) -> None:
        self._extra.pop(name, None)
        self._names.remove(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class LazyGroup(typer.core.TyperGroup):
    """The root group: its commands are COMMANDS, imported and built when one is used."""

    def __init__(self, *args, commands=None, **kwargs) -> None:
        super().__init__(*args, commands=commands, **kwargs)
        self.commands = _LazyCommands([c[0] for c in COMMANDS], dict(self.commands))
        _quick_coercion(self, subcommands=False)  # its commands get it when built


app = typer.Typer(
    name="backupkit",
    help="Back up MySQL/MariaDB and restore it to any second in the past.\n\n" + COMMON_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    cls=LazyGroup,
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
