"""Bad policies through the real CLI: exit 2 and one line naming the file, the key and the fix."""

from __future__ import annotations

import pytest

from tests.support import run_cli

BASE = """
name = "t"
[storage]
url = "file://{repo}"
[strategies]
snapshot = "0 */6 * * *"
cold = "0 3 * * 0"
[source]
start_command = "systemctl start mariadb"
"""


def _line(r) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.mark.parametrize("command", [["policy", "check", "--offline", "{p}"], ["policy", "plan", "{p}"],
                                     ["schedule", "cron", "--policy", "{p}"],
                                     ["schedule", "run", "--policy", "{p}"]])
def test_typo_bad_cron_and_missing_storage_are_one_line_each(tmp_path, command):
    p = tmp_path / "policy.toml"
    base = BASE.format(repo=tmp_path / "repo")
    cases = [
        (base.replace("snapshot =", "snapshott ="),
         ["unknown key 'strategies.snapshott'", "did you mean 'strategies.snapshot'?"]),
        (base.replace('"0 3 * * 0"', '"0 3 * * 8"'),
         ["key 'strategies.cold'", "expected a cron expression", "like '0 3 * * 0'", "found '0 3 * * 8'"]),
        (base.replace(f'[storage]\nurl = "file://{tmp_path / "repo"}"\n', ""),
         ["missing key 'storage.url'", "add a [storage] section with url =", "or pass --storage"]),
    ]
    for text, parts in cases:
        p.write_text(text)
        line = _line(run_cli(*[a.format(p=p) for a in command], env={"BACKUPKIT_STORAGE": ""}))
        assert str(p) in line
        for part in parts:
            assert part in line, line


def test_json_mode_carries_the_same_message(tmp_path):
    import json

    p = tmp_path / "policy.toml"
    p.write_text(BASE.format(repo=tmp_path / "repo").replace("cold =", "colt ="))
    r = run_cli("policy", "check", "--offline", str(p), "--json")
    assert r.returncode == 2
    out = json.loads(r.stdout)
    assert out["ok"] is False and "did you mean 'strategies.cold'?" in out["error"]
