"""Cold backup and restore on real private mariadbd servers (and a real S3 server)."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import pymysql
import pytest

from backupkit.mysql.process import process_start
from backupkit.mysql.sandbox import Sandbox
from backupkit.mysql.workload import WriteLoad
from backupkit.repo.catalog import Catalog
from backupkit.restore.cold import restore_cold
from backupkit.storage import open_store
from backupkit.strategies.cold import ColdOptions, take_cold_backup
from backupkit.strategies.cold import staging as staging_mod
from tests.support import run_cli, table_checksums


def _options(sb: Sandbox, **kw) -> ColdOptions:
    return ColdOptions(start_command=sb.start_command(), pid_file=str(sb.pid_file),
                       stop_timeout=60, start_timeout=60, **kw)


def _fill(sb: Sandbox) -> None:
    sb.sql("CREATE DATABASE shop")
    sb.sql("CREATE TABLE shop.orders (id INT PRIMARY KEY, customer VARCHAR(64), amount DECIMAL(10,2),"
           " note TEXT, created DATETIME(6)) ENGINE=InnoDB")
    sb.sql("INSERT INTO shop.orders SELECT seq, CONCAT('c', seq % 97), seq / 7, REPEAT('n', seq % 300),"
           " '2026-01-01' + INTERVAL seq SECOND FROM seq_1_to_10000", database="shop")
    sb.sql("CREATE TABLE shop.aria_log (id INT PRIMARY KEY, msg VARCHAR(200)) ENGINE=Aria")
    sb.sql("INSERT INTO shop.aria_log SELECT seq, MD5(seq) FROM seq_1_to_3000", database="shop")
    sb.sql("CREATE TABLE shop.legacy (id INT PRIMARY KEY, b BLOB) ENGINE=MyISAM")
    sb.sql("INSERT INTO shop.legacy SELECT seq, RANDOM_BYTES(200) FROM seq_1_to_1000", database="shop")
    sb.sql("CREATE DATABASE `we``ird db`")
    sb.sql("CREATE TABLE `we``ird db`.`t-1` (id INT PRIMARY KEY, v JSON)")
    sb.sql("INSERT INTO `we``ird db`.`t-1` VALUES (1, '{\"a\": 1}'), (2, NULL)")


def retrying_writer(sb: Sandbox) -> WriteLoad:
    """A client that inserts row after row and retries through the downtime."""

    def connect():
        return pymysql.connect(host="127.0.0.1", port=sb.port, user="root", autocommit=True,
                               connect_timeout=2, read_timeout=5, write_timeout=5)

    def step(cur, n: int) -> None:
        # IGNORE: a retried row that did commit before the shutdown is not doubled
        cur.execute("INSERT IGNORE INTO app.w VALUES (%s, NOW(6))", (n,))

    return WriteLoad(connect, step, pause=0.003, record_acks=True)


def test_downtime_matches_the_outage_a_retrying_client_sees(mariadb, local_url, spare):
    mariadb.sql("CREATE DATABASE app")
    mariadb.sql("CREATE TABLE app.w (id INT PRIMARY KEY, at DATETIME(6))")
    writer = retrying_writer(mariadb)
    writer.start()
    try:
        time.sleep(0.5)
        store = open_store(local_url)
        manifest = take_cold_backup(store, mariadb.spec, _options(mariadb))
        time.sleep(0.5)
    finally:
        writer.stop(10)
    down = manifest.details["downtime"]
    gap, last_before = writer.outage()
    assert down["total_seconds"] == pytest.approx(gap, abs=0.5)
    assert down["stop_requested"] < down["stopped"] < down["start_requested"] < down["accepting"]
    total = down["stop_seconds"] + down["copy_seconds"] + down["start_seconds"]
    assert total == pytest.approx(down["total_seconds"], abs=0.01)
    assert manifest.stats["downtime_seconds"] == down["total_seconds"]
    # The backup holds exactly the writes committed before the shutdown: 1..k without holes,
    # k being the last acknowledged id or the one in flight when the server went down.
    target = spare()
    restore_cold(store, manifest, target.datadir, start_command=target.start_command(),
                 conn=target.spec, start_timeout=60)
    (count, top), = target.sql("SELECT COUNT(*), MAX(id) FROM app.w")
    assert count == top and top in (last_before, last_before + 1)


def test_restore_through_the_cli_gives_equal_checksums_s3_and_staging(mariadb, s3_url, spare, tmp_path):
    _fill(mariadb)
    conf = tmp_path / "my.cnf"
    conf.write_text("[mariadbd]\ninnodb_buffer_pool_size=64M\n")
    staging = tmp_path / "staging"
    (mariadb.datadir / "outside-link").symlink_to(conf)  # recorded as skipped, never followed
    r = run_cli("cold", "--source", mariadb.url, "--storage", s3_url,
                "--start-command", mariadb.start_command(), "--pid-file", str(mariadb.pid_file),
                "--staging", str(staging), "--config-file", str(conf), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] and out["kind"] == "cold"
    assert out["staging"]["copy_seconds"] > 0 and out["staging"]["upload_seconds"] > 0
    assert out["downtime"]["total_seconds"] > 0
    assert list(staging.iterdir()) == []  # the staged copy is removed after the upload
    before = table_checksums(mariadb)
    assert mariadb.sql("SELECT 1") == [(1,)]

    target = spare()
    r = run_cli("restore", out["backup_id"], "--storage", s3_url, "--datadir", str(target.datadir),
                "--start-command", target.start_command(), "--target", target.url, "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["started"] and res["start_verified"] and res["files"] > 100
    assert res["point"]["file"] == out["point"]["file"] and res["point"]["pos"] == out["point"]["pos"]
    assert table_checksums(target) == before
    assert Path(res["config_file"]).read_text() == conf.read_text()
    assert not (target.datadir / "outside-link").exists()
    manifest = Catalog(open_store(s3_url)).backup(out["backup_id"])
    assert manifest.details["skipped"] == [{"path": "data/outside-link", "target": str(conf),
                                            "reason": "symlink leads outside its folder"}]
    records = Catalog(open_store(s3_url)).restore_records()
    assert [x["backup_id"] for x in records] == [out["backup_id"]]


def test_cold_point_is_exact_for_binlog_replay(mariadb, local_url, spare):
    """Restore the base, replay the source's own binlog from the recorded point with the
    standard tools, and get the source's exact tables (the PITR engine relies on this)."""
    _fill(mariadb)
    conn = mariadb.connect()
    with conn.cursor() as cur:  # several domains and server ids: a multi-line binlog state
        cur.execute("SET SESSION gtid_domain_id = 5")
        cur.execute("INSERT INTO shop.aria_log VALUES (5001, 'domain 5')")
        cur.execute("SET SESSION server_id = 77")
        cur.execute("INSERT INTO shop.aria_log VALUES (5002, 'domain 5, server 77')")
        cur.execute("SET SESSION gtid_domain_id = 0")
        cur.execute("INSERT INTO shop.aria_log VALUES (5003, 'domain 0, server 77')")
    conn.close()
    mariadb.sql("INSERT INTO shop.aria_log VALUES (5004, 'domain 0, server 1')")
    store = open_store(local_url)
    manifest = take_cold_backup(store, mariadb.spec, _options(mariadb))
    binlog = manifest.details["binlog"]
    before = binlog["before_stop"]
    assert (manifest.point.file, manifest.point.pos) == (before["file"], before["pos"])
    gtids = set(manifest.point.gtid.split(","))
    assert gtids == set(before["gtid"].split(","))
    assert {g.split("-")[0] for g in gtids} == {"0", "5"} and "5-77-2" in gtids
    assert binlog["point_check"] == {"checked": True, "binlog_gtid_pos": manifest.point.gtid,
                                     "equal": True}
    assert binlog["end"]["stop_event"] and binlog["end"]["closed"]
    # the server moves on after its restart
    mariadb.sql("UPDATE shop.orders SET amount = amount + 1 WHERE id % 10 = 0")
    mariadb.sql("DELETE FROM shop.aria_log WHERE id > 2500")
    mariadb.sql("INSERT INTO shop.orders SELECT seq, 'late', 1, NULL, NOW(6) FROM seq_40001_to_41000",
                database="shop")
    mariadb.sql("CREATE TABLE shop.after (id INT PRIMARY KEY)")
    mariadb.sql("FLUSH BINARY LOGS")
    mariadb.sql("INSERT INTO shop.after VALUES (1), (2)")
    expected = table_checksums(mariadb)

    target = spare()
    result = restore_cold(store, manifest, target.datadir, start_command=target.start_command(),
                          conn=target.spec, start_timeout=60)
    assert result.point["pos"] == manifest.point.pos
    names = sorted(p.name for p in mariadb.datadir.glob("binlog.[0-9]*"))
    files = [str(mariadb.datadir / n) for n in names if n >= manifest.point.file]
    dump = subprocess.run(["mariadb-binlog", f"--start-position={manifest.point.pos}", *files],
                          capture_output=True, check=True)
    subprocess.run(["mariadb", "-h", "127.0.0.1", "-P", str(target.port), "-u", "root"],
                   input=dump.stdout, capture_output=True, check=True)
    assert table_checksums(target) == expected


def _planted(base: Path, name: str, owner: dict | None) -> Path:
    """A staging folder as a killed (or running, or failed) backupkit would leave it."""
    folder = base / f"{name}.staging"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "ibdata1").write_bytes(b"x" * 4096)
    if owner is not None:
        (folder / staging_mod.STAGING_OWNER).write_text(json.dumps(owner))
    return folder


def test_default_cold_backup_stages_beside_the_datadir_and_cleans_up_after_killed_runs(
        mariadb, local_url, spare):
    _fill(mariadb)
    base = staging_mod.auto_staging_location(mariadb.datadir)
    assert base == mariadb.datadir.parent / ".backupkit-staging"
    base.mkdir()
    os.chmod(base, 0o755)
    host = socket.gethostname()
    dead = subprocess.Popen(["true"])
    dead.wait()
    me = {"pid": os.getpid(), "start": process_start(os.getpid()), "host": host}
    gone = _planted(base, "gone", {"pid": dead.pid, "start": None, "host": host})
    reused = _planted(base, "reused", {**me, "start": me["start"] - 1})  # same pid, another process
    _planted(base, "live", me)
    _planted(base, "kept", {"pid": dead.pid, "host": host, "kept": "the server did not start"})
    _planted(base, "elsewhere", {"pid": dead.pid, "host": f"{host}-other"})
    _planted(base, "unowned", None)
    (base / "notes.txt").write_text("not ours")

    r = run_cli("cold", "--source", mariadb.url, "--storage", local_url,
                "--start-command", mariadb.start_command(), "--pid-file", str(mariadb.pid_file), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    staged = out["staging"]
    assert staged["mode"] == "auto" and Path(staged["path"]).parent == base
    assert staged["copy_seconds"] > 0 and staged["upload_seconds"] > 0 and staged["bytes"] > 0
    assert staged["removed_leftovers"] == [str(gone), str(reused)]
    assert f"removed leftover staging copy {gone}" in r.stderr
    # our own copy is gone; only what is not ours to remove is left
    assert sorted(p.name for p in base.iterdir()) == [
        "elsewhere.staging", "kept.staging", "live.staging", "notes.txt", "unowned.staging"]
    assert stat.S_IMODE(base.stat().st_mode) == 0o700
    manifest = Catalog(open_store(local_url)).backup(out["backup_id"])
    assert manifest.details["staging"] == staged
    assert "read_seconds" not in manifest.details["downtime"]  # nothing was compressed while down
    before = table_checksums(mariadb)
    assert mariadb.sql("SELECT COUNT(*) FROM shop.orders") == [(10000,)]

    target = spare()
    restore_cold(open_store(local_url), manifest, target.datadir, start_command=target.start_command(),
                 conn=target.spec, start_timeout=60)
    assert table_checksums(target) == before
