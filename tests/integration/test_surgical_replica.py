"""A replica rebuilt from the repository catches up with a primary that keeps writing."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from backupkit.errors import UsageError
from backupkit.mysql.sandbox import Sandbox
from backupkit.repo.catalog import Catalog
from backupkit.restore.replica import rebuild_replica, refuse_primary_as_target
from backupkit.storage import open_store
from backupkit.strategies.snapshot import SnapshotOptions, take_snapshot
from tests.support import run_cli, table_checksums, wait_for
from tests.support.shipping import ship_in_process

pytestmark = pytest.mark.timeout(300)


def test_a_replica_rebuilt_from_the_repository_catches_up(tmp_path):
    store = open_store(f"file://{tmp_path / 'repo'}")
    primary = Sandbox(name="replica-primary").start()
    replica = Sandbox(name="replica-new", server_id=2).start()
    stop = threading.Event()
    try:
        primary.sql("CREATE DATABASE app")
        primary.sql("CREATE TABLE app.t (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(40), "
                    "n DECIMAL(10,2))")
        primary.sql("INSERT INTO app.t (v, n) SELECT CONCAT('v', seq), seq / 7 FROM seq_1_to_2000",
                    database="app")
        primary.sql("CREATE USER repl@'%' IDENTIFIED BY 'replpw'")
        primary.sql("GRANT REPLICATION SLAVE ON *.* TO repl@'%'")

        def writer() -> None:
            conn = primary.connect(database="app")
            with conn.cursor() as cur:
                i = 0
                while not stop.is_set():
                    i += 1
                    cur.execute("INSERT INTO t (v, n) VALUES (%s, %s)", (f"w{i}", i % 97))
                    cur.execute("UPDATE t SET n = n + 1 WHERE id = %s", (i % 2000 + 1,))
                    time.sleep(0.005)
            conn.close()

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        take_snapshot(primary.spec, store, SnapshotOptions(source_id="app", parallel=2))
        time.sleep(0.5)
        ship_in_process(store, primary.spec, "app", 780)
        repl = replace(primary.spec, user="repl", password="replpw")
        with pytest.raises(UsageError, match="is the primary"):
            rebuild_replica(store, Catalog(store), primary.spec, repl)
        result = rebuild_replica(store, Catalog(store), replica.spec, repl, wait_seconds=60,
                                 report_loss=False)
        assert result.replay is not None and result.replay.transactions > 0
        assert result.replica.caught_up, result.replica.note()
        assert any("caught up (Seconds_Behind_Master = 0)" in n for n in result.notes)
        time.sleep(0.5)  # the primary keeps writing while the replica runs
        stop.set()
        thread.join()
        want = table_checksums(primary, ["app"])
        wait_for(lambda: table_checksums(replica, ["app"]) == want, 30, "the replica's checksums")
    finally:
        stop.set()
        replica.destroy()
        primary.destroy()


def test_the_primary_itself_is_refused_as_the_target(mariadb, tmp_path):
    with pytest.raises(UsageError, match="is the primary"):
        refuse_primary_as_target(mariadb.spec, mariadb.spec)
    url = f"mysql://root@127.0.0.1:{mariadb.spec.port}"
    out = run_cli("--storage", f"file://{tmp_path}/repo", "restore", "--latest", "--target", url,
                  "--replicate-from", url.replace("root@", "repl@"))
    assert out.returncode == 2 and "is the primary" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) <= 2
