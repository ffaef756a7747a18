"""Backups from a replica (issue 20): a primary and a replica as private mariadbd with GTID
replication. Snapshot and ship from the replica, then restore to moments marked on the primary:
exact. A replica that cannot serve (no log_slave_updates for shipping, a stopped SQL thread) is
refused in one line."""

from __future__ import annotations

import json
import time

import pytest

from backupkit.repo.catalog import Catalog
from backupkit.storage import open_store
from tests.support import cross_second, run_cli, table_checksums, wait_for
from tests.support.replication import caught_up, replicate
from tests.support.shipping import cli_env

pytestmark = pytest.mark.timeout(300)


def _round(primary, base: int) -> None:
    for i in range(base, base + 30):
        primary.sql("INSERT INTO shop.orders VALUES (%s, %s, 'x')", (i, i % 7))
    primary.sql(f"UPDATE shop.orders SET qty = qty + 1 WHERE id % 3 = {base % 3}")
    primary.sql(f"DELETE FROM shop.orders WHERE id % 11 = {base % 11} LIMIT 3")


def test_snapshot_and_ship_from_a_replica_restore_the_primarys_moments_exactly(
        mariadb_factory, tmp_path):
    primary = mariadb_factory(server_id=1)
    replica = mariadb_factory(server_id=2, extra_args=["--log-slave-updates"])
    primary.sql("CREATE DATABASE shop")
    primary.sql("CREATE TABLE shop.orders (id INT PRIMARY KEY, qty INT, note VARCHAR(20))")
    _round(primary, 1)
    replicate(primary, replica)
    wait_for(lambda: caught_up(primary, replica), 30, "the replica")
    url = f"file://{tmp_path / 'repo'}"
    env = cli_env(replica, url)
    r = run_cli("snapshot", "--json", env=env)
    assert r.returncode == 0, r.stderr
    snap = Catalog(open_store(url)).backup(json.loads(r.stdout)["backup_id"])
    rep = snap.details["replica"]
    assert rep["primary"] == f"127.0.0.1:{primary.port}" and rep["lag"] == 0
    assert rep["gtid_slave_pos"] == primary.sql("SELECT @@gtid_binlog_pos")[0][0]
    assert rep["log_slave_updates"] is True

    marks = []
    for base in (100, 200, 300):
        cross_second()
        _round(primary, base)
        marks.append((time.time(), table_checksums(primary, ["shop"])))  # marked on the primary
        cross_second()
    wait_for(lambda: caught_up(primary, replica), 30, "the replica")
    r = run_cli("binlog", "ship", "--once", "--server-id", "555", "--json", env=env)
    assert r.returncode == 0, r.stderr

    for when, want in marks[:2]:
        target = mariadb_factory(server_id=9)
        r = run_cli("restore", "--to-time", f"@{when:.6f}", "--target", target.url, "--json", env=env)
        assert r.returncode == 0, r.stderr
        assert table_checksums(target, ["shop"]) == want


def test_a_replica_that_cannot_serve_is_refused_in_one_line(mariadb_factory, tmp_path):
    primary = mariadb_factory(server_id=1)
    quiet = mariadb_factory(server_id=2)  # log_slave_updates off (the default)
    primary.sql("CREATE DATABASE shop")
    primary.sql("CREATE TABLE shop.orders (id INT PRIMARY KEY, qty INT, note VARCHAR(20))")
    replicate(primary, quiet)
    wait_for(lambda: caught_up(primary, quiet), 30, "the replica")
    url = f"file://{tmp_path / 'repo'}"
    r = run_cli("binlog", "ship", "--once", "--server-id", "555", env=cli_env(quiet, url))
    assert r.returncode != 0
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "log_slave_updates=OFF" in errors[0], r.stderr
    # a snapshot from it is fine (its data is the primary's)
    assert run_cli("snapshot", env=cli_env(quiet, url)).returncode == 0

    # the SQL thread stops on a conflict: the replica is frozen in the past
    quiet.sql("INSERT INTO shop.orders VALUES (7, 0, 'local')")
    primary.sql("INSERT INTO shop.orders VALUES (7, 1, 'primary')")
    wait_for(lambda: quiet.sql("SHOW SLAVE STATUS")[0][11] == "No", 30, "the SQL thread to stop")
    r = run_cli("snapshot", env=cli_env(quiet, url))
    assert r.returncode != 0
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "SQL thread stopped with error 1062" in errors[0], r.stderr
