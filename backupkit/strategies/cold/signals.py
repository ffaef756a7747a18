"""Signals during a cold backup: SIGINT, SIGTERM and SIGHUP interrupt it, except while the
server is being restarted (then they wait until it runs again)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from backupkit.errors import BackupkitError


class Interrupted(BackupkitError):
    """A signal (Ctrl-C, SIGTERM, SIGHUP) stopped the command."""

    exit_code = 130


class SignalInterrupt(BaseException):  # noqa: N818 - like KeyboardInterrupt
    """Raised by the signal handlers; a BaseException so that no ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class SignalGuard:
    """SIGINT/SIGTERM/SIGHUP raise SignalInterrupt, except while deferred (during the restart)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.old: dict[int, object] = {}
        self.deferring = False
        self.pending: int | None = None
        self.active = False

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self.old[s] = signal.signal(s, self._handler)
            self.active = True
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self.old.items():
            signal.signal(s, h)  # type: ignore[arg-type]
        self.old.clear()

    def _handler(self, signum: int, frame) -> None:
        self.pending = signum
        if not self.deferring:
            raise SignalInterrupt(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False

    def raise_pending(self) -> None:
        if self.pending is not None:
            raise SignalInterrupt(self.pending)
