"""GTIDs and binlog points: one transaction id (``Gtid``), THE set/position type (``GtidSet``),
and a point in a source's history (``BinlogPoint``: coordinates, GTID position, wall time).

MariaDB ids are ``domain-server-seq`` and its positions (``0-1-100,1-2-7``) name the last
transaction of each domain: the position holds sequence numbers 1..seq of that domain, whatever
the server. MySQL ids are ``uuid:N`` and its executed sets (``uuid:1-100:105``) list intervals.
Both live in one model: per key (the MariaDB domain id as a decimal string, or the MySQL source
uuid in lower case) the intervals of sequence numbers held, plus, for a MariaDB domain, the
server id of its last transaction (positions are written ``domain-server-seq``). Ordering and
containment are by key and sequence number. MySQL tags (8.4's ``uuid:tag:N``) are read as their
uuid, as every part of backupkit always did.

The shipper records a segment's state with it, the planner asks whether a base or a segment
holds a transaction, and the cold backup reads the position the server wrote at shutdown.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from backupkit.errors import UsageError

_MARIA_GTID = re.compile(r"^(\d+)-(\d+)-(\d+)$")
_MYSQL_GTID = re.compile(r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"
                         r"(?::[A-Za-z0-9_]+)?:(\d+)$")
_UUID = re.compile(r"[0-9a-fA-F-]{36}")
GTID_HELP = "use domain-server-seq like 0-1-123 (MariaDB) or uuid:N (MySQL)"


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
    """A single GTID: 0-1-123 (MariaDB) or 3E11FA47-...:23 (MySQL); UsageError otherwise."""
    raw = (text or "").strip()
    m = _MARIA_GTID.match(raw)
    if m:
        return Gtid(str(int(m.group(1))), m.group(2), int(m.group(3)), raw)
    m = _MYSQL_GTID.match(raw)
    if m:
        return Gtid(m.group(1).lower(), m.group(1).lower(), int(m.group(2)), raw)
    raise UsageError(f"cannot read the GTID {text!r}", GTID_HELP)


def try_parse_gtid(text: str | None) -> Gtid | None:
    """parse_gtid, or None for an empty or unreadable text."""
    if not text:
        return None
    try:
        return parse_gtid(text)
    except UsageError:
        return None


@dataclass
class GtidSet:
    """A GTID position (MariaDB) or executed set (MySQL): per key, the intervals it holds."""

    intervals: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    #: MariaDB domain -> server id of the domain's last transaction (for ``domain-server-seq``).
    servers: dict[str, int] = field(default_factory=dict)

    # -- reading ---------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str | None, strict: bool = True) -> GtidSet:
        """``0-1-100,1-2-7`` or ``uuid:1-5:7,uuid2:3``; '' is empty. A later entry of a MariaDB
        domain replaces an earlier one. strict: UsageError for an unreadable part; otherwise it
        is skipped (state strings read back from a repository never stop a shipper)."""
        out = cls()
        for part in (text or "").replace("\n", "").split(","):
            part = part.strip()
            if part and not out._read_part(part) and strict:
                raise UsageError(f"cannot read the GTID position {text!r}")
        return out

    @classmethod
    def from_state_file(cls, text: str) -> GtidSet:
        """The position in a MariaDB ``<binlog>.state`` file (written at shutdown): one
        ``domain-server-seq`` per line; the last line of a domain is its position."""
        out = cls()
        for token in text.split():
            m = _MARIA_GTID.match(token.strip())
            if m:
                out.set_domain(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        return out

    def _read_part(self, part: str) -> bool:
        m = _MARIA_GTID.match(part)
        if m:
            self.set_domain(int(m.group(1)), int(m.group(2)), int(m.group(3)))
            return True
        bits = part.split(":")
        if len(bits) >= 2 and _UUID.fullmatch(bits[0]):
            key = bits[0].lower()
            self.intervals.setdefault(key, [])
            for iv in bits[1:]:
                lo, _, hi = iv.partition("-")
                if lo.isdigit():  # a tag (uuid:tag:N) is read as its uuid
                    self._add_range(key, int(lo), int(hi) if hi.isdigit() else int(lo))
            return True
        return False

    # -- changing --------------------------------------------------------------------------
    def set_domain(self, domain: int, server: int, seq: int) -> None:
        """A MariaDB domain is now at domain-server-seq (its position: 1..seq)."""
        self.intervals[str(domain)] = [(1, seq)]
        self.servers[str(domain)] = server

    def set_domains(self, entries: Iterable[tuple[int, int, int]]) -> None:
        """A MariaDB GTID list event: the whole position of every domain at that point."""
        for key in [k for k in self.intervals if k.isdigit()]:
            del self.intervals[key]
        self.servers.clear()
        for d, s, n in entries:
            self.set_domain(d, s, n)

    def add(self, gtid: str | Gtid) -> None:
        """One more transaction: a MariaDB domain moves to it; a MySQL set gains it."""
        g = try_parse_gtid(gtid) if isinstance(gtid, str) else gtid
        if g is None:
            if gtid:
                raise UsageError(f"cannot read the GTID {gtid!r}", GTID_HELP)
            return
        if g.mariadb:
            self.set_domain(int(g.key), int(g.server), g.seq)
        else:
            self._add_range(g.key, g.seq, g.seq)

    def _add_range(self, key: str, lo: int, hi: int) -> None:
        ivs = self.intervals.setdefault(key, [])
        if ivs and ivs[-1][0] <= lo <= ivs[-1][1] + 1:  # the common case: the next transaction
            ivs[-1] = (ivs[-1][0], max(ivs[-1][1], hi))
            return
        merged: list[tuple[int, int]] = []
        for a, b in sorted([*ivs, (lo, hi)]):
            if merged and a <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        self.intervals[key] = merged

    def copy(self) -> GtidSet:
        return GtidSet({k: list(v) for k, v in self.intervals.items()}, dict(self.servers))

    # -- asking ----------------------------------------------------------------------------
    def contains(self, g: Gtid) -> bool:
        """True when the set holds transaction g (compared by key and sequence number)."""
        return any(lo <= g.seq <= hi for lo, hi in self.intervals.get(g.key, ()))

    def last_seq(self, key: str) -> int:
        """The highest sequence number held for key (0 when none)."""
        return max((hi for _, hi in self.intervals.get(key, ())), default=0)

    def keys(self) -> list[str]:
        """MariaDB domains in numeric order, then MySQL uuids."""
        return sorted(self.intervals, key=lambda k: (0, int(k), "") if k.isdigit() else (1, 0, k))

    def __bool__(self) -> bool:
        return any(self.intervals.values())

    def text(self) -> str:
        """``0-1-100,1-2-7`` (MariaDB domains in order), ``uuid:1-5:7`` (MySQL uuids in order)."""
        parts = []
        for k in self.keys():
            ivs = self.intervals[k]
            if k.isdigit():
                if ivs:
                    parts.append(f"{k}-{self.servers.get(k, 0)}-{ivs[-1][1]}")
            elif ivs:
                parts.append(k + "".join(f":{a}" if a == b else f":{a}-{b}" for a, b in ivs))
        return ",".join(parts)

    def __str__(self) -> str:
        return self.text()


def normalize_gtid(text: str | None) -> str:
    """A GTID position in the canonical form of GtidSet.text(), for comparisons."""
    return GtidSet.parse(text, strict=False).text()


@dataclass
class BinlogPoint:
    """A point in the source's history: binlog coordinates, GTID position, wall time (UTC epoch)."""

    file: str = ""
    pos: int = 0
    gtid: str = ""
    time: float = 0.0

    def key(self) -> tuple[str, int]:
        return (self.file, self.pos)
