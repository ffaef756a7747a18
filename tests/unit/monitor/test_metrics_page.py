"""Metrics text, the textfile, and the status page, from the model's states."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from backupkit.monitor.metrics import MonitorState, render, write_textfile
from backupkit.monitor.page import render_page
from backupkit.monitor.status import RepositoryView
from tests.unit.monitor.helpers import NOW, faulty, healthy


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_parse_and_carry_every_series_the_alerts_use():
    got = samples(render(healthy).decode())
    assert got[("backupkit_binlog_lag_seconds", (("source", "db1"),))] == 0.5
    assert got[("backupkit_binlog_shipper_up", (("source", "db1"),))] == 1.0
    assert got[("backupkit_loss_window_seconds", (("strategy", "snapshot"),))] == 1800.0
    assert got[("backupkit_loss_objective_seconds", (("strategy", "binlog"),))] == 60.0
    assert got[("backupkit_restore_drill_success", ())] == 1.0
    assert got[("backupkit_restore_drill_rto_seconds", (("kind", "snapshot"),))] == 41.5
    assert got[("backupkit_target_up", (("target", "west"),))] == 1.0
    assert got[("backupkit_lease_holder_info", (("holder", "host:123:abcd"), ("source", "db1")))] == 1.0
    assert got[("backupkit_healthy", ())] == 1.0
    assert got[("backupkit_binlog_segments_shipped_total", (("source", "db1"),))] == 500
    assert got[("backupkit_runs_total", (("result", "ok"), ("strategy", "snapshot")))] == 10
    names = {n for n, _ in got}
    rules = (Path(__file__).parents[3] / "docs" / "alerts.yml").read_text()
    used = set(re.findall(r"\b(backupkit_[a-z_]+)", rules))
    assert used <= names | {"backupkit_problems", "backupkit_last_failure_timestamp_seconds",
                            "backupkit_policy_error"}, used - names  # the fleet's own (test_fleet.py)


def test_a_faulty_state_shows_in_the_metrics():
    got = samples(render(faulty).decode())
    assert got[("backupkit_healthy", ())] == 0.0
    assert got[("backupkit_problems", (("kind", "gap"),))] == 1.0
    assert got[("backupkit_restore_drill_success", ())] == 0.0
    assert got[("backupkit_target_up", (("target", "west"),))] == 0.0
    assert got[("backupkit_binlog_lag_seconds", (("source", "db1"),))] == 300.0


def test_textfile_is_replaced_atomically(tmp_path):
    path = tmp_path / "node" / "backupkit.prom"
    seen: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            if path.exists():
                seen.append(path.read_text())

    t = threading.Thread(target=reader)
    t.start()
    try:
        for _ in range(30):
            write_textfile(path, healthy)
    finally:
        stop.set()
        t.join()
    assert seen and all(s.endswith("\n") and "backupkit_scrape_duration_seconds" in s for s in seen)
    assert [p.name for p in path.parent.iterdir()] == ["backupkit.prom"]


def test_a_scrape_never_reads_the_repository():
    reads = []

    def repo() -> RepositoryView:
        reads.append(time.time())
        return RepositoryView(read_at=time.time())

    state = MonitorState("p", repository_fn=repo, refresh_interval=3600)
    state.refresh()
    for _ in range(50):
        render(state.status)
    assert len(reads) == 1


def test_a_failed_repository_read_keeps_the_previous_view():
    calls = {"n": 0}

    def repo() -> RepositoryView:
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError("network down")
        return RepositoryView(read_at=1.0, storage="s3://x")

    state = MonitorState("p", repository_fn=repo)
    state.refresh()
    state.refresh()
    assert state.repository.storage == "s3://x" and "network down" in state.repository.error


def test_the_page_shows_intervals_gaps_bases_every_strategy_and_no_script():
    html = render_page(faulty())
    assert "<script" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert html.count('class="interval"') == 1 and html.count('class="gap"') == 1
    assert 'class="base base-snapshot"' in html and 'class="base base-cold"' in html
    for s in ("cold", "snapshot", "binlog"):
        assert f'data-strategy="{s}"' in html
    assert 'class="lag' in html and "data-target=\"west\"" in html
    assert "the last restore drill failed" in html
    ok = render_page(healthy(lag_history=[(NOW - 600 + 10 * i, 0.5) for i in range(60)]))
    assert "Every objective is met" in ok and 'class="lag-line"' in ok
