"""The lock watchdog against a real mariadbd: the snapshot's consistency step never stalls other
sessions' commits past --max-lock-wait; it backs off and retries, then names the blocker."""

from __future__ import annotations

import threading
import time

import pytest

from backupkit.mysql.workload import WriteLoad
from backupkit.repo.catalog import Catalog
from backupkit.storage import open_store
from backupkit.strategies.snapshot import SnapshotOptions, take_snapshot
from tests.support import run_cli

pytestmark = pytest.mark.timeout(180)


def _writer(sb) -> WriteLoad:
    def step(cur, n: int) -> None:
        cur.execute("UPDATE app.hot SET v = v + 1 WHERE id = %s", (n % 50 + 1,))

    return WriteLoad(sb.connect, step, pause=0.005, record_acks=True, name="app-writer")


def _setup(sb) -> None:
    sb.sql("CREATE DATABASE app")
    sb.sql("CREATE TABLE app.hot (id INT PRIMARY KEY, v INT NOT NULL) ENGINE=InnoDB")
    sb.sql("INSERT INTO app.hot SELECT seq, 0 FROM seq_1_to_50", database="app")
    sb.sql("CREATE TABLE app.other (id INT PRIMARY KEY, v INT) ENGINE=InnoDB")
    sb.sql("INSERT INTO app.other SELECT seq, 0 FROM seq_1_to_1000", database="app")


def _longest_stall(writer: WriteLoad, t0: float, t1: float) -> float:
    """The longest time between two acknowledged commits of the writer within [t0, t1]."""
    acks = [t for _, t in writer.acks if t0 - 1 <= t <= t1 + 1]
    assert len(acks) > 20, "the writer committed almost nothing"
    return max(b - a for a, b in zip(acks, acks[1:], strict=False))


def test_a_held_table_lock_is_given_up_within_the_bound_and_the_holder_is_named(mariadb, local_url):
    _setup(mariadb)
    holder = mariadb.connect()
    holder_id = holder.thread_id()
    with holder.cursor() as cur:
        cur.execute("LOCK TABLES app.other WRITE")  # held, idle: blocks BACKUP STAGE BLOCK_DDL
    writer = _writer(mariadb)
    writer.start()
    try:
        time.sleep(0.5)
        t0 = time.time()
        r = run_cli("snapshot", "--source", mariadb.url, "--storage", local_url, "--parallel", "2",
                    "--max-lock-wait", "1", "--lock-retries", "1", "--json")
        t1 = time.time()
    finally:
        writer.stop()
        holder.close()
    assert r.returncode == 3, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr
    assert f"session {holder_id} " in errors[0] and "--max-lock-wait" in errors[0]
    assert "2 attempts" in errors[0]
    assert t1 - t0 < 15  # two cut waits of 1 s and one back-off of 2 s, plus start-up
    assert Catalog(open_store(local_url)).backups() == []  # nothing became visible
    assert _longest_stall(writer, t0, t1) < 1.0 + 0.5  # commits never waited past the bound


def test_a_ddl_longer_than_the_bound_is_waited_out_by_backing_off(mariadb, local_url):
    _setup(mariadb)
    ddl = threading.Thread(target=lambda: mariadb.sql(
        "CREATE TABLE app.slow ENGINE=InnoDB SELECT id, SLEEP(0.1) AS s FROM app.other LIMIT 25",
        database="app"), daemon=True)
    ddl.start()  # about 2.5 s of DDL: BLOCK_DDL must wait for it
    time.sleep(0.3)
    opts = SnapshotOptions(parallel=2, max_lock_wait=1.0, lock_retries=4, lock_backoff=1.0)
    manifest = take_snapshot(mariadb.spec, open_store(local_url), opts)
    ddl.join(10)
    cons = manifest.details["consistency"]
    assert cons["lock_attempts"] >= 2 and cons["max_lock_wait"] == 1.0
    assert "app.slow" in {f"{t['db']}.{t['name']}" for t in manifest.details["tables"]}


def test_a_long_open_transaction_does_not_stall_commits(mariadb, local_url):
    _setup(mariadb)
    open_txn = mariadb.connect(autocommit=False)
    with open_txn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("UPDATE app.other SET v = 42 WHERE id <= 500")  # held open for the whole test
    writer = _writer(mariadb)
    writer.start()
    try:
        time.sleep(0.5)
        t0 = time.time()
        manifest = take_snapshot(mariadb.spec, open_store(local_url),
                                 SnapshotOptions(parallel=2, max_lock_wait=2.0))
        t1 = time.time()
    finally:
        writer.stop()
        open_txn.rollback()
        open_txn.close()
    assert manifest.details["consistency"]["lock_attempts"] == 1
    assert _longest_stall(writer, t0, t1) < 2.0
