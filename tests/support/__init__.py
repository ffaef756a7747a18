"""Shared test helpers: real S3 server processes, a source with its CLI environment, table
checksums, CLI runs, waiting.

More in this package: shipping.py (binlog shipping), regions.py (two S3 regions),
replication.py (a primary and its replica), monitoring.py (metrics, webhooks, a browser),
daemon.py (the scheduler daemon and fleets)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from backupkit.mysql.sandbox import Sandbox, free_port

#: One table with a column of every type the exactness tests cover (snapshot and point in time).
EVERY_TYPE_TABLE = r"""CREATE TABLE every_type (
  id INT NOT NULL PRIMARY KEY,
  vc VARCHAR(200) NULL, txt TEXT NULL, ch CHAR(10) NULL,
  bin VARBINARY(300) NULL, blb LONGBLOB NULL, fixbin BINARY(4) NULL,
  emoji VARCHAR(50) CHARACTER SET utf8mb4 NULL,
  dec65 DECIMAL(65,30) NULL, f FLOAT NULL, d DOUBLE NULL,
  dt DATE NULL, tm TIME(6) NULL, dtm DATETIME(6) NULL, ts TIMESTAMP(6) NULL DEFAULT NULL,
  yr YEAR NULL, bt BIT(64) NULL, bt3 BIT(3) NULL,
  en ENUM('a','b','tab\there','') NULL, st SET('x','y','z') NULL,
  js JSON NULL, geo GEOMETRY NULL, pt POINT NULL,
  ti TINYINT NULL, usb BIGINT UNSIGNED NULL, sb BIGINT NULL,
  gen_v INT AS (id * 2) VIRTUAL,
  gen_s VARCHAR(210) AS (CONCAT('g', vc)) STORED
) ENGINE=InnoDB;
"""


def _until_ready(proc: subprocess.Popen, url: str, timeout: float, interval: float) -> bool:
    """Poll url until it answers (True), or until proc exits or timeout seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return True
        except Exception:
            time.sleep(interval)
    return False


def stop_group(proc: subprocess.Popen | None, timeout: float) -> None:
    """SIGTERM a running process's whole group (it started a session); SIGKILL after timeout s."""
    if proc and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class MotoServer:
    """A real S3-compatible HTTP server process (moto_server) on a loopback port."""

    def __init__(self, port: int | None = None, env: dict[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.env = env or {}
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> MotoServer:
        """Start it; a port taken meanwhile by another process (free_port races) moves it."""
        for attempt in range(3):
            try:
                return self._start(timeout)
            except RuntimeError as exc:
                if attempt == 2 or "exited" not in str(exc):
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> MotoServer:
        exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
        env = {**os.environ, **self.env}
        self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env=env, start_new_session=True)
        if _until_ready(self.proc, self.endpoint + "/moto-api/", timeout, 0.1):
            return self
        if self.proc.poll() is not None:
            raise RuntimeError("moto_server exited at start")
        raise RuntimeError("moto_server did not start")

    def stop(self) -> None:
        stop_group(self.proc, 10)
        self.proc = None

    def reset(self) -> None:
        """Forget every bucket and object (moto keeps them in RAM)."""
        req = urllib.request.Request(self.endpoint + "/moto-api/reset", method="POST")
        urllib.request.urlopen(req, timeout=10).read()

    def create_bucket(self, name: str) -> None:
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                     aws_access_key_id="test", aws_secret_access_key="test").create_bucket(Bucket=name)


@contextlib.contextmanager
def source_with_repo(name: str, repo: Path) -> Iterator[tuple[Sandbox, dict[str, str]]]:
    """A private mariadbd and the CLI's environment for it and a local repository at repo;
    the server is destroyed on leaving."""
    src = Sandbox(name=name).start()
    try:
        yield src, {"BACKUPKIT_STORAGE": f"file://{repo}", "BACKUPKIT_SOURCE": src.url}
    finally:
        src.destroy()


def cross_second(extra: float = 0.05) -> None:
    """Sleep until extra seconds into the next whole second (binlog times are whole seconds)."""
    time.sleep(1 - (time.time() % 1) + extra)


def checksum(cur, table: str) -> int:
    """CHECKSUM TABLE of one table (a qualified name), on an open cursor."""
    cur.execute(f"CHECKSUM TABLE {table}")
    return int(cur.fetchone()[1])


def table_checksums(sandbox_or_conn, databases: list[str] | None = None) -> dict[str, int | None]:
    """CHECKSUM TABLE of every base table in the given (or all user) databases."""
    conn = sandbox_or_conn.connect() if hasattr(sandbox_or_conn, "connect") else sandbox_or_conn
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT table_schema, table_name FROM information_schema.tables "
                "WHERE table_type='BASE TABLE' AND table_schema NOT IN "
                "('mysql','information_schema','performance_schema','sys') ORDER BY 1,2")
            names = [(d, t) for d, t in cur.fetchall() if databases is None or d in databases]
            out: dict[str, int | None] = {}
            for d, t in names:
                qd, qt = d.replace("`", "``"), t.replace("`", "``")
                cur.execute(f"CHECKSUM TABLE `{qd}`.`{qt}` EXTENDED")
                out[f"{d}.{t}"] = cur.fetchone()[1]
            return out
    finally:
        if conn is not sandbox_or_conn:
            conn.close()


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600,
            input: str | None = None) -> subprocess.CompletedProcess:
    """Run the real console script in a subprocess."""
    exe = shutil.which("backupkit") or str(Path(sys.executable).parent / "backupkit")
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([exe, *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, input=input)


def json_ok(r: subprocess.CompletedProcess) -> dict:
    """The JSON of a CLI run that succeeded (its output in the failure otherwise)."""
    assert r.returncode == 0, r.stderr + r.stdout
    return json.loads(r.stdout)


class PrometheusServer:
    """A real Prometheus (Debian's /usr/bin/prometheus) on loopback, with a temporary config and
    data folder, scraping the given targets every second and evaluating rules every second."""

    def __init__(self, base: Path, targets: list[str], rules: Path | None = None,
                 job: str = "backupkit") -> None:
        self.base = Path(base)
        self.port = free_port()
        self.targets = targets
        self.rules = rules
        self.job = job
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> PrometheusServer:
        import json

        self.base.mkdir(parents=True, exist_ok=True)
        cfg = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
               "rule_files": [str(self.rules)] if self.rules else [],
               "scrape_configs": [{"job_name": self.job, "static_configs": [{"targets": self.targets}]}]}
        (self.base / "prometheus.yml").write_text(json.dumps(cfg))  # JSON is YAML
        self.log = open(self.base / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["/usr/bin/prometheus", f"--config.file={self.base / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.base / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--storage.tsdb.retention.time=1h"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        if _until_ready(self.proc, self.url + "/-/ready", timeout, 0.2):
            return self
        if self.proc.poll() is not None:
            raise RuntimeError("prometheus exited: " + (self.base / "prometheus.log").read_text()[-2000:])
        raise RuntimeError("prometheus did not become ready")

    def get(self, path: str) -> dict:
        import json

        with urllib.request.urlopen(self.url + path, timeout=5) as r:
            return json.loads(r.read())

    def firing(self) -> dict[str, list[dict]]:
        """Alert name -> the labels of each of its firing alerts."""
        out: dict[str, list[dict]] = {}
        for a in self.get("/api/v1/alerts")["data"]["alerts"]:
            if a["state"] == "firing":
                out.setdefault(a["labels"]["alertname"], []).append(a["labels"])
        return out

    def query(self, expr: str) -> list[dict]:
        from urllib.parse import quote

        return self.get("/api/v1/query?query=" + quote(expr))["data"]["result"]

    def stop(self) -> None:
        stop_group(self.proc, 20)
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()


def poll(read, cond, timeout: float, interval: float = 0.5):
    """read() until cond(value) holds or timeout seconds pass: the last value either way (the
    caller asserts on it, with its own message)."""
    deadline = time.monotonic() + timeout
    value = read()
    while not cond(value) and time.monotonic() < deadline:
        time.sleep(interval)
        value = read()
    return value


def wait_for(cond, timeout: float, what: str, interval: float = 0.1):
    """Poll cond() until it returns something true (returned), or fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
