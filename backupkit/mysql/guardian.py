"""The restart guardian: a separate process that starts the server again if backupkit dies while
the server is down (SIGKILL, an interpreter crash), where try/finally cannot help."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from backupkit.errors import BackupkitError, ServerControlError
from backupkit.mysql.connection import ConnSpec
from backupkit.mysql.control import ServiceControl

GUARD_PASSWORD_ENV = "BACKUPKIT_GUARD_PASSWORD"


class RestartGuardian:
    """A separate watchdog process, armed while the server may be down.

    try/finally and signal handlers cover every exit of this process except SIGKILL and a
    crash of the interpreter; the guardian covers those: when its pipe from us closes before
    we said "done", it waits for the server process to exit and starts it again."""

    def __init__(self, control: ServiceControl, log_path: Path | None = None) -> None:
        self.control = control
        self.log_path = log_path or Path(tempfile.gettempdir()) / "backupkit-guardian.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> None:
        c = self.control
        env = dict(os.environ)
        if c.spec.password:
            env[GUARD_PASSWORD_ENV] = c.spec.password
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backupkit.mysql.guardian", "guard"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=env, start_new_session=True, close_fds=True)
        config = {"host": c.spec.host, "port": c.spec.port, "user": c.spec.user,
                  "socket": c.spec.socket, "tls": c.spec.tls, "tls_ca": c.spec.tls_ca,
                  "start_command": c.start_command,
                  "stop_timeout": c.stop_timeout, "start_timeout": c.start_timeout,
                  "pid_file": str(c.pid_file or (c.probe_result.pid_file if c.probe_result else "")),
                  "log": str(self.log_path)}
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps(config) + "\n").encode())
        self.proc.stdin.flush()

        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready or self.proc.stdout.readline().strip() != b"ready":
            self.close(kill=True)
            raise ServerControlError("the restart guardian did not start", "run with --debug")

    def arm(self, pid: int) -> None:
        self._send(f"arm {pid}")

    def done(self) -> None:
        """The server is running again (or was never stopped): the guardian exits quietly."""
        self._send("done")
        self.close()

    def _send(self, line: str) -> None:
        if self.proc is not None and self.proc.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdin.write((line + "\n").encode())
                self.proc.stdin.flush()

    def close(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin:
                self.proc.stdin.close()
        if kill:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        if self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None


def _guard_main() -> int:
    """The guardian process: read commands on stdin; on EOF without 'done', restart the server."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    cfg = json.loads(sys.stdin.readline())
    spec = ConnSpec(host=cfg["host"], port=cfg["port"], user=cfg["user"], socket=cfg["socket"],
                    tls=cfg.get("tls", "auto"), tls_ca=cfg.get("tls_ca"),
                    password=os.environ.get(GUARD_PASSWORD_ENV))
    ctl = ServiceControl(spec, start_command=cfg["start_command"], pid_file=cfg["pid_file"] or None,
                         stop_timeout=cfg["stop_timeout"], start_timeout=cfg["start_timeout"])
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    pid: int | None = None
    armed = False
    for line in sys.stdin:
        word, _, arg = line.strip().partition(" ")
        if word == "arm":
            armed, pid = True, int(arg)
        elif word == "done":
            return 0
    if not armed:
        return 0

    def log(msg: str) -> None:
        with open(cfg["log"], "a") as fh:
            fh.write(time.strftime("%Y-%m-%dT%H:%M:%S ") + msg + "\n")

    log(f"backupkit exited while the server (pid {pid}) may be down; making sure it runs")
    try:
        report = ctl.ensure_running(stop_sent=True, pid=pid)
        log("the server was running" if report is None else
            f"restarted the server in {report.seconds:.1f} s")
        return 0
    except BackupkitError as exc:
        log(f"FAILED: {exc.one_line()}")
        return 1


if __name__ == "__main__":
    if sys.argv[1:] == ["guard"]:
        sys.exit(_guard_main())
    sys.exit(2)
