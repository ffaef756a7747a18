"""Shipping across a failover (issue 15, part 4), the part that is built: segments record the
server they came from, and a shipper pointed at another server under the same source id refuses
to resume into the first server's binlog positions (wal-g#1636: a new primary's binlog.000001
must never continue the old one's chain), saying by GTID whether the promoted replica lost
transactions. A primary and a replica: two private mariadbd with GTID replication."""

from __future__ import annotations

import json

import pytest

from tests.support import run_cli
from tests.support.shipping import cli_env, make_table

pytestmark = pytest.mark.timeout(300)


def test_a_new_server_under_the_same_source_id_is_refused_not_mixed(mariadb_factory, tmp_path):
    primary = mariadb_factory(server_id=1)
    replica = mariadb_factory(server_id=2)
    url = f"file://{tmp_path / 'repo'}"
    for sb in (primary, replica):
        make_table(sb)
    r = run_cli("binlog", "ship", "--once", "--from-current", "--source-id", "shop", "--json",
                env=cli_env(primary, url))
    assert r.returncode == 0, r.stderr
    primary.sql("INSERT INTO w.t (k) VALUES (1)")
    r = run_cli("binlog", "ship", "--once", "--source-id", "shop", env=cli_env(primary, url))
    assert r.returncode == 0, r.stderr
    status = json.loads(run_cli("binlog", "status", "--json", env=cli_env(primary, url)).stdout)
    assert status["sources"][0]["shipped_server"]["server_id"] == 1
    # the "promoted" server, same source id: refused, nothing written
    before = sorted(p.name for p in (tmp_path / "repo").rglob("*.json"))
    r = run_cli("binlog", "ship", "--once", "--source-id", "shop", env=cli_env(replica, url))
    assert r.returncode == 3, r.stderr
    assert "server_id 2" in r.stderr and "shipped from server_id 1" in r.stderr
    assert "failover" in r.stderr
    after = sorted(p.name for p in (tmp_path / "repo").rglob("*.json"))
    assert [n for n in after if not n.startswith("ship-")] == [n for n in before if not n.startswith("ship-")]


def _replica_of(primary, replica) -> None:
    replica.sql(f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={primary.port}, "
                "MASTER_USER='root', MASTER_USE_GTID=slave_pos")
    replica.sql("START SLAVE")


def _caught_up(primary, replica) -> bool:
    return replica.sql("SELECT @@gtid_slave_pos")[0][0] == primary.sql("SELECT @@gtid_binlog_pos")[0][0]


@pytest.mark.parametrize("lossy", [False, True])
def test_a_promoted_replica_is_judged_by_gtid(mariadb_factory, tmp_path, lossy):
    from tests.support import wait_for

    primary = mariadb_factory(server_id=1)
    replica = mariadb_factory(server_id=2, extra_args=["--log-slave-updates"])
    make_table(primary)
    _replica_of(primary, replica)
    url = f"file://{tmp_path / 'repo'}"
    r = run_cli("binlog", "ship", "--once", "--from-current", "--source-id", "shop",
                env=cli_env(primary, url))
    assert r.returncode == 0, r.stderr
    for i in range(20):
        primary.sql("INSERT INTO w.t (k) VALUES (%s)", (i,))
    wait_for(lambda: _caught_up(primary, replica), 30, "the replica")
    if lossy:
        replica.sql("STOP SLAVE")  # the replica falls behind, then is promoted anyway
        for i in range(5):
            primary.sql("INSERT INTO w.t (k) VALUES (%s)", (100 + i,))
    r = run_cli("binlog", "ship", "--once", "--source-id", "shop", env=cli_env(primary, url))
    assert r.returncode == 0, r.stderr
    replica.sql("STOP SLAVE")  # the switchover: the replica is the primary now
    replica.sql("INSERT INTO w.t (k) VALUES (999)")
    r = run_cli("binlog", "ship", "--once", "--source-id", "shop", env=cli_env(replica, url))
    assert r.returncode == 3, r.stderr
    line = " ".join(r.stderr.split())
    assert "shipped from server_id 1" in line
    if lossy:
        assert "before the last shipped transaction" in line, line
    else:
        assert "holds every transaction after the last shipped one" in line, line
