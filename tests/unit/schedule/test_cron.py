"""The daemon fires exactly when system cron would: compared minute by minute with a reference
reading of crontab(5), including Sunday as 0 or 7 and the day-of-month OR day-of-week rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backupkit.schedule.checks import cron_problem
from backupkit.schedule.cron import cron_trigger, next_runs, worst_interval
from backupkit.schedule.crontab import cron_lines

NAMES = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6,
         "jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6, "jul": 7, "aug": 8, "sep": 9,
         "oct": 10, "nov": 11, "dec": 12}


def _field(expr: str, lo: int, hi: int) -> set[int]:
    out: set[int] = set()
    for part in expr.split(","):
        rng, _, step = part.partition("/")
        if rng == "*":
            a, b = lo, hi
        else:
            x, _, y = rng.partition("-")
            a = NAMES.get(x.lower()) if not x.isdigit() else int(x)
            b = (NAMES.get(y.lower()) if not y.isdigit() else int(y)) if y else (hi if step else a)
        out.update(range(a, b + 1, int(step) if step else 1))
    return out


def cron_matcher(expr: str):
    """crontab(5), as Vixie cron reads it: a predicate on whole minutes."""
    mi, h, dom, mon, dow = expr.split()
    mins, hours, doms, months = _field(mi, 0, 59), _field(h, 0, 23), _field(dom, 1, 31), _field(mon, 1, 12)
    days = {d % 7 for d in _field(dow, 0, 7)}
    either = not dom.startswith("*") and not dow.startswith("*")

    def matches(t: datetime) -> bool:
        if t.minute not in mins or t.hour not in hours or t.month not in months:
            return False
        dom_ok, dow_ok = t.day in doms, (t.isoweekday() % 7) in days
        return (dom_ok or dow_ok) if either else (dom_ok and dow_ok)

    return matches


EXPRS = ["0 3 * * 0", "0 3 * * 7", "0 */6 * * *", "30 4 * * 1-5", "0 0 1,15 * 5", "15 2 * * sun",
         "0 12 * * 5-7", "*/20 9-17 * * mon-fri", "0 0 13 * fri", "5 4 * * */2", "0 6 1 1 *",
         "45 23 28-31 * *", "0 0 * 2 sat,sun", "10 10 * * 0,6"]


@pytest.mark.parametrize("expr", EXPRS)
def test_trigger_fires_exactly_when_cron_would(expr):
    start = datetime(2026, 1, 1, tzinfo=UTC)
    end = start + timedelta(days=36)
    want = []
    t = start
    matches = cron_matcher(expr)
    while t < end:
        if matches(t):
            want.append(t)
        t += timedelta(minutes=1)
    trig = cron_trigger(expr, UTC)
    got, prev, now = [], None, start
    while True:
        nxt = trig.get_next_fire_time(prev, now)
        if nxt is None or nxt >= end:
            break
        got.append(nxt)
        prev, now = nxt, nxt + timedelta(seconds=1)
    assert got == want


@settings(max_examples=25, deadline=None)
@given(minute=st.sampled_from(["0", "*/15", "7,37"]), hour=st.sampled_from(["*", "3", "*/4", "8-18"]),
       dom=st.sampled_from(["*", "1", "10-20", "*/10", "31"]), month=st.sampled_from(["*", "2", "1-6"]),
       dow=st.sampled_from(["*", "0", "7", "1-5", "5-7", "sat", "*/3", "0,3"]))
def test_random_expressions_agree_with_cron(minute, hour, dom, month, dow):
    test_trigger_fires_exactly_when_cron_would(f"{minute} {hour} {dom} {month} {dow}")


def test_sunday_is_0_and_7_not_monday():
    mon = datetime(2026, 1, 5, tzinfo=UTC)
    assert [d.strftime("%a") for d in next_runs("0 3 * * 0", UTC, mon, 2)] == ["Sun", "Sun"]
    assert [d.strftime("%a") for d in next_runs("0 3 * * 7", UTC, mon, 1)] == ["Sun"]


def test_macros_and_worst_interval():
    mon = datetime(2026, 1, 5, tzinfo=UTC)
    assert next_runs("@daily", UTC, mon, 1)[0] == datetime(2026, 1, 6, tzinfo=UTC)  # strictly after
    assert worst_interval("0 */6 * * *", UTC, mon) == 6 * 3600
    assert worst_interval("0 3 * * 0", UTC, mon) == 7 * 86400
    assert worst_interval("0 0 1 * *", UTC, mon) == 31 * 86400


@pytest.mark.parametrize("expr,why", [("0 3 * * 8", "out of range"), ("* * *", "3 fields"),
                                      ("0 0 31 2 *", "never fires"), ("61 * * * *", "59"),
                                      ("0 3 * * 5-2", "backwards")])
def test_bad_expressions_say_why(expr, why):
    assert why in cron_problem(expr)


def test_cron_lines_lock_each_strategy_and_escape_percent(tmp_path):
    from backupkit.config import Policy
    from backupkit.schedule.state import Paths

    pol = Policy.model_validate({"name": "p1", "strategies": {"snapshot": "0 */6 * * *",
                                                              "binlog": "continuous"}})
    paths = Paths(tmp_path / "s.json", tmp_path / "lock%dir", tmp_path / "log")
    lines = cron_lines(pol, str(tmp_path / "p.toml"), user="backup", paths=paths, python="/usr/bin/python3")
    jobs = [ln for ln in lines if ln[0].isdigit() or ln[0] == "*"]
    assert jobs[0].startswith("0 */6 * * * backup flock -n ")
    assert "lock\\%dir/p1-snapshot.lock" in jobs[0] and "schedule exec snapshot --locked" in jobs[0]
    assert jobs[1].startswith("* * * * * backup flock -n ") and jobs[1].split(" >> ")[0].endswith(
        "binlog ship")
    no_user = cron_lines(pol, str(tmp_path / "p.toml"), user=None, paths=paths, python="/usr/bin/python3")
    assert [ln for ln in no_user if ln.startswith("0 */6")][0].startswith("0 */6 * * * flock -n ")


def test_cron_lines_run_hourly_physical_incrementals_beside_the_weekly_full(tmp_path):
    from backupkit.config import Policy
    from backupkit.schedule.state import Paths

    pol = Policy.model_validate({"name": "p2", "snapshot": {"engine": "physical"},
                                 "strategies": {"snapshot": "0 2 * * 0",
                                                "snapshot_incremental": "15 * * * *"}})
    paths = Paths(tmp_path / "s.json", tmp_path / "locks", tmp_path / "log")
    lines = cron_lines(pol, str(tmp_path / "p.toml"), user=None, paths=paths, python="/usr/bin/python3")
    full, inc = [ln for ln in lines if ln[0].isdigit()]
    assert full.startswith("0 2 * * 0 flock -n ") and "schedule exec snapshot --locked" in full
    assert inc.startswith("15 * * * * flock -n ") and "p2-snapshot_incremental.lock" in inc
    assert "schedule exec snapshot_incremental --locked" in inc
