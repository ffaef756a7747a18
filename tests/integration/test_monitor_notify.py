"""[notify] for cron users: a failed `schedule exec` run POSTs its failure to the webhook (a local
HTTP server), and a dead webhook changes nothing but a log line."""

from __future__ import annotations

from backupkit.mysql.sandbox import free_port
from tests.support import run_cli
from tests.support.monitoring import Receiver


def _policy(tmp_path, webhook: str):
    p = tmp_path / "notify.toml"
    p.write_text(f"""
name = "cronjob"
[source]
url = "mysql://root@127.0.0.1:{free_port()}"
[storage]
url = "file://{tmp_path / 'repo'}"
[strategies]
snapshot = "0 0 * * *"
[notify]
webhook = "{webhook}"
retries = 1
timeout = 2
[schedule]
status_file = "{tmp_path / 'state' / 'cronjob.status.json'}"
lock_dir = "{tmp_path / 'locks'}"
log_dir = "{tmp_path / 'log'}"
""")
    return p


def test_a_failed_cron_run_posts_its_failure(tmp_path):
    rx = Receiver()
    try:
        r = run_cli("schedule", "exec", "snapshot", "--policy", str(_policy(tmp_path, rx.url)), timeout=120)
    finally:
        rx.close()
    assert r.returncode == 3, r.stderr
    (body,) = rx.bodies
    assert body["event"] == "failure" and body["kind"] == "job_failed" and body["strategy"] == "snapshot"
    assert body["policy"] == "cronjob" and body["text"].startswith(":x: backupkit cronjob: failure:")


def test_a_dead_webhook_only_costs_a_log_line(tmp_path):
    r = run_cli("schedule", "exec", "snapshot", "--policy",
                str(_policy(tmp_path, f"http://127.0.0.1:{free_port()}/hook")), timeout=120)
    assert r.returncode == 3, r.stderr  # the run's own exit code: source unreachable
    assert "Traceback" not in r.stderr and "result=failed" in r.stderr
