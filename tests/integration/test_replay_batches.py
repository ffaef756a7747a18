"""The applier sends many small row-based transactions per round trip (apply.TXNS_PER_TRIP): a
server error in the middle of such a batch stops the replay promptly, names that transaction's
GTID, and reports every transaction before it, and only those, as applied."""

from __future__ import annotations

import pytest

from backupkit.mysql.sandbox import Sandbox
from backupkit.repo.catalog import Catalog
from backupkit.restore.pitr import make_plan
from backupkit.restore.replay import ReplayError, replay_segments
from backupkit.restore.replay import apply as apply_mod
from backupkit.restore.replay.units import ReachedPoint
from backupkit.restore.stoppoint import parse_target
from backupkit.storage import open_store
from tests.support import run_cli, source_with_repo

pytestmark = pytest.mark.timeout(240)

N = 40  # single-row transactions, shipped as one segment: one or two batches


def test_an_error_inside_a_batch_names_its_transaction_and_keeps_those_before(tmp_path):
    repo = tmp_path / "repo"
    with source_with_repo("batch-src", repo) as (src, env):
        src.sql("CREATE DATABASE shop")
        src.sql("CREATE TABLE shop.t (id INT PRIMARY KEY, v VARCHAR(50))")
        r = run_cli("snapshot", "--json", env=env)
        assert r.returncode == 0, r.stderr
        conn = src.connect(database="shop")
        gtids = []
        with conn.cursor() as cur:
            for i in range(N):
                cur.execute("INSERT INTO t VALUES (%s, 'x')", (i,))
                conn.commit()
                cur.execute("SELECT @@last_gtid")
                gtids.append(cur.fetchone()[0])
        conn.close()
        r = run_cli("binlog", "ship", "--once", "--server-id", "557", "--json", env=env)
        assert r.returncode == 0, r.stderr
    store = open_store(f"file://{repo}")
    catalog = Catalog(store)
    target = parse_target(latest=True)
    plan = make_plan(catalog, target)
    assert sum(s.transactions for s in plan.segments) >= N
    tgt = Sandbox(name="batch-t").start()
    try:
        tgt.sql("CREATE DATABASE shop")
        tgt.sql("CREATE TABLE shop.t (id INT PRIMARY KEY, v VARCHAR(50))")
        bad = 23  # inside the first batch of TXNS_PER_TRIP, not at its edges
        assert 0 < bad < min(N, apply_mod.TXNS_PER_TRIP) - 1
        tgt.sql(f"INSERT INTO shop.t VALUES ({bad}, 'already here')")
        reached = ReachedPoint(file=plan.start[0], pos=plan.start[1])
        with pytest.raises(ReplayError, match=f"1062.*|{gtids[bad]}") as exc:
            replay_segments(store, plan.segments, plan.start, target, tgt.spec, start_point=reached)
        assert gtids[bad] in str(exc.value) and "1062" in str(exc.value)
        assert reached.gtid == gtids[bad - 1]  # every one before it, and only those
        rows = tgt.sql("SELECT id FROM shop.t ORDER BY id")
        assert [int(r[0]) for r in rows] == list(range(bad + 1))
    finally:
        tgt.destroy()
