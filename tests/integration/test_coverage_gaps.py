"""Gaps are never silent (issue 15, part 2): after a purge gap `restore --latest` names the gap
and its cost (refusing without --accept-gap), and the documented recovery (a snapshot, then
`binlog ship --restart-from-current`) restores --latest exactly without a second snapshot."""

from __future__ import annotations

import json

import pytest

from tests.support import run_cli, table_checksums
from tests.support.shipping import cli_env, purge_to_current, ship_once

pytestmark = pytest.mark.timeout(300)


def _json(r):
    return json.loads(r.stdout)


def test_latest_names_a_purge_gap_and_the_runbook_recovery_restores_latest(mariadb_factory, tmp_path):
    src = mariadb_factory(server_id=1)
    url = f"file://{tmp_path / 'repo'}"
    env = cli_env(src, url)
    src.sql("CREATE DATABASE w")
    src.sql("CREATE TABLE w.t (id INT AUTO_INCREMENT PRIMARY KEY, k INT, v VARCHAR(40))")
    assert run_cli("snapshot", "--json", env=env).returncode == 0
    assert ship_once(src, url).returncode == 0
    for i in range(20):
        src.sql("INSERT INTO w.t (k, v) VALUES (%s, 'shipped')", (i,))
    assert ship_once(src, url).returncode == 0
    before_gap = table_checksums(src, ["w"])
    # the shipper is down; the server writes on, rotates and purges what was never shipped
    for i in range(10):
        src.sql("INSERT INTO w.t (k, v) VALUES (%s, 'lost')", (i,))
    src.sql("FLUSH BINARY LOGS")
    src.sql("INSERT INTO w.t (k, v) VALUES (99, 'lost too')")
    src.sql("FLUSH BINARY LOGS")
    purge_to_current(src)
    r = ship_once(src, url)
    assert r.returncode == 3 and "GAP" in r.stderr, r.stderr

    # --latest names the gap and what it costs, and refuses without --accept-gap
    tgt = mariadb_factory(server_id=2)
    r = run_cli("restore", "--latest", "--target", tgt.url, "--force", "--json", env=env)
    assert r.returncode == 2, r.stderr
    err = _json(r)
    assert "a gap follows the newest reachable point" in err["error"] and "purged" in err["error"]
    assert err["details"]["gap"]["recorded"] and err["details"]["gap"]["resume"] is None
    assert "--accept-gap" in err["hint"]
    r = run_cli("restore", "--latest", "--accept-gap", "--target", tgt.url, "--force", "--json",
                env=env)
    assert r.returncode == 0, r.stderr
    out = _json(r)
    assert out["gap"]["after"] == err["details"]["gap"]["after"]
    assert any("a gap follows" in n for n in out["notes"])
    assert table_checksums(tgt, ["w"]) == before_gap

    # the runbook: a snapshot first, then restart shipping; no second snapshot
    for i in range(5):
        src.sql("INSERT INTO w.t (k, v) VALUES (%s, 'before the snapshot')", (i,))
    assert run_cli("snapshot", "--json", env=env).returncode == 0
    for i in range(7):
        src.sql("INSERT INTO w.t (k, v) VALUES (%s, 'after the snapshot')", (i,))
    r = ship_once(src, url, "--restart-from-current")
    assert r.returncode == 0, r.stderr
    gap = _json(r)["gaps"][0]
    snap = _json(run_cli("list", "--json", env=env))["backups"][-1]
    assert f"{gap['resume_file']}:{gap['resume_pos']}" == snap["binlog"]  # the snapshot's point
    for i in range(3):
        src.sql("INSERT INTO w.t (k, v) VALUES (%s, 'after the restart')", (i,))
    assert ship_once(src, url).returncode == 0
    r = run_cli("restore", "--latest", "--target", tgt.url, "--force", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert _json(r)["gap"] is None
    assert table_checksums(tgt, ["w"]) == table_checksums(src, ["w"])
