"""The shipper's status object: the confirmed-through watermark of a source, and which server
it ships.

Segments only tell the commits the repository holds, so they cannot tell "nothing happened"
from "nothing was shipped". The shipper knows more: when it is caught up with the server (a
heartbeat arrives and every event before it is committed) the complete binlog up to that moment
is in the repository. It records that moment here, ``confirmed_at``, together with the binlog
point the committed segments end at (``file``/``pos``): every transaction that committed at or
before ``confirmed_at`` (whole seconds) lies before that point.

One small object per source, replaced in place at most every ``confirm_interval`` seconds while
the source is idle (never one per heartbeat; while busy the segments' own commit times carry the
coverage). When the shipper is down or behind, the object stops changing and the watermark
stops with it. It is not a commit marker: losing it only costs the quiet time after the newest
shipped commit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from backupkit.errors import IntegrityError, StorageError
from backupkit.repo import layout
from backupkit.repo.catalog import Catalog, encode_manifest


@dataclass
class ShipperStatus:
    """What the shipper of one source last confirmed (UTC epoch seconds)."""

    source_id: str
    confirmed_at: float = 0.0  # every commit at or before this second is shipped ...
    file: str = ""  # ... in the segments ending at this point
    pos: int = 0
    gtid_state: str = ""
    range_id: str = ""
    updated_at: float = 0.0  # when the shipper wrote this (its clock)
    state: str = "shipping"  # shipping | stopped
    holder: str = ""  # the lease holder that wrote it
    server: dict[str, Any] = field(default_factory=dict)  # server_id, hostname, port, version

    @property
    def point(self) -> tuple[str, int]:
        return (self.file, self.pos)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["type"] = "shipper_status"
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShipperStatus:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def read_status(catalog: Catalog, source_id: str) -> ShipperStatus | None:
    """The source's status object, or None when there is none (or it cannot be read)."""
    try:
        return ShipperStatus.from_dict(catalog.read_manifest(layout.shipper_status(source_id)))
    except (StorageError, IntegrityError):  # missing (ObjectNotFound), unreachable or damaged
        return None


def write_status(catalog: Catalog, status: ShipperStatus) -> None:
    """Replace the source's status object (one PUT)."""
    catalog.store.put(layout.shipper_status(status.source_id), encode_manifest(status.to_dict()))


def watermarks(catalog: Catalog, sources: list[str]) -> dict[str, ShipperStatus]:
    """The status objects of several sources (those that have one).

    Read them before the segments: a status names a committed point, so segments listed after
    it hold that point. Read after the listing, a newer point is not among the listed segments,
    the watermark cannot be placed, and a quiet stretch already confirmed looks unreachable."""
    out = {}
    for sid in sources:
        st = read_status(catalog, sid)
        if st is not None and st.confirmed_at:
            out[sid] = st
    return out
