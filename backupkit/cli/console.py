"""The one place that writes to the terminal: rich for people, JSON for automation.

rich is imported when something is drawn (a JSON run never needs it: start-up time)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from backupkit.util.progress import NullProgress
from backupkit.util.progress import Progress as ProgressSink
from backupkit.util.redact import printable, redact_text

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table


class _LazyConsole:
    """A rich Console made on first use (the output streams are looked up then, as rich does)."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    def real(self) -> Console:
        if self._console is None:
            from rich.console import Console  # lazy: start-up time

            self._console = Console(**self._options)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real(), name)


console: Console = _LazyConsole()  # type: ignore[assignment]
err_console: Console = _LazyConsole(stderr=True)  # type: ignore[assignment]


def escape(text: str) -> str:
    """rich markup escaped (rich.markup.escape)."""
    from rich.markup import escape as rich_escape  # lazy: start-up time

    return rich_escape(text)


def emit_json(data: Any) -> None:
    """Machine output: one JSON document on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def table(title: str | None, columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> Table:
    from rich.table import Table  # lazy: start-up time

    t = Table(title=title, title_justify="left", header_style="bold")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*["" if v is None else str(v) for v in r])
    return t


def loss_table(report) -> Table:
    """A restore.loss.LossReport as a rich table."""
    title, columns, rows = report.table_data()
    return table(title, columns, rows)


def error_line(message: str) -> None:
    # escape: messages quote policy keys like [storage] that rich would take for markup
    message = printable(redact_text(message))  # one line, and never a URL's password
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(printable(redact_text(message)))}", highlight=False,
                      soft_wrap=True)


def info(message: str, quiet: bool = False) -> None:
    if not quiet:
        err_console.print(message, highlight=False, soft_wrap=True)


@contextmanager
def progress(enabled: bool = True, transfer: bool = True) -> Iterator[Progress | None]:
    """A rich progress display on stderr when it is a terminal and output is not JSON."""
    if not enabled or not err_console.is_terminal:
        yield None
        return
    from rich.progress import (  # lazy: start-up time
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    cols: list[Any] = [TextColumn("[bold]{task.description}"), BarColumn(),
                       TextColumn("{task.percentage:>3.0f}%")]
    if transfer:
        cols += [DownloadColumn(), TransferSpeedColumn()]
    cols += [TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*cols, console=err_console.real(), transient=False) as p:  # type: ignore[attr-defined]
        yield p


class BarProgress:
    """util.progress.Progress drawn as rich bars."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar

    def start(self, description: str, total: float | None = None) -> int:
        return self.bar.add_task(description, total=total)

    def advance(self, task: int, amount: float = 0, *, description: str | None = None) -> None:
        self.bar.update(task, advance=amount, description=description)

    def update(self, task: int, *, completed: float | None = None, total: float | None = None,
               description: str | None = None) -> None:
        self.bar.update(task, completed=completed, total=total, description=description)

    def finish(self, task: int) -> None:
        t = next((t for t in self.bar.tasks if t.id == task), None)
        if t is not None:
            self.bar.update(task, total=t.completed, completed=t.completed)


def as_progress(bar: Progress | None) -> ProgressSink:
    """What a service reports to: the bars of progress(), or nowhere when there are none."""
    return BarProgress(bar) if bar is not None else NullProgress()
