"""The status page of a real repository, in a real headless browser (Debian's chromium, driven
by selenium through chromium-driver): no console error, an interval, a gap, every strategy.

The repository: a cold backup, a snapshot, shipped binlog, a purge gap, shipping restarted after
it, and a second snapshot (so time after the gap is restorable again).
"""

from __future__ import annotations

import json
import os

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import run_cli
from tests.support.monitoring import browser, make_history


def test_status_page_in_a_real_browser(mariadb, tmp_path):
    policy, env = make_history(mariadb, tmp_path)
    page = tmp_path / "status.html"
    r = run_cli("status", "--html", str(page), "--json", env=env)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    (src,) = data["repository"]["sources"]
    # the cold backup alone (before shipping began), the first snapshot to the gap, the second on
    assert len(src["intervals"]) == 3 and len(src["gaps"]) == 1, src
    assert {s["strategy"] for s in data["strategies"]} >= {"cold", "snapshot", "binlog", "verify"}
    human = run_cli("status", env=env)
    assert "loss window if the server died now" in human.stdout and "gap" in human.stdout
    # the same state for node_exporter's textfile collector
    prom = tmp_path / "textfile" / "backupkit.prom"
    assert run_cli("metrics", "--textfile", str(prom), env=env).returncode == 0
    got = {s.name: s.value for f in text_string_to_metric_families(prom.read_text()) for s in f.samples
           if not s.labels or s.labels.get("strategy") in (None, "cold")}
    assert got["backupkit_binlog_gaps"] == 1 and got["backupkit_backups"] == 1
    assert got["backupkit_restorable_oldest_timestamp_seconds"] < \
        got["backupkit_restorable_newest_timestamp_seconds"]

    try:
        driver = browser()
    except Exception as exc:  # pragma: no cover - the machine lacks chromium
        pytest.fail(f"no headless chromium: {exc}")
    try:
        driver.get(page.as_uri())
        from selenium.webdriver.common.by import By

        assert driver.title == "backupkit: page-test"
        intervals = driver.find_elements(By.CSS_SELECTOR, "svg.timeline rect.interval")
        gaps = driver.find_elements(By.CSS_SELECTOR, "svg.timeline rect.gap")
        assert len(intervals) == 3 and len(gaps) == 1
        assert all(e.size["width"] > 0 for e in intervals + gaps)
        for kind in ("cold", "snapshot"):
            assert driver.find_elements(By.CSS_SELECTOR, f"svg.timeline g.base-{kind}")
        rows = {e.get_attribute("data-strategy")
                for e in driver.find_elements(By.CSS_SELECTOR, "#loss tr.strategy")}
        assert rows == {"cold", "snapshot", "binlog"}
        jobs = {e.get_attribute("data-job") for e in driver.find_elements(By.CSS_SELECTOR, "#jobs tr.job")}
        assert jobs >= {"cold", "snapshot", "binlog", "verify"}
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        assert errors == [], errors
        shot = os.environ.get("BACKUPKIT_PAGE_SCREENSHOT")
        if shot:
            driver.save_screenshot(shot)
    finally:
        driver.quit()
