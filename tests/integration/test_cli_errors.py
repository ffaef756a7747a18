"""Bad input gets one line, the right exit code, and no traceback."""

from __future__ import annotations

import json
import os
import time

import pytest

from backupkit.mysql.sandbox import free_port
from tests.support import MotoServer, run_cli


def _one_line(r):
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def test_help_lists_every_command_group():
    r = run_cli("--help")
    assert r.returncode == 0
    for group in ("snapshot", "cold", "binlog", "restore", "report", "list", "verify", "prune",
                  "schedule", "policy", "demo", "repo"):
        assert group in r.stdout


def test_version():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("backupkit ")


def test_bad_storage_url_exit_2():
    r = run_cli("repo", "info", "--storage", "ftp://nowhere/x")
    assert r.returncode == 2
    assert "bad storage URL" in _one_line(r)


def test_unreachable_endpoint_exit_4():
    port = free_port()
    t0 = time.monotonic()
    r = run_cli("repo", "info", "--storage", f"s3://bucket/p?endpoint=http://127.0.0.1:{port}",
                env={"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
    assert r.returncode == 4
    assert "cannot reach" in _one_line(r) and "Connection refused" in r.stderr
    # nothing listens: said after a TCP probe (~1 s), not after botocore's retries of each call
    # (which took 25 s for this command)
    assert time.monotonic() - t0 < 10


def test_missing_bucket_exit_4(moto):
    r = run_cli("repo", "info", "--storage", "s3://no-such-bucket-here/p",
                env={"BACKUPKIT_S3_ENDPOINT": moto.endpoint})
    assert r.returncode == 4
    assert "does not exist" in _one_line(r)


def test_repo_info_against_s3_before_and_after_the_command(moto, s3_url):
    env = {"BACKUPKIT_S3_ENDPOINT": moto.endpoint}
    after = run_cli("repo", "info", "--storage", s3_url, "--json", env=env)
    before = run_cli("--storage", s3_url, "--json", "repo", "info", env=env)
    assert after.returncode == 0, after.stderr
    assert before.returncode == 0, before.stderr
    a, b = json.loads(after.stdout), json.loads(before.stdout)
    assert a["storage"].startswith(s3_url) and a == b
    assert a["totals"]["backups"] == 0


def test_wrong_s3_credentials_exit_4():
    # A moto server that checks credentials (IAM auth on from the first request).
    server = MotoServer(env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"}).start()
    try:
        r = run_cli("repo", "info", "--storage", f"s3://b/p?endpoint={server.endpoint}",
                    env={"AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG0", "AWS_SECRET_ACCESS_KEY": "nope"})
        assert r.returncode == 4
        line = _one_line(r)
        assert "credentials rejected" in line or "access denied" in line
    finally:
        server.stop()


def test_password_file_with_mode_0644_exit_2(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("secret-value\n")
    os.chmod(pw, 0o644)
    pol = tmp_path / "p.toml"
    pol.write_text(f'[source]\nurl = "mysql://root@127.0.0.1:1"\npassword_file = "{pw}"\n')
    r = run_cli("policy", "check", str(pol), "--storage", str(tmp_path / "repo"))
    assert r.returncode == 2
    line = _one_line(r)
    assert "0644" in line and "chmod 600" in line
    assert "secret-value" not in r.stderr + r.stdout


def test_unknown_policy_file_exit_2(tmp_path):
    r = run_cli("list", "--policy", str(tmp_path / "missing.toml"))
    assert r.returncode == 2
    assert "not found" in _one_line(r)


def test_unknown_option_is_one_line_exit_2():
    r = run_cli("list", "--no-such-option")
    assert r.returncode == 2
    _one_line(r)


@pytest.mark.parametrize("url", ["mysql://root:pw@127.0.0.1:3306", "postgres://x"])
def test_bad_source_url_exit_2(url, tmp_path):
    pol = tmp_path / "p.toml"
    pol.write_text('name = "x"\n')
    r = run_cli("policy", "check", str(pol), "--source", url, "--storage", str(tmp_path / "r"))
    assert r.returncode == 2
    assert "pw" not in r.stderr.replace("password", "")
    _one_line(r)
