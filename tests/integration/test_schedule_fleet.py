"""Many sources in one daemon (issue 20): `schedule run --policies DIR` with three sources and a
limit of one concurrent snapshot. The snapshots run one at a time (their manifests' start and
finish times do not overlap), every shipper keeps its loss window under 2 s meanwhile, and a
broken policy file is reported and skipped."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from backupkit.mysql.sandbox import free_port
from backupkit.repo.catalog import Catalog
from backupkit.storage import open_store
from tests.support import PrometheusServer, poll, run_cli
from tests.support.daemon import Daemon, fleet_env, fleet_policy, seconds_until_shipped
from tests.support.monitoring import browser, per_policy, wait_policies

RULES = Path(__file__).parents[2] / "docs" / "alerts.yml"

pytestmark = pytest.mark.timeout(240)


def _policy(tmp_path: Path, name: str, sb) -> Path:
    p = tmp_path / "policies" / f"{name}.toml"
    p.parent.mkdir(exist_ok=True)
    p.write_text(fleet_policy(tmp_path, name, sb, more='[snapshot]\nmax_rate = "3MB/s"\nparallel = 1\n'))
    return p


def _fill(sb) -> None:
    sb.sql("CREATE DATABASE app")
    sb.sql("CREATE TABLE app.t (id INT AUTO_INCREMENT PRIMARY KEY, c CHAR(128), v INT)")
    sb.sql("INSERT INTO app.t (c, v) SELECT SHA2(seq, 512), seq FROM seq_1_to_25000", database="app")


def test_three_sources_one_daemon_one_snapshot_at_a_time_shippers_keep_up(mariadb_factory, tmp_path):
    boxes = {f"src{i}": mariadb_factory(server_id=i + 1) for i in range(3)}
    for name, sb in boxes.items():
        _fill(sb)
        _policy(tmp_path, name, sb)
    (tmp_path / "policies" / "broken.toml").write_text("name = 'broken'\n[snapshot]\nparalel = 2\n")
    url = f"http://127.0.0.1:{free_port()}"
    daemon = Daemon(["schedule", "run", "--policies", str(tmp_path / "policies"),
                     "--max-concurrent-snapshots", "1", "--metrics-listen", url.removeprefix("http://")],
                    tmp_path / "daemon.log", fleet_env(tmp_path))
    urls = {name: f"file://{tmp_path / 'repos' / name}" for name in boxes}
    windows: list[float] = []
    try:
        deadline = time.monotonic() + 150
        snaps: dict[str, list] = {}
        while time.monotonic() < deadline:
            assert daemon.proc.poll() is None, daemon.text()[-3000:]
            for sb in boxes.values():
                sb.sql(f"INSERT INTO app.t (c, v) VALUES ('w', {int(time.time())})")
            for name, sb in boxes.items():
                if (tmp_path / "repos" / name).exists():
                    windows.append(seconds_until_shipped(sb, urls[name], name, 5.0))
            snaps = {n: Catalog(open_store(u)).backups(kind="snapshot") for n, u in urls.items()
                     if (tmp_path / "repos" / n).exists()}
            if len(snaps) == 3 and all(snaps.values()):
                break
            time.sleep(0.3)
        assert len(snaps) == 3 and all(snaps.values()), daemon.text()[-3000:]
        _check_fleet_endpoint(url, tmp_path)
    finally:
        daemon.stop()
    text = daemon.text()
    assert "event=policy_error" in text and "broken.toml" in text and "paralel" in text
    firsts = sorted((s[0].started_at, s[0].finished_at, n) for n, s in snaps.items())
    for (_, a1, an), (b0, _, bn) in zip(firsts, firsts[1:], strict=False):
        assert a1 <= b0, f"snapshots of {an} and {bn} overlapped: {firsts}"
    assert all(f[1] - f[0] > 0.5 for f in firsts)  # each took a while (3MB/s): overlap was possible
    assert windows and max(windows) < 2.0, sorted(windows)[-5:]
    print(f"loss windows: {len(windows)} samples, max {max(windows):.3f} s; snapshots {firsts}")

    r = run_cli("schedule", "status", "--policies", str(tmp_path / "policies"), "--json",
                env={"BACKUPKIT_STATE_DIR": str(tmp_path / "state")})
    out = json.loads(r.stdout)
    assert sorted(p["policy"] for p in out["policies"]) == ["src0", "src1", "src2"]
    assert [b["file"].endswith("broken.toml") for b in out["broken"]] == [True]
    assert all(p["jobs"]["snapshot"]["last"]["result"] == "ok" for p in out["policies"])
    # without a daemon (cron): the fleet's page and metrics, read once
    page, prom = tmp_path / "fleet.html", tmp_path / "textfile" / "fleet.prom"
    names = ["src0", "src1", "src2"]
    r = run_cli("status", "--policies", str(tmp_path / "policies"), "--html", str(page), "--json",
                env={"BACKUPKIT_STATE_DIR": str(tmp_path / "state")})
    assert sorted(p["summary"]["policy"] for p in json.loads(r.stdout)["policies"]) == names
    assert page.read_text().count("<tr class=source ") == 3
    r = run_cli("metrics", "--policies", str(tmp_path / "policies"), "--textfile", str(prom),
                env={"BACKUPKIT_STATE_DIR": str(tmp_path / "state")})
    assert r.returncode == 0, r.stderr
    got = {s.labels["policy"]: s.value for f in text_string_to_metric_families(prom.read_text())
           for s in f.samples if s.name == "backupkit_backups" and s.labels.get("strategy") == "snapshot"}
    assert sorted(got) == names and min(got.values()) >= 1, got
    r = run_cli("schedule", "cron", "--policies", str(tmp_path / "policies"), "--json")
    cron = json.loads(r.stdout)
    assert sorted(p["policy"] for p in cron["policies"]) == ["src0", "src1", "src2"]
    assert all(any("snapshot" in ln for ln in p["lines"]) for p in cron["policies"])


def _check_fleet_endpoint(url: str, tmp_path: Path) -> None:
    """One endpoint covers the three sources: metrics labelled by policy (scraped by a real
    Prometheus with the unchanged rules), and the overview page in a real browser."""
    names = ["src0", "src1", "src2"]
    up = wait_policies(url, "backupkit_binlog_shipper_up", lambda v: sorted(v) == names
                       and all(x == 1.0 for x in v.values()), timeout=30)
    assert sorted(up) == names
    snaps = wait_policies(url, "backupkit_backups", lambda v: sorted(v) == names
                          and all(x >= 1 for x in v.values()), timeout=40, strategy="snapshot")
    assert all(x >= 1 for x in snaps.values())
    lag = per_policy(url, "backupkit_binlog_lag_seconds")
    assert sorted(lag) == names and max(lag.values()) < 2.0, lag
    assert per_policy(url, "backupkit_policy_error") == {"broken": 1.0}
    prom = PrometheusServer(tmp_path / "prom", [url.removeprefix("http://")], RULES).start()
    try:
        got = poll(lambda: prom.query("backupkit_binlog_shipper_up == 1"), lambda got: len(got) == 3, 30)
        assert sorted(r["metric"]["policy"] for r in got) == names, got
        assert not prom.firing().get("BackupkitShipperLagging")
    finally:
        prom.stop()
    driver = browser()
    try:
        from selenium.webdriver.common.by import By

        driver.get(url + "/")
        rows = driver.find_elements(By.CSS_SELECTOR, "#fleet tr.source")
        assert sorted(r.get_attribute("data-policy") for r in rows) == names
        assert len(driver.find_elements(By.CSS_SELECTOR, "svg.timeline rect.interval")) >= 3
        assert driver.find_elements(By.CSS_SELECTOR, "#broken li.broken")
        driver.find_element(By.LINK_TEXT, "src1").click()
        assert driver.title == "backupkit: src1"
        assert driver.find_elements(By.CSS_SELECTOR, "#loss tr.strategy[data-strategy=snapshot]")
        driver.find_element(By.ID, "back").click()
        assert driver.title.startswith("backupkit fleet")
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        assert errors == [], errors
        shot = os.environ.get("BACKUPKIT_FLEET_SCREENSHOT")  # docs/fleet-page.png
        if shot:
            driver.get(url + "/")
            driver.save_screenshot(shot)
    finally:
        driver.quit()
