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
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import tzinfo
from pathlib import Path
from typing import Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler

from backupkit.config import Policy
from backupkit.errors import ConfigError, UsageError
from backupkit.monitor.live import SHIPPER_STATE_ENV, shipper_state_file
from backupkit.repo.catalog import Catalog
from backupkit.schedule.cron import cron_trigger, policy_timezone, scheduled_strategies
from backupkit.schedule.monitoring import Monitoring
from backupkit.schedule.runner import (
    CLI_ARGS,
    JOB_STRATEGIES,
    CliRunner,
    Clock,
    Runner,
    RunRecord,
    StrategyExecutor,
    SystemClock,
    catalog_describer,
)
from backupkit.schedule.state import FileLock, Paths
from backupkit.util.units import utc_iso_seconds


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
                "started_at": utc_iso_seconds(self.started_at) if alive else None,
                "restarts": self.restarts, "last_exit": self.last_exit,
                "last_exit_at": utc_iso_seconds(self.last_exit_at),
                "next_start_at": utc_iso_seconds(self.next_start) if not alive and not self.stopped else None,
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
    try:
        return bool(Catalog(open_store()).backups(kind="snapshot"))
    except Exception:  # unreachable storage: let the shipper report it
        return True


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
        self.after_run: Callable[[], None] | None = None  # a run finished (the monitor reads again)
        self.extra_status: dict[str, Any] = {}  # more keys for the status file (the fleet's reload)

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
        scheduler.add_listener(self._on_skip, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)

    def _job(self, name: str) -> None:
        if self.stopping.is_set():
            return
        self.executor.run(name)
        if self.after_run is not None:
            self.after_run()
        # The next run time is written by the main thread (tick): a job thread must not call the
        # scheduler, whose shutdown holds its job-store lock while it waits for running jobs.
        self._dirty.set()

    def _on_skip(self, event) -> None:
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
                    d["started_at"] = utc_iso_seconds(self.clock.time())
            jobs = d.setdefault("jobs", {})
            for name, expr in self.schedules().items():
                j = jobs.setdefault(name, {})
                j["schedule"] = expr
                job = None
                if sched is not None and not self.stopping.is_set():  # see _job
                    job = sched.get_job(name)
                nrt = getattr(job, "next_run_time", None)  # pending jobs have none yet
                j["next_run"] = utc_iso_seconds(nrt.timestamp()) if nrt is not None else None
            if self.shipper is not None:
                d["shipper"] = self.shipper.status()
            d.update(self.extra_status)

        with contextlib.suppress(OSError):
            self.status.update(change)

    def _shipper_event(self, kind: str, info: dict[str, Any]) -> None:
        parts = " ".join(f"{k}={v}" for k, v in info.items())
        self.event_log(f"{utc_iso_seconds(self.clock.time())} backupkit policy={self.policy.name} "
                       f"strategy=binlog event={kind} {parts}".rstrip())
        self.write_status()

    # -- running -----------------------------------------------------------------------------
    def start_shipper(self) -> None:
        """Take the binlog lock (so a cron shipper and this daemon never both run one), unless it
        was handed over with a running shipper (a fleet's reload that keeps the shipper)."""
        if self.shipper is None:
            return
        if self.binlog_lock is None:
            self.binlog_lock = FileLock(self.paths.lock_file(self.policy.name, "binlog"))
        if self.binlog_lock.fd is None and not self.binlog_lock.acquire():
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
                self.event_log(f"{utc_iso_seconds(self.clock.time())} backupkit policy={self.policy.name} "
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
          event_log: Callable[[str], None] | None = None, metrics_listen: str | None = None) -> int:
    """`schedule run`: the daemon in the foreground until SIGTERM or SIGINT. Returns the exit code.

    First SIGTERM/SIGINT: no new runs start, the shipper is told to flush and stop, running jobs
    finish (up to stop_timeout, then they are cut with SIGTERM). A second signal cuts at once.
    metrics_listen (or [metrics] listen) serves /metrics and the status page (schedule/monitoring.py).
    """
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("apscheduler").setLevel(logging.ERROR)  # our own lines say it all
    paths = Paths.of(policy)
    extra_env = {**(extra_env or {}), SHIPPER_STATE_ENV: str(shipper_state_file(paths.status_file))}
    runner = CliRunner(policy_file, python, extra_env)
    sched_cfg = scheduled_strategies(policy)
    shipper = None
    if sched_cfg.get("binlog") == "continuous":
        s = policy.schedule
        shipper = ShipperSupervisor(shipper_spawner(policy_file, python, extra_env, open_store),
                                    SystemClock(), s.shipper_backoff_min, s.shipper_backoff_max)
    daemon = Daemon(policy, runner, paths=paths, shipper=shipper, emit=emit, event_log=event_log,
                    describe=catalog_describer(open_store) if open_store else None)
    monitoring = Monitoring(policy, open_store, paths.status_file,
                            metrics_listen if metrics_listen is not None else policy.metrics.listen)
    daemon.after_run = monitoring.touch
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
        monitoring.start()
        daemon.event_log(f"{utc_iso_seconds(time.time())} backupkit policy={policy.name} event=started "
                         f"pid={os.getpid()} jobs={','.join(sorted(sched_cfg)) or '-'}")
        last_status = 0.0
        while not stop.wait(poll):
            daemon.tick()
            if time.monotonic() - last_status >= 30:
                daemon.write_status()
                last_status = time.monotonic()
        daemon.event_log(f"{utc_iso_seconds(time.time())} backupkit policy={policy.name} event=stopping "
                         f"running_jobs={runner.running()}")
        daemon.shutdown(stop_timeout if signals["n"] < 2 else 0.0, runner.cut)
        daemon.event_log(f"{utc_iso_seconds(time.time())} backupkit policy={policy.name} event=stopped")
    finally:
        monitoring.stop()
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return 0
