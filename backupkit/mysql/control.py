"""Stop, start and watch a database service on this host (for cold backups and cold restores).

Stop: the configured stop command, or the SQL ``SHUTDOWN`` statement; then wait until the
process has exited (pid file and /proc), with a timeout, and check that the shutdown was clean
(the error log's "Shutdown complete", the pid file removed, the binlog closed).
Start: the configured start command, then wait until the server accepts connections; a start
that fails is reported with the command, its exit status and output, and the error log's tail.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pymysql

from backupkit.errors import BackupkitError, ServerControlError, SourceError, UsageError
from backupkit.mysql.connection import ConnSpec, connect
from backupkit.mysql.process import (
    CommandResult,
    one_line,
    pid_alive,
    read_from,
    read_output,
    read_pid,
    run_command,
    spawn_command,
)

POLL = 0.02
#: A server that answers this long after a stop was sent did not take the stop.
STEADY = 1.0


@dataclass
class ServerProbe:
    """What the running server says about itself before it is stopped."""

    pid: int
    pid_file: Path
    datadir: Path
    error_log: Path | None
    error_log_offset: int
    version: str
    flavor: str
    log_bin: bool
    log_bin_basename: Path | None
    log_bin_index: Path | None
    innodb_fast_shutdown: int
    innodb_dirs: dict[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()
                if k != "innodb_dirs"} | {"innodb_dirs": {k: str(v) for k, v in self.innodb_dirs.items()}}


@dataclass
class ShutdownCheck:
    """Evidence that the server stopped cleanly; a check that cannot be made is None."""

    process_exited: bool
    pid_file_removed: bool | None
    error_log_complete: bool | None
    binlog_closed: bool | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.process_exited and all(
            v is not False for v in (self.pid_file_removed, self.error_log_complete, self.binlog_closed))

    def problems(self) -> list[str]:
        out = []
        if not self.process_exited:
            out.append("the process is still there")
        if self.pid_file_removed is False:
            out.append("the pid file was left behind")
        if self.error_log_complete is False:
            out.append("the error log has no 'Shutdown complete'")
        if self.binlog_closed is False:
            out.append("the binlog was not closed")
        return out + self.notes


@dataclass
class StartReport:
    requested_at: float
    accepting_at: float
    command: CommandResult | None
    requested_mono: float = 0.0
    accepting_mono: float = 0.0

    @property
    def seconds(self) -> float:
        return self.accepting_at - self.requested_at


class ServiceControl:
    """Stop and start one local MariaDB/MySQL server."""

    def __init__(self, spec: ConnSpec, *, stop_command: str | None = None,
                 start_command: str | None = None, pid_file: str | Path | None = None,
                 stop_timeout: float = 300.0, start_timeout: float = 300.0,
                 error_log: str | Path | None = None) -> None:
        self.spec = spec
        self.error_log = Path(error_log) if error_log else None
        self.stop_command = stop_command or None
        self.start_command = start_command or None
        self.pid_file = Path(pid_file) if pid_file else None
        self.stop_timeout = stop_timeout
        self.start_timeout = start_timeout
        self.probe_result: ServerProbe | None = None

    # -- looking ---------------------------------------------------------------------
    def probe(self) -> ServerProbe:
        """Read what stopping, copying and starting need from the running server."""
        conn = connect(self.spec)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT VERSION(), @@datadir, @@pid_file, @@log_error, @@log_bin")
                version, datadir, pid_file, log_error, log_bin = cur.fetchone()
                basename = index = None
                if int(log_bin):
                    cur.execute("SELECT @@log_bin_basename, @@log_bin_index")
                    basename, index = cur.fetchone()
                cur.execute("SELECT @@innodb_fast_shutdown, @@innodb_data_home_dir, "
                            "@@innodb_log_group_home_dir, @@innodb_undo_directory")
                fast, data_home, log_home, undo_dir = cur.fetchone()
        except Exception as exc:
            raise SourceError(f"cannot read server settings from {self.spec.display()}: {exc}") from None
        finally:
            conn.close()
        datadir_p = Path(datadir.rstrip("/") or "/")
        if not datadir_p.is_dir():
            raise UsageError(f"the server's datadir {datadir_p} is not a folder on this host",
                             "a cold backup runs on the database host itself")
        pid_path = self.pid_file or Path(pid_file if os.path.isabs(pid_file) else datadir_p / pid_file)
        pid = read_pid(pid_path)
        if pid is None:
            raise UsageError(f"cannot read the server's pid file {pid_path}",
                             "give --pid-file, and run on the database host")
        if not pid_alive(pid):
            raise UsageError(f"pid file {pid_path} names process {pid}, which is not running")
        err = None
        if log_error and log_error not in ("stderr",):
            err = Path(log_error if os.path.isabs(log_error) else datadir_p / log_error)
            if not err.is_file():
                err = None
        offset = err.stat().st_size if err else 0

        def resolve(p: str | None) -> Path:
            if not p:
                return datadir_p
            return Path(p) if os.path.isabs(p) else (datadir_p / p)

        self.probe_result = ServerProbe(
            pid=pid, pid_file=pid_path, datadir=datadir_p, error_log=err, error_log_offset=offset,
            version=version, flavor="mariadb" if "mariadb" in version.lower() else "mysql",
            log_bin=bool(int(log_bin)), log_bin_basename=Path(basename) if basename else None,
            log_bin_index=Path(index) if index else None, innodb_fast_shutdown=int(fast),
            innodb_dirs={"innodb_data_home_dir": resolve(data_home),
                         "innodb_log_group_home_dir": resolve(log_home),
                         "innodb_undo_directory": resolve(undo_dir)})
        return self.probe_result

    def accepting(self, timeout: float = 2.0) -> bool:
        """True when the server answers a fresh connection."""
        try:
            conn = connect(self.spec, connect_timeout=max(1, int(timeout)), read_timeout=int(timeout) + 1)
        except BackupkitError:
            return False
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
            return True
        except Exception:
            return False
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def current_pid(self) -> int | None:
        path = self.pid_file or (self.probe_result.pid_file if self.probe_result else None)
        return read_pid(path) if path else None

    # -- stopping ---------------------------------------------------------------------
    def prepare_clean_shutdown(self) -> int | None:
        """Make InnoDB shut down cleanly (innodb_fast_shutdown 2 would leave crash recovery);
        returns the value to put back if the stop is abandoned, or None if nothing changed."""
        probe = self.probe_result
        if probe is None or probe.innodb_fast_shutdown != 2:
            return None
        self._sql("SET GLOBAL innodb_fast_shutdown = 1")
        return 2

    def undo_prepare(self, old: int | None) -> None:
        if old is not None:
            with contextlib.suppress(Exception):
                self._sql(f"SET GLOBAL innodb_fast_shutdown = {int(old)}")

    def _sql(self, statement: str) -> None:
        conn = connect(self.spec)
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
        finally:
            conn.close()

    def request_stop(self) -> CommandResult | None:
        """Ask the server to stop: the stop command, or SQL SHUTDOWN. Does not wait."""
        if self.stop_command:
            result = run_command(self.stop_command, timeout=self.stop_timeout)
            if result.returncode is None:
                raise ServerControlError(f"stop command did not finish in {self.stop_timeout:.0f} s: "
                                         f"{result.describe()}")
            if result.returncode != 0:
                raise ServerControlError(f"stop command failed: {result.describe()}")
            return result
        conn = connect(self.spec)
        try:
            with conn.cursor() as cur:
                cur.execute("SHUTDOWN")
        except Exception as exc:
            # The server may drop the connection while it goes down; the wait decides.
            if not _dropped(exc):
                raise ServerControlError(f"SHUTDOWN was refused: {exc}",
                                         "the user needs the SHUTDOWN privilege") from None
        finally:
            with contextlib.suppress(Exception):
                conn.close()
        return None

    def wait_exit(self, pid: int, timeout: float) -> bool:
        """Wait until process pid is gone; False on timeout."""
        deadline = time.monotonic() + timeout
        while pid_alive(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL)
        return True

    def check_shutdown(self, pid: int) -> ShutdownCheck:
        """Evidence of a clean shutdown, from the pid file and the error log."""
        probe = self.probe_result
        exited = not pid_alive(pid)
        pid_removed = None
        if probe is not None:
            left = read_pid(probe.pid_file)
            pid_removed = left != pid
        log_ok = None
        if probe is not None and probe.error_log is not None:
            text = read_from(probe.error_log, probe.error_log_offset)
            if text is not None:
                log_ok = "Shutdown complete" in text
        return ShutdownCheck(exited, pid_removed, log_ok)

    # -- starting ----------------------------------------------------------------------
    def start(self) -> StartReport:
        """Run the start command and wait until the server accepts connections.

        Raises ServerControlError with the command, its status and output, and the error
        log's last lines when the command fails or the server does not come up in time."""
        if not self.start_command:
            raise ServerControlError("no start command is configured, so the server cannot be started",
                                     "give --start-command or [source] start_command")
        err = self._error_log()
        log_offset = err.stat().st_size if err is not None and err.is_file() else 0
        requested, requested_mono = time.time(), time.monotonic()
        proc, out_file = spawn_command(self.start_command)
        deadline = time.monotonic() + self.start_timeout
        result: CommandResult | None = None
        try:
            while True:
                if result is None and proc.poll() is not None:
                    result = CommandResult(self.start_command, proc.returncode, read_output(out_file),
                                           time.time() - requested)
                    if proc.returncode != 0 and not self.accepting(1.0):
                        raise self._start_failed(f"start command failed: {result.describe()}", log_offset)
                if self.accepting(1.0):
                    accepting, accepting_mono = time.time(), time.monotonic()
                    break
                aborted = self._start_aborted(log_offset)
                if aborted:
                    raise self._start_failed(f"the server aborted at start: {aborted}", log_offset)
                if time.monotonic() >= deadline:
                    res = result or CommandResult(self.start_command, None, read_output(out_file),
                                                  time.time() - requested)
                    raise self._start_failed(
                        f"the server does not accept connections {self.start_timeout:.0f} s after "
                        f"the start command; {res.describe()}", log_offset)
                time.sleep(POLL)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(out_file)
        if result is None:
            result = CommandResult(self.start_command, proc.poll(), "", time.time() - requested)
        return StartReport(requested, accepting, result, requested_mono, accepting_mono)

    def _error_log(self) -> Path | None:
        if self.error_log is not None:
            return self.error_log
        return self.probe_result.error_log if self.probe_result is not None else None

    def _start_aborted(self, offset: int) -> str | None:
        err = self._error_log()
        if err is None:
            return None
        text = read_from(err, offset) or ""
        if "Aborting" in text:
            errors = [ln for ln in text.splitlines() if "[ERROR]" in ln]
            return one_line("\n".join(errors[-3:])) or "see the error log"
        return None

    def _start_failed(self, message: str, log_offset: int) -> ServerControlError:
        err = self._error_log()
        hint = "START THE SERVER BY HAND"
        if err is not None:
            text = read_from(err, log_offset) or ""
            lines = [ln for ln in text.splitlines() if ln.strip()][-3:]
            if lines:
                message += f"; error log {err}: " + one_line("\n".join(lines))
        return ServerControlError(f"THE SERVER IS DOWN: {message}", hint)

    def ensure_running(self, stop_sent: bool, pid: int | None,
                       on_start: Callable[[], None] | None = None) -> StartReport | None:
        """Bring the server back after a stop was (maybe) sent; None when it never went down.

        If a stop was sent, a server that still answers is not trusted until it has answered
        for a whole second (it may be on its way down); otherwise wait for the process to exit,
        then start it."""
        if stop_sent and pid is not None:
            deadline = time.monotonic() + max(self.stop_timeout, 5 * STEADY)
            serving_since: float | None = None
            while pid_alive(pid):
                if self.accepting(1.0):
                    serving_since = serving_since or time.monotonic()
                    if time.monotonic() - serving_since >= STEADY:
                        return None  # the stop never took effect
                else:
                    serving_since = None
                if time.monotonic() >= deadline:
                    raise ServerControlError(
                        f"the server (pid {pid}) neither stopped nor accepts connections after "
                        f"{self.stop_timeout:.0f} s", "look at it by hand")
                time.sleep(POLL)
        elif self.accepting():
            return None
        if on_start is not None:
            on_start()
        return self.start()


def _dropped(exc: Exception) -> bool:
    """True for the errors a client sees when the server closes the connection on SHUTDOWN."""
    if isinstance(exc, pymysql.err.OperationalError | pymysql.err.InterfaceError):
        code = exc.args[0] if exc.args else 0
        return code in (0, 2006, 2013, 1053) or not isinstance(code, int)
    return isinstance(exc, ConnectionError | OSError)


def start_restored_server(start_command: str, conn: ConnSpec | None, *, pid_file=None,
                          start_timeout: float = 300.0, error_log=None) -> tuple[float, bool]:
    """Start a server on a datadir a restore just wrote: with conn, wait until it accepts
    connections (verified); without one, only run the command. Returns (seconds, verified)."""
    if conn is not None:
        ctl = ServiceControl(conn, start_command=start_command, pid_file=pid_file,
                             start_timeout=start_timeout, error_log=error_log)
        return ctl.start().seconds, True
    res = run_command(start_command, timeout=start_timeout)
    if res.returncode != 0:
        raise BackupkitError(f"start command failed: {res.describe()}")
    return res.seconds, False

