"""Hot snapshot and its restore, against private mariadbd servers and a real S3 server."""

from __future__ import annotations

import json
import math
import random
import struct
import subprocess
import threading
import time

import boto3
import pytest

from backupkit.mysql.sandbox import Sandbox, free_port
from backupkit.repo.catalog import Catalog
from backupkit.restore.load import RestoreOptions, restore_snapshot
from backupkit.storage import open_store
from backupkit.strategies.snapshot import SnapshotOptions, take_snapshot
from tests.support import EVERY_TYPE_TABLE, run_cli, table_checksums

EVERY_TYPE_SQL = r"""
CREATE DATABASE types_db CHARACTER SET utf8mb4;
USE types_db;
SET SESSION sql_mode='';
SET time_zone='+00:00';
""" + EVERY_TYPE_TABLE + r"""
CREATE TABLE latin (id INT PRIMARY KEY, name VARCHAR(50), note TEXT) CHARACTER SET latin1;
CREATE TABLE nopk (a INT, b VARCHAR(10));
CREATE TABLE onecol (v VARCHAR(10));
INSERT INTO latin VALUES (1, 'café', 'Ærøskøbing\tx\\y\nz'), (2, '', NULL), (3, NULL, '');
INSERT INTO nopk VALUES (1,'a'),(1,'a'),(NULL,NULL),(2,'');
INSERT INTO onecol VALUES (''),(NULL),('\\N'),('N');
INSERT INTO every_type (id) VALUES (0);
INSERT INTO every_type (id, vc, txt, ch, bin, blb, fixbin, emoji, dec65, f, d, dt, tm, dtm, ts, yr,
  bt, bt3, en, st, js, geo, pt, ti, usb, sb) VALUES
 (1, '', '', '', '', '', '', '', 0, 0, 0, '0000-00-00', '00:00:00', '0000-00-00 00:00:00',
  '0000-00-00 00:00:00', 0, b'0', b'0', '', '', '{}', ST_GeomFromText('POINT(0 0)'), POINT(0,0),
  -128, 0, -9223372036854775808),
 (2, 'tab\there', 'new\nline', 'back\\sl', UNHEX('00090A0D5C4E'), UNHEX('5C'), UNHEX('00000000'),
  '😀𝄞', '99999999999999999999999999999999999.999999999999999999999999999999', 3.4028235e38,
  1.7976931348623157e308, '9999-12-31', '838:59:59.999999', '9999-12-31 23:59:59.999999',
  '2038-01-19 03:14:07.999999', 2155, b'1111111111111111111111111111111111111111111111111111111111111111',
  b'101', 'tab\there', 'x,z', '{"k": "v\\t\\n\\u00e9", "n": [1, 2.5, null]}',
  ST_GeomFromText('POLYGON((0 0,10 0,10 10,0 10,0 0))', 4326), POINT(1.5, -2.25), 127,
  18446744073709551615, 9223372036854775807),
 (3, '\\N', 'N', '\\', NULL, NULL, NULL, 'ñ', '-0.000000000000000000000000000001', -1.17549435e-38,
  4.9406564584124654e-324, '1000-01-01', '-838:59:59.999999', '1000-01-01 00:00:00.000001',
  '1970-01-01 00:00:01.000000', 1901, b'1', b'111', 'b', 'x,y,z', '"string"',
  ST_GeomFromText('LINESTRING(0 0,1 1,2 2)'), NULL, 0, 1, -1),
 (4, 'a\r\nb', '\\t not a tab', ' trailing ', UNHEX('FF'), NULL, UNHEX('0A0A0A0A'), 'x', 1.5,
  1.2345678, 0.1, '2024-02-29', '12:34:56.5', '2024-02-29 12:34:56.123456',
  '2024-02-29 12:34:56.654321', 2024, b'1000000000000000000000000000000000000000000000000000000000000000',
  b'010', 'a', NULL, 'null', ST_GeomFromText('GEOMETRYCOLLECTION(POINT(1 1),LINESTRING(0 0,1 1))'),
  POINT(-0.0, 0), NULL, NULL, NULL);
INSERT INTO every_type (id, vc, f, d) VALUES (5, NULL, -0.0, -0.0), (6, 'x', 1e-45, 2.2250738585072014e-308),
  (7, 'y', 16777217, 0.30000000000000004);
CREATE TABLE big_int (id BIGINT PRIMARY KEY, pad CHAR(200), k INT, KEY (k));
INSERT INTO big_int SELECT seq * 3, REPEAT(CHAR(65 + seq % 26), 150), seq % 100 FROM seq_1_to_30000;
CREATE TABLE composite (a VARCHAR(20), b INT, pad VARCHAR(200), PRIMARY KEY (a, b));
INSERT INTO composite SELECT CONCAT('k', seq % 50), seq, REPEAT('z', 150) FROM seq_1_to_15000;
-- chunk planning reads the table statistics, which InnoDB refreshes in the background
-- (late on a loaded machine): refresh them now so the chunk counts asserted below are fixed
ANALYZE TABLE big_int, composite;
CREATE TABLE parted (id INT, created DATE, v VARCHAR(20), PRIMARY KEY (id, created))
  PARTITION BY RANGE (YEAR(created))
  (PARTITION p1 VALUES LESS THAN (2020), PARTITION p2 VALUES LESS THAN MAXVALUE);
INSERT INTO parted VALUES (1, '2019-05-01', 'old'), (2, '2024-05-01', 'new');
CREATE TABLE wide (id INT PRIMARY KEY, payload LONGBLOB);
INSERT INTO wide VALUES (1, REPEAT(UNHEX('000A095C'), 1000000)), (2, NULL);
CREATE TABLE parent (id INT PRIMARY KEY);
CREATE TABLE child (id INT PRIMARY KEY, pid INT,
  CONSTRAINT fk_child FOREIGN KEY (pid) REFERENCES parent (id) ON DELETE CASCADE);
INSERT INTO parent VALUES (1), (2);
INSERT INTO child VALUES (10, 1), (20, 2);
CREATE VIEW v_every AS SELECT id, vc FROM every_type WHERE id < 5;
CREATE VIEW v_of_view AS SELECT COUNT(*) AS n FROM v_every;
CREATE TRIGGER latin_bi BEFORE INSERT ON latin FOR EACH ROW SET NEW.note = CONCAT('t:', NEW.note);
CREATE PROCEDURE p_count() SELECT COUNT(*) FROM every_type;
CREATE FUNCTION f_twice(x INT) RETURNS INT DETERMINISTIC RETURN x * 2;
CREATE EVENT ev_noop ON SCHEDULE EVERY 1 DAY DISABLE DO SELECT 1;
CREATE USER 'app'@'%' IDENTIFIED BY 'app-secret';
GRANT SELECT, INSERT ON types_db.* TO 'app'@'%';
"""


def _load_every_type(sb: Sandbox) -> None:
    subprocess.run(["mariadb", "-h", "127.0.0.1", "-P", str(sb.port), "-uroot"],
                   input=EVERY_TYPE_SQL, text=True, check=True)
    conn = sb.connect(database="types_db")
    rnd = random.Random(7)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO every_type (id, bin, blb, vc) VALUES (8, %s, %s, %s)",
                    (bytes(range(256))[:255], bytes(range(256)) * 10, "".join(chr(i) for i in range(1, 128))))
        rows = []
        for i in range(100, 400):
            f = struct.unpack("<f", struct.pack("<I", rnd.getrandbits(32)))[0]
            d = struct.unpack("<d", struct.pack("<Q", rnd.getrandbits(64)))[0]
            rows.append((i, None if math.isnan(f) or math.isinf(f) else f,
                         None if math.isnan(d) or math.isinf(d) else d))
        cur.executemany("INSERT INTO every_type (id, f, d) VALUES (%s, %s, %s)", rows)
        # The chunk plan reads the server's size estimate; InnoDB recalculates persistent
        # statistics in the background, late on a loaded machine (then one chunk, not >= 3).
        cur.execute("ANALYZE TABLE big_int, composite")
        cur.fetchall()
    conn.close()


@pytest.fixture(scope="module")
def source():
    """One source server with every type, edge rows and every kind of schema object."""
    sb = Sandbox(name="snapsrc").start()
    try:
        _load_every_type(sb)
        yield sb
    finally:
        sb.destroy()


def _databases(sb: Sandbox) -> list[str]:
    return sorted(r[0] for r in sb.sql("SHOW DATABASES"))


def _one_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def test_every_type_round_trips_exactly(source, mariadb_factory, store_url):
    snap = run_cli("snapshot", "--source", source.url, "--storage", store_url, "--databases",
                   "types_db", "--chunk-size", "1", "--parallel", "2", "--include-users", "--json")
    assert snap.returncode == 0, snap.stderr
    out = json.loads(snap.stdout)
    backup_id = out["backup_id"]
    assert out["consistency"]["blocked_ms"] < 1000
    manifest = Catalog(open_store(store_url)).backup(backup_id)
    tables = {t["name"]: t for t in manifest.details["tables"]}
    assert len(tables["big_int"]["chunks"]) >= 3  # integer key ranges
    assert len(tables["composite"]["chunks"]) >= 2  # composite key, keyset boundaries
    assert tables["every_type"]["rows"] == 309 and tables["nopk"]["rows"] == 4
    assert all(t["checksum"] is not None for t in tables.values())
    assert "gen_v" not in [c[0] for c in tables["every_type"]["columns"]]
    assert manifest.point.file and manifest.point.pos > 0 and manifest.point.gtid

    target = mariadb_factory(server_id=2)
    env = {"BACKUPKIT_TARGET_PASSWORD": ""}
    r = run_cli("restore", backup_id, "--storage", store_url, "--target", target.url, "--verify",
                "--include-users", "--json", env=env)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["verified_tables"] == len(tables) and result["problems"] == []
    assert table_checksums(target, ["types_db"]) == table_checksums(source, ["types_db"])
    # schema objects come back, and work
    assert target.sql("SELECT n FROM types_db.v_of_view") == source.sql("SELECT n FROM types_db.v_of_view")
    assert target.sql("SELECT types_db.f_twice(21)") == [(42,)]
    assert target.sql("SELECT COUNT(*) FROM information_schema.triggers WHERE trigger_schema='types_db'") \
        == [(1,)]
    assert target.sql("SELECT COUNT(*) FROM information_schema.events WHERE event_schema='types_db'") \
        == [(1,)]
    assert target.sql("SELECT gen_s FROM types_db.every_type WHERE id=2") == [("gtab\there",)]
    target.sql("DELETE FROM types_db.parent WHERE id = 1")  # the foreign key came back and works
    assert target.sql("SELECT id FROM types_db.child") == [(20,)]
    grants = "SHOW GRANTS FOR 'app'@'%'"
    assert target.sql(grants) == source.sql(grants)
    assert not target.sql("SELECT 1 FROM information_schema.schemata WHERE schema_name LIKE 'bkrestore%'")
    records = Catalog(open_store(store_url)).restore_records()
    assert records and records[-1]["backup_id"] == backup_id and records[-1]["duration"] > 0


def test_snapshot_is_consistent_while_money_moves(mariadb_factory, local_url):
    src = mariadb_factory(server_id=1)
    src.sql("CREATE DATABASE bank")
    src.sql("CREATE TABLE bank.accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL, pad CHAR(255))")
    src.sql("CREATE TABLE bank.transfers (id BIGINT AUTO_INCREMENT PRIMARY KEY, a INT, b INT, amount INT)")
    src.sql("INSERT INTO bank.accounts SELECT seq, 1000, REPEAT('p', 200) FROM seq_1_to_8000",
            database="bank")
    src.sql("ANALYZE TABLE bank.accounts")
    total = 8000 * 1000
    start_seq = int(src.sql("SELECT @@gtid_binlog_pos")[0][0].split("-")[-1])
    stop = threading.Event()
    done = []

    def writer() -> None:
        conn = src.connect(autocommit=False)
        rnd = random.Random(1)
        with conn.cursor() as cur:
            while not stop.is_set():
                a, b, amount = rnd.randint(1, 8000), rnd.randint(1, 8000), rnd.randint(1, 50)
                cur.execute("UPDATE bank.accounts SET balance = balance - %s WHERE id = %s", (amount, a))
                cur.execute("UPDATE bank.accounts SET balance = balance + %s WHERE id = %s", (amount, b))
                cur.execute("INSERT INTO bank.transfers (a, b, amount) VALUES (%s, %s, %s)", (a, b, amount))
                conn.commit()
                done.append(1)
        conn.close()

    th = threading.Thread(target=writer)
    th.start()
    try:
        while len(done) < 200:
            time.sleep(0.05)
        store = open_store(local_url)
        manifest = take_snapshot(src.spec, store, SnapshotOptions(parallel=2, chunk_size_mb=1))
        time.sleep(0.3)
    finally:
        stop.set()
        th.join()
    assert len(done) > 200
    chunks = sum(len(t["chunks"]) for t in manifest.details["tables"])
    assert chunks >= 3
    assert manifest.details["consistency"]["method"] == "backup_stage_block_commit"
    assert manifest.details["consistency"]["blocked_ms"] < 1000

    target = mariadb_factory(server_id=2)
    result = restore_snapshot(store, manifest, target.spec, RestoreOptions(verify=True))
    assert result.rows == manifest.stats["rows"]
    assert target.sql("SELECT SUM(balance) FROM bank.accounts")[0][0] == total
    # The recorded point is exactly the data: one GTID per transfer since start_seq ...
    transfers = target.sql("SELECT COUNT(*) FROM bank.transfers")[0][0]
    assert 0 < transfers < len(done)
    assert int(manifest.point.gtid.split("-")[-1]) == start_seq + transfers
    # ... and replaying the source binlog from the recorded position gives the source's final state.
    binlog = src.datadir / manifest.point.file
    dump = subprocess.run(["mariadb-binlog", f"--start-position={manifest.point.pos}", str(binlog)],
                          capture_output=True, check=True)
    subprocess.run(["mariadb", "-h", "127.0.0.1", "-P", str(target.port), "-uroot"], input=dump.stdout,
                   check=True)
    assert table_checksums(target, ["bank"]) == table_checksums(src, ["bank"])


def test_table_filter_copies_only_the_selected_tables(source, local_url):
    m = take_snapshot(source.spec, open_store(local_url),
                      SnapshotOptions(tables=["types_db.lat*", "types_db.nopk"], parallel=1))
    assert sorted(t["name"] for t in m.details["tables"]) == ["latin", "nopk"]
    db = m.details["databases"][0]
    assert (db["name"], db["views"], db["routines"], db["triggers"]) == ("types_db", 0, 0, 1)
    assert m.details["consistency"] == {**m.details["consistency"], "method": "consistent_snapshot",
                                        "blocked_ms": 0}


def test_snapshot_of_unreachable_source_exits_3(local_url):
    r = run_cli("snapshot", "--source", f"mysql://root@127.0.0.1:{free_port()}", "--storage", local_url)
    assert r.returncode == 3
    assert "cannot connect" in _one_line(r)


def _snapshot(source: Sandbox, store_url: str) -> str:
    m = take_snapshot(source.spec, open_store(store_url),
                      SnapshotOptions(databases=["types_db"], parallel=2, chunk_size_mb=1))
    return m.id


def test_restore_into_existing_database_refuses_then_force_moves_it_aside(source, mariadb_factory,
                                                                        local_url):
    backup_id = _snapshot(source, local_url)
    target = mariadb_factory(server_id=3)
    target.sql("CREATE DATABASE types_db")
    target.sql("CREATE TABLE types_db.mine (id INT PRIMARY KEY, v VARCHAR(10))")
    target.sql("INSERT INTO types_db.mine VALUES (1, 'keep me')")
    target.sql("CREATE TRIGGER types_db.mine_bi BEFORE INSERT ON types_db.mine FOR EACH ROW SET NEW.v = 'x'")
    target.sql("CREATE VIEW types_db.my_view AS SELECT v FROM types_db.mine")
    target.sql("CREATE PROCEDURE types_db.my_proc() SELECT 1")
    before = table_checksums(target)
    dbs = _databases(target)

    r = run_cli("restore", backup_id, "--storage", local_url, "--target", target.url)
    assert r.returncode == 2
    line = _one_line(r)
    assert "already holds" in line and "types_db" in line and "--force" in line
    assert table_checksums(target) == before and _databases(target) == dbs

    r = run_cli("restore", backup_id, "--storage", local_url, "--target", target.url, "--force",
                "--json")
    assert r.returncode == 0, r.stderr
    aside = json.loads(r.stdout)["moved_aside"]["types_db"]
    assert aside.startswith("types_db_before_")
    assert target.sql(f"SELECT v FROM `{aside}`.mine") == [("keep me",)]
    assert target.sql(f"SELECT v FROM `{aside}`.my_view") == [("keep me",)]
    assert target.sql("SELECT routine_schema FROM information_schema.routines WHERE routine_name='my_proc'") \
        == [(aside,)]
    assert target.sql("SELECT trigger_schema FROM information_schema.triggers WHERE trigger_name='mine_bi'") \
        == [(aside,)]
    assert table_checksums(target, ["types_db"]) == table_checksums(source, ["types_db"])


def _corrupt(store_url: str, key: str, tmp_path) -> None:
    store = open_store(store_url)
    data = bytearray(store.get_bytes(key))
    data[len(data) // 2] ^= 0xFF
    if store_url.startswith("file://"):
        path = store_url[len("file://"):] + "/" + key
        with open(path, "r+b") as fh:
            fh.write(bytes(data))
    else:
        import os

        bucket, prefix = store_url[len("s3://"):].split("/", 1)
        s3 = boto3.client("s3", endpoint_url=os.environ["BACKUPKIT_S3_ENDPOINT"], region_name="us-east-1")
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=bytes(data))


def test_corrupted_chunk_exits_5_naming_it_and_leaves_target_unchanged(source, mariadb_factory,
                                                                      store_url, tmp_path):
    backup_id = _snapshot(source, store_url)
    manifest = Catalog(open_store(store_url)).backup(backup_id)
    big = next(t for t in manifest.details["tables"] if t["name"] == "big_int")
    bad = big["chunks"][-1]["key"]
    _corrupt(store_url, bad, tmp_path)
    target = mariadb_factory(server_id=4)
    dbs = _databases(target)
    r = run_cli("restore", backup_id, "--storage", store_url, "--target", target.url, "--parallel", "2")
    assert r.returncode == 5, r.stderr
    assert bad in _one_line(r)
    assert _databases(target) == dbs


def _table_bytes(store_url: str, backup_id: str, table: str) -> bytes:
    from backupkit.repo.codec import StoredObject, iter_object

    store = open_store(store_url)
    manifest = Catalog(store).backup(backup_id)
    objects = {o.key: o for o in manifest.objects}
    (t,) = [t for t in manifest.details["tables"] if t["name"] == table]
    out = []
    for chunk in sorted(t["chunks"], key=lambda c: c["index"]):
        obj: StoredObject = objects[chunk["key"]]
        out.append(b"".join(iter_object(store, obj)))
    return b"".join(out)


def test_plain_form_batches_equal_the_escaped_form(source, local_url, monkeypatch):
    """Batches without TAB, LF or backslash are read unescaped; batches with them are read
    again escaped; the stored bytes are exactly what the escaped form gives."""
    from backupkit.mysql import tsv
    from backupkit.strategies.snapshot import chunks as snap_mod

    source.sql("CREATE DATABASE mix_db")
    source.sql("CREATE TABLE mix_db.mix (id INT PRIMARY KEY, t VARCHAR(40), l VARCHAR(20) "
               "CHARACTER SET latin1, n INT)")
    source.sql("INSERT INTO mix_db.mix SELECT seq, IF(seq % 7 = 0, NULL, CONCAT('row ', seq, ' é😀')), "
               "IF(seq % 11 = 0, NULL, 'caf\\xe9'), IF(seq % 5 = 0, NULL, seq) FROM seq_1_to_60000",
               database="mix_db")
    # special bytes in a few places only: the batches around them are read escaped
    source.sql("UPDATE mix_db.mix SET t = CONCAT('tab\\there ', id) WHERE id IN (20001, 20002)")
    source.sql("UPDATE mix_db.mix SET l = 'back\\\\slash' WHERE id = 40000")
    source.sql("UPDATE mix_db.mix SET t = 'line\\nbreak', l = '\\\\N' WHERE id = 59999")

    readers: list = []
    init = snap_mod.TableChunkReader.__init__

    def keep(self, *a, **k):
        init(self, *a, **k)
        readers.append(self)

    monkeypatch.setattr(snap_mod.TableChunkReader, "__init__", keep)
    monkeypatch.setattr(snap_mod, "BATCH_BYTES", 64 << 10)  # many batches from a small table
    spec = source.spec
    opts = dict(databases=["mix_db"], parallel=2, chunk_size_mb=1)
    fast = take_snapshot(spec, open_store(local_url), SnapshotOptions(**opts))
    plain = sum(r.plain_batches for r in readers)
    escaped = sum(r.escaped_batches for r in readers)
    assert plain > escaped > 0, (plain, escaped)

    monkeypatch.setattr(tsv, "has_text", lambda cols: False)  # the escaped form only
    readers.clear()
    slow = take_snapshot(spec, open_store(local_url), SnapshotOptions(**opts))
    assert sum(r.plain_batches for r in readers) == 0
    data = _table_bytes(local_url, fast.id, "mix")
    assert data == _table_bytes(local_url, slow.id, "mix")
    assert data.count(b"\n") == 60000 and b"tab\\there 20001" in data and b"line\\nbreak\t\\\\N" in data
    assert {t["name"]: t["checksum"] for t in fast.details["tables"]} == \
        {t["name"]: t["checksum"] for t in slow.details["tables"]}
