"""The protection status model: each objective judged from plain inputs."""

from __future__ import annotations

from backupkit.config import Policy
from backupkit.monitor.status import build_status, objectives_for
from tests.unit.monitor.helpers import HOUR, NOW, daemon, faulty, healthy, objectives, repository, shipper


def kinds(st) -> set[str]:
    return {p.kind for p in st.problems}


def test_a_running_daemon_with_fresh_backups_and_a_live_shipper_is_protected():
    st = healthy()
    assert st.healthy, st.problems
    snap = st.strategy("snapshot")
    assert snap.loss_seconds == 1800.0 and snap.backups == 2
    binlog = st.strategy("binlog")
    assert binlog.loss_seconds == 0.5 and st.shipper_up
    assert {s.strategy for s in st.strategies} >= {"cold", "snapshot", "binlog", "verify"}


def test_every_fault_is_one_problem_of_its_kind():
    st = faulty()
    assert kinds(st) == {"job_failed", "overdue", "loss_over_objective", "shipper_lagging", "gap",
                         "drill_failed", "target_behind"}
    assert any("cold" in p.message and "storage unreachable" in p.message for p in st.problems)


def test_a_shipper_that_stopped_writing_its_state_is_down_and_its_lag_grows():
    st = build_status("prod", now=NOW, repository=repository(), daemon_status=daemon(), daemon_alive=True,
                      shipper=shipper(lag=130, up=False), objectives=objectives())
    assert "shipper_down" in kinds(st) and not st.shipper_up
    later = build_status("prod", now=NOW + 60, repository=repository(), daemon_status=daemon(),
                         daemon_alive=True, shipper=shipper(lag=130, up=False), objectives=objectives())
    assert later.lag_seconds == st.lag_seconds + 60


def test_a_gap_stops_mattering_once_a_base_follows_it():
    with_base = build_status("prod", now=NOW, repository=repository(gap=True), daemon_status=daemon(),
                             daemon_alive=True, shipper=shipper(), objectives=objectives())
    assert "gap" not in kinds(with_base)
    without = build_status("prod", now=NOW, repository=repository(gap=True, snapshot_age=9.5 * HOUR),
                           daemon_status=daemon(), daemon_alive=True, shipper=shipper(),
                           objectives=objectives())
    assert "gap" in kinds(without)


def test_a_stopped_daemon_is_a_problem_but_one_that_never_ran_under_cron_is_not():
    stopped = build_status("prod", now=NOW, daemon_status={**daemon(), "state": "stopped"},
                           daemon_alive=False, shipper=shipper(), objectives=objectives())
    assert "daemon_down" in kinds(stopped) and "shipper_down" not in kinds(stopped)
    cron = build_status("prod", now=NOW, daemon_status={"jobs": daemon()["jobs"]}, daemon_alive=False,
                        shipper=shipper(), objectives=objectives())
    assert "daemon_down" not in kinds(cron)


def test_to_dict_is_plain_json():
    import json

    text = json.dumps(faulty().to_dict())
    assert '"healthy": false' in text and "target_behind" in text


def test_a_physical_snapshot_schedule_judges_the_physical_backups():
    policy = Policy.model_validate({"strategies": {"snapshot": "0 * * * *"},
                                    "snapshot": {"engine": "physical"}})
    obj = objectives_for(policy, lambda expr: 3600.0)
    assert obj.schedules == {"physical": "0 * * * *"} and obj.job_of == {"physical": "snapshot"}
    assert obj.max_age["physical"] == 3600 + 360
    st = build_status("prod", now=NOW, daemon_status=daemon(), daemon_alive=True, objectives=obj)
    (row,) = [s for s in st.strategies if s.strategy in ("snapshot", "physical")]
    assert row.strategy == "physical" and row.last_result == "ok" and row.runs == 10


def test_a_shipper_that_lost_its_source_is_down_and_says_why():
    sh = shipper(lag=20.0)
    sh.state, sh.error = "reconnecting", "source 127.0.0.1:3307 is unreachable: Connection refused"
    st = build_status("prod", now=NOW, repository=repository(), daemon_status=daemon(), daemon_alive=True,
                      shipper=sh, objectives=objectives())
    assert not st.shipper_up
    (p,) = [p for p in st.problems if p.kind == "shipper_down"]
    assert "lost the source and is reconnecting" in p.message and "Connection refused" in p.message
