"""Restore targets: a moment, a GTID, a binlog position, "just before a GTID", or the latest.

Times given without a zone are read in the local zone (the TZ environment variable is honoured);
``Z``, ``UTC``, a numeric offset (``+02:00``) or an IANA zone name (``Europe/Berlin``) override it.
A time is parsed exactly (util.units.parse_time_exact: whole seconds plus a Decimal fraction) and
held as a UTC epoch float rounded down, never up. Binlog commit times are whole seconds, so "at T"
means every transaction whose recorded commit second is <= floor(T), and none after:
``...:30.999999999Z`` never includes a commit of :31. A local time that a daylight-saving change
skips or repeats is refused with both UTC readings.

GTIDs: MariaDB ``domain-server-seq`` (positions ``0-1-100,1-2-7``) and MySQL ``uuid:N``
(sets ``uuid:1-100:105``). Ordering and containment are by domain (or uuid) and sequence number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from backupkit.errors import UsageError
from backupkit.util.units import format_time, parse_time

# -- GTIDs ------------------------------------------------------------------------------
_MARIA_GTID = re.compile(r"^(\d+)-(\d+)-(\d+)$")
_MYSQL_GTID = re.compile(r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"
                         r"(?::[A-Za-z0-9_]+)?:(\d+)$")


@dataclass(frozen=True)
class Gtid:
    """One transaction id: key is the MariaDB domain id or the MySQL source uuid."""

    key: str
    server: str
    seq: int
    text: str

    @property
    def mariadb(self) -> bool:
        return self.key.isdigit()

    def __str__(self) -> str:
        return self.text


def parse_gtid(text: str) -> Gtid:
    """A single GTID: 0-1-123 (MariaDB) or 3E11FA47-...:23 (MySQL)."""
    raw = (text or "").strip()
    m = _MARIA_GTID.match(raw)
    if m:
        return Gtid(str(int(m.group(1))), m.group(2), int(m.group(3)), raw)
    m = _MYSQL_GTID.match(raw)
    if m:
        return Gtid(m.group(1).lower(), m.group(1).lower(), int(m.group(2)), raw)
    raise UsageError(f"cannot read the GTID {text!r}",
                     "use domain-server-seq like 0-1-123 (MariaDB) or uuid:N (MySQL)")


def try_parse_gtid(text: str | None) -> Gtid | None:
    if not text:
        return None
    try:
        return parse_gtid(text)
    except UsageError:
        return None


@dataclass
class GtidPosition:
    """A GTID position or set: per key, the intervals of sequence numbers it holds.

    MariaDB positions hold 1..seq for each domain; MySQL sets hold explicit intervals."""

    intervals: dict[str, list[tuple[int, int]]] = field(default_factory=dict)

    def contains(self, g: Gtid) -> bool:
        return any(lo <= g.seq <= hi for lo, hi in self.intervals.get(g.key, ()))

    def last_seq(self, key: str) -> int:
        """The highest sequence number held for key (0 when none)."""
        return max((hi for _, hi in self.intervals.get(key, ())), default=0)


def parse_gtid_position(text: str | None) -> GtidPosition:
    """A MariaDB GTID position (0-1-100,1-2-7) or a MySQL executed set; '' is empty."""
    pos = GtidPosition()
    for part in (text or "").replace("\n", "").split(","):
        part = part.strip()
        if not part:
            continue
        m = _MARIA_GTID.match(part)
        if m:
            pos.intervals[str(int(m.group(1)))] = [(1, int(m.group(3)))]
            continue
        bits = part.split(":")
        if len(bits) >= 2 and re.fullmatch(r"[0-9a-fA-F-]{36}", bits[0]):
            spans = pos.intervals.setdefault(bits[0].lower(), [])
            for iv in bits[1:]:
                lo, _, hi = iv.partition("-")
                if lo.isdigit():
                    spans.append((int(lo), int(hi) if hi.isdigit() else int(lo)))
            continue
        raise UsageError(f"cannot read the GTID position {text!r}")
    return pos


# -- targets ------------------------------------------------------------------------------
TARGET_KINDS = ("time", "gtid", "before_gtid", "position", "latest")


@dataclass(frozen=True)
class RestoreTarget:
    """Where a restore stops. kind: time | gtid | before_gtid | position | latest."""

    kind: str
    time: float | None = None
    gtid: Gtid | None = None
    file: str | None = None
    pos: int | None = None
    text: str = ""
    accept_gap: bool = False  # --latest: restore the newest reachable point even behind a gap

    def describe(self) -> str:
        if self.kind == "time":
            return f"time {format_time(self.time)}"
        if self.kind == "gtid":
            return f"GTID {self.gtid} (inclusive)"
        if self.kind == "before_gtid":
            return f"just before GTID {self.gtid}"
        if self.kind == "position":
            return f"position {self.file}:{self.pos}"
        return "the newest shipped transaction"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "time": self.time, "gtid": str(self.gtid) if self.gtid else None,
                "file": self.file, "pos": self.pos, "text": self.text,
                "description": self.describe()}


def parse_position(text: str) -> tuple[str, int]:
    """FILE:POS of the source binlog, e.g. binlog.000003:1234."""
    raw = (text or "").strip()
    name, sep, pos = raw.rpartition(":")
    if not sep or not name or not pos.isdigit() or "/" in name:
        raise UsageError(f"cannot read the binlog position {text!r}",
                         "use FILE:POS, for example binlog.000003:1234")
    return name, int(pos)


def time_target(ts: float, text: str = "") -> RestoreTarget:
    return RestoreTarget("time", time=ts, text=text or format_time(ts))


def parse_target(to_time: str | None = None, to_gtid: str | None = None,
                 to_position: str | None = None, stop_before_gtid: str | None = None,
                 latest: bool = False, now: float | None = None) -> RestoreTarget:
    """Exactly one of the target options, parsed; UsageError for none, several, or bad text."""
    given = [name for name, v in (("--to-time", to_time), ("--to-gtid", to_gtid),
                                  ("--to-position", to_position),
                                  ("--stop-before-gtid", stop_before_gtid),
                                  ("--latest", latest)) if v]
    if len(given) > 1:
        raise UsageError(f"give one restore target, not {' and '.join(given)}")
    if not given:
        raise UsageError("no restore target",
                         "give --to-time, --to-gtid, --to-position, --stop-before-gtid or --latest")
    if to_time:
        return RestoreTarget("time", time=parse_time(to_time, now), text=to_time)
    if to_gtid:
        return RestoreTarget("gtid", gtid=parse_gtid(to_gtid), text=to_gtid)
    if stop_before_gtid:
        return RestoreTarget("before_gtid", gtid=parse_gtid(stop_before_gtid), text=stop_before_gtid)
    if to_position:
        f, p = parse_position(to_position)
        return RestoreTarget("position", file=f, pos=p, text=to_position)
    return RestoreTarget("latest", text="latest")


def is_target_given(to_time=None, to_gtid=None, to_position=None, stop_before_gtid=None,
                    latest=False) -> bool:
    """True when any point-in-time option is set (the restore command dispatches on it)."""
    return bool(to_time or to_gtid or to_position or stop_before_gtid or latest)
