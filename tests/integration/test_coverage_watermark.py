"""The confirmed-through watermark (issue 15, part 1): a quiet stretch after the last commit is
restorable exactly while the shipper is caught up, the loss window stays near the sync interval,
and once the shipper stops the watermark stops and restoring past it is refused naming it."""

from __future__ import annotations

import os
import time

import pytest

from backupkit.repo.catalog import Catalog
from backupkit.repo.watermark import read_status
from backupkit.restore.loss import loss_report
from backupkit.storage import open_store
from tests.support import json_ok, run_cli, table_checksums, wait_for
from tests.support.shipping import cli_env, start_shipper, stop_proc

pytestmark = pytest.mark.timeout(300)

#: The issue asks for a quiet minute; the mechanism does not depend on the length, so CI uses
#: 20 s (BACKUPKIT_TEST_QUIET=60 for the full minute).
QUIET = float(os.environ.get("BACKUPKIT_TEST_QUIET", "20"))


def test_quiet_stretch_is_restorable_and_the_loss_window_stays_small(mariadb_factory, tmp_path):
    src = mariadb_factory(server_id=1)
    url = f"file://{tmp_path / 'repo'}"
    env = cli_env(src, url)
    src.sql("CREATE DATABASE w")
    src.sql("CREATE TABLE w.t (id INT AUTO_INCREMENT PRIMARY KEY, k INT, v VARCHAR(300))")
    json_ok(run_cli("snapshot", "--json", env=env))
    proc = start_shipper(src, url, tmp_path / "ship.log", "--confirm-interval", "1")
    catalog = Catalog(open_store(url))
    try:
        conn = src.connect()
        cur = conn.cursor()
        for i in range(200):
            cur.execute("INSERT INTO w.t (k, v) VALUES (%s, 'before the quiet')", (i,))
        conn.close()
        quiet_from = time.time()
        expected = table_checksums(src, ["w"])
        sid = wait_for(catalog.sources, 20, "the first segment")[0]
        # the quiet stretch: sample the loss window the report gives, about once a second
        windows = []
        time.sleep(3)
        while time.time() < quiet_from + QUIET:
            rep = loss_report(catalog, count=False)
            windows.append(rep.get("binlog").loss_seconds)
            time.sleep(1)
        st = read_status(catalog, sid)
        assert st is not None and st.confirmed_at >= int(quiet_from + QUIET) - 4, st
        # sync interval 0.2 s + heartbeat 0.5 s + the one-second margin + confirm interval 1 s
        print("binlog loss window during the quiet stretch (s):", windows)
        assert max(windows) < 4.0, windows
        listing = json_ok(run_cli("list", "--json", env=env))
        assert listing["binlog_coverage"][-1]["confirmed_through"]
        status = json_ok(run_cli("binlog", "status", "--json", env=env))["sources"][0]
        assert status["confirmed_through"] >= st.confirmed_at
        assert status["shipped_server"]["server_id"] == 1
    finally:
        assert stop_proc(proc) == 0
    stopped = read_status(catalog, sid)
    assert stopped.state == "stopped"
    # a moment inside the quiet stretch equals the state at its start
    target = mariadb_factory(server_id=2)
    mid = quiet_from + QUIET / 2
    out = json_ok(run_cli("restore", "--to-time", f"@{mid:.3f}", "--target", target.url, "--force",
                      "--json", env=env))
    assert out["reached"]
    assert table_checksums(target, ["w"]) == expected
    # the shipper is down: the watermark stops, and restoring past it is refused naming it
    time.sleep(2.5)
    later = time.time()
    r = run_cli("restore", "--to-time", f"@{later:.3f}", "--target", target.url, "--force", env=env)
    assert r.returncode == 2, r.stderr
    assert "confirmed-through watermark" in r.stderr
    rep = loss_report(catalog, count=False)
    assert rep.get("binlog").loss_seconds >= 2.5
    assert rep.get("binlog").recovery_point == stopped.confirmed_at
