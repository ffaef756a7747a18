"""A restore recognises the backed-up source as its target: refused unless --in-place, and an
in-place restore records a timeline break that no later restore replays across (issue 14, defect 8)."""

from __future__ import annotations

import time

import pytest

from backupkit.mysql.connection import ConnSpec
from backupkit.mysql.sandbox import Sandbox
from backupkit.mysql.server import ServerFacts, SourceIdentity
from backupkit.repo.catalog import Catalog
from backupkit.restore.guard import why_target_is_source
from backupkit.storage import open_store
from tests.support import json_ok, run_cli, source_with_repo, table_checksums

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def shipped(tmp_path):
    repo = tmp_path / "repo"
    with source_with_repo("inplace-src", repo) as (src, env):
        src.sql("CREATE DATABASE shop")
        src.sql("CREATE TABLE shop.t (id INT PRIMARY KEY, v INT)")
        src.sql("INSERT INTO shop.t SELECT seq, seq FROM shop.seq_1_to_50")
        snap = json_ok(run_cli("snapshot", "--json", env=env))
        time.sleep(1.1)  # the next commit lands in a later whole second than the snapshot
        src.sql("INSERT INTO shop.t VALUES (100, 100)")
        json_ok(run_cli("binlog", "ship", "--once", "--server-id", "558", "--json", env=env))
        yield {"src": src, "env": env, "repo": repo, "snapshot": snap}


def _untouched(src) -> tuple:
    return (src.sql("SHOW DATABASES"), table_checksums(src))


@pytest.mark.parametrize("how", ["pitr", "snapshot", "pitr-without-configured-source"])
def test_restore_onto_the_source_is_refused_with_exit_7_and_changes_nothing(shipped, how):
    src, env = shipped["src"], dict(shipped["env"])
    before = _untouched(src)
    args = ["restore", shipped["snapshot"]["backup_id"]] if how == "snapshot" else ["restore", "--latest"]
    if how == "pitr-without-configured-source":  # recognised by the recorded identity alone
        env["BACKUPKIT_SOURCE"] = ""
    r = run_cli(*args, "--force", "--target", src.url, env=env)
    assert r.returncode == 7, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "is the backed-up source" in lines[0] and "--in-place" in lines[0]
    assert _untouched(src) == before


def test_in_place_restore_records_a_timeline_break_and_asks_for_a_new_base(shipped, tmp_path):
    src, env = shipped["src"], shipped["env"]
    src.sql("DELETE FROM shop.t WHERE id > 40")  # the accident being undone in place
    out = json_ok(run_cli("restore", "--latest", "--force", "--in-place", "--target", src.url,
                      "--json", env=env))
    assert any("timeline break" in n and "new base" in n for n in out["notes"])
    assert src.sql("SELECT COUNT(*) FROM shop.t")[0][0] == 51
    catalog = Catalog(open_store(f"file://{shipped['repo']}"))
    (sid,) = catalog.sources()
    (gap,) = catalog.gaps(sid)
    assert "in-place restore" in gap.reason and gap.resume_pos == 4
    # the source goes on; its new history is shipped
    src.sql("INSERT INTO shop.t VALUES (200, 200)")
    json_ok(run_cli("binlog", "ship", "--once", "--server-id", "558", "--json", env=env))
    assert any(s.binlog_file == gap.resume_file for s in catalog.segments(sid))
    # no restore from the old base replays across the break
    tgt = Sandbox(name="inplace-t").start()
    try:
        r = run_cli("restore", "--latest", "--target", tgt.url, "--dry-run", env=env)
        assert r.returncode == 2 and "in-place restore" in r.stderr, r.stderr
        last_before = max(s.last_commit_time for s in catalog.segments(sid)
                          if s.binlog_file == gap.after_file and s.transactions)
        before = json_ok(run_cli("restore", "--to-time", f"@{last_before:.0f}", "--target",
                             tgt.url, "--dry-run", "--json", env=env))
        assert before["base"]["id"] == shipped["snapshot"]["backup_id"]
        assert all(s["file"] != gap.resume_file for s in before["segments"])
        # a new base after the break reaches the new history
        json_ok(run_cli("snapshot", "--json", env=env))
        src.sql("INSERT INTO shop.t VALUES (300, 300)")
        json_ok(run_cli("binlog", "ship", "--once", "--server-id", "558", "--json", env=env))
        json_ok(run_cli("restore", "--latest", "--target", tgt.url, "--json", env=env))
        assert table_checksums(tgt, ["shop"]) == table_checksums(src, ["shop"])
    finally:
        tgt.destroy()


def _facts(host="db1", port=3306, server_id=1, uuid="") -> ServerFacts:
    return ServerFacts("mariadb", "10.11", (10, 11, 0), server_id, uuid, host, port, "/d", True,
                       "ROW", 0)


def test_the_source_is_recognised_by_uuid_by_host_port_and_id_or_by_the_configured_address():
    src = SourceIdentity("s1", hostname="db1", port=3306, server_id=1)
    spec = ConnSpec(host="10.0.0.9", port=3307)
    assert why_target_is_source(_facts(), spec, [src]) is not None
    assert why_target_is_source(_facts(port=3307), spec, [src]) is None  # another server on db1
    assert why_target_is_source(_facts(server_id=2), spec, [src]) is None
    moved = SourceIdentity("s1", hostname="db1", port=3306, server_id=1, datadir="/old/")
    assert why_target_is_source(_facts(), spec, [moved]) is None  # a later server on that port
    mysql_src = SourceIdentity("s2", flavor="mysql", server_uuid="u-1", hostname="a", port=1)
    assert "server_uuid" in why_target_is_source(_facts(uuid="u-1"), spec, [mysql_src])
    assert why_target_is_source(_facts(port=1), ConnSpec(host="127.0.0.1", port=3310), [],
                                ConnSpec(host="localhost", port=3310)) is not None
    assert why_target_is_source(_facts(port=1), ConnSpec(host="127.0.0.1", port=3310), [],
                                ConnSpec(host="127.0.0.1", port=3311)) is None
    # a server rebuilt where the source was (disaster recovery): its binlog never saw the base
    assert why_target_is_source(_facts(), spec, [src], history="", base_gtid="0-1-57") is None
    assert why_target_is_source(_facts(), spec, [src], history="0-1-12", base_gtid="0-1-57") is None
    assert why_target_is_source(_facts(), spec, [src], history="0-1-60", base_gtid="0-1-57")
    assert why_target_is_source(_facts(), spec, [src], history="", base_gtid="")  # nothing to tell
    assert why_target_is_source(_facts(port=1), ConnSpec(host="127.0.0.1", port=3310), [],
                                ConnSpec(host="localhost", port=3310), "", "0-1-5") is None
    assert "server_uuid" in why_target_is_source(_facts(uuid="u-1"), spec, [mysql_src], None, "",
                                                 "u-1:1-5")
