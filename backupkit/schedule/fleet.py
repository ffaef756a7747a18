"""Many sources in one daemon: `schedule run --policies DIR` runs every policy in a folder.

Each policy (one source, its own repository or prefix) gets what `schedule run --policy FILE`
gives it: its APScheduler jobs, its supervised shipper, its locks and status file. On top:
- global limits: at most N snapshots and M cold backups at once across the fleet (a job over the
  limit waits for a slot; shippers always run). The limits hold inside this daemon: a run started
  by hand or by cron is not counted (its own policy's locks still apply);
- a policy file that does not load is reported (one line, event=policy_error) and skipped; the
  others run. Two files with the same policy name are refused (their state would collide).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from backupkit.config import Policy
from backupkit.errors import BackupkitError, ConfigError, UsageError
from backupkit.monitor.fleet import FleetEntry
from backupkit.monitor.live import SHIPPER_STATE_ENV, shipper_state_file
from backupkit.schedule.checks import semantic_problems, storage_problem
from backupkit.schedule.cron import scheduled_strategies
from backupkit.schedule.daemon import Daemon, ShipperSupervisor, shipper_spawner
from backupkit.schedule.monitoring import Monitoring
from backupkit.schedule.runner import CliRunner, Runner, RunRecord, SystemClock, catalog_describer
from backupkit.schedule.state import Paths
from backupkit.settings import Settings
from backupkit.util.units import utc_iso_seconds

#: Environment that would point every policy's runs at one storage or source: refused in a fleet.
OVERRIDES = ("BACKUPKIT_STORAGE", "BACKUPKIT_SOURCE", "BACKUPKIT_POLICY")


@dataclass
class FleetPolicy:
    path: Path
    settings: Settings | None = None
    error: str | None = None

    @property
    def policy(self) -> Policy:
        assert self.settings is not None
        return self.settings.policy


@dataclass
class Fleet:
    """The policies of a folder: the ones that load, and one line per one that does not."""

    folder: Path
    members: list[FleetPolicy] = field(default_factory=list)

    @property
    def good(self) -> list[FleetPolicy]:
        return [m for m in self.members if m.error is None]

    @property
    def broken(self) -> list[FleetPolicy]:
        return [m for m in self.members if m.error is not None]


def load_policy(path: Path, taken: dict[str, Path] | None = None) -> Settings:
    """One policy file of a fleet, loaded and checked (raises BackupkitError); taken: the names
    other files of the fleet already use."""
    st = Settings.resolve(str(path), None, None, checks=semantic_problems)
    problem = storage_problem(st.policy, None)
    if problem:
        raise ConfigError(problem)
    other = (taken or {}).get(st.policy.name)
    if other is not None and other != path:
        raise ConfigError(f"{path}: policy name {st.policy.name!r} is also the name of {other}",
                          "give each policy its own name")
    return st


def _check_folder(folder: str | Path) -> Path:
    d = Path(folder).expanduser()
    if not d.is_dir():
        raise UsageError(f"--policies {d}: not a folder", "give the folder holding the policy files")
    set_env = [k for k in OVERRIDES if os.environ.get(k)]
    if set_env:
        raise UsageError(f"{', '.join(set_env)} is set: it would point every policy of the fleet at "
                         "one target or source", "unset it; each policy names its own")
    return d


def load_fleet(folder: str | Path) -> Fleet:
    """Every *.toml in folder, loaded and checked; problems kept per file, never raised."""
    d = _check_folder(folder)
    fleet = Fleet(d)
    names: dict[str, Path] = {}
    for path in sorted(d.glob("*.toml")):
        member = FleetPolicy(path)
        try:
            member.settings = load_policy(path, names)
            names[member.policy.name] = path
        except BackupkitError as exc:
            member.error = _one_line(exc)
        fleet.members.append(member)
    if not fleet.members:
        raise UsageError(f"--policies {d}: no *.toml policy files there")
    return fleet


def _one_line(exc: BackupkitError) -> str:
    return " ".join(str(exc.message).split())


class SlotRunner:
    """A runner that takes a fleet-wide slot for snapshot and cold runs before it starts them."""

    def __init__(self, runner: Runner, slots: dict[str, threading.Semaphore],
                 stopping: Callable[[], bool]) -> None:
        self.runner = runner
        self.slots = slots
        self.stopping = stopping

    def __call__(self, strategy: str) -> dict[str, Any]:
        slot = self.slots.get(strategy)
        if slot is None:
            return self.runner(strategy)
        while not slot.acquire(timeout=0.5):
            if self.stopping():
                return {"result": "skipped", "error": "stopping while waiting for a "
                                                      f"{strategy} slot of the fleet"}
        try:
            return self.runner(strategy)
        finally:
            slot.release()

    def __getattr__(self, name: str) -> Any:  # cut(), running() of the CliRunner
        return getattr(self.runner, name)



#: Policy sections the binlog shipper never reads: an edit limited to them (and to the cron
#: schedules of [strategies] other than binlog) restarts the jobs and keeps the shipper running.
JOBS_ONLY_SECTIONS = ("snapshot", "cold", "retention", "verify", "metrics", "notify")


def jobs_only_change(old: Policy, new: Policy) -> bool:
    """True when new differs from old only where the shipper does not look (see JOBS_ONLY_SECTIONS)."""
    a, b = old.model_dump(), new.model_dump()
    for d in (a, b):
        for k in JOBS_ONLY_SECTIONS:
            d.pop(k, None)
        strategies = d.get("strategies") or {}
        d["strategies"] = {"binlog": strategies.get("binlog")}
    return a == b


@dataclass
class Member:
    """A policy of the fleet that runs: its daemon, scheduler, runner and monitoring."""

    path: Path
    digest: str
    settings: Settings
    daemon: Daemon
    scheduler: BackgroundScheduler
    cli: CliRunner
    monitoring: Monitoring
    halt: threading.Event
    error: str | None = None  # the newest edit does not load: this (previous) version keeps running
    busy: bool = False  # being stopped or replaced by a worker thread

    @property
    def name(self) -> str:
        return self.settings.policy.name


@dataclass
class Refused:
    """A policy file whose current content does not load."""

    digest: str
    error: str
    name: str
    retry: bool = False  # it loads but did not start (its shipper's lock is held): try again


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class FleetDaemon:
    """`schedule run --policies DIR`: every policy of a folder in this process, reloaded on change.

    The folder is read again every reload_interval seconds (the content of each *.toml is
    compared, so touching a file changes nothing) and on SIGHUP. A changed file is loaded and
    checked; if it loads, only that policy's jobs and shipper are stopped (running jobs finish)
    and started again with the new version; if it does not, the error is logged and shown
    (status, metrics, page) and the previous version keeps running. A new file starts a policy,
    a removed one stops it. The other policies never notice.
    """

    def __init__(self, folder: str | Path, *, max_snapshots: int | None = None,
                 max_cold: int | None = None, stop_timeout: float = 600.0, python: str | None = None,
                 emit: Callable[[str, RunRecord], None] | None = None,
                 event_log: Callable[[str], None] | None = None, metrics_listen: str | None = None,
                 reload_interval: float = 2.0) -> None:
        self.folder = _check_folder(folder)
        self.max_snapshots, self.max_cold = max_snapshots, max_cold
        self.stop_timeout = stop_timeout
        self.python = python
        self.emit = emit
        self.log = event_log or (lambda line: (sys.stderr.write(line + "\n"), sys.stderr.flush()))
        self.metrics_listen = metrics_listen
        self.reload_interval = reload_interval
        self.slots = {k: threading.Semaphore(n) for k, n in (("snapshot", max_snapshots),
                                                              ("cold", max_cold)) if n}
        self.members: dict[Path, Member] = {}
        self.refused: dict[Path, Refused] = {}
        self.start_errors: dict[Path, str] = {}
        self.folder_missing = False
        self.lock = threading.RLock()  # reentrant: the signal handler takes it in the main thread
        self.stopping = threading.Event()
        self.workers: list[threading.Thread] = []
        self.server: Any = None
        self.serving = False

    def _say(self, text: str) -> None:
        self.log(f"{utc_iso_seconds(time.time())} backupkit fleet {text}")

    # -- what the monitoring reads ---------------------------------------------------------------
    def entries(self) -> list[FleetEntry]:
        """Every policy file: the running ones (with their newest edit's problem) and the refused."""
        with self.lock:
            out = [FleetEntry(m.name, str(p), m.monitoring.state, m.error) for p, m in self.members.items()]
            out += [FleetEntry(r.name, str(p), None, r.error) for p, r in self.refused.items()
                    if p not in self.members]
        return sorted(out, key=lambda e: (e.name, e.file))

    # -- one member ----------------------------------------------------------------------------
    def _build(self, path: Path, digest: str, st: Settings,
               shipper: ShipperSupervisor | None = None) -> Member:
        """A member, not started; shipper: a running one handed over by a reload."""
        policy = st.policy
        paths = Paths.of(policy)
        extra_env = {SHIPPER_STATE_ENV: str(shipper_state_file(paths.status_file))}
        cli = CliRunner(str(path), self.python, extra_env)
        opener = functools.partial(st.open_store, create=True)
        if shipper is None and scheduled_strategies(policy).get("binlog") == "continuous":
            sc = policy.schedule
            shipper = ShipperSupervisor(shipper_spawner(str(path), self.python, extra_env, opener),
                                        SystemClock(), sc.shipper_backoff_min, sc.shipper_backoff_max)
        halt = threading.Event()
        daemon = Daemon(policy, SlotRunner(cli, self.slots, lambda: halt.is_set() or self.stopping.is_set()),
                        paths=paths, shipper=shipper, emit=self.emit, event_log=self.log,
                        describe=catalog_describer(opener))
        if not daemon.schedules() and shipper is None:
            raise ConfigError(f"{path}: key 'strategies': nothing is scheduled")
        scheduler = BackgroundScheduler(
            timezone=daemon.tz, executors={"default": ThreadPoolExecutor(max_workers=8)},
            job_defaults={"max_instances": 1, "coalesce": True})
        daemon.configure(scheduler)
        # [notify] per policy as under `schedule run --policy`; the fleet serves the metrics
        monitoring = Monitoring(policy, opener, paths.status_file, None, refresh=self.serving)
        daemon.after_run = monitoring.touch
        return Member(path, digest, st, daemon, scheduler, cli, monitoring, halt)

    def _start(self, m: Member) -> None:
        m.daemon.start_shipper()  # raises when another shipper of the policy holds its lock
        m.scheduler.start()
        m.daemon.write_status("running")
        m.monitoring.start()

    def _stop(self, m: Member, wait: float) -> None:
        m.halt.set()
        m.daemon.shutdown(wait, m.cli.cut)
        m.monitoring.stop()

    def _launch(self, path: Path, digest: str, st: Settings, event: str,
                handover: tuple[ShipperSupervisor, Any] | None = None) -> bool:
        """Build and start a member; a failure makes the file refused. True when it runs."""
        try:
            m = self._build(path, digest, st, handover[0] if handover else None)
            if handover is not None:
                m.daemon.binlog_lock = handover[1]
            self._start(m)
        except BackupkitError as exc:
            err = _one_line(exc)
            with self.lock:
                self.refused[path] = Refused(digest, err, st.policy.name, retry=True)
            if self.start_errors.get(path) != err:  # said once; retried at every scan
                self._say(f"event=policy_error file={path} error={err!r}: skipped for now, "
                          "tried again at each reload")
            self.start_errors[path] = err
            return False
        self.start_errors.pop(path, None)
        with self.lock:
            self.members[path] = m
        self._say(f"event={event} policy={m.name} file={path}")
        return True

    def _worker(self, target: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=target, name=name)
        self.workers = [w for w in self.workers if w.is_alive()] + [t]
        t.start()

    def _replace(self, old: Member, digest: str, st: Settings) -> None:
        """Stop old's jobs (running ones finish) while its shipper keeps shipping, then start the
        new version: with the same shipper when the edit is one the shipper does not read,
        else after that shipper flushed and stopped (shipping pauses for the restart only)."""
        sh, lock = old.daemon.shipper, old.daemon.binlog_lock
        old.daemon.shipper = old.daemon.binlog_lock = None  # not stopped with the jobs
        keep = sh is not None and jobs_only_change(old.settings.policy, st.policy)
        stopper = threading.Thread(target=self._stop, args=(old, self.stop_timeout),
                                   name=f"stop-jobs-{old.name}")
        stopper.start()
        while stopper.is_alive():  # the main loop no longer ticks old: restart its shipper here
            if sh is not None:
                sh.tick()
            stopper.join(1.0)
        with self.lock:
            self.members.pop(old.path, None)
        handover = (sh, lock) if keep and sh is not None and not self.stopping.is_set() else None
        if handover is None and sh is not None:
            sh.stop()
            if lock is not None:
                lock.release()
        if self.stopping.is_set():
            return
        if not self._launch(old.path, digest, st, "reloaded" + (" shipper=kept" if handover else ""),
                            handover) and handover is not None:
            handover[0].stop()
            if handover[1] is not None:
                handover[1].release()

    def _remove(self, m: Member) -> None:
        self._stop(m, self.stop_timeout)
        with self.lock:
            self.members.pop(m.path, None)
        self._say(f"event=removed policy={m.name} file={m.path}")

    # -- the folder ------------------------------------------------------------------------------
    def scan(self) -> None:
        """Compare the folder with what runs: start, reload, stop; report what does not load."""
        files = {p: _digest(p) for p in sorted(self.folder.glob("*.toml"))}
        files = {p: d for p, d in files.items() if d is not None}
        if not files and self.members:  # a folder moved away or emptied by mistake
            if not self.folder_missing:
                self._say(f"event=reload_error folder={self.folder}: no policy file there; every "
                          "policy keeps running (remove the files one by one to stop them)")
            self.folder_missing = True
            return
        self.folder_missing = False
        with self.lock:
            members = dict(self.members)
            for p in [p for p in self.refused if p not in files]:
                del self.refused[p]
        for p, m in members.items():
            if p not in files and not m.busy:
                m.busy = True
                self._say(f"event=policy_removed policy={m.name} file={p}: stopping it")
                self._worker(functools.partial(self._remove, m), f"remove-{m.name}")
        for path, digest in files.items():
            m = members.get(path)
            if m is not None and m.busy:
                continue  # being replaced: the next scan sees the newest content
            if m is not None and m.digest == digest:
                if m.error:  # an edit that did not load was undone
                    with self.lock:
                        m.error = None
                        self.refused.pop(path, None)
                    m.daemon.extra_status = {"reload_error": None}
                    m.daemon.write_status()
                    self._say(f"event=reload_reverted policy={m.name} file={path}")
                continue
            r = self.refused.get(path)
            if r is not None and r.digest == digest and not r.retry:
                continue  # already reported
            taken = {mm.name: pp for pp, mm in members.items() if pp != path}
            try:
                st = load_policy(path, taken)
                if not scheduled_strategies(st.policy):
                    raise ConfigError(f"{path}: key 'strategies': nothing is scheduled")
            except BackupkitError as exc:
                err = _one_line(exc)
                with self.lock:
                    self.refused[path] = Refused(digest, err, m.name if m else path.stem)
                    if m is not None:
                        m.error = err
                if m is not None:
                    m.daemon.extra_status = {"reload_error": err}
                    m.daemon.write_status()
                    self._say(f"event=reload_error policy={m.name} file={path} error={err!r}: "
                              "the previous version keeps running")
                else:
                    self._say(f"event=policy_error file={path} error={err!r}: skipped")
                continue
            with self.lock:
                self.refused.pop(path, None)
            if m is None:
                self._launch(path, digest, st, "added" if self.serving or members else "loaded")
            else:
                m.busy = True
                self._say(f"event=reload policy={m.name} file={path}: restarting its jobs and shipper")
                self._worker(functools.partial(self._replace, m, digest, st), f"reload-{m.name}")

    # -- the daemon ------------------------------------------------------------------------------
    def _listen(self) -> str | None:
        if self.metrics_listen is not None:
            return self.metrics_listen or None
        with self.lock:
            wanted = [(m.path, m.settings.policy.metrics.listen) for m in self.members.values()
                      if m.settings.policy.metrics.listen]
        if not wanted:
            return None
        path, listen = wanted[0]
        for p, other in wanted[1:]:
            if other != listen:
                self._say(f"event=metrics_listen file={p}: [metrics] listen {other!r} ignored; the "
                          f"fleet serves every policy on {listen!r} (from {path})")
        return listen

    def _serve_metrics(self, listen: str) -> None:
        from backupkit.monitor.fleet import fleet_routes
        from backupkit.monitor.server import MetricsServer

        try:
            self.server = MetricsServer(listen, routes=fleet_routes(self.entries)).start()
        except UsageError as exc:  # a busy port never stops the backups
            self._say(f"event=metrics_error error={exc.one_line()!r}: running without serving metrics")
            return
        self._say(f"event=metrics url={self.server.url}")

    def serve(self, poll: float = 1.0) -> int:
        """Run until SIGTERM/SIGINT (a second one cuts running jobs); SIGHUP reloads now."""
        if not logging.getLogger().isEnabledFor(logging.DEBUG):
            logging.getLogger("apscheduler").setLevel(logging.ERROR)
        signals = {"n": 0}
        hup = threading.Event()
        stop = threading.Event()

        def on_signal(signum, _frame) -> None:
            if signum == signal.SIGHUP:
                hup.set()
                stop.set()  # wakes the loop; cleared below when it was only a reload
                return
            signals["n"] += 1
            stop.set()
            self.stopping.set()
            if signals["n"] > 1:
                with self.lock:
                    members = list(self.members.values())
                for m in members:
                    m.cli.cut()

        sigs = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        old = {sig: signal.signal(sig, on_signal) for sig in sigs}
        try:
            self.scan()
            if not self.members:
                raise ConfigError(f"--policies {self.folder}: no policy can run",
                                  "; ".join(f"{p.name}: {r.error}" for p, r in self.refused.items()) or None)
            listen = self._listen()
            if listen:
                self.serving = True  # members added later refresh their state too
                with self.lock:
                    for m in self.members.values():
                        m.monitoring.refresh = True
                        m.monitoring.state.start()
                self._serve_metrics(listen)
            names = ",".join(e.name for e in self.entries() if e.state)
            self._say(f"event=started pid={os.getpid()} policies={names} "
                      f"skipped={len(self.refused)} max_snapshots={self.max_snapshots or '-'} "
                      f"max_cold={self.max_cold or '-'} reload_every={self.reload_interval:g}s")
            last_status = last_scan = time.monotonic()
            while True:
                stop.wait(poll)
                if self.stopping.is_set():
                    break
                if stop.is_set():
                    stop.clear()
                now = time.monotonic()
                if hup.is_set() or (self.reload_interval and now - last_scan >= self.reload_interval):
                    if hup.is_set():
                        self._say("event=sighup: reading the policies again")
                    hup.clear()
                    self.scan()
                    last_scan = now
                with self.lock:
                    running = [m for m in self.members.values() if not m.busy]
                for m in running:
                    m.daemon.tick()
                if now - last_status >= 30:
                    for m in running:
                        m.daemon.write_status()
                    last_status = now
            self._shutdown(0.0 if signals["n"] > 1 else self.stop_timeout)
            self._say("event=stopped")
        finally:
            if self.server is not None:
                self.server.stop()
            for sig, handler in old.items():
                signal.signal(sig, handler)
        return 0

    def _shutdown(self, wait: float) -> None:
        for w in list(self.workers):
            w.join()
        with self.lock:
            members = list(self.members.values())
        stops = [threading.Thread(target=self._stop, args=(m, wait), name=f"stop-{m.name}")
                 for m in members]
        for t in stops:
            t.start()
        for t in stops:
            t.join()


def serve_fleet(folder: str | Path, *, max_snapshots: int | None = None, max_cold: int | None = None,
                stop_timeout: float = 600.0, python: str | None = None, poll: float = 1.0,
                emit: Callable[[str, RunRecord], None] | None = None,
                event_log: Callable[[str], None] | None = None, metrics_listen: str | None = None,
                reload_interval: float = 2.0) -> int:
    """`schedule run --policies DIR`: every loadable policy's daemon in this process until SIGTERM."""
    return FleetDaemon(folder, max_snapshots=max_snapshots, max_cold=max_cold, stop_timeout=stop_timeout,
                       python=python, emit=emit, event_log=event_log, metrics_listen=metrics_listen,
                       reload_interval=reload_interval).serve(poll)
