"""What a shipper run is asked to do (ShipOptions), what it did (ShipResult), and which source it ships."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backupkit.errors import SourceError
from backupkit.mysql.connection import ConnSpec, connect
from backupkit.mysql.server import (
    ServerFacts,
    default_source_id,
    server_facts,
)
from backupkit.strategies.binlog.spill import MIB


class BinlogGapError(SourceError):
    """The source no longer has binlog the repository still needs (purged before shipping, or
    not on the server a switchover moved to)."""


@dataclass
class ShipOptions:
    """How the shipper runs (the CLI fills this from options and the [binlog] policy)."""

    source_id: str | None = None
    server_id: int | None = None
    sync_interval: float = 1.0
    max_segment_bytes: int = 16 * MIB
    heartbeat: float = 1.0
    lease_seconds: float = 15.0
    compression_level: int = 1
    from_current: bool = False
    from_position: tuple[str, int] | None = None  # first run: start at these coordinates
    restart_from_current: bool = False
    until_current: bool = False
    wait_for_lease: bool = True
    watchdog_periods: float = 4.0
    max_backoff: float = 5.0
    spill_bytes: int = 64 * MIB
    confirm_interval: float = 5.0  # write the confirmed-through watermark at most this often
    catch_up_interval: float = 2.0  # seconds between background catch-ups of a lagging target


@dataclass
class ShipResult:
    """What a shipper run did."""

    source_id: str
    server_id: int
    range_id: str = ""
    start: str = ""
    end: str = ""
    segments: int = 0
    bytes: int = 0
    stored_bytes: int = 0
    transactions: int = 0
    reconnects: int = 0
    gaps: list[dict[str, Any]] = field(default_factory=list)
    #: switchovers followed (or refused) by this run: from/to server ids, the link or the loss
    switchovers: list[dict[str, Any]] = field(default_factory=list)
    stopped_by: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def resolve_source(spec: ConnSpec, source_id: str | None, conn=None) -> tuple[ServerFacts, str]:
    """The source's facts and its source id (given, or derived like the snapshot's)."""
    own = conn is None
    conn = conn or connect(spec)
    try:
        facts = server_facts(conn)
    finally:
        if own:
            conn.close()
    if not facts.log_bin:
        raise SourceError(f"the source {spec.display()} has no binary log enabled",
                          "start it with --log-bin and --binlog-format=ROW")
    return facts, source_id or default_source_id(facts)
