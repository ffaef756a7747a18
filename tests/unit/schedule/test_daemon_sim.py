"""The daemon on a simulated clock: two weeks of cold, snapshot and binlog runs, in seconds.

The real Daemon, the real APScheduler scheduler, job store and thread-pool executor, the real lock
files and status file; only time is simulated. APScheduler reads `datetime.now()` in two modules,
which the simulation points at the simulated clock, and the test drives the scheduler's loop
itself: advance the clock to the next event, let the scheduler submit what is due, wait until
every job thread is asleep on the simulated clock or finished.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from datetime import UTC, datetime, timedelta

import apscheduler.executors.base as ap_exec_base
import apscheduler.schedulers.base as ap_sched_base
import pytest
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.base import BaseScheduler

from backupkit.config import Policy
from backupkit.schedule.daemon import Daemon, ShipperSupervisor
from backupkit.schedule.runner import RunRecord
from backupkit.schedule.state import Paths

START = datetime(2026, 1, 5, 0, 0, 30, tzinfo=UTC)  # a Monday
DAY = 86400.0


class SimClock:
    """Simulated time; sleep() blocks the calling thread until the driver advances past it."""

    def __init__(self, start: float) -> None:
        self.t = start
        self.cond = threading.Condition()
        self.sleepers: list[float] = []

    def time(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        with self.cond:
            wake = self.t + seconds
            self.sleepers.append(wake)
            self.cond.notify_all()
            while self.t < wake:
                self.cond.wait()
            self.sleepers.remove(wake)
            self.cond.notify_all()

    def advance_to(self, t: float) -> None:
        with self.cond:
            self.t = max(self.t, t)
            self.cond.notify_all()

    def asleep(self) -> int:
        """Threads sleeping until a moment still in the future."""
        return sum(1 for w in self.sleepers if w > self.t)

    def next_wake(self) -> float | None:
        future = [w for w in self.sleepers if w > self.t]
        return min(future) if future else None


class SimScheduler(BaseScheduler):
    """An APScheduler scheduler whose loop is driven by the test instead of its own thread."""

    def wakeup(self) -> None:
        pass

    def shutdown(self, wait: bool = True) -> None:
        super().shutdown(wait)


class FakeShipper:
    """A shipper process: runs until killed, flushes and exits 0 on SIGTERM."""

    pids = iter(range(1000, 100000))

    def __init__(self) -> None:
        self.pid = next(self.pids)
        self.returncode: int | None = None
        self.terminated = False

    def poll(self) -> int | None:
        return self.returncode

    def kill9(self) -> None:
        self.returncode = -9

    def send_signal(self, sig: int) -> None:
        if sig == signal.SIGTERM and self.returncode is None:
            self.terminated = True
            self.returncode = 0

    def wait(self, timeout: float | None = None) -> int:
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        self.returncode = -9


class Sim:
    """Drives a Daemon through simulated time."""

    def __init__(self, monkeypatch, tmp_path, strategies: dict, durations: dict,
                 grace: int = 3600, shipper: bool = True) -> None:
        self.clock = SimClock(START.timestamp())
        clock = self.clock

        class SimDatetime(datetime):
            @classmethod
            def now(cls, tz=None):
                return datetime.fromtimestamp(clock.t, tz)

        monkeypatch.setattr(ap_sched_base, "datetime", SimDatetime)
        monkeypatch.setattr(ap_exec_base, "datetime", SimDatetime)
        self.policy = Policy.model_validate({
            "name": "sim", "strategies": strategies,
            "schedule": {"misfire_grace_time": grace, "shipper_backoff_min": 1,
                         "shipper_backoff_max": 300},
        })
        self.durations = durations
        self.runs: list[tuple[str, float, float]] = []
        self.records: list[RunRecord] = []
        self.running: dict[str, int] = {}
        self.max_parallel: dict[str, int] = {}
        self.procs: list[FakeShipper] = []
        self.events: list[tuple[float, object]] = []
        self.paused_until: float | None = None
        self.lock = threading.Lock()
        self.on_spawn = None
        sup = None
        if shipper:
            sup = ShipperSupervisor(self._spawn, clock, 1, 300, stable_after=60)
        paths = Paths(tmp_path / "status.json", tmp_path / "locks", tmp_path / "log")
        self.daemon = Daemon(self.policy, self.runner, clock=clock, tz=UTC, paths=paths,
                             shipper=sup, emit=lambda name, rec: self.records.append(rec),
                             event_log=lambda line: None)
        self.sched = SimScheduler(timezone=UTC, executors={"default": ThreadPoolExecutor(4)})
        self.daemon.configure(self.sched)
        self.sched.start()
        self.daemon.start_shipper()

    def _spawn(self) -> FakeShipper:
        p = FakeShipper()
        self.procs.append(p)
        if self.on_spawn is not None:
            self.on_spawn(p)
        return p

    def runner(self, name: str) -> dict:
        with self.lock:
            self.running[name] = self.running.get(name, 0) + 1
            self.max_parallel[name] = max(self.max_parallel.get(name, 0), self.running[name])
        start = self.clock.time()
        self.clock.sleep(self.durations[name])
        with self.lock:
            self.running[name] -= 1
            self.runs.append((name, start, self.clock.time()))
        return {"result": "ok", "backup_id": f"{name}-{len(self.runs)}", "stored_bytes": 1000,
                "raw_bytes": 4000}

    def at(self, when: float, action) -> None:
        self.events.append((when, action))

    def _instances(self) -> int:
        ex = self.sched._executors["default"]
        with ex._lock:
            return sum(ex._instances.values())

    def _quiesce(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            with self.clock.cond:
                if self._instances() == self.clock.asleep():
                    return
                self.clock.cond.wait(0.005)
            assert time.monotonic() < deadline, "job threads never settled"

    def drive(self, until: float) -> None:
        while True:
            self._quiesce()
            now = self.clock.t
            cands = [until]
            nrt = self.sched._jobstores["default"].get_next_run_time()
            if nrt is not None and (self.paused_until is None or now >= self.paused_until):
                cands.append(nrt.timestamp())
            if self.paused_until is not None and now < self.paused_until:
                cands.append(self.paused_until)
            for c in (self.clock.next_wake(), self.daemon.shipper and self.daemon.shipper.next_action()):
                if c is not None:
                    cands.append(c)
            cands += [w for w, _ in self.events]
            nxt = max(min(cands), now)
            if nxt > until or (nxt == until and now == until):
                return
            self.clock.advance_to(nxt)
            for ev in [e for e in self.events if e[0] <= nxt]:
                self.events.remove(ev)
                ev[1]()
            self._quiesce()
            if self.paused_until is None or self.clock.t >= self.paused_until:
                self.paused_until = None
                self.sched._process_jobs()
            self.daemon.tick()
            if nxt == until:
                self._quiesce()
                return

    def finish(self) -> None:
        """Let running jobs end, then stop the daemon as SIGTERM would."""
        self.daemon.stopping.set()
        while self._instances():
            self.clock.advance_to(self.clock.next_wake() or self.clock.t + 1)
            self._quiesce()
        self.daemon.shutdown(wait_jobs=5)


def _expected(start: datetime, end: datetime, match) -> list[float]:
    """Every whole minute in [start, end) that match() accepts, by brute force."""
    t = start.replace(second=0, microsecond=0) + timedelta(minutes=1)
    out = []
    while t < end:
        if match(t):
            out.append(t.timestamp())
        t += timedelta(minutes=1)
    return out


def _no_overlap(runs: list[tuple[str, float, float]], name: str) -> None:
    spans = sorted((s, e) for n, s, e in runs if n == name)
    for (s1, e1), (s2, _) in zip(spans, spans[1:], strict=False):
        assert e1 <= s2, f"{name} runs overlap: {s1}-{e1} and {s2}"


def test_two_weeks_cold_weekly_snapshots_6h_binlog_continuous(monkeypatch, tmp_path):
    sim = Sim(monkeypatch, tmp_path, {"cold": "0 3 * * 0", "snapshot": "0 */6 * * *",
                                      "binlog": "continuous"},
              {"cold": 40 * 60, "snapshot": 10 * 60})
    t0 = sim.clock.t
    kill1 = t0 + 3 * DAY + 12 * 3600
    sim.at(kill1, lambda: sim.procs[-1].kill9())
    # A crash loop: killed right after each restart twice, then left alone.
    sim.at(kill1 + 1.5, lambda: sim.procs[-1].kill9())
    sim.at(kill1 + 4, lambda: sim.procs[-1].kill9())
    end = t0 + 14 * DAY
    sim.drive(end)
    sim.finish()

    end_dt = START + timedelta(days=14)
    want_snap = _expected(START, end_dt, lambda t: t.minute == 0 and t.hour % 6 == 0)
    want_cold = _expected(START, end_dt, lambda t: t.minute == 0 and t.hour == 3 and t.weekday() == 6)
    assert len(want_snap) == 56 and len(want_cold) == 2
    assert [s for n, s, _ in sim.runs if n == "snapshot"] == want_snap
    assert [s for n, s, _ in sim.runs if n == "cold"] == want_cold
    assert [datetime.fromtimestamp(s, UTC).strftime("%a %H:%M") for n, s, _ in sim.runs
            if n == "cold"] == ["Sun 03:00", "Sun 03:00"]
    _no_overlap(sim.runs, "snapshot")
    _no_overlap(sim.runs, "cold")
    assert sim.max_parallel == {"snapshot": 1, "cold": 1}
    # One record (log line) per run, each with start, end, result, sizes and duration.
    assert len(sim.records) == 58 and all(r.result == "ok" for r in sim.records)
    line = sim.records[0].log_line("sim")
    for part in ("strategy=snapshot", "result=ok", "start=2026-01-05T06:00:00Z",
                 "end=2026-01-05T06:10:00Z", "duration=10.0 min", "stored=1000 B", "raw=3.9 KiB"):
        assert part in line, line

    # The shipper: started at once, restarted after each kill with 1 s then 2 s then 4 s of backoff.
    sup = sim.daemon.shipper
    starts = [t - t0 for kind, t, _ in sup.history if kind == "start"]
    exits = [t - t0 for kind, t, _ in sup.history if kind == "exit"]
    k = kill1 - t0
    assert exits == [k, k + 1.5, k + 4]
    assert starts == [0, k + 1, k + 1.5 + 2, k + 4 + 4]
    assert sup.restarts == 3
    assert sim.procs[-1].terminated, "SIGTERM on shutdown lets the shipper flush"

    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "stopped"
    assert status["jobs"]["snapshot"]["runs"] == 56 and status["jobs"]["cold"]["runs"] == 2
    assert status["jobs"]["snapshot"]["last"]["result"] == "ok"
    assert status["shipper"]["restarts"] == 3 and status["shipper"]["last_exit"] == 0


def test_shipper_backoff_grows_to_the_cap_and_resets_after_a_stable_run(monkeypatch, tmp_path):
    sim = Sim(monkeypatch, tmp_path, {"binlog": "continuous"}, {})
    t0 = sim.clock.t
    # Killed, then dying half a second after each of 11 restarts: 1, 2, 4 ... 256 s, then the cap.
    crashes = {"left": 11}

    def crash_soon(p: FakeShipper) -> None:
        if crashes["left"] > 0:
            crashes["left"] -= 1
            sim.at(sim.clock.t + 0.5, p.kill9)

    sim.on_spawn = crash_soon
    sim.at(sim.clock.t + 1, sim.procs[-1].kill9)
    sim.drive(sim.clock.t + 3000)
    delays = []
    hist = sim.daemon.shipper.history
    for (k1, t1, _), (k2, t2, _) in zip(hist, hist[1:], strict=False):
        if k1 == "exit" and k2 == "start":
            delays.append(t2 - t1)
    assert delays == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]
    # Now it runs for 10 minutes before dying: the delay falls back to 1 s.
    sim.at(sim.clock.t + 600, lambda: sim.procs[-1].kill9())
    sim.drive(sim.clock.t + 700)
    assert hist[-2][0] == "exit" and hist[-1][0] == "start" and hist[-1][1] - hist[-2][1] == 1
    assert sim.clock.t - t0 > 0
    sim.finish()


def test_a_run_longer_than_the_interval_never_overlaps_the_next(monkeypatch, tmp_path):
    sim = Sim(monkeypatch, tmp_path, {"snapshot": "0 */6 * * *"}, {"snapshot": 7 * 3600},
              shipper=False)
    sim.drive(sim.clock.t + 2 * DAY)
    sim.finish()
    _no_overlap(sim.runs, "snapshot")
    starts = [datetime.fromtimestamp(s, UTC).strftime("%d %H:%M") for n, s, _ in sim.runs]
    assert starts == ["05 06:00", "05 18:00", "06 06:00", "06 18:00"]
    skipped = [r for r in sim.records if r.result == "skipped"]
    assert [datetime.fromtimestamp(r.scheduled_at, UTC).strftime("%d %H:%M") for r in skipped] == \
        ["05 12:00", "06 00:00", "06 12:00", "07 00:00"]
    assert all("still going" in r.error for r in skipped)


def test_misfires_within_the_grace_run_late_and_beyond_it_are_skipped(monkeypatch, tmp_path):
    sim = Sim(monkeypatch, tmp_path, {"snapshot": "0 */6 * * *"}, {"snapshot": 60},
              grace=3600, shipper=False)
    t0 = sim.clock.t
    # The daemon is stalled from 05:00 to 06:30: the 06:00 run starts 30 min late.
    sim.drive(t0 + 5 * 3600)
    sim.paused_until = t0 + 6.5 * 3600 - 30
    sim.drive(t0 + 7 * 3600)
    assert [datetime.fromtimestamp(s, UTC).strftime("%H:%M") for _, s, _ in sim.runs] == ["06:30"]
    # Stalled from 11:00 to 20:00: 12:00 and 18:00 are both due; coalesced into one run, which is
    # beyond the grace time, so it is skipped and said so.
    sim.drive(t0 + 11 * 3600)
    sim.paused_until = t0 + 20 * 3600 - 30
    sim.drive(t0 + 25 * 3600)
    sim.finish()
    starts = [datetime.fromtimestamp(s, UTC).strftime("%d %H:%M") for _, s, _ in sim.runs]
    assert starts == ["05 06:30", "06 00:00"]
    missed = [r for r in sim.records if r.result == "skipped"]
    assert len(missed) == 1 and "misfire_grace_time" in missed[0].error
    assert datetime.fromtimestamp(missed[0].scheduled_at, UTC).strftime("%H:%M") == "18:00"


@pytest.mark.parametrize("group", [("cold", "snapshot"), ("prune", "verify"),
                                   ("snapshot", "snapshot_incremental")])
def test_strategies_sharing_a_lock_wait_for_each_other(monkeypatch, tmp_path, group):
    first, second = group
    sim = Sim(monkeypatch, tmp_path, {first: "0 3 * * *", second: "30 3 * * *"},
              {first: 3600, second: 600}, shipper=False)
    sim.drive(sim.clock.t + DAY)
    sim.finish()
    spans = {n: (s, e) for n, s, e in sim.runs}
    assert spans[first][1] <= spans[second][0], "the second waits until the first ends"
    assert spans[second][0] - spans[first][1] <= 2.0
    assert datetime.fromtimestamp(spans[first][0], UTC).strftime("%H:%M") == "03:00"


def test_a_week_of_a_weekly_full_and_hourly_physical_incrementals(monkeypatch, tmp_path):
    sim = Sim(monkeypatch, tmp_path, {"snapshot": "0 2 * * 0", "snapshot_incremental": "0 * * * *"},
              {"snapshot": 30 * 60, "snapshot_incremental": 5 * 60}, shipper=False)
    sim.drive(sim.clock.t + 7 * DAY)
    sim.finish()
    full = [(s, e) for n, s, e in sim.runs if n == "snapshot"]
    inc = [(s, e) for n, s, e in sim.runs if n == "snapshot_incremental"]
    assert len(full) == 1
    sunday_2am = datetime(2026, 1, 11, 2, 0, tzinfo=UTC).timestamp()
    assert sunday_2am <= full[0][0] <= sunday_2am + 5 * 60 + 2  # at 02:00, or after that hour's incremental
    assert len(inc) == 7 * 24  # every hour, the one beside the full included (one waits for the other)
    assert all(e <= full[0][0] or s >= full[0][1] for s, e in inc), "never while the full runs"
