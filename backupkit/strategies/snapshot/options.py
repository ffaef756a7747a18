"""What a snapshot is asked to copy, and how."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from backupkit.util.units import parse_rate

Progress = Callable[..., None]


@dataclass
class SnapshotOptions:
    """What to copy and how; the CLI fills it from flags and the policy's [snapshot] section."""

    databases: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)  # db.table, fnmatch patterns allowed
    include_users: bool = False
    parallel: int | None = None  # default: the number of cores
    chunk_size_mb: int = 64
    compression_level: int = 1
    checksums: bool = True  # CHECKSUM TABLE inside the snapshot, for restore --verify
    source_id: str | None = None
    backup_id: str | None = None
    # the lock watchdog: the longest the consistency step may wait for (and so stall) other
    # sessions, how often it backs off and tries again, and how long it waits between tries
    max_lock_wait: float = 5.0
    lock_retries: int = 3
    lock_backoff: float = 2.0
    max_rate: float | None = None  # bytes per second read from the source, all workers together
    max_replica_lag: float = 300.0  # a replica source further behind its primary: a warning

    @classmethod
    def from_policy(cls, section, **overrides: Any) -> SnapshotOptions:
        """Options from a config.SnapshotSection, with non-None overrides on top."""
        opts = cls(databases=list(section.databases), tables=list(section.tables),
                   include_users=section.include_users, parallel=section.parallel,
                   chunk_size_mb=section.chunk_size_mb,
                   compression_level=section.compression_level,
                   max_lock_wait=section.max_lock_wait, lock_retries=section.lock_retries,
                   max_rate=parse_rate(section.max_rate) if section.max_rate else None,
                   max_replica_lag=section.max_replica_lag)
        for k, v in overrides.items():
            if v is not None and v != [] and hasattr(opts, k):
                setattr(opts, k, v)
        return opts

    def workers(self) -> int:
        return max(1, int(self.parallel or os.cpu_count() or 1))
