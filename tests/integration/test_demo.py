"""The README's first command: the demo completes and its restore is exact."""

from __future__ import annotations

import json

from tests.support import run_cli


def test_demo_restores_the_dropped_table_exactly_and_reports_loss_windows(tmp_path):
    r = run_cli("demo", "--json", "--workdir", str(tmp_path / "demo"), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["ok"] is True
    assert out["checksum_before_drop"] == out["checksum_restored"]
    assert out["rows_before_drop"] == out["rows_restored"] > 5000
    assert out["steps"]["cold"]["downtime_s"] > 0
    assert out["steps"]["drop"]["gtid"]
    strategies = {s["strategy"] for s in out["steps"]["report"]["strategies"]}
    assert {"cold", "snapshot", "binlog"} <= strategies
    # Everything was stopped: no sandbox server is left running from the demo's folder.
    import subprocess

    ps = subprocess.run(["pgrep", "-f", str(tmp_path / "demo")], capture_output=True, text=True)
    assert ps.stdout.strip() == ""
