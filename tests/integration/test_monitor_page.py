"""The status page of a real repository, in a real headless browser (Debian's chromium, driven
by selenium through chromium-driver): no console error, an interval, a gap, every strategy.

The repository: a cold backup, a snapshot, shipped binlog, a purge gap, shipping restarted after
it, and a second snapshot (so time after the gap is restorable again).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.support import run_cli


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1100,1500"):
        opts.add_argument(a)
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(shutil.which("chromedriver") or "/usr/bin/chromedriver")
    return webdriver.Chrome(service=service, options=opts)


def _purge_to(sb, name: str) -> None:
    for _ in range(40):  # PURGE keeps files until InnoDB's binlog checkpoint moves on
        sb.sql(f"PURGE BINARY LOGS TO '{name}'")
        if all(r[0] >= name for r in sb.sql("SHOW BINARY LOGS")):
            return
        time.sleep(0.25)
    raise AssertionError("the binlog was not purged")


def make_history(sb, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A policy with every strategy, and a repository holding each, with a gap."""
    repo = tmp_path / "repo"
    policy = tmp_path / "page.toml"
    policy.write_text(f"""
name = "page-test"
[source]
url = "{sb.url}"
start_command = "{sb.start_command()}"
pid_file = "{sb.pid_file}"
[storage]
url = "file://{repo}"
[strategies]
cold = "0 3 * * 0"
snapshot = "0 * * * *"
binlog = "continuous"
verify = "30 4 * * *"
[schedule]
status_file = "{tmp_path / 'state' / 'page-test.status.json'}"
lock_dir = "{tmp_path / 'locks'}"
log_dir = "{tmp_path / 'log'}"
""")
    env = {"BACKUPKIT_POLICY": str(policy)}
    sb.sql("CREATE DATABASE app")
    sb.sql("CREATE TABLE app.t (id INT PRIMARY KEY AUTO_INCREMENT, v INT)")
    assert run_cli("cold", env=env).returncode == 0
    sb.sql("INSERT INTO app.t (v) VALUES (1)")
    r = run_cli("snapshot", env=env)
    assert r.returncode == 0, r.stderr
    for i in range(3):
        sb.sql(f"INSERT INTO app.t (v) VALUES ({i})")
        time.sleep(1.0)
    assert run_cli("binlog", "ship", "--once", env=env).returncode == 0
    time.sleep(1.0)
    sb.sql("INSERT INTO app.t (v) VALUES (100)")  # never shipped
    sb.sql("FLUSH BINARY LOGS")
    time.sleep(1.0)
    sb.sql("INSERT INTO app.t (v) VALUES (101)")
    last = sb.sql("SHOW MASTER STATUS")[0][0]
    _purge_to(sb, last)
    r = run_cli("binlog", "ship", "--once", "--restart-from-current", env=env)
    assert r.returncode == 0 and "GAP" in r.stderr, r.stderr
    time.sleep(1.0)
    assert run_cli("snapshot", env=env).returncode == 0
    for i in range(3):
        sb.sql(f"INSERT INTO app.t (v) VALUES ({200 + i})")
        time.sleep(1.0)
    assert run_cli("binlog", "ship", "--once", env=env).returncode == 0
    return policy, env


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

    try:
        driver = _browser()
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
