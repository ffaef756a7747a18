"""Binlog shipping against a real mariadbd: segments are the server's bytes, readable by
mariadb-binlog; listing, status and gaps. Helpers here are shared by test_binlog_resilience.py."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pymysql
import pytest

from backupkit.mysql import binlog_events as be
from backupkit.repo import layout
from backupkit.repo.catalog import Catalog, SegmentInfo
from backupkit.repo.codec import read_object
from backupkit.repo.coverage import build_runs
from backupkit.storage import open_store
from tests.support import run_cli

pytestmark = pytest.mark.timeout(300)


# -- helpers -------------------------------------------------------------------------
def cli_env(sandbox, storage_url: str, **extra: str) -> dict[str, str]:
    env = {"BACKUPKIT_SOURCE": sandbox.url, "BACKUPKIT_STORAGE": storage_url}
    endpoint = os.environ.get("BACKUPKIT_S3_ENDPOINT")
    if endpoint:
        env["BACKUPKIT_S3_ENDPOINT"] = endpoint
    env.update(extra)
    return env


def ship_once(sandbox, storage_url: str, *args: str, env: dict[str, str] | None = None):
    r = run_cli("binlog", "ship", "--once", "--json", *args,
                env={**cli_env(sandbox, storage_url), **(env or {})}, timeout=120)
    return r


def start_shipper(sandbox, storage_url: str, log_path: Path, *args: str,
                  env: dict[str, str] | None = None) -> subprocess.Popen:
    """A continuous `backupkit binlog ship` process."""
    exe = shutil.which("backupkit") or str(Path(sys.executable).parent / "backupkit")
    full_env = {**os.environ, **cli_env(sandbox, storage_url), **(env or {})}
    fh = open(log_path, "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([exe, "binlog", "ship", "--sync-interval", "0.2", "--heartbeat", "0.5",
                             *args], stdout=fh, stderr=fh, env=full_env, start_new_session=True)
    proc._log = fh  # type: ignore[attr-defined]
    return proc


def stop_proc(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        rc = proc.wait()
    proc._log.close()  # type: ignore[attr-defined]
    return rc


class Writer(threading.Thread):
    """Commits small transactions continuously (and a few multi-statement ones); survives a
    server restart by reconnecting."""

    def __init__(self, sandbox, rotate_every: float | None = None, pause: float = 0.002) -> None:
        super().__init__(daemon=True)
        self.sandbox = sandbox
        self.rotate_every = rotate_every
        self.pause = pause
        self.stop_event = threading.Event()
        self.commits = 0
        self.errors = 0

    def run(self) -> None:
        conn = None
        last_rotate = time.monotonic()
        i = 0
        while not self.stop_event.is_set():
            try:
                if conn is None:
                    conn = self.sandbox.connect()
                with conn.cursor() as cur:
                    i += 1
                    if i % 17 == 0:
                        cur.execute("BEGIN")
                        for _ in range(5):
                            cur.execute("INSERT INTO w.t (k, v) VALUES (%s, REPEAT('x', 200))", (i,))
                        cur.execute("UPDATE w.t SET k = k + 1 WHERE id = %s", (i // 2 + 1,))
                        cur.execute("COMMIT")
                    else:
                        cur.execute("INSERT INTO w.t (k, v) VALUES (%s, 'v')", (i,))
                    self.commits += 1
                    if self.rotate_every and time.monotonic() - last_rotate > self.rotate_every:
                        cur.execute("FLUSH BINARY LOGS")
                        last_rotate = time.monotonic()
                time.sleep(self.pause)
            except pymysql.err.MySQLError:
                self.errors += 1
                try:
                    if conn is not None:
                        conn.close()
                except Exception:
                    pass
                conn = None
                time.sleep(0.2)
            except Exception:
                self.errors += 1
                conn = None
                time.sleep(0.2)
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self.stop_event.set()
        self.join(30)


def make_table(sandbox) -> None:
    sandbox.sql("CREATE DATABASE IF NOT EXISTS w")
    sandbox.sql("CREATE TABLE IF NOT EXISTS w.t (id INT PRIMARY KEY AUTO_INCREMENT, k INT, v TEXT)")


def segments_of(storage_url: str) -> tuple[Catalog, str, list]:
    store = open_store(storage_url)
    cat = Catalog(store)
    sources = cat.sources()
    assert len(sources) == 1, sources
    return cat, sources[0], cat.segments(sources[0])


def assert_complete(sandbox, storage_url: str, until_server_end: bool = True) -> dict:
    """The shipped events, concatenated in order, equal the server's binlog byte for byte
    (only the in-use flag of the live file's FDE may differ): nothing missing, nothing doubled.
    Returns counts for further checks."""
    cat, sid, segs = segments_of(storage_url)
    assert segs, "no segments"
    runs = build_runs(segs, cat.gaps(sid))
    assert len(runs) == 1, [(r.start, r.end) for r in runs]
    # no overlap: each segment starts where the previous ended (within a file)
    by_file: dict[str, list[tuple[int, bytes]]] = {}
    prev = None
    for s in segs:
        if prev is not None and prev.binlog_file == s.binlog_file:
            assert s.start_pos == prev.end_pos, f"overlap or hole: {prev.key} then {s.key}"
        prev = s
        data = read_object(cat.store, s.object)
        assert data[:4] == be.MAGIC
        events = list(be.iter_events(io.BytesIO(data), verify_checksums=True))
        if s.start_pos != 4:
            assert events and events[0][0].type == be.FORMAT_DESCRIPTION_EVENT
            assert not events[0][0].flags & be.LOG_EVENT_BINLOG_IN_USE_F
            events = events[1:]
        body = b"".join(raw for _, raw in events)
        assert len(body) == s.end_pos - s.start_pos, s.key
        by_file.setdefault(s.binlog_file, []).append((s.start_pos, body))
    files = sorted(by_file)
    total = 0
    for n, f in enumerate(files):
        parts = by_file[f]
        start = parts[0][0]
        got = b"".join(p for _, p in parts)
        real = (sandbox.datadir / f).read_bytes()
        if n > 0:
            assert start == 4, f"{f} does not start at its first event"
        if n < len(files) - 1 or until_server_end:
            assert start + len(got) == len(real), f"{f}: shipped to {start + len(got)}, file has {len(real)}"
        exp = bytearray(real[start:start + len(got)])
        got_b = bytearray(got)
        if start == 4:  # only the in-use flag of the FDE may differ
            exp[17] &= ~be.LOG_EVENT_BINLOG_IN_USE_F & 0xFF
            got_b[17] &= ~be.LOG_EVENT_BINLOG_IN_USE_F & 0xFF
        assert got_b == exp, f"{f}: shipped bytes differ from the server's"
        total += len(got)
    # every file between the first and the last shipped is there
    for a, b in zip(files, files[1:], strict=False):
        assert int(b.rsplit(".", 1)[1]) == int(a.rsplit(".", 1)[1]) + 1, (a, b)
    txns = sum(s.transactions for s in segs)
    return {"segments": len(segs), "files": files, "bytes": total, "transactions": txns,
            "source_id": sid}


def mariadb_binlog_reads(data: bytes, tmp_path: Path) -> str:
    path = tmp_path / f"seg-{random.randrange(1 << 30)}.bin"
    path.write_bytes(data)
    r = subprocess.run(["mariadb-binlog", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


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
    assert_complete(sb, local_url)
