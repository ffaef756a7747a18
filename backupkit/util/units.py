"""The one module that parses and formats times, durations and sizes.

Times: a user's time (``parse_time``) is read in the local zone unless it names a zone, and held as
a UTC epoch float; ``format_time`` shows one to people, ``utc_iso``/``utc_iso_seconds`` write one
into manifests, state files and logs. Durations: ``parse_duration`` reads "7 days" or "36h",
``human_duration`` writes the largest whole unit, ``human_seconds`` a measured span.
Sizes: ``human_bytes`` in binary units.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from backupkit.errors import UsageError

# -- times ----------------------------------------------------------------------------------------
TIME_HELP = ("use 'YYYY-MM-DD HH:MM:SS[.ffffff]' (local zone), optionally followed by Z, UTC, "
             "+HH:MM or a zone name like Europe/Berlin; or @EPOCH")

_TIME_RE = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})(?:[T ](?P<clock>\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?))?"
    r"\s*(?P<zone>Z|z|UTC|utc|GMT|[+-]\d{2}(?::?\d{2})?|[A-Za-z_]+(?:/[A-Za-z0-9_+-]+)+)?$")


def parse_time(text: str, now: float | None = None) -> float:
    """A user's time as a UTC epoch float; raises UsageError naming the bad text."""
    raw = (text or "").strip()
    if not raw:
        raise UsageError("empty time", TIME_HELP)
    low = raw.lower()
    if low == "now":
        return time.time() if now is None else now
    if raw.startswith("@"):
        try:
            return float(raw[1:])
        except ValueError:
            raise UsageError(f"cannot read the time {text!r}", TIME_HELP) from None
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
    micro = int((frac + "000000")[:6]) if frac else 0
    rest = float("0." + frac) - micro / 1e6 if frac and len(frac) > 6 else 0.0
    naive = naive.replace(microsecond=micro)
    zone = m.group("zone")
    if zone is None:
        aware = naive.astimezone()  # the local zone, DST-aware
    elif zone.upper() in ("Z", "UTC", "GMT"):
        aware = naive.replace(tzinfo=UTC)
    elif zone[0] in "+-":
        digits = zone[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
        if hours > 23 or minutes > 59:
            raise UsageError(f"cannot read the time {text!r}: bad zone offset {zone}", TIME_HELP)
        delta = timedelta(hours=hours, minutes=minutes)
        aware = naive.replace(tzinfo=timezone(delta if zone[0] == "+" else -delta))
    else:
        try:
            aware = naive.replace(tzinfo=ZoneInfo(zone))
        except (ZoneInfoNotFoundError, ValueError):
            raise UsageError(f"cannot read the time {text!r}: unknown zone {zone!r}", TIME_HELP) from None
    return aware.timestamp() + rest


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


def parse_duration(text: str | int | float) -> float:
    """Seconds in a duration like "7 days", "36h", "1d 12h" or "90 min"; ValueError if malformed."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text <= 0:
            raise ValueError("a duration must be positive")
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
