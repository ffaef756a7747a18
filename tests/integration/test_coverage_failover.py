"""Shipping across a failover (issue 15, part 4). Under one source id the shipper follows a
switchover to a promoted replica that logs its own binlog: its segments live in a new server
epoch (a new primary's binlog.000001 never lands on the old one's, wal-g#1636), the link is
found by GTID, and a restore to a moment after the switchover uses a base from before it and
replays the old server's segments, then the new server's, exactly (CHECKSUM TABLE). A switchover
that lost transactions is a recorded gap, never silent. A primary and a replica: two private
mariadbd with GTID replication."""

from __future__ import annotations

import json
import math
import time

import pymysql
import pytest

from backupkit.mysql.workload import WriteLoad
from backupkit.repo.catalog import Catalog
from backupkit.storage import open_store
from tests.support import json_ok, run_cli, table_checksums, wait_for
from tests.support.proxy import FlakyProxy
from tests.support.replication import caught_up, promote, replicate
from tests.support.shipping import cli_env, make_table, purge_to_current, ship_once, start_shipper, stop_proc

pytestmark = pytest.mark.timeout(300)
SOURCE = "shop"


def _env(sb, url: str, tmp_path) -> dict[str, str]:
    """The CLI's environment for sb, with a policy naming the source id both servers share."""
    policy = tmp_path / "policy.toml"
    policy.write_text(f'name = "{SOURCE}"\n[source]\nsource_id = "{SOURCE}"\n[storage]\nurl = "{url}"\n')
    return cli_env(sb, url, BACKUPKIT_POLICY=str(policy))


def _pair(mariadb_factory, replica_logs: bool = True):
    primary = mariadb_factory(server_id=1, extra_args=["--log-slave-updates"])
    replica = mariadb_factory(server_id=2, extra_args=["--log-slave-updates"] if replica_logs else [])
    make_table(primary)
    replicate(primary, replica)
    wait_for(lambda: caught_up(primary, replica), 30, "the replica")
    return primary, replica


def _pair_with_base(mariadb_factory, tmp_path, url: str | None = None, replica_logs: bool = True):
    """_pair, each server's CLI environment for the repository at url (a local one by default),
    and a snapshot of the primary: (primary, replica, url, env_p, env_r, the snapshot's output)."""
    primary, replica = _pair(mariadb_factory, replica_logs)
    url = url or f"file://{tmp_path / 'repo'}"
    env_p, env_r = _env(primary, url, tmp_path), _env(replica, url, tmp_path)
    return primary, replica, url, env_p, env_r, json_ok(run_cli("snapshot", "--json", env=env_p))


def _shipped_through(url: str, sb, timeout: float = 30) -> None:
    """Wait until the repository's newest segment ends at sb's GTID position."""
    catalog = Catalog(open_store(url))
    want = sb.sql("SELECT @@gtid_binlog_pos")[0][0]

    def done():
        last = catalog.last_segment(SOURCE)
        return last is not None and last.gtid_state == want
    wait_for(done, timeout, f"shipping up to {want}", interval=0.2)


def _mark(writer: WriteLoad, sb) -> tuple[float, dict]:
    """A moment between two whole seconds of commits: pause the writes, read the checksums, let
    the second end, resume. Restoring --to-time that moment must give exactly these checksums."""
    writer.pause()
    sums = table_checksums(sb, ["w"])
    at = time.time()
    time.sleep(math.ceil(at) - at + 0.05)
    writer.resume()
    return at, sums


def _writes(current: list) -> WriteLoad:
    """Small transactions against whichever server is the primary now (current[0])."""
    def step(cur, i: int) -> None:
        if cur.connection.port != current[0].port:  # reconnect to the new primary
            raise pymysql.err.InterfaceError("the primary moved")
        if i % 11 == 0:
            cur.execute("BEGIN")
            cur.execute("INSERT INTO w.t (k, v) VALUES (%s, REPEAT('m', 100))", (i,))
            cur.execute("UPDATE w.t SET k = k + 1 WHERE id = %s", (i // 3 + 1,))
            cur.execute("COMMIT")
        else:
            cur.execute("INSERT INTO w.t (k, v) VALUES (%s, 'v')", (i,))
    return WriteLoad(lambda: current[0].connect(), step, pause=0.004, name="failover-writer")


def test_the_shipper_follows_a_switchover_and_restores_across_it_are_exact(mariadb_factory, tmp_path,
                                                                            store_url):
    primary, replica, url, env_p, env_r, base = _pair_with_base(mariadb_factory, tmp_path, store_url)
    procs = [start_shipper(primary, url, tmp_path / "ship-primary.log", "--source-id", SOURCE)]
    current = [primary]
    writer = _writes(current)
    writer.start()
    try:
        time.sleep(2)
        before = _mark(writer, primary)
        primary.sql("FLUSH BINARY LOGS")  # the old server's binlog spans two files
        time.sleep(1.5)
        # the switchover, under the write load: writes stop between two transactions, the
        # replica catches up, it is promoted, and the writes go on against it
        writer.pause()
        wait_for(lambda: caught_up(primary, replica), 30, "the replica")
        promote(replica)
        primary.sql("SET GLOBAL read_only = 1")
        current[0] = replica
        writer.resume()
        switched_at = time.time()
        assert stop_proc(procs[0]) == 0
        procs.append(start_shipper(replica, url, tmp_path / "ship-replica.log", "--source-id", SOURCE))
        time.sleep(1.5)
        across = _mark(writer, replica)
        replica.sql("FLUSH BINARY LOGS")
        time.sleep(1.5)
        after = _mark(writer, replica)
        time.sleep(1)
        writer.pause()
        _shipped_through(url, replica)
        status = json_ok(run_cli("binlog", "status", "--json", env=env_r))["sources"][0]
    finally:
        writer.stop()
        for p in procs:
            stop_proc(p)
    final = table_checksums(replica, ["w"])
    assert before[1] != across[1] != after[1] != final  # the writes went on, on the new primary
    log = (tmp_path / "ship-replica.log").read_text()
    assert "switchover" in log and "no transaction was lost" in log, log
    assert writer.commits > 300, writer.commits
    print(f"commits {writer.commits}, write errors {writer.errors}")

    # status: which server is shipped, and the switchover history
    assert status["shipped_server"]["server_id"] == 2 and status["shipped_server"]["epoch"] == 1
    servers = status["servers"]
    assert [s["server_id"] for s in servers] == [1, 2], servers
    assert servers[1]["joined"] == "by GTID" and servers[1]["first"].startswith("~0001~binlog.")
    assert len(status["ranges"]) == 1 and not status["gaps"], status["ranges"]
    # the two servers' file names repeat (both have binlog.000001/2), their segments never collide
    catalog = Catalog(open_store(url))
    files = {s.binlog_file for s in catalog.segments(SOURCE)}
    assert "binlog.000002" in files and "~0001~binlog.000002" in files, files

    listing = json_ok(run_cli("list", "--json", env=env_r))
    assert len(listing["binlog_coverage"]) == 1, listing["binlog_coverage"]  # one run across both
    json_ok(run_cli("report", "--json", env=env_r))
    # binlog purge counts, on each server, only what was shipped from it, in its own file names
    new = json_ok(run_cli("binlog", "purge", "--keep", "0", "--dry-run", "--json", env=env_r))
    assert new["files"] == ["binlog.000001"] and new["purge_to"] == "binlog.000002", new
    old = json_ok(run_cli("binlog", "purge", "--keep", "0", "--dry-run", "--json", env=env_p))
    assert old["files"] == ["binlog.000001"] and old["current_file"] == "binlog.000002", old

    # restores to moments before, across and after the switchover, from the base before it
    target = mariadb_factory(server_id=9)
    for at, sums in (before, across, after):
        out = json_ok(run_cli("restore", "--to-time", f"@{at:.3f}", "--target", target.url, "--force",
                          "--json", env=env_r))
        assert out["plan"]["base"]["id"] == base["backup_id"]
        epochs = {s["file"].startswith("~0001~") for s in out["plan"]["segments"]}
        assert epochs == ({False} if at < switched_at else {False, True}), epochs
        assert table_checksums(target, ["w"]) == sums, (at - switched_at)
    plan = json_ok(run_cli("restore", "--latest", "--dry-run", "--json", env=env_r))
    shipped = [s["file"] for s in plan["segments"]]
    first_new = next(i for i, f in enumerate(shipped) if f.startswith("~"))
    assert first_new > 0 and all(f.startswith("~0001~") for f in shipped[first_new:]), shipped
    out = json_ok(run_cli("restore", "--latest", "--target", target.url, "--force", "--json", env=env_r))
    assert out["gap"] is None
    assert table_checksums(target, ["w"]) == final


def test_a_running_shipper_behind_a_virtual_ip_follows_the_switchover(mariadb_factory, tmp_path):
    """The source's address moves to the promoted replica (a virtual IP, here a TCP proxy) while
    the shipper runs: its next session reaches another server, and it follows it by GTID
    without a restart."""
    primary, replica = _pair(mariadb_factory)
    vip = FlakyProxy(primary.port).up()
    vip_env = {"BACKUPKIT_SOURCE": f"mysql://root@127.0.0.1:{vip.port}"}
    url = f"file://{tmp_path / 'repo'}"
    env = {**_env(primary, url, tmp_path), **vip_env}
    current = [primary]
    writer = _writes(current)
    proc = None
    try:
        base = json_ok(run_cli("snapshot", "--json", env=env))
        proc = start_shipper(primary, url, tmp_path / "ship.log", "--source-id", SOURCE, env=vip_env)
        writer.start()
        time.sleep(1.5)
        before = _mark(writer, primary)
        time.sleep(1)
        writer.pause()
        wait_for(lambda: caught_up(primary, replica), 30, "the replica")
        promote(replica)
        primary.sql("SET GLOBAL read_only = 1")
        vip.down()  # the address moves: open connections are cut, new ones reach the replica
        vip.target = ("127.0.0.1", replica.port)
        vip.up()
        current[0] = replica
        writer.resume()
        time.sleep(1.5)
        after = _mark(writer, replica)
        time.sleep(1)
        writer.pause()
        _shipped_through(url, replica)
    finally:
        writer.stop()
        if proc is not None:
            stop_proc(proc)
        vip.close()
    assert before[1] != after[1] != table_checksums(replica, ["w"])
    log = (tmp_path / "ship.log").read_text()
    assert "is now server_id 2, not server_id 1" in log and "no transaction was lost" in log, log
    status = json_ok(run_cli("binlog", "status", "--json", env=env))["sources"][0]
    assert [s["server_id"] for s in status["servers"]] == [1, 2]
    assert status["servers"][1]["joined"] == "by GTID" and len(status["ranges"]) == 1
    target = mariadb_factory(server_id=9)
    for at, sums in (before, after):
        out = json_ok(run_cli("restore", "--to-time", f"@{at:.3f}", "--target", target.url, "--force",
                          "--json", env=env))
        assert out["plan"]["base"]["id"] == base["backup_id"]
        assert table_checksums(target, ["w"]) == sums
    json_ok(run_cli("restore", "--latest", "--target", target.url, "--force", "--json", env=env))
    assert table_checksums(target, ["w"]) == table_checksums(replica, ["w"])


def test_a_switchover_and_back_ships_the_first_server_again_in_a_third_epoch(mariadb_factory, tmp_path):
    """Server 1, then server 2, then server 1 again: the first server's file names come back
    (its binlog.000001 is shipped in epoch 0 and again, further on, in epoch 2), and a restore from the
    first base across both switchovers is exact."""
    primary, replica, url, env_p, _env_r, base = _pair_with_base(mariadb_factory, tmp_path)

    def writes(sb, tag: int, n: int = 30) -> None:
        for i in range(n):
            sb.sql("INSERT INTO w.t (k, v) VALUES (%s, 'x')", (tag + i,))

    writes(primary, 0)
    json_ok(ship_once(primary, url, "--source-id", SOURCE))
    wait_for(lambda: caught_up(primary, replica), 30, "the replica")
    promote(replica)  # switchover 1: server 2 is the primary, server 1 its replica
    primary.sql("SET GLOBAL gtid_slave_pos = @@gtid_binlog_pos")
    replicate(replica, primary)
    writes(replica, 1000)
    json_ok(ship_once(replica, url, "--source-id", SOURCE))
    writes(replica, 2000)
    wait_for(lambda: caught_up(replica, primary), 30, "the old primary")
    promote(primary)  # switchover 2: back to server 1
    writes(primary, 3000)
    r = run_cli("binlog", "ship", "--once", "--source-id", SOURCE, env=env_p)  # the human output
    assert r.returncode == 0, r.stderr
    assert "switchover followed: server_id 2 -> 1" in " ".join((r.stdout + r.stderr).split())
    human = run_cli("binlog", "status", env=env_p)
    assert human.returncode == 0 and "servers shipped" in human.stdout, human.stdout + human.stderr
    status = json_ok(run_cli("binlog", "status", "--json", env=env_p))["sources"][0]
    assert [(e["epoch"], e["server_id"]) for e in status["servers"]] == [(0, 1), (1, 2), (2, 1)]
    assert all(e.get("joined", "by GTID") == "by GTID" for e in status["servers"])
    assert len(status["ranges"]) == 1 and not status["gaps"]
    target = mariadb_factory(server_id=9)
    out = json_ok(run_cli("restore", "--latest", "--target", target.url, "--force", "--json", env=env_p))
    assert out["plan"]["base"]["id"] == base["backup_id"]
    assert {s["file"][:6] for s in out["plan"]["segments"]} >= {"~0001~", "~0002~"}
    assert table_checksums(target, ["w"]) == table_checksums(primary, ["w"])


def test_transactions_the_dead_primary_never_shipped_are_shipped_from_the_promoted_replica(
        mariadb_factory, tmp_path):
    """The primary dies with committed transactions its shipper had not shipped yet, but its
    replica had: the link is before them on the replica, so they are shipped from there."""
    primary, replica, url, _env_p, env_r, _base = _pair_with_base(mariadb_factory, tmp_path)
    for i in range(10):
        primary.sql("INSERT INTO w.t (k, v) VALUES (%s, 'shipped')", (i,))
    json_ok(ship_once(primary, url, "--source-id", SOURCE))
    shipped = Catalog(open_store(url)).last_segment(SOURCE).gtid_state
    for i in range(25):  # committed and replicated, never shipped: then the primary dies
        primary.sql("INSERT INTO w.t (k, v) VALUES (%s, 'unshipped')", (100 + i,))
    wait_for(lambda: caught_up(primary, replica), 30, "the replica")
    expected = table_checksums(replica, ["w"])
    primary.stop()
    promote(replica)
    out = json_ok(ship_once(replica, url, "--source-id", SOURCE))
    assert out["switchovers"][0]["lossless"] and out["transactions"] == 25, out
    assert out["switchovers"][0]["gtid"] == shipped
    target = mariadb_factory(server_id=9)
    json_ok(run_cli("restore", "--latest", "--target", target.url, "--force", "--json", env=env_r))
    assert table_checksums(target, ["w"]) == expected


def test_a_lossy_switchover_is_a_recorded_gap_and_the_runbook_recovers(mariadb_factory, tmp_path):
    primary, replica, url, _env_p, env_r, _base = _pair_with_base(mariadb_factory, tmp_path)
    for i in range(10):
        primary.sql("INSERT INTO w.t (k) VALUES (%s)", (i,))
    wait_for(lambda: caught_up(primary, replica), 30, "the replica")
    replica.sql("STOP SLAVE")  # the replica falls behind, then is promoted anyway
    for i in range(5):
        primary.sql("INSERT INTO w.t (k) VALUES (%s)", (100 + i,))
    json_ok(ship_once(primary, url, "--source-id", SOURCE))
    shipped = table_checksums(primary, ["w"])
    promote(replica)
    for i in range(7):  # its own 0-2-N take the sequence numbers of the lost 0-1-N
        replica.sql("INSERT INTO w.t (k) VALUES (%s)", (900 + i,))
    before = sorted(p.name for p in (tmp_path / "repo").rglob("*.binlog.zst"))
    r = ship_once(replica, url, "--source-id", SOURCE)
    assert r.returncode == 3, r.stderr
    line = " ".join(r.stderr.split())
    assert "GAP" in line and "server_id 1" in line and "server_id 2" in line, line
    assert "diverged" in line or "before the last shipped transaction" in line, line
    assert sorted(p.name for p in (tmp_path / "repo").rglob("*.binlog.zst")) == before  # nothing shipped
    status = json_ok(run_cli("binlog", "status", "--json", env=env_r))["sources"][0]
    assert any("switchover" in g["reason"] and "lost transactions" in g["reason"] for g in status["gaps"])

    # --latest names the gap and refuses; --accept-gap restores what was shipped, exactly
    target = mariadb_factory(server_id=9)
    r = run_cli("restore", "--latest", "--target", target.url, "--force", "--json", env=env_r)
    assert r.returncode == 2, r.stderr
    err = json.loads(r.stdout)
    assert "switchover" in err["error"] and err["details"]["gap"]["recorded"]
    json_ok(run_cli("restore", "--latest", "--accept-gap", "--target", target.url, "--force", "--json",
                env=env_r))
    assert table_checksums(target, ["w"]) == shipped

    # the runbook: a snapshot of the new primary, then restart shipping from it
    new_base = json_ok(run_cli("snapshot", "--json", env=env_r))
    for i in range(4):
        replica.sql("INSERT INTO w.t (k) VALUES (%s)", (950 + i,))
    out = json_ok(ship_once(replica, url, "--source-id", SOURCE, "--restart-from-current"))
    gap = out["gaps"][0]
    assert gap["resume_file"].startswith("~0001~") and "restarted at the point of snapshot" in gap["reason"]
    assert out["switchovers"][0]["lossless"] is False
    out = json_ok(run_cli("restore", "--latest", "--target", target.url, "--force", "--json", env=env_r))
    assert out["plan"]["base"]["id"] == new_base["backup_id"] and out["gap"] is None
    assert table_checksums(target, ["w"]) == table_checksums(replica, ["w"])


def test_a_new_server_whose_binlog_was_purged_past_the_link_point_is_refused(mariadb_factory, tmp_path):
    """Failure injection: the promoted replica holds every transaction, but its binlog no longer
    does (purged past the last shipped one): the link cannot be proven, so it is a gap."""
    primary, replica, url, _env_p, env_r, _base = _pair_with_base(mariadb_factory, tmp_path)
    json_ok(ship_once(primary, url, "--source-id", SOURCE))
    primary.sql("INSERT INTO w.t (k) VALUES (1)")
    json_ok(ship_once(primary, url, "--source-id", SOURCE))
    wait_for(lambda: caught_up(primary, replica), 30, "the replica")
    for i in range(3):
        primary.sql("INSERT INTO w.t (k) VALUES (%s)", (10 + i,))
    wait_for(lambda: caught_up(primary, replica), 30, "the replica")
    promote(replica)
    replica.sql("FLUSH BINARY LOGS")
    purge_to_current(replica)
    r = ship_once(replica, url, "--source-id", SOURCE)
    assert r.returncode == 3, r.stderr
    line = " ".join(r.stderr.split())
    assert "GAP" in line and "purged" in line and "are not in it" in line, line
    gaps = Catalog(open_store(url)).gaps(SOURCE)
    assert len(gaps) == 1 and "switchover" in gaps[0].reason
    # nothing of the replica's binlog was written; status names the gap
    assert all(s.server_id == 1 for s in Catalog(open_store(url)).segments(SOURCE))
    status = json_ok(run_cli("binlog", "status", "--json", env=env_r))["sources"][0]
    assert status["gaps"] and "purged" in status["gaps"][0]["reason"]


def test_a_promoted_replica_that_did_not_log_what_it_replicated_is_a_gap(mariadb_factory, tmp_path):
    """Failure injection: log_slave_updates=OFF on the replica; its data is complete, but its
    binlog holds none of the replicated transactions, so nothing links: a gap, named so."""
    primary, replica, url, _env_p, _env_r, _base = _pair_with_base(mariadb_factory, tmp_path,
                                                                   replica_logs=False)
    for i in range(5):
        primary.sql("INSERT INTO w.t (k) VALUES (%s)", (i,))
    json_ok(ship_once(primary, url, "--source-id", SOURCE))
    wait_for(lambda: caught_up(primary, replica), 30, "the replica")
    promote(replica)
    replica.sql("INSERT INTO w.t (k) VALUES (99)")
    r = ship_once(replica, url, "--source-id", SOURCE)
    assert r.returncode == 3, r.stderr
    assert "log_slave_updates=OFF" in " ".join(r.stderr.split()), r.stderr
    assert len(Catalog(open_store(url)).gaps(SOURCE)) == 1
