"""`binlog ship --metrics-listen`: /metrics scraped over HTTP from a running shipper and parsed
with prometheus_client's parser. Under a steady write load the lag stays within 0-2 s; after a
purge gap, the gap counter rises."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

from backupkit.mysql.sandbox import free_port
from tests.support.monitoring import scrape, wait_metric
from tests.support.shipping import (
    make_table,
    purge_to_current,
    ship_once,
    shipping_writer,
    start_shipper,
    stop_proc,
)


def test_shipper_metrics_lag_under_load_and_the_gap_counter(mariadb, local_url, tmp_path):
    sb = mariadb
    make_table(sb)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_shipper(sb, local_url, tmp_path / "ship.log", "--from-current",
                         "--metrics-listen", f"127.0.0.1:{port}")
    writer = shipping_writer(sb, pause=0.003)
    try:
        wait_metric(url, lambda m: m.get("backupkit_binlog_shipper_up") == 1.0)
        writer.start()
        time.sleep(2.0)  # the load settles
        lags = []
        t_end = time.monotonic() + 8
        while time.monotonic() < t_end:
            m = scrape(url)
            lags.append(m["backupkit_binlog_lag_seconds"])
            time.sleep(0.25)
        first = scrape(url)["backupkit_binlog_segments_shipped_total"]
        time.sleep(1.0)
        assert scrape(url)["backupkit_binlog_segments_shipped_total"] > first
        assert writer.commits > 500 and writer.errors == 0
        assert all(0 <= v <= 2.0 for v in lags), lags
        assert scrape(url)["backupkit_binlog_gaps_detected_total"] == 0
    finally:
        writer.stop()
        assert stop_proc(proc) == 0, (tmp_path / "ship.log").read_text()[-2000:]
    # a gap: binlog the shipper never saw is purged
    sb.sql("INSERT INTO w.t (k) VALUES (-1)")
    sb.sql("FLUSH BINARY LOGS")
    sb.sql("INSERT INTO w.t (k) VALUES (-2)")
    purge_to_current(sb)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_shipper(sb, local_url, tmp_path / "ship2.log", "--restart-from-current",
                         "--metrics-listen", f"127.0.0.1:{port}")
    try:
        m = wait_metric(url, lambda m: m.get("backupkit_binlog_gaps_detected_total", 0) >= 1)
        assert m["backupkit_binlog_gaps_detected_total"] == 1
        wait_metric(url, lambda m: m.get("backupkit_binlog_shipper_up") == 1.0)
        # the repository view is read again at once after a gap (not only every refresh_interval)
        wait_metric(url, lambda m: m.get("backupkit_binlog_gaps", 0) == 1, timeout=10)
        page = urllib.request.urlopen(url + "/", timeout=5).read().decode()
        assert 'class="gap"' in page and "binlog shipping" in page
    finally:
        assert stop_proc(proc) == 0, (tmp_path / "ship2.log").read_text()[-2000:]
    assert ship_once(sb, local_url).returncode == 0
    assert Path(tmp_path / "ship2.log").read_text().count("GAP recorded") == 1


def test_a_busy_metrics_port_never_stops_shipping(mariadb, local_url):
    import socket

    make_table(mariadb)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = ship_once(mariadb, local_url, "--from-current", "--metrics-listen", f"127.0.0.1:{port}")
    assert r.returncode == 0, r.stderr
    assert "cannot serve metrics" in r.stderr and "shipping without serving metrics" in r.stderr
