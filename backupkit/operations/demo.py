"""The demo: the whole protection ladder on a throw-away MariaDB, told in about a minute.

It runs the real commands (as subprocesses of this Python, with --json) against a private
sandbox server and a local repository in a temp folder, so what it shows is exactly what a user
gets by typing them.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backupkit.errors import BackupkitError
from backupkit.mysql.sandbox import Sandbox
from backupkit.mysql.workload import WriteLoad

SCHEMA = [
    "CREATE DATABASE shop",
    """CREATE TABLE shop.customers (
         id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100) NOT NULL, email VARCHAR(200),
         created DATETIME(6) NOT NULL, balance DECIMAL(12,2) NOT NULL DEFAULT 0)""",
    """CREATE TABLE shop.orders (
         id BIGINT AUTO_INCREMENT PRIMARY KEY, customer_id INT NOT NULL, amount DECIMAL(12,2) NOT NULL,
         status ENUM('new','paid','shipped') NOT NULL, note TEXT, payload JSON, placed DATETIME(6) NOT NULL,
         KEY (customer_id))""",
    """INSERT INTO shop.customers (name, email, created, balance)
         SELECT CONCAT('customer ', seq), CONCAT('c', seq, '@example.com'), NOW(6) - INTERVAL seq MINUTE,
                seq * 1.25 FROM seq_1_to_500""",
    """INSERT INTO shop.orders (customer_id, amount, status, note, payload, placed)
         SELECT 1 + seq % 500, (seq % 997) + 0.99, ELT(1 + seq % 3, 'new', 'paid', 'shipped'),
                IF(seq % 7 = 0, NULL, CONCAT('order ', seq, ' ☕')), JSON_OBJECT('n', seq),
                NOW(6) - INTERVAL seq SECOND FROM seq_1_to_5000""",
]


class ShopLoad:
    """The demo's application: new orders and customer updates, ~``rate`` transactions/s."""

    def __init__(self, rate: float = 40.0) -> None:
        self.rate = rate
        self.orders_dropped = False
        self._rnd = random.Random(42)

    def __call__(self, cur: Any, n: int) -> None:
        cid = self._rnd.randint(1, 500)
        cur.execute("BEGIN")
        if not self.orders_dropped:
            cur.execute("INSERT INTO shop.orders (customer_id, amount, status, note, payload, "
                        "placed) VALUES (%s, %s, 'new', %s, JSON_OBJECT('demo', TRUE), NOW(6))",
                        (cid, round(self._rnd.uniform(1, 500), 2), f"live order {n}"))
        cur.execute("UPDATE shop.customers SET balance = balance + 1 WHERE id = %s", (cid,))
        cur.execute("COMMIT")


@dataclass
class DemoResult:
    repo: str
    source_url: str
    target_url: str
    steps: dict[str, Any] = field(default_factory=dict)
    checksum_before_drop: int | None = None
    checksum_restored: int | None = None
    rows_before_drop: int | None = None
    rows_restored: int | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.checksum_before_drop is not None and self.checksum_before_drop == self.checksum_restored

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["ok"] = self.ok
        return d


def _backupkit(args: list[str], repo: str, say: Callable[[str], None], json_out: bool = True,
               timeout: float = 120, check: bool = True, shown: str | None = None) -> Any:
    """Run one real backupkit command; show it; return its JSON."""
    cmd = [sys.executable, "-m", "backupkit", *args, "--storage", repo]
    if json_out:
        cmd.append("--json")
    shown = shown or "backupkit " + " ".join(shlex.quote(a) for a in args)
    say(f"[dim]$ {shown}[/]")
    r = subprocess.run(cmd, capture_output=json_out, text=True, timeout=timeout,
                       env={**os.environ, "COLUMNS": os.environ.get("COLUMNS", "120")})
    if not json_out:
        if check and r.returncode:
            raise BackupkitError(f"demo step failed: {shown} exited {r.returncode}")
        return None
    if check and r.returncode:
        last = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BackupkitError(f"demo step failed: {shown}: {last}")
    try:
        return json.loads(r.stdout)
    except ValueError as exc:
        raise BackupkitError(f"demo step {shown} printed no JSON: {r.stderr.strip()[-200:]}") from exc


def _checksum(sb: Sandbox, table: str) -> tuple[int | None, int]:
    (_, value), = sb.sql(f"CHECKSUM TABLE {table} EXTENDED")
    (count,), = sb.sql(f"SELECT COUNT(*) FROM {table}")
    return value, count


def run_demo(say: Callable[[str], None], keep: bool = False,
             show: Callable[[list[str], str], None] | None = None,
             workdir: str | None = None) -> DemoResult:
    """Tell the story of the ladder on a throw-away sandbox; clean up unless keep."""
    t_start = time.monotonic()
    base = Path(workdir or tempfile.mkdtemp(prefix="backupkit-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    repo = f"file://{base / 'repo'}"
    source = Sandbox(base / "source", server_id=1, name="demo-source")
    target = Sandbox(base / "target", server_id=2, name="demo-target")
    result = DemoResult(repo, source.url, target.url)
    workload: WriteLoad | None = None
    shop = ShopLoad()
    shipper: subprocess.Popen | None = None
    try:
        say("[bold]1. A production database[/]: a private MariaDB with a shop and a steady write load")
        source.start()
        for i, stmt in enumerate(SCHEMA):
            source.sql(stmt, database="shop" if i else None)
        workload = WriteLoad(source.connect, shop, pause=1.0 / shop.rate, name="demo-workload")
        workload.start()
        time.sleep(1.0)
        say(f"   source {source.url}, {source.sql('SELECT COUNT(*) FROM shop.orders')[0][0]} orders, "
            f"~{shop.rate:.0f} transactions/s")

        say("\n[bold]2. Cold file copy[/]: stop the server, copy the datadir, start it again")
        cold = _backupkit(["cold", "--source", source.url, "--start-command", source.start_command(),
                           "--pid-file", str(source.pid_file)], repo, say,
                          shown="backupkit cold --start-command '<start the sandbox>' --pid-file ...")
        down = float((cold.get("downtime") or {}).get("total_seconds") or 0.0)
        result.steps["cold"] = {"backup_id": cold.get("backup_id"), "downtime_s": down}
        say(f"   cold backup {cold.get('backup_id')}: the service was down for "
            f"[bold red]{down:.2f} s[/] (writes failed meanwhile: {workload.errors})")

        say("\n[bold]3. Hot snapshot[/] while writes go on, then [bold]continuous binlog shipping[/]")
        snap = _backupkit(["snapshot", "--source", source.url], repo, say)
        stats, cons = snap.get("stats") or {}, snap.get("consistency") or {}
        blocked = cons.get("blocked_ms")
        result.steps["snapshot"] = {"backup_id": snap.get("backup_id"), "blocked_ms": blocked,
                                    "rows": stats.get("rows")}
        say(f"   snapshot {snap.get('backup_id')}: {stats.get('rows', '?')} rows, no downtime"
            + (f" (commits blocked {blocked:.0f} ms)" if isinstance(blocked, (int, float)) else ""))
        ship_cmd = [sys.executable, "-m", "backupkit", "binlog", "ship", "--source", source.url,
                    "--storage", repo, "--sync-interval", "0.5", "--lease-seconds", "5"]
        say("[dim]$ backupkit binlog ship --sync-interval 0.5 &[/]")
        with open(base / "shipper.log", "wb") as ship_log:
            shipper = subprocess.Popen(ship_cmd, stdout=subprocess.DEVNULL, stderr=ship_log,
                                       start_new_session=True)
        time.sleep(3.0)

        say("\n[bold]4. The accident[/]: someone runs DROP TABLE orders")
        workload.pause()
        result.checksum_before_drop, result.rows_before_drop = _checksum(source, "shop.orders")
        # A second boundary between the last good write and the drop keeps the story readable.
        time.sleep(1.05 - (time.time() % 1.0))
        shop.orders_dropped = True
        source.sql("DROP TABLE shop.orders")
        workload.resume()
        say(f"   shop.orders had {result.rows_before_drop} rows (CHECKSUM {result.checksum_before_drop}); "
            "the application keeps writing to other tables")
        time.sleep(1.5)

        say("\n[bold]5. Find it[/] in the shipped binlog")
        found: list[dict] = []
        deadline = time.monotonic() + 30
        while not found and time.monotonic() < deadline:
            ev = _backupkit(["binlog", "events", "--grep", "DROP TABLE"], repo, say=lambda m: None,
                            check=False)
            found = (ev or {}).get("transactions") or []
            if not found:
                time.sleep(0.5)
        if not found:
            raise BackupkitError("the shipper did not ship the DROP within 30 s",
                                 f"see {base / 'shipper.log'}")
        drop = found[-1]
        say("[dim]$ backupkit binlog events --grep 'DROP TABLE'[/]")
        say(f"   found: GTID [bold]{drop['gtid']}[/] at {drop['file']}:{drop['start_pos']}, "
            f"committed {drop['commit_time']}: {' '.join(drop['ddl'] or drop['statements'])[:80]}")
        result.steps["drop"] = {"gtid": drop["gtid"], "commit_time": drop["commit_time"]}

        say("\n[bold]6. Restore[/] into a second server, to just before the DROP")
        target.start()
        res = _backupkit(["restore", "--stop-before-gtid", drop["gtid"], "--target", target.url], repo,
                         say, timeout=300)
        result.steps["restore"] = {k: res.get(k) for k in ("base", "reached", "duration_s", "plan")
                                   if k in res}
        result.checksum_restored, result.rows_restored = _checksum(target, "shop.orders")
        mark = "[bold green]equal[/]" if result.ok else "[bold red]DIFFERENT[/]"
        say(f"   restored shop.orders: {result.rows_restored} rows, CHECKSUM {result.checksum_restored}: "
            f"{mark} to the source just before the drop")

        say("\n[bold]7. What each strategy would have lost[/] for a disaster right now")
        if show is not None:
            show([sys.executable, "-m", "backupkit", "report", "--storage", repo], "backupkit report")
        result.steps["report"] = _backupkit(["report"], repo, say=lambda m: None)
        result.seconds = time.monotonic() - t_start
        return result
    finally:
        if workload is not None:
            workload.stop_event.set()
        if shipper is not None and shipper.poll() is None:
            shipper.send_signal(signal.SIGTERM)
            try:
                shipper.wait(15)
            except subprocess.TimeoutExpired:
                shipper.kill()
        if workload is not None:
            workload.join(5)
        if keep:
            # Start the source again if a step left it down, and leave both servers running.
            if not source.running():
                try:
                    source.start()
                except Exception:
                    pass
            say(f"\n--keep: left running. Source: mariadb -h127.0.0.1 -P{source.port} -uroot   "
                f"Restored: mariadb -h127.0.0.1 -P{target.port} -uroot\n"
                f"Repository: {repo}   Stop the servers: kill $(cat {source.pid_file}) "
                f"$(cat {target.pid_file})   Remove: rm -r {base}")
        else:
            for sb in (target, source):
                try:
                    sb.stop()
                except Exception:
                    pass
            if workdir is None:
                shutil.rmtree(base, ignore_errors=True)
