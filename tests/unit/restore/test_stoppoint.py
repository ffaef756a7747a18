"""Restore targets: times in the local zone or a given one, GTIDs, positions, one target only."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from backupkit.errors import UsageError
from backupkit.restore.stoppoint import parse_position, parse_target
from backupkit.util.units import format_time, parse_time


@pytest.fixture
def berlin_tz(monkeypatch):
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.delenv("TZ")
    time.tzset()


def _utc(*args) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def test_time_without_zone_is_local(berlin_tz):
    assert parse_time("2026-11-26 10:15:00") == _utc(2026, 11, 26, 9, 15, 0)
    assert parse_time("2026-07-01 10:15:00") == _utc(2026, 7, 1, 8, 15, 0)  # summer time


def test_time_with_z_utc_offset_or_zone_name(berlin_tz):
    assert parse_time("2026-11-26 10:15:00Z") == _utc(2026, 11, 26, 10, 15)
    assert parse_time("2026-11-26T10:15:00 UTC") == _utc(2026, 11, 26, 10, 15)
    assert parse_time("2026-11-26 10:15:00+02:00") == _utc(2026, 11, 26, 8, 15)
    assert parse_time("2026-11-26 10:15:00-0530") == _utc(2026, 11, 26, 15, 45)
    assert parse_time("2026-11-26 10:15:00 America/New_York") == _utc(2026, 11, 26, 15, 15)


def test_time_fractions_minutes_and_epoch():
    assert parse_time("2026-11-26 10:15:00.25Z") == _utc(2026, 11, 26, 10, 15) + 0.25
    assert parse_time("2026-11-26 10:15Z") == _utc(2026, 11, 26, 10, 15)
    assert parse_time("2026-11-26Z") == _utc(2026, 11, 26)
    assert parse_time("@1700000000.5") == 1700000000.5
    assert parse_time("now", now=42.0) == 42.0


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01 10:00:00", "2026-11-26 25:00:00",
                                  "2026-11-26 10:15:00 Mars/Olympus", "", "@abc",
                                  "2026-11-26 10:15:00+25:00"])
def test_unparseable_time_is_a_usage_error(text):
    with pytest.raises(UsageError) as err:
        parse_time(text)
    assert "\n" not in err.value.one_line()
    assert err.value.exit_code == 2


def test_format_time_round_trips(berlin_tz):
    t = _utc(2026, 11, 26, 9, 15, 0) + 0.5
    assert format_time(t) == "2026-11-26 10:15:00.5+01:00"
    assert parse_time(format_time(t)) == t
    assert format_time(t, utc=True) == "2026-11-26 09:15:00.5Z"


def test_positions():
    assert parse_position("binlog.000003:1234") == ("binlog.000003", 1234)
    for bad in ("binlog.000003", "binlog.000003:x", ":5", "a/b:4"):
        with pytest.raises(UsageError):
            parse_position(bad)


def test_exactly_one_target():
    assert parse_target(latest=True).kind == "latest"
    assert parse_target(stop_before_gtid="0-1-5").kind == "before_gtid"
    assert parse_target(to_position="b.000001:4").pos == 4
    t = parse_target(to_time="2026-11-26 10:15:00Z")
    assert t.kind == "time" and t.time == _utc(2026, 11, 26, 10, 15)
    with pytest.raises(UsageError, match="one restore target"):
        parse_target(to_time="2026-11-26Z", to_gtid="0-1-1")
    with pytest.raises(UsageError, match="no restore target"):
        parse_target()



# -- issue 14, defect 3: exact fractions, and daylight-saving times never picked silently ------------
def test_nanosecond_fraction_is_parsed_exactly_and_never_rounds_into_the_next_second():
    from decimal import Decimal

    from backupkit.util.units import parse_time_exact

    base = int(_utc(2026, 11, 30, 18, 9, 30))
    assert parse_time_exact("2026-11-30T18:09:30.999999999Z") == Decimal(base) + Decimal("0.999999999")
    assert parse_time_exact("@1795975770.999999999") == Decimal("1795975770.999999999")
    t = parse_time("2026-11-30T18:09:30.999999999Z")
    assert t < base + 1 and int(t // 1) == base
    assert parse_time("@1795975770.999999999") < 1795975771


def test_time_target_just_before_a_second_never_lets_that_seconds_commits_through():
    from backupkit.restore.replay.parse import _Cutter
    from backupkit.restore.stoppoint import parse_target

    base = int(_utc(2026, 11, 30, 18, 9, 30))
    cut = _Cutter(parse_target(to_time="2026-11-30T18:09:30.999999999Z"))
    assert cut.before_txn(None, base) is True
    assert cut.after_txn(None, base, "binlog.000001", 100) == (True, False)
    assert cut.before_txn(None, base + 1) is False  # the accident at :31 is not replayed
    assert cut.after_txn(None, base + 1, "binlog.000001", 200) == (False, True)


def test_a_local_time_skipped_by_daylight_saving_is_refused_with_both_utc_readings(berlin_tz):
    with pytest.raises(UsageError) as err:
        parse_time("2026-03-29 02:30:00")
    msg = err.value.one_line()
    assert "does not exist" in msg
    assert "2026-03-29 00:30:00Z" in msg and "2026-03-29 01:30:00Z" in msg


def test_a_local_time_repeated_by_daylight_saving_is_refused_with_both_utc_readings(berlin_tz):
    with pytest.raises(UsageError) as err:
        parse_time("2026-10-25 02:30:00")
    msg = err.value.one_line()
    assert "happens twice" in msg
    assert "2026-10-25 00:30:00Z" in msg and "2026-10-25 01:30:00Z" in msg


def test_a_named_zone_is_checked_for_daylight_saving_too():
    for text, word in (("2026-03-29 02:30:00 Europe/Berlin", "does not exist"),
                       ("2026-10-25 02:30:00 Europe/Berlin", "happens twice")):
        with pytest.raises(UsageError, match=word):
            parse_time(text)
    # an offset settles it; the hour before and after the change is fine
    assert parse_time("2026-10-25 02:30:00+01:00") == _utc(2026, 10, 25, 1, 30)
    assert parse_time("2026-10-25 03:30:00 Europe/Berlin") == _utc(2026, 10, 25, 2, 30)
    assert parse_time("2026-03-29 03:30:00 Europe/Berlin") == _utc(2026, 3, 29, 1, 30)
