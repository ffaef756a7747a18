"""Policy validation: one line per problem, naming the file, the key, what was expected and found."""

from __future__ import annotations

import pytest

from backupkit.config import load_policy
from backupkit.errors import ConfigError
from backupkit.schedule.checks import semantic_problems, storage_problem

GOOD = """
name = "t"
[source]
url = "mysql://backup@127.0.0.1:3306"
start_command = "systemctl start mariadb"
[storage]
url = "file:///var/backups/t"
[strategies]
cold = "0 3 * * 0"
snapshot = "0 */6 * * *"
binlog = "continuous"
prune = "0 5 * * *"
[retention]
keep_last = 3
recovery_window = "7 days"
"""


def _problems(tmp_path, text: str) -> list[str]:
    p = tmp_path / "p.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_policy(p, semantic_problems)
    lines = exc.value.message.splitlines()
    assert all(ln.startswith(f"{p}: ") for ln in lines)
    return lines


def test_a_good_policy_loads(tmp_path):
    p = tmp_path / "p.toml"
    p.write_text(GOOD)
    pol = load_policy(p, semantic_problems)
    assert pol.path == str(p) and pol.strategies.binlog == "continuous"


def test_a_typo_in_a_key_names_it_and_suggests_the_right_one(tmp_path):
    (line,) = _problems(tmp_path, GOOD.replace("snapshot =", "snapshto ="))
    assert "unknown key 'strategies.snapshto' (did you mean 'strategies.snapshot'?)" in line
    (line,) = _problems(tmp_path, GOOD.replace("[retention]", "[retension]"))
    assert "unknown key 'retension' (did you mean 'retention'?)" in line
    (line,) = _problems(tmp_path, GOOD + "\n[schedule]\nmisfire_grace = 60\n")
    assert "'schedule.misfire_grace' (did you mean 'schedule.misfire_grace_time'?)" in line
    (line,) = _problems(tmp_path, GOOD + "\n[schedule]\ncolour = 1\n")
    assert "unknown key 'schedule.colour' (remove it or check its spelling)" in line


@pytest.mark.parametrize("expr,why", [("0 3 * * 8", "day-of-week 8 is out of range 0-7"),
                                      ("0 3 * *", "4 fields instead of 5"),
                                      ("every sunday", "2 fields instead of 5"),
                                      ("0 25 * * *", "23"), ("0 0 30 2 *", "it never fires")])
def test_a_bad_cron_expression_says_what_is_expected(tmp_path, expr, why):
    (line,) = _problems(tmp_path, GOOD.replace('"0 3 * * 0"', f'"{expr}"'))
    assert "key 'strategies.cold': expected a cron expression 'minute hour day-of-month month " \
           "day-of-week' like '0 3 * * 0'" in line
    assert f"found {expr!r}" in line and why in line


def test_several_problems_give_one_line_each(tmp_path):
    text = (GOOD.replace('binlog = "continuous"', 'binlog = "always"')
            .replace('"7 days"', '"7 dayz"').replace("keep_last = 3", "keep_last = -1")
            .replace('start_command = "systemctl start mariadb"', ""))
    lines = _problems(tmp_path, text)
    assert len(lines) == 1  # type errors come first, alone
    assert "key 'retention.keep_last': expected" in lines[0] and "found -1" in lines[0]
    lines = _problems(tmp_path, text.replace("keep_last = -1", "keep_last = 1"))
    assert len(lines) == 3, lines
    assert any("'strategies.binlog': expected \"continuous\" or \"off\", found 'always'" in ln
               for ln in lines)
    assert any("'retention.recovery_window': expected a duration like \"7 days\"" in ln
               and "found '7 dayz'" in ln for ln in lines)
    assert any("'source.start_command': strategies.cold needs" in ln for ln in lines)


def test_semantic_checks(tmp_path):
    (line,) = _problems(tmp_path, GOOD.replace("keep_last = 3\n", "").replace(
        'recovery_window = "7 days"\n', ""))
    assert "key 'retention': strategies.prune needs at least one of keep_last" in line
    (line,) = _problems(tmp_path, GOOD + '\n[schedule]\ntimezone = "Mars/Olympus"\n')
    assert "key 'schedule.timezone': expected a zone name" in line
    (line,) = _problems(tmp_path, GOOD + "\n[schedule]\nshipper_backoff_min = 10\n"
                                         "shipper_backoff_max = 5\n")
    assert "key 'schedule.shipper_backoff_max': expected at least shipper_backoff_min" in line
    (line,) = _problems(tmp_path, GOOD.replace('prune = ', 'snapshot_incremental = "0 * * * *"\nprune = '))
    assert "key 'snapshot.engine': strategies.snapshot_incremental takes physical incrementals" in line
    (line,) = _problems(tmp_path, GOOD.replace('prune = ', 'snapshot_incremental = "61 * * * *"\nprune = ')
                        + '\n[snapshot]\nengine = "physical"\n')
    assert "key 'strategies.snapshot_incremental': expected a cron expression" in line
    (line,) = _problems(tmp_path, GOOD.replace('"file:///var/backups/t"', '"ftp://x/y"'))
    assert "key 'storage.url': expected a storage URL" in line and "unknown scheme 'ftp'" in line


def test_a_missing_storage_section_names_the_key_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("BACKUPKIT_STORAGE", raising=False)
    p = tmp_path / "p.toml"
    p.write_text(GOOD.replace('[storage]\nurl = "file:///var/backups/t"\n', ""))
    pol = load_policy(p, semantic_problems)
    msg = storage_problem(pol)
    assert msg == (f"{p}: missing key 'storage.url': add a [storage] section with url = "
                   "\"file:///var/backups/mysql\" or \"s3://bucket/prefix\" (or pass --storage)")
    assert storage_problem(pol, "file:///elsewhere") is None
    monkeypatch.setenv("BACKUPKIT_STORAGE", "file:///x")
    assert storage_problem(pol) is None
