"""The one module that parses and formats times, durations and sizes.

Times: a user's time (``parse_time``) is read in the local zone unless it names a zone, and held as
a UTC epoch float; ``format_time`` shows one to people, ``utc_iso``/``utc_iso_seconds`` write one
into manifests, state files and logs. Durations: ``parse_duration`` reads "7 days" or "36h",
``human_duration`` writes the largest whole unit, ``human_seconds`` a measured span.
Sizes: ``human_bytes`` in binary units; ``parse_size``/``parse_rate`` read decimal (MB = 10^6)
and binary (MiB = 2^20) units, ``human_rate`` writes a rate.
"""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from backupkit.errors import UsageError

# -- times ----------------------------------------------------------------------------------------
TIME_HELP = ("use 'YYYY-MM-DD HH:MM:SS[.ffffff]' (local zone), optionally followed by Z, UTC, "
             "+HH:MM or a zone name like Europe/Berlin; or @EPOCH")

_TIME_RE = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})(?:[T ](?P<clock>\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?))?"
    r"\s*(?P<zone>Z|z|UTC|utc|GMT|[+-]\d{2}(?::?\d{2})?|[A-Za-z_]+(?:/[A-Za-z0-9_+-]+)+)?$")


def parse_time(text: str, now: float | None = None) -> float:
    """A user's time as a UTC epoch float, never later than the exact time written (a float cannot
    hold nanoseconds: it is rounded down, so its floor is the exact second); raises UsageError."""
    return float_down(parse_time_exact(text, now))


def float_down(exact: Decimal) -> float:
    """The largest float not above an exact time."""
    f = float(exact)
    return math.nextafter(f, -math.inf) if Decimal(f) > exact else f


def time_floor(ts: float | Decimal) -> int:
    """The whole second a time falls in (binlog commit times are whole seconds)."""
    return math.floor(ts)


def parse_time_exact(text: str, now: float | None = None) -> Decimal:
    """A user's time as an exact UTC epoch Decimal (nanoseconds kept; no float on the way).

    A local time that does not exist (skipped by a daylight-saving change) or exists twice (the
    hour repeated when the clocks go back) is refused, showing both UTC readings: it is never
    picked silently. A zone or offset given with the time settles it."""
    raw = (text or "").strip()
    if not raw:
        raise UsageError("empty time", TIME_HELP)
    low = raw.lower()
    if low == "now":
        return Decimal(repr(time.time() if now is None else now))
    if raw.startswith("@"):
        if not _EPOCH_RE.match(raw[1:]):
            raise UsageError(f"cannot read the time {text!r}", TIME_HELP)
        return Decimal(raw[1:])
    m = _TIME_RE.match(raw)
    if not m:
        raise UsageError(f"cannot read the time {text!r}", TIME_HELP)
    clock = m.group("clock") or "00:00:00"
    if clock.count(":") == 1:
        clock += ":00"
    hms, _, frac = clock.replace(",", ".").partition(".")
    try:
        naive = datetime.strptime(f"{m.group('date')} {hms}", "%Y-%m-%d %H:%M:%S")
    except ValueError:
        raise UsageError(f"cannot read the time {text!r}: no such date or time", TIME_HELP) from None
    fraction = Decimal("0." + frac) if frac else Decimal(0)
    zone = m.group("zone")
    if zone is None:
        seconds = _wall_seconds(naive, None, text)  # the local zone (TZ honoured), DST-aware
    elif zone.upper() in ("Z", "UTC", "GMT"):
        seconds = _epoch(naive.replace(tzinfo=UTC))
    elif zone[0] in "+-":
        digits = zone[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
        if hours > 23 or minutes > 59:
            raise UsageError(f"cannot read the time {text!r}: bad zone offset {zone}", TIME_HELP)
        delta = timedelta(hours=hours, minutes=minutes)
        seconds = _epoch(naive.replace(tzinfo=timezone(delta if zone[0] == "+" else -delta)))
    else:
        try:
            tz = ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise UsageError(f"cannot read the time {text!r}: unknown zone {zone!r}", TIME_HELP) from None
        seconds = _wall_seconds(naive, tz, text)
    return Decimal(seconds) + fraction


_EPOCH_RE = re.compile(r"^\d{1,12}(?:\.\d{1,9})?$")
_EPOCH0 = datetime(1970, 1, 1, tzinfo=UTC)


def _epoch(aware: datetime) -> int:
    """Whole epoch seconds of an aware datetime without microseconds (exact: integer arithmetic)."""
    delta = aware - _EPOCH0
    return delta.days * 86400 + delta.seconds


def _wall_seconds(naive: datetime, tz: ZoneInfo | None, text: str) -> int:
    """Epoch seconds of a wall-clock time in tz (None: the local zone); refuses a time that a
    daylight-saving change skips or repeats, naming both UTC readings."""
    def reading(fold: int) -> int:
        dt = naive.replace(fold=fold)
        aware = dt.replace(tzinfo=tz) if tz is not None else dt.astimezone()
        return _epoch(aware)

    first, second = reading(0), reading(1)
    if first == second:
        return first
    a, b = sorted((first, second))
    both = " or ".join(datetime.fromtimestamp(x, UTC).strftime("%Y-%m-%d %H:%M:%SZ") for x in (a, b))
    back = datetime.fromtimestamp(first, UTC)
    back = back.astimezone(tz) if tz is not None else back.astimezone()
    where = tz.key if tz is not None else "the local zone"
    if back.replace(tzinfo=None, fold=0) != naive:
        why = f"does not exist in {where} (the clocks skip it for daylight saving time)"
    else:
        why = f"happens twice in {where} (the clocks go back for daylight saving time)"
    raise UsageError(f"the time {text!r} {why}: it could mean {both}",
                     "give a zone or offset, for example 'Z' or '+01:00'")


def format_time(ts: float | None, utc: bool = False) -> str:
    """An epoch time for people: local zone with its offset (or UTC), microseconds only if any."""
    if ts is None:
        return "-"
    dt = datetime.fromtimestamp(ts, UTC) if utc else datetime.fromtimestamp(ts).astimezone()
    text = dt.strftime("%Y-%m-%d %H:%M:%S")
    if dt.microsecond:
        text += f".{dt.microsecond:06d}".rstrip("0")
    off = dt.strftime("%z")
    return text + ("Z" if utc or off == "+0000" else f"{off[:3]}:{off[3:]}")


def utc_iso(ts: float | None) -> str | None:
    """An epoch time as ISO 8601 UTC with microseconds (manifests)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def utc_iso_seconds(ts: float | None) -> str | None:
    """An epoch time as ISO 8601 UTC to the second (state files and log lines)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_stamp(ts: float) -> str:
    """An epoch time as a compact, sortable UTC stamp for names: 20261126T101500Z."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y%m%dT%H%M%SZ")


# -- durations ------------------------------------------------------------------------------------
_UNITS = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
}
_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*,?", re.IGNORECASE)


#: No duration means more than this (times before 1970 or after 9999 cannot be shown or stored).
MAX_DURATION = 1000 * 365 * 86400


def parse_duration(text: str | int | float) -> float:
    """Seconds in a duration like "7 days", "36h", "1d 12h" or "90 min"; ValueError if malformed."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if not 0 < text <= MAX_DURATION:  # also NaN
            raise ValueError("a duration must be positive and at most 1000 years")
        return float(text)
    s = str(text).strip()
    if not s:
        raise ValueError("empty duration")
    total, pos = 0.0, 0
    while pos < len(s):
        m = _PART.match(s, pos)
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"cannot read {s!r} as a duration")
        total += float(m.group(1)) * _UNITS[m.group(2).lower()]
        pos = m.end()
    if total <= 0:
        raise ValueError("a duration must be positive")
    if total > MAX_DURATION:
        raise ValueError(f"{s!r} is longer than {MAX_DURATION // (365 * 86400)} years")
    return total


def human_duration(seconds: float) -> str:
    """A configured duration as the largest whole unit that fits: 7 days, 36 h, 90 min, 20 s."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return f"{n} {'day' if unit == 'days' and n == 1 else unit}"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds:g} s"


def human_seconds(s: float | None) -> str:
    """A measured span for people, in the unit that reads best: 12 ms, 4.2 s, 3.5 min, 2.0 h, 1.5 d."""
    if s is None:
        return "-"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


# -- sizes ----------------------------------------------------------------------------------------
def human_bytes(n: float | int | None) -> str:
    """A size for people in binary units: 512 B, 1.5 KiB ... TiB."""
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
               "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 1 << 10, "mib": 1 << 20,
               "gib": 1 << 30, "tib": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
RATE_HELP = ("write a rate like 50MB/s (MB = 10^6 bytes), 40MiB/s (MiB = 2^20 bytes), 500KB/s "
             "or a plain number of bytes per second")


def parse_size(text: str | int | float) -> int:
    """Bytes in a size like "64MiB", "1.5GB", "500k" or "4096": decimal units (kB, MB, GB, TB are
    powers of 10) and binary units (KiB, MiB, GiB, TiB are powers of 2); ValueError if malformed."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if not 0 <= text < 2**63:
            raise ValueError("a size must be a number of bytes >= 0")
        return int(text)
    m = _SIZE_RE.match(str(text))
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"cannot read {text!r} as a size")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_rate(text: str | int | float) -> float:
    """Bytes per second in a rate like "50MB/s", "40 MiB/s" or "20M" (the "/s" is optional):
    units as parse_size; ValueError if malformed or not positive."""
    s = text if isinstance(text, (int, float)) else str(text).strip()
    if isinstance(s, str) and s.lower().endswith("/s"):
        s = s[:-2]
    rate = parse_size(s)
    if rate <= 0:
        raise ValueError("a rate must be positive")
    return float(rate)


def human_rate(bps: float | None) -> str:
    """A rate for people in decimal units (the unit --max-rate is usually written in): 20.0 MB/s."""
    if bps is None:
        return "-"
    for unit, size in (("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3)):
        if bps >= size:
            return f"{bps / size:.1f} {unit}"
    return f"{bps:.0f} B/s"
