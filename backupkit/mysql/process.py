"""Processes and shell commands on this host: is a pid alive, which server runs on a datadir, run
a stop or start command to its end with its output kept."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

#: Bytes of command output and error log kept in messages.
TAIL = 2000


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def process_start(pid: int) -> int | None:
    """The start time of a process (clock ticks since boot), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def read_pid(pid_file: Path) -> int | None:
    try:
        text = pid_file.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def process_datadir(pid: int) -> str | None:
    """The --datadir of a running mariadbd/mysqld, from its command line."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    for a in args:
        if a.startswith(b"--datadir="):
            return a.split(b"=", 1)[1].decode(errors="replace")
    return None


def servers_using(datadir: Path) -> list[int]:
    """PIDs of running mariadbd/mysqld processes whose --datadir is datadir."""
    want = os.path.realpath(datadir)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            exe = os.path.basename(os.readlink(f"/proc/{entry}/exe"))
        except OSError:
            continue
        if exe not in ("mariadbd", "mysqld"):
            continue
        dd = process_datadir(int(entry))
        if dd and os.path.realpath(dd.rstrip("/")) == want and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def tail(text: str, n: int = TAIL) -> str:
    text = text.strip()
    return text if len(text) <= n else "..." + text[-n:]


def one_line(text: str) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines() if line.strip())


@dataclass
class CommandResult:
    """What a stop or start command did."""

    command: str
    returncode: int | None  # None: still running (a start command that stays in the foreground)
    output: str
    seconds: float

    def describe(self) -> str:
        status = "is still running" if self.returncode is None else f"exited {self.returncode}"
        out = one_line(tail(self.output, 500))
        return f"`{self.command}` {status}" + (f", output: {out}" if out else ", no output")


def read_from(path: Path, offset: int) -> str | None:
    """The text appended to a log since offset (all of it if the log was rotated)."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            fh.seek(offset if size >= offset else 0)
            return fh.read(4 << 20).decode(errors="replace")
    except OSError:
        return None


def spawn_command(command: str) -> tuple[subprocess.Popen, str]:
    """Start a shell command in its own session (Ctrl-C on our terminal does not reach it),
    its output going to a file so that a daemon keeping it open cannot block us."""
    fd, out_path = tempfile.mkstemp(prefix="backupkit-cmd-", suffix=".out")
    try:
        proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL, stdout=fd,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    finally:
        os.close(fd)
    return proc, out_path


def read_output(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return ""
    return tail(data.decode(errors="replace"))


def run_command(command: str, timeout: float) -> CommandResult:
    """Run a shell command to its end (or timeout, then its session is killed)."""
    started = time.time()
    proc, out_path = spawn_command(command)
    try:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return CommandResult(command, None, read_output(out_path), time.time() - started)
        return CommandResult(command, proc.returncode, read_output(out_path), time.time() - started)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(out_path)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a child started in its own session, with everything it started, and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)

