"""Notifications: a webhook POST received by a local HTTP server, a command, bounded retries."""

from __future__ import annotations

import time

from backupkit.monitor.notify import Notifier
from tests.support.monitoring import Receiver
from tests.unit.monitor.helpers import faulty, healthy


def test_problems_and_recovery_are_posted_as_slack_compatible_json():
    rx = Receiver(fail_first=1)
    try:
        n = Notifier("prod", webhook=rx.url, backoff=0.01)
        assert n.observe(healthy()) == []
        events = n.observe(faulty())
        assert {e.event for e in events} == {"failure", "gap", "lag"}
        assert n.observe(faulty()) == []  # nothing new
        back = n.observe(healthy())
        assert back and all(e.event == "recovery" for e in back)
        assert n.flush(10)
    finally:
        rx.close()
    assert len(rx.bodies) == len(events) + len(back)
    assert rx.tries == len(rx.bodies) + 1  # the refused first try was retried
    gap = next(b for b in rx.bodies if b["event"] == "gap")
    assert gap["text"].startswith(":warning: backupkit prod: gap:") and gap["policy"] == "prod"
    assert set(gap) >= {"text", "event", "kind", "message", "strategy", "target", "at", "host"}


def test_a_dead_webhook_is_retried_a_bounded_number_of_times_and_never_raises():
    n = Notifier("prod", webhook="http://127.0.0.1:9/none", retries=2, backoff=0.01, timeout=1)
    t0 = time.monotonic()
    n.observe(faulty())
    assert n.flush(20)
    assert n.failed == len(faulty().problems) and n.sent == 0
    assert time.monotonic() - t0 < 20


def test_the_command_gets_the_event_in_its_environment(tmp_path):
    out = tmp_path / "events.txt"
    cmd = f'echo "$BACKUPKIT_EVENT|$BACKUPKIT_EVENT_KIND|$BACKUPKIT_EVENT_POLICY" >> {out}'
    n = Notifier("prod", command=cmd, events=["gap"])
    n.observe(faulty())
    assert n.flush(10)
    assert out.read_text().splitlines() == ["gap|gap|prod"]


def test_a_new_failure_of_the_same_job_is_a_new_event():
    from backupkit.monitor.status import build_status
    from tests.unit.monitor.helpers import NOW, daemon, objectives, repository, shipper

    sent = []
    n = Notifier("prod", send=sent.append, events=["failure", "recovery"])

    def st(end: str):
        d = daemon(failed="cold")
        d["jobs"]["cold"]["last"]["end"] = end
        return build_status("prod", now=NOW, repository=repository(), daemon_status=d, daemon_alive=True,
                            shipper=shipper(), objectives=objectives())

    n.observe(st("2027-01-15T07:00:00Z"))
    n.observe(st("2027-01-15T07:40:00Z"))
    assert n.flush(5)
    assert [e.event for e in sent] == ["failure", "failure"]
