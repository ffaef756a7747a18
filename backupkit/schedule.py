"""The scheduler daemon (APScheduler 3.x) and the crontab emitter; both run the same commands.

Each scheduled strategy runs as its own process, `backupkit --policy FILE schedule exec NAME`'s
work, so that the daemon and system cron behave the same way:
- a run of a strategy holds a lock file (`flock`), so two runs of one strategy never overlap,
  whether they come from the daemon, from cron or from a person;
- cold and snapshot share a "source" lock (a snapshot cannot read a stopped server); verify,
  prune and sync share a "repository" lock (verify must not read, nor sync copy, what prune is
  deleting): the second one waits for the first;
- every run ends with one log line (start, end, result, sizes, duration) and updates the status
  file that `schedule status` shows.
The binlog shipper is a long-running child that the daemon restarts with exponential backoff.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from backupkit.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler

    from backupkit.config import Policy

log = logging.getLogger("backupkit.schedule")

JOB_STRATEGIES = ("cold", "snapshot", "verify", "prune", "sync")
# sync (several storage targets) shares the repository lock: it must not copy what prune deletes.
GROUPS = {"cold": "source", "snapshot": "source", "verify": "repository", "prune": "repository",
          "sync": "repository"}
CLI_ARGS = {"cold": ["cold"], "snapshot": ["snapshot"], "verify": ["verify", "--all"],
            "prune": ["prune", "--force"], "binlog": ["binlog", "ship"], "sync": ["repo", "sync"]}
MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
          "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
          "@hourly": "0 * * * *"}
_DOW_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
GROUP_POLL = 2.0  # seconds between tries of a busy group lock


# -- time -------------------------------------------------------------------------
class Clock(Protocol):
    """Where the daemon reads time and sleeps; tests inject a simulated one."""

    def time(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def iso(ts: float | None) -> str | None:
    """An epoch time as ISO 8601 UTC to the second."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def policy_timezone(policy: Policy) -> tzinfo:
    """The zone of the policy's cron expressions: schedule.timezone, else the local zone (as cron)."""
    from zoneinfo import ZoneInfo

    if policy.schedule.timezone:
        return ZoneInfo(policy.schedule.timezone)
    try:
        import tzlocal

        return tzlocal.get_localzone()
    except Exception:  # pragma: no cover - no tzlocal or no zone configured
        return UTC


# -- cron expressions ---------------------------------------------------------------
def _expand_dow(field_expr: str) -> str:
    """A cron day-of-week field (0 or 7 = Sunday) as APScheduler names (0 = Monday there)."""
    days: set[int] = set()
    for part in field_expr.lower().split(","):
        rng, _, step_s = part.partition("/")
        step = int(step_s) if step_s else 1
        if step < 1:
            raise ValueError(f"bad step in day-of-week {part!r}")
        if rng == "*":
            lo, hi = 0, 6
        else:
            a, _, b = rng.partition("-")
            lo = _dow_number(a)
            hi = _dow_number(b) if b else (6 if step_s else lo)
            if hi == 0 and b and lo > 0:  # "5-7" / "fri-sun": 7 means Sunday at the end
                hi = 7
            if hi < lo:
                raise ValueError(f"day-of-week range {rng!r} runs backwards")
        days.update(d % 7 for d in range(lo, hi + 1, step))
    if len(days) == 7:
        return "*"
    return ",".join(_DOW_NAMES[d] for d in sorted(days))


def _dow_number(s: str) -> int:
    s = s.strip().lower()
    if s[:3] in _DOW_NAMES and not s.isdigit():
        return _DOW_NAMES.index(s[:3])
    n = int(s)
    if not 0 <= n <= 7:
        raise ValueError(f"day-of-week {n} is out of range 0-7")
    return 7 if n == 7 else n


def cron_trigger(expr: str, tz: tzinfo | str | None = None):
    """An APScheduler trigger that fires exactly when system cron would run `expr`.

    Two differences are translated: APScheduler numbers weekdays from Monday (cron from Sunday),
    and when both day-of-month and day-of-week are restricted cron fires on either (APScheduler
    on both).
    """
    from apscheduler.triggers.combining import OrTrigger
    from apscheduler.triggers.cron import CronTrigger

    text = MACROS.get(expr.strip().lower(), expr.strip())
    fields = text.split()
    if len(fields) != 5:
        raise ValueError(f"{len(fields)} fields instead of 5")
    minute, hour, dom, month, dow = fields
    dow_ap = _expand_dow(dow)
    if not dom.startswith("*") and not dow.startswith("*"):  # as Vixie cron decides
        return OrTrigger([
            CronTrigger(minute=minute, hour=hour, day=dom, month=month, timezone=tz),
            CronTrigger(minute=minute, hour=hour, month=month, day_of_week=dow_ap, timezone=tz),
        ])
    return CronTrigger(minute=minute, hour=hour, day=dom, month=month, day_of_week=dow_ap,
                       timezone=tz)


def next_runs(expr: str, tz: tzinfo, after: datetime, n: int = 3) -> list[datetime]:
    """The next n times a cron expression fires, strictly after a moment."""
    trig = cron_trigger(expr, tz)
    out: list[datetime] = []
    prev = None
    now = after + timedelta(microseconds=1)
    while len(out) < n:
        nxt = trig.get_next_fire_time(prev, now)
        if nxt is None:
            break
        out.append(nxt)
        prev, now = nxt, nxt + timedelta(seconds=1)
    return out


def worst_interval(expr: str, tz: tzinfo, after: datetime, horizon_days: int = 400,
                   max_fires: int = 3000) -> float | None:
    """The longest time between two consecutive runs over the coming horizon (seconds)."""
    trig = cron_trigger(expr, tz)
    end = after + timedelta(days=horizon_days)
    prev_fire = None
    worst = None
    now = after
    for _ in range(max_fires):
        nxt = trig.get_next_fire_time(prev_fire, now)
        if nxt is None or nxt > end:
            break
        if prev_fire is not None:
            gap = (nxt - prev_fire).total_seconds()
            worst = gap if worst is None else max(worst, gap)
        prev_fire, now = nxt, nxt + timedelta(seconds=1)
    return worst


def scheduled_strategies(policy: Policy) -> dict[str, str]:
    """Strategy -> cron expression (or "continuous" for the binlog shipper)."""
    out: dict[str, str] = {}
    for name in ("cold", "snapshot", "binlog", "verify", "prune", "sync"):
        expr = getattr(policy.strategies, name)
        if expr and expr != "off":
            out[name] = expr
    return out


# -- local paths and locks -------------------------------------------------------------
def _state_dir() -> Path:
    env = os.environ.get("BACKUPKIT_STATE_DIR")
    if env:
        return Path(env).expanduser()
    if os.geteuid() == 0:
        return Path("/var/lib/backupkit")
    return Path(os.environ.get("XDG_STATE_HOME", "~/.local/state")).expanduser() / "backupkit"


@dataclass
class Paths:
    """Where the status file, locks and logs of a policy live on this machine."""

    status_file: Path
    lock_dir: Path
    log_dir: Path

    @classmethod
    def of(cls, policy: Policy) -> Paths:
        s = policy.schedule
        state = _state_dir()
        root = os.geteuid() == 0 and not os.environ.get("BACKUPKIT_STATE_DIR")
        return cls(
            status_file=Path(s.status_file).expanduser() if s.status_file
            else state / f"{policy.name}.status.json",
            lock_dir=Path(s.lock_dir).expanduser() if s.lock_dir
            else (Path("/run/lock/backupkit") if root else state / "locks"),
            log_dir=Path(s.log_dir).expanduser() if s.log_dir
            else (Path("/var/log/backupkit") if root else state / "log"),
        )

    def lock_file(self, policy_name: str, what: str) -> Path:
        return self.lock_dir / f"{policy_name}-{what}.lock"

    def log_file(self, policy_name: str, what: str) -> Path:
        return self.log_dir / f"{policy_name}-{what}.log"


class FileLock:
    """An advisory flock(2) lock on a file: the same lock `flock(1)` takes in the cron lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock without waiting; False when another process (or run) holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None


# -- status file -------------------------------------------------------------------------
class StatusFile:
    """The JSON file `schedule status` reads: last result and next run of each job, the shipper.

    Several writers (the daemon's threads, cron runs) update it under a lock, and each write is a
    temp file renamed over the old one, so a reader never sees half a file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def update(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Apply change() to the current content and write it back atomically."""
        with self._locked():
            data = self.read()
            change(data)
            data["updated_at"] = iso(time.time())
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, self.path)
            return data


# -- one run ------------------------------------------------------------------------------
@dataclass
class RunRecord:
    """What one run of a strategy did."""

    strategy: str
    scheduled_at: float | None
    start: float
    end: float = 0.0
    result: str = "running"  # ok | failed | skipped
    exit_code: int | None = None
    error: str | None = None
    backup_id: str | None = None
    stored_bytes: int | None = None
    raw_bytes: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return max(0.0, self.end - self.start)

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "scheduled_at": iso(self.scheduled_at),
                "start": iso(self.start), "end": iso(self.end), "result": self.result,
                "duration_s": round(self.duration, 3), "exit_code": self.exit_code,
                "error": self.error, "backup_id": self.backup_id,
                "stored_bytes": self.stored_bytes, "raw_bytes": self.raw_bytes,
                **({"details": self.details} if self.details else {})}

    def log_line(self, policy_name: str) -> str:
        """The one line a run leaves in the log."""
        from backupkit.cli.console import human_bytes, human_seconds

        parts = [f"policy={policy_name}", f"strategy={self.strategy}", f"result={self.result}",
                 f"start={iso(self.start)}", f"end={iso(self.end)}",
                 f"duration={human_seconds(self.duration)}"]
        if self.backup_id:
            parts.append(f"id={self.backup_id}")
        if self.stored_bytes is not None:
            parts.append(f"stored={human_bytes(self.stored_bytes)}")
        if self.raw_bytes is not None:
            parts.append(f"raw={human_bytes(self.raw_bytes)}")
        for k, v in sorted(self.details.items()):
            if isinstance(v, (int, float, str)) and k not in ("id",):
                parts.append(f"{k}={v}")
        if self.exit_code not in (None, 0):
            parts.append(f"exit={self.exit_code}")
        if self.error:
            parts.append(f"error={json.dumps(self.error)}")
        return " ".join(parts)


Runner = Callable[[str], dict[str, Any]]


class CliRunner:
    """Runs a strategy as `python -m backupkit --policy FILE --json <command>` and reads its result.

    A child process per run: a crash or a leak stays in it, a cold backup's signal handling
    works as on the command line, and a run can be cut safely with SIGTERM (a backup's manifest
    is written last, so a cut run leaves nothing visible).
    """

    def __init__(self, policy_file: str, python: str | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        self.policy_file = str(Path(policy_file).absolute())
        self.python = python or sys.executable
        self.extra_env = extra_env or {}
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._cut_at: float | None = None

    def command(self, strategy: str) -> list[str]:
        return [self.python, "-m", "backupkit", "--policy", self.policy_file, "--json",
                *CLI_ARGS[strategy]]

    def __call__(self, strategy: str) -> dict[str, Any]:
        env = {**os.environ, **self.extra_env}
        proc = subprocess.Popen(self.command(strategy), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                env=env, start_new_session=True)
        with self._lock:
            self._procs.add(proc)
        try:
            while True:
                try:
                    out, err = proc.communicate(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    # After a cut, stray grandchildren may hold the pipes open: stop reading
                    # once the child itself has exited.
                    if proc.poll() is not None and self._cut_at is not None and \
                            time.monotonic() - self._cut_at > 10:
                        out, err = "", f"error: cut by the daemon's stop (exit {proc.returncode})"
                        break
        finally:
            with self._lock:
                self._procs.discard(proc)
        return result_of(proc.returncode, out, err)

    def cut(self) -> None:
        """SIGTERM every running child: each stops safely (no manifest, service restarted)."""
        with self._lock:
            procs = list(self._procs)
        self._cut_at = time.monotonic()
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)

    def running(self) -> int:
        with self._lock:
            return len(self._procs)


def result_of(returncode: int, stdout: str, stderr: str) -> dict[str, Any]:
    """A run's result from a CLI child's exit code, JSON output and error lines."""
    data: dict[str, Any] = {}
    text = stdout.strip()
    if text:
        try:
            data = json.loads(text)
        except ValueError:
            # Several documents or extra lines: take the last JSON object.
            idx = text.rfind("\n{")
            with contextlib.suppress(ValueError):
                data = json.loads(text[idx + 1:] if idx >= 0 else text)
    if not isinstance(data, dict):
        data = {}
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    res: dict[str, Any] = {"result": "ok" if returncode == 0 else "failed", "exit_code": returncode,
                           "output": data}
    if returncode != 0:
        res["error"] = (data.get("error") or (errors[-1][6:].strip() if errors else None)
                        or (lines[-1] if lines else f"exit code {returncode}"))
    return res


# -- the binlog shipper -------------------------------------------------------------------
class ShipperSupervisor:
    """Keeps the binlog shipper running: restarts it with exponential backoff when it exits.

    The delay doubles from backoff_min to backoff_max on each quick exit, and falls back to
    backoff_min once the shipper has run for stable_after seconds. stop() sends SIGTERM, on which
    the shipper flushes its complete transactions and exits.
    """

    def __init__(self, spawn: Callable[[], Any], clock: Clock, backoff_min: float = 1.0,
                 backoff_max: float = 300.0, stable_after: float = 60.0,
                 on_event: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.spawn = spawn
        self.clock = clock
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.stable_after = stable_after
        self.on_event = on_event or (lambda kind, info: None)
        self.proc: Any = None
        self.started_at: float | None = None
        self.next_start: float = 0.0
        self.backoff = backoff_min
        self.starts = 0
        self.restarts = 0
        self.last_exit: int | None = None
        self.last_exit_at: float | None = None
        self.stopped = False
        self.history: list[tuple[str, float, Any]] = []

    def tick(self) -> None:
        """Notice an exit, and start the shipper when its backoff delay has passed."""
        if self.stopped:
            return
        now = self.clock.time()
        if self.proc is not None:
            rc = self.proc.poll()
            if rc is None:
                return
            ran = now - (self.started_at or now)
            if ran >= self.stable_after:
                self.backoff = self.backoff_min
            delay = self.backoff
            self.backoff = min(self.backoff * 2, self.backoff_max)
            self.last_exit, self.last_exit_at = rc, now
            self.next_start = now + delay
            self.history.append(("exit", now, rc))
            self.on_event("exit", {"exit_code": rc, "ran_s": round(ran, 3), "restart_in_s": delay,
                                   "pid": getattr(self.proc, "pid", None)})
            self.proc = None
        if now >= self.next_start:
            try:
                self.proc = self.spawn()
            except OSError as exc:
                delay = self.backoff
                self.backoff = min(self.backoff * 2, self.backoff_max)
                self.next_start = now + delay
                self.on_event("spawn_failed", {"error": str(exc), "restart_in_s": delay})
                return
            self.started_at = now
            if self.starts:
                self.restarts += 1
            self.starts += 1
            self.history.append(("start", now, getattr(self.proc, "pid", None)))
            self.on_event("start", {"pid": getattr(self.proc, "pid", None), "restarts": self.restarts})

    def next_action(self) -> float | None:
        """When tick() has something to do without an exit happening first."""
        if self.stopped or self.proc is not None:
            return None
        return self.next_start

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM the shipper (it flushes), wait, SIGKILL after timeout; returns its exit code."""
        self.stopped = True
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return proc.poll() if proc is not None else None
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        self.last_exit, self.last_exit_at = rc, self.clock.time()
        self.history.append(("stopped", self.clock.time(), rc))
        self.on_event("stopped", {"exit_code": rc})
        return rc

    def status(self) -> dict[str, Any]:
        alive = self.proc is not None and self.proc.poll() is None
        return {"state": "stopped" if self.stopped else ("running" if alive else "waiting"),
                "pid": getattr(self.proc, "pid", None) if alive else None,
                "started_at": iso(self.started_at) if alive else None,
                "restarts": self.restarts, "last_exit": self.last_exit,
                "last_exit_at": iso(self.last_exit_at),
                "next_start_at": iso(self.next_start) if not alive and not self.stopped else None,
                "backoff_s": self.backoff}


def shipper_spawner(policy_file: str, python: str | None = None,
                    extra_env: dict[str, str] | None = None,
                    open_store: Callable[[], Any] | None = None) -> Callable[[], subprocess.Popen]:
    """Start `backupkit --policy FILE binlog ship` as a child; its output goes to our stderr.

    While the repository holds no snapshot yet, the shipper starts at the server's current
    position (--from-current) instead of waiting for one; afterwards it resumes where the
    repository's shipped range ends.
    """
    cmd = [python or sys.executable, "-m", "backupkit", "--policy", str(Path(policy_file).absolute()),
           *CLI_ARGS["binlog"]]

    def spawn() -> subprocess.Popen:
        args = list(cmd)
        if open_store is not None and not _has_snapshot(open_store):
            args.append("--from-current")
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(),
                                stderr=sys.stderr.fileno(), start_new_session=True,
                                env={**os.environ, **(extra_env or {})})

    return spawn


def _has_snapshot(open_store: Callable[[], Any]) -> bool:
    from backupkit.repo.catalog import Catalog

    try:
        return bool(Catalog(open_store()).backups(kind="snapshot"))
    except Exception:  # unreachable storage: let the shipper report it
        return True


# -- running one strategy (shared by the daemon and `schedule exec`) ----------------------------
class StrategyExecutor:
    """Runs one strategy under its locks, logs one line, and records the result in the status file."""

    def __init__(self, policy: Policy, runner: Runner, clock: Clock | None = None,
                 paths: Paths | None = None, emit: Callable[[str, RunRecord], None] | None = None,
                 stopping: threading.Event | None = None, describe: Callable[[dict], dict] | None = None
                 ) -> None:
        self.policy = policy
        self.runner = runner
        self.clock = clock or SystemClock()
        self.paths = paths or Paths.of(policy)
        self.status = StatusFile(self.paths.status_file)
        self.emit = emit or default_emit
        self.stopping = stopping or threading.Event()
        self.describe = describe

    def run(self, strategy: str, scheduled_at: float | None = None, locked: bool = False) -> RunRecord:
        """One run: take the strategy lock (skip if held), wait for the group lock, run, record."""
        rec = RunRecord(strategy, scheduled_at, self.clock.time())
        own = None if locked else FileLock(self.paths.lock_file(self.policy.name, strategy))
        if own is not None and not own.acquire():
            rec.result, rec.end = "skipped", self.clock.time()
            rec.error = "a run of this strategy is still going (its lock is held)"
            return self._finish(rec)
        group = FileLock(self.paths.lock_file(self.policy.name, GROUPS.get(strategy, strategy)))
        try:
            while not group.acquire():
                if self.stopping.is_set():
                    rec.result, rec.end = "skipped", self.clock.time()
                    rec.error = "stopping while waiting for the " + GROUPS[strategy] + " lock"
                    return self._finish(rec)
                self.clock.sleep(GROUP_POLL)
            try:
                self._mark_running(strategy, rec)
                res = self._call(strategy)
            finally:
                group.release()
        finally:
            if own is not None:
                own.release()
        rec.end = self.clock.time()
        rec.result = res.get("result", "failed")
        rec.exit_code = res.get("exit_code")
        rec.error = res.get("error")
        out = res.get("output") or {}
        if self.describe is not None:
            with contextlib.suppress(Exception):
                res.update(self.describe(res))
        rec.backup_id = res.get("backup_id") or _find_id(out)
        rec.stored_bytes = res.get("stored_bytes", _find_int(out, "stored_bytes"))
        rec.raw_bytes = res.get("raw_bytes", _find_int(out, "raw_bytes"))
        rec.details = {k: v for k, v in (res.get("details") or {}).items()}
        return self._finish(rec)

    def _call(self, strategy: str) -> dict[str, Any]:
        try:
            return self.runner(strategy)
        except Exception as exc:  # a bug in a runner must not kill the daemon
            return {"result": "failed", "error": f"{type(exc).__name__}: {exc}"}

    def _mark_running(self, strategy: str, rec: RunRecord) -> None:
        def change(d: dict[str, Any]) -> None:
            job = d.setdefault("jobs", {}).setdefault(strategy, {})
            job["running_since"] = iso(rec.start)

        with contextlib.suppress(OSError):
            self.status.update(change)

    def _finish(self, rec: RunRecord) -> RunRecord:
        def change(d: dict[str, Any]) -> None:
            d.setdefault("policy", self.policy.name)
            job = d.setdefault("jobs", {}).setdefault(rec.strategy, {})
            job.pop("running_since", None)
            job["last"] = rec.to_dict()
            job["runs"] = job.get("runs", 0) + 1
            key = {"ok": "ok", "failed": "failures", "skipped": "skipped"}.get(rec.result, "other")
            job[key] = job.get(key, 0) + 1
            if rec.result == "ok":
                job["last_ok"] = iso(rec.end)

        with contextlib.suppress(OSError):
            self.status.update(change)
        self.emit(self.policy.name, rec)
        return rec


def _find_id(out: dict[str, Any]) -> str | None:
    for k in ("backup_id", "id"):
        v = out.get(k)
        if isinstance(v, str):
            return v
    for k in ("backup", "manifest"):
        v = out.get(k)
        if isinstance(v, dict) and isinstance(v.get("id"), str):
            return v["id"]
    return None


def _find_int(out: dict[str, Any], key: str) -> int | None:
    v = out.get(key)
    if isinstance(v, int):
        return v
    for sub in ("backup", "manifest", "stats"):
        s = out.get(sub)
        if isinstance(s, dict) and isinstance(s.get(key), int):
            return s[key]
    return None


def cold_downtime(m) -> float | None:
    """The measured stop-to-accepting time of a cold backup's manifest."""
    d = m.details.get("downtime") or {}
    v = d.get("total_seconds", d.get("total_s"))
    return float(v) if isinstance(v, (int, float)) else None


def default_emit(policy_name: str, rec: RunRecord) -> None:
    """Write a run's log line to stderr (one line, flushed)."""
    sys.stderr.write(f"{iso(rec.end)} backupkit {rec.log_line(policy_name)}\n")
    sys.stderr.flush()


def catalog_describer(open_store: Callable[[], Any]) -> Callable[[dict], dict]:
    """Sizes of a run's backup, read from its manifest in the repository."""
    cache: dict[str, Any] = {}

    def describe(res: dict) -> dict:
        out = res.get("output") or {}
        bid = _find_id(out)
        extra: dict[str, Any] = {}
        if bid:
            from backupkit.repo.catalog import Catalog

            if "store" not in cache:
                cache["store"] = open_store()
            m = Catalog(cache["store"]).backup(bid)
            extra["backup_id"] = bid
            extra["stored_bytes"] = m.stored_bytes
            extra["raw_bytes"] = sum(o.raw_size for o in m.objects)
            details = dict(res.get("details") or {})
            downtime = cold_downtime(m) if m.kind == "cold" else None
            if downtime is not None:
                details["downtime_s"] = downtime
            extra["details"] = details
        else:
            details = dict(res.get("details") or {})
            for k in ("removed_backups", "removed_segments", "freed_bytes", "objects", "bytes",
                      "problems"):
                v = out.get(k)
                if isinstance(v, (int, float)):
                    details[k] = v
                elif isinstance(v, list):
                    details[k] = len(v)
            extra["details"] = details
        return extra

    return describe


# -- the daemon ------------------------------------------------------------------------------
class Daemon:
    """Runs a policy: cron-scheduled strategies on APScheduler, and the supervised binlog shipper.

    Jobs use max_instances=1 (runs of a strategy never overlap inside the daemon; the lock file
    extends that to cron and manual runs), coalesce=True (runs missed while the daemon was
    busy or down collapse into one) and misfire_grace_time (a run later than that is skipped
    and logged, not started hours late).
    """

    def __init__(self, policy: Policy, runner: Runner, *, clock: Clock | None = None,
                 tz: tzinfo | None = None, paths: Paths | None = None,
                 shipper: ShipperSupervisor | None = None,
                 emit: Callable[[str, RunRecord], None] | None = None,
                 describe: Callable[[dict], dict] | None = None,
                 event_log: Callable[[str], None] | None = None) -> None:
        self.policy = policy
        self.clock = clock or SystemClock()
        self.tz = tz or policy_timezone(policy)
        self.paths = paths or Paths.of(policy)
        self.stopping = threading.Event()
        self.executor = StrategyExecutor(policy, runner, self.clock, self.paths, emit,
                                         self.stopping, describe)
        self.status = self.executor.status
        self.shipper = shipper
        self.scheduler: BaseScheduler | None = None
        self.event_log = event_log or (lambda line: (sys.stderr.write(line + "\n"), sys.stderr.flush()))
        self.binlog_lock: FileLock | None = None
        self._dirty = threading.Event()

    # -- configuration -------------------------------------------------------------------
    def schedules(self) -> dict[str, str]:
        return {k: v for k, v in scheduled_strategies(self.policy).items() if k in JOB_STRATEGIES}

    def configure(self, scheduler: BaseScheduler) -> None:
        """Add one job per cron-scheduled strategy to an (unstarted) APScheduler scheduler."""
        self.scheduler = scheduler
        for name, expr in self.schedules().items():
            scheduler.add_job(self._job, cron_trigger(expr, self.tz), args=[name], id=name,
                              name=name, max_instances=1, coalesce=True,
                              misfire_grace_time=self.policy.schedule.misfire_grace_time,
                              replace_existing=True)
        from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED

        scheduler.add_listener(self._on_skip, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)

    def _job(self, name: str) -> None:
        if self.stopping.is_set():
            return
        self.executor.run(name)
        # The next run time is written by the main thread (tick): a job thread must not call the
        # scheduler, whose shutdown holds its job-store lock while it waits for running jobs.
        self._dirty.set()

    def _on_skip(self, event) -> None:
        from apscheduler.events import EVENT_JOB_MISSED

        when = getattr(event, "scheduled_run_time", None) or (getattr(event, "scheduled_run_times", None)
                                                              or [None])[-1]
        ts = when.timestamp() if when is not None else self.clock.time()
        rec = RunRecord(event.job_id, ts, self.clock.time(), self.clock.time(), "skipped")
        if event.code == EVENT_JOB_MISSED:
            rec.error = (f"missed its time by more than misfire_grace_time "
                         f"({self.policy.schedule.misfire_grace_time} s)")
        else:
            rec.error = "the previous run is still going"
        self.executor._finish(rec)

    # -- status ----------------------------------------------------------------------------
    def write_status(self, state: str | None = None) -> None:
        sched = self.scheduler

        def change(d: dict[str, Any]) -> None:
            d["policy"] = self.policy.name
            d["policy_file"] = self.policy.path
            d["pid"] = os.getpid()
            if state:
                d["state"] = state
                if state == "running":
                    d["started_at"] = iso(self.clock.time())
            jobs = d.setdefault("jobs", {})
            for name, expr in self.schedules().items():
                j = jobs.setdefault(name, {})
                j["schedule"] = expr
                job = None
                if sched is not None and not self.stopping.is_set():  # see _job
                    job = sched.get_job(name)
                nrt = getattr(job, "next_run_time", None)  # pending jobs have none yet
                j["next_run"] = iso(nrt.timestamp()) if nrt is not None else None
            if self.shipper is not None:
                d["shipper"] = self.shipper.status()

        with contextlib.suppress(OSError):
            self.status.update(change)

    def _shipper_event(self, kind: str, info: dict[str, Any]) -> None:
        parts = " ".join(f"{k}={v}" for k, v in info.items())
        self.event_log(f"{iso(self.clock.time())} backupkit policy={self.policy.name} "
                       f"strategy=binlog event={kind} {parts}".rstrip())
        self.write_status()

    # -- running -----------------------------------------------------------------------------
    def start_shipper(self) -> None:
        """Take the binlog lock (so a cron shipper and this daemon never both run one)."""
        if self.shipper is None:
            return
        self.binlog_lock = FileLock(self.paths.lock_file(self.policy.name, "binlog"))
        if not self.binlog_lock.acquire():
            raise UsageError(f"another binlog shipper of policy {self.policy.name!r} runs on this "
                             f"machine (lock {self.binlog_lock.path} is held)",
                             "stop it, or remove strategies.binlog from one of them")
        self.shipper.on_event = self._shipper_event
        self.shipper.tick()

    def tick(self) -> None:
        """The main thread's periodic work: the shipper, and the status after finished runs."""
        if self.shipper is not None:
            self.shipper.tick()
        if self._dirty.is_set() and not self.stopping.is_set():
            self._dirty.clear()
            self.write_status()

    def shutdown(self, wait_jobs: float, cut: Callable[[], None] | None = None,
                 shipper_timeout: float = 60.0) -> None:
        """Stop: no new runs; the shipper flushes; running jobs finish, or are cut after wait_jobs."""
        self.stopping.set()
        self.write_status("stopping")
        sched = self.scheduler
        if sched is not None:
            with contextlib.suppress(Exception):
                sched.pause()
        stopper = None
        if self.shipper is not None:
            stopper = threading.Thread(target=self.shipper.stop, args=(shipper_timeout,),
                                       name="shipper-stop")
            stopper.start()
        if sched is not None:
            done = threading.Event()

            def _wait() -> None:
                with contextlib.suppress(Exception):
                    sched.shutdown(wait=True)
                done.set()

            threading.Thread(target=_wait, name="jobs-wait", daemon=True).start()
            if not done.wait(wait_jobs) and cut is not None:
                self.event_log(f"{iso(self.clock.time())} backupkit policy={self.policy.name} "
                               f"event=cut running jobs after {wait_jobs:g} s")
                cut()
                done.wait()
        if stopper is not None:
            stopper.join()
        if self.binlog_lock is not None:
            self.binlog_lock.release()
        self.write_status("stopped")


def serve(policy: Policy, policy_file: str, stop_timeout: float = 600.0,
          python: str | None = None, poll: float = 1.0, open_store: Callable[[], Any] | None = None,
          emit: Callable[[str, RunRecord], None] | None = None,
          extra_env: dict[str, str] | None = None,
          event_log: Callable[[str], None] | None = None) -> int:
    """`schedule run`: the daemon in the foreground until SIGTERM or SIGINT. Returns the exit code.

    First SIGTERM/SIGINT: no new runs start, the shipper is told to flush and stop, running jobs
    finish (up to stop_timeout, then they are cut with SIGTERM). A second signal cuts at once.
    """
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler

    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("apscheduler").setLevel(logging.ERROR)  # our own lines say it all
    runner = CliRunner(policy_file, python, extra_env)
    sched_cfg = scheduled_strategies(policy)
    shipper = None
    if sched_cfg.get("binlog") == "continuous":
        s = policy.schedule
        shipper = ShipperSupervisor(shipper_spawner(policy_file, python, extra_env, open_store),
                                    SystemClock(), s.shipper_backoff_min, s.shipper_backoff_max)
    daemon = Daemon(policy, runner, shipper=shipper, emit=emit, event_log=event_log,
                    describe=catalog_describer(open_store) if open_store else None)
    if not daemon.schedules() and shipper is None:
        raise ConfigError(f"{policy.path}: key 'strategies': nothing to run",
                          "set a cron schedule for cold, snapshot, verify, prune or sync, "
                          "or binlog = \"continuous\"")
    scheduler = BackgroundScheduler(
        timezone=daemon.tz, executors={"default": ThreadPoolExecutor(max_workers=8)},
        job_defaults={"max_instances": 1, "coalesce": True})
    daemon.configure(scheduler)
    stop = threading.Event()
    signals = {"n": 0}

    def on_signal(signum, _frame) -> None:
        signals["n"] += 1
        stop.set()
        if signals["n"] > 1:
            runner.cut()

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        daemon.start_shipper()
        scheduler.start()
        daemon.write_status("running")
        daemon.event_log(f"{iso(time.time())} backupkit policy={policy.name} event=started "
                         f"pid={os.getpid()} jobs={','.join(sorted(sched_cfg)) or '-'}")
        last_status = 0.0
        while not stop.wait(poll):
            daemon.tick()
            if time.monotonic() - last_status >= 30:
                daemon.write_status()
                last_status = time.monotonic()
        daemon.event_log(f"{iso(time.time())} backupkit policy={policy.name} event=stopping "
                         f"running_jobs={runner.running()}")
        daemon.shutdown(stop_timeout if signals["n"] < 2 else 0.0, runner.cut)
        daemon.event_log(f"{iso(time.time())} backupkit policy={policy.name} event=stopped")
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return 0


# -- what a policy implies ------------------------------------------------------------------------
def measured_from(catalog) -> dict[str, Any]:
    """Durations measured in the repository: newest backup of each kind, newest restore of each."""
    out: dict[str, Any] = {}
    for b in catalog.backups():
        m = {"duration_s": round(b.duration, 3), "backup_id": b.id, "at": iso(b.finished_at)}
        if b.kind == "cold":
            m["downtime_s"] = cold_downtime(b)
        if b.kind == "snapshot":
            blocked = (b.stats or {}).get("blocked_ms")
            if isinstance(blocked, (int, float)):
                m["blocked_ms"] = blocked
        out[b.kind] = m  # backups() is oldest first: the newest wins
    rto: dict[str, Any] = {}
    for r in catalog.restore_records():
        kind = r.get("kind")
        if kind in ("snapshot", "cold") and isinstance(r.get("duration"), (int, float)):
            rto[kind] = {"duration_s": r["duration"], "at": r.get("finished_at_utc"),
                         "backup_id": r.get("backup_id")}
    out["rto"] = rto
    return out


def policy_plan(policy: Policy, now: datetime | None = None, measured: dict[str, Any] | None = None,
                n: int = 3) -> dict[str, Any]:
    """Next runs of each strategy and the worst-case loss window and downtime each implies.

    A backup's recovery point is its start, and it counts only once committed, so the worst
    case for a scheduled strategy is the longest gap between two runs plus one run's duration.
    """
    tz = policy_timezone(policy)
    now = now or datetime.now(tz)
    measured = measured or {}
    rto = measured.get("rto", {})
    rows: list[dict[str, Any]] = []
    for name, expr in scheduled_strategies(policy).items():
        row: dict[str, Any] = {"strategy": name, "schedule": expr}
        if expr == "continuous":
            sync = policy.binlog.sync_interval
            row.update(next_runs=["continuously (supervised, restarted with backoff)"],
                       interval_s=None, loss_window_s=sync,
                       loss_window=f"about {sync:g} s (one sync interval) while the shipper runs",
                       downtime_s=0.0, downtime="none")
            rows.append(row)
            continue
        runs = next_runs(expr, tz, now, n)
        row["next_runs"] = [r.isoformat() for r in runs]
        row["next_runs_text"] = [r.strftime("%a %Y-%m-%d %H:%M %Z") for r in runs]
        interval = worst_interval(expr, tz, now)
        row["interval_s"] = interval
        m = measured.get(name, {})
        dur = m.get("duration_s")
        if name in ("cold", "snapshot") and interval is not None:
            loss = interval + (dur or 0.0)
            row["loss_window_s"] = loss
            row["loss_window"] = (f"up to {_human(loss)}: the longest gap between runs "
                                  f"({_human(interval)})" + (f" plus one run ({_human(dur)} measured)"
                                                            if dur else " plus one run (not measured yet)"))
            row["measured_duration_s"] = dur
            if name == "cold":
                down = m.get("downtime_s")
                row["downtime_s"] = down
                row["downtime"] = (f"{_human(down)} per run (measured stop to accepting connections)"
                                   if down is not None else "the whole copy, every run (not measured yet)")
            else:
                blocked = m.get("blocked_ms")
                row["downtime_s"] = 0.0
                row["downtime"] = "none" + (f" ({blocked:g} ms of blocked commits measured)"
                                            if blocked is not None else " (a few ms of blocked commits)")
            r = rto.get(name)
            row["rto_s"] = r["duration_s"] if r else None
            row["rto"] = (f"{_human(r['duration_s'])} (measured {r['at']})" if r
                          else "not measured yet: run 'backupkit verify --restore-test'")
        rows.append(row)
    bases = [r for r in rows if r["strategy"] in ("cold", "snapshot")]
    binlog = next((r for r in rows if r["strategy"] == "binlog"), None)
    if binlog and bases:
        overall = binlog["loss_window_s"]
        why = "binlog shipping on top of the bases"
    elif bases:
        overall = min(r["loss_window_s"] for r in bases)
        why = "the most frequent base"
    elif binlog:
        overall = None
        why = "binlog alone cannot be restored: schedule a snapshot or a cold backup"
    else:
        overall, why = None, "no backup strategy is scheduled"
    from backupkit.operations.retention import human_duration, parse_duration

    r = policy.retention
    window = None
    if r.recovery_window:
        window = parse_duration(r.recovery_window)
    return {"policy": policy.name, "file": policy.path, "timezone": str(tz), "now": now.isoformat(),
            "strategies": rows, "worst_case_loss_s": overall, "worst_case_loss_because": why,
            "retention": {"keep_last": r.keep_last, "keep_daily": r.keep_daily,
                          "keep_weekly": r.keep_weekly, "keep_monthly": r.keep_monthly,
                          "recovery_window_s": window,
                          "recovery_window": (f"every second of the last {human_duration(window)} "
                                              "stays restorable" if window and binlog and bases else
                                              (f"the backups of the last {human_duration(window)} and "
                                               "the one before stay" if window else None))}}


def _human(s: float | None) -> str:
    from backupkit.cli.console import human_seconds

    return human_seconds(s)


# -- cron ---------------------------------------------------------------------------------------
def cron_file_name(policy_name: str) -> str:
    """The /etc/cron.d file name: cron ignores names with dots or other odd characters."""
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in policy_name)
    return f"backupkit-{safe}"


def _cron_quote(s: str) -> str:
    return shlex.quote(s).replace("%", "\\%")


def cron_lines(policy: Policy, policy_file: str, user: str | None = "root",
               python: str | None = None, paths: Paths | None = None) -> list[str]:
    """Crontab lines for every scheduled strategy, each under `flock -n` so runs never overlap.

    With a user, the lines have the user field of /etc/cron.d files; without, they suit
    `crontab -e`. Binlog "continuous" becomes a line every minute: flock keeps one shipper
    running and cron starts it again within a minute if it dies.
    """
    paths = paths or Paths.of(policy)
    py = _cron_quote(python or sys.executable)
    pol = _cron_quote(str(Path(policy_file).absolute()))
    who = f" {user}" if user else ""
    out = [f"# backupkit policy {policy.name!r} from {Path(policy_file).absolute()}",
           "# generated by 'backupkit schedule cron'; each run holds a flock so runs never overlap",
           "SHELL=/bin/sh",
           "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    for name, expr in scheduled_strategies(policy).items():
        lock = _cron_quote(str(paths.lock_file(policy.name, name)))
        logf = _cron_quote(str(paths.log_file(policy.name, name)))
        if name == "binlog":
            cmd = f"{py} -m backupkit --policy {pol} binlog ship"
            when = "* * * * *"
        else:
            cmd = f"{py} -m backupkit --policy {pol} schedule exec {name} --locked"
            when = expr
        out.append(f"{when}{who} flock -n {lock} {cmd} >> {logf} 2>&1")
    return out


def install_cron(policy: Policy, lines: list[str], cron_dir: str | Path,
                 paths: Paths | None = None) -> Path:
    """Write the lines as cron_dir/backupkit-<name> (mode 0644, atomically); make lock and log dirs."""
    paths = paths or Paths.of(policy)
    d = Path(cron_dir)
    if not d.is_dir():
        raise UsageError(f"cron folder {d} does not exist", "install the cron package or pass --cron-dir")
    for p in (paths.lock_dir, paths.log_dir):
        p.mkdir(parents=True, exist_ok=True)
    target = d / cron_file_name(policy.name)
    tmp = d / f".{target.name}.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    return target
