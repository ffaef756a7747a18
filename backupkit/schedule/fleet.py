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

from backupkit.config import Policy, Settings
from backupkit.errors import BackupkitError, ConfigError, UsageError
from backupkit.monitor.live import SHIPPER_STATE_ENV, shipper_state_file
from backupkit.schedule.checks import semantic_problems, storage_problem
from backupkit.schedule.cron import scheduled_strategies
from backupkit.schedule.daemon import Daemon, ShipperSupervisor, shipper_spawner
from backupkit.schedule.monitoring import Monitoring
from backupkit.schedule.runner import CliRunner, Runner, RunRecord, SystemClock, catalog_describer
from backupkit.schedule.state import Paths
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


def load_fleet(folder: str | Path) -> Fleet:
    """Every *.toml in folder, loaded and checked; problems kept per file, never raised."""
    d = Path(folder).expanduser()
    if not d.is_dir():
        raise UsageError(f"--policies {d}: not a folder", "give the folder holding the policy files")
    set_env = [k for k in OVERRIDES if os.environ.get(k)]
    if set_env:
        raise UsageError(f"{', '.join(set_env)} is set: it would point every policy of the fleet at "
                         "one target or source", "unset it; each policy names its own")
    fleet = Fleet(d)
    names: dict[str, Path] = {}
    for path in sorted(d.glob("*.toml")):
        member = FleetPolicy(path)
        try:
            st = Settings.resolve(str(path), None, None, checks=semantic_problems)
            problem = storage_problem(st.policy, None)
            if problem:
                raise ConfigError(problem)
            if st.policy.name in names:
                raise ConfigError(f"{path}: policy name {st.policy.name!r} is also the name of "
                                  f"{names[st.policy.name]}", "give each policy its own name")
            names[st.policy.name] = path
            member.settings = st
        except BackupkitError as exc:
            member.error = " ".join(str(exc.message).split())
        fleet.members.append(member)
    if not fleet.members:
        raise UsageError(f"--policies {d}: no *.toml policy files there")
    return fleet


class SlotRunner:
    """A runner that takes a fleet-wide slot for snapshot and cold runs before it starts them."""

    def __init__(self, runner: Runner, slots: dict[str, threading.Semaphore],
                 stopping: threading.Event) -> None:
        self.runner = runner
        self.slots = slots
        self.stopping = stopping

    def __call__(self, strategy: str) -> dict[str, Any]:
        slot = self.slots.get(strategy)
        if slot is None:
            return self.runner(strategy)
        while not slot.acquire(timeout=0.5):
            if self.stopping.is_set():
                return {"result": "skipped", "error": "stopping while waiting for a "
                                                      f"{strategy} slot of the fleet"}
        try:
            return self.runner(strategy)
        finally:
            slot.release()

    def __getattr__(self, name: str) -> Any:  # cut(), running() of the CliRunner
        return getattr(self.runner, name)


def serve_fleet(folder: str | Path, *, max_snapshots: int | None = None, max_cold: int | None = None,
                stop_timeout: float = 600.0, python: str | None = None, poll: float = 1.0,
                emit: Callable[[str, RunRecord], None] | None = None,
                event_log: Callable[[str], None] | None = None) -> int:
    """`schedule run --policies DIR`: every loadable policy's daemon in this process until SIGTERM."""
    log = event_log or (lambda line: (sys.stderr.write(line + "\n"), sys.stderr.flush()))
    fleet = load_fleet(folder)
    for m in fleet.broken:
        log(f"{utc_iso_seconds(time.time())} backupkit fleet event=policy_error file={m.path} "
            f"error={m.error!r}: skipped")
    stopping = threading.Event()
    slots = {k: threading.Semaphore(n) for k, n in (("snapshot", max_snapshots), ("cold", max_cold))
             if n}
    running: list[tuple[Daemon, BackgroundScheduler, CliRunner]] = []
    monitors: list[Monitoring] = []
    for m in fleet.good:
        policy, st = m.policy, m.settings
        assert st is not None
        paths = Paths.of(policy)
        extra_env = {SHIPPER_STATE_ENV: str(shipper_state_file(paths.status_file))}
        cli = CliRunner(str(m.path), python, extra_env)
        opener = functools.partial(st.open_store, create=True)
        sched_cfg = scheduled_strategies(policy)
        shipper = None
        if sched_cfg.get("binlog") == "continuous":
            sc = policy.schedule
            shipper = ShipperSupervisor(shipper_spawner(str(m.path), python, extra_env, opener),
                                        SystemClock(), sc.shipper_backoff_min, sc.shipper_backoff_max)
        daemon = Daemon(policy, SlotRunner(cli, slots, stopping), paths=paths, shipper=shipper,
                        emit=emit, event_log=log, describe=catalog_describer(opener))
        if not daemon.schedules() and shipper is None:
            log(f"{utc_iso_seconds(time.time())} backupkit fleet event=policy_error file={m.path} "
                "error='nothing is scheduled': skipped")
            continue
        scheduler = BackgroundScheduler(
            timezone=daemon.tz, executors={"default": ThreadPoolExecutor(max_workers=8)},
            job_defaults={"max_instances": 1, "coalesce": True})
        daemon.configure(scheduler)
        # [notify] per policy as under `schedule run --policy`; no metrics endpoint (one port
        # cannot serve every policy's page yet: see docs/configuration.md)
        monitoring = Monitoring(policy, opener, paths.status_file, None)
        daemon.after_run = monitoring.touch
        monitors.append(monitoring)
        running.append((daemon, scheduler, cli))
    if not running:
        raise ConfigError(f"--policies {fleet.folder}: no policy can run",
                          "; ".join(f"{m.path.name}: {m.error}" for m in fleet.broken) or None)
    stop = threading.Event()
    signals = {"n": 0}

    def on_signal(signum, _frame) -> None:
        signals["n"] += 1
        stop.set()
        stopping.set()
        if signals["n"] > 1:
            for _, _, cli in running:
                cli.cut()

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    started: list[tuple[Daemon, BackgroundScheduler, CliRunner]] = []
    try:
        for daemon, scheduler, cli in running:
            try:
                daemon.start_shipper()
            except BackupkitError as exc:
                log(f"{utc_iso_seconds(time.time())} backupkit policy={daemon.policy.name} "
                    f"event=policy_error error={exc.message!r}: skipped")
                continue
            scheduler.start()
            daemon.write_status("running")
            started.append((daemon, scheduler, cli))
        for monitoring in monitors:
            monitoring.start()
        log(f"{utc_iso_seconds(time.time())} backupkit fleet event=started pid={os.getpid()} "
            f"policies={','.join(d.policy.name for d, _, _ in started)} "
            f"skipped={len(fleet.broken)} max_snapshots={max_snapshots or '-'} "
            f"max_cold={max_cold or '-'}")
        last_status = 0.0
        while not stop.wait(poll):
            for daemon, _, _ in started:
                daemon.tick()
            if time.monotonic() - last_status >= 30:
                for daemon, _, _ in started:
                    daemon.write_status()
                last_status = time.monotonic()
        stops = [threading.Thread(target=daemon.shutdown, args=(
            stop_timeout if signals["n"] < 2 else 0.0, cli.cut), name=f"stop-{daemon.policy.name}")
            for daemon, _, cli in started]
        for t in stops:
            t.start()
        for t in stops:
            t.join()
        log(f"{utc_iso_seconds(time.time())} backupkit fleet event=stopped")
    finally:
        for monitoring in monitors:
            monitoring.stop()
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return 0
