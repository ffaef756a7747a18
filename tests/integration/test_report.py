"""backupkit report: with a cold backup at t0, a snapshot at t1 and binlog shipped to t2, the
recovery points, loss windows, lost transactions and rows, downtime and RTO are the known ones."""

from __future__ import annotations

import json
import time

import pytest

from backupkit.mysql.sandbox import Sandbox
from backupkit.repo.catalog import Catalog
from backupkit.storage import open_store
from backupkit.strategies.cold import ColdOptions, take_cold_backup
from backupkit.strategies.snapshot import SnapshotOptions, take_snapshot
from tests.support import cross_second, json_ok, run_cli
from tests.support.shipping import ship_in_process

pytestmark = pytest.mark.timeout(300)
SID = "report-src"


def _txns(sb: Sandbox, n: int, rows_each: int, tag: str) -> None:
    """n transactions, each inserting rows_each rows."""
    conn = sb.connect(database="app")
    with conn.cursor() as cur:
        for _ in range(n):
            cur.execute("BEGIN")
            cur.executemany("INSERT INTO t (tag, n) VALUES (%s, %s)", [(tag, k) for k in range(rows_each)])
            cur.execute("COMMIT")
    conn.close()


def _report(env: dict[str, str], at: float) -> dict:
    out = json_ok(run_cli("report", "--at", f"@{at:.6f}", "--json", env=env))
    return {s["strategy"]: s for s in out["strategies"]}


def test_report_matches_cold_snapshot_and_shipped_binlog(tmp_path):
    repo = tmp_path / "repo"
    store = open_store(f"file://{repo}")
    catalog = Catalog(store)
    env = {"BACKUPKIT_STORAGE": f"file://{repo}"}
    src = Sandbox(name="report-src").start()
    try:
        src.sql("CREATE DATABASE app")
        src.sql("CREATE TABLE app.t (id INT PRIMARY KEY AUTO_INCREMENT, tag VARCHAR(16), n INT)")
        _txns(src, 4, 1, "early")
        # shipping starts before the cold backup
        ship_in_process(store, src.spec, SID, 901, from_current=True)
        cold = take_cold_backup(store, src.spec, ColdOptions(
            start_command=src.start_command(), pid_file=str(src.pid_file), stop_timeout=60,
            start_timeout=60, source_id=SID))
        t0 = cold.point.time
        _txns(src, 3, 2, "after-t0")  # 3 transactions, 6 rows
        cross_second()
        t_cold_mark = time.time()  # only the cold backup is at or before this moment
        cross_second()
        snap = take_snapshot(src.spec, store, SnapshotOptions(source_id=SID, parallel=1))
        t1 = snap.point.time
        cross_second()
        _txns(src, 4, 3, "after-t1")  # 4 transactions, 12 rows
        cross_second()
        t_mid = time.time()  # before these were shipped
        ship_in_process(store, src.spec, SID, 901)
        t2 = max(s.last_commit_time for s in catalog.segments(SID))
        cross_second()
        _txns(src, 2, 1, "unshipped")
        at = time.time()

        rep = _report(env, at)
        assert set(rep) == {"cold", "snapshot", "binlog"}
        c, s, b = rep["cold"], rep["snapshot"], rep["binlog"]
        assert c["recovery_point"] == pytest.approx(t0, abs=1e-6) and c["recovery_source"] == cold.id
        assert s["recovery_point"] == pytest.approx(t1, abs=1e-6) and s["recovery_source"] == snap.id
        assert b["recovery_point"] == t2
        assert c["loss_seconds"] == pytest.approx(at - t0, abs=0.002)
        assert s["loss_seconds"] == pytest.approx(at - t1, abs=0.002)
        assert b["loss_seconds"] == pytest.approx(at - t2, abs=0.002)
        assert (c["transactions_lost"], c["rows_lost"]) == (7, 18)
        assert (s["transactions_lost"], s["rows_lost"]) == (4, 12)
        assert (b["transactions_lost"], b["rows_lost"]) == (0, 0)
        assert not c["complete"]  # the two unshipped transactions are not in the repository
        assert c["downtime_seconds"] == pytest.approx(cold.stats["downtime_seconds"], abs=0.001)
        assert c["downtime_seconds"] > 0 and s["downtime_seconds"] == 0 and b["downtime_seconds"] == 0
        assert c["rto_seconds"] is None and s["rto_seconds"] is None and b["rto_seconds"] is None

        # a disaster before the second shipping run: binlog had nothing after the snapshot yet
        mid = _report(env, t_mid)
        assert mid["binlog"]["recovery_point"] == pytest.approx(t1, abs=1e-6)
        assert (mid["binlog"]["transactions_lost"], mid["binlog"]["rows_lost"]) == (4, 12)
        assert mid["cold"]["transactions_lost"] == 7
        assert mid["binlog"]["counted_through"] == t2 and not mid["binlog"]["complete"]
        # a disaster before the cold backup finished: that strategy had nothing yet
        early = _report(env, cold.started_at - 0.5)
        assert early["cold"]["recovery_point"] is None and early["snapshot"]["recovery_point"] is None

        # a restore measures the RTO; its own output carries the same report
        tgt = Sandbox(name="report-t").start()
        try:
            r = run_cli("restore", "--latest", "--target", tgt.url, "--json", env=env)
            assert r.returncode == 0, r.stderr
            out = json.loads(r.stdout)
            assert {x["strategy"] for x in out["loss"]["strategies"]} == {"cold", "snapshot", "binlog"}
            assert tgt.sql("SELECT COUNT(*) FROM app.t")[0][0] == 4 + 6 + 12
        finally:
            tgt.destroy()
        rec = catalog.restore_records()[-1]
        after = _report(env, time.time())
        assert after["binlog"]["rto_seconds"] == pytest.approx(rec["duration"], abs=0.001)
        assert after["snapshot"]["rto_seconds"] == pytest.approx(rec["base_seconds"], abs=0.001)
        assert after["cold"]["rto_seconds"] is None

        # a moment before the snapshot: the cold backup is the base, then the binlog is replayed
        cold_tgt = Sandbox(name="report-cold")
        (cold_tgt.base / "tmp").mkdir(parents=True, exist_ok=True)
        try:
            r = run_cli("restore", "--to-time", f"@{t_cold_mark:.6f}", "--datadir", str(cold_tgt.datadir),
                        "--start-command", cold_tgt.start_command(), "--target", cold_tgt.url, "--json",
                        env=env)
            assert r.returncode == 0, r.stderr
            out = json.loads(r.stdout)
            assert out["plan"]["base"]["id"] == cold.id and out["replay"]["transactions"] == 3
            assert cold_tgt.sql("SELECT COUNT(*) FROM app.t")[0][0] == 4 + 6
        finally:
            cold_tgt.destroy()

        human = run_cli("report", "--at", f"@{at:.6f}", env={**env, "COLUMNS": "250"})
        assert human.returncode == 0, human.stderr
        for text in ("cold file copy", "hot snapshot", "binlog shipping", cold.id):
            assert text in human.stdout
    finally:
        src.destroy()
