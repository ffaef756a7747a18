"""A throw-away private mariadbd: its own datadir, port, socket and binlog. For tests and the demo."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from backupkit.errors import BackupkitError
from backupkit.mysql.connection import ConnSpec, connect
from backupkit.mysql.process import pid_alive

MARIADBD_CANDIDATES = ("/usr/sbin/mariadbd", "/usr/sbin/mysqld", "/usr/libexec/mariadbd")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_mariadbd() -> str:
    for cand in (os.environ.get("BACKUPKIT_MARIADBD"), *MARIADBD_CANDIDATES, shutil.which("mariadbd")):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise BackupkitError("mariadbd not found", "install the mariadb-server package")


def _pid_alive(pid: int) -> bool:
    """pid_alive, reaping the process first if it is an exited child of ours."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return pid_alive(pid)


class Sandbox:
    """A private MariaDB server that can be started and stopped repeatedly on one datadir."""

    def __init__(self, base: str | Path | None = None, port: int | None = None, server_id: int = 1,
                 extra_args: list[str] | None = None, name: str = "sandbox") -> None:
        self.owns_base = base is None
        self.base = Path(base) if base else Path(tempfile.mkdtemp(prefix=f"backupkit-{name}-"))
        self.port = port or free_port()
        self._auto_port = port is None  # may move to another port if this one is taken at start
        self._started_once = False
        self.server_id = server_id
        self.extra_args = list(extra_args or [])
        self.proc: subprocess.Popen | None = None
        self.datadir = self.base / "data"
        self.socket = self.base / "mysqld.sock"
        self.pid_file = self.base / "mysqld.pid"
        self.err_log = self.base / "mysqld.err"

    # -- identity --------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"mysql://root@127.0.0.1:{self.port}"

    @property
    def spec(self) -> ConnSpec:
        return ConnSpec(host="127.0.0.1", port=self.port, user="root")

    def connect(self, **kw):
        return connect(self.spec, **kw)

    def command(self) -> list[str]:
        """The mariadbd command line (as FACTS.md measured it)."""
        args = [find_mariadbd(), "--no-defaults"]
        if os.geteuid() == 0:
            args.append("--user=root")
        args += [
            f"--datadir={self.datadir}", f"--tmpdir={self.base / 'tmp'}", f"--port={self.port}",
            "--bind-address=127.0.0.1", f"--socket={self.socket}", f"--pid-file={self.pid_file}",
            f"--log-error={self.err_log}", f"--server-id={self.server_id}", "--log-bin=binlog",
            "--binlog-format=ROW", "--binlog-row-image=FULL", "--local-infile=1",
            "--character-set-server=utf8mb4", "--innodb-buffer-pool-size=64M",
            "--innodb-log-file-size=48M", "--skip-name-resolve", "--max-connections=200",
            "--performance-schema=OFF", "--max-allowed-packet=256M",
        ]
        return args + self.extra_args

    def start_command(self) -> str:
        """A shell command that starts this server detached (for cold backups' start_command)."""
        return " ".join(shlex.quote(a) for a in self.command()) + " >/dev/null 2>&1 &"

    # -- lifecycle -------------------------------------------------------------
    def install(self) -> None:
        """Initialise the datadir (once)."""
        if (self.datadir / "mysql").is_dir():
            return
        self.datadir.mkdir(parents=True, exist_ok=True)
        (self.base / "tmp").mkdir(exist_ok=True)
        # A private tmpdir: concurrent installs sharing /tmp collide on temporary tables
        # ("Unknown table 'mysql.tmp_user_sys'", then Aborting).
        cmd = ["mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}",
               f"--tmpdir={self.base / 'tmp'}", "--skip-test-db", "--auth-root-authentication-method=normal"]
        if os.geteuid() == 0:
            cmd.insert(2, "--user=root")
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise BackupkitError(f"mariadb-install-db failed: {r.stderr.strip().splitlines()[-1:]}")

    def start(self, timeout: float = 60.0) -> Sandbox:
        """Start mariadbd and wait until it accepts connections."""
        if self.running():
            return self
        self.install()
        (self.base / "tmp").mkdir(exist_ok=True)
        for attempt in range(4):
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
            try:
                self.wait_ready(timeout)
                break
            except BackupkitError:
                # free_port() races with other processes picking ports: a port chosen here may be
                # taken before mariadbd binds it. Move to another one (first start only).
                if not (self._auto_port and not self._started_once and attempt < 3
                        and "Address already in use" in self.tail_log()):
                    raise
                self.port = free_port()
        self._started_once = True
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise BackupkitError(f"sandbox mariadbd exited at start: {self.tail_log()}")
            try:
                self.connect().close()
                return
            except Exception as exc:  # not yet listening
                last = exc
                time.sleep(0.05)
        raise BackupkitError(f"sandbox mariadbd did not become ready in {timeout:.0f}s: {last}")

    def pid(self) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            return self.proc.pid
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        pid = self.pid()
        return pid is not None and _pid_alive(pid)

    def stop(self, timeout: float = 60.0) -> None:
        """Stop by PID (SIGTERM, then SIGKILL after timeout) and wait for the exit."""
        pid = self.pid()
        if pid is None or not _pid_alive(pid):
            self.proc = None
            return
        os.kill(pid, signal.SIGTERM)
        self._wait_exit(pid, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, for tests."""
        pid = self.pid()
        if pid is not None and _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            self._wait_exit(pid, 10)

    def _wait_exit(self, pid: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.pid == pid:
                try:
                    self.proc.wait(timeout=0.05)
                    break
                except subprocess.TimeoutExpired:
                    continue
            if not _pid_alive(pid):
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            if self.proc is not None:
                self.proc.wait(timeout=10)
        self.proc = None

    def destroy(self) -> None:
        """Stop and remove everything this sandbox created."""
        self.stop()
        if self.owns_base:
            shutil.rmtree(self.base, ignore_errors=True)

    def tail_log(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.err_log.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return "(no error log)"

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.destroy()

    def sql(self, statement: str, args=None, database: str | None = None) -> list[tuple]:
        """Run one statement, return its rows (a convenience for tests and the demo)."""
        conn = self.connect(database=database)
        try:
            with conn.cursor() as cur:
                cur.execute(statement, args)
                return list(cur.fetchall())
        finally:
            conn.close()
