"""What a base backup covers: the whole server, or only some databases or tables.

A snapshot taken with ``--databases``/``--tables`` is partial. A whole-server restore uses only
full bases; a restore limited to some databases may use a partial base that holds all of them
whole (no table filter). The manifest records the scope (``details.scope``); a manifest written
before it existed is read from its recorded filters (``details.options``), and counts as full
only when no filter was recorded. Cold and physical backups are always full.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Scope:
    """databases: names copied (empty: every database); tables: db.table patterns (empty: whole
    databases)."""

    databases: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()

    @property
    def full(self) -> bool:
        return not self.databases and not self.tables

    def covers(self, databases: Sequence[str] | None) -> bool:
        """Can this base start a restore of these databases (None: the whole server)?"""
        if self.full:
            return True
        if not databases or self.tables:
            return False
        return all(any(fnmatch.fnmatchcase(d, p) for p in self.databases) for d in databases)

    def describe(self) -> str:
        if self.full:
            return "full"
        parts = []
        if self.databases:
            parts.append("databases " + ", ".join(self.databases))
        if self.tables:
            parts.append("tables " + ", ".join(self.tables))
        return "partial: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"full": self.full, "databases": list(self.databases), "tables": list(self.tables)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scope:
        return cls(tuple(str(x) for x in d.get("databases") or ()),
                   tuple(str(x) for x in d.get("tables") or ()))


FULL = Scope()


def scope_of(kind: str, details: dict[str, Any]) -> Scope:
    """The scope a manifest records, or the one its recorded filters imply (older manifests)."""
    if kind != "snapshot":
        return FULL
    recorded = details.get("scope")
    if isinstance(recorded, dict):
        return Scope.from_dict(recorded)
    opts = details.get("options") or {}
    return Scope(tuple(opts.get("databases") or ()), tuple(opts.get("tables") or ()))
