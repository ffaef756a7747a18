"""Physical backups with mariadb-backup on real private mariadbd servers and a real S3 server.

A writer commits one numbered transaction after another (a new row and a counter update), and
notes each one's GTID. A backup is consistent at its point exactly when a server started on its
restored datadir holds rows 1..M and counter M, where M is the writer's last transaction whose
GTID the manifest's point includes, and those rows equal the source's.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pymysql
import pytest

from backupkit.errors import BackupkitError, IntegrityError, UsageError
from backupkit.mysql.connection import ConnSpec
from backupkit.mysql.mariabackup import ToolMissing
from backupkit.mysql.sandbox import Sandbox
from backupkit.repo import layout
from backupkit.repo.catalog import Catalog
from backupkit.restore.physical import ToolFailed, restore_physical
from backupkit.restore.pitr import restore_to_point
from backupkit.restore.stoppoint import time_target
from backupkit.storage import open_store
from backupkit.strategies.binlog import ShipOptions, Shipper
from backupkit.strategies.physical import PhysicalOptions, take_physical_backup
from backupkit.strategies.physical.engine import PhysicalBackupFailed
from tests.support import run_cli, table_checksums

pytestmark = pytest.mark.timeout(600)


def _fill(sb: Sandbox, rows: int = 20000) -> None:
    sb.sql("CREATE DATABASE app")
    sb.sql("CREATE TABLE app.items (id INT PRIMARY KEY, v VARCHAR(100), pad CHAR(100)) ENGINE=InnoDB")
    sb.sql(f"INSERT INTO app.items SELECT seq, MD5(seq), REPEAT('p', seq % 100) FROM seq_1_to_{rows}",
           database="app")
    sb.sql("CREATE TABLE app.log (id INT PRIMARY KEY, note VARCHAR(64)) ENGINE=InnoDB")
    sb.sql("CREATE TABLE app.counter (id INT PRIMARY KEY, n INT) ENGINE=InnoDB")
    sb.sql("INSERT INTO app.counter VALUES (1, 0)")
    sb.sql("CREATE TABLE app.aria (id INT PRIMARY KEY, v VARCHAR(40)) ENGINE=Aria")
    sb.sql("INSERT INTO app.aria SELECT seq, MD5(seq) FROM seq_1_to_500", database="app")


class Writer(threading.Thread):
    """Transaction k inserts app.log row k and sets the counter to k; its GTID seq is noted."""

    def __init__(self, sb: Sandbox) -> None:
        super().__init__(daemon=True)
        self.sb = sb
        self.stop_flag = threading.Event()
        self.seq_of: dict[int, int] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn = pymysql.connect(host="127.0.0.1", port=self.sb.port, user="root", database="app",
                                   autocommit=False)
            k = 0
            with conn.cursor() as cur:
                while not self.stop_flag.is_set():
                    k += 1
                    cur.execute("INSERT INTO log VALUES (%s, MD5(%s))", (k, k))
                    cur.execute("UPDATE counter SET n = %s WHERE id = 1", (k,))
                    conn.commit()
                    cur.execute("SELECT @@last_gtid")
                    self.seq_of[k] = int(cur.fetchone()[0].rsplit("-", 1)[1])
                    if k % 50 == 0:
                        cur.execute("UPDATE items SET v = MD5(RAND()) WHERE id = %s", (k % 20000 + 1,))
                        conn.commit()
            conn.close()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def halt(self) -> None:
        self.stop_flag.set()
        self.join(30)
        assert self.error is None, self.error


def _log_state(conn_or_sb, upto: int | None = None) -> tuple:
    sql = "SELECT COUNT(*), MAX(id), BIT_XOR(CRC32(CONCAT(id, ':', note))) FROM app.log"
    if upto is not None:
        sql += f" WHERE id <= {upto}"
    rows = conn_or_sb.sql(sql)
    return tuple(rows[0])


def _expected_rows(writer: Writer, gtid: str) -> int:
    seq = int(gtid.split(",")[0].rsplit("-", 1)[1])
    return max((k for k, s in writer.seq_of.items() if s <= seq), default=0)


def test_full_and_two_incrementals_under_load_restore_to_each_point(mariadb, s3_url, spare):
    _fill(mariadb)
    # Flush eagerly, so the checkpoint (where the next incremental starts) keeps up with writes
    mariadb.sql("SET GLOBAL innodb_max_dirty_pages_pct = 0")
    store = open_store(s3_url)
    writer = Writer(mariadb)
    writer.start()
    time.sleep(0.5)
    opts = dict(source_id="src", part_size_mb=4, parallel=2)
    full = take_physical_backup(mariadb.spec, store, PhysicalOptions(**opts))
    time.sleep(0.5)
    inc1 = take_physical_backup(mariadb.spec, store, PhysicalOptions(incremental=True, **opts))
    mariadb.sql("UPDATE app.items SET pad = 'changed' WHERE id % 100 = 0")
    inc2 = take_physical_backup(mariadb.spec, store, PhysicalOptions(incremental=True, **opts))
    time.sleep(0.3)
    writer.halt()
    assert full.stats["parts"] > 1  # cut into bounded parts
    assert inc1.details["parent"] == full.id and inc2.details["chain"] == [full.id, inc1.id, inc2.id]
    assert inc1.details["lsn"]["from"] == full.details["lsn"]["to"]
    # (how small an incremental is depends on how far the checkpoint kept up with the writes:
    # bench/physical.py measures it on a settled server)
    for m in (full, inc1, inc2):
        assert m.point.file.startswith("binlog.") and m.point.gtid
        assert m.details["tool_version"].startswith("10.")
        assert m.details["consistency"]["blocked_ms"] is not None
    catalog = Catalog(store)
    source_items = table_checksums(mariadb, ["app"])
    for m in (full, inc1, inc2):
        box = spare()
        result = restore_physical(store, m, box.datadir, catalog=catalog, conn=box.spec,
                                  start_command=box.start_command(), pid_file=box.pid_file)
        assert result.started and result.chain[-1] == m.id
        want = _expected_rows(writer, m.point.gtid)
        assert want > 0
        got = _log_state(box)
        assert got == _log_state(mariadb, want), f"{m.id}: rows differ from the source at the point"
        assert got[0] == got[1] == want
        assert box.sql("SELECT n FROM app.counter")[0][0] == want
        assert box.sql("CHECKSUM TABLE app.aria")[0][1] == source_items["app.aria"]
        if m is inc2:
            assert box.sql("SELECT COUNT(*) FROM app.items WHERE pad = 'changed'")[0][0] == 200
        box.stop()
    records = [r for r in catalog.restore_records() if r.get("kind") == "physical"]
    assert len(records) == 3 and all(r["duration"] > 0 for r in records)


def _ship(store, spec) -> None:
    Shipper(store, spec, ShipOptions(source_id="src", until_current=True, server_id=778,
                                     sync_interval=0.2)).run()


def _cross_second(extra: float = 0.05) -> None:
    time.sleep(1 - (time.time() % 1) + extra)


def test_restore_to_time_with_physical_base_and_shipped_binlog(mariadb, s3_url, spare):
    _fill(mariadb, rows=5000)
    store = open_store(s3_url)
    take_physical_backup(mariadb.spec, store, PhysicalOptions(source_id="src"))
    _ship(store, mariadb.spec)
    mariadb.sql("INSERT INTO app.log SELECT seq, 'after' FROM seq_1_to_300", database="app")
    mariadb.sql("UPDATE app.items SET v = 'moved' WHERE id < 1000")
    _cross_second()
    t = time.time()
    want = table_checksums(mariadb, ["app"])
    _cross_second()
    mariadb.sql("DELETE FROM app.items WHERE id < 2000")
    mariadb.sql("INSERT INTO app.log SELECT seq, 'later' FROM seq_301_to_400", database="app")
    _ship(store, mariadb.spec)
    box = spare()
    catalog = Catalog(store)
    result = restore_to_point(store, catalog, time_target(t), box.spec, datadir=str(box.datadir),
                              start_command=box.start_command(), report_loss=False)
    assert result.plan.base.kind == "physical"
    assert result.replay is not None and result.replay.transactions >= 2
    assert table_checksums(box, ["app"]) == want
    assert result.reached.commit_time <= t


# -- faults -----------------------------------------------------------------------------------------
def test_missing_mariadb_backup_names_the_package(mariadb, local_url, monkeypatch, tmp_path):
    store = open_store(local_url)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissing) as err:
        take_physical_backup(mariadb.spec, store, PhysicalOptions())
    assert "mariadb-backup" in str(err.value) and "apt-get install mariadb-backup" in str(err.value)


def test_remote_source_is_refused(local_url):
    store = open_store(local_url)
    with pytest.raises(UsageError, match="not on this host"):
        take_physical_backup(ConnSpec(host="192.0.2.7", port=3306), store, PhysicalOptions())


def _child_named(name: str) -> int | None:
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == me and comm.startswith(name[:15]):
            return int(entry)
    return None


def test_killed_mid_stream_leaves_no_manifest_and_no_objects(mariadb, local_url, tmp_path):
    _fill(mariadb, rows=150000)
    store = open_store(local_url)
    outcome: dict = {}

    def run() -> None:
        try:
            # --throttle: about one 1 MiB read per second, so the stream is still running when killed
            take_physical_backup(mariadb.spec, store, PhysicalOptions(
                part_size_mb=1, parallel=1, extra_args=["--throttle=2"]))
        except BaseException as exc:
            outcome["error"] = exc

    th = threading.Thread(target=run)
    th.start()
    deadline = time.monotonic() + 60
    pid = None
    while time.monotonic() < deadline:
        pid = _child_named("mariadb-backup")
        parts = [i for i in store.list(layout.BACKUPS) if ".mbstream." in i.key]
        if pid and parts:
            break
        time.sleep(0.05)
    assert pid and parts, "the backup never got going"
    os.kill(pid, signal.SIGKILL)
    th.join(60)
    err = outcome.get("error")
    assert isinstance(err, PhysicalBackupFailed) and "SIGKILL" in str(err)
    assert [i.key for i in store.list(layout.BACKUPS)] == []
    assert Catalog(store).backups() == []


def _full_and_incremental(sb: Sandbox, store) -> tuple:
    _fill(sb, rows=3000)
    full = take_physical_backup(sb.spec, store, PhysicalOptions(part_size_mb=1))
    sb.sql("UPDATE app.items SET v = 'x' WHERE id < 100")
    inc = take_physical_backup(sb.spec, store, PhysicalOptions(incremental=True))
    return full, inc


def test_corrupted_object_and_missing_link_exit_5_naming_them(mariadb, tmp_path, spare, monkeypatch):
    from backupkit.restore import physical as restore_mod

    url = f"file://{tmp_path / 'repo'}"
    store = open_store(url)
    full, inc = _full_and_incremental(mariadb, store)
    catalog = Catalog(store)
    box = spare()
    # a flipped byte in a part of the full backup
    key = full.objects[1].key
    path = tmp_path / "repo" / key
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as err:
        restore_physical(store, inc, box.datadir, catalog=catalog)
    assert err.value.exit_code == 5 and key in str(err.value)
    assert not box.datadir.exists()
    assert not list(box.base.glob("data.partial-*"))
    with monkeypatch.context() as m:  # the same without the zstd binary (decoded in Python)
        m.setattr(restore_mod, "_native_zstd", lambda store, link: None)
        with pytest.raises(IntegrityError) as err:
            restore_physical(store, inc, box.datadir, catalog=catalog)
        assert err.value.exit_code == 5 and key in str(err.value)
        assert not list(box.base.glob("data.partial-*"))
    r = run_cli("restore", inc.id, "--datadir", str(box.datadir), env={"BACKUPKIT_STORAGE": url})
    assert r.returncode == 5 and key in r.stderr
    # a missing link: the full backup's manifest is gone
    (tmp_path / "repo" / layout.backup_manifest(full.id)).unlink()
    with pytest.raises(IntegrityError) as err:
        restore_physical(store, inc, box.datadir, catalog=catalog)
    assert err.value.exit_code == 5 and full.id in str(err.value)
    r = run_cli("restore", inc.id, "--datadir", str(box.datadir), env={"BACKUPKIT_STORAGE": url})
    assert r.returncode == 5 and full.id in r.stderr


def test_non_empty_datadir_refused_then_force_moves_it_aside(mariadb, local_url, spare, tmp_path,
                                                             monkeypatch):
    store = open_store(local_url)
    full, _ = _full_and_incremental(mariadb, store)
    catalog = Catalog(store)
    box = spare()
    box.datadir.mkdir(parents=True)
    (box.datadir / "precious").write_text("keep me")
    with pytest.raises(UsageError, match="not empty"):
        restore_physical(store, full, box.datadir, catalog=catalog)
    assert (box.datadir / "precious").read_text() == "keep me"
    # a prepare that fails (as Ctrl-C would stop it) leaves the old datadir exactly where it was
    fake = tmp_path / "mariadb-backup"
    real = os.popen("command -v mariadb-backup").read().strip()
    fake.write_text(f'#!/bin/sh\nfor a in "$@"; do [ "$a" = --prepare ] && exit 3; done\nexec {real} "$@"\n')
    fake.chmod(0o755)
    os.environ["BACKUPKIT_MARIADB_BACKUP"] = str(fake)
    try:
        with pytest.raises(ToolFailed, match="prepare"):
            restore_physical(store, full, box.datadir, catalog=catalog, force=True)
    finally:
        del os.environ["BACKUPKIT_MARIADB_BACKUP"]
    assert (box.datadir / "precious").read_text() == "keep me"
    assert not list(box.base.glob("data.partial-*")) and not list(box.base.glob("data.before-*"))
    from backupkit.restore import physical as restore_mod

    monkeypatch.setattr(restore_mod, "_native_zstd", lambda store, link: None)  # decoded in Python
    result = restore_physical(store, full, box.datadir, catalog=catalog, force=True,
                              start_command=box.start_command(), conn=box.spec)
    aside = Path(result.moved_aside[str(box.datadir)])
    assert (aside / "precious").read_text() == "keep me"
    assert box.sql("SELECT COUNT(*) FROM app.items")[0][0] == 3000


def test_cli_physical_chain_verify_restore_test_report_and_prune(mariadb, local_url):
    import json

    _fill(mariadb, rows=3000)
    env = {"BACKUPKIT_SOURCE": mariadb.url, "BACKUPKIT_STORAGE": local_url}
    r = run_cli("snapshot", "--engine", "physical", "--incremental", "--json", env=env)
    assert r.returncode == 2 and "no physical backup" in r.stderr
    r = run_cli("snapshot", "--incremental", "--json", env=env)
    assert r.returncode == 2 and "--engine physical" in r.stderr
    # what [strategies] snapshot_incremental runs: with nothing to extend, a full backup
    r = run_cli("snapshot", "--engine", "physical", "--incremental", "--or-full", "--json", env=env)
    assert r.returncode == 0, r.stderr
    full = json.loads(r.stdout)
    assert full["kind"] == "physical" and not full["incremental"] and full["point"]["gtid"]
    mariadb.sql("UPDATE app.items SET v = 'cli' WHERE id < 50")
    r = run_cli("snapshot", "--engine", "physical", "--incremental", "--json", env=env)
    assert r.returncode == 0, r.stderr
    inc = json.loads(r.stdout)
    assert inc["chain"] == [full["backup_id"], inc["backup_id"]]
    r = run_cli("verify", inc["backup_id"], "--restore-test", "--json", env=env, timeout=300)
    assert r.returncode == 0, r.stderr + r.stdout
    tests = json.loads(r.stdout)["restore_tests"]
    assert tests[0]["kind"] == "physical" and tests[0]["server_started"] and tests[0]["tables"] >= 4
    r = run_cli("report", "--json", env=env)
    assert r.returncode == 0, r.stderr
    rows = {s["strategy"]: s for s in json.loads(r.stdout)["strategies"]}
    assert rows["physical"]["recovery_source"] == inc["backup_id"]
    assert rows["physical"]["rto_seconds"] == tests[0]["duration_s"]
    r = run_cli("prune", "--keep-last", "1", "--force", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert {b.id for b in Catalog(open_store(local_url)).backups()} == {full["backup_id"], inc["backup_id"]}


def test_a_full_staging_disk_is_one_line_and_leaves_nothing(mariadb, local_url, tmp_path, monkeypatch):
    import subprocess

    from backupkit.errors import StorageError
    from backupkit.restore import physical as restore_mod

    store = open_store(local_url)
    full, _ = _full_and_incremental(mariadb, store)
    catalog = Catalog(store)
    disk = tmp_path / "small"
    disk.mkdir()
    size_mb = max(4, full.stats["raw_bytes"] // (2 << 20))  # half of what the restore extracts
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(disk)]).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        datadir = disk / "data"
        # refused up front: the free space is checked against the chain's size
        with pytest.raises(StorageError, match="free"):
            restore_physical(store, full, datadir, catalog=catalog)
        # and if the disk fills anyway (the check passed), mbstream's failure is named the same way
        monkeypatch.setattr(restore_mod, "SPACE_MARGIN", -(1 << 40))
        with pytest.raises(StorageError, match="full"):
            restore_physical(store, full, datadir, catalog=catalog)
        assert os.listdir(disk) == []
    finally:
        subprocess.run(["umount", str(disk)])


def test_plan_skips_an_incremental_whose_chain_is_broken_and_says_why(mariadb, tmp_path, spare):
    import json

    url = f"file://{tmp_path / 'repo'}"
    store = open_store(url)
    full, inc1 = _full_and_incremental(mariadb, store)
    mariadb.sql("UPDATE app.items SET v = 'y' WHERE id < 100")
    inc2 = take_physical_backup(mariadb.spec, store, PhysicalOptions(incremental=True))
    assert inc2.details["chain"] == [full.id, inc1.id, inc2.id]
    (tmp_path / "repo" / layout.backup_manifest(inc1.id)).unlink()  # the middle link is lost
    env = {"BACKUPKIT_STORAGE": url}
    box = spare()
    args = ("restore", "--latest", "--datadir", str(box.datadir), "--dry-run")
    r = run_cli(*args, env=env)
    assert r.returncode == 0, r.stderr
    assert f"skipped physical backup {inc2.id}" in r.stdout and inc1.id in r.stdout
    r = run_cli(*args, "--json", env=env)
    plan = json.loads(r.stdout)
    assert plan["base"]["id"] == full.id
    assert any(inc1.id in n for n in plan["notes"])
    # with the full backup gone as well no base reaches the target: exit 5 naming the link
    (tmp_path / "repo" / layout.backup_manifest(full.id)).unlink()
    r = run_cli(*args, env=env)
    assert r.returncode == 5 and inc1.id in r.stderr, r.stderr


# -- the compressor: zstd children, the Python codec, encryption ----------------------------------
def test_zstd_children_cut_bounded_parts_and_the_python_codec_is_the_fallback(mariadb, tmp_path, spare,
                                                                              monkeypatch):
    from backupkit.restore import physical as restore_mod
    from backupkit.strategies.physical import engine

    _fill(mariadb, rows=20000)
    store = open_store(f"file://{tmp_path / 'repo'}")
    catalog = Catalog(store)
    native = take_physical_backup(mariadb.spec, store, PhysicalOptions(part_size_mb=1))
    assert native.details["compressor"] == "zstd child per part"
    assert native.stats["parts"] > 2 and all(o.raw_size <= 1 << 20 for o in native.objects)
    assert sum(o.raw_size for o in native.objects) == native.stats["raw_bytes"]
    monkeypatch.setattr(engine, "zstd_binary", lambda: None)
    codec = take_physical_backup(mariadb.spec, store, PhysicalOptions(part_size_mb=1))
    assert codec.details["compressor"] == "python-zstandard" and codec.stats["parts"] > 2
    want = _log_state(mariadb), table_checksums(mariadb, ["app"])
    for m, python_decode in ((native, True), (codec, False)):  # each read the other way round too
        box = spare()
        with monkeypatch.context() as patch:
            if python_decode:
                patch.setattr(restore_mod, "_native_zstd", lambda store, link: None)
            restore_physical(store, m, box.datadir, catalog=catalog, conn=box.spec,
                             start_command=box.start_command(), pid_file=box.pid_file)
        assert (_log_state(box), table_checksums(box, ["app"])) == want, m.details["compressor"]
        box.stop()


def _fake_zstd(tmp_path, body: str) -> str:
    fake = tmp_path / "zstd"
    fake.write_text(f"#!/bin/sh\n{body}\n")
    fake.chmod(0o755)
    return str(fake)


@pytest.mark.parametrize("body,why", [
    ("head -c 300000 >/dev/null; echo 'zstd: error 70 : Write error : No space left' >&2; exit 70",
     "zstd exited with status 70: zstd: error 70"),
    ("kill -9 $$", "zstd was killed by SIGKILL"),
])
def test_a_failing_or_killed_zstd_child_leaves_no_backup_and_no_objects(mariadb, local_url, tmp_path,
                                                                        monkeypatch, body, why):
    from backupkit.strategies.physical import engine

    _fill(mariadb, rows=20000)
    store = open_store(local_url)
    monkeypatch.setattr(engine, "zstd_binary", lambda: _fake_zstd(tmp_path, body))
    with pytest.raises(BackupkitError) as err:
        take_physical_backup(mariadb.spec, store, PhysicalOptions(part_size_mb=1))
    assert why in str(err.value) and "\n" not in err.value.message
    assert [i.key for i in store.list(layout.BACKUPS)] == []
    assert _child_named("mariadb-backup") is None and _child_named("zstd") is None


def test_an_encrypted_repository_stores_physical_parts_encrypted_and_restores_them(mariadb, tmp_path,
                                                                                  spare):
    import json

    _fill(mariadb, rows=5000)
    key = tmp_path / "k1.key"
    assert run_cli("repo", "keygen", str(key), "--json").returncode == 0
    repo = tmp_path / "repo"
    policy = tmp_path / "p.toml"
    policy.write_text(f'[storage]\nurl = "file://{repo}"\n\n[encryption]\nkey_file = "{key}"\n'
                      f'key_id = "k1"\n\n[source]\nurl = "{mariadb.url}"\n')
    r = run_cli("snapshot", "--engine", "physical", "--policy", str(policy), "--json")
    assert r.returncode == 0, r.stderr
    bid = json.loads(r.stdout)["backup_id"]
    parts = sorted((repo / layout.BACKUPS).rglob("*.mbstream*"))
    assert parts and all(p.read_bytes()[:6] == b"BKENC1" for p in parts)
    box = spare()
    r = run_cli("restore", bid, "--datadir", str(box.datadir), "--start-command", box.start_command(),
                "--target", box.url, "--policy", str(policy), "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    assert table_checksums(box, ["app"]) == table_checksums(mariadb, ["app"])
