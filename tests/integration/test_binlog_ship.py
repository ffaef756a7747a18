"""Binlog shipping against a real mariadbd: segments are the server's bytes, readable by
mariadb-binlog; listing, status and gaps. Helpers: tests/support/shipping.py."""

from __future__ import annotations

import json
import signal
import socket
import time

import pytest

from backupkit.mysql import binlog_events as be
from backupkit.repo import layout
from backupkit.repo.catalog import Catalog, GapInfo, SegmentInfo
from backupkit.repo.codec import put_object, read_object
from backupkit.storage import open_store
from tests.support import run_cli
from tests.support.shipping import (
    assert_complete,
    cli_env,
    make_table,
    mariadb_binlog_reads,
    segments_of,
    ship_once,
    start_shipper,
    stop_proc,
)

pytestmark = pytest.mark.timeout(300)


# -- helpers -------------------------------------------------------------------------
# -- tests ------------------------------------------------------------------------------
@pytest.mark.parametrize("checksum", ["CRC32", "NONE"])
def test_segments_are_the_servers_bytes_and_valid_binlog_files(mariadb_factory, local_url, tmp_path,
                                                               checksum):
    sb = mariadb_factory(extra_args=[f"--binlog-checksum={checksum}"])
    make_table(sb)
    r = ship_once(sb, local_url, "--from-current")
    assert r.returncode == 0, r.stderr
    for i in range(40):
        sb.sql("INSERT INTO w.t (k, v) VALUES (%s, REPEAT('y', 500))", (i,))
        if i == 20:
            sb.sql("FLUSH BINARY LOGS")
    # one transaction much larger than the segment limit: one segment, never split
    conn = sb.connect(database="w")
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("INSERT INTO w.t (k, v) SELECT seq, REPEAT('z', 1000) FROM seq_1_to_3000")
        cur.execute("COMMIT")
    conn.close()
    r = ship_once(sb, local_url, "--max-segment-mb", "1")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["transactions"] == 41 and out["stopped_by"] == "caught up"
    info = assert_complete(sb, local_url)
    assert info["files"] == ["binlog.000001", "binlog.000002"]
    cat, sid, segs = segments_of(local_url)
    big = [s for s in segs if s.end_pos - s.start_pos > 1 << 20]
    assert len(big) == 1 and big[0].transactions == 1
    rotated = [s for s in segs if s.next_file]
    assert rotated and rotated[0].next_file == "binlog.000002" and rotated[0].file_closed
    for s in segs:
        text = mariadb_binlog_reads(read_object(cat.store, s.object), tmp_path)
        if s.transactions:
            assert "COMMIT" in text or "Xid" in text
            assert s.gtid_first and s.gtid_last and s.first_commit_time > 0
            assert s.gtid_state.startswith("0-1-")
    last = segs[-1]
    assert last.gtid_state == sb.sql("SELECT @@gtid_binlog_pos")[0][0]


def test_first_run_needs_a_snapshot_or_from_current(mariadb, local_url):
    r = ship_once(mariadb, local_url)
    assert r.returncode == 2
    assert "no snapshot" in r.stderr and "Traceback" not in r.stderr


def test_events_lists_transactions_and_finds_the_bad_delete(mariadb, local_url):
    sb = mariadb
    sb.sql("CREATE DATABASE shop")
    sb.sql("CREATE TABLE shop.orders (id INT PRIMARY KEY, amount DECIMAL(10,2), note VARCHAR(50))")
    assert ship_once(sb, local_url, "--from-current").returncode == 0
    sb.sql("INSERT INTO shop.orders SELECT seq, seq * 1.5, 'n' FROM seq_1_to_10", database="shop")
    sb.sql("UPDATE shop.orders SET amount = amount + 1 WHERE id <= 4")
    sb.sql("DELETE FROM shop.orders WHERE id > 3")
    sb.sql("CREATE TABLE shop.audit (id INT)")
    sb.sql("DROP TABLE shop.audit")
    assert ship_once(sb, local_url).returncode == 0
    env = cli_env(sb, local_url)
    r = run_cli("binlog", "events", "--json", env=env)
    assert r.returncode == 0, r.stderr
    txns = json.loads(r.stdout)["transactions"]
    assert len(txns) == 5
    assert txns[0]["rows"] == {"shop.orders": {"insert": 10}}
    assert txns[1]["rows"] == {"shop.orders": {"update": 4}}
    assert txns[2]["rows"] == {"shop.orders": {"delete": 7}}
    assert txns[2]["gtid"].startswith("0-1-") and txns[2]["file"] == "binlog.000001"
    assert "DELETE FROM shop.orders" in txns[2]["annotations"][0]
    assert txns[4]["ddl"] and "DROP TABLE" in txns[4]["ddl"][0]
    r = run_cli("binlog", "events", "--json", "--grep", "delete from", env=env)
    assert [t["gtid"] for t in json.loads(r.stdout)["transactions"]] == [txns[2]["gtid"]]
    r = run_cli("binlog", "events", "--json", "--table", "shop.audit", env=env)
    assert len(json.loads(r.stdout)["transactions"]) == 2
    future = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() + 3600))
    r = run_cli("binlog", "events", "--json", "--from", future, env=env)
    assert json.loads(r.stdout)["transactions"] == []
    r = run_cli("binlog", "events", "--from", "yesterday-ish", env=env)
    assert r.returncode == 2 and "cannot read the time" in r.stderr
    r = run_cli("binlog", "events", "--table", "shop.orders", env=env)
    assert r.returncode == 0 and "delete 7" in r.stdout


def test_status_shows_range_lag_and_loss_window(mariadb, local_url):
    sb = mariadb
    make_table(sb)
    assert ship_once(sb, local_url, "--from-current").returncode == 0
    sb.sql("INSERT INTO w.t (k) VALUES (1)")
    assert ship_once(sb, local_url).returncode == 0
    env = cli_env(sb, local_url)
    r = run_cli("binlog", "status", "--json", env=env)
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)["sources"][0]
    assert st["lag_bytes"] == 0 and st["loss_window_seconds"] == 0
    assert st["ranges"] and st["ranges"][0]["segments"] == 2
    time.sleep(1.1)
    for i in range(5):
        sb.sql("INSERT INTO w.t (k) VALUES (%s)", (i,))
    r = run_cli("binlog", "status", "--json", env=env)
    st = json.loads(r.stdout)["sources"][0]
    assert st["lag_bytes"] > 0
    assert st["server"]["oldest_unshipped_commit"] is not None
    assert st["loss_window_seconds"] >= 1
    assert st["lease"]["released"] is True
    r = run_cli("binlog", "status", env=env)
    assert r.returncode == 0 and "loss window" in r.stdout


def test_purged_binlog_is_a_recorded_gap(mariadb, local_url):
    sb = mariadb
    make_table(sb)
    assert ship_once(sb, local_url, "--from-current").returncode == 0
    sb.sql("INSERT INTO w.t (k) VALUES (1)")
    assert ship_once(sb, local_url).returncode == 0
    sb.sql("INSERT INTO w.t (k) VALUES (2)")  # never shipped
    sb.sql("FLUSH BINARY LOGS")
    sb.sql("INSERT INTO w.t (k) VALUES (3)")
    sb.sql("PURGE BINARY LOGS TO 'binlog.000002'")
    r = ship_once(sb, local_url)
    assert r.returncode == 3, r.stderr
    assert "GAP" in r.stderr and "purged" in r.stderr and "Traceback" not in r.stderr
    env = cli_env(sb, local_url)
    listing = json.loads(run_cli("list", "--json", env=env).stdout)
    assert len(listing["gaps"]) == 1 and listing["gaps"][0]["after"].startswith("binlog.000001:")
    r = ship_once(sb, local_url, "--restart-from-current")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["gaps"][0]["resume_file"] == "binlog.000002"
    listing = json.loads(run_cli("list", "--json", env=env).stdout)
    assert len(listing["gaps"]) == 1 and listing["gaps"][0]["resume"].startswith("binlog.000002:")
    assert len(listing["binlog_coverage"]) == 2
    ranges = {c["range_id"] for c in listing["binlog_coverage"]}
    assert len(ranges) == 2
    sb.sql("INSERT INTO w.t (k) VALUES (4)")
    assert ship_once(sb, local_url).returncode == 0
    r = run_cli("binlog", "status", "--json", env=env)
    assert json.loads(r.stdout)["sources"][0]["lag_bytes"] == 0


def test_sigterm_flushes_and_exits_zero(mariadb, local_url, tmp_path):
    sb = mariadb
    make_table(sb)
    assert ship_once(sb, local_url, "--from-current").returncode == 0
    proc = start_shipper(sb, local_url, tmp_path / "ship.log", "--sync-interval", "30")
    time.sleep(2.0)
    for i in range(30):
        sb.sql("INSERT INTO w.t (k) VALUES (%s)", (i,))
    time.sleep(0.5)
    rc = stop_proc(proc, signal.SIGTERM)
    assert rc == 0, (tmp_path / "ship.log").read_text()
    info = assert_complete(sb, local_url)
    assert info["transactions"] == 30


def test_lease_blocks_a_second_once_shipper(mariadb, local_url, tmp_path):
    sb = mariadb
    make_table(sb)
    assert ship_once(sb, local_url, "--from-current").returncode == 0
    proc = start_shipper(sb, local_url, tmp_path / "ship.log")
    try:
        time.sleep(2.5)
        r = ship_once(sb, local_url)
        assert r.returncode == 1 and "being shipped by" in r.stderr
    finally:
        assert stop_proc(proc) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_first_run_starts_at_the_newest_snapshot(mariadb, local_url):
    sb = mariadb
    make_table(sb)
    sb.sql("INSERT INTO w.t (k) VALUES (1)")
    env = cli_env(sb, local_url)
    r = run_cli("snapshot", "--json", env=env)
    assert r.returncode == 0, r.stderr
    point = json.loads(r.stdout)["point"]
    sb.sql("INSERT INTO w.t (k) VALUES (2)")
    r = ship_once(sb, local_url)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["start"] == f"{point['file']}:{point['pos']}"
    cat, sid, segs = segments_of(local_url)
    assert (segs[0].binlog_file, segs[0].start_pos) == (point["file"], point["pos"])
    assert segs[0].gtid_state == point["gtid"]  # the anchor carries the snapshot's GTID position
    assert sum(s.transactions for s in segs) == 1
    assert segs[-1].gtid_state == sb.sql("SELECT @@gtid_binlog_pos")[0][0]


def test_a_transaction_larger_than_memory_spills_to_disk_and_stays_whole(mariadb, local_url,
                                                                          monkeypatch):
    import tempfile

    from backupkit.strategies.binlog import ShipOptions, Shipper
    from backupkit.strategies.binlog import spill as spill_mod

    spilled = []
    real = tempfile.TemporaryFile

    def counting(*a, **kw):
        spilled.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(spill_mod.tempfile, "TemporaryFile", counting)
    sb = mariadb
    make_table(sb)
    opts = ShipOptions(from_current=True, until_current=True, max_segment_bytes=256 << 10,
                       spill_bytes=512 << 10)
    store = open_store(local_url)
    assert Shipper(store, sb.spec, opts).run().segments == 1
    sb.sql("INSERT INTO w.t (k) VALUES (1)")
    conn = sb.connect(database="w")
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("INSERT INTO w.t (k, v) SELECT seq, REPEAT('s', 1000) FROM seq_1_to_4000")
        cur.execute("COMMIT")
    conn.close()
    sb.sql("INSERT INTO w.t (k) VALUES (2)")
    opts.from_current = False
    result = Shipper(store, sb.spec, opts).run()
    assert result.transactions == 3
    assert_complete(sb, local_url)
    _, _, segs = segments_of(local_url)
    big = [s for s in segs if s.end_pos - s.start_pos > 1 << 20]
    assert len(big) == 1 and big[0].transactions == 1
    assert spilled  # the big transaction went through a temporary file


def test_a_finished_binlog_file_is_rolled_up_and_read_from_its_roll_up(mariadb, local_url):
    """When the shipper passes a rotation it writes the file's roll-up; the catalog then reads
    that one object instead of every index entry, and finds the same segments."""
    sb = mariadb
    make_table(sb)
    assert ship_once(sb, local_url, "--from-current").returncode == 0
    first = sb.sql("SHOW MASTER STATUS")[0][0]
    for batch in range(3):  # three runs: three segments in this file at least
        sb.sql("INSERT INTO w.t (k, v) VALUES (%s, 'x')", (batch,))
        assert ship_once(sb, local_url).returncode == 0
    sb.sql("FLUSH BINARY LOGS")
    sb.sql("INSERT INTO w.t (k, v) VALUES (99, 'after the rotation')")
    r = ship_once(sb, local_url)
    assert r.returncode == 0, r.stderr
    cat, sid, segs = segments_of(local_url)
    key = layout.segment_rollup(sid, first)
    assert cat.store.stat(key) is not None, "no roll-up after the rotation"
    body = cat._read_rollup(key)
    in_file = sorted(s.key for s in segs if s.binlog_file == first)
    assert len(in_file) >= 3 and sorted(SegmentInfo.from_dict(d).key for d in body["segments"]) == in_file
    index = [i.key for i in cat.store.list(layout.binlog_prefix(sid)) if layout.is_segment_index(i.key)]
    plain = sorted((SegmentInfo.from_dict(cat.read_manifest(k)) for k in index),
                   key=lambda s: (s.binlog_file, s.start_pos))
    assert [s.to_dict() for s in segs] == [s.to_dict() for s in plain]
    head = cat.head(sid)  # replaced after every commit: names the newest segment
    assert head is not None and head.segment.to_dict() == segs[-1].to_dict()
    assert cat.last_segment(sid).to_dict() == segs[-1].to_dict()
    assert_complete(sb, local_url)


def test_a_from_position_typo_is_refused_before_anything_is_written(mariadb, local_url):
    """Issue 14, defect 7: binlog.00002:4 (a missing zero) was committed as a permanent gap."""
    sb = mariadb
    make_table(sb)
    sb.sql("FLUSH BINARY LOGS")
    sb.sql("INSERT INTO w.t (k) VALUES (1)")
    size = dict(sb.sql("SHOW BINARY LOGS"))["binlog.000002"]
    for bad, why in (("binlog.00002:4", "no binary log 'binlog.00002' (it has binlog.000001 to "
                                        "binlog.000002"),
                     (f"binlog.000002:{int(size) + 1000}", "has only")):
        r = ship_once(sb, local_url, "--from-position", bad)
        assert r.returncode == 2, r.stderr
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and why in lines[0] and "Traceback" not in r.stderr, r.stderr
    store = open_store(local_url)
    assert [i.key for i in store.list(layout.BINLOG)] == []


def test_a_start_that_shipped_nothing_can_be_corrected(mariadb, local_url):
    """What an earlier run left for a mistyped start (an empty anchor segment and a gap record)
    does not block the corrected --from-position, and goes away with it."""
    sb = mariadb
    make_table(sb)
    sb.sql("INSERT INTO w.t (k) VALUES (1)")
    store = open_store(local_url)
    cat = Catalog(store)
    cat.ensure_repo()
    sid = json.loads(ship_once(sb, local_url, "--from-current").stdout)["source_id"]
    for i in list(store.list(layout.BINLOG)):  # start again from a repository without this range
        store.delete([i.key])
    obj = put_object(store, layout.segment_data(sid, "binlog.00002", 4, 4), [be.MAGIC])
    cat.commit_segment(SegmentInfo(source_id=sid, binlog_file="binlog.00002", start_pos=4, end_pos=4,
                                   object=obj, range_id="typo"))
    cat.record_gap(GapInfo(sid, "binlog.00002", 4, "", 0, time.time(), "binlog.00002 was purged"))
    r = ship_once(sb, local_url)
    assert r.returncode == 3 and "GAP" in r.stderr  # without a new start it still stops there
    assert "shipped nothing: give the right --from-position" in r.stderr
    r = ship_once(sb, local_url, "--from-position", "binlog.000001:4")
    assert r.returncode == 0, r.stderr
    assert cat.gaps(sid) == []
    segs = cat.segments(sid)
    assert segs[0].binlog_file == "binlog.000001" and segs[0].start_pos == 4
    assert all(s.binlog_file != "binlog.00002" for s in segs)
    assert_complete(sb, local_url)
