"""Several storage targets as one ObjectStore: store.py (the store: placement, quorum writes, reads),
health.py (targets down or lagging, events, reports), readers.py (failover readers), writes.py (the
tee of one object to every target). The rules are in store.py's docstring."""

from __future__ import annotations

from typing import Any

from backupkit.storage.base import ObjectStore
from backupkit.storage.mirror.health import Target, session_report
from backupkit.storage.mirror.store import CatchUp, CatchUpResult, MirrorStore, Placement

__all__ = ["CatchUp", "CatchUpResult", "MirrorStore", "Placement", "Target", "find_mirror",
           "read_report", "session_report"]


def find_mirror(store: ObjectStore) -> MirrorStore | None:
    """The mirror under a store (through the encryption layer), or None."""
    s: ObjectStore | None = store
    while s is not None:
        if isinstance(s, MirrorStore):
            return s
        s = s.unwrap()
    return None


def read_report(store: ObjectStore) -> dict[str, Any] | None:
    """The mirror report of a store (for the CLI: which target served what), or None for one target."""
    m = find_mirror(store)
    return m.report() if m is not None and len(m.targets) > 1 else None
