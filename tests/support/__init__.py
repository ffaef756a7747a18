"""Shared test helpers: real S3 server processes, table checksums, CLI runs, waiting.

More in this package: shipping.py (binlog shipping), regions.py (two S3 regions)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from backupkit.mysql.sandbox import free_port

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
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("moto_server exited at start")
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1).read()
                return self
            except Exception:
                time.sleep(0.1)
        raise RuntimeError("moto_server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def reset(self) -> None:
        """Forget every bucket and object (moto keeps them in RAM)."""
        req = urllib.request.Request(self.endpoint + "/moto-api/reset", method="POST")
        urllib.request.urlopen(req, timeout=10).read()

    def create_bucket(self, name: str) -> None:
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                     aws_access_key_id="test", aws_secret_access_key="test").create_bucket(Bucket=name)


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
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("prometheus exited: " + (self.base / "prometheus.log").read_text()[-2000:])
            try:
                urllib.request.urlopen(self.url + "/-/ready", timeout=1).read()
                return self
            except Exception:
                time.sleep(0.2)
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
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()


def wait_for(cond, timeout: float, what: str, interval: float = 0.1):
    """Poll cond() until it returns something true (returned), or fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
