"""The fleet's one endpoint: every policy's series with a policy label, merged into one family per
name (one TYPE line each), the files that do not load, and the overview page."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from backupkit.monitor.fleet import FleetEntry, fleet_json, fleet_registry, fleet_routes, render_fleet_page
from backupkit.monitor.metrics import MonitorState
from tests.unit.monitor.helpers import NOW, faulty, healthy


def _entries() -> list[FleetEntry]:
    a = MonitorState("a")
    a.status = lambda now=None: healthy()  # type: ignore[method-assign]
    b = MonitorState("b")
    b.status = lambda now=None: faulty()  # type: ignore[method-assign]
    return [FleetEntry("a", "/p/a.toml", a), FleetEntry("b", "/p/b.toml", b, "key 'x': unknown (reload)"),
            FleetEntry("c", "/p/c.toml", None, "not TOML")]


def test_every_series_carries_its_policy_and_families_are_merged():
    text = generate_latest(fleet_registry(_entries)).decode()
    assert text.count("# TYPE backupkit_binlog_lag_seconds gauge") == 1
    got = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            got[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert got[("backupkit_binlog_lag_seconds", (("policy", "a"), ("source", "db1")))] == 0.5
    assert got[("backupkit_binlog_lag_seconds", (("policy", "b"), ("source", "db1")))] == 300.0
    assert got[("backupkit_healthy", (("policy", "a"),))] == 1.0
    assert got[("backupkit_healthy", (("policy", "b"),))] == 0.0
    assert got[("backupkit_binlog_lag_threshold_seconds", (("policy", "b"),))] == 60.0
    assert sorted(dict(lab)["policy"] for n, lab in got if n == "backupkit_info") == ["a", "b"]
    assert got[("backupkit_policy_error", (("file", "/p/b.toml"), ("policy", "b")))] == 1.0
    assert got[("backupkit_policy_error", (("file", "/p/c.toml"), ("policy", "c")))] == 1.0
    assert got[("backupkit_fleet_policies", ())] == 2.0
    # every series but the fleet's own carries a policy label
    fleet_own = {"backupkit_fleet_policies", "backupkit_scrape_duration_seconds"}
    assert all(dict(lab).get("policy") for (n, lab) in got if n not in fleet_own)


def test_overview_page_and_json_show_every_source():
    page = render_fleet_page(_entries(), now=NOW)
    assert page.count("<tr class=source ") == 2 and 'data-policy="a" data-healthy="1"' in page
    assert 'data-policy="b" data-healthy="0"' in page and 'href="policy/b"' in page
    assert "the previous version keeps running" in page and "not TOML" in page
    data = fleet_json(_entries())
    assert [p["policy"] for p in data["policies"]] == ["prod", "prod"]
    assert [p["summary"]["policy"] for p in data["policies"]] == ["a", "b"]
    assert data["policies"][1]["summary"]["open_gaps"] == 1 and data["healthy"] is False
    assert {b["file"]: b["running"] for b in data["broken"]} == {"/p/b.toml": True, "/p/c.toml": False}
    route = fleet_routes(_entries)
    body, ctype = route("/policy/b")
    assert ctype.startswith("text/html") and b'id=back href="../"' in body
    assert route("/policy/c") is None and route("/nope") is None
