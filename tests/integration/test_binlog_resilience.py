"""The shipper under crashes, failover, a source restart and an S3 outage: the repository ends up
complete (the server's bytes, nothing missing, nothing doubled)."""

from __future__ import annotations

import json
import os
import random
import signal
import time

import pytest

from backupkit.repo.catalog import Catalog
from backupkit.repo.lease import LeaseRecord
from backupkit.storage import open_store
from tests.support import wait_for
from tests.support.proxy import FlakyProxy
from tests.support.shipping import (
    assert_complete,
    make_table,
    ship_once,
    shipping_writer,
    start_shipper,
    stop_proc,
)

pytestmark = pytest.mark.timeout(400)


def lease_of(storage_url: str) -> LeaseRecord | None:
    store = open_store(storage_url)
    keys = [i.key for i in store.list("leases/")]
    if not keys:
        return None
    return LeaseRecord.decode(store.get_bytes(keys[0]))


def segment_count(storage_url: str) -> int:
    cat = Catalog(open_store(storage_url))
    return sum(len(cat.segments(s)) for s in cat.sources())


def test_kill9_at_20_random_moments_loses_and_doubles_nothing(mariadb, local_url, tmp_path):
    sb = mariadb
    make_table(sb)
    assert ship_once(sb, local_url, "--from-current").returncode == 0
    writer = shipping_writer(sb, rotate_every=2.5)
    writer.start()
    rng = random.Random(4)
    log = tmp_path / "ship.log"
    counts = []
    try:
        for _ in range(20):
            proc = start_shipper(sb, local_url, log, "--lease-seconds", "3")
            time.sleep(rng.uniform(0.5, 2.5))
            stop_proc(proc, signal.SIGKILL)
            counts.append(segment_count(local_url))
    finally:
        writer.stop()
    r = ship_once(sb, local_url)
    assert r.returncode == 0, r.stderr
    info = assert_complete(sb, local_url)
    assert writer.errors == 0
    assert info["transactions"] == writer.commits
    assert len(info["files"]) >= 3  # rotations happened while shipping
    # the kills hit while segments were being written, not only at start-up
    assert sum(1 for a, b in zip(counts, counts[1:], strict=False) if b > a) >= 8, counts


def test_standby_takes_over_and_the_old_holder_never_writes_again(mariadb, local_url, tmp_path):
    sb = mariadb
    make_table(sb)
    assert ship_once(sb, local_url, "--from-current").returncode == 0
    writer = shipping_writer(sb, pause=0.01)
    writer.start()
    log = tmp_path / "ship.log"
    a = start_shipper(sb, local_url, log, "--lease-seconds", "3")
    procs = [a]
    try:
        wait_for(lambda: (lease_of(local_url) or LeaseRecord("", "", "", 0, 0, 0, 0, 0)).pid == a.pid,
                 20, "the first shipper to hold the lease")
        b = start_shipper(sb, local_url, log, "--lease-seconds", "3")
        procs.append(b)
        time.sleep(2.0)
        assert lease_of(local_url).pid == a.pid  # b is a standby
        before = segment_count(local_url)
        stop_proc(a, signal.SIGKILL)
        wait_for(lambda: lease_of(local_url).pid == b.pid, 10, "the standby to take over")
        wait_for(lambda: segment_count(local_url) > before + 2, 15, "the standby to ship")
        # A frozen holder (alive, but not renewing) loses the lease when it expires ...
        c = start_shipper(sb, local_url, log, "--lease-seconds", "3")
        procs.append(c)
        time.sleep(1.5)
        os.kill(b.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        wait_for(lambda: lease_of(local_url).pid == c.pid, 15, "the second standby to take over")
        assert time.monotonic() - t0 >= 1.0  # it waited for the lease to expire
        time.sleep(1.0)
        # ... and once it runs again it must not write: it finds its lease taken and stands by.
        os.kill(b.pid, signal.SIGCONT)
        time.sleep(3.0)
        assert lease_of(local_url).pid == c.pid
    finally:
        writer.stop()
        for p in procs[1:]:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
        rcs = [stop_proc(p) for p in procs[1:]]
    assert rcs == [0, 0], log.read_text()
    assert "standing by" in log.read_text()
    r = ship_once(sb, local_url)
    assert r.returncode == 0, r.stderr
    info = assert_complete(sb, local_url)
    assert info["transactions"] == writer.commits


def test_source_restart_and_a_silent_stream_during_shipping(mariadb, local_url, tmp_path):
    sb = mariadb
    make_table(sb)
    assert ship_once(sb, local_url, "--from-current").returncode == 0
    writer = shipping_writer(sb, pause=0.005)
    writer.start()
    log = tmp_path / "ship.log"
    proc = start_shipper(sb, local_url, log)
    try:
        time.sleep(2.0)
        # A frozen server sends nothing, not even heartbeats: the watchdog must notice.
        os.kill(sb.pid(), signal.SIGSTOP)
        time.sleep(4.0)
        os.kill(sb.pid(), signal.SIGCONT)
        time.sleep(2.0)
        sb.stop()  # a clean shutdown: STOP event, then a new binlog file at start
        time.sleep(1.0)
        sb.start()
        restarted = writer.commits
        time.sleep(3.0)
        assert writer.commits > restarted and writer.is_alive()  # the load goes on after the restart
    finally:
        writer.stop()
    time.sleep(1.0)
    assert stop_proc(proc) == 0, log.read_text()
    assert "no event or heartbeat" in log.read_text()
    assert "reconnecting" in log.read_text()
    info = assert_complete(sb, local_url)
    assert len(info["files"]) >= 2
    cat = Catalog(open_store(local_url))
    segs = cat.segments(info["source_id"])
    assert any(s.file_closed and not s.next_file for s in segs)  # the file that ended with STOP
    r = ship_once(sb, local_url)
    assert r.returncode == 0 and json.loads(r.stdout)["transactions"] == 0


def test_s3_outage_of_10s_during_shipping(mariadb, moto, s3_url, tmp_path):
    sb = mariadb
    make_table(sb)
    proxy = FlakyProxy(moto.port).up()
    env = {"BACKUPKIT_S3_ENDPOINT": proxy.endpoint}
    try:
        r = ship_once(sb, s3_url, "--from-current", env=env)
        assert r.returncode == 0, r.stderr
        writer = shipping_writer(sb, pause=0.01)
        writer.start()
        log = tmp_path / "ship.log"
        proc = start_shipper(sb, s3_url, log, env=env)
        try:
            time.sleep(2.5)
            proxy.down()
            time.sleep(1.0)  # an upload already past the proxy may still land
            during = segment_count(s3_url)
            time.sleep(9.0)
            assert segment_count(s3_url) == during  # nothing reached the storage
            proxy.up()
            # The shipper's own backoff tops out at 5 s, botocore's retries add a few more.
            wait_for(lambda: segment_count(s3_url) > during + 2, 45, "shipping to resume")
            time.sleep(2.0)
        finally:
            writer.stop()
            time.sleep(1.0)
            rc = stop_proc(proc)  # never leave a shipper behind, whatever failed above
        assert rc == 0, log.read_text()
    finally:
        proxy.close()
    info = assert_complete(sb, s3_url)
    assert info["transactions"] == writer.commits
