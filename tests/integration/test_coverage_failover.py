"""Shipping across a failover (issue 15, part 4), the part that is built: segments record the
server they came from, and a shipper pointed at another server under the same source id refuses
to resume into the first server's binlog positions (wal-g#1636: a new primary's binlog.000001
must never continue the old one's chain)."""

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
