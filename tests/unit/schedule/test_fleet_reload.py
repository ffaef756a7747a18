"""The fleet daemon's reading of its folder (FleetDaemon.scan), with policies that schedule only a
yearly verify (no shipper, no run during the test): which file starts, restarts, is refused while
its previous version keeps running, comes back, or stops."""

from __future__ import annotations

from pathlib import Path

from backupkit.schedule.fleet import FleetDaemon


def _policy(tmp_path: Path, name: str, cron: str = "0 0 1 1 *", extra: str = "") -> str:
    return f"""
name = "{name}"
[storage]
url = "file://{tmp_path / 'repos' / name}"
[strategies]
verify = "{cron}"
{extra}
"""


def _scan(fleet: FleetDaemon) -> None:
    fleet.scan()
    for w in list(fleet.workers):
        w.join(30)


def test_scan_starts_reloads_refuses_and_stops_one_policy_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKUPKIT_STATE_DIR", str(tmp_path / "state"))
    d = tmp_path / "policies"
    d.mkdir()
    (d / "a.toml").write_text(_policy(tmp_path, "a"))
    (d / "b.toml").write_text(_policy(tmp_path, "b"))
    (d / "c.toml").write_text("not toml [")
    lines: list[str] = []
    fleet = FleetDaemon(d, event_log=lines.append, reload_interval=0)
    try:
        _scan(fleet)
        assert sorted(m.name for m in fleet.members.values()) == ["a", "b"]
        assert {e.name: (e.state is not None, bool(e.error)) for e in fleet.entries()} == {
            "a": (True, False), "b": (True, False), "c": (False, True)}
        a0, b0 = fleet.members[d / "a.toml"], fleet.members[d / "b.toml"]

        # unchanged content (even touched): nothing happens
        (d / "a.toml").write_text(_policy(tmp_path, "a"))
        _scan(fleet)
        assert fleet.members[d / "a.toml"] is a0

        # a's schedule changes: a restarts with it, b is the same object
        (d / "a.toml").write_text(_policy(tmp_path, "a", cron="0 0 2 1 *"))
        _scan(fleet)
        a1 = fleet.members[d / "a.toml"]
        assert a1 is not a0 and a1.settings.policy.strategies.verify == "0 0 2 1 *"
        assert a0.daemon.stopping.is_set() and fleet.members[d / "b.toml"] is b0
        assert any("event=reloaded policy=a" in ln for ln in lines)

        # b takes a's name: refused, b's previous version keeps running
        good_b = (d / "b.toml").read_text()
        (d / "b.toml").write_text(_policy(tmp_path, "a"))
        _scan(fleet)
        assert fleet.members[d / "b.toml"] is b0 and "also the name of" in (b0.error or "")
        assert not b0.daemon.stopping.is_set()
        # a typo: still refused, with the new reason
        (d / "b.toml").write_text(good_b.replace("verify", "verfy"))
        _scan(fleet)
        assert fleet.members[d / "b.toml"] is b0 and "verfy" in (b0.error or "")
        assert [e.error is not None for e in fleet.entries() if e.name == "b"] == [True]
        # put back: the error clears, nothing restarts
        (d / "b.toml").write_text(good_b)
        _scan(fleet)
        assert fleet.members[d / "b.toml"] is b0 and b0.error is None
        assert any("event=reload_reverted policy=b" in ln for ln in lines)

        # the folder emptied (moved away, or a deploy in progress): nothing stops
        moved = tmp_path / "moved"
        d.rename(moved)
        _scan(fleet)
        moved.rename(d)
        assert sorted(m.name for m in fleet.members.values()) == ["a", "b"]
        assert any("event=reload_error folder=" in ln for ln in lines)

        # c fixed: it starts; a removed: it stops
        (d / "c.toml").write_text(_policy(tmp_path, "c"))
        (d / "a.toml").unlink()
        _scan(fleet)
        assert sorted(m.name for m in fleet.members.values()) == ["b", "c"]
        assert a1.daemon.stopping.is_set() and not fleet.refused
        assert any("event=removed policy=a" in ln for ln in lines)
    finally:
        fleet._shutdown(0.0)


def test_only_an_edit_the_shipper_does_not_read_keeps_it_running():
    from backupkit.config import Policy
    from backupkit.schedule.fleet import jobs_only_change

    base = {"name": "p", "source": {"url": "mysql://root@127.0.0.1:3307"}, "storage": {"url": "file:///r"},
            "strategies": {"snapshot": "0 3 * * *", "binlog": "continuous"}, "binlog": {"sync_interval": 1}}

    def with_(**kw) -> Policy:
        d = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
        for k, v in kw.items():
            d[k] = {**d.get(k, {}), **v}
        return Policy.model_validate(d)

    old = with_()
    assert jobs_only_change(old, with_(strategies={"snapshot": "30 4 * * *", "verify": "0 5 * * *"}))
    assert jobs_only_change(old, with_(snapshot={"parallel": 1}, metrics={"lag_threshold": 5}))
    assert not jobs_only_change(old, with_(binlog={"sync_interval": 0.5}))
    assert not jobs_only_change(old, with_(strategies={"binlog": "off"}))
    assert not jobs_only_change(old, with_(source={"url": "mysql://root@127.0.0.1:3308"}))
    assert not jobs_only_change(old, with_(storage={"url": "file:///other"}))
    assert not jobs_only_change(old, with_(schedule={"shipper_backoff_max": 9}))


def test_a_policy_whose_shipper_lock_is_held_starts_once_it_is_free(tmp_path, monkeypatch):
    """Another shipper of the policy runs on this machine (a cron one): the policy is reported and
    tried again at every reload, and starts when that shipper is gone."""
    import stat

    from backupkit.schedule.state import FileLock

    monkeypatch.setenv("BACKUPKIT_STATE_DIR", str(tmp_path / "state"))
    fake = tmp_path / "fakepy"  # stands in for `python -m backupkit ... binlog ship`
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    d = tmp_path / "policies"
    d.mkdir()
    (d / "s.toml").write_text(_policy(tmp_path, "s", extra='[source]\nurl = "mysql://root@127.0.0.1:1"\n')
                              .replace("[strategies]", '[strategies]\nbinlog = "continuous"'))
    held = FileLock(tmp_path / "state" / "locks" / "s-binlog.lock")
    assert held.acquire()
    lines: list[str] = []
    fleet = FleetDaemon(d, event_log=lines.append, reload_interval=0, python=str(fake))
    try:
        _scan(fleet)
        _scan(fleet)
        assert not fleet.members and "lock" in fleet.refused[d / "s.toml"].error
        assert sum("event=policy_error" in ln for ln in lines) == 1, lines
        held.release()
        _scan(fleet)
        (m,) = fleet.members.values()
        assert m.daemon.shipper is not None and m.daemon.shipper.proc.poll() is None
        assert not fleet.refused
    finally:
        fleet._shutdown(0.0)


def test_a_reload_lets_the_running_job_finish_while_the_old_shipper_keeps_shipping(tmp_path, monkeypatch):
    """An edit the shipper reads, during a running job: the old shipper runs until that job has
    finished, then the new version starts with a new shipper (child processes stand in for
    `backupkit binlog ship` and `backupkit verify`)."""
    import stat
    import time
    from datetime import UTC, datetime

    monkeypatch.setenv("BACKUPKIT_STATE_DIR", str(tmp_path / "state"))
    fake = tmp_path / "fakepy"
    fake.write_text('#!/bin/sh\ncase "$*" in *binlog*) exec sleep 60;; esac\nsleep 3\necho "{}"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    d = tmp_path / "policies"
    d.mkdir()
    extra = '[source]\nurl = "mysql://root@127.0.0.1:1"\n[binlog]\nheartbeat = 0.5\n'
    text = (_policy(tmp_path, "s", extra=extra)
            .replace("[strategies]", '[strategies]\nbinlog = "continuous"'))
    (d / "s.toml").write_text(text)
    fleet = FleetDaemon(d, event_log=lambda line: None, reload_interval=0, python=str(fake))
    try:
        fleet.scan()
        (old,) = fleet.members.values()
        ship0 = old.daemon.shipper.proc
        old.scheduler.get_job("verify").modify(next_run_time=datetime.now(UTC))  # run it now
        deadline = time.monotonic() + 10
        while not (old.daemon.status.read().get("jobs", {}).get("verify") or {}).get("running_since"):
            assert time.monotonic() < deadline, "the verify run did not start"
            time.sleep(0.1)
        (d / "s.toml").write_text(text.replace("heartbeat = 0.5", "heartbeat = 0.4"))
        t0 = time.monotonic()
        fleet.scan()
        time.sleep(1.0)
        assert ship0.poll() is None, "the old shipper ships while the job finishes"
        for w in list(fleet.workers):
            w.join(30)
        assert time.monotonic() - t0 >= 2.0  # the new version waited for the job
        assert ship0.poll() is not None  # then the old shipper was stopped
        (new,) = fleet.members.values()
        assert new is not old and new.daemon.shipper.proc.poll() is None
        assert new.daemon.shipper.proc.pid != ship0.pid
        assert old.daemon.status.read()["jobs"]["verify"]["last"]["result"] == "ok"
    finally:
        fleet._shutdown(0.0)
