"""Every message about a URL hides its password, whatever is wrong with the URL (issue 14, defect 9),
and bad URLs get one line and exit 2, never an internal error."""

from __future__ import annotations

import json
import logging

import pytest

from backupkit.util.redact import redact_text, redact_url
from tests.support.cli import run_cli_inprocess

SECRET = "Secret9xq"

BAD_SOURCES = [
    f"mysq://bk:{SECRET}@host",                 # a typo in the scheme
    f"mysql://bk:{SECRET}@[::1",                # an unclosed bracket
    f"mysql://bk:{SECRET}@host",                # a password in a connection URL
    f"mysql://bk:{SECRET}@host:notaport",
    f"mysql://bk:{SECRET}@host:99999",
    f"mysql://bk:{SECRET}@host?tls=maybe",
    f"bk:{SECRET}@host",                        # no scheme at all
    f"mysql://bk:Se/c@{SECRET}@host",           # a password holding / and @
    f"postgres://bk:{SECRET}@[::1]:5432/db",
    f"//bk:{SECRET}\r@127.0.0.1:1",             # found by the fuzzer: a control character
]
BAD_STORAGE = [
    f"s3://AKIA:{SECRET}@bucket/x",
    f"ftp://u:{SECRET}@h/x",
    f"file://u:{SECRET}@[::1/x",
    f"s3://b/x?endpoint=http://u:{SECRET}@[::1",
    f"s3://b/x?endpoint=ftp://u:{SECRET}@h",
    f"s3://b/x?endpoint=http://u:{SECRET}@h:99999",
    f"u:{SECRET}@host/x",
    f"s3://:{SECRET}@b",
    f"s3://u:{SECRET}@b/\x0c0",                 # found by the fuzzer: a form feed
    f"s3://b/x?part_size=x&endpoint=http://u:{SECRET}@h",  # found by the fuzzer: not a number
    f"file://relative/{SECRET}",
]


def _check(r, *secret_free: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.error_lines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    for s in secret_free:
        assert s not in r.stdout + r.stderr
    return lines[0]


@pytest.mark.parametrize("url", BAD_SOURCES)
@pytest.mark.parametrize("option", ["--source", "--target"])
def test_bad_connection_urls_never_show_the_password(tmp_path, url, option):
    args = (["snapshot", "--source", url] if option == "--source"
            else ["restore", "--latest", "--target", url, "--force"])
    r = run_cli_inprocess(*args, "--storage", str(tmp_path / "repo"))
    _check(r, SECRET)
    r = run_cli_inprocess(*args, "--storage", str(tmp_path / "repo"), "--json")
    _check(r, SECRET)


@pytest.mark.parametrize("url", BAD_STORAGE)
def test_bad_storage_urls_never_show_the_password(url):
    if "relative" in url:  # the relative path itself is no secret, but the URL is refused
        line = _check(run_cli_inprocess("list", "--storage", url))
        assert "relative" in line
        return
    _check(run_cli_inprocess("list", "--storage", url, env={"AWS_ACCESS_KEY_ID": "a",
                                                           "AWS_SECRET_ACCESS_KEY": "b"}), SECRET)


@pytest.mark.parametrize("url", BAD_STORAGE[:-1])
def test_bad_urls_in_a_policy_file_never_show_the_password(tmp_path, url):
    p = tmp_path / "p.toml"
    p.write_text(f'[storage]\nurl = "{url}"\n')
    r = run_cli_inprocess("policy", "check", str(p))
    assert r.returncode == 2 and SECRET not in r.stdout + r.stderr and "Traceback" not in r.stderr
    p.write_text(f'[storage]\nurl = "file:///tmp/x"\n[source]\nurl = "{BAD_SOURCES[0]}"\n')
    r = run_cli_inprocess("snapshot", "--policy", str(p))
    assert r.returncode == 2 and SECRET not in r.stdout + r.stderr and "Traceback" not in r.stderr


def test_unclosed_ipv6_bracket_is_one_line():
    r = run_cli_inprocess("snapshot", "--source", "mysql://u:p@[::1", "--storage", "/tmp/unused-x")
    assert "Invalid IPv6 URL" in _check(r)
    assert "u:***@" in r.stderr


@pytest.mark.parametrize("option", ["--storage", "--source", "--policy"])
def test_empty_common_options_are_refused(option):
    r = run_cli_inprocess("list", f"{option}=")
    assert "is empty" in _check(r)
    r = run_cli_inprocess("list", option, "", "--json")
    assert r.returncode == 2 and json.loads(r.stdout)["exit_code"] == 2


def test_relative_file_urls_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run_cli_inprocess("list", "--storage", "file://relative/path")
    assert "relative" in _check(r)
    assert list(tmp_path.iterdir()) == []  # nothing created in the current folder
    (tmp_path / "repo").mkdir()
    assert run_cli_inprocess("list", "--storage", f"file://localhost{tmp_path}/repo").returncode == 0


@pytest.mark.parametrize(("url", "shown"), [
    ("mysq://bk:Secret@host", "mysq://bk:***@host"),
    ("mysql://u:p@[::1", "mysql://u:***@[::1"),
    ("bk:Secret@host", "bk:***@host"),
    ("mysql://u:a/b@c@h/db", "mysql://u:***@h/db"),
    ("mysql://u@h:3306", "mysql://u@h:3306"),
    ("s3://bucket/pre@fix", "s3://bucket/pre@fix"),
    ("mysql://u@h/db?password=x&tls=on", "mysql://u@h/db?password=***&tls=on"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_redact_text_hides_every_url_password_in_a_message():
    text = "cannot use 'mysq://bk:Secret@host' nor s3://b/x?endpoint=http://k:S2@h:1 (try again)"
    assert redact_text(text) == ("cannot use 'mysq://bk:***@host' nor "
                                 "s3://b/x?endpoint=http://k:***@h:1 (try again)")


def test_log_lines_hide_url_passwords_and_stay_on_one_line():
    from backupkit.cli.app import _RedactFilter

    record = logging.LogRecord("backupkit.x", logging.WARNING, __file__, 1, "failed %s: %s",
                               (f"https://hook:{SECRET}@127.0.0.1:1/x", "two\nlines"), None)
    assert _RedactFilter().filter(record)
    assert SECRET not in record.getMessage() and "\n" not in record.getMessage()


def test_a_failing_webhook_with_credentials_is_logged_without_them(caplog):
    from backupkit.monitor.notify import Event, Notifier
    from backupkit.mysql.sandbox import free_port

    n = Notifier("p", webhook=f"http://hook:{SECRET}@127.0.0.1:{free_port()}/x", retries=0, timeout=2)
    with caplog.at_level(logging.WARNING):
        assert not n.deliver(Event("failure", "snapshot", "p", "boom"))
    assert "failed" in caplog.text and SECRET not in caplog.text


def test_an_empty_storage_url_in_a_policy_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "p.toml"
    p.write_text('[storage]\nurl = ""\n')
    line = _check(run_cli_inprocess("list", "--policy", str(p)))
    assert "storage.url" in line and "empty" in line
    assert list(tmp_path.iterdir()) == [p]  # no ./backupkit-repo
