"""The alert rules, checked by the real promtool and evaluated by a real Prometheus.

A MetricsServer serves a status with every fault at once (and then a healthy one); Prometheus
scrapes it every second with docs/alerts.yml (its `for:` shortened) and every alert fires;
none fires on the healthy status.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from pathlib import Path

from backupkit.monitor.server import MetricsServer
from tests.support import PrometheusServer, poll
from tests.unit.monitor.helpers import faulty, healthy

RULES = Path(__file__).parents[2] / "docs" / "alerts.yml"
EXPECTED = {"BackupkitShipperLagging", "BackupkitBinlogGap", "BackupkitBackupOverdue", "BackupkitJobFailed",
            "BackupkitRestoreDrillFailed", "BackupkitStorageTargetBehind", "BackupkitLossWindowOverObjective"}


def test_promtool_accepts_the_rules():
    r = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 10 rules found" in r.stdout


def _current(st):
    """A fixture status dated now (the fixtures are dated; keep scrapes current)."""
    st.now = time.time()
    return st


@contextlib.contextmanager
def _prometheus(tmp_path, srv: MetricsServer):
    """A real Prometheus scraping srv with docs/alerts.yml, every `for:` shortened to 0 s; srv and
    Prometheus are stopped on leaving."""
    rules = tmp_path / "alerts.yml"
    rules.write_text(re.sub(r"for: \S+", "for: 0s", RULES.read_text()))
    try:
        prom = PrometheusServer(tmp_path / "prom", [srv.url.removeprefix("http://")], rules).start()
        try:
            yield prom
        finally:
            prom.stop()
    finally:
        srv.stop()


def test_every_fault_fires_its_alert_in_a_real_prometheus(tmp_path):
    state = {"st": faulty}
    srv = MetricsServer("127.0.0.1:0", lambda: _current(state["st"]())).start()
    with _prometheus(tmp_path, srv) as prom:
        got = poll(prom.firing, lambda got: set(got) >= EXPECTED, 60)
        assert set(got) >= EXPECTED, f"missing {EXPECTED - set(got)}; firing {sorted(got)}"
        assert {a["target"] for a in got["BackupkitStorageTargetBehind"]} == {"west"}
        assert {a["strategy"] for a in got["BackupkitJobFailed"]} == {"cold"}
        # healthy again: every alert resolves
        state["st"] = healthy
        poll(prom.firing, lambda got: not got, 60)
        assert prom.firing() == {}


def test_the_rules_fire_per_policy_on_the_fleet_endpoint(tmp_path):
    """One endpoint for a fleet (every series labelled with its policy): the unchanged rules match
    each policy's series with its own thresholds, and fire for the faulty policy only."""
    from backupkit.monitor.fleet import FleetEntry, fleet_routes
    from backupkit.monitor.metrics import MonitorState

    def entry(name: str, make) -> FleetEntry:
        state = MonitorState(name)
        state.status = lambda now=None: _current(make())  # type: ignore[method-assign]
        return FleetEntry(name, f"/p/{name}.toml", state)

    entries = [entry("good", healthy), entry("bad", faulty), entry("also-good", healthy),
               FleetEntry("broken", "/p/broken.toml", None, "not TOML")]
    srv = MetricsServer("127.0.0.1:0", routes=fleet_routes(lambda: entries)).start()
    with _prometheus(tmp_path, srv) as prom:
        got = poll(prom.firing, lambda got: set(got) >= EXPECTED | {"BackupkitPolicyBroken"}, 60)
        assert set(got) >= EXPECTED, f"missing {EXPECTED - set(got)}; firing {sorted(got)}"
        assert {a.get("policy") for name, alerts in got.items() for a in alerts
                if name != "BackupkitPolicyBroken"} == {"bad"}, got
        assert {a["file"] for a in got.get("BackupkitPolicyBroken", [])} == {"/p/broken.toml"}, got
        assert prom.query("count(backupkit_healthy)")[0]["value"][1] == "3"
