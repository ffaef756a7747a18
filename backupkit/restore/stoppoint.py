"""Restore targets: a moment, a GTID, a binlog position, "just before a GTID", or the latest.

Times given without a zone are read in the local zone (the TZ environment variable is honoured);
``Z``, ``UTC``, a numeric offset (``+02:00``) or an IANA zone name (``Europe/Berlin``) override it.
A time is parsed exactly (util.units.parse_time_exact: whole seconds plus a Decimal fraction) and
held as a UTC epoch float rounded down, never up. Binlog commit times are whole seconds, so "at T"
means every transaction whose recorded commit second is <= floor(T), and none after:
``...:30.999999999Z`` never includes a commit of :31. A local time that a daylight-saving change
skips or repeats is refused with both UTC readings.

GTIDs (MariaDB ``domain-server-seq``, MySQL ``uuid:N``) are read by backupkit.mysql.gtid.
"""

from __future__ import annotations

from dataclasses import dataclass

from backupkit.errors import UsageError
from backupkit.mysql.gtid import Gtid, parse_gtid
from backupkit.util.units import format_time, parse_time

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
