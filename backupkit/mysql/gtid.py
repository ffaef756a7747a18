"""GTID sets and positions: MariaDB domain-server-seq, MySQL uuid:intervals."""

from __future__ import annotations

import re


class GtidState:
    """The GTID position after a point: MariaDB domain-server-seq per domain, or a MySQL set."""

    def __init__(self, flavor: str = "mariadb", text: str = "") -> None:
        self.flavor = flavor
        self.domains: dict[int, tuple[int, int]] = {}
        self.sets: dict[str, list[list[int]]] = {}
        if text:
            self.update_text(text)

    def update_text(self, text: str) -> None:
        for part in (p.strip() for p in text.replace("\n", "").split(",")):
            if not part:
                continue
            if self.flavor == "mariadb" and re.fullmatch(r"\d+-\d+-\d+", part):
                d, s, n = (int(x) for x in part.split("-"))
                self.domains[d] = (s, n)
            elif ":" in part:
                sid, _, ranges = part.partition(":")
                for r in ranges.split(":"):
                    a, _, b = r.partition("-")
                    if a.isdigit():
                        self._add_range(sid.lower(), int(a), int(b or a))

    def set_list(self, entries: list[tuple[int, int, int]]) -> None:
        """A MariaDB GTID list event: the whole state at that point."""
        self.domains = {d: (s, n) for d, s, n in entries}

    def add(self, gtid: str) -> None:
        if not gtid:
            return
        if self.flavor == "mariadb":
            d, s, n = (int(x) for x in gtid.split("-"))
            self.domains[d] = (s, n)
        else:
            sid, _, gno = gtid.rpartition(":")
            self._add_range(sid.lower(), int(gno), int(gno))

    def _add_range(self, sid: str, a: int, b: int) -> None:
        ivs = self.sets.setdefault(sid, [])
        if ivs and ivs[-1][1] + 1 >= a and ivs[-1][0] <= a:
            ivs[-1][1] = max(ivs[-1][1], b)
            return
        ivs.append([a, b])
        ivs.sort()
        merged: list[list[int]] = []
        for lo, hi in ivs:
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        self.sets[sid] = merged

    def text(self) -> str:
        if self.flavor == "mariadb":
            return ",".join(f"{d}-{s}-{n}" for d, (s, n) in sorted(self.domains.items()))
        return ",".join(sid + "".join(f":{a}" if a == b else f":{a}-{b}" for a, b in ivs)
                        for sid, ivs in sorted(self.sets.items()))

    def copy(self) -> GtidState:
        other = GtidState(self.flavor)
        other.domains = dict(self.domains)
        other.sets = {k: [list(iv) for iv in v] for k, v in self.sets.items()}
        return other
