"""Helpers of the monitoring tests: scrape /metrics, wait for a metric, a headless browser, and a
repository history with every strategy and a gap."""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support import run_cli
from tests.support.shipping import purge_to_current


def _samples(url: str) -> Iterator:
    """Every sample of one scrape of url's /metrics."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    for fam in text_string_to_metric_families(text):
        yield from fam.samples


def scrape(url: str) -> dict[str, float]:
    """name{labels} -> value; unlabelled series under their bare name as well."""
    return {s.name: s.value for s in _samples(url)}


def per_policy(url: str, name: str, **labels: str) -> dict[str, float]:
    """policy -> value of one series of a fleet endpoint (the samples matching labels)."""
    return {s.labels["policy"]: s.value for s in _samples(url)
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())}


def _wait_scrape(read, cond, timeout: float, interval: float, what: str) -> dict[str, float]:
    """read() until cond holds on what it returns (a refused connection counts as not yet)."""
    deadline = time.monotonic() + timeout
    last: dict[str, float] = {}
    while time.monotonic() < deadline:
        try:
            last = read()
            if cond(last):
                return last
        except OSError:
            pass
        time.sleep(interval)
    raise AssertionError(f"timed out waiting on {what}; last scrape: {last}")


def wait_policies(url: str, name: str, cond, timeout: float = 30, **labels: str) -> dict[str, float]:
    """Scrape until cond(per_policy(...)) holds; the last values in the error otherwise."""
    return _wait_scrape(lambda: per_policy(url, name, **labels), cond, timeout, 0.3,
                        f"{name}{labels or ''}")


def wait_metric(url: str, cond, timeout: float = 30) -> dict[str, float]:
    """Scrape until cond(scrape(url)) holds; the last scrape in the error otherwise."""
    return _wait_scrape(lambda: scrape(url), cond, timeout, 0.2, url + "/metrics")


def browser():
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


def make_history(sb, tmp_path: Path, name: str = "page-test", extra: str = "") -> tuple[Path, dict[str, str]]:
    """A policy with every strategy (extra: more TOML sections), and a repository holding each:
    a cold backup, a snapshot, shipped binlog, a purge gap, shipping restarted after it, and a
    second snapshot."""
    repo = tmp_path / "repo"
    policy = tmp_path / "page.toml"
    policy.write_text(f"""
name = "{name}"
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
status_file = "{tmp_path / 'state' / (name + '.status.json')}"
lock_dir = "{tmp_path / 'locks'}"
log_dir = "{tmp_path / 'log'}"
{extra}
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
    purge_to_current(sb)
    r = run_cli("binlog", "ship", "--once", "--restart-from-current", env=env)
    assert r.returncode == 0 and "GAP" in r.stderr, r.stderr
    time.sleep(1.0)
    assert run_cli("snapshot", env=env).returncode == 0
    for i in range(3):
        sb.sql(f"INSERT INTO app.t (v) VALUES ({200 + i})")
        time.sleep(1.0)
    assert run_cli("binlog", "ship", "--once", env=env).returncode == 0
    return policy, env


class Receiver:
    """A local HTTP server that records the JSON bodies POSTed to it (and can refuse some)."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict] = []
        self.tries = 0
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                outer.tries += 1
                data = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.tries <= fail_first:
                    self.send_response(503)
                    self.end_headers()
                    return
                outer.bodies.append(json.loads(data))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *a) -> None:
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
