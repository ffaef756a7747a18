"""Every producer/consumer pipeline ends promptly and cleanly when one stage fails: the shipper's
upload and spill, the snapshot's chunk workers, the snapshot load's workers, the cold archive's
reader and uploader, and the prefetching helper (issue 14, defect 1; the replay's fetch, parse and
apply stages are in test_replay_failures.py)."""

from __future__ import annotations

import errno
import threading
import time

import pytest

from backupkit.errors import BackupkitError, IntegrityError, StorageError
from backupkit.repo.catalog import Catalog
from backupkit.storage import open_store
from backupkit.strategies.binlog.shipper import ShipOptions, Shipper
from backupkit.util.workers import prefetched
from tests.support.shipping import make_table

pytestmark = pytest.mark.timeout(180)


def _in_thread(fn, limit: float):
    """Run fn in a thread; (its result or exception, seconds), failing if it outlives limit."""
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    t0 = time.monotonic()
    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(limit)
    assert not th.is_alive(), f"still running after {limit} s: a stage waits for ever"
    return out, time.monotonic() - t0


# -- the shipper -----------------------------------------------------------------------------------
def test_shipper_upload_failure_stops_a_continuous_shipper_promptly(mariadb, local_url, monkeypatch):
    from backupkit.strategies.binlog import upload

    make_table(mariadb)
    mariadb.sql("INSERT INTO w.t (k, v) VALUES (1, 'x')")

    def broken(*a, **kw):
        raise IntegrityError("injected: the stored segment does not match what was written")

    monkeypatch.setattr(upload, "put_object", broken)
    store = open_store(local_url)
    opts = ShipOptions(source_id="src", server_id=901, from_current=False, until_current=False,
                       sync_interval=0.2, heartbeat=0.5, from_position=("binlog.000001", 4))
    out, took = _in_thread(lambda: Shipper(store, mariadb.spec, opts).run(), 60)
    assert isinstance(out.get("error"), IntegrityError), out
    assert "injected" in str(out["error"])
    assert took < 30
    assert Catalog(store).segments("src") == []  # nothing committed without its data


def test_shipper_spill_failure_is_one_clear_error_not_an_oserror(mariadb, local_url, monkeypatch):
    from backupkit.strategies.binlog import spill

    make_table(mariadb)

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spill.tempfile, "TemporaryFile", full)
    conn = mariadb.connect(database="w")
    with conn.cursor() as cur:
        cur.execute("INSERT INTO w.t (k, v) SELECT seq, REPEAT('s', 1000) FROM seq_1_to_2000")
    conn.commit()
    conn.close()
    store = open_store(local_url)
    opts = ShipOptions(source_id="src", server_id=902, until_current=True, spill_bytes=256 << 10,
                       from_position=("binlog.000001", 4))
    out, took = _in_thread(lambda: Shipper(store, mariadb.spec, opts).run(), 60)
    err = out.get("error")
    assert isinstance(err, BackupkitError) and not isinstance(err, OSError), out
    assert "No space left" in str(err) and "TMPDIR" in str(err)
    assert took < 30


# -- the snapshot and its load ------------------------------------------------------------------
@pytest.fixture
def chunked(mariadb):
    """A table of about 3 MB: several 1 MB chunks for two workers."""
    mariadb.sql("CREATE DATABASE big")
    mariadb.sql("CREATE TABLE big.t (id INT PRIMARY KEY, v VARCHAR(1000))")
    mariadb.sql("INSERT INTO big.t SELECT seq, REPEAT('v', 900) FROM big.seq_1_to_3000")
    mariadb.sql("ANALYZE TABLE big.t")
    return mariadb


def test_snapshot_chunk_worker_failure_stops_every_worker_and_commits_nothing(chunked, local_url,
                                                                               monkeypatch):
    from backupkit.strategies.snapshot import job
    from backupkit.strategies.snapshot.options import SnapshotOptions

    real = job.put_object
    calls = []
    lock = threading.Lock()

    def broken(store, key, data, *a, **kw):
        with lock:
            calls.append(key)
            n = len(calls)
        if n == 2:
            raise StorageError(f"injected: cannot write {key!r}")
        return real(store, key, data, *a, **kw)

    monkeypatch.setattr(job, "put_object", broken)
    store = open_store(local_url)
    opts = SnapshotOptions(parallel=2, chunk_size_mb=1)
    out, took = _in_thread(lambda: job.take_snapshot(chunked.spec, store, opts), 60)
    assert isinstance(out.get("error"), StorageError) and "injected" in str(out["error"]), out
    assert took < 30
    assert Catalog(store).backups() == []


def test_snapshot_load_worker_failure_stops_the_load_and_leaves_nothing(chunked, local_url,
                                                                        mariadb_factory):
    from backupkit.restore.load import RestoreOptions, restore_snapshot
    from backupkit.strategies.snapshot.job import take_snapshot
    from backupkit.strategies.snapshot.options import SnapshotOptions

    store = open_store(local_url)
    manifest = take_snapshot(chunked.spec, store, SnapshotOptions(parallel=2, chunk_size_mb=1))
    keys = {c["key"] for t in manifest.details["tables"] for c in t["chunks"]}
    chunks = [o for o in manifest.objects if o.key in keys]
    assert len(chunks) >= 2, [o.key for o in manifest.objects]
    victim = chunks[-1]
    path = store._path(victim.key)  # damage the stored bytes of one chunk
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x20
    path.write_bytes(bytes(data))
    target = mariadb_factory(server_id=2)
    out, took = _in_thread(lambda: restore_snapshot(store, manifest, target.spec,
                                                    RestoreOptions(parallel=2, record=False)), 60)
    assert isinstance(out.get("error"), IntegrityError), out
    assert victim.key in str(out["error"])
    assert took < 30
    dbs = {r[0] for r in target.sql("SHOW DATABASES")}
    assert "big" not in dbs and not any(d.startswith("bkrestore_") for d in dbs)


# -- the cold archive: reader and uploader --------------------------------------------------------
def _roots(tmp_path):
    from backupkit.strategies.cold.tar import Root

    src = tmp_path / "data"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_bytes(bytes([i]) * 300_000)
    return [Root("data", src)]


def test_cold_upload_failure_stops_the_reader_promptly(tmp_path, local_url, monkeypatch):
    from backupkit.strategies.cold import upload

    def broken(store, key, chunks, **kw):
        next(iter(chunks))
        raise StorageError(f"injected: cannot write {key!r}")

    monkeypatch.setattr(upload, "put_object", broken)
    store = open_store(local_url)
    out, took = _in_thread(lambda: upload.stream_roots(store, "cold/x/data.tar.zst", _roots(tmp_path),
                                                       level=1, threads=1), 30)
    assert isinstance(out.get("error"), StorageError) and "injected" in str(out["error"]), out
    assert took < 15


def test_cold_reader_failure_stops_the_upload_promptly_and_stores_nothing(tmp_path, local_url,
                                                                          monkeypatch):
    from backupkit.strategies.cold import upload

    real_iter = upload.TarWriter.__iter__

    def broken(self):
        for n, chunk in enumerate(real_iter(self)):
            if n == 3:
                raise OSError(errno.EIO, "injected: Input/output error")
            yield chunk

    monkeypatch.setattr(upload.TarWriter, "__iter__", broken)
    store = open_store(local_url)
    out, took = _in_thread(lambda: upload.stream_roots(store, "cold/x/data.tar.zst", _roots(tmp_path),
                                                       level=1, threads=1), 30)
    # the store may wrap the reader's error as it abandons the write; either way it is named
    assert isinstance(out.get("error"), (OSError, BackupkitError)), out
    assert "injected: Input/output error" in str(out["error"])
    assert took < 15
    assert store.stat("cold/x/data.tar.zst") is None


# -- the prefetching helper (snapshot chunk reads) ------------------------------------------------
def test_prefetched_raises_the_producer_error_and_stops_the_producer_when_the_consumer_fails():
    def failing():
        yield 1
        raise IntegrityError("injected producer failure")

    out, _ = _in_thread(lambda: list(prefetched(failing())), 10)
    assert isinstance(out.get("error"), IntegrityError)

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    def consume() -> None:
        for item in prefetched(endless(), depth=2):
            if item == 5:
                raise StorageError("injected consumer failure")

    out, _ = _in_thread(consume, 10)
    assert isinstance(out.get("error"), StorageError)
    n = len(produced)
    time.sleep(0.3)
    assert len(produced) == n  # the producer stopped with the consumer
