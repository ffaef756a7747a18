"""`schedule run --metrics-listen` with a real Prometheus: scrape the daemon, stop its shipper
(SIGSTOP), and the lag grows and BackupkitShipperLagging fires (docs/alerts.yml, unchanged);
the shipper resumes and the lag falls back. The daemon also serves the status page at /.
Bounded: each wait has its own deadline, the whole test takes about a minute."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path

from backupkit.mysql.sandbox import free_port
from tests.support import PrometheusServer, poll, run_cli
from tests.support.daemon import Daemon
from tests.support.monitoring import Receiver, browser, make_history, scrape, wait_metric

RULES = Path(__file__).parents[2] / "docs" / "alerts.yml"


def test_daemon_metrics_and_the_shipper_alert_in_a_real_prometheus(mariadb, tmp_path):
    sb = mariadb
    port = free_port()
    rx = Receiver()  # the [notify] webhook
    policy, env = make_history(sb, tmp_path, "mon", f"""
[binlog]
sync_interval = 0.2
heartbeat = 0.5
[metrics]
listen = "127.0.0.1:{port}"
lag_threshold = 3
refresh_interval = 5
[notify]
webhook = "{rx.url}"
events = ["lag", "recovery"]
retries = 1
""")
    status_file = tmp_path / "state" / "mon.status.json"
    url = f"http://127.0.0.1:{port}"
    daemon = Daemon(["--policy", str(policy), "schedule", "run"], tmp_path / "daemon.log")
    prom = None
    try:
        m = wait_metric(url, lambda m: m.get("backupkit_binlog_shipper_up") == 1.0
                     and m.get("backupkit_daemon_up") == 1.0, timeout=40)
        assert m["backupkit_binlog_lag_seconds"] <= 2.0
        prom = PrometheusServer(tmp_path / "prom", [f"127.0.0.1:{port}"], RULES).start()
        for i in range(20):
            sb.sql(f"INSERT INTO app.t (v) VALUES ({i})")
            time.sleep(0.1)
        poll(lambda: prom.query("backupkit_binlog_shipper_up == 1"), bool, 20)
        assert prom.query("backupkit_binlog_shipper_up == 1"), "prometheus scrapes the daemon"
        assert not prom.firing().get("BackupkitShipperLagging")
        # the fault: the shipper stops (SIGSTOP: the daemon does not restart a stopped process)
        shipper_pid = int(json.loads(status_file.read_text())["shipper"]["pid"])
        os.kill(shipper_pid, signal.SIGSTOP)
        t_stop = time.monotonic()
        try:
            sb.sql("INSERT INTO app.t (v) VALUES (100)")
            a = wait_metric(url, lambda m: m["backupkit_binlog_lag_seconds"] > 3, timeout=15)
            time.sleep(1.5)
            b = scrape(url)
            assert b["backupkit_binlog_lag_seconds"] > a["backupkit_binlog_lag_seconds"] + 1, "the lag grows"
            wait_metric(url, lambda m: m["backupkit_binlog_shipper_up"] == 0.0, timeout=15)
            firing = poll(prom.firing, lambda firing: "BackupkitShipperLagging" in firing, 60, 1)
            assert "BackupkitShipperLagging" in firing, firing
            fired_after = time.monotonic() - t_stop
            assert fired_after < 60
            page = urllib.request.urlopen(url + "/", timeout=5).read().decode()
            assert "the binlog shipper has not reported" in page and 'class="interval"' in page
            shot = os.environ.get("BACKUPKIT_PAGE_SCREENSHOT")
            if shot:
                _screenshot(url, shot)
        finally:
            os.kill(shipper_pid, signal.SIGCONT)
        m = wait_metric(url, lambda m: m["backupkit_binlog_lag_seconds"] <= 2.0
                     and m["backupkit_binlog_shipper_up"] == 1.0, timeout=30)
        r = run_cli("schedule", "status", "--check", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        # the webhook heard the lag, then the recovery
        poll(lambda: rx.bodies, lambda bodies: any(b["event"] == "recovery" for b in bodies), 15, 0.2)
        events = [(b["event"], b["kind"]) for b in rx.bodies]
        assert ("lag", "shipper_lagging") in events and any(e == "recovery" for e, _ in events), events
        assert rx.bodies[0]["text"].startswith(":hourglass: backupkit mon: lag:")
    finally:
        rx.close()
        if prom is not None:
            prom.stop()
        rc = daemon.stop()
    assert rc == 0, daemon.text()[-3000:]


def _screenshot(url: str, path: str) -> None:
    """The page as the daemon serves it, for docs/ (BACKUPKIT_PAGE_SCREENSHOT=docs/status-page.png)."""
    driver = browser()
    try:
        driver.get(url + "/")
        driver.save_screenshot(path)
    finally:
        driver.quit()
