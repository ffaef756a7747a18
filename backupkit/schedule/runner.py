"""Running one strategy, shared by the daemon and `schedule exec`.

Each run is its own process (`backupkit --policy FILE schedule exec NAME`'s work), so that the
daemon and system cron behave the same way: a run of a strategy holds a lock file (`flock`), so
two runs of one strategy never overlap; cold and snapshot share a "source" lock, verify, prune
and sync a "repository" lock; every run ends with one log line and updates the status file.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from backupkit.config import Policy
from backupkit.repo.catalog import Catalog
from backupkit.schedule.state import FileLock, Paths, StatusFile
from backupkit.util.units import human_bytes, human_seconds, utc_iso_seconds

JOB_STRATEGIES = ("cold", "snapshot", "snapshot_incremental", "verify", "prune", "sync", "binlog_purge",
                  "binlog_compact")
# sync (several storage targets) shares the repository lock: it must not copy what prune deletes.
# binlog_purge talks to the source: never while a cold backup has it stopped.
GROUPS = {"cold": "source", "snapshot": "source", "snapshot_incremental": "source",
          "verify": "repository", "prune": "repository",
          "sync": "repository", "binlog_purge": "source", "binlog_compact": "repository"}
# snapshot_incremental: the first run takes a full physical backup when there is none to extend
CLI_ARGS = {"cold": ["cold"], "snapshot": ["snapshot"],
            "snapshot_incremental": ["snapshot", "--engine", "physical", "--incremental", "--or-full"],
            "verify": ["verify"],
            "prune": ["prune", "--force"], "binlog": ["binlog", "ship"], "sync": ["repo", "sync"],
            "binlog_purge": ["binlog", "purge"], "binlog_compact": ["binlog", "compact"]}


GROUP_POLL = 2.0  # seconds between tries of a busy group lock


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
        return {"strategy": self.strategy, "scheduled_at": utc_iso_seconds(self.scheduled_at),
                "start": utc_iso_seconds(self.start), "end": utc_iso_seconds(self.end), "result": self.result,
                "duration_s": round(self.duration, 3), "exit_code": self.exit_code,
                "error": self.error, "backup_id": self.backup_id,
                "stored_bytes": self.stored_bytes, "raw_bytes": self.raw_bytes,
                **({"details": self.details} if self.details else {})}

    def log_line(self, policy_name: str) -> str:
        """The one line a run leaves in the log."""
        parts = [f"policy={policy_name}", f"strategy={self.strategy}", f"result={self.result}",
                 f"start={utc_iso_seconds(self.start)}", f"end={utc_iso_seconds(self.end)}",
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
            job["running_since"] = utc_iso_seconds(rec.start)

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
                job["last_ok"] = utc_iso_seconds(rec.end)

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
    sys.stderr.write(f"{utc_iso_seconds(rec.end)} backupkit {rec.log_line(policy_name)}\n")
    sys.stderr.flush()


def catalog_describer(open_store: Callable[[], Any]) -> Callable[[dict], dict]:
    """Sizes of a run's backup, read from its manifest in the repository."""
    cache: dict[str, Any] = {}

    def describe(res: dict) -> dict:
        out = res.get("output") or {}
        bid = _find_id(out)
        extra: dict[str, Any] = {}
        if bid:
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
