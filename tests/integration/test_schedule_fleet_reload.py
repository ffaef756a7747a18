"""A fleet daemon (`schedule run --policies DIR`) with real servers, while its policies change and
one of its sources dies (issue 20):
- hot reload: a changed policy restarts only that source's jobs and shipper, a new file starts a
  source, a removed one stops it, and an edit that does not load is reported (log, metrics,
  `schedule status`) while the previous version keeps running; meanwhile the other sources keep
  shipping with a loss window under 2 s and their shippers are never restarted;
- a source whose mariadbd is killed: the others keep shipping, the dead one is reported in
  `schedule status --policies --check`, the metrics and the page.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from backupkit.mysql.sandbox import free_port
from tests.support import poll, run_cli
from tests.support.daemon import Daemon, fleet_env, fleet_policy, seconds_until_shipped
from tests.support.monitoring import per_policy, wait_policies

pytestmark = pytest.mark.timeout(300)


def _text(tmp_path: Path, name: str, sb, snapshot: str = "0 3 * * *", extra: str = "") -> str:
    """extra: more [metrics] keys."""
    return fleet_policy(tmp_path, name, sb, snapshot, backoff_max=2,
                        more=f"[metrics]\nlag_threshold = 3\nrefresh_interval = 2\n{extra}\n")


def _write(path: Path, text: str) -> None:
    """As an editor that saves atomically does (the daemon never reads half a file)."""
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _window(sb, name: str, repos: Path, timeout: float = 5.0) -> float:
    """Write a row; seconds until the repository holds the source's binlog through it."""
    sb.sql(f"INSERT INTO app.t (v) VALUES ({int(time.time())})")
    return seconds_until_shipped(sb, f"file://{repos / name}", name, timeout)


class Fleet(Daemon):
    """The fleet daemon process, its log, and what the test measures while it runs."""

    def __init__(self, tmp_path: Path, args: list[str]) -> None:
        self.tmp = tmp_path
        self.env = fleet_env(tmp_path)
        super().__init__(["schedule", "run", "--policies", str(tmp_path / "policies"), *args],
                         tmp_path / "daemon.log", self.env)
        self.windows: dict[str, list[float]] = {}

    def status(self, name: str) -> dict:
        return json.loads((self.tmp / "state" / f"{name}.status.json").read_text())

    def shipper_pid(self, name: str) -> int | None:
        try:
            return (self.status(name).get("shipper") or {}).get("pid")
        except (OSError, ValueError):
            return None

    def wait_log(self, needle: str, boxes: dict, watch: list[str], timeout: float = 60) -> None:
        """Until the log holds needle; meanwhile measure the loss window of the watched sources."""
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            assert self.proc.poll() is None, self.text()[-3000:]
            assert time.monotonic() < deadline, f"no {needle!r} in the log: {self.text()[-3000:]}"
            self.measure(boxes, watch)
            time.sleep(0.2)

    def measure(self, boxes: dict, watch: list[str], seconds: float = 0.0) -> None:
        end = time.monotonic() + seconds
        while True:
            for name in watch:
                self.windows.setdefault(name, []).append(_window(boxes[name], name, self.tmp / "repos"))
            if time.monotonic() >= end:
                return

    def print_windows(self) -> dict[str, list[float]]:
        """Print the largest loss window and the sample count of each source; the windows."""
        w = self.windows
        print("loss windows (s), max per source:", {n: round(max(v), 3) for n, v in w.items()},
              "samples:", {n: len(v) for n, v in w.items()})
        return w


def _fill(sb) -> None:
    sb.sql("CREATE DATABASE app")
    sb.sql("CREATE TABLE app.t (id INT AUTO_INCREMENT PRIMARY KEY, v INT)")


def test_policies_reload_one_source_at_a_time_and_the_others_keep_shipping(mariadb_factory, tmp_path):
    boxes = {f"src{i}": mariadb_factory(server_id=i + 1) for i in range(3)}
    for sb in boxes.values():
        _fill(sb)
    pol = {n: tmp_path / "policies" / f"{n}.toml" for n in boxes}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # the endpoint's address comes from a policy's [metrics] listen
    _write(pol["src0"], _text(tmp_path, "src0", boxes["src0"], extra=f'listen = "127.0.0.1:{port}"'))
    src1_text = _text(tmp_path, "src1", boxes["src1"])
    _write(pol["src1"], src1_text)
    fleet = Fleet(tmp_path, ["--reload-interval", "0.5"])
    try:
        wait_policies(url, "backupkit_binlog_shipper_up", lambda v: v == {"src0": 1.0, "src1": 1.0}, 60)
        fleet.measure(boxes, ["src0", "src1"], seconds=2)
        pids = {n: fleet.shipper_pid(n) for n in ("src0", "src1")}
        assert all(pids.values()), pids

        # 1. edit src0's cron: src0's jobs restart with the new schedule, its shipper keeps running
        _write(pol["src0"], _text(tmp_path, "src0", boxes["src0"], snapshot="30 4 * * *",
                                  extra=f'listen = "127.0.0.1:{port}"'))
        fleet.wait_log("event=reloaded shipper=kept policy=src0", boxes, ["src0", "src1"])
        assert fleet.status("src0")["jobs"]["snapshot"]["schedule"] == "30 4 * * *"
        fleet.measure(boxes, ["src0", "src1"], seconds=2)
        assert fleet.shipper_pid("src0") == pids["src0"], "src0's shipper was kept"
        # ... and an edit its shipper reads restarts that shipper too
        _write(pol["src0"], _text(tmp_path, "src0", boxes["src0"], snapshot="30 4 * * *",
                                  extra=f'listen = "127.0.0.1:{port}"').replace("heartbeat = 0.5",
                                                                                "heartbeat = 0.4"))
        fleet.wait_log("event=reloaded policy=src0", boxes, ["src1"])
        poll(lambda: fleet.shipper_pid("src0"), lambda pid: pid not in (None, pids["src0"]), 20, 0.2)
        assert fleet.shipper_pid("src0") not in (None, pids["src0"]), "src0's shipper restarted"
        fleet.measure(boxes, ["src0", "src1"], seconds=2)

        # 2. a third policy file: src2 starts; the endpoint covers it
        _write(pol["src2"], _text(tmp_path, "src2", boxes["src2"]))
        fleet.wait_log("event=added policy=src2", boxes, ["src0", "src1"])
        wait_policies(url, "backupkit_binlog_shipper_up",
                      lambda v: v == {"src0": 1.0, "src1": 1.0, "src2": 1.0}, 30)
        fleet.measure(boxes, ["src0", "src1", "src2"], seconds=2)

        # 3. a broken edit of src1: reported, and the previous version keeps shipping
        _write(pol["src1"], src1_text.replace("heartbeat", "hartbeat"))
        fleet.wait_log("event=reload_error policy=src1", boxes, ["src0", "src2"])
        line = next(ln for ln in fleet.text().splitlines() if "event=reload_error policy=src1" in ln)
        assert "hartbeat" in line and "the previous version keeps running" in line
        wait_policies(url, "backupkit_policy_error", lambda v: v == {"src1": 1.0}, 15)
        fleet.measure(boxes, ["src0", "src1", "src2"], seconds=2)
        r = run_cli("schedule", "status", "--policies", str(tmp_path / "policies"), "--json", env=fleet.env)
        out = json.loads(r.stdout)
        assert sorted(p["policy"] for p in out["policies"]) == ["src0", "src2"] and not out["healthy"]
        (b,) = out["broken"]
        assert b["file"].endswith("src1.toml") and "hartbeat" in b["error"] and b["running"] == "src1"
        assert fleet.status("src1")["reload_error"] and "hartbeat" in fleet.status("src1")["reload_error"]
        page = urllib.request.urlopen(url + "/", timeout=5).read().decode()
        assert "the previous version keeps running" in page and page.count("<tr class=source ") == 3

        # 4. the edit undone: nothing restarts, the error is gone
        _write(pol["src1"], src1_text)
        fleet.wait_log("event=reload_reverted policy=src1", boxes, ["src0", "src2"])
        wait_policies(url, "backupkit_policy_error", lambda v: v == {}, 15)
        assert fleet.shipper_pid("src1") == pids["src1"], "src1's shipper never restarted"

        # 5. src2's file removed: src2 stops, the others go on
        pol["src2"].unlink()
        fleet.wait_log("event=removed policy=src2", boxes, ["src0", "src1"])
        wait_policies(url, "backupkit_binlog_shipper_up", lambda v: v == {"src0": 1.0, "src1": 1.0}, 15)
        assert fleet.status("src2")["state"] == "stopped"
        fleet.measure(boxes, ["src0", "src1"], seconds=2)
    finally:
        rc = fleet.stop()
    assert rc == 0, fleet.text()[-3000:]
    w = fleet.print_windows()
    # src1 shipped through every step (its shipper never restarted); src0 through its cron edit;
    # the others between their steps
    assert len(w["src1"]) > 10 and max(w["src1"]) < 2.0, sorted(w["src1"])[-5:]
    assert all(max(v) < 2.0 for v in w.values()), {n: sorted(v)[-3:] for n, v in w.items()}


def test_a_source_that_dies_is_reported_and_the_others_keep_shipping(mariadb_factory, tmp_path):
    boxes = {f"src{i}": mariadb_factory(server_id=i + 1) for i in range(3)}
    for name, sb in boxes.items():
        _fill(sb)
        _write(tmp_path / "policies" / f"{name}.toml", _text(tmp_path, name, sb))
    url = f"http://127.0.0.1:{free_port()}"
    # reloads on SIGHUP only
    fleet = Fleet(tmp_path, ["--metrics-listen", url.removeprefix("http://"), "--reload-interval", "0"])
    names = ["src0", "src1", "src2"]
    try:
        wait_policies(url, "backupkit_binlog_shipper_up", lambda v: sorted(v) == names
                      and set(v.values()) == {1.0}, 60)
        fleet.measure(boxes, names, seconds=2)
        boxes["src1"].kill()  # SIGKILL: the source dies mid-run
        t_kill = time.monotonic()
        while per_policy(url, "backupkit_healthy").get("src1") != 0.0:
            assert time.monotonic() - t_kill < 30, per_policy(url, "backupkit_healthy")
            fleet.measure(boxes, ["src0", "src2"])
        print(f"src1 reported down {time.monotonic() - t_kill:.1f} s after its mariadbd was killed")
        fleet.measure(boxes, ["src0", "src2"], seconds=5)
        assert per_policy(url, "backupkit_healthy") == {"src0": 1.0, "src1": 0.0, "src2": 1.0}
        assert per_policy(url, "backupkit_binlog_shipper_up") == {"src0": 1.0, "src1": 0.0, "src2": 1.0}
        # (within SHIPPER_START_GRACE of the daemon's start it counts as lagging, then as down)
        assert wait_policies(url, "backupkit_problems", lambda v: v == {"src1": 1.0}, 30,
                             kind="shipper_down") == {"src1": 1.0}
        assert per_policy(url, "backupkit_binlog_lag_seconds")["src1"] > 3
        r = run_cli("schedule", "status", "--policies", str(tmp_path / "policies"), "--check", "--json",
                    env=fleet.env)
        assert r.returncode == 1, r.stdout + r.stderr
        out = {p["policy"]: p for p in json.loads(r.stdout)["policies"]}
        assert out["src0"]["healthy"] and out["src2"]["healthy"] and not out["src1"]["healthy"]
        assert any("lost the source and is reconnecting" in p and "Connection refused" in p
                   for p in out["src1"]["problems"]), out["src1"]["problems"]
        page = urllib.request.urlopen(url + "/", timeout=5).read().decode()
        assert 'data-policy="src1" data-healthy="0"' in page and 'data-policy="src0" data-healthy="1"' in page
        fleet.measure(boxes, ["src0", "src2"], seconds=3)
        # the operator takes the dead source out: SIGHUP reads the folder again
        (tmp_path / "policies" / "src1.toml").unlink()
        fleet.proc.send_signal(signal.SIGHUP)
        fleet.wait_log("event=removed policy=src1", boxes, ["src0", "src2"], timeout=60)
        assert "event=sighup" in fleet.text()
        wait_policies(url, "backupkit_healthy", lambda v: v == {"src0": 1.0, "src2": 1.0}, 15)
    finally:
        rc = fleet.stop()
    assert rc == 0, fleet.text()[-3000:]
    w = fleet.print_windows()
    assert max(w["src0"]) < 2.0 and max(w["src2"]) < 2.0, {n: sorted(v)[-3:] for n, v in w.items()}
